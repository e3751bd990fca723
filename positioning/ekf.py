"""Batched extended Kalman filter: one constant-velocity track per emitter.

State per track x = [x, y, vx, vy] (m, m/s), covariance P (4 x 4). The
measurement is the RSSI itself, not a position fix,

    z_i = h_i(x) + e_i,   h_i(x) = A_r - 10 n_r log10 d_r(x),   e_i ~ N(0, sigma_r²)

so a track heard by a single receiver is still updated honestly: the reading
constrains only the range to that receiver, and the covariance shrinks along
the radial direction alone. Where a calibration walk fitted a radio map,
h_i also carries the receiver's residual field g_r(x) (eq. (15) of
`positioning.radiomap`), and H_i its gradient.

A window's readings of all tracks are folded in at once. Linearised at the
predicted state, readings of one track are independent, so their information
adds (information-form batch update):

    Lambda_k = sum_{i in k} H_iᵀ H_i / sigma_i²,   b_k = sum_{i in k} H_iᵀ nu_i / sigma_i²
    P⁺ = (P⁻⁻¹ + Lambda_k)⁻¹,                      x⁺ = x⁻ + P⁺ b_k             (6)

The sums are bincounts over track indices; H_i touches position only, so
Lambda_k lives in the 2 x 2 position block E = [I 0] and (6) is evaluated by
the Woodbury identity with 2 x 2 solves, which needs no inverse of P⁻ (huge at
birth, rank-deficient after clamping):

    P⁺ = P⁻ - P⁻Eᵀ M E P⁻,   M = (I + Lambda C)⁻¹ Lambda,   C = E P⁻ Eᵀ         (7)

Readings are gated on their normalised innovation r_i = nu_i / sqrt(S_i),
S_i = H_i P⁻ H_iᵀ + sigma_i², before they enter the sums, and (6) may be
iterated, re-linearising at the updated state (iterated EKF). Shadowing is
not symmetric: a body or a shelf between phone and receiver only takes
power away, so a reading far weaker than predicted says that something is
in the way more than how far the phone is. Such readings enter (6) with
Huber's weight on that side only,

    w_i = (share_i / sigma_i²) (k / -r_i)   where r_i < -k                 (14)

so one cannot pull the estimate further than a reading k innovation
deviations weak would.

Phones differ: one model transmits a few dB more than another (TX setting,
antenna, case), and an unknown phone's offset o would otherwise be read as
distance, every receiver pulling the estimate nearer or farther at once.
With `offset_sigma_db` > 0 each track carries o as a fifth state,

    x = [x, y, vx, vy, o],   z_i = h_i(x) + o + e_i,   H_i = [dh/dx, dh/dy, 0, 0, 1]      (16)

born o ~ N(0, sigma_o²) and drifting as a random walk, Q_oo = q_o² dt (a
phone moved from hand to pocket). (6)-(7) hold as written with E selecting
(x, y, o): Lambda, M and C are 3 x 3. A common offset and a displacement are
told apart because a displacement moves the receivers' predictions by
different amounts (nearer some, farther from others) and o moves them all
alike; where the receivers heard all lie on one side the two are confounded
and the prior keeps o near 0:

    o⁺ - o⁻ = [P⁺ b]_o,   var(o⁺) <= sigma_o²                                       (17)

(the clamp keeps o's spread within its prior after a silence, as it keeps
position within the store).

A shopper carries the phone in front of the body, facing the way they
walk: a receiver behind them reads through the body, several dB low, and
one ahead does not. Read as distance, that one-sided loss pushes the
estimate away from the receivers behind. With `body_loss_db` B > 0 the
measurement expects it, from the track's own velocity v:

    h_i(x) -= B min(1, |v| / v_w) max(0, -cos(angle(v, p_r - q)))        (20)

(v_w = `body_walk_speed`): full at walking speed, fading to nothing as the
shopper stops, whose facing the velocity no longer tells (standing at a
shelf, any receiver may be behind; a common loss is the offset's business).
(20) shifts h_i but adds nothing to H_i: the heading is the velocity's,
which the update leaves to the position's motion.

(20) is silent where most of the loss is: a shopper stops at a shelf for
minutes, and the receivers behind read low all along. Who stops keeps,
for a while, the way they were walking (they walked up to the shelf), so
a track remembers its carrier's facing f (|f| <= 1, how sure) from the
velocity of its walking and lets it fade while standing:

    f = s v / |v| + (1 - s) exp(-dt / tau_h) f_prev,   s = min(1, |v| / v_w)
    h_i(x) -= B max(0, -f . (p_r - q) / |p_r - q|)                          (21)

(tau_h = `body_hold_s`, dt since the track's last window, f_prev its
facing then). At walking speed f is the heading and (21) is (20); with
tau_h = 0 it is (20) at every speed. The held part is the previous
window's, an input to the update like the receivers' positions: only the
velocity's part moves with the iterations.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from positioning.pathloss import DB_PER_NEPER, DEFAULT_EMITTER_Z, MIN_DISTANCE_M, Receivers

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

GATE = 3.5
"""Normalised innovation beyond which `update` drops a reading (`TrackerConfig.gate`)."""
WEAK_K = 1.5
"""k of eq. (14) (`TrackerConfig.weak_k`)."""
ITERATIONS = 3
"""Linearisations per `update` (`TrackerConfig.iterations`)."""
READING_CORRELATION = 0.3
"""Correlation of repeated readings of one (track, receiver) pair (`TrackerConfig.reading_correlation`)."""
BODY_LOSS_DB = 0.5
"""B of eq. (20), dB; 0 leaves the body out (`TrackerConfig.body_loss_db`)."""
BODY_WALK_SPEED = 0.5
"""v_w of eq. (20), m/s (`TrackerConfig.body_walk_speed`)."""
BODY_HOLD_S = 0.0
"""tau_h of eq. (21), s; 0 holds nothing, (20) (`TrackerConfig.body_hold_s`)."""


class Update(NamedTuple):
    """Result of `update`: x (k, d), P (k, d, d), accepted (N,) per reading, and
    loglik (k,) log-likelihood of each track's readings under its prediction, eq. (13)."""

    x: FloatArray
    P: FloatArray
    accepted: NDArray[np.bool_]
    loglik: FloatArray


