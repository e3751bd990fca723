"""Interacting multiple model (IMM) filter: a track's constant-velocity models, mixed.

Shoppers stand most of the time and sometimes walk: one process noise cannot
suit both (small, and the estimate lags a walker by metres; large, and a
standing shopper's estimate wanders). Each track therefore runs M
constant-velocity models that differ only in sigma_a, mixed by the
interacting multiple model (IMM) filter. With mode probabilities mu, a
switching chain Pi(dt) (stay in mode a with probability exp(-dt / tau_a),
else move to another mode uniformly) and c = mu Pi:

    mu_(a|b) = Pi_ab mu_a / c_b,   x0_b = sum_a mu_(a|b) x_a,
    P0_b = sum_a mu_(a|b) (P_a + (x_a - x0_b)(x_a - x0_b)ᵀ)                    (12)

each model is predicted and updated from its mixed start by (6)-(7) of
`positioning.ekf` (one batch per model, of all tracks and readings), then
weighted by how well it predicted the window's readings,
L_b = prod_i N(nu_i; 0, S_i):

    mu_b ∝ L_b c_b,   x = sum_b mu_b x_b,   P = sum_b mu_b (P_b + (x_b - x)(x_b - x)ᵀ)   (13)

A reading outside the gate contributes the likelihood of one at the gate,
so a deep fade cannot swing the modes. With M = 1, (12)-(13) are the identity
and the tracker is the plain EKF of `positioning.ekf`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


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
