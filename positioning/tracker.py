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

Shoppers stand most of the time and sometimes walk: one process noise cannot
suit both (small, and the estimate lags a walker by metres; large, and a
standing shopper's estimate wanders). Each track therefore runs M
constant-velocity models that differ only in sigma_a, mixed by the
interacting multiple model (IMM) filter. With mode probabilities mu, a
switching chain Pi(dt) (stay in mode a with probability exp(-dt / tau_a),
else move to another mode uniformly) and c = mu Pi:

    mu_(a|b) = Pi_ab mu_a / c_b,   x0_b = sum_a mu_(a|b) x_a,
    P0_b = sum_a mu_(a|b) (P_a + (x_a - x0_b)(x_a - x0_b)ᵀ)                    (12)

each model is predicted and updated from its mixed start by (6)-(7) (one
batch per model, of all tracks and readings), then weighted by how well it
predicted the window's readings, L_b = prod_i N(nu_i; 0, S_i):

    mu_b ∝ L_b c_b,   x = sum_b mu_b x_b,   P = sum_b mu_b (P_b + (x_b - x)(x_b - x)ᵀ)   (13)

A reading outside the gate contributes the likelihood of one at the gate,
so a deep fade cannot swing the modes. With M = 1, (12)-(13) are the identity
and the tracker is the plain EKF.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from positioning.pathloss import DB_PER_NEPER, DEFAULT_EMITTER_Z, MIN_DISTANCE_M, Receivers
from positioning.radiomap import RadioMap

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]


