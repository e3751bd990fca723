"""Cramér-Rao lower bound of an RSSI position fix: how well a layout can do at best.

With readings z_r = h_r(q) + e_r, e_r ~ N(0, sigma_r²) and h_r of eq. (1) in
`pathloss`, the gradient of h_r at q = (x, y) is

    grad h_r = -(10 n_r / ln 10) (q - p_r) / d_r²                       (4)

with d_r the slant distance (so d d_r / dx = dx / d_r). The Fisher information
and the bound on the RMSE of any unbiased 2-D fix are

    FIM(q) = sum_r (10 n_r / (sigma_r ln 10))² g_r g_rᵀ,  g_r = (q - p_r) / d_r²
    RMSE(q) >= sqrt(trace(FIM(q)⁻¹))                                    (5)

Evaluated over a grid of candidate points it maps where receivers are missing;
the accuracy report compares measured errors with it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from positioning.pathloss import DB_PER_NEPER, DEFAULT_EMITTER_Z, MIN_DISTANCE_M


def fisher_information(
    points_xy: ArrayLike,
    receivers_xyz: ArrayLike,
    exponent: ArrayLike,
    sigma_db: ArrayLike,
    emitter_z: float = DEFAULT_EMITTER_Z,
) -> NDArray[np.float64]:
    """FIM of eq. (5) at each point: (g, 2) points, (m, 3) receivers -> (g, 2, 2).

    Inside the `MIN_DISTANCE_M` clamp the model is flat and contributes nothing.
    """
    q = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    r = np.asarray(receivers_xyz, dtype=np.float64).reshape(-1, 3)
    m = r.shape[0]
    n = np.broadcast_to(np.asarray(exponent, dtype=np.float64), (m,))
    s = np.broadcast_to(np.asarray(sigma_db, dtype=np.float64), (m,))
    delta = q[:, None, :] - r[None, :, :2]  # (g, m, 2)
    d2 = np.sum(delta**2, axis=-1) + (emitter_z - r[:, 2]) ** 2  # slant d², (g, m)
    far = d2 >= MIN_DISTANCE_M**2
    g = np.where(far[..., None], delta / np.where(far, d2, 1.0)[..., None], 0.0)  # (q - p_r) / d_r²
    w = (DB_PER_NEPER * n / s) ** 2  # (10 n_r / (sigma_r ln 10))²
    fim: NDArray[np.float64] = np.einsum("r,gri,grj->gij", w, g, g)
    return fim


def crlb_rmse(
    points_xy: ArrayLike,
    receivers_xyz: ArrayLike,
    exponent: ArrayLike,
    sigma_db: ArrayLike,
    emitter_z: float = DEFAULT_EMITTER_Z,
    *,
    rcond: float = 1e-12,
) -> NDArray[np.float64]:
    """Lower bound (metres) on the RMSE of a fix at each of the (g, 2) points -> (g,).

    inf where the FIM is singular (relative determinant below `rcond`): fewer
    than two independent bearings, e.g. one receiver or a point on the line
    through collinear receivers.
    """
    f = fisher_information(points_xy, receivers_xyz, exponent, sigma_db, emitter_z)
    tr = f[:, 0, 0] + f[:, 1, 1]
    det = f[:, 0, 0] * f[:, 1, 1] - f[:, 0, 1] * f[:, 1, 0]
    singular = det <= rcond * tr**2
    # trace(F⁻¹) = trace(F) / det(F) for a 2 x 2 matrix
    bound = np.sqrt(tr / np.where(singular, 1.0, det))
    return np.where(singular, np.inf, bound)
