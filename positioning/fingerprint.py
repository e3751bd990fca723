"""Sectors learned from a calibration walk: how loud each receiver hears each sector.

The geometric sector probability (8) is only as good as the position
estimate, and the estimate inherits every dB the path-loss model misses:
shelves that shadow a receiver over metres, an enclosure's antenna pattern.
A technician's walk knows where it was, so it knows each sector's RSSI
signature as it is, whatever caused it. Per sector s and receiver r the
walk's window means z_1..z_n (one per window of the tracker's length, the
value the tracker sees) give a density of what r hears in s: a kernel
estimate, shrunk towards the receiver's whole-walk Gaussian N(mu_r, sd_r²)
by P pseudo-windows so that a pair the walk heard little of says little,

    p_sr(z) = [sum_i N(z; z_i, h²) + P N(z; mu_r, sd_r²)] / (n + P)        (18a)

A kernel, not one Gaussian per pair, because what a receiver hears in a
sector is seldom one bump: a sector spans near and far parts, a body or a
shelf takes 5-10 dB off some readings and not others, a phone's antenna
turns. The bandwidth h is the walk's own: of a few candidates, the one with
the highest leave-one-out likelihood of the walk's windows under (18a),

    h = argmax_h sum_{s,r,i} ln p_sr^(-i)(z_i)                            (18b)

(p^(-i) leaves window i out of its own kernel sum), so a walk of a few
noisy windows gets a wide kernel and hundreds of steady ones a narrow one.
(18a) is kept as ln p_sr on a grid of dB values and read by linear
interpolation (readings beyond the grid take its edge).

A shopper's phone is not the walk's tag: it transmits o dB more or less
(an unknown phone model, eq. (16)), the same at every receiver. With o ~
N(0, tau²) integrated out, the window means z_r of the receivers heard have
the likelihood

    ln L(s) = ln sum_j w_j exp(sum_r ln p_sr(z_r - o_j))                   (18)

by the trapezoid rule over offsets o_j evenly spaced by min(h, tau) out to
3 tau either side, w_j ∝ N(o_j; 0, tau²) summing to one (tau = 0 is the
single node o = 0: the product of the densities). The integrand is as
smooth as the kernels, so nodes a kernel apart sum it to within a few
hundredths of a nat; a coarser rule (nine Gauss-Hermite nodes, 4 dB apart
at tau = 4) misses peaks narrower than its spacing. Receivers not heard in
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

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

MIN_SD_DB = 1.5
"""Smallest spread a receiver's whole-walk Gaussian, the prior of (18a), may claim: radios report whole dBm and
a window mean of a few readings still varies by a dB or two."""

PRIOR_WINDOWS = 3.0
"""P of (18a): pseudo-windows of the receiver's whole-walk Gaussian mixed into each sector x receiver density,
so a pair heard in a window or two says little and one heard in dozens speaks for itself."""

BANDWIDTHS_DB = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
"""Kernel widths (18b) chooses from: below 1 dB a whole-dBm radio's readings would be read as exact."""

GRID_STEP_DB = 0.5
"""Spacing of the dB grid (18a) is kept on: a quarter of the narrowest kernel or less, so interpolation is
within a percent of the density."""

GRID_MARGIN_DB = 20.0
"""How far the grid reaches beyond the loudest and quietest walk windows: five of the widest kernels."""

OFFSET_SPACING = 1.0
"""Spacing of (18)'s offset nodes, in kernel widths (or tau, if narrower): the integrand is no sharper than the
kernels it is made of, and the cost grows with the nodes."""

