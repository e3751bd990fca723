"""What the path-loss model misses, per receiver and place: a residual field learnt from a calibration walk.

The log-distance model (1) is isotropic; a real receiver is not. A shelf, a
wall, a metal fridge or the enclosure's antenna pattern make a receiver read
several dB more or less than (1) over whole regions of the store, and those
deviations stay put: they are not noise that averaging removes, they are a
bias that moves the estimate by metres. A technician's walk measures them.
The residual field of receiver r is their kernel regression, shrunk to
zero where the walk left little evidence:

    g_r(p) = sum_j K(p - p_j) e_j / (sum_j K(p - p_j) + c0)                  (15)

with e_j = z_j - h_r(p_j) the walk's residuals against (1) at the known
positions p_j, K a Gaussian of spread `bandwidth_m` (peak 1) and c0
`prior_readings`, pseudo-readings of residual zero: a place with far fewer
than c0 readings nearby keeps the plain model. The measurement becomes
h_r(p) + g_r(p) everywhere the tracker evaluates (1).

(15) is evaluated on a 0.25 m grid by sharing each reading among its four
nearest cell centres (bilinear weights) and filtering both sums with the
same Gaussian, so fitting costs O(cells) and not O(cells x readings). The
field between cell centres is bilinear: continuous, with a gradient that
steps at cell edges by no more than the smooth field's curvature over 0.25 m.
The grid holds 8 bytes per receiver per cell: 0.6 MB for the example store
(30 x 20 m, 8 receivers), 31 MB for 100 x 60 m with 40.

The bandwidth must stay near the shadowing's correlation distance or above:
a rough field has steep spurious gradients that the linearised update
follows (on the danis recordings, 0.5 m with c0 = 2 put straight_02 at
4.6 m instead of 0.9 m; 1 m with c0 = 5 is the default).

Kriging. (15) smooths with a width chosen for the tracker, not for the
field; where the walk shows how the field itself varies, the best linear
estimate of it is the Gaussian-process mean. The walk's own semivariogram,
half the mean squared difference of two residuals of one receiver a
distance h apart, pooled over receivers, is fitted with the Gaussian model

    gamma(h) = nugget + signal (1 - exp(-h² / L²))                          (49)

by least squares over distance bins: the nugget is what two readings at one
place still differ by (per-packet fading, a phone's jitter), the signal the
variance of the field that stays put, L its correlation length. With the
walk's readings averaged in small bins (a bin of c readings at mean position
a_k with mean residual ē_k has noise nugget / c_k), the field is

    g_r(p) = k(p)ᵀ (K + diag(nugget / c))⁻¹ ē,   k_k(p) = signal exp(-|p - a_k|² / L²)   (50)

with K the same covariance between the bins. Far from the walk k(p) falls
to zero and so does g_r: the plain model, as (15)'s pseudo-readings give,
without a prior count to tune. The result is a field on the grid of (15),
stored and read the same way. It is truer than (15) at any one bandwidth
(it follows the field as finely as the walk shows it to vary), and so
steeper: a tracker that weighs the whole store at once (a grid filter) gains
from it, while one that follows the local gradient may be led astray by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

DEFAULT_BANDWIDTH_M = 1.0
DEFAULT_PRIOR_READINGS = 5.0
DEFAULT_CELL_M = 0.25
DEFAULT_BIN_M = 0.5

VARIOGRAM_BIN_M = 0.5
"""Width of the distance bins of the semivariogram (49): well under any correlation length a map can follow."""

VARIOGRAM_RANGE_M = 8.0
"""Pairs further apart than this are not binned: the field's variance is reached well before, and distant pairs
cost most of the pair count while telling only the sill."""

VARIOGRAM_READINGS = 1500
"""At most this many readings per receiver enter the semivariogram (a fixed-seed subsample): the pair count, and
with it the cost, grows with its square, while the bins are already full long before."""

VARIOGRAM_MIN_PAIRS = 30
"""A distance bin with fewer pairs than this is left out of the fit of (49): its mean is noise."""

KRIGE_MAX_BINS = 3000
"""A receiver's readings are averaged into at most this many bins before (50)'s dense solve (coarser bins if the
walk covers more ground): its cost grows with the cube of the bins, its memory with their square."""

KRIGE_JITTER = 1e-6
"""Added to (50)'s diagonal, as a share of the signal variance: far below any nugget a receiver has, it keeps a
noiseless walk's solve well conditioned (a Gaussian covariance between close bins is nearly singular)."""


