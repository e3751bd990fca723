"""Where every shopper is: a Bayes filter over the cells of the store, for every track, every window.

The tracker's filter (eqs. (6)-(7)) is linearised about its own estimate,
and in a store that is where it fails: the static shadowing that a survey
walk maps (eq. (15)) is steep and bumpy over a metre or two, bodies take up
to 8 dB from one side, and a linearised update follows a bump's gradient
into a wrong basin and settles there. The still grid (eqs. (43)-(47)) weighs
a still shopper against every cell, but a walking one is left to the filter.

Here every track keeps a posterior p_g over the cells g of the store (the
still grid's cells in sectors), advanced a window at a time. A shopper
may move a metre or so per second in any direction, so the
prediction spreads the posterior by a Gaussian of spread s sqrt(dt)
(s = `motion_m`, dt the time since the track's last window), kept within
the store's cells, and mixed with a small floor eps spread over every
cell so that a shopper the filter lost can be found again:

    p⁻_g ∝ (1 - eps) sum_g' p_g' N(c_g - c_g'; 0, s² dt I) / Z_g' + eps / G      (51)

(Z_g' the kernel's mass inside the store from c_g', so a shopper at a wall
does not leak away through it). The window's readings of the track, per
receiver r their count n_r and mean zbar_r, weigh each cell with the still
grid's (44) of one window, readings taken in the same second treated as
independent draws about the map's mean (rho_s = 0 in (43)); the
fingerprint is left to the sector filter.

Two things about a shopper stay put from one window to the next, and the
track carries both beside its cells. The way the body faces: a shopper
at a shelf faces it for seconds to minutes, so the body takes its loss
from the same receivers window after window. Weighed afresh each window,
as (45) does, a wrong cell whose readings some facing explains now and
another facing explains next wins as often as the right one; carried, a
facing must keep explaining the readings. Each track keeps a belief q_j
over the H facings, drifting towards uniform as the shopper may turn,
with `facing_s` the time over which a facing is forgotten:

    q⁻_j = a q_j + (1 - a) / H,   a = exp(-dt / facing_s)                      (53)

And the phone's offset o (eq. (16)): the same phone all visit long. Each
track keeps its belief N(ô, P), from the prior N(0, tau²) at birth,
wandering by the tracker's offset drift q_o (P⁻ = P + q_o² dt). With the
offset's prior N(ô, P) in place of (44)'s N(0, tau²), d_jgr = zbar_r - ô -
mu_jgr, W = sum_r w_r and b_jg = sum_r w_r d_jgr, the window weighs every
cell and facing by

    l_jg = -1/2 [sum_r w_r d_jgr² - b_jg² / (W + 1 / P)]                         (54)

The joint posterior p⁻_g q⁻_j exp(l_jg) is kept as its marginals over the
cells (the track's posterior p_g) and over the facings (q_j), and the
offset's by moments over it (given g and j the offset is Gaussian, mean
ô + b_jg / (W + 1/P) and variance 1 / (W + 1/P)):

    p_g ∝ sum_j p⁻_g q⁻_j exp(l_jg),   q_j ∝ sum_g p⁻_g q⁻_j exp(l_jg)          (52)
    ô' = ô + E[b] / (W + 1/P),   P' = 1 / (W + 1/P) + Var[b] / (W + 1/P)²        (55)

(E, Var over the joint posterior), the product of marginals then taken as
the next window's prior. A track not heard in a window keeps its
prediction. The reported position and its spread are (46) of p_g: its
mean, and its covariance plus the spread of a point within a cell. They
feed the sector filter's (8) as the linearised filter's estimate did.

What this costs per window is the still grid's three matrix products for
every heard track, (tracks) x (facings x cells), a few passes over that
(tracks, facings, cells) array, and a separable Gaussian filter of the
(tracks, cells) raster; 1 m cells keep it within a window's budget at a
thousand tracks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.ndimage import gaussian_filter

from positioning.stillgrid import CHUNK, StillGrid, cell_centres

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

GRID_FILTER_CELL_M = 1.0
"""Cell of the grid filter, m: a sector's margin (1.5 m) is wider, and a thousand tracks fit a window's budget."""

GRID_MOTION_M = 1.2
"""s of eq. (51) where a calibration turns the grid filter on, m per sqrt(s): a shopper's walk of about 1 m/s."""

