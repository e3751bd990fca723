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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

DEFAULT_BANDWIDTH_M = 1.0
DEFAULT_PRIOR_READINGS = 5.0
DEFAULT_CELL_M = 0.25


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
    ri = np.asarray(receiver_index, dtype=np.intp).ravel()
    p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    e = np.asarray(residual_db, dtype=np.float64).ravel()
    if not ri.size == p.shape[0] == e.size:
        raise ValueError(f"receiver_index, xy and residual_db differ in length: {ri.size}, {p.shape[0]}, {e.size}")
    if ri.size and (ri.min() < 0 or ri.max() >= receivers):
        raise ValueError(f"receiver_index must be in [0, {receivers})")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(e))):
        raise ValueError("walk positions and residuals must be finite")
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