@dataclass(frozen=True, eq=False)
class RadioMap:
    """Residual fields g_r of eq. (15): values (m, nx, ny) dB at cell centres origin + cell_m (i, j).

    Row r is receiver index r, as in `pathloss.Receivers`. Outside the grid
    the field keeps its edge value (and has no gradient).
    """

    origin: FloatArray
    cell_m: float
    values: FloatArray

    def __post_init__(self) -> None:
        if self.values.ndim != 3 or self.values.shape[1] < 2 or self.values.shape[2] < 2:
            raise ValueError(f"radio map values must have shape (m, nx >= 2, ny >= 2), got {self.values.shape}")
        if self.origin.shape != (2,) or not np.all(np.isfinite(self.origin)):
            raise ValueError(f"radio map origin must be two finite numbers, got {self.origin.tolist()}")
        if not (np.isfinite(self.cell_m) and self.cell_m > 0.0):
            raise ValueError(f"radio map cell_m must be positive, got {self.cell_m}")
        if not np.all(np.isfinite(self.values)):
            raise ValueError("radio map values must be finite")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def at(self, receiver_index: IndexArray, xy: FloatArray) -> tuple[FloatArray, FloatArray]:
        """g (N,) dB and its gradient (N, 2) dB/m for readings of receivers (N,) at positions xy (N, 2)."""
        nx, ny = self.values.shape[1:]
        f = (xy - self.origin) / self.cell_m
        inside = (f >= 0.0) & (f <= np.array([nx - 1, ny - 1]))
        f = np.clip(f, 0.0, np.array([nx - 1, ny - 1], dtype=np.float64))
        i = np.minimum(f.astype(np.intp), np.array([nx - 2, ny - 2]))
        t = f - i
        g = self.values
        g00 = g[receiver_index, i[:, 0], i[:, 1]]
        g10 = g[receiver_index, i[:, 0] + 1, i[:, 1]]
        g01 = g[receiver_index, i[:, 0], i[:, 1] + 1]
        g11 = g[receiver_index, i[:, 0] + 1, i[:, 1] + 1]
        tx, ty = t[:, 0], t[:, 1]
        value = g00 * (1 - tx) * (1 - ty) + g10 * tx * (1 - ty) + g01 * (1 - tx) * ty + g11 * tx * ty
        dx = ((g10 - g00) * (1 - ty) + (g11 - g01) * ty) / self.cell_m
        dy = ((g01 - g00) * (1 - tx) + (g11 - g10) * tx) / self.cell_m
        gradient = np.stack([np.where(inside[:, 0], dx, 0.0), np.where(inside[:, 1], dy, 0.0)], axis=-1)
        return value, gradient


def grid_for(bbox: ArrayLike, cell_m: float = DEFAULT_CELL_M) -> tuple[FloatArray, tuple[int, int]]:
    """Origin (2,) and shape (nx, ny) of a grid whose cell centres span bbox ((x0, y0), (x1, y1))."""
    box = np.asarray(bbox, dtype=np.float64)
    if box.shape != (2, 2) or not np.all(box[1] > box[0]):
        raise ValueError(f"bbox must be ((x_min, y_min), (x_max, y_max)) with max > min, got {box.tolist()}")
    n = np.ceil((box[1] - box[0]) / cell_m).astype(int) + 1
    return box[0].copy(), (max(int(n[0]), 2), max(int(n[1]), 2))


def _walk(
    receiver_index: ArrayLike, xy: ArrayLike, residual_db: ArrayLike, receivers: int
) -> tuple[IndexArray, FloatArray, FloatArray]:
    """The walk's readings as arrays (N,), (N, 2), (N,), or ValueError saying in one line what is wrong with them."""
    ri = np.asarray(receiver_index, dtype=np.intp).ravel()
    p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    e = np.asarray(residual_db, dtype=np.float64).ravel()
    if not ri.size == p.shape[0] == e.size:
        raise ValueError(f"receiver_index, xy and residual_db differ in length: {ri.size}, {p.shape[0]}, {e.size}")
    if ri.size and (ri.min() < 0 or ri.max() >= receivers):
        raise ValueError(f"receiver_index must be in [0, {receivers})")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(e))):
        raise ValueError("walk positions and residuals must be finite")
    return ri, p, e


