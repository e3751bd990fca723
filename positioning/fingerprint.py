"""Sectors learned from a calibration walk: how loud each receiver hears each sector.

The geometric sector probability (8) is only as good as the position
estimate, and the estimate inherits every dB the path-loss model misses:
shelves that shadow a receiver over metres, an enclosure's antenna pattern.
A technician's walk knows where it was, so it knows each sector's RSSI
signature as it is, whatever caused it. Per sector s and receiver r the
walk's window means (one per window of the tracker's length, the value the
tracker sees) are summarised by a Gaussian, mean mu_sr and spread sd_sr;
a pair the walk heard little of is shrunk towards the receiver's mean over
the whole walk, so that it says little either way. The spread includes
where in the sector the walk was, so it is wide where the sector's
shadowing varies and narrow where the sector is loud or quiet throughout.

A shopper's phone is not the walk's tag: it transmits o dB more or less
(an unknown phone model, eq. (16)), the same at every receiver. With o ~
N(0, tau²) integrated out, the window means z_r of the receivers heard
(d_r = z_r - mu_sr, w_r = 1 / sd_sr²) have the likelihood

    ln L(s) = -1/2 [sum_r w_r d_r² - (sum_r w_r d_r)² / (W + 1/tau²)]
              - 1/2 sum_r ln(2 pi sd_sr²) - 1/2 ln(1 + tau² W),   W = sum_r w_r   (18)

(the Gaussian integral over o: a common shift of all readings is forgiven,
up to its prior; tau = 0 drops both offset terms). Receivers not heard in
a window add nothing: a lost packet says nothing about the sector.

The sector filter fuses (18) with the geometric probability (8) as
independent evidence about the same sector,

    p(s) ∝ p_geo(s) L(s)^lambda,   L(outside) = max over entrance sectors of L   (19)

(the walk never leaves the store, so outside is judged by geometry alone,
no likelier by fingerprint than the door it is reached by; a sector the
walk did not enter takes the best walked sector's L likewise). lambda tempers
the fingerprint when successive windows repeat the same evidence.

Sector-labelled readings with no coordinates fit (18) just as well: a
dataset whose receivers' positions are approximate still knows which sector
each sample was taken in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

MIN_SD_DB = 1.5
"""Smallest spread a sector x receiver Gaussian may claim: radios report whole dBm and a window mean of
a few readings still varies by a dB or two, so a walk that read one value throughout proves no more."""

PRIOR_WINDOWS = 3.0
"""Pseudo-windows at the receiver's whole-walk mean and spread mixed into each sector x receiver Gaussian:
a pair heard in a window or two says little, one heard in dozens speaks for itself."""


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """Per-sector RSSI signatures of eq. (18): mean, sd (S, m) dB, windows (S,) walk windows per sector.

    Row s is sector index s, column r receiver index r; a NaN mean is a
    receiver the fingerprint knows nothing of (its readings are ignored).
    """

    mean: FloatArray
    sd: FloatArray
    windows: NDArray[np.int64]

    def __post_init__(self) -> None:
        if self.mean.ndim != 2 or self.sd.shape != self.mean.shape or self.windows.shape != self.mean.shape[:1]:
            raise ValueError(f"fingerprint needs mean and sd (S, m) and windows (S,), got "
                             f"{self.mean.shape}, {self.sd.shape} and {self.windows.shape}")
        known = np.isfinite(self.mean)
        if not np.all(np.isfinite(self.sd[known]) & (self.sd[known] > 0.0)):
            raise ValueError("fingerprint spreads must be positive and finite where the mean is known")

    @property
    def n_sectors(self) -> int:
        return int(self.mean.shape[0])

    def loglik(
        self,
        track_index: ArrayLike,
        receiver_index: ArrayLike,
        rssi: ArrayLike,
        k: int,
        offset_sigma_db: float = 0.0,
    ) -> FloatArray:
        """ln L(s) of eq. (18) for k tracks from one window's N readings -> (k, S).

        track_index (N,) row of each reading's track, receiver_index (N,),
        rssi (N,) dBm; repeated readings of a (track, receiver) pair are
        averaged first, as the walk's were. offset_sigma_db is tau, the
        spread of the phones' unknown TX offsets. A track with no reading
        of a known receiver gets 0 everywhere (no evidence).
        """
        ti = np.asarray(track_index, dtype=np.intp).ravel()
        ri = np.asarray(receiver_index, dtype=np.intp).ravel()
        z = np.asarray(rssi, dtype=np.float64).ravel()
        m = self.mean.shape[1]
        known = np.isfinite(self.mean[0, ri]) if ri.size else np.zeros(0, dtype=bool)
        pair, inverse = np.unique(ti[known] * m + ri[known], return_inverse=True)
        sums = np.bincount(inverse, z[known], minlength=pair.size)
        counts = np.bincount(inverse, minlength=pair.size)
        zbar = sums / np.maximum(counts, 1)
        p_track, p_rx = pair // m, pair % m
        d = zbar[:, None] - self.mean[:, p_rx].T  # (P, S)
        w = 1.0 / self.sd[:, p_rx].T**2
        n_s = self.n_sectors
        cols = (p_track[:, None] * n_s + np.arange(n_s)).ravel()

        def per_track(values: FloatArray) -> FloatArray:
            out: FloatArray = np.bincount(cols, values.ravel(), minlength=k * n_s).astype(np.float64)
            return out.reshape(k, n_s)

        q, b, big_w = per_track(w * d * d), per_track(w * d), per_track(w)
        ll = -0.5 * q + 0.5 * per_track(np.log(w / (2.0 * np.pi)))
        if offset_sigma_db > 0.0:
            tau2 = offset_sigma_db**2
            ll += 0.5 * b * b / (big_w + 1.0 / tau2) - 0.5 * np.log1p(tau2 * big_w)
        walked = self.windows > 0
        if walked.any() and not walked.all():  # a sector the walk missed: no likelier than the best it saw
            ll[:, ~walked] = ll[:, walked].max(axis=1, keepdims=True)
        return np.asarray(ll, dtype=np.float64)


def fit_fingerprint(
    window_index: ArrayLike,
    receiver_index: ArrayLike,
    rssi: ArrayLike,
    window_sector: ArrayLike,
    n_sectors: int,
    n_receivers: int,
    *,
    min_sd_db: float = MIN_SD_DB,
    prior_windows: float = PRIOR_WINDOWS,
) -> Fingerprint:
    """The Gaussians of eq. (18) from a walk's readings, each tagged with its window and that window's sector.

    window_index (N,) into window_sector (W,), the sector index of each
    window (outside the sectors: -1 or >= n_sectors, ignored);
    receiver_index (N,), rssi (N,) dBm. Per window and receiver the readings
    are averaged; per sector and receiver those means give mu and sd, mixed
    with `prior_windows` pseudo-windows at the receiver's mean and spread
    over the whole walk; sd is at least `min_sd_db`. A receiver the walk
    never heard is unknown (NaN).
    """
    wi = np.asarray(window_index, dtype=np.intp).ravel()
    ri = np.asarray(receiver_index, dtype=np.intp).ravel()
    z = np.asarray(rssi, dtype=np.float64).ravel()
    sector_of = np.asarray(window_sector, dtype=np.intp).ravel()
    m = n_receivers
    inside = (sector_of[wi] >= 0) & (sector_of[wi] < n_sectors)
    wi, ri, z = wi[inside], ri[inside], z[inside]
    pair, inverse = np.unique(wi * m + ri, return_inverse=True)
    zbar = np.bincount(inverse, z, minlength=pair.size) / np.bincount(inverse, minlength=pair.size)
    p_sector, p_rx = sector_of[pair // m], pair % m
    cell = p_sector * m + p_rx
    size = n_sectors * m
    n = np.bincount(cell, minlength=size).astype(np.float64)
    s1 = np.bincount(cell, zbar, minlength=size)
    s2 = np.bincount(cell, zbar * zbar, minlength=size)
    rx_n = np.bincount(p_rx, minlength=m).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rx_mean = np.bincount(p_rx, zbar, minlength=m) / rx_n
        rx_var = np.bincount(p_rx, zbar * zbar, minlength=m) / rx_n - rx_mean**2
    prior_mean = np.tile(rx_mean, n_sectors)
    prior_var = np.tile(np.maximum(rx_var, min_sd_db**2), n_sectors)
    total = n + prior_windows
    mean = (s1 + prior_windows * prior_mean) / total
    # Pooled second moment about the new mean: the windows' own spread plus the prior's.
    second = s2 + prior_windows * (prior_var + prior_mean**2)
    var = np.maximum(second / total - mean**2, min_sd_db**2)
    windows = np.bincount(sector_of[np.unique(wi)], minlength=n_sectors).astype(np.int64)
    return Fingerprint(mean.reshape(n_sectors, m), np.sqrt(var).reshape(n_sectors, m), windows[:n_sectors])


def fuse(geometric: FloatArray, loglik: FloatArray, entrances: NDArray[np.bool_], weight: float = 1.0,
         floor: float = 0.0) -> FloatArray:
    """Eq. (19): the geometric probabilities (k, S+1) of (8) times L(s)^weight of (18) (k, S), renormalised.

    The outside column takes the entrance sectors' best likelihood; `floor`
    is mixed in as in (8), so that no sector is ruled out outright.
    """
    outside = np.where(entrances, loglik, -np.inf).max(axis=1, keepdims=True) if entrances.any() else \
        loglik.max(axis=1, keepdims=True)
    ll = weight * np.hstack([loglik, outside])
    joint = geometric * np.exp(ll - ll.max(axis=1, keepdims=True))
    p = joint / joint.sum(axis=1, keepdims=True)
    n = p.shape[1]
    return np.asarray((1.0 - floor) * p + floor / n, dtype=np.float64)