OFFSET_REACH = 3.0
"""How many tau either side of zero (18)'s offset integral reaches: the 0.3 % of phones beyond are read as if
3 tau off."""


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """Per-sector RSSI signatures: the densities (18a) and their summary.

    logpdf (S, m, G) is ln p_sr on `grid_db` (G,); mean, sd (S, m) dB are
    the walk windows' mean and spread per pair (what a person reads; NaN
    for a receiver the fingerprint knows nothing of, whose readings are
    ignored); windows (S,) walk windows per sector; bandwidth_db the h of
    (18b). Row s is sector index s, column r receiver index r.
    """

    mean: FloatArray
    sd: FloatArray
    windows: NDArray[np.int64]
    grid_db: FloatArray
    logpdf: FloatArray
    bandwidth_db: float
    _by_receiver: FloatArray = field(init=False, repr=False)
    _slope: FloatArray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mean.ndim != 2 or self.sd.shape != self.mean.shape or self.windows.shape != self.mean.shape[:1]:
            raise ValueError(f"fingerprint needs mean and sd (S, m) and windows (S,), got "
                             f"{self.mean.shape}, {self.sd.shape} and {self.windows.shape}")
        grid = self.grid_db
        if grid.ndim != 1 or grid.size < 2 or not np.all(np.diff(grid) > 0.0) or \
                not np.allclose(np.diff(grid), grid[1] - grid[0]):
            raise ValueError("fingerprint grid must be at least two evenly spaced, increasing dB values")
        if self.logpdf.shape != (*self.mean.shape, grid.size):
            raise ValueError(f"fingerprint densities must be {(*self.mean.shape, grid.size)}, got {self.logpdf.shape}")
        known = np.isfinite(self.mean)
        if not np.all(np.isfinite(self.sd[known]) & (self.sd[known] > 0.0)):
            raise ValueError("fingerprint spreads must be positive and finite where the mean is known")
        if not np.all(np.isfinite(self.logpdf[known])):
            raise ValueError("fingerprint densities must be finite where the mean is known")
        if not (np.isfinite(self.bandwidth_db) and self.bandwidth_db > 0.0):
            raise ValueError(f"fingerprint bandwidth must be positive, got {self.bandwidth_db}")
        # (m G, S), contiguous: a reading's densities in every sector are one row to gather, and a row's step to the
        # next grid value another, so that the interpolation is two gathers of rows (np.take) and one product.
        by_receiver = np.ascontiguousarray(self.logpdf.transpose(1, 2, 0))  # (m, G, S)
        slope = np.diff(by_receiver, axis=1, append=by_receiver[:, -1:])
        object.__setattr__(self, "_by_receiver", by_receiver.reshape(-1, self.mean.shape[0]))
        object.__setattr__(self, "_slope", slope.reshape(-1, self.mean.shape[0]))

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
        n_s = self.n_sectors
        known = np.isfinite(self.mean[0, ri]) if ri.size else np.zeros(0, dtype=bool)
        pair, inverse = np.unique(ti[known] * m + ri[known], return_inverse=True)
        sums = np.bincount(inverse, z[known], minlength=pair.size)
        counts = np.bincount(inverse, minlength=pair.size)
        zbar = sums / np.maximum(counts, 1)
        p_track, p_rx = pair // m, pair % m
        nodes, log_weights = _offset_nodes(offset_sigma_db, self.bandwidth_db)
        cols = (p_track[:, None] * n_s + np.arange(n_s)).ravel()
        grid = self.grid_db
        step = grid[1] - grid[0]
        row = p_rx * grid.size
        per_node = np.empty((nodes.size, k * n_s))
        for j, o in enumerate(nodes):
            pos = np.clip((zbar - o - grid[0]) / step, 0.0, grid.size - 1.0)
            lo = np.minimum(pos.astype(np.intp), grid.size - 2)
            at = row + lo
            value = np.take(self._by_receiver, at, axis=0)
            value += (pos - lo)[:, None] * np.take(self._slope, at, axis=0)  # (P, S)
            per_node[j] = np.bincount(cols, value.ravel(), minlength=k * n_s)
        per_node += log_weights[:, None]
        top = per_node.max(axis=0)
        ll = (top + np.log(np.exp(per_node - top).sum(axis=0))).reshape(k, n_s)
        walked = self.windows > 0
        if walked.any() and not walked.all():  # a sector the walk missed: no likelier than the best it saw
            ll[:, ~walked] = ll[:, walked].max(axis=1, keepdims=True)
        return np.asarray(ll, dtype=np.float64)


def _offset_nodes(tau: float, bandwidth_db: float) -> tuple[FloatArray, FloatArray]:
    """Nodes o_j and ln w_j of (18)'s trapezoid rule over the phone's offset (one node at 0 for tau 0)."""
    if tau <= 0.0:
        return np.zeros(1), np.zeros(1)
    half = int(np.ceil(OFFSET_REACH * tau / (min(bandwidth_db, tau) * OFFSET_SPACING)))
    nodes = np.linspace(-OFFSET_REACH * tau, OFFSET_REACH * tau, 2 * half + 1)
    log_w = -0.5 * (nodes / tau) ** 2
    log_w[[0, -1]] -= np.log(2.0)  # the trapezoid's half weights at the ends
    return nodes, log_w - (log_w.max() + np.log(np.exp(log_w - log_w.max()).sum()))


