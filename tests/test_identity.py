"""Tap-to-visit link confidence: lone tapper high, crowded till lower, far shopper never."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.identity import LinkParams, best_link, tap_probabilities

READER = np.array([24.0, 2.0])
AREA = 600.0
PARAMS = LinkParams()


def _cov(sigma: float, k: int) -> np.ndarray:
    return np.repeat((sigma**2 * np.eye(2))[None], k, axis=0)


def test_lone_shopper_at_the_till_links_with_high_confidence() -> None:
    p = tap_probabilities(READER, np.array([[24.3, 2.4]]), _cov(1.0, 1), np.zeros(1), AREA, PARAMS)
    index, confidence = best_link(p, PARAMS)
    assert index == 0
    assert confidence > 0.9


def test_two_shoppers_at_the_till_are_honestly_ambiguous() -> None:
    means = np.array([[24.3, 2.4], [23.6, 1.8]])
    lone = tap_probabilities(READER, means[:1], _cov(1.0, 1), np.zeros(1), AREA, PARAMS)
    both = tap_probabilities(READER, means, _cov(1.0, 2), np.zeros(2), AREA, PARAMS)
    assert both.max() < lone.max()
    assert both.sum() <= 1.0
    index, confidence = best_link(both, PARAMS)
    assert index is None or confidence < lone.max()


def test_far_shopper_is_never_linked() -> None:
    p = tap_probabilities(READER, np.array([[5.0, 15.0]]), _cov(1.5, 1), np.zeros(1), AREA, PARAMS)
    assert best_link(p, PARAMS)[0] is None
    assert p[0] < 1e-6


def test_stale_estimate_loses_confidence() -> None:
    mean = np.array([[25.5, 3.0]])
    fresh = tap_probabilities(READER, mean, _cov(1.0, 1), np.array([0.0]), AREA, PARAMS)
    stale = tap_probabilities(READER, mean, _cov(1.0, 1), np.array([20.0]), AREA, PARAMS)
    assert stale[0] < fresh[0]


@settings(max_examples=200, derandomize=True)
@given(st.lists(st.tuples(st.floats(0, 30), st.floats(0, 20), st.floats(0.1, 5), st.floats(0, 60)),
                min_size=1, max_size=8))
def test_probabilities_are_a_subdistribution(rows: list[tuple[float, float, float, float]]) -> None:
    data = np.array(rows)
    covs = (data[:, 2] ** 2)[:, None, None] * np.eye(2)[None]
    p = tap_probabilities(READER, data[:, :2], covs, data[:, 3], AREA, PARAMS)
    assert np.all(p >= 0)
    assert p.sum() <= 1.0 + 1e-12
    assert best_link(np.zeros(0), PARAMS) == (None, 0.0)
