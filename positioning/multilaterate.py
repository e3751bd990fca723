"""Snapshot position fix from one set of RSSI readings (no memory, no motion model).

Used where there is no track yet to lean on (surveys, calibration checks, the
accuracy report) and as the per-fix baseline the batched tracker is measured
against. Two stages, as in the textbook:

1. Linear start. Invert (1) of `pathloss` to distances, drop the height
   difference to get horizontal ranges rho_i, and subtract the reference
   circle |q - p_0|² = rho_0² from the others, which cancels |q|²:

       2 (p_i - p_0)ᵀ q = rho_0² - rho_i² + |p_i|² - |p_0|²              (2)

2. Weighted robust non-linear least squares on the RSSI residuals themselves,

       q* = argmin_q  sum_i rho_soft_l1( ((h_i(q) - z_i) / sigma_i)² )      (3)

   which is the maximum-likelihood fix under Gaussian dB noise, made robust to
   the odd faded reading. Its covariance is (JᵀJ)⁻¹ with J the loss-weighted
   Jacobian of the sigma-normalised residuals at the optimum.

The fix is computed in a frame centred on the receivers' centroid, so it is
exactly translation-equivariant and well scaled wherever the store sits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import least_squares

from positioning.pathloss import DB_PER_NEPER, DEFAULT_EMITTER_Z, MIN_DISTANCE_M, distance_from_rssi
from positioning.radiomap import RadioMap


@dataclass(frozen=True, eq=False)
class Fix:
    """One position fix.

    xy (2,) metres and cov (2, 2) m² in the store frame; both NaN when `ok` is
    False, in which case `reason` says why ('too few receivers', 'collinear
    receivers', 'did not converge', 'singular information matrix').
    `n_used` counts the receivers with a finite reading.
    """

    xy: NDArray[np.float64]
    cov: NDArray[np.float64]
    ok: bool
    reason: str
    n_used: int


def _failed(reason: str, n_used: int) -> Fix:
    return Fix(np.full(2, np.nan), np.full((2, 2), np.nan), False, reason, n_used)


def is_collinear(receivers_xy: NDArray[np.float64], tol: float = 1e-2) -> bool:
    """True when the (m, 2) points lie (nearly) on one line or one spot.

    Receivers on a line cannot tell an emitter from its mirror image across
    that line. Measured by the singular values of the centred coordinates:
    the smaller is the spread across the best-fit line, the larger along it.
    """
    centred = receivers_xy - receivers_xy.mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    return bool(s[0] == 0.0 or s[-1] < tol * s[0])


def linear_start(
    receivers_xyz: NDArray[np.float64], distance_m: NDArray[np.float64], emitter_z: float
) -> NDArray[np.float64]:
    """Closed-form start (2) from slant distances; (m, 3), (m,) -> (2,).

    Row 0 is the reference circle, so put the most trusted (strongest)
    receiver first.
    """
    p = receivers_xyz[:, :2]
    dz = emitter_z - receivers_xyz[:, 2]
    rho2 = np.maximum(distance_m**2 - dz**2, 0.0)  # horizontal range², rho² = d² - dz²
    norm2 = np.sum(p**2, axis=1)
    a = 2.0 * (p[1:] - p[0])  # 2 (p_i - p_0)ᵀ q = rho_0² - rho_i² + |p_i|² - |p_0|²
    b = rho2[0] - rho2[1:] + norm2[1:] - norm2[0]
    q: NDArray[np.float64] = np.linalg.lstsq(a, b, rcond=None)[0]
    return q


def fix(
    receivers_xyz: ArrayLike,
    rssi: ArrayLike,
    rssi_at_1m: ArrayLike,
    exponent: ArrayLike,
    sigma_db: ArrayLike,
    emitter_z: float = DEFAULT_EMITTER_Z,
    *,
    f_scale: float = 2.0,
    collinear_tol: float = 1e-2,
    radio_map: RadioMap | None = None,
) -> Fix:
    """Locate one emitter from the RSSI heard by m receivers, eq. (2) then (3).

    Args:
        receivers_xyz: (m, 3) receiver positions, metres.
        rssi: (m,) readings in dBm; NaN marks a receiver that did not hear it.
        rssi_at_1m, exponent, sigma_db: (m,) calibration of each receiver.
        emitter_z: assumed emitter height, metres.
        f_scale: normalised residual (in sigmas) beyond which a reading is
            down-weighted by the soft-L1 loss.
        collinear_tol: ratio of singular values below which the receivers'
            layout counts as a line.
        radio_map: residual fields (rows as receivers) added to (1), as the tracker does.
    """
    xyz = np.asarray(receivers_xyz, dtype=np.float64).reshape(-1, 3)
    m = xyz.shape[0]
    z_all, a_all, n_all, s_all = (
        np.broadcast_to(np.asarray(v, dtype=np.float64), (m,))
        for v in (rssi, rssi_at_1m, exponent, sigma_db)
    )
    heard = np.isfinite(z_all)
    n_used = int(heard.sum())
    if n_used < 3:
        return _failed("too few receivers", n_used)
    # Strongest first: it is the reference circle of (2).
    order = np.flatnonzero(heard)[np.argsort(-z_all[heard], kind="stable")]
    centre = xyz[order, :2].mean(axis=0)
    r = xyz[order] - np.array([centre[0], centre[1], 0.0])
    z, a, n, s = z_all[order], a_all[order], n_all[order], s_all[order]
    if is_collinear(r[:, :2], collinear_tol):
        return _failed("collinear receivers", n_used)

    dz2 = (emitter_z - r[:, 2]) ** 2
    gain = DB_PER_NEPER * n / s  # |d rssi / d ln d| in sigmas

    def residuals(q: NDArray[np.float64]) -> NDArray[np.float64]:
        d = np.maximum(np.sqrt(np.sum((q - r[:, :2]) ** 2, axis=1) + dz2), MIN_DISTANCE_M)
        h = a - 10.0 * n * np.log10(d)
        if radio_map is not None:
            h = h + radio_map.at(order, np.broadcast_to(q + centre, (order.size, 2)))[0]
        res: NDArray[np.float64] = (h - z) / s  # (h_i(q) - z_i) / sigma_i
        return res

    def jacobian(q: NDArray[np.float64]) -> NDArray[np.float64]:
        delta = q - r[:, :2]
        d2 = np.sum(delta**2, axis=1) + dz2
        near = d2 < MIN_DISTANCE_M**2  # (1) is flat inside the clamp
        # d h_i / d q = -(10 n_i / ln 10) (q - p_i) / d_i²
        out: NDArray[np.float64] = np.where(
            near[:, None], 0.0, -(gain / np.maximum(d2, MIN_DISTANCE_M**2))[:, None] * delta
        )
        if radio_map is not None:
            out = out + radio_map.at(order, np.broadcast_to(q + centre, (order.size, 2)))[1] / s[:, None]
        return out

    start = linear_start(r, distance_from_rssi(z, a, n), emitter_z)
    result = least_squares(residuals, start, jac=jacobian, loss="soft_l1", f_scale=f_scale)
    if not result.success or not np.all(np.isfinite(result.x)):
        return _failed("did not converge", n_used)
    j = result.jac
    try:
        cov = np.linalg.inv(j.T @ j)  # cov = sigma² (JᵀJ)⁻¹, sigma folded into J
    except np.linalg.LinAlgError:
        return _failed("singular information matrix", n_used)
    return Fix(result.x + centre, 0.5 * (cov + cov.T), True, "", n_used)
