"""The radio channel between shoppers' phones and the store's receivers.

Each transmission t heard at receiver r is drawn, vectorised over a whole
tick of transmissions x receivers, as

    rssi = A_r + b_r + o_e - 10 n_r log10 d - L_body + X

with A_r, n_r the receiver's path-loss model from the site config, b_r a
per-receiver bias (installation, antenna, enclosure) fixed for the run, o_e
a per-device TX offset, L_body the loss through the carrier's body,
growing as the receiver falls behind the shopper (B max(0, -cos theta)),
and X log-normal shadowing N(0, sigma²) — i.i.d. per packet, or with a
spatially correlated part (a Gaussian random field per receiver with the
given correlation distance) that a shopper standing still keeps seeing.
Readings are then lost with the packet-loss probability or below the
receiver's sensitivity, and quantised to whole dBm as radios report them.
The biases and fields are drawn first from the channel's stream, so runs
with the same seed and channel (a survey walk and a day of shoppers) take
place in the same store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter

from positioning.pathloss import rssi_at_distance, slant_distance

FloatArray = NDArray[np.float64]

FIELD_CELL_M = 0.25


@dataclass(frozen=True)
class ChannelConfig:
    """Impairments of the simulated radio channel (dB unless noted)."""

    sigma_db: float = 4.0
    correlation_m: float = 0.0
    spatial_fraction: float = 0.7
    receiver_bias_db: float = 1.0
    device_offset_db: float = 1.0
    body_loss_db: float = 3.0
    packet_loss: float = 0.1
    sensitivity_dbm: float = -100.0

    def __post_init__(self) -> None:
        for name in ("sigma_db", "correlation_m", "receiver_bias_db", "device_offset_db", "body_loss_db"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.spatial_fraction <= 1.0:
            raise ValueError(f"spatial_fraction must be in [0, 1], got {self.spatial_fraction}")
        if not 0.0 <= self.packet_loss < 1.0:
            raise ValueError(f"packet_loss must be in [0, 1), got {self.packet_loss}")


class Channel:
    """Draws the readings of transmissions at receivers; deterministic for its generator.

    Args:
        receivers_xyz: (m, 3) receiver positions, metres.
        rssi_at_1m, exponent: (m,) the true path-loss model of each receiver.
        bbox: ((x_min, y_min), (x_max, y_max)) the shadowing field must cover.
        config: the impairments.
        rng: the channel's own random stream.
    """

    def __init__(
        self,
        receivers_xyz: FloatArray,
        rssi_at_1m: FloatArray,
        exponent: FloatArray,
        bbox: FloatArray,
        config: ChannelConfig,
        rng: np.random.Generator,
    ) -> None:
        self.xyz = receivers_xyz
        self.rssi_at_1m = rssi_at_1m
        self.exponent = exponent
        self.config = config
        self.rng = rng
        m = receivers_xyz.shape[0]
        self.bias: FloatArray = np.asarray(rng.normal(0.0, config.receiver_bias_db, m), dtype=np.float64)
        self.origin = np.asarray(bbox, dtype=np.float64)[0] - 2.0
        self.fields: FloatArray | None = None
        if config.correlation_m > 0.0 and config.spatial_fraction > 0.0:
            self.fields = self._fields(np.asarray(bbox, dtype=np.float64), m)

    def _fields(self, bbox: FloatArray, m: int) -> FloatArray:
        """(m, ny, nx) unit-variance Gaussian fields with correlation exp(-d² / L²).

        White noise smoothed by a Gaussian kernel of std s has correlation
        exp(-d² / (4 s²)), so s = L / 2.
        """
        size = np.ceil((bbox[1] - bbox[0] + 4.0) / FIELD_CELL_M).astype(int) + 1
        s = self.config.correlation_m / 2.0 / FIELD_CELL_M
        fields = np.empty((m, size[1], size[0]))
        for r in range(m):
            noise = gaussian_filter(self.rng.normal(size=(size[1], size[0])), s, mode="wrap")
            fields[r] = (noise - noise.mean()) / max(float(noise.std()), 1e-12)
        return fields

    def device_offsets(self, count: int) -> FloatArray:
        """Per-device TX offsets for `count` new emitters."""
        if not self.config.device_offset_db:
            return np.zeros(count)
        return self.rng.normal(0.0, self.config.device_offset_db, count)

    def shadowing(self, xy: FloatArray) -> FloatArray:
        """(k, m) shadowing X for emitters at xy (k, 2)."""
        cfg = self.config
        k, m = xy.shape[0], self.xyz.shape[0]
        fast = self.rng.normal(0.0, 1.0, (k, m))
        if self.fields is None:
            return cfg.sigma_db * fast
        ij = np.floor((xy - self.origin) / FIELD_CELL_M).astype(np.intp)
        ny, nx = self.fields.shape[1:]
        ix, iy = np.clip(ij[:, 0], 0, nx - 1), np.clip(ij[:, 1], 0, ny - 1)
        slow = self.fields[:, iy, ix].T  # (k, m)
        f = cfg.spatial_fraction
        return cfg.sigma_db * (math.sqrt(f) * slow + math.sqrt(1.0 - f) * fast)

    def readings(
        self,
        xy: FloatArray,
        emitter_z: FloatArray,
        facing: FloatArray,
        offset: FloatArray,
        audible: NDArray[np.bool_],
    ) -> FloatArray:
        """RSSI (k, m) of k transmissions at all receivers; NaN where not heard.

        xy (k, 2), emitter_z (k,), facing (k,) heading in radians, offset (k,)
        device TX offset dB, audible (k, m) whether the receiver listens to
        that technology at all.
        """
        cfg = self.config
        k, m = xy.shape[0], self.xyz.shape[0]
        d = np.empty((k, m))
        for z in np.unique(emitter_z):
            rows = emitter_z == z
            d[rows] = slant_distance(xy[rows], self.xyz, float(z))
        power = rssi_at_distance(d, self.rssi_at_1m, self.exponent) + self.bias + offset[:, None]
        if cfg.body_loss_db:
            to_rx = self.xyz[None, :, :2] - xy[:, None, :]
            bearing = np.arctan2(to_rx[..., 1], to_rx[..., 0])
            behind = np.maximum(0.0, -np.cos(bearing - facing[:, None]))
            power -= cfg.body_loss_db * behind
        power += self.shadowing(xy)
        lost = self.rng.random((k, m)) < cfg.packet_loss
        heard = audible & ~lost & (power >= cfg.sensitivity_dbm)
        return np.where(heard, np.round(power), np.nan)
