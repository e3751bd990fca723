"""Polygon helpers for the sector model: point-in-polygon and a label raster.

Validity of the site's polygons (simple, non-overlapping, inside the outline)
is checked where the config is loaded; here polygons are taken as given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def points_in_polygon(points: ArrayLike, polygon: ArrayLike) -> NDArray[np.bool_]:
    """Even-odd ray casting of (p, 2) points against one (n, 2) polygon -> (p,).

    A horizontal ray from each point crosses the edge (v_i, v_j) when the edge
    straddles the point's y (half-open, so a vertex is counted once) and the
    crossing lies to the point's right. Two polygons sharing an edge never both
    claim a point on it.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    v = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    vi, vj = v, np.roll(v, -1, axis=0)
    px, py = p[:, :1], p[:, 1:]
    straddles = (vi[:, 1] > py) != (vj[:, 1] > py)  # (p, n)
    dy = np.where(straddles, vj[:, 1] - vi[:, 1], 1.0)
    x_cross = vi[:, 0] + (py - vi[:, 1]) * (vj[:, 0] - vi[:, 0]) / dy
    crossings = np.count_nonzero(straddles & (px < x_cross), axis=1)
    inside: NDArray[np.bool_] = crossings % 2 == 1
    return inside


@dataclass(frozen=True, eq=False)
class LabelRaster:
    """Sector index of each square cell over a box; `outside` (= len(polygons)) elsewhere.

    origin (2,) is the box's lower-left corner, labels (ny, nx) the sector of
    each cell's centre. Looking a point up is two floor divisions, which is
    what makes integrating a Gaussian over sectors cheap for thousands of tracks.
    """

    origin: NDArray[np.float64]
    cell: float
    labels: NDArray[np.intp]
    outside: int

    @classmethod
    def build(cls, polygons: Sequence[ArrayLike], cell: float, margin: float) -> LabelRaster:
        """Rasterise the polygons over their bounding box grown by `margin` metres.

        Where polygons overlap, the first one listed wins.
        """
        if cell <= 0.0:
            raise ValueError(f"raster cell must be positive, got {cell}")
        polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]
        every = np.concatenate(polys)
        lo, hi = every.min(axis=0) - margin, every.max(axis=0) + margin
        nx, ny = (int(v) for v in np.ceil((hi - lo) / cell))
        cx = lo[0] + cell * (np.arange(nx) + 0.5)
        cy = lo[1] + cell * (np.arange(ny) + 0.5)
        centres = np.stack(np.meshgrid(cx, cy), axis=-1).reshape(-1, 2)
        labels = np.full(centres.shape[0], len(polys), dtype=np.intp)
        for index in reversed(range(len(polys))):  # first listed written last, so it wins
            labels[points_in_polygon(centres, polys[index])] = index
        return cls(lo, float(cell), labels.reshape(ny, nx), len(polys))

    def lookup(self, xy: NDArray[np.float64]) -> NDArray[np.intp]:
        """Label of the cell under each point: (..., 2) -> (...,)."""
        ny, nx = self.labels.shape
        ij = np.floor((xy - self.origin) / self.cell)
        ix, iy = ij[..., 0], ij[..., 1]
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        cells = self.labels[
            np.where(inside, iy, 0).astype(np.intp), np.where(inside, ix, 0).astype(np.intp)
        ]
        return np.where(inside, cells, self.outside)


def nearest_cells(targets: NDArray[np.bool_], queries: NDArray[np.bool_], chunk: int = 1024
                  ) -> tuple[FloatArray, NDArray[np.intp], NDArray[np.intp]]:
    """For each query cell, the Euclidean distance (in cells) to the nearest target cell and its row, col.

    An exact distance transform for the small rasters of a store: the nearest
    target of a cell outside the targets always borders a non-target cell (a
    step from it towards the query is closer), so only those border cells
    are compared, a chunk of queries at a time. Written here rather than
    taken from ``scipy.ndimage``, whose import alone costs the agent ~25 MB
    of resident memory for two calls at start-up.

    Returns arrays over ``np.flatnonzero(queries)``; a query that is itself
    a target gets distance 0 and its own position. Without any target the
    distances are ``inf`` and the positions -1.
    """
    rows, cols = np.nonzero(queries)
    dist = np.zeros(rows.size)
    near_r, near_c = rows.copy(), cols.copy()
    outside = ~targets[rows, cols]
    padded = np.pad(targets, 1, constant_values=True)
    ny, nx = targets.shape
    border = targets & ~np.logical_and.reduce(
        [padded[1 + dy:1 + dy + ny, 1 + dx:1 + dx + nx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    )
    br, bc = np.nonzero(border)
    todo = np.flatnonzero(outside)
    if br.size == 0:
        dist[todo] = np.inf
        near_r[todo] = near_c[todo] = -1
        return dist, near_r, near_c
    for start in range(0, todo.size, chunk):
        part = todo[start:start + chunk]
        d2 = (rows[part, None] - br[None, :]) ** 2 + (cols[part, None] - bc[None, :]) ** 2
        best = np.argmin(d2, axis=1)
        dist[part] = np.sqrt(d2[np.arange(part.size), best])
        near_r[part], near_c[part] = br[best], bc[best]
    return dist, near_r, near_c
