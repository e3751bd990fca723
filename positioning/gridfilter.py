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
every heard track, (tracks) x (facings x cells), a dozen passes over that
(tracks, facings, cells) array, and a separable Gaussian filter of the
(tracks, cells) raster. Most of a placed shopper's posterior lies within a
few metres, and the passes over the cells far from it are most of the
cost. So a track whose predicted posterior holds at least 1 - delta
(`BLOCK_MASS`) within a square block B of the raster around its mean is
weighed on B's cells alone, and every cell outside B is taken to explain
the window no better than the worst cell of B:

    l_jg = min_{g' in B} ln sum_j' q⁻_j' exp(l_j'g')   for every j, g outside B   (56)

which bounds what the outside can take from B: at most delta of the prior,
at B's worst likelihood. A shopper the filter lost is outside B by
definition, and (56) cannot find them, so a track is weighed on the whole
store at least every `WHOLE_EVERY_S`: at birth and when due, on every cell.
With the outside's mass zero, (56) is (52)-(55) exactly.

A track whose prior spreads past its block (a shopper heard by few
receivers, or between two places the readings cannot tell apart) is
weighed on the whole store every window, at a coarser step: the cells fall
in squares C of side `COARSE_M` (four cells of 1 m), each square is weighed
once at its cells' mean map, mu_jCr = mean_{g in C} mu_jgr, and each cell
takes its square's likelihood:

    l_jg = l_jC   for every j and every g in C                                 (57)

so the prior's mass on a square, p_C = sum_{g in C} p⁻_g, stands in for its
cells in (52)'s and (55)'s sums, and each cell keeps its share of its
square's posterior in proportion to its prior. Such a track is known to
metres, not to the square's half metre; once the readings gather it within
its block, it is weighed on the block's cells again. A weighing by (57)
covers the whole store, so it sets the track's 5 s clock again as (52)
does.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.ndimage import gaussian_filter1d

from positioning.stillgrid import Factors, StillGrid, cell_centres, rows_times

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

BLOCK_M = 16.0
"""Side of the square block of (56) a track is weighed on, m: its corner is within half a stride of where centring
it on the posterior's mean would put it, so it reaches at least (BLOCK_M - BLOCK_STRIDE_M) / 2 = 6 m past the mean,
five of a window's predicted spreads (s = 1.2 m) beyond a well-placed shopper."""

BLOCK_STRIDE_M = 4.0
"""Blocks start on a lattice this far apart, m: a window's tracks fall in a few dozen blocks, one product each."""

CHUNK = 32
"""Tracks weighed per product: a chunk's (tracks, facings, cells) arrays stay within a core's cache through the
dozen passes over them (256 tracks of 8 facings x 1,200 cells are 10 MB an array, 32 are 1.2 MB)."""

BLOCK_MASS = 0.99
"""The share of a track's predicted posterior its block must hold for (56) to weigh the block alone."""

WHOLE_EVERY_S = 5.0
"""How often, at least, every track is weighed on the whole store ((52) or (57)), s: a shopper the block lost is
found again."""

COARSE_M = 2.0
"""Side of (57)'s squares, m: a quarter of the cells, each square smaller than the store's field's correlation
length (3 m)."""

BLOCKS_KEPT = 64
"""Blocks whose columns of (44)'s products (`StillGrid.columns`) are kept between windows, the most recently used:
with 8 receivers a block's are 26 rows x 8 facings x 256 cells in single precision, 213 kB, so at most 14 MB. A
window's tracks fall in a few dozen blocks, and gathering a block's columns costs as much as weighing several
tracks on it."""


@dataclass(frozen=True, eq=False)
class GridFilter:
    """Eqs. (51)-(57) over the cells of `grid` (a `StillGrid` built with segment_correlation 0).

    raster: flat index (G,) of each of the grid's cells on the (ny, nx) raster of `cell_centres(bbox, cell)`.
    A track's state is one row of `width` values: p_g over the G cells, q_j over the H facings, the seconds until
    its next weighing on the whole store ((52) or (57)), the offset's mean ô and its variance P (0 where the grid
    has no offset, tau = 0).
    """

    grid: StillGrid
    raster: IndexArray
    shape: tuple[int, int]
    motion_m: float
    facing_s: float = GRID_FACING_S
    offset_drift_db: float = 0.0
    floor: float = GRID_FLOOR
    _kept_mass: dict[int, NDArray[np.float32]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _kernel: dict[int, tuple[NDArray[np.float32], NDArray[np.float32]]] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    _kernel_within: dict[int, tuple[NDArray[np.float32], NDArray[np.float32]]] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    _block_cells: dict[int, IndexArray] = field(default_factory=dict, init=False, repr=False, compare=False)
    _block_columns: OrderedDict[int, tuple[NDArray[np.float32], NDArray[np.float32]]] = field(
        default_factory=OrderedDict, init=False, repr=False, compare=False)

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
        """Values in a track's state: G cells, H facings, the time until its next whole weighing, the offset's mean
        and variance."""
        return len(self) + self.grid.headings + 3

    def cells(self, state: FloatArray) -> FloatArray:
        """The posteriors p_g (k, G) of states (k, width), a view."""
        return state[:, : len(self)]

    def facings(self, state: FloatArray) -> FloatArray:
        """The facing beliefs q_j (k, H) of states (k, width), a view."""
        return state[:, len(self) : len(self) + self.grid.headings]

    def offset(self, state: FloatArray) -> tuple[FloatArray, FloatArray]:
        """The offset's mean ô and variance P (k,) of states (k, width), views."""
        return state[:, -2], state[:, -1]

    def whole_in(self, state: FloatArray) -> FloatArray:
        """Seconds (k,) until each of states (k, width) is next weighed on the whole store, a view."""
        return state[:, len(self) + self.grid.headings]

    def start(self, k: int) -> FloatArray:
        """The state of k new tracks: every cell and facing alike, due a whole weighing, the offset at its prior
        N(0, tau²)."""
        g, h = len(self), self.grid.headings
        return np.hstack([np.full((k, g), 1.0 / g), np.full((k, h), 1.0 / h), np.zeros((k, 2)),
                          np.full((k, 1), self.grid.offset_sigma_db**2)])

    def predict(self, state: FloatArray, dt: ArrayLike) -> FloatArray:
        """Eqs. (51) and (53), and the offset's drift: states (k, width) advanced by dt (k,) s each."""
        out = np.array(state, dtype=np.float64, copy=True)
        self._predicted(out, np.arange(out.shape[0]), dt)
        return out

    def _predicted(self, bank: FloatArray, rows: IndexArray, dt: ArrayLike) -> None:
        """`predict` in place, for the states at `rows` of `bank`."""
        dt = np.maximum(np.asarray(dt, dtype=np.float64), 0.0)
        steps = np.rint(dt / DT_STEP_S).astype(np.intp)
        cells = self.cells(bank)
        for n in np.unique(steps).tolist():
            at, others = _span(np.sort(rows[steps == n]))
            aside = cells[others]  # rows within the span that are not to move, put back below
            cells[at] = self._spread(cells[at], n)
            cells[others] = aside
        kept = np.exp(-dt / self.facing_s)[:, None]
        facings = self.facings(bank)
        facings[rows] = facings[rows] * kept + (1.0 - kept) / self.grid.headings
        if self.grid.offset_sigma_db > 0.0:
            bank[rows, -1] += self.offset_drift_db**2 * dt
        self.whole_in(bank)[rows] -= dt

    def _spread(self, part: FloatArray, n: int) -> NDArray[np.floating]:
        """(51) for the cells `part` (k, G) of states predicted n steps of DT_STEP_S ahead (n 0: the floor alone)."""
        g = len(self)
        if n == 0:
            return np.asarray(part * ((1.0 - self.floor) / part.sum(axis=1))[:, None] + self.floor / g)
        # Single precision for the raster: the filter's passes over it are the cost, and a cell's share of a
        # posterior needs no more than float32's 7 digits (the floor, eps / G, is far above its smallest). Each
        # source's kernel divided by Z_g' keeps its mass, and a weighing leaves a posterior's mass at one, so
        # (1 - eps) p⁻ needs no normalising after the spread: its mass is 1 - eps to float32's rounding.
        ny, nx = self.shape
        k = part.shape[0]
        if self._tiled:  # (1 - eps) / Z_g' is in the kernels
            full = part.astype(np.float32)
            across, along = self._within(n)
        else:
            full = np.zeros((k, ny * nx), dtype=np.float32)
            full[:, self.raster] = part * self._kept(n)
            across, along = self._kernels(n)
        spread_out = np.matmul(along, (full.reshape(-1, nx) @ across).reshape(-1, ny, nx)).reshape(k, -1)
        if not self._tiled:
            spread_out = np.take(spread_out, self.raster, axis=1)  # row-major, as `_weigh` says
        spread_out += np.float32(self.floor / g)
        return np.asarray(spread_out)

    @cached_property
    def _tiled(self) -> bool:
        """Whether the raster is the grid's cells in order, so that the prediction needs no scatter or gather."""
        ny, nx = self.shape
        return self.raster.size == ny * nx and bool(np.all(np.diff(self.raster) == 1))

    def _kernels(self, n: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The Gaussian of (51) for n steps of DT_STEP_S as two matrices, (nx, nx) to multiply the raster's rows by
        on the right and (ny, ny) on the left, computed once per n.

        They are the Gaussian filter's own (scipy's truncated kernel, zero past the raster's edge) applied to
        unit rasters, so the prediction is the same operator, its passes BLAS's products instead of the filter's loops.
        """
        if n not in self._kernel:
            ny, nx = self.shape
            spread = self.motion_m * np.sqrt(n * DT_STEP_S) / self.grid.cell_m
            across, along = (gaussian_filter1d(np.eye(size), spread, axis=0, mode="constant", truncate=3.0)
                             for size in (nx, ny))
            self._kernel[n] = (np.ascontiguousarray(across.T, dtype=np.float32),
                               np.ascontiguousarray(along, dtype=np.float32))
        return self._kernel[n]

    def _within(self, n: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """`_kernels` with (51)'s (1 - eps) / Z_g' folded in, for a raster that is the whole box, computed once per n.

        The box is a rectangle and the kernel separable, so the mass a cell's kernel keeps within it is the
        product of what each axis keeps, Z_g' = Z_x(x') Z_y(y'): dividing each kernel's source by its own saves
        the prediction a pass over the raster.
        """
        if n not in self._kernel_within:
            across, along = (k.astype(np.float64) for k in self._kernels(n))
            self._kernel_within[n] = (
                np.ascontiguousarray(across / across.sum(axis=1, keepdims=True), dtype=np.float32),
                np.ascontiguousarray((1.0 - self.floor) * along / along.sum(axis=0, keepdims=True), dtype=np.float32))
        return self._kernel_within[n]

    def _kept(self, n: int) -> NDArray[np.float32]:
        """(1 - eps) / Z_g' of (51) for a prediction of n steps of DT_STEP_S, computed once per n."""
        if n not in self._kept_mass:
            ny, nx = self.shape
            inside = np.zeros(ny * nx, dtype=np.float32)
            inside[self.raster] = 1.0
            across, along = self._kernels(n)
            kept = (along @ inside.reshape(ny, nx) @ across).reshape(-1).astype(np.float64)
            self._kept_mass[n] = ((1.0 - self.floor) / np.maximum(kept[self.raster], 1e-12)).astype(np.float32)
        return self._kept_mass[n]

    def update(self, prior: FloatArray, count: FloatArray, total: FloatArray) -> FloatArray:
        """Eqs. (54), (52), (55) and (56): predicted states (k, width) and each track's window, count and total
        (k, m) per receiver."""
        out = np.array(prior, dtype=np.float64, copy=True)
        self._weighed(out, np.arange(out.shape[0]), count, total)
        return out

    def step(self, bank: FloatArray, rows: IndexArray, dt: ArrayLike, count: FloatArray, total: FloatArray) -> None:
        """`update` of `predict` in place, for the states at `rows` (k,) of `bank`: advanced by dt (k,) and weighed
        on each track's window, count and total (k, m). The other rows are left as they are."""
        self._predicted(bank, rows, dt)
        self._weighed(bank, rows, count, total)

    def _weighed(self, bank: FloatArray, rows: IndexArray, count: FloatArray, total: FloatArray) -> None:
        """`update` in place, for the states at `rows` of `bank`: each track's row is read, then written, once."""
        local = np.flatnonzero(count.sum(axis=1) > 0.0)
        heard = rows[local]
        window = self._window(bank, heard, count[local], total[local])
        due, spread, blocks = self._plan(bank, heard)
        for at in (due[lo : lo + CHUNK] for lo in range(0, due.size, CHUNK)):
            self._weigh(bank, heard[at], window.of(at))
        square, pooled = self._squares
        for at in (spread[lo : lo + CHUNK] for lo in range(0, spread.size, CHUNK)):
            self._weigh(bank, heard[at], window.of(at), columns=pooled, square=square)
        self.whole_in(bank)[heard[np.concatenate([due, spread])]] = WHOLE_EVERY_S
        for key, in_block in blocks:
            cells, columns = self._block(key), self._columns(key)
            for at in (in_block[lo : lo + CHUNK] for lo in range(0, in_block.size, CHUNK)):
                self._weigh(bank, heard[at], window.of(at), columns=columns, cells=cells)

    def _window(self, bank: FloatArray, heard: IndexArray, count: FloatArray, total: FloatArray) -> _Window:
        """What (54) and (55) take of the heard tracks' windows (rows `heard` of `bank`), computed once for all the
        chunks they are weighed in."""
        w, zc, _, seen = self.grid.weights(count, total)
        mean, var = (v[heard] for v in self.offset(bank))
        if self.grid.offset_sigma_db > 0.0:
            zc = np.where(seen, zc - mean[:, None], 0.0)
            precision = 1.0 / var
        else:
            precision = np.full(heard.size, np.inf)
        return _Window(self.grid.factors(w, zc, precision), mean, w.sum(axis=1) + precision)

    def _plan(self, prior: FloatArray, heard: IndexArray) -> tuple[IndexArray, IndexArray, list[tuple[int,
                                                                                                   IndexArray]]]:
        """How each heard track (rows `heard` of `prior`) is weighed, as positions in `heard`: on every cell (52),
        those due (or all, where a block would be the whole store); on (57)'s squares, those whose block holds less
        than BLOCK_MASS of their prior; and on their block (56) the rest, grouped by block (its key, the raster index
        of its corner, and their positions)."""
        due = self.whole_in(prior)[heard] <= 0.0
        rest = np.flatnonzero(~due)
        ny, nx = self.shape
        cell = self.grid.cell_m
        side, stride = self._side(BLOCK_M), self._side(BLOCK_STRIDE_M)
        everyone = np.arange(heard.size)
        if rest.size == 0 or (side >= nx and side >= ny):  # nothing to place, or the block would be the store
            return everyone, everyone[:0], []
        first = self.raster[0]
        origin = self.grid.centres[0] - cell * np.array([first % nx, first // nx])
        at = (rows_times(self.cells(prior), heard[rest], self.grid.centres) - origin) / cell  # the means' column, row
        corner = [np.clip(np.rint((at[:, a] - (side - 1) / 2.0) / stride) * stride, 0, max(n - side, 0))
                  for a, n in ((0, nx), (1, ny))]
        keys, which = np.unique((corner[1] * nx + corner[0]).astype(np.intp), return_inverse=True)
        spread, blocks = [everyone[:0]], []
        for i, key in enumerate(keys.tolist()):
            mine = rest[which == i]
            held = self.cells(prior)[heard[mine][:, None], self._block(key)[None, :]].sum(axis=1) >= BLOCK_MASS
            spread.append(mine[~held])
            if held.any():
                blocks.append((key, mine[held]))
        return everyone[due], np.concatenate(spread), blocks

    def _side(self, metres: float) -> int:
        """A length in whole cells, at least one."""
        return max(1, round(metres / self.grid.cell_m))

    def _block(self, key: int) -> IndexArray:
        """The cells (sorted) of the block of side BLOCK_M whose corner is raster index `key`, computed once per
        block."""
        if key not in self._block_cells:
            ny, nx = self.shape
            side = self._side(BLOCK_M)
            iy, ix = divmod(key, nx)
            where = np.zeros((ny, nx), dtype=bool)
            where[iy : iy + side, ix : ix + side] = True
            self._block_cells[key] = np.flatnonzero(where.reshape(-1)[self.raster])
        return self._block_cells[key]

    def _columns(self, key: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The block's `StillGrid.columns`, kept for the BLOCKS_KEPT blocks last used."""
        kept = self._block_columns
        if key in kept:
            kept.move_to_end(key)
        else:
            kept[key] = self.grid.columns(self._block(key))
            if len(kept) > BLOCKS_KEPT:
                kept.popitem(last=False)
        return kept[key]

    @cached_property
    def _squares(self) -> tuple[IndexArray, tuple[NDArray[np.float32], NDArray[np.float32]]]:
        """(57)'s squares: each cell's (G,), and their `StillGrid.pooled` products."""
        side = self._side(COARSE_M)
        iy, ix = np.divmod(self.raster, self.shape[1])
        _, square = np.unique((iy // side) * self.shape[1] + ix // side, return_inverse=True)
        return square, self.grid.pooled(square)

    def _weigh(self, state: FloatArray, rows: IndexArray, window: _Window,
               columns: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None, cells: IndexArray | None = None,
               square: IndexArray | None = None) -> None:
        """Eqs. (54), (52) and (55) in place for the tracks at `rows` of `state` and their `window`: on every cell
        (columns None); on a block's `cells` (their `StillGrid.columns`) with (56) for the rest; or by (57) on
        squares (each cell's `square`, their `StillGrid.pooled` columns)."""
        ll, b = self.grid.facing_terms(window.factors, columns)  # (54)
        ll -= ll.max(axis=(1, 2))[:, None, None]
        np.exp(ll, out=ll)
        # The joint p⁻_g q⁻_j exp(l_jg) is never formed: its marginals and moments are products of exp(l) with
        # the two priors, each one pass over the (tracks, facings, cells) array.
        before = self.cells(state)[rows]
        if square is not None:  # (57): each square's prior mass stands in for its cells
            n = int(square.max()) + 1
            flat = (np.arange(rows.size)[:, None] * n + square).ravel()
            p = np.bincount(flat, before.ravel(), rows.size * n).reshape(rows.size, n).astype(np.float32)
        else:
            # np.take, not before[:, cells]: an index on the second axis gives a column-major result, and the
            # passes that mix it with row-major arrays run several times slower.
            p = (before if cells is None else np.take(before, cells, axis=1)).astype(np.float32)
        q = self.facings(state)[rows].astype(np.float32)
        by_cell = np.matmul(q[:, None, :], ll)[:, 0]  # sum_j q_j exp(l_jg)
        by_facing = np.matmul(ll, p[:, :, None])[:, :, 0]  # sum_g p_g exp(l_jg)
        weighed = (q * by_facing).sum(axis=1, dtype=np.float64)
        if cells is None:
            mass = weighed
            if square is None:
                self.cells(state)[rows] = p * by_cell / mass[:, None]  # (52)
            else:
                self.cells(state)[rows] = before * np.take(by_cell / mass[:, None], square, axis=1)  # (57)
            self.facings(state)[rows] = q * by_facing / mass[:, None]
        else:  # (56)
            outside = np.maximum(1.0 - p.sum(axis=1, dtype=np.float64), 0.0)
            least = by_cell.min(axis=1).astype(np.float64)
            mass = weighed + least * outside
            before *= (least / mass)[:, None]
            before[:, cells] = p * by_cell / mass[:, None]
            self.cells(state)[rows] = before
            self.facings(state)[rows] = q * (by_facing + (least * outside)[:, None]) / mass[:, None]
        if b is not None:  # (55), over the cells weighed
            s = window.precision
            ll *= b
            eb = (q * np.matmul(ll, p[:, :, None])[:, :, 0]).sum(axis=1, dtype=np.float64) / weighed
            ll *= b
            eb2 = (q * np.matmul(ll, p[:, :, None])[:, :, 0]).sum(axis=1, dtype=np.float64) / weighed
            state[rows, -2] = window.mean + eb / s
            state[rows, -1] = 1.0 / s + np.maximum(eb2 - eb**2, 0.0) / s**2

    def estimate(self, state: FloatArray, rows: IndexArray | None = None) -> tuple[FloatArray, FloatArray]:
        """Eq. (46) of the cells' posteriors of states (k, width), or of their rows `rows` alone: mean and
        covariance, (k, 2) and (k, 2, 2)."""
        return self.grid.moments(self.cells(state), rows)


class _Window(NamedTuple):
    """Tracks' windows as (54) and (55) weigh them: (44)'s `Factors`, the offset's prior mean ô (k,), and W + 1 / P
    (k,), the offset's posterior precision given a cell and facing."""

    factors: Factors
    mean: FloatArray
    precision: FloatArray

    def of(self, at: IndexArray) -> _Window:
        """The windows of some of the tracks."""
        return _Window(self.factors.of(at), self.mean[at], self.precision[at])


def _span(rows: IndexArray) -> tuple[slice | IndexArray, IndexArray]:
    """Sorted rows as the slice they span, and the rows within it that are not theirs, where those are at most a
    tenth: a window's tracks are nearly all the bank's, in order, and reading and writing a slice copies nothing
    extra (the few others are set aside and put back). Otherwise the rows themselves, and none."""
    if rows.size == 0 or 10 * (int(rows[-1]) + 1 - int(rows[0]) - rows.size) > rows.size:
        return rows, rows[:0]
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    others = np.ones(hi - lo, dtype=bool)
    others[rows - lo] = False
    return slice(lo, hi), np.flatnonzero(others) + lo
