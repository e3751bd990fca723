"""The radio channel between shoppers' phones and the store's receivers.

Each transmission t heard at receiver r is drawn, vectorised over a whole
tick of transmissions x receivers, as

    rssi = A_r + b_r + o_e - 10 n_r log10 d - L_body + X

with A_r, n_r the receiver's path-loss model from the site config, b_r a
per-receiver bias (installation, antenna, enclosure) fixed for the store, o_e
a per-phone TX offset drawn once per device, L_body the loss through the
carrier's body, growing as the receiver falls behind the shopper
(B max(0, -cos theta)), and X log-normal shadowing N(0, sigma²) — i.i.d. per
packet, or with a spatially correlated part (a Gaussian random field per
receiver with the given correlation distance) that a shopper standing still
keeps seeing. Readings are then lost with the packet-loss probability or
below the receiver's sensitivity, and quantised to whole dBm as radios
report them.

The biases and fields belong to the store, not to a run: walls and shelves
do not move between the technician's calibration walk and Saturday's
shoppers. They are drawn from the store's own stream (`store_seed`, derived
from the site unless overridden), so a survey walk and any day of shoppers
take place in the same store whatever their seeds.

Three named channels (`CHANNELS`):

- ``lognormal``: shadowing and packet loss only, the conditions the
  Cramér-Rao bound and the first targets were stated for.
- ``impaired``: the simulator's defaults, mild impairments (bias 1 dB,
  device offset 1 dB, body loss up to 3 dB).
- ``store``: what an ordinary store does to BLE, each figure with its source
  or reasoning:

  - device offset sigma 4 dB, once per phone: phones of different makes
    differ by several dB in what they radiate (TX power setting, antenna,
    case); that is why ESPresense asks for a per-device ``rssi@1m`` and why
    iBeacon carries a measured power. Published per-model spreads of RSSI at
    1 m span roughly +-8 dB across handsets; a 4 dB standard deviation puts
    95 % of phones within that span.
  - body loss up to 8 dB when the carrier's body is between phone and
    receiver: the human body attenuates 2.4 GHz by 5-10 dB (on-body BLE
    measurements; the real danis rectangle reads 8-20 dB below the model
    for seconds at a corner with the body in between). Orientation follows
    the walking direction; a shopper standing at a shelf turns every
    `turn_interval_s` on average (10 s: looks along the shelf, to the cart,
    back), around the direction faced at that stop.
  - receiver bias sigma 2 dB: enclosures, mounting height and antenna
    pattern of each receiver; the danis receivers' fitted A_r spread by a
    few dB against a common model.
  - shadowing sigma 5 dB, 70 % of its variance in a static field correlated
    over 3 m: shelves and walls are metres long and stay put (indoor
    shadowing 4-8 dB is the usual range for 2.4 GHz; 3 m is a shelf run);
    the remaining 30 % is per packet (multipath fading across the three
    advertising channels).
  - packet loss 10 %: collisions and scanner duty cycle.
"""

from __future__ import annotations