def predict(
    x: FloatArray, P: FloatArray, dt: ArrayLike, sigma_a: ArrayLike, offset_drift: float = 0.0
) -> tuple[FloatArray, FloatArray]:
    """Constant-velocity prediction of k tracks over dt seconds (scalar or (k,)).

    x (k, d), P (k, d, d) -> same shapes, d = 4, or 5 with the offset of eq.
    (16); sigma_a scalar or (k,). Process noise is piecewise-constant white
    acceleration: per axis Q = sigma_a² [[dt⁴/4, dt³/2], [dt³/2, dt²]]; the
    offset, if any, is a random walk, Q_oo = offset_drift² dt.
    """
    k, d = x.shape
    dt = np.broadcast_to(np.asarray(dt, dtype=np.float64), (k,))
    sa = np.broadcast_to(np.asarray(sigma_a, dtype=np.float64), (k,))
    F = np.broadcast_to(np.eye(d), (k, d, d)).copy()
    F[:, 0, 2] = F[:, 1, 3] = dt
    x_pred = np.einsum("kij,kj->ki", F, x)  # x = F x
    q = (sa**2)[:, None] * np.stack([dt**4 / 4.0, dt**3 / 2.0, dt**2], axis=-1)
    Q = np.zeros((k, d, d))
    for pos, vel in ((0, 2), (1, 3)):
        Q[:, pos, pos], Q[:, pos, vel], Q[:, vel, vel] = q[:, 0], q[:, 1], q[:, 2]
        Q[:, vel, pos] = q[:, 1]
    if d > 4:
        Q[:, 4, 4] = offset_drift**2 * dt
    P_pred = F @ P @ F.transpose(0, 2, 1) + Q  # P = F P Fᵀ + Q
    return x_pred, P_pred


def measure(
    xy: FloatArray, receivers: Receivers, receiver_index: IndexArray, emitter_z: float
) -> tuple[FloatArray, FloatArray]:
    """h_i and its position gradient for readings i at emitter positions xy (N, 2).

    Returns h (N,) dBm and H (N, 2), H_i = -(10 n / ln 10) (q - p_r) / d²
    (zero inside the distance clamp, where the model is flat), plus the
    receivers' residual field and its gradient where a calibration walk fitted one.
    """
    r = receivers.xyz[receiver_index]
    n = receivers.exponent[receiver_index]
    delta = xy - r[:, :2]
    d2 = np.einsum("ij,ij->i", delta, delta) + (emitter_z - r[:, 2]) ** 2
    d2c = np.maximum(d2, MIN_DISTANCE_M**2)
    h = receivers.rssi_at_1m[receiver_index] - 5.0 * n * np.log10(d2c)  # A - 10 n log10 d
    gain = np.where(d2 >= MIN_DISTANCE_M**2, -DB_PER_NEPER * n / d2c, 0.0)
    H = gain[:, None] * delta
    if receivers.radio_map is not None:  # + g_r(q), eq. (15) of positioning.radiomap
        g, dg = receivers.radio_map.at(receiver_index, xy)
        return h + g, H + dg
    return h, H


