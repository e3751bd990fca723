"""Where a still shopper stands: a global likelihood on a grid of the store, not a linearised one.

The tracker's filter (eqs. (6)-(7)) is linearised about its own estimate.
A shopper who stops at a shelf and turns their body to it loses several dB
towards the receivers behind; the estimate slides away from those
receivers, settles where the shifted readings fit a local optimum, and
stays there for as long as the shopper does, metres off. Nothing local
brings it back: the readings fit where it is.

A shopper who stands still gives the same radio picture window after
window, so the whole still segment can be weighed against every place in
the store at once. Per track the segment keeps, for each receiver r, the
number of readings n_r and their sum, both fading as exp(-dt / tau_s) so a
shopper who shuffles along the shelf or turns is judged by their recent
seconds; its mean is zbar_r. Its spread is not sigma_r² / n_r: the
shadowing at a spot stays put while the shopper does, so repeated
readings share most of it (rho of the tracker's `reading_correlation`,
here over the segment):

    v_r = sigma_r² (rho_s + (1 - rho_s) / n_r),   w_r = 1 / v_r                   (43)

Each cell centre c_g of a grid over the store and each of H facings f_j
(a body held over the segment, eq. (21)'s loss towards the receivers
behind) predicts mu_jgr = h_r(c_g) - B max(0, -f_j . (p_r - c_g) / |p_r - c_g|),
h_r the path-loss model (1) with the radio map's field (15) where there is
one. The phone's unknown offset o ~ N(0, tau²) (eq. (16)) is constant over
the segment and integrated out as in (18), d_jgr = zbar_r - mu_jgr:

    l_jg = -1/2 [sum_r w_r d_jgr² - (sum_r w_r d_jgr)² / (W + 1 / tau²)],   W = sum_r w_r   (44)

(tau = 0 drops the second term). The facing is marginalised with a
uniform prior, and where a calibration walk left a fingerprint, its
per-sector likelihood (18) of the segment means is added to every cell of
that sector:

    l_g = ln (1/H) sum_j exp(l_jg) + ln L(sector(g))                             (45)

The posterior over cells p_g ∝ exp(l_g) (uniform prior inside the store)
gives the still track's position as its mean and spread,

    xbar = sum_g p_g c_g,   Sigma = sum_g p_g (c_g - xbar)(c_g - xbar)ᵀ + (cell² / 12) I   (46)

(the last term the spread of a point within its cell). (44) is three
matrix products over (receivers) x (facings x cells) for all still tracks
of a window at once, in single precision about the grid's mean level.

A global estimate is fooled too: the shadowing that stays put over metres
(and a survey's radio map that missed it) makes some far cell fit a
segment now and then, about as often as a body fools the filter. So the
grid speaks only where the filter's estimate xhat is a place the segment
rejects, by how far the cell under xhat falls below the best:

    r = max_g l_g - l_g(xhat),   the grid places the track where r > gate       (47)

and the filter starts again from (46) (position and spread; velocity and
the offset as they were), so that a shopper who walks on leaves from where
they stood, not from where the filter had settled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from positioning.ekf import measure
from positioning.fingerprint import Fingerprint
from positioning.pathloss import DEFAULT_EMITTER_Z, Receivers

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

STILL_GRID_CELL_M = 0.5
"""Cell of the still grid, m: finer than a sector's margin (1.5 m), coarse enough for a window's budget."""

SEGMENT_CORRELATION = 0.5
"""rho_s of eq. (43) for a still segment: the share of a reading's spread that stays put while the shopper does."""

CHUNK = 256
"""Tracks per matrix product of (44): bounds the (tracks, facings x cells) temporaries."""


class Factors(NamedTuple):
    """Tracks' factors of (44)'s products (`StillGrid.factors`), single precision: quad (k, 2m + 1) multiplies
    [mu²; mu; 1], lin (k, m + 1) multiplies [mu; 1] and shrink (k,) is 1 / (2 (W + 1 / tau²)); lin and shrink are
    None where the grid has no offset."""

    quad: NDArray[np.float32]
    lin: NDArray[np.float32] | None
    shrink: NDArray[np.float32] | None

    def of(self, rows: slice | IndexArray) -> Factors:
        """The factors of some of the tracks."""
        return Factors(self.quad[rows], None if self.lin is None else self.lin[rows],
                       None if self.shrink is None else self.shrink[rows])