GRID_OFFSET_SIGMA_DB = 4.0
"""tau of eq. (54) where a calibration turns the grid filter on and the site estimates no phone offsets, dB: phones of
different makes differ by several dB in what they radiate (why ESPresense asks each device's rssi@1m), and once a
kriged map explains the store's field, an unknown phone's offset is the largest error left to the grid."""

GRID_FACING_S = 10.0
"""facing_s of eq. (53), s: a shopper at a shelf looks along it, to the cart and back every several seconds."""

GRID_FLOOR = 1e-4
"""eps of eq. (51): the share of every prediction spread over the whole store."""

DT_STEP_S = 0.25
"""Predictions whose dt round to the same multiple of this share one Gaussian filter."""


@dataclass(frozen=True, eq=False)
class GridFilter:
    """Eqs. (51)-(55) over the cells of `grid` (a `StillGrid` built with segment_correlation 0).

    raster: flat index (G,) of each of the grid's cells on the (ny, nx) raster of `cell_centres(bbox, cell)`.
    A track's state is one row of `width` values: p_g over the G cells, q_j over the H facings, the offset's
    mean ô and its variance P (0 where the grid has no offset, tau = 0).
    """

    grid: StillGrid
    raster: IndexArray
    shape: tuple[int, int]
    motion_m: float
    facing_s: float = GRID_FACING_S
    offset_drift_db: float = 0.0
    floor: float = GRID_FLOOR
    _kept_mass: dict[int, FloatArray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.motion_m > 0.0 and self.facing_s > 0.0 and self.offset_drift_db >= 0.0
                and 0.0 < self.floor < 1.0):
            raise ValueError("the grid filter needs motion_m > 0, facing_s > 0, offset_drift_db >= 0 and floor in "
                             "(0, 1)")
        if self.raster.shape != (self.grid.centres.shape[0],):
            raise ValueError(f"raster needs one index per cell ({self.grid.centres.shape[0]}), got {self.raster.shape}")

    @classmethod
    def over(cls, grid: StillGrid, bbox: ArrayLike, motion_m: float, *, facing_s: float = GRID_FACING_S,
             offset_drift_db: float = 0.0) -> GridFilter:
        """The filter over `grid`'s cells, which must be cells of `cell_centres(bbox, grid.cell_m)`."""
        every = cell_centres(bbox, grid.cell_m)
        xs, ys = np.unique(every[:, 0]), np.unique(every[:, 1])
        ix = np.rint((grid.centres[:, 0] - xs[0]) / grid.cell_m).astype(np.intp)
        iy = np.rint((grid.centres[:, 1] - ys[0]) / grid.cell_m).astype(np.intp)
        if ix.min() < 0 or iy.min() < 0 or ix.max() >= xs.size or iy.max() >= ys.size:
            raise ValueError("the grid's cells are not cells of bbox")
        return cls(grid, iy * xs.size + ix, (int(ys.size), int(xs.size)), float(motion_m), float(facing_s),
                   float(offset_drift_db))

    def __len__(self) -> int:
        """G, the number of cells."""
        return int(self.raster.size)

    @property
    def width(self) -> int:
        """Values in a track's state: G cells, H facings, the offset's mean and variance."""
        return len(self) + self.grid.headings + 2

    def cells(self, state: FloatArray) -> FloatArray:
        """The posteriors p_g (k, G) of states (k, width), a view."""
        return state[:, : len(self)]

    def facings(self, state: FloatArray) -> FloatArray:
        """The facing beliefs q_j (k, H) of states (k, width), a view."""
        return state[:, len(self) : len(self) + self.grid.headings]

    def offset(self, state: FloatArray) -> tuple[FloatArray, FloatArray]:
        """The offset's mean ô and variance P (k,) of states (k, width), views."""
        return state[:, -2], state[:, -1]

    def start(self, k: int) -> FloatArray:
        """The state of k new tracks: every cell and facing alike, the offset at its prior N(0, tau²)."""
        g, h = len(self), self.grid.headings
        return np.hstack([np.full((k, g), 1.0 / g), np.full((k, h), 1.0 / h), np.zeros((k, 1)),
                          np.full((k, 1), self.grid.offset_sigma_db**2)])

    def predict(self, state: FloatArray, dt: ArrayLike) -> FloatArray:
        """Eqs. (51) and (53), and the offset's drift: states (k, width) advanced by dt (k,) s each."""
        dt = np.maximum(np.asarray(dt, dtype=np.float64), 0.0)
        out = np.array(state, dtype=np.float64, copy=True)
        steps = np.rint(dt / DT_STEP_S).astype(np.intp)
        cells = self.cells(out)
        ny, nx = self.shape
        for n in np.unique(steps[steps > 0]).tolist():
            rows = np.flatnonzero(steps == n)
            spread = self.motion_m * np.sqrt(n * DT_STEP_S) / self.grid.cell_m
            smooth = {"sigma": (0.0, spread, spread), "mode": "constant", "truncate": 3.0}
            # Single precision for the raster: the filter's passes over it are the cost, and a cell's share of a
            # posterior needs no more than float32's 7 digits (the floor, eps / G, is far above its smallest).
            full = np.zeros((rows.size, ny * nx), dtype=np.float32)
            full[:, self.raster] = cells[rows] / self._kept(n)
            cells[rows] = gaussian_filter(full.reshape(-1, ny, nx), **smooth).reshape(rows.size, -1)[:, self.raster]
        cells /= cells.sum(axis=1, keepdims=True)
        cells *= 1.0 - self.floor
        cells += self.floor / len(self)
        kept = np.exp(-dt / self.facing_s)[:, None]
        facings = self.facings(out)
        facings *= kept
        facings += (1.0 - kept) / self.grid.headings
        if self.grid.offset_sigma_db > 0.0:
            out[:, -1] += self.offset_drift_db**2 * dt
        return out

    def _kept(self, n: int) -> FloatArray:
        """Z_g' of (51) for a prediction of n steps of DT_STEP_S, computed once per n."""
        if n not in self._kept_mass:
            ny, nx = self.shape
            inside = np.zeros(ny * nx)
            inside[self.raster] = 1.0
            spread = self.motion_m * np.sqrt(n * DT_STEP_S) / self.grid.cell_m
            kept = gaussian_filter(inside.reshape(ny, nx), spread, mode="constant", truncate=3.0).reshape(-1)
            self._kept_mass[n] = np.maximum(kept[self.raster], 1e-12)
        return self._kept_mass[n]

    def update(self, prior: FloatArray, count: FloatArray, total: FloatArray) -> FloatArray:
        """Eqs. (54), (52) and (55): predicted states (k, width) and each track's window, count and total (k, m)
        per receiver."""
        out = np.array(prior, dtype=np.float64, copy=True)
        heard = np.flatnonzero(count.sum(axis=1) > 0.0)
        with_offset = self.grid.offset_sigma_db > 0.0
        for lo in range(0, heard.size, CHUNK):
            rows = heard[lo : lo + CHUNK]
            w, zc, _, seen = self.grid.weights(count[rows], total[rows])
            mean, var = (v[rows] for v in self.offset(prior))
            if with_offset:
                zc = np.where(seen, zc - mean[:, None], 0.0)
            precision = 1.0 / var if with_offset else np.full(rows.size, np.inf)
            ll, b = self.grid.facing_terms(w, zc, precision)  # (54)
            ll -= ll.max(axis=(1, 2))[:, None, None]
            np.exp(ll, out=ll)
            # The joint p⁻_g q⁻_j exp(l_jg) is never formed: its marginals and moments are products of exp(l) with
            # the two priors, each one pass over the (tracks, facings, cells) array.
            p = self.cells(prior)[rows].astype(np.float32)
            q = self.facings(prior)[rows].astype(np.float32)
            by_cell = np.matmul(q[:, None, :], ll)[:, 0]  # sum_j q_j exp(l_jg)
            by_facing = np.matmul(ll, p[:, :, None])[:, :, 0]  # sum_g p_g exp(l_jg)
            mass = (q * by_facing).sum(axis=1, dtype=np.float64)
            self.cells(out)[rows] = p * by_cell / mass[:, None]  # (52)
            self.facings(out)[rows] = q * by_facing / mass[:, None]
            if b is not None:  # (55)
                s = w.sum(axis=1) + precision
                ll *= b
                eb = (q * np.matmul(ll, p[:, :, None])[:, :, 0]).sum(axis=1, dtype=np.float64) / mass
                ll *= b
                eb2 = (q * np.matmul(ll, p[:, :, None])[:, :, 0]).sum(axis=1, dtype=np.float64) / mass
                out[rows, -2] = mean + eb / s
                out[rows, -1] = 1.0 / s + np.maximum(eb2 - eb**2, 0.0) / s**2
        return out

    def estimate(self, state: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Eq. (46) of the cells' posteriors of states (k, width): mean (k, 2) and covariance (k, 2, 2)."""
        return self.grid.moments(self.cells(state))
