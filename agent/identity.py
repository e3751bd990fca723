"""Which visit does a card tap belong to? Honest probabilities, not a guess.

A tap at reader R at time t comes from someone standing at R. Each open
visit's track says where its shopper probably was: a Gaussian N(μ, Σ) whose
covariance grows with the time since the track was last updated. Against
the store area A (where a tracked shopper would be with no information),
the evidence that shopper i is the tapper is

    w_i = N(R; μ_i, Σ_i + (reach² + (v_walk · age_i)²) I) · A

and the tapper may also be someone we do not track (no phone heard), with
weight ``w_none``. The link confidence is ``w_i / (w_none + Σ_j w_j)``: a lone
shopper at the till gets nearly 1, two shoppers side by side about a half
each, a shopper across the store nearly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class LinkParams:
    reach_m: float = 0.8
    """Arm's length plus where a shopper stands at a till."""
    walk_speed_m_s: float = 1.0
    """How fast a stale estimate loses meaning."""
    untracked_weight: float = 1.0
    """Evidence for 'someone we do not track', in units of the store-area prior."""
    min_confidence: float = 0.6
    """Below this, a tap stays an unlinked card.tapped."""


def tap_probabilities(
    reader_xy: FloatArray,
    means: FloatArray,
    covs: FloatArray,
    ages_s: FloatArray,
    store_area_m2: float,
    params: LinkParams,
) -> FloatArray:
    """Probability that each candidate made the tap; the rest is 'untracked'.

    ``reader_xy`` (2,), ``means`` (k, 2), ``covs`` (k, 2, 2), ``ages_s`` (k,).
    Returns (k,) probabilities summing to at most 1.
    """
    k = means.shape[0]
    if k == 0:
        return np.zeros(0)
    inflate = params.reach_m**2 + (params.walk_speed_m_s * np.maximum(ages_s, 0.0)) ** 2
    s = covs + inflate[:, None, None] * np.eye(2)  # S_i = Σ_i + (reach² + (v·age)²) I
    d = reader_xy[None, :] - means  # (k, 2)
    det = s[:, 0, 0] * s[:, 1, 1] - s[:, 0, 1] * s[:, 1, 0]
    inv = np.empty_like(s)
    inv[:, 0, 0] = s[:, 1, 1] / det
    inv[:, 1, 1] = s[:, 0, 0] / det
    inv[:, 0, 1] = -s[:, 0, 1] / det
    inv[:, 1, 0] = -s[:, 1, 0] / det
    mahal = np.einsum("ki,kij,kj->k", d, inv, d)  # dᵀ S⁻¹ d
    density = np.exp(-0.5 * mahal) / (2.0 * np.pi * np.sqrt(det))
    weights = density * store_area_m2
    return np.asarray(weights / (params.untracked_weight + weights.sum()), dtype=np.float64)


def best_link(probabilities: FloatArray, params: LinkParams) -> tuple[int | None, float]:
    """The candidate to link and its confidence, or (None, best) below the threshold."""
    if probabilities.size == 0:
        return None, 0.0
    best = int(np.argmax(probabilities))
    confidence = float(probabilities[best])
    return (best if confidence >= params.min_confidence else None), confidence
