"""The Cramér-Rao bound: against a numerical Fisher matrix, monotone in receivers."""

import numpy as np
import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from positioning.bounds import crlb_rmse, fisher_information
from positioning.pathloss import rssi_at_distance, slant_distance

RX = np.array([[0.0, 0.0, 2.8], [12.0, 0.0, 2.5], [12.0, 9.0, 3.0], [0.0, 9.0, 2.8]])
N = np.array([2.0, 2.2, 2.5, 1.8])
SIGMA = np.array([3.0, 4.0, 3.5, 5.0])


def numerical_fim(q: np.ndarray, emitter_z: float = 1.2, step: float = 1e-6) -> np.ndarray:
    """sum_r grad h_r grad h_rᵀ / sigma_r², gradients by central differences."""

    def h(p: np.ndarray) -> np.ndarray:
        return rssi_at_distance(slant_distance(p, RX, emitter_z), -59.0, N)

    grad = np.stack([(h(q + step * e) - h(q - step * e)) / (2 * step) for e in np.eye(2)], axis=-1)
    fim: np.ndarray = (grad / SIGMA[:, None] ** 2).T @ grad
    return fim


@pytest.mark.parametrize("q", [(3.0, 4.0), (11.5, 0.5), (6.0, 4.5), (-5.0, 20.0)])
def test_fisher_matrix_matches_finite_differences(q: tuple[float, float]) -> None:
    fim = fisher_information(np.array([q]), RX, N, SIGMA)
    np.testing.assert_allclose(fim[0], numerical_fim(np.array(q)), rtol=1e-6, atol=1e-12)


def test_bound_is_vectorised_over_a_grid() -> None:
    xs, ys = np.meshgrid(np.linspace(0, 12, 7), np.linspace(0, 9, 5))
    grid = np.column_stack([xs.ravel(), ys.ravel()])
    bound = crlb_rmse(grid, RX, N, SIGMA)
    assert bound.shape == (35,)
    one_by_one = [crlb_rmse(p[None], RX, N, SIGMA)[0] for p in grid]
    np.testing.assert_allclose(bound, one_by_one)
    assert np.all(np.isfinite(bound))
    assert np.all(bound > 0)


def test_bound_scales_with_noise() -> None:
    q = np.array([[4.0, 5.0]])
    assert crlb_rmse(q, RX, N, 2 * SIGMA)[0] == pytest.approx(2 * crlb_rmse(q, RX, N, SIGMA)[0])


def test_singular_geometry_gives_infinity() -> None:
    q = np.array([[3.0, 4.0], [6.0, 0.0], [6.0, 1.0]])
    assert np.all(np.isinf(crlb_rmse(q, RX[:1], N[:1], SIGMA[:1])))  # one receiver: range only
    bound = crlb_rmse(q, RX[:2], N[:2], SIGMA[:2])  # two receivers on the line y = 0
    assert np.isinf(bound[1])  # on their line, both bearings are the same
    assert np.isfinite(bound[2])


@seed(8675309)
@settings(max_examples=60, deadline=None)
@given(
    extra=arrays(np.float64, (3, 3), elements=st.floats(-20.0, 20.0)),
    q=arrays(np.float64, (4, 2), elements=st.floats(-5.0, 15.0)),
    n_extra=st.floats(1.5, 4.0),
    sigma_extra=st.floats(1.0, 10.0),
)
def test_adding_receivers_never_raises_the_bound(
    extra: np.ndarray, q: np.ndarray, n_extra: float, sigma_extra: float
) -> None:
    before = crlb_rmse(q, RX, N, SIGMA)
    rx = np.vstack([RX, extra])
    after = crlb_rmse(q, rx, np.r_[N, [n_extra] * 3], np.r_[SIGMA, [sigma_extra] * 3])
    assert np.all(after <= before * (1 + 1e-9))