@dataclass(frozen=True, eq=False)
class StillGrid:
    """The grid of eqs. (43)-(46): cell centres (G, 2), predictions mu (H G, m) dBm, sector of each cell (G,).

    Built by `StillGrid.of`; `sector` is -1 where no fingerprint applies.
    """

    centres: FloatArray
    mu: FloatArray
    headings: int
    cell_m: float
    sigma2: FloatArray
    segment_correlation: float
    offset_sigma_db: float
    sector: IndexArray
    fingerprint: Fingerprint | None
    _ref_db: float = field(init=False, repr=False)
    _lin32: NDArray[np.float32] = field(init=False, repr=False)
    _quad32: NDArray[np.float32] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # (44)'s sums in single precision, about the grid's mean level: a window of still tracks spends its time in
        # these (tracks, facings x cells) products, and centred dB values keep their rounding under 1e-3 nats.
        ref = float(self.mu.mean())
        object.__setattr__(self, "_ref_db", ref)
        quad, lin = self._products(self.mu)
        object.__setattr__(self, "_quad32", quad)
        object.__setattr__(self, "_lin32", lin)

    def _products(self, mu: FloatArray) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(44)'s factors for means mu (H x G', m): [mu²; mu; 1] and [mu; 1], about the grid's mean level.

        Each of (44)'s terms is one product, its per-track constant carried by a row of ones, so that no pass over
        the (tracks, facings x cells) result is spent adding it.
        """
        centred = (mu - self._ref_db).T
        ones = np.ones((1, centred.shape[1]))
        return (np.ascontiguousarray(np.vstack([centred**2, centred, ones]), dtype=np.float32),
                np.ascontiguousarray(np.vstack([centred, ones]), dtype=np.float32))

    @classmethod
    def of(
        cls,
        receivers: Receivers,
        bbox: ArrayLike,
        *,
        cell_m: float = STILL_GRID_CELL_M,
        headings: int = 8,
        body_loss_db: float = 0.0,
        segment_correlation: float = SEGMENT_CORRELATION,
        offset_sigma_db: float = 0.0,
        emitter_z: float = DEFAULT_EMITTER_Z,
        inside: ArrayLike | None = None,
        fingerprint: Fingerprint | None = None,
        sigma_db: float = 0.0,
    ) -> StillGrid:
        """The grid over bbox ((x_min, y_min), (x_max, y_max)), `cell_m` apart.

        inside: the sector index (G,) of each of `cell_centres(bbox, cell_m)`
            (-1 outside every sector): only cells in sectors are kept,
            and the fingerprint's (18) is added to them; None keeps every
            cell of the box and uses no fingerprint.
        sigma_db: the spread of one reading about h_r, dB, for every
            receiver; 0 takes each receiver's own. Where a radio map holds
            the static field, what is left about it is the fading alone.
        """
        if not (cell_m > 0.0 and headings >= 1 and body_loss_db >= 0.0 and offset_sigma_db >= 0.0
                and 0.0 <= segment_correlation <= 1.0 and sigma_db >= 0.0):
            raise ValueError("the still grid needs cell_m > 0, headings >= 1, body_loss_db and offset_sigma_db "
                             ">= 0, segment_correlation in [0, 1] and sigma_db >= 0")
        centres = cell_centres(bbox, cell_m)
        if inside is None:
            sector = np.full(centres.shape[0], -1, dtype=np.intp)
        else:
            labels = np.asarray(inside, dtype=np.intp).ravel()
            if labels.shape[0] != centres.shape[0]:
                raise ValueError(f"inside needs one sector per cell ({centres.shape[0]}), got {labels.shape[0]}")
            keep = labels >= 0
            if not keep.any():
                raise ValueError("no cell of the still grid lies in a sector")
            centres, sector = centres[keep], labels[keep]
            if fingerprint is None:
                sector = np.full(centres.shape[0], -1, dtype=np.intp)
        m, g = len(receivers), centres.shape[0]
        rx = np.repeat(np.arange(m), g)
        h, _ = measure(np.tile(centres, (m, 1)), receivers, rx, emitter_z)
        h = h.reshape(m, g).T  # (G, m)
        if body_loss_db > 0.0:
            angle = 2.0 * np.pi * np.arange(headings) / headings
            f = np.stack([np.cos(angle), np.sin(angle)], axis=-1)  # (H, 2)
            to_rx = receivers.xyz[None, :, :2] - centres[:, None, :]  # (G, m, 2)
            u = to_rx / np.maximum(np.linalg.norm(to_rx, axis=-1, keepdims=True), 1e-12)
            cos = np.einsum("hc,gmc->hgm", f, u)
            mu = h[None] - body_loss_db * np.maximum(0.0, -cos)
        else:
            headings = 1
            mu = h[None]
        sigma2 = np.full(m, sigma_db**2) if sigma_db > 0.0 else receivers.sigma_db**2
        return cls(centres, mu.reshape(headings * g, m), headings, float(cell_m), sigma2, float(segment_correlation),
                   float(offset_sigma_db), sector, fingerprint)

    def loglik(self, count: FloatArray, total: FloatArray) -> FloatArray:
        """l_g of eq. (45) for k segments: count, total (k, m) readings and their sum per receiver -> (k, G).

        Each row is shifted so that its largest value is 0. A receiver with no
        reading adds nothing: a lost packet says nothing about where the phone is.
        """
        k = count.shape[0]
        w, zc, zbar, heard = self.weights(count, total)
        precision = np.full(k, 1.0 / self.offset_sigma_db**2 if self.offset_sigma_db > 0.0 else np.inf)
        out = np.empty((k, self.centres.shape[0]))
        factors = self.factors(w, zc, precision)
        for lo in range(0, k, CHUNK):
            part = slice(lo, lo + CHUNK)
            ll, _ = self.facing_terms(factors.of(part))
            top = ll.max(axis=1)
            ll -= top[:, None, :]
            np.exp(ll, out=ll)
            out[part] = top + np.log(ll.mean(axis=1))  # facing marginalised, (45)
        if self.fingerprint is not None and np.any(self.sector >= 0):
            out += self._fingerprint(heard, zbar)
        return np.asarray(out - out.max(axis=1, keepdims=True), dtype=np.float64)

    def weights(self, count: FloatArray, total: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray,
                                                                       NDArray[np.bool_]]:
        """Per track and receiver (k, m): w_r of (43), zbar_r about the grid's mean level (0 where unheard), zbar_r,
        and whether it was heard."""
        heard = count > 0.0
        zbar = np.where(heard, total / np.maximum(count, 1e-12), 0.0)
        rho = self.segment_correlation
        w = np.where(heard, 1.0 / (self.sigma2 * (rho + (1.0 - rho) / np.maximum(count, 1e-12))), 0.0)  # (43)
        return w, np.where(heard, zbar - self._ref_db, 0.0), zbar, heard

    def columns(self, cells: IndexArray) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The columns of (44)'s products for `cells` (G' of them) alone, for `facing_terms`: gathered once, they
        serve every track weighed on those cells."""
        columns = (np.arange(self.headings)[:, None] * self.centres.shape[0] + cells).ravel()
        return np.ascontiguousarray(self._quad32[:, columns]), np.ascontiguousarray(self._lin32[:, columns])

    def pooled(self, group: IndexArray) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(44)'s products, as `columns` gives them, for groups of cells (group (G,) each cell's, 0..S-1) each at
        its cells' mean map, per facing and receiver."""
        g, m = self.centres.shape[0], self.mu.shape[1]
        size = np.bincount(group).astype(np.float64)
        mu = self.mu.reshape(self.headings, g, m)
        mean = np.stack([np.stack([np.bincount(group, mu[h, :, r]) for r in range(m)], axis=-1) / size[:, None]
                         for h in range(self.headings)])
        return self._products(mean.reshape(-1, m))

    def factors(self, w: FloatArray, zc: FloatArray, offset_precision: FloatArray) -> Factors:
        """Each track's factors of (44)'s products, for `facing_terms`: w, zc (k, m) from `weights`;
        offset_precision (k,) the inverse spread 1 / tau² of each phone's offset about its mean, already taken from
        zc (all inf: the grid has no offset).

        -1/2 sum_r w_r (zc_r - mu_r)² = -1/2 sum w mu² + sum w zc mu - 1/2 sum w zc², so [-w/2, w zc, -sum w zc²/2]
        times [mu²; mu; 1]; and b = sum_r w_r d_r = [-w, sum w zc] times [mu; 1]. Computed once per window, they
        serve every chunk of tracks weighed in it.
        """
        wz = w * zc
        quad = np.hstack([-0.5 * w, wz, -0.5 * (wz * zc).sum(axis=1, keepdims=True)]).astype(np.float32)
        if not np.all(np.isfinite(offset_precision)):
            return Factors(quad, None, None)
        lin = np.hstack([-w, wz.sum(axis=1, keepdims=True)]).astype(np.float32)
        shrink = (0.5 / (w.sum(axis=1) + offset_precision)).astype(np.float32)
        return Factors(quad, lin, shrink)

    def facing_terms(
        self, factors: Factors, columns: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None,
    ) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
        """l_jg of eq. (44) for c <= CHUNK tracks, (c, H, G), and b_jg = sum_r w_r d_jgr, (c, H, G) (None where the
        grid has no offset).

        factors: the tracks' `factors`. columns: the `columns` of some cells, or
        the `pooled` products of groups of cells (G' of them, the same for every
        track), or None for every cell.
        """
        hh = self.headings
        quad, lin = (self._quad32, self._lin32) if columns is None else columns
        g = quad.shape[1] // hh
        ll = factors.quad @ quad
        if factors.lin is None or factors.shrink is None:
            return ll.reshape(-1, hh, g), None
        b = factors.lin @ lin
        shrink = b * b  # eq. (44): the offset integrated out
        shrink *= factors.shrink[:, None]
        ll += shrink
        return ll.reshape(-1, hh, g), b.reshape(-1, hh, g)

    def _fingerprint(self, heard: NDArray[np.bool_], zbar: FloatArray) -> FloatArray:
        """ln L(sector(g)) of eq. (45), the segment means read as one window of (18) -> (k, G)."""
        assert self.fingerprint is not None
        ti, ri = np.nonzero(heard)
        ll = self.fingerprint.loglik(ti, ri, zbar[ti, ri], heard.shape[0], self.offset_sigma_db)
        return np.where(self.sector >= 0, np.take(ll, np.maximum(self.sector, 0), axis=1), 0.0)

    def estimate(
        self, count: FloatArray, total: FloatArray, xy: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Eqs. (46)-(47): mean (k, 2) and covariance (k, 2, 2) of the still segments' posteriors over the cells,
        and by how much (k,) their best cell beats the cell nearest each filter estimate xy (k, 2), nats."""
        ll = self.loglik(count, total)
        c = self.centres
        nearest = np.argmin(((c[None] - xy[:, None]) ** 2).sum(axis=-1), axis=1)
        rejected = -ll[np.arange(ll.shape[0]), nearest]
        p = np.exp(ll)
        p /= p.sum(axis=1, keepdims=True)
        mean, cov = self.moments(p)
        return mean, cov, np.asarray(rejected)

    def moments(self, p: FloatArray, rows: IndexArray | None = None) -> tuple[FloatArray, FloatArray]:
        """Eq. (46) of posteriors p (k, G) over the cells, or of their rows `rows` alone: mean (k, 2) and covariance
        (k, 2, 2).

        One product with the cells' x, y, x², xy, y² (G, 5): the grid filter takes (46) of every track every window.
        """
        c = self.centres
        features = np.column_stack([c, c[:, 0] ** 2, c[:, 0] * c[:, 1], c[:, 1] ** 2])
        m = p @ features if rows is None else rows_times(p, rows, features)
        mean = m[:, :2]
        second = m[:, [2, 3, 3, 4]].reshape(-1, 2, 2)
        cov = second - mean[:, :, None] * mean[:, None, :] + (self.cell_m**2 / 12.0) * np.eye(2)
        return np.asarray(mean, dtype=np.float64), np.asarray(cov, dtype=np.float64)


def rows_times(a: FloatArray, rows: IndexArray, matrix: FloatArray) -> FloatArray:
    """a[rows] @ matrix. Where the rows are most of a's first rows, the product is taken over those, a view, and
    its rows picked: gathering a thousand posteriors first would copy 10 MB."""
    upto = int(rows.max(initial=-1)) + 1
    if 2 * rows.size >= upto:
        return np.asarray((a[:upto] @ matrix)[rows], dtype=np.float64)
    return np.asarray(a[rows] @ matrix, dtype=np.float64)


def cell_centres(bbox: ArrayLike, cell_m: float) -> FloatArray:
    """Centres (G, 2) of the cells `cell_m` apart that tile bbox ((x_min, y_min), (x_max, y_max))."""
    box = np.asarray(bbox, dtype=np.float64).reshape(2, 2)
    nx, ny = (max(1, int(np.ceil(v))) for v in (box[1] - box[0]) / cell_m)
    cx = box[0, 0] + cell_m * (np.arange(nx) + 0.5)
    cy = box[0, 1] + cell_m * (np.arange(ny) + 0.5)
    return np.stack(np.meshgrid(cx, cy), axis=-1).reshape(-1, 2)