def update(
    x: FloatArray,
    P: FloatArray,
    track_index: IndexArray,
    receiver_index: IndexArray,
    rssi: FloatArray,
    receivers: Receivers,
    *,
    emitter_z: float = DEFAULT_EMITTER_Z,
    gate: float = GATE,
    weak_k: float = WEAK_K,
    iterations: int = ITERATIONS,
    reading_correlation: float = READING_CORRELATION,
    body: tuple[float, float] = (BODY_LOSS_DB, BODY_WALK_SPEED),
    held: FloatArray | None = None,
) -> Update:
    """Fold N readings into k predicted tracks at once, eqs. (6)-(7).

    Args:
        x, P: (k, d), (k, d, d) predicted states and covariances; d = 5 carries
            the phone's offset of eq. (16), which adds to every reading's h_i.
        track_index: (N,) row of x each reading belongs to.
        receiver_index: (N,) row of `receivers` that heard it.
        rssi: (N,) readings, dBm.
        gate, weak_k, iterations, reading_correlation: as in
            `positioning.tracker.TrackerConfig`, which takes its defaults from
            this module's constants; weak_k = inf is the plain EKF.
        body: (B, v_w) of eq. (20); B = 0 leaves the body out.
        held: (k, 2) the held part exp(-dt / tau_h) f_prev of each track's
            facing, eq. (21); None is (20) (nothing held).

    Tracks without an accepted reading come back unchanged.
    """
    k, m = x.shape[0], len(receivers)
    sel = [0, 1, 4] if x.shape[1] > 4 else [0, 1]  # E: the states a reading touches, eq. (16)
    e = len(sel)
    sigma2 = receivers.sigma_db[receiver_index] ** 2
    C = P[:, sel][:, :, sel]  # E P⁻ Eᵀ
    h, H = _measured(x, track_index, receivers, receiver_index, emitter_z, body, held)
    nu = rssi - h  # nu_i = z_i - h_i(x⁻)
    S = np.einsum("ni,nij,nj->n", H, C[track_index], H) + sigma2  # S = H P Hᵀ + R
    accepted = nu**2 <= gate**2 * S
    # c accepted repeats of a (track, receiver) pair share their shadowing.
    _, pair = np.unique(track_index * m + receiver_index, return_inverse=True)
    repeats = np.maximum(np.bincount(pair, weights=accepted)[pair], 1.0)
    share = 1.0 / (1.0 + reading_correlation * (repeats - 1.0))
    r = nu / np.sqrt(S)
    huber = np.minimum(1.0, weak_k / np.maximum(-r, 1e-12)) if np.isfinite(weak_k) else 1.0  # eq. (14)
    w = np.where(accepted, huber * share / sigma2, 0.0)
    # Log-likelihood of eq. (13); a gated reading counts as one at the gate.
    z2 = np.where(accepted, nu**2 / S, gate**2)
    loglik = np.bincount(
        track_index,
        -0.5 * np.where(accepted, share, 1.0) * (z2 + np.log(2.0 * np.pi * S)),
        minlength=k,
    )

    PE = P[:, :, sel]  # P⁻ Eᵀ, (k, d, e)
    eye = np.eye(e)
    x_i, P_i = x, P
    for it in range(iterations):
        if it > 0:  # iterated EKF: nu_i = z_i - h_i(x_j) - H_i E (x⁻ - x_j)
            h, H = _measured(x_i, track_index, receivers, receiver_index, emitter_z, body, held)
            nu = rssi - h - np.einsum("ni,ni->n", H, (x - x_i)[track_index][:, sel])
        wnu = np.where(accepted, w * nu, 0.0)
        lam = np.empty((k, e, e))  # Lambda = sum H_iᵀ H_i / sigma_i²
        for a in range(e):
            for c in range(a, e):
                lam[:, a, c] = lam[:, c, a] = np.bincount(track_index, w * H[:, a] * H[:, c], minlength=k)
        b = np.stack(
            [np.bincount(track_index, wnu * H[:, j], minlength=k) for j in range(e)], axis=-1
        )
        M = np.linalg.solve(eye + lam @ C, lam)  # M = (I + Lambda C)⁻¹ Lambda
        P_i = P - PE @ M @ PE.transpose(0, 2, 1)  # P⁺ = P⁻ - P⁻Eᵀ M E P⁻
        P_i = 0.5 * (P_i + P_i.transpose(0, 2, 1))
        x_i = x + np.einsum("kij,kj->ki", P_i[:, :, sel], b)  # x⁺ = x⁻ + P⁺ Eᵀ b
    return Update(x_i, P_i, accepted, np.asarray(loglik, dtype=np.float64))


def _measured(
    x: FloatArray, track_index: IndexArray, receivers: Receivers, receiver_index: IndexArray, emitter_z: float,
    body: tuple[float, float] = (0.0, 0.5), held: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray]:
    """h_i and H_i E at the tracks' states x (k, d): with the offset of eq. (16) when d = 5, the body of (20)-(21)."""
    h, H = measure(x[track_index, :2], receivers, receiver_index, emitter_z)
    if body[0] > 0.0:
        kept = None if held is None else held[track_index]
        h = h - body_loss(x[track_index], receivers.xyz[receiver_index, :2], *body, kept)
    if x.shape[1] > 4:
        return h + x[track_index, 4], np.hstack([H, np.ones((H.shape[0], 1))])
    return h, H