def _gauss(x: FloatArray, mean: FloatArray, sd: FloatArray) -> FloatArray:
    return np.asarray(np.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * np.sqrt(2.0 * np.pi)), dtype=np.float64)


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
    bandwidths_db: tuple[float, ...] = BANDWIDTHS_DB,
) -> Fingerprint:
    """The densities of eq. (18a) from a walk's readings, each tagged with its window and that window's sector.

    window_index (N,) into window_sector (W,), the sector index of each
    window (outside the sectors: -1 or >= n_sectors, ignored);
    receiver_index (N,), rssi (N,) dBm. Per window and receiver the readings
    are averaged; per sector and receiver those means make the kernel sum
    of (18a) with the bandwidth (18b) chooses from `bandwidths_db`, mixed
    with `prior_windows` pseudo-windows of the receiver's whole-walk
    Gaussian (spread at least `min_sd_db`). A receiver the walk never heard
    is unknown (NaN mean).
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
    p_rx = pair % m
    cell = sector_of[pair // m] * m + p_rx
    size = n_sectors * m
    n = np.bincount(cell, minlength=size).astype(np.float64)
    rx_n = np.bincount(p_rx, minlength=m).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rx_mean = np.bincount(p_rx, zbar, minlength=m) / rx_n
        rx_sd = np.sqrt(np.maximum(np.bincount(p_rx, zbar * zbar, minlength=m) / rx_n - rx_mean**2, min_sd_db**2))
        mean = np.bincount(cell, zbar, minlength=size) / n
        sd = np.sqrt(np.maximum(np.bincount(cell, zbar * zbar, minlength=size) / n - mean**2, min_sd_db**2))
    heard = rx_n > 0
    mean = np.where(n > 0, mean, np.tile(rx_mean, n_sectors)).reshape(n_sectors, m)
    sd = np.where(n > 0, sd, np.tile(rx_sd, n_sectors)).reshape(n_sectors, m)
    mean[:, ~heard] = np.nan
    sd[:, ~heard] = np.nan
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(size + 1))
    groups = {int(c): zbar[order[bounds[c]:bounds[c + 1]]] for c in np.flatnonzero(n)}  # each pair's window means
    h = _loo_bandwidth(groups, rx_mean, rx_sd, m, prior_windows, bandwidths_db)
    lo = np.floor((zbar.min() if zbar.size else -100.0) - GRID_MARGIN_DB)
    hi = np.ceil((zbar.max() if zbar.size else -40.0) + GRID_MARGIN_DB)
    grid = np.arange(lo, hi + GRID_STEP_DB / 2.0, GRID_STEP_DB)
    kernel_sum = np.zeros((size, grid.size))
    for c, values in groups.items():
        kernel_sum[c] = _gauss(grid[:, None], values[None, :], np.array(h)).sum(axis=1)
    prior = _gauss(grid[None, :], np.tile(rx_mean, n_sectors)[:, None], np.tile(rx_sd, n_sectors)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        density = (kernel_sum + prior_windows * prior) / (n + prior_windows)[:, None]
        logpdf = np.log(np.maximum(density, np.finfo(np.float64).tiny)).reshape(n_sectors, m, grid.size)
    logpdf[:, ~heard] = np.nan
    windows = np.bincount(sector_of[np.unique(wi)], minlength=n_sectors).astype(np.int64)
    return Fingerprint(mean, sd, windows[:n_sectors], grid, logpdf, h)


def _loo_bandwidth(groups: dict[int, FloatArray], rx_mean: FloatArray, rx_sd: FloatArray, m: int,
                   prior_windows: float, bandwidths_db: tuple[float, ...]) -> float:
    """Eq. (18b): the bandwidth whose (18a), each window left out of its own kernel sum, best predicts the walk.

    groups: per sector x receiver cell (index s * m + r) the walk's window means there.
    """
    if not bandwidths_db or any(h <= 0.0 for h in bandwidths_db):
        raise ValueError(f"bandwidths must be positive, got {bandwidths_db}")
    if not groups:
        return float(bandwidths_db[0])
    weight = {c: values.size - 1.0 + prior_windows for c, values in groups.items()}
    # A lone window with no prior has nothing left to predict it.
    scored = {c: values for c, values in groups.items() if weight[c] > 0.0}
    prior = {c: prior_windows * _gauss(values, rx_mean[c % m], rx_sd[c % m]) for c, values in scored.items()}
    scores = []
    for h in bandwidths_db:
        total = 0.0
        for c, values in scored.items():
            block = _gauss(values[:, None], values[None, :], np.array(h))
            others = block.sum(axis=1) - block.diagonal()
            total += float(np.log(np.maximum((others + prior[c]) / weight[c], np.finfo(np.float64).tiny)).sum())
        scores.append(total)
    return float(bandwidths_db[int(np.argmax(scores))])


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