def fit_radio_map(
    receiver_index: ArrayLike,
    xy: ArrayLike,
    residual_db: ArrayLike,
    receivers: int,
    bbox: ArrayLike,
    *,
    bandwidth_m: float = DEFAULT_BANDWIDTH_M,
    prior_readings: float = DEFAULT_PRIOR_READINGS,
    cell_m: float = DEFAULT_CELL_M,
) -> RadioMap:
    """Eq. (15) from N walk readings: receiver (N,), known position xy (N, 2), residual against (1) (N,) dB.

    Readings outside bbox count at its edge. A receiver without readings
    gets the zero field (the plain model).
    """
    ri, p, e = _walk(receiver_index, xy, residual_db, receivers)
    if not bandwidth_m > 0.0 or not prior_readings > 0.0:
        raise ValueError("bandwidth_m and prior_readings must be positive")
    origin, (nx, ny) = grid_for(bbox, cell_m)
    # Each reading is shared among its four surrounding cell centres with bilinear weights
    # (cloud-in-cell), so the grid does not move readings by up to half a cell.
    f = np.clip((p - origin) / cell_m, 0.0, np.array([nx - 1, ny - 1], dtype=np.float64))
    i = np.minimum(f.astype(np.intp), np.array([nx - 2, ny - 2]))
    t = f - i
    size = receivers * nx * ny
    flat_sums, flat_counts = np.zeros(size), np.zeros(size)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        w = (t[:, 0] if dx else 1.0 - t[:, 0]) * (t[:, 1] if dy else 1.0 - t[:, 1])
        flat = (ri * nx + i[:, 0] + dx) * ny + i[:, 1] + dy
        flat_sums += np.bincount(flat, w * e, minlength=size)
        flat_counts += np.bincount(flat, w, minlength=size)
    sums, counts = flat_sums.reshape(receivers, nx, ny), flat_counts.reshape(receivers, nx, ny)
    # Imported here, as in pathloss: the agent's tracker needs `RadioMap.at`, not SciPy's memory.
    from scipy.ndimage import gaussian_filter  # noqa: PLC0415

    s = bandwidth_m / cell_m
    # gaussian_filter's kernel sums to 1; (15)'s peaks at 1, i.e. sums to 2 pi s² cells.
    scale = 2.0 * np.pi * s**2
    smooth = {"sigma": (0.0, s, s), "mode": "constant", "truncate": 3.0}
    num = scale * gaussian_filter(sums, **smooth)
    den = scale * gaussian_filter(counts, **smooth)
    return RadioMap(origin, float(cell_m), num / (den + prior_readings))


@dataclass(frozen=True)
class FieldCovariance:
    """The parameters of eq. (49): per-packet variance nugget_db2, the lasting field's variance signal_db2 (dB²),
    and its correlation length length_m."""

    nugget_db2: float
    signal_db2: float
    length_m: float

    def __post_init__(self) -> None:
        values = (self.nugget_db2, self.signal_db2, self.length_m)
        if not (all(math.isfinite(v) for v in values) and self.nugget_db2 >= 0.0 and self.signal_db2 >= 0.0
                and self.length_m > 0.0):
            raise ValueError(f"field covariance needs nugget, signal >= 0 and length > 0, got {values}")


def fit_field_covariance(
    receiver_index: ArrayLike, xy: ArrayLike, residual_db: ArrayLike, receivers: int
) -> FieldCovariance:
    """Eq. (49) fitted to the walk's semivariogram: readings as `fit_radio_map` takes them.

    Only pairs of one receiver enter: receivers see different fields, and a
    pair across two would measure their difference, not the field's. Their
    half squared differences are pooled over receivers in distance bins, so
    a receiver heard little still adds what it has. Each receiver's readings
    are subsampled with a fixed seed, so the same walk always gives the same
    parameters. ValueError if the walk leaves too few bins with enough pairs
    to fit three parameters.
    """
    ri, p, e = _walk(receiver_index, xy, residual_db, receivers)
    # Imported here, as in pathloss: the agent's tracker needs `RadioMap.at`, not SciPy's memory.
    from scipy.optimize import least_squares  # noqa: PLC0415
    from scipy.spatial.distance import pdist  # noqa: PLC0415

    edges = np.arange(0.0, VARIOGRAM_RANGE_M + VARIOGRAM_BIN_M / 2, VARIOGRAM_BIN_M)
    bins = edges.size - 1
    half_sq, lag, pairs = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    rng = np.random.default_rng(0)
    for r in range(receivers):
        mine = np.flatnonzero(ri == r)
        if mine.size > VARIOGRAM_READINGS:
            mine = np.sort(rng.choice(mine, VARIOGRAM_READINGS, replace=False))
        if mine.size < 2:
            continue
        h = pdist(p[mine])
        v = 0.5 * pdist(e[mine, None], "sqeuclidean")
        b = np.searchsorted(edges, h, side="right") - 1
        ok = b < bins
        half_sq += np.bincount(b[ok], v[ok], bins)
        lag += np.bincount(b[ok], h[ok], bins)
        pairs += np.bincount(b[ok], None, bins)
    full = pairs >= VARIOGRAM_MIN_PAIRS
    if full.sum() < 4:
        raise ValueError(f"too few walk readings to estimate the field's covariance: {int(full.sum())} distance bins "
                         f"of {VARIOGRAM_BIN_M:g} m with {VARIOGRAM_MIN_PAIRS} pairs or more, 4 needed")
    lags, gamma = lag[full] / pairs[full], half_sq[full] / pairs[full]
    top = float(gamma.max())
    if top <= 0.0:
        return FieldCovariance(0.0, 0.0, float(lags[-1]))  # every residual alike: no field, no noise

    def misfit(q: FloatArray) -> FloatArray:
        model: FloatArray = q[0] + q[1] * (1.0 - np.exp(-(lags**2) / q[2] ** 2))
        return (model - gamma) / top

    # The correlation length is bounded by what the bins can resolve: half a bin to twice the range binned.
    low, high = VARIOGRAM_BIN_M / 2, 2.0 * VARIOGRAM_RANGE_M
    start = [min(float(gamma[0]), top), max(top - float(gamma[0]), 0.0), min(max(2.0, low), high)]
    q = least_squares(misfit, start, bounds=([0.0, 0.0, low], [np.inf, np.inf, high])).x
    return FieldCovariance(float(q[0]), float(q[1]), float(q[2]))