def facing(x: FloatArray, walk_speed: float, held: FloatArray | None = None) -> FloatArray:
    """f of eq. (21), (N, 2), from states x (N, >= 4) and the held part of the previous facing (N, 2) or None."""
    v = x[:, 2:4]
    speed = np.hypot(v[:, 0], v[:, 1])
    f = v / np.maximum(speed, walk_speed)[:, None]  # s v / |v|
    if held is not None:
        f = f + (1.0 - np.minimum(1.0, speed / walk_speed))[:, None] * held
    return np.asarray(f, dtype=np.float64)


def body_loss(
    x: FloatArray, receiver_xy: FloatArray, loss_db: float, walk_speed: float, held: FloatArray | None = None
) -> FloatArray:
    """Eqs. (20)-(21): the loss (N,) dB a carrier with state x (N, >= 4) puts towards receivers at (N, 2)."""
    f = facing(x, walk_speed, held)
    to_rx = receiver_xy - x[:, :2]
    dist = np.hypot(to_rx[:, 0], to_rx[:, 1])
    cos = np.einsum("ij,ij->i", f, to_rx) / np.maximum(dist, 1e-12)
    return np.asarray(loss_db * np.maximum(0.0, -cos), dtype=np.float64)


def clamp(
    x: FloatArray, P: FloatArray, lo: FloatArray, hi: FloatArray, v_max: float, offset_cap: float = np.inf
) -> tuple[FloatArray, FloatArray]:
    """Keep tracks physical: position inside the box [lo, hi] (2,), speed <= v_max.

    A track pushed beyond a wall also loses its velocity through that wall:
    kept, it carried the next prediction out again and the estimate stuck to
    the wall until the readings outweighed it (simulated store with lasting
    shadows, seed 5: 60 % of the windows more than 8 m off sat on the
    outline, and stopping at walls took that share of windows from 8.2 % to
    7.1 %; with a radio map, 19 % to 11 %).

    The covariance is scaled as D P D with D = diag(min(1, cap / std)), which
    stays positive semi-definite, so that no track claims more uncertainty
    than the store's extent in position or v_max in velocity after a silence,
    nor more than `offset_cap` (its prior) in the offset of eq. (16), if x has one.
    """
    x = x.copy()
    outward = ((x[:, :2] < lo) & (x[:, 2:4] < 0.0)) | ((x[:, :2] > hi) & (x[:, 2:4] > 0.0))
    x[:, :2] = np.clip(x[:, :2], lo, hi)
    x[:, 2:4] = np.where(outward, 0.0, x[:, 2:4])
    speed = np.hypot(x[:, 2], x[:, 3])
    x[:, 2:4] *= np.minimum(1.0, v_max / np.maximum(speed, 1e-12))[:, None]
    cap = np.array([hi[0] - lo[0], hi[1] - lo[1], v_max, v_max, offset_cap][: x.shape[1]])
    std = np.sqrt(np.diagonal(P, axis1=1, axis2=2))
    d = np.minimum(1.0, cap / np.maximum(std, 1e-12))
    return x, d[:, :, None] * P * d[:, None, :]


def birth_positions(
    track_index: IndexArray,
    receiver_index: IndexArray,
    rssi: FloatArray,
    receivers: Receivers,
    k: int,
    power_k: float,
) -> FloatArray:
    """Power-weighted centroid of the receivers that heard each new track -> (k, 2).

    Weights 10^(power_k (rssi - max) / 10): the loudest receiver dominates,
    as it is the nearest far more often than not.
    """
    top = np.full(k, -np.inf)
    np.maximum.at(top, track_index, rssi)
    w = 10.0 ** (power_k * (rssi - top[track_index]) / 10.0)
    p = receivers.xyz[receiver_index, :2]
    total = np.bincount(track_index, w, minlength=k)
    return np.stack(
        [np.bincount(track_index, w * p[:, j], minlength=k) / total for j in (0, 1)], axis=-1
    )


def birth_covariance(k: int, sigma_m: float, sigma_v: float, sigma_o: float = 0.0) -> FloatArray:
    """(k, d, d) diagonal covariance of newborn tracks; d = 5 with an offset spread sigma_o > 0, eq. (16)."""
    diag = [sigma_m**2, sigma_m**2, sigma_v**2, sigma_v**2] + ([sigma_o**2] if sigma_o > 0.0 else [])
    return np.broadcast_to(np.diag(diag), (k, len(diag), len(diag))).copy()