import hashlib
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
    turn_interval_s: float = 0.0
    turn_sigma_rad: float = math.pi / 3

    def __post_init__(self) -> None:
        for name in ("sigma_db", "correlation_m", "receiver_bias_db", "device_offset_db", "body_loss_db",
                     "turn_interval_s", "turn_sigma_rad"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.spatial_fraction <= 1.0:
            raise ValueError(f"spatial_fraction must be in [0, 1], got {self.spatial_fraction}")
        if not 0.0 <= self.packet_loss < 1.0:
            raise ValueError(f"packet_loss must be in [0, 1), got {self.packet_loss}")


CHANNELS: dict[str, ChannelConfig] = {
    "lognormal": ChannelConfig(sigma_db=4.0, receiver_bias_db=0.0, device_offset_db=0.0, body_loss_db=0.0),
    "impaired": ChannelConfig(),
    "store": ChannelConfig(sigma_db=5.0, correlation_m=3.0, spatial_fraction=0.7, receiver_bias_db=2.0,
                           device_offset_db=4.0, body_loss_db=8.0, packet_loss=0.1, turn_interval_s=10.0),
}
"""Named channels for `santi sim --channel` and the benchmarks; see the module docstring."""


def store_seed(store_id: str) -> int:
    """The seed of a store's static radio (biases, shadowing fields), derived from its id.

    A hash, not Python's salted hash(), so the same store is the same on every machine.
    """
    return int.from_bytes(hashlib.sha256(store_id.encode()).digest()[:8], "big") >> 1


def turns(rng: np.random.Generator, start: float, end: float, interval_s: float,
          sigma_rad: float) -> tuple[FloatArray, FloatArray]:
    """Where a still shopper turns: times (n,) s and heading offsets (n,) rad, piecewise constant.

    Turns come as a Poisson process of mean gap `interval_s` over [start,
    end]; each new heading is N(0, sigma_rad²) around the way faced at that
    stop. Before the first turn the offset is 0.
    """
    if interval_s <= 0.0 or end <= start:
        return np.empty(0), np.empty(0)
    n = int(rng.poisson((end - start) / interval_s)) + 1
    times = np.sort(rng.uniform(start, end, n))
    return times, rng.normal(0.0, sigma_rad, n)


class Channel:
    """Draws the readings of transmissions at receivers; deterministic for its generators.

    Args:
        receivers_xyz: (m, 3) receiver positions, metres.
        rssi_at_1m, exponent: (m,) the true path-loss model of each receiver.
        bbox: ((x_min, y_min), (x_max, y_max)) the shadowing field must cover.
        config: the impairments.
        rng: the run's stream (per packet: fading, loss, device offsets).
        store_rng: the store's stream (receiver biases, shadowing fields);
            None draws them from `rng` first.
    """

    def __init__(
        self,
        receivers_xyz: FloatArray,
        rssi_at_1m: FloatArray,
        exponent: FloatArray,
        bbox: FloatArray,
        config: ChannelConfig,
        rng: np.random.Generator,
        store_rng: np.random.Generator | None = None,
    ) -> None:
        self.xyz = receivers_xyz
        self.rssi_at_1m = rssi_at_1m
        self.exponent = exponent
        self.config = config
        self.rng = rng
        m = receivers_xyz.shape[0]
        static = rng if store_rng is None else store_rng
        self.bias: FloatArray = np.asarray(static.normal(0.0, config.receiver_bias_db, m), dtype=np.float64)
        self.origin = np.asarray(bbox, dtype=np.float64)[0] - 2.0
        self.fields: FloatArray | None = None
        if config.correlation_m > 0.0 and config.spatial_fraction > 0.0:
            self.fields = self._fields(np.asarray(bbox, dtype=np.float64), m, static)

    def _fields(self, bbox: FloatArray, m: int, rng: np.random.Generator) -> FloatArray:
        """(m, ny, nx) unit-variance Gaussian fields with correlation exp(-d² / L²).

        White noise smoothed by a Gaussian kernel of std s has correlation
        exp(-d² / (4 s²)), so s = L / 2.
        """
        size = np.ceil((bbox[1] - bbox[0] + 4.0) / FIELD_CELL_M).astype(int) + 1
        s = self.config.correlation_m / 2.0 / FIELD_CELL_M
        fields = np.empty((m, size[1], size[0]))
        for r in range(m):
            noise = gaussian_filter(rng.normal(size=(size[1], size[0])), s, mode="wrap")
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
        loss_db: FloatArray | None = None,
    ) -> FloatArray:
        """RSSI (k, m) of k transmissions at all receivers; NaN where not heard.

        xy (k, 2), emitter_z (k,), facing (k,) heading in radians, offset (k,)
        device TX offset dB, audible (k, m) whether the receiver listens to
        that technology at all, loss_db (k,) a wall between the emitter and
        every receiver (the shop front, for someone on the pavement).
        """
        cfg = self.config
        k, m = xy.shape[0], self.xyz.shape[0]
        d = np.empty((k, m))
        for z in np.unique(emitter_z):
            rows = emitter_z == z
            d[rows] = slant_distance(xy[rows], self.xyz, float(z))
        power = rssi_at_distance(d, self.rssi_at_1m, self.exponent) + self.bias + offset[:, None]
        if loss_db is not None:
            power -= loss_db[:, None]
        if cfg.body_loss_db:
            to_rx = self.xyz[None, :, :2] - xy[:, None, :]
            bearing = np.arctan2(to_rx[..., 1], to_rx[..., 0])
            behind = np.maximum(0.0, -np.cos(bearing - facing[:, None]))
            power -= cfg.body_loss_db * behind
        power += self.shadowing(xy)
        lost = self.rng.random((k, m)) < cfg.packet_loss
        heard = audible & ~lost & (power >= cfg.sensitivity_dbm)
        return np.where(heard, np.round(power), np.nan)