def krige_radio_map(
    receiver_index: ArrayLike,
    xy: ArrayLike,
    residual_db: ArrayLike,
    receivers: int,
    bbox: ArrayLike,
    *,
    covariance: FieldCovariance | None = None,
    cell_m: float = DEFAULT_CELL_M,
    bin_m: float = DEFAULT_BIN_M,
) -> RadioMap:
    """Eq. (50) from N walk readings, as `fit_radio_map` takes them, on its grid: a `RadioMap` like any other.

    `covariance` None estimates it from the same readings (eq. (49)). The
    readings of each receiver are averaged in squares of `bin_m`, at their
    mean position: readings a few centimetres apart tell the field no more
    than their mean, and the solve is over bins, not readings. A receiver
    whose walk covers more than KRIGE_MAX_BINS bins gets coarser ones (bin_m
    doubled until they fit). A receiver without readings gets the zero
    field, and so does every place far from the walk.
    """
    ri, p, e = _walk(receiver_index, xy, residual_db, receivers)
    if not (math.isfinite(bin_m) and bin_m > 0.0):
        raise ValueError(f"bin_m must be positive, got {bin_m}")
    cov = fit_field_covariance(ri, p, e, receivers) if covariance is None else covariance
    origin, (nx, ny) = grid_for(bbox, cell_m)
    values = np.zeros((receivers, nx, ny))
    if cov.signal_db2 <= 0.0:
        return RadioMap(origin, float(cell_m), values)
    from scipy.linalg import cho_factor, cho_solve  # noqa: PLC0415

    gx, gy = origin[0] + cell_m * np.arange(nx), origin[1] + cell_m * np.arange(ny)
    for r in range(receivers):
        mine = ri == r
        if not mine.any():
            continue
        at, mean, count = _binned(p[mine], e[mine], bin_m)
        apart = (at[:, None, 0] - at[None, :, 0]) ** 2 + (at[:, None, 1] - at[None, :, 1]) ** 2
        k = cov.signal_db2 * np.exp(-apart / cov.length_m**2)
        k[np.diag_indices_from(k)] += cov.nugget_db2 / count + KRIGE_JITTER * cov.signal_db2
        alpha = cho_solve(cho_factor(k, lower=True, overwrite_a=True), mean)
        # The Gaussian covariance factors along x and y, so the grid's field is one (nx, bins) x (bins, ny) product.
        along_x = np.exp(-((gx[:, None] - at[None, :, 0]) ** 2) / cov.length_m**2)
        along_y = np.exp(-((gy[:, None] - at[None, :, 1]) ** 2) / cov.length_m**2)
        values[r] = cov.signal_db2 * (along_x * alpha) @ along_y.T
    return RadioMap(origin, float(cell_m), values)


def _binned(p: FloatArray, e: FloatArray, bin_m: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """One receiver's readings averaged in squares of bin_m (doubled until at most KRIGE_MAX_BINS are occupied):
    mean positions (B, 2), mean residuals (B,), readings per bin (B,)."""
    while True:
        ij = np.floor((p - p.min(axis=0)) / bin_m).astype(np.int64)
        _, inverse, count = np.unique(ij[:, 0] * (int(ij[:, 1].max()) + 1) + ij[:, 1], return_inverse=True,
                                      return_counts=True)
        if count.size <= KRIGE_MAX_BINS:
            break
        bin_m *= 2.0
    at = np.stack([np.bincount(inverse, p[:, j]) for j in (0, 1)], axis=-1) / count[:, None]
    return at, np.bincount(inverse, e) / count, count.astype(np.float64)
