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
grid's likelihood (44)-(45) of one window: readings taken in the same
second are treated as independent draws about the map's mean (rho_s = 0
in (43)), the phone's offset integrated out per window, the facing
marginalised (the fingerprint is left to the sector filter):

    p_g ∝ p⁻_g exp(l_g)                                                        (52)

A track not heard in a window keeps its prediction. The reported position
and its spread are (46) of the posterior: its mean, and its covariance plus
the spread of a point within a cell. They feed the sector filter's (8)
as the linearised filter's estimate did.

What this costs per window is the still grid's three matrix products for
every heard track, (tracks) x (facings x cells), plus a separable Gaussian
filter of the (tracks, cells) raster; 1 m cells keep it within a window's
budget at a thousand tracks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.ndimage import gaussian_filter

from positioning.stillgrid import StillGrid, cell_centres

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

GRID_FILTER_CELL_M = 1.0
"""Cell of the grid filter, m: a sector's margin (1.5 m) is wider, and a thousand tracks fit a window's budget."""

GRID_MOTION_M = 1.2
"""s of eq. (51) where a calibration turns the grid filter on, m per sqrt(s): a shopper's walk of about 1 m/s."""

GRID_FLOOR = 1e-4
"""eps of eq. (51): the share of every prediction spread over the whole store."""

DT_STEP_S = 0.25
"""Predictions whose dt round to the same multiple of this share one Gaussian filter."""


@dataclass(frozen=True, eq=False)
class GridFilter:
    """Eqs. (51)-(52) over the cells of `grid` (a `StillGrid` built with segment_correlation 0).

    raster: flat index (G,) of each of the grid's cells on the (ny, nx) raster of `cell_centres(bbox, cell)`.
    """

    grid: StillGrid
    raster: IndexArray
    shape: tuple[int, int]
    motion_m: float
    floor: float = GRID_FLOOR
    _kept_mass: dict[int, FloatArray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.motion_m > 0.0 and 0.0 < self.floor < 1.0):
            raise ValueError("the grid filter needs motion_m > 0 and floor in (0, 1)")
        if self.raster.shape != (self.grid.centres.shape[0],):
            raise ValueError(f"raster needs one index per cell ({self.grid.centres.shape[0]}), got {self.raster.shape}")

    @classmethod
    def over(cls, grid: StillGrid, bbox: ArrayLike, motion_m: float) -> GridFilter:
        """The filter over `grid`'s cells, which must be cells of `cell_centres(bbox, grid.cell_m)`."""
        every = cell_centres(bbox, grid.cell_m)
        xs, ys = np.unique(every[:, 0]), np.unique(every[:, 1])
        ix = np.rint((grid.centres[:, 0] - xs[0]) / grid.cell_m).astype(np.intp)
        iy = np.rint((grid.centres[:, 1] - ys[0]) / grid.cell_m).astype(np.intp)
        if ix.min() < 0 or iy.min() < 0 or ix.max() >= xs.size or iy.max() >= ys.size:
            raise ValueError("the grid's cells are not cells of bbox")
        return cls(grid, iy * xs.size + ix, (int(ys.size), int(xs.size)), float(motion_m))

    def __len__(self) -> int:
        return int(self.raster.size)

    def start(self, k: int) -> FloatArray:
        """The posterior of k new tracks: every cell of the store alike."""
        return np.full((k, len(self)), 1.0 / len(self))

    def predict(self, p: FloatArray, dt: ArrayLike) -> FloatArray:
        """Eq. (51): posteriors p (k, G) advanced by dt (k,) s each."""
        steps = np.rint(np.maximum(np.asarray(dt, dtype=np.float64), 0.0) / DT_STEP_S).astype(np.intp)
        out = np.array(p, dtype=np.float64, copy=True)
        ny, nx = self.shape
        for n in np.unique(steps[steps > 0]).tolist():
            rows = np.flatnonzero(steps == n)
            spread = self.motion_m * np.sqrt(n * DT_STEP_S) / self.grid.cell_m
            smooth = {"sigma": (0.0, spread, spread), "mode": "constant", "truncate": 3.0}
            # Single precision for the raster: the filter's passes over it are the cost, and a cell's share of a
            # posterior needs no more than float32's 7 digits (the floor, eps / G, is far above its smallest).
            full = np.zeros((rows.size, ny * nx), dtype=np.float32)
            full[:, self.raster] = out[rows] / self._kept(n)
            out[rows] = gaussian_filter(full.reshape(-1, ny, nx), **smooth).reshape(rows.size, -1)[:, self.raster]
        out /= out.sum(axis=1, keepdims=True)
        return np.asarray((1.0 - self.floor) * out + self.floor / len(self), dtype=np.float64)

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
        """Eq. (52): predicted posteriors (k, G) and each track's window, count and total (k, m) per receiver."""
        heard = count.sum(axis=1) > 0.0
        out = np.array(prior, dtype=np.float64, copy=True)
        if heard.any():
            ll = self.grid.loglik(count[heard], total[heard])
            post = np.log(np.maximum(prior[heard], 1e-300)) + ll
            post = np.exp(post - post.max(axis=1, keepdims=True))
            out[heard] = post / post.sum(axis=1, keepdims=True)
        return out

    def estimate(self, p: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Eq. (46) of posteriors p (k, G): mean (k, 2) and covariance (k, 2, 2)."""
        return self.grid.moments(p)