@dataclass(frozen=True)
class TrackerConfig:
    """Tuning of the tracker; the defaults suit shoppers walking among shelves.

    sigma_a: white-acceleration spread of each IMM model, m/s², eq. (12):
        a standing shopper (0.05: sways, shuffles along a shelf) and a
        walking one (0.5: starts, stops, turns); a quicker walking model
        lags a real walk's corners.
    mode_dwell_s: tau of each model, s: how long a shopper keeps standing or
        walking before switching (same length as sigma_a).
    v_max: walking speed cap, m/s.
    gate: normalised innovation beyond which a reading is dropped (3.5 keeps
        99.95 % of honest Gaussian readings and drops deep fades).
    weak_k: k of eq. (14), normalised innovation below which a weaker-than-
        predicted reading is down-weighted (inf: never, the plain EKF). A
        body or a shelf in the way only ever takes power away, so a far
        weaker reading is trusted less; a smaller k helps real walks and
        costs a simulation with symmetric shadowing.
    iterations: linearisations per update. h is steep near a receiver, so
        the prior is a poor linearisation point after a birth or a turn;
        each iteration costs throughput.
    (benchmarks/README.md, "Tuning evidence", has the figures behind these defaults.)
    reading_correlation: correlation rho of repeated readings of one
        (track, receiver) pair in a window. Shadowing is shared by all of
        them, so c readings carry the information of 1 / (rho + (1-rho)/c),
        not c, independent ones.
    offset_sigma_db: prior spread sigma_o of a phone's TX offset, dB, eq. (16);
        0 leaves the offset out (four states, the plain model). Phones of
        different makes differ by several dB, and 4 dB suits that spread
        where they do (simulated store and impaired channel: better); it is
        off by default because where the phone is the very tag the receivers
        were calibrated with (the real danis tracks) it costs accuracy
        (benchmarks/README.md has the figures).
    offset_drift_db: q_o of eq. (16), dB per sqrt(s): how fast a phone's offset may wander.
    body_loss_db: B of eq. (20), the loss a walking carrier's body puts between
        the phone and a receiver straight behind, dB; 0 (the default) leaves
        it out. benchmarks/README.md has what it does where.
    body_walk_speed: v_w of eq. (20), m/s: the speed at which the heading is trusted in full.
    birth_sigma_m, birth_sigma_v: initial position (m) and velocity (m/s) spread.
    birth_power_k: sharpness k of the birth centroid weights 10^(k rssi / 10).
    max_silence_s: a track unheard this long is dead.
    """

    emitter_z: float = DEFAULT_EMITTER_Z
    sigma_a: tuple[float, ...] = (0.05, 0.5)
    mode_dwell_s: tuple[float, ...] = (30.0, 10.0)
    v_max: float = 2.5
    gate: float = 3.5
    weak_k: float = 1.5
    iterations: int = 3
    reading_correlation: float = 0.3
    offset_sigma_db: float = 0.0
    offset_drift_db: float = 0.05
    body_loss_db: float = 0.0
    body_walk_speed: float = 0.5
    birth_sigma_m: float = 5.0
    birth_sigma_v: float = 1.0
    birth_power_k: float = 1.0
    max_silence_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.sigma_a or len(self.mode_dwell_s) != len(self.sigma_a):
            raise ValueError(
                "TrackerConfig.sigma_a and mode_dwell_s need one value per model, "
                f"got {len(self.sigma_a)} and {len(self.mode_dwell_s)}"
            )
        if not all(v > 0.0 for v in (*self.sigma_a, *self.mode_dwell_s)):
            raise ValueError("TrackerConfig.sigma_a and mode_dwell_s must be positive")
        positive = (
            "v_max",
            "gate",
            "weak_k",
            "birth_sigma_m",
            "birth_sigma_v",
            "birth_power_k",
            "max_silence_s",
            "body_walk_speed",
        )
        for name in positive:
            if not getattr(self, name) > 0.0:
                raise ValueError(
                    f"TrackerConfig.{name} must be positive, got {getattr(self, name)}"
                )
        if not self.body_loss_db >= 0.0:
            raise ValueError(f"TrackerConfig.body_loss_db must be >= 0, got {self.body_loss_db}")
        if not (self.offset_sigma_db >= 0.0 and self.offset_drift_db >= 0.0):
            raise ValueError(
                "TrackerConfig.offset_sigma_db and offset_drift_db must be >= 0, "
                f"got {self.offset_sigma_db} and {self.offset_drift_db}"
            )
        if self.iterations < 1:
            raise ValueError(f"TrackerConfig.iterations must be at least 1, got {self.iterations}")
        if not 0.0 <= self.reading_correlation <= 1.0:
            raise ValueError(
                f"TrackerConfig.reading_correlation must be in [0, 1], got {self.reading_correlation}"
            )


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
    emitter_z: float = TrackerConfig.emitter_z,
    gate: float = TrackerConfig.gate,
    weak_k: float = TrackerConfig.weak_k,
    iterations: int = TrackerConfig.iterations,
    reading_correlation: float = TrackerConfig.reading_correlation,
    body: tuple[float, float] = (TrackerConfig.body_loss_db, TrackerConfig.body_walk_speed),
) -> Update:
    """Fold N readings into k predicted tracks at once, eqs. (6)-(7).

    Args:
        x, P: (k, d), (k, d, d) predicted states and covariances; d = 5 carries
            the phone's offset of eq. (16), which adds to every reading's h_i.
        track_index: (N,) row of x each reading belongs to.
        receiver_index: (N,) row of `receivers` that heard it.
        rssi: (N,) readings, dBm.
        gate, weak_k, iterations, reading_correlation: as in `TrackerConfig`,
            whose values are the defaults; weak_k = inf is the plain EKF.
        body: (B, v_w) of eq. (20); B = 0 leaves the body out.

    Tracks without an accepted reading come back unchanged.
    """
    k, m = x.shape[0], len(receivers)
    sel = [0, 1, 4] if x.shape[1] > 4 else [0, 1]  # E: the states a reading touches, eq. (16)
    e = len(sel)
    sigma2 = receivers.sigma_db[receiver_index] ** 2
    C = P[:, sel][:, :, sel]  # E P⁻ Eᵀ
    h, H = _measured(x, track_index, receivers, receiver_index, emitter_z, body)
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
            h, H = _measured(x_i, track_index, receivers, receiver_index, emitter_z, body)
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
    body: tuple[float, float] = (0.0, 0.5),
) -> tuple[FloatArray, FloatArray]:
    """h_i and H_i E at the tracks' states x (k, d): with the offset of eq. (16) when d = 5, the body of (20)."""
    h, H = measure(x[track_index, :2], receivers, receiver_index, emitter_z)
    if body[0] > 0.0:
        h = h - body_loss(x[track_index], receivers.xyz[receiver_index, :2], *body)
    if x.shape[1] > 4:
        return h + x[track_index, 4], np.hstack([H, np.ones((H.shape[0], 1))])
    return h, H


def body_loss(x: FloatArray, receiver_xy: FloatArray, loss_db: float, walk_speed: float) -> FloatArray:
    """Eq. (20): the loss (N,) dB a carrier walking with state x (N, >= 4) puts towards receivers at (N, 2)."""
    v = x[:, 2:4]
    speed = np.hypot(v[:, 0], v[:, 1])
    to_rx = receiver_xy - x[:, :2]
    dist = np.hypot(to_rx[:, 0], to_rx[:, 1])
    cos = np.einsum("ij,ij->i", v, to_rx) / np.maximum(speed * dist, 1e-12)
    return np.asarray(loss_db * np.minimum(1.0, speed / walk_speed) * np.maximum(0.0, -cos), dtype=np.float64)


