"""Log-distance path loss: the radio model every other module inverts.

The received power falls off with the logarithm of the slant distance between
receiver and emitter,

    rssi = A - 10 n log10(d)                                            (1)

with A the RSSI at 1 m and n the path-loss exponent (2 in free space, 1.6-3.5
indoors). Shadowing by shelves and bodies adds a roughly log-normal error,
i.e. Gaussian in dB, whose spread sigma is what the tracker weighs readings by.
Distances are clamped to `MIN_DISTANCE_M` so (1) stays finite when a phone is
held against a receiver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from positioning.radiomap import RadioMap

MIN_DISTANCE_M = 0.1
"""Distances below this are treated as this: (1) has no meaning in the near field."""

DB_PER_NEPER = 10.0 / math.log(10.0)
"""10 / ln 10: turns d(10 log10 d) into d(ln d), used by every Jacobian of (1)."""

DEFAULT_EMITTER_Z = 1.2
"""Metres above the floor of a phone in a hand or a pocket."""

MAD_TO_SIGMA = 1.4826
"""Scale from median absolute deviation to the standard deviation of a Gaussian."""

MIN_DISTANCE_SPAN = 2.0
"""Readings must reach at least this ratio of far to near distance for the exponent n of (1) to be identifiable."""


def rssi_at_distance(
    distance_m: ArrayLike, rssi_at_1m: ArrayLike, exponent: ArrayLike
) -> NDArray[np.float64]:
    """Expected RSSI (dBm) at `distance_m`, eq. (1); all arguments broadcast."""
    d = np.maximum(np.asarray(distance_m, dtype=np.float64), MIN_DISTANCE_M)
    a = np.asarray(rssi_at_1m, dtype=np.float64)
    n = np.asarray(exponent, dtype=np.float64)
    return a - 10.0 * n * np.log10(d)  # rssi = A - 10 n log10 d


def distance_from_rssi(
    rssi_dbm: ArrayLike, rssi_at_1m: ArrayLike, exponent: ArrayLike
) -> NDArray[np.float64]:
    """Slant distance (m) that (1) maps to `rssi_dbm`: d = 10^((A - rssi) / (10 n))."""
    z = np.asarray(rssi_dbm, dtype=np.float64)
    a = np.asarray(rssi_at_1m, dtype=np.float64)
    n = np.asarray(exponent, dtype=np.float64)
    return np.maximum(10.0 ** ((a - z) / (10.0 * n)), MIN_DISTANCE_M)


def slant_distance(
    xy: ArrayLike, receivers_xyz: ArrayLike, emitter_z: float
) -> NDArray[np.float64]:
    """Distance from emitters at `xy` (..., 2) and height `emitter_z` to receivers (m, 3).

    Returns (..., m): d = sqrt(dx² + dy² + dz²), unclamped.
    """
    p = np.asarray(xy, dtype=np.float64)[..., None, :]
    r = np.asarray(receivers_xyz, dtype=np.float64)
    dz = emitter_z - r[:, 2]
    d: NDArray[np.float64] = np.sqrt(np.sum((p - r[:, :2]) ** 2, axis=-1) + dz * dz)
    return d


@dataclass(frozen=True)
class Calibration:
    """Fitted parameters of (1) for one receiver (or one receiver model).

    `rssi_at_1m_se` and `path_loss_exponent_se` are standard errors from the
    Jacobian and the robust weights at the optimum; `sigma_db` is the robust spread of the
    residuals (1.4826 MAD), which is what the tracker should use as the
    per-reading noise.
    """

    rssi_at_1m: float
    path_loss_exponent: float
    rssi_at_1m_se: float
    path_loss_exponent_se: float
    sigma_db: float
    n_samples: int


def fit_calibration(
    distance_m: ArrayLike, rssi_dbm: ArrayLike, *, f_scale_db: float = 3.0
) -> Calibration:
    """Fit A and n of (1) to surveyed (distance, RSSI) pairs, robust to outliers.

    Survey data always holds readings blocked by a body or boosted by a
    reflection, and plain least squares follows them. A soft-L1 loss (convex)
    finds the right basin; a Cauchy loss, whose pull fades for residuals well
    beyond `f_scale_db`, then removes most of the bias soft-L1 leaves with
    one-sided outliers (15 % readings 15-30 dB low: ~0.9 dB -> ~0.15 dB in A).

    Args:
        distance_m: (s,) slant distances, metres, > 0.
        rssi_dbm: (s,) RSSI readings, dBm.
        f_scale_db: residual size (dB) beyond which a reading counts as an outlier.

    Raises:
        ValueError: fewer than 3 samples, all at one distance, or bad values.
    """
    d = np.asarray(distance_m, dtype=np.float64).ravel()
    z = np.asarray(rssi_dbm, dtype=np.float64).ravel()
    if d.shape != z.shape:
        raise ValueError(f"distance_m has {d.size} samples but rssi_dbm has {z.size}")
    if d.size < 3:
        raise ValueError(f"calibration needs at least 3 samples, got {d.size}")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(z))):
        raise ValueError("calibration samples must be finite numbers")
    if np.any(d <= 0.0):
        raise ValueError("calibration distances must be positive (metres)")
    # Regressor of (1): rssi = A + n * g with g = -10 log10 d.
    g = -10.0 * np.log10(np.maximum(d, MIN_DISTANCE_M))
    if np.ptp(g) == 0.0:
        raise ValueError(
            "all calibration samples are at one distance: the path-loss exponent "
            "cannot be told apart from the 1 m RSSI; survey at several distances"
        )

    def residuals(theta: NDArray[np.float64]) -> NDArray[np.float64]:
        r: NDArray[np.float64] = theta[0] + theta[1] * g - z
        return r

    j = np.column_stack([np.ones_like(g), g])  # d residual / d (A, n), constant

    def jacobian(_theta: NDArray[np.float64]) -> NDArray[np.float64]:
        return j

    # Ordinary least squares starts the convex soft-L1 fit, which finds the
    # basin; a Cauchy (redescending) polish then stops gross outliers pulling.
    start = np.linalg.lstsq(j, z, rcond=None)[0]
    # Imported here: scipy.optimize is ~45 MB resident, and the agent, which
    # imports this module for the model, never fits on the store's Pi.
    from scipy.optimize import least_squares  # noqa: PLC0415

    basin = least_squares(residuals, start, jac=jacobian, loss="soft_l1", f_scale=f_scale_db)
    result = least_squares(residuals, basin.x, jac=jacobian, loss="cauchy", f_scale=f_scale_db)
    theta = result.x
    r = residuals(theta)
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(r - np.median(r))))
    # Sandwich covariance of the final weighted fit, J the Jacobian at the
    # optimum and W = diag(psi(u) / u) = diag(1 / (1 + u²)), u = r / f_scale,
    # the Cauchy weights the fit settled on (outliers get ~0):
    # cov(theta) = sigma² (JᵀWJ)⁻¹ JᵀW²J (JᵀWJ)⁻¹
    w = 1.0 / (1.0 + (r / f_scale_db) ** 2)
    bread = np.linalg.inv(j.T @ (w[:, None] * j))
    cov = sigma**2 * bread @ (j.T @ ((w**2)[:, None] * j)) @ bread
    return Calibration(
        rssi_at_1m=float(theta[0]),
        path_loss_exponent=float(theta[1]),
        rssi_at_1m_se=float(np.sqrt(cov[0, 0])),
        path_loss_exponent_se=float(np.sqrt(cov[1, 1])),
        sigma_db=sigma,
        n_samples=int(d.size),
    )


def fit_body_loss(
    group: ArrayLike, distance_m: ArrayLike, rssi_dbm: ArrayLike, behind: ArrayLike
) -> float:
    """The walker's body loss B of a calibration walk, jointly with every receiver's (1), least squares.

    Whoever walks the survey carries the tag in front of them, so each
    receiver behind them reads through their body (eq. (20) of
    `positioning.ekf`). Fitted as if it were not there, the loss goes into
    A (the mean of it) and into the radio map (the rest of it, as stripes
    that alternate with the direction of each pass). With b_j in [0, 1] how
    far reading j's receiver lies behind the walker (eq. (20)'s factor from
    the walk's known velocity) the readings are

        z_j = A_r + n_r g_j - B b_j + e_j,  g_j = -10 log10 d_j          (48)

    and B follows from the joint least squares of all A_r, n_r and B by
    projecting z and b, receiver by receiver, off [1, g] (Frisch-Waugh):
    B = -sum b~ z~ / sum b~². A walk that passes each place in two
    directions tells the body from the place, so the shadowing field, which
    stays put, does not enter B.

    Args:
        group: (s,) the receiver of each reading, any integer labels.
        distance_m: (s,) slant distances, metres, > 0.
        rssi_dbm: (s,) readings, dBm.
        behind: (s,) b_j, in [0, 1].

    Returns:
        B in dB (positive: readings low behind the walker), 0.0 where the
        walk never had a receiver behind it (nothing to tell B by).

    Raises:
        ValueError: lengths differ, or values not finite.
    """
    r = np.asarray(group).ravel()
    d = np.asarray(distance_m, dtype=np.float64).ravel()
    z = np.asarray(rssi_dbm, dtype=np.float64).ravel()
    b = np.asarray(behind, dtype=np.float64).ravel()
    if not r.size == d.size == z.size == b.size:
        raise ValueError(f"group, distance_m, rssi_dbm and behind differ in length: {r.size}, {d.size}, {z.size}, {b.size}")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(z)) and np.all(np.isfinite(b))):
        raise ValueError("walk readings, distances and behind factors must be finite")
    g = -10.0 * np.log10(np.maximum(d, MIN_DISTANCE_M))
    num = den = 0.0
    for label in np.unique(r):
        mine = r == label
        j = np.column_stack([np.ones(int(mine.sum())), g[mine]])
        # Residuals of z and b after their own least squares on [1, g]: the part (1) cannot explain.
        zb = np.column_stack([z[mine], b[mine]])
        rest = zb - j @ np.linalg.lstsq(j, zb, rcond=None)[0]
        num += float(rest[:, 1] @ rest[:, 0])
        den += float(rest[:, 1] @ rest[:, 1])
    return -num / den if den > 1e-9 else 0.0


@dataclass(frozen=True, eq=False)
class Receivers:
    """The installed receivers and their calibrated model (1), as stacked arrays.

    xyz (m, 3) metres in the store frame; rssi_at_1m, exponent and sigma_db
    (m,). Row r is receiver index r everywhere an observation names one.
    Built through `Receivers.of`, which checks shapes once so the hot paths
    need not.
    """

    xyz: NDArray[np.float64]
    rssi_at_1m: NDArray[np.float64]
    exponent: NDArray[np.float64]
    sigma_db: NDArray[np.float64]
    radio_map: RadioMap | None = None

    @classmethod
    def of(
        cls,
        xyz: ArrayLike,
        rssi_at_1m: ArrayLike,
        exponent: ArrayLike,
        sigma_db: ArrayLike,
        radio_map: RadioMap | None = None,
    ) -> Receivers:
        """Validate and freeze receiver arrays; scalars broadcast to all receivers.

        `radio_map`, if given, holds one residual field per receiver (eq. (15)
        of `positioning.radiomap`) that the tracker adds to (1).
        """
        p = np.array(xyz, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] == 0:
            raise ValueError(f"receivers_xyz must have shape (m, 3) with m >= 1, got {p.shape}")
        m = p.shape[0]
        a, n, s = (
            np.array(np.broadcast_to(np.asarray(v, dtype=np.float64), (m,)))
            for v in (rssi_at_1m, exponent, sigma_db)
        )
        if not all(np.all(np.isfinite(v)) for v in (p, a, n, s)):
            raise ValueError("receiver positions and calibration must be finite")
        if np.any(n <= 0.0) or np.any(s <= 0.0):
            raise ValueError("path-loss exponents and sigma_db must be positive")
        if radio_map is not None and len(radio_map) != m:
            raise ValueError(f"radio map has {len(radio_map)} receivers, not {m}")
        for v in (p, a, n, s):
            v.flags.writeable = False
        return cls(p, a, n, s, radio_map)

    def __len__(self) -> int:
        return int(self.xyz.shape[0])