def mode_transitions(dt: FloatArray, dwell_s: FloatArray) -> FloatArray:
    """Pi(dt) of eq. (12) for k tracks: dt (k,), dwell_s (M,) -> (k, M, M), rows summing to 1."""
    m = dwell_s.shape[0]
    if m == 1:
        return np.ones((dt.shape[0], 1, 1))
    stay = np.exp(-dt[:, None] / dwell_s[None, :])  # (k, M)
    leave = (1.0 - stay) / (m - 1)
    eye = np.eye(m, dtype=bool)
    return np.asarray(np.where(eye, stay[:, :, None], leave[:, :, None]), dtype=np.float64)


def spread(x: FloatArray, P: FloatArray, weights: FloatArray, centre: FloatArray) -> FloatArray:
    """sum_a w_a (P_a + (x_a - c)(x_a - c)ᵀ): x (k, M, 4), P (k, M, 4, 4), weights (k, M), centre (k, 4)."""
    d = x - centre[:, None, :]
    out: FloatArray = np.einsum("ka,kaij->kij", weights, P + d[:, :, :, None] * d[:, :, None, :])
    return out


def mix(
    x: FloatArray, P: FloatArray, mu: FloatArray, transitions: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Eq. (12): each model's mixed start x0 (k, M, 4), P0 (k, M, 4, 4) and c (k, M).

    x (k, M, 4), P (k, M, 4, 4) per model, mu (k, M), transitions (k, M, M).
    """
    c = np.einsum("ka,kab->kb", mu, transitions)
    given = (
        mu[:, :, None] * transitions / np.maximum(c[:, None, :], np.finfo(float).tiny)
    )  # mu_(a|b)
    x0 = np.einsum("kab,kai->kbi", given, x)
    P0 = np.stack([spread(x, P, given[:, :, b], x0[:, b]) for b in range(x.shape[1])], axis=1)
    return x0, P0, c


def mixture(x: FloatArray, P: FloatArray, mu: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The tracks' x (k, 4), P (k, 4, 4) from their models weighted by mu (k, M), eq. (13)."""
    x_c: FloatArray = np.einsum("ka,kai->ki", mu, x)
    return x_c, spread(x, P, mu, x_c)


def combine(
    x: FloatArray, P: FloatArray, loglik: FloatArray, c: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Eq. (13): mode probabilities mu (k, M) and the tracks' x (k, 4), P (k, 4, 4)."""
    log_w = loglik + np.log(np.maximum(c, np.finfo(float).tiny))
    w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    mu = w / w.sum(axis=1, keepdims=True)
    return mu, *mixture(x, P, mu)


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


class IdRows:
    """Opaque emitter ids <-> dense row numbers of a bank of stacked arrays.

    Rows stay dense (0..len-1) so batched math can index them directly; when
    rows are dropped the survivors keep their order and are renumbered.
    """

    def __init__(self) -> None:
        self._row: dict[str, int] = {}
        self._ids: list[str] = []

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, emitter_id: object) -> bool:
        return emitter_id in self._row

    @property
    def ids(self) -> list[str]:
        """Emitter id of each row, in row order (a copy)."""
        return list(self._ids)

    def factorise(
        self, emitter_ids: Sequence[str] | NDArray[np.str_]
    ) -> tuple[list[str], IndexArray, IndexArray]:
        """Group a window's emitter ids: (unique ids, their rows or -1 if new, (N,) code per reading).

        A dict pass over the ids: hashing strings is bookkeeping, not math,
        and is faster than sorting them with np.unique.
        """
        codes: dict[str, int] = {}
        code = np.fromiter(
            (codes.setdefault(str(e), len(codes)) for e in emitter_ids), np.intp, len(emitter_ids)
        )
        unique = list(codes)
        rows = np.fromiter((self._row.get(e, -1) for e in unique), np.intp, len(unique))
        return unique, rows, code

    def add(self, ids: Sequence[str]) -> IndexArray:
        """Append new ids; returns their rows."""
        start = len(self._ids)
        self._ids.extend(ids)
        self._row.update((e, start + i) for i, e in enumerate(ids))
        return np.arange(start, len(self._ids), dtype=np.intp)

    def drop(self, dead: NDArray[np.bool_]) -> list[str]:
        """Remove the rows flagged in `dead` (len,); returns their ids."""
        gone = [e for e, d in zip(self._ids, dead.tolist(), strict=True) if d]
        self._ids = [e for e, d in zip(self._ids, dead.tolist(), strict=True) if not d]
        self._row = {e: i for i, e in enumerate(self._ids)}
        return gone


MIN_CAPACITY = 64
"""Rows a bank keeps allocated however few tracks are left."""


def grown(array: NDArray[np.float64], n: int) -> NDArray[np.float64]:
    """`array` with at least n rows, doubling its capacity when full."""
    if array.shape[0] >= n:
        return array
    bigger = np.empty((max(n, 2 * array.shape[0]), *array.shape[1:]), dtype=array.dtype)
    bigger[: array.shape[0]] = array
    return bigger


@dataclass(frozen=True, eq=False)
class TrackSnapshot:
    """Tracks as of a step: emitter ids (k), xy (k, 2) m, cov (k, 2, 2) m², last_seen (k,) s; from `step`,
    also reading_track (N,), the row among these of each of the window's readings (empty otherwise)."""

    emitter_ids: tuple[str, ...]
    xy: FloatArray
    cov: FloatArray
    last_seen: FloatArray
    reading_track: IndexArray = field(default_factory=lambda: np.empty(0, dtype=np.intp))


class Tracker:
    """A bank of tracks keyed by emitter id, stepped one window of readings at a time.

    A thin wrapper over `predict`, `update` and `clamp`: it owns the stacked
    arrays, births a track the first time an emitter is heard, and drops it
    after `config.max_silence_s` of silence. Time is always passed in.

    Args:
        receivers_xyz: (m, 3) receiver positions, metres.
        rssi_at_1m, exponent, sigma_db: (m,) calibration of each receiver.
        bbox: ((x_min, y_min), (x_max, y_max)) of the store outline, metres.
        radio_map: residual fields from a calibration walk, one per receiver, or None.
    """

    def __init__(
        self,
        receivers_xyz: ArrayLike,
        rssi_at_1m: ArrayLike,
        exponent: ArrayLike,
        sigma_db: ArrayLike,
        bbox: ArrayLike,
        config: TrackerConfig | None = None,
        radio_map: RadioMap | None = None,
    ) -> None:
        self.receivers = Receivers.of(receivers_xyz, rssi_at_1m, exponent, sigma_db, radio_map)
        box = np.asarray(bbox, dtype=np.float64)
        if box.shape != (2, 2) or not np.all(box[1] > box[0]):
            raise ValueError(
                f"bbox must be ((x_min, y_min), (x_max, y_max)) with max > min, got {box.tolist()}"
            )
        self.lo, self.hi = box[0].copy(), box[1].copy()
        self.config = config or TrackerConfig()
        self._rows = IdRows()
        m = len(self.config.sigma_a)
        self._sigma_a = np.asarray(self.config.sigma_a, dtype=np.float64)
        self._dwell = np.asarray(self.config.mode_dwell_s, dtype=np.float64)
        d = 5 if self.config.offset_sigma_db > 0.0 else 4  # eq. (16)
        self._xm = np.empty((0, m, d))  # per model; the track is their mixture, eq. (13)
        self._Pm = np.empty((0, m, d, d))
        self._mu = np.empty((0, m))
        self._t = np.empty(0)  # time of each track's state
        self._last_seen = np.empty(0)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, emitter_id: object) -> bool:
        return emitter_id in self._rows

    @property
    def nbytes(self) -> int:
        """Bytes held by the bank's arrays (capacity included)."""
        return sum(bank.nbytes for bank in self._banks())

    def _banks(self) -> tuple[FloatArray, ...]:
        return (self._xm, self._Pm, self._mu, self._t, self._last_seen)

    def step(
        self,
        t: float,
        emitter_ids: Sequence[str] | NDArray[np.str_],
        receiver_index: ArrayLike,
        rssi: ArrayLike,
    ) -> TrackSnapshot:
        """Fold one window of N readings, all stamped `t`, into the tracks heard.

        emitter_ids (N,), receiver_index (N,) rows of the receivers given at
        construction, rssi (N,) dBm. Returns the tracks updated by this step.
        """
        ri = np.asarray(receiver_index, dtype=np.intp).ravel()
        z = np.asarray(rssi, dtype=np.float64).ravel()
        if not len(emitter_ids) == ri.size == z.size:
            raise ValueError(
                f"emitter_ids, receiver_index and rssi differ in length: {len(emitter_ids)}, {ri.size}, {z.size}"
            )
        if ri.size and (ri.min() < 0 or ri.max() >= len(self.receivers)):
            raise ValueError(f"receiver_index must be in [0, {len(self.receivers)})")
        if not np.all(np.isfinite(z)):
            raise ValueError("rssi must be finite")
        cfg = self.config
        ids, rows, code = self._rows.factorise(emitter_ids)
        new = rows < 0
        if new.any():
            rows[new] = self._birth(t, [ids[i] for i in np.flatnonzero(new)], new, code, ri, z)
        k, m, d = len(ids), self._sigma_a.shape[0], self._xm.shape[2]
        dt = np.maximum(t - self._t[rows], 0.0)
        x0, P0, c = mix(
            self._xm[rows], self._Pm[rows], self._mu[rows], mode_transitions(dt, self._dwell)
        )
        xm, Pm, loglik = np.empty((k, m, d)), np.empty((k, m, d, d)), np.empty((k, m))
        # One batch per model, all tracks and readings at once. Stacking the models as
        # rows of a single batch repeats every reading M times and doubles a window's
        # temporaries (40 readings per emitter, 1,000 emitters: 22 MB traced, not 11;
        # santi run's peak RSS 126-130 MB, not 119-122).
        for b in range(m):
            x, P = predict(x0[:, b], P0[:, b], dt, self._sigma_a[b], cfg.offset_drift_db)
            res = update(
                x,
                P,
                code,
                ri,
                z,
                self.receivers,
                emitter_z=cfg.emitter_z,
                gate=cfg.gate,
                weak_k=cfg.weak_k,
                iterations=cfg.iterations,
                reading_correlation=cfg.reading_correlation,
                body=(cfg.body_loss_db, cfg.body_walk_speed),
            )
            xm[:, b], Pm[:, b] = clamp(res.x, res.P, self.lo, self.hi, cfg.v_max, cfg.offset_sigma_db)
            loglik[:, b] = res.loglik
        mu, x, P = combine(xm, Pm, loglik, c)
        self._xm[rows], self._Pm[rows], self._mu[rows] = xm, Pm, mu
        self._t[rows], self._last_seen[rows] = t, t
        return TrackSnapshot(
            tuple(ids), x[:, :2].copy(), P[:, :2, :2].copy(), np.full(len(ids), float(t)), code
        )

    def _birth(
        self,
        t: float,
        new_ids: list[str],
        new: NDArray[np.bool_],
        code: IndexArray,
        ri: IndexArray,
        z: FloatArray,
    ) -> IndexArray:
        """Start tracks for `new_ids` at the power-weighted centroid; returns their rows."""
        cfg = self.config
        local = np.cumsum(new) - 1  # code -> index among the newborn
        mine = new[code]
        xy = birth_positions(
            local[code[mine]], ri[mine], z[mine], self.receivers, len(new_ids), cfg.birth_power_k
        )
        rows = self._rows.add(new_ids)
        n = len(self._rows)
        self._xm, self._Pm, self._mu, self._t, self._last_seen = [
            grown(bank, n) for bank in self._banks()
        ]
        self._xm[rows] = 0.0
        self._xm[rows, :, :2] = xy[:, None, :]
        self._Pm[rows] = birth_covariance(
            len(new_ids), cfg.birth_sigma_m, cfg.birth_sigma_v, cfg.offset_sigma_db
        )[:, None]
        # Born in the switching chain's stationary mix: time in a mode is proportional to its dwell.
        self._mu[rows] = self._dwell / self._dwell.sum()
        self._t[rows] = self._last_seen[rows] = t
        return rows

    def expire(self, t: float) -> list[str]:
        """Drop tracks silent for more than `config.max_silence_s` at time t; returns their ids."""
        n = len(self._rows)
        dead = t - self._last_seen[:n] > self.config.max_silence_s
        if not dead.any():
            return []
        keep = ~dead
        m = int(keep.sum())
        for bank in self._banks():
            bank[:m] = bank[:n][keep]
        if self._t.shape[0] > 4 * max(m, MIN_CAPACITY):  # after a crowd (or a flood): give the memory back
            self._xm, self._Pm, self._mu, self._t, self._last_seen = [
                bank[: 2 * max(m, MIN_CAPACITY)].copy() for bank in self._banks()
            ]
        return self._rows.drop(dead)

    def snapshot(self) -> TrackSnapshot:
        """All live tracks as of their last update."""
        n = len(self._rows)
        x, P = mixture(self._xm[:n], self._Pm[:n], self._mu[:n])
        return TrackSnapshot(
            tuple(self._rows.ids), x[:, :2], P[:, :2, :2].copy(), self._last_seen[:n].copy()
        )

    def state(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Copies of the full state of all live tracks: x (k, d), P (k, d, d), state time (k,); d of eq. (16)."""
        n = len(self._rows)
        x, P = mixture(self._xm[:n], self._Pm[:n], self._mu[:n])
        return x, P, self._t[:n].copy()
