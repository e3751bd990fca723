"""Snapshot fixes: exactness, degenerate layouts, equivariance, efficiency vs the CRLB."""

import numpy as np
import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from positioning.bounds import crlb_rmse
from positioning.multilaterate import fix, is_collinear
from positioning.pathloss import rssi_at_distance, slant_distance

# A 20 m x 20 m shop: receivers at the corners and mid-walls, 2.8 m up.
RX = np.array(
    [[0, 0], [20, 0], [20, 20], [0, 20], [10, 0], [20, 10], [10, 20], [0, 10]], dtype=float
)
RX = np.column_stack([RX, np.full(len(RX), 2.8)])
A = np.full(len(RX), -59.0)
N = np.full(len(RX), 2.2)
EMITTER_Z = 1.2


def readings(q: np.ndarray, rx: np.ndarray = RX) -> np.ndarray:
    return rssi_at_distance(slant_distance(q, rx, EMITTER_Z), A[: len(rx)], N[: len(rx)])


@pytest.mark.parametrize("q", [(8.0, 11.0), (1.0, 1.5), (19.0, 10.0), (10.0, 10.0)])
def test_noise_free_readings_give_the_position_to_centimetres(q: tuple[float, float]) -> None:
    f = fix(RX, readings(np.array(q)), A, N, 3.0, EMITTER_Z)
    assert f.ok
    assert f.reason == ""
    assert f.n_used == len(RX)
    assert np.linalg.norm(f.xy - q) < 0.01
    assert np.all(np.linalg.eigvalsh(f.cov) > 0)


def test_unheard_receivers_are_skipped_and_too_few_is_reported() -> None:
    z = readings(np.array([5.0, 5.0]))
    z[3:] = np.nan
    f = fix(RX, z, A, N, 3.0)
    assert f.n_used == 3
    assert f.ok
    z[2] = np.nan
    f = fix(RX, z, A, N, 3.0)
    assert (f.ok, f.reason, f.n_used) == (False, "too few receivers", 2)
    assert np.all(np.isnan(f.xy))
    assert np.all(np.isnan(f.cov))


def test_collinear_receivers_are_refused() -> None:
    line = np.array([[0.0, 0.0, 2.8], [5.0, 5.0, 2.8], [10.0, 10.0, 2.8], [15.0, 15.001, 2.8]])
    z = readings(np.array([3.0, 9.0]), line)
    f = fix(line, z, A[:4], N[:4], 3.0)
    assert (f.ok, f.reason) == (False, "collinear receivers")
    assert is_collinear(line[:, :2])
    assert not is_collinear(RX[:3, :2])
    assert is_collinear(np.zeros((3, 2)))  # all at one spot


def test_one_gross_outlier_does_not_drag_the_fix() -> None:
    q = np.array([6.0, 13.0])
    z = readings(q)
    z[2] += 25.0  # a reflection makes a far receiver look next door
    assert np.linalg.norm(fix(RX, z, A, N, 2.0).xy - q) < 1.0


def rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


@seed(314159)
@settings(max_examples=40, deadline=None)
@given(
    q=st.tuples(st.floats(2.0, 18.0), st.floats(2.0, 18.0)),
    shift=st.tuples(st.floats(-500.0, 500.0), st.floats(-500.0, 500.0)),
    theta=st.floats(-np.pi, np.pi),
    noise_seed=st.integers(0, 2**32 - 1),
)
def test_fix_moves_with_the_receivers(
    q: tuple[float, float], shift: tuple[float, float], theta: float, noise_seed: int
) -> None:
    """Rotating and translating receivers and emitter together moves the fix the same way."""
    rng = np.random.default_rng(noise_seed)
    z = readings(np.array(q)) + rng.normal(0.0, 3.0, len(RX))
    base = fix(RX, z, A, N, 3.0)
    rot = rotation(theta)
    moved_rx = RX.copy()
    moved_rx[:, :2] = RX[:, :2] @ rot.T + shift
    moved = fix(moved_rx, z, A, N, 3.0)
    assert base.ok
    assert moved.ok
    np.testing.assert_allclose(moved.xy, rot @ base.xy + shift, atol=1e-4)
    np.testing.assert_allclose(moved.cov, rot @ base.cov @ rot.T, atol=1e-4)


def test_snapshot_rmse_is_near_the_cramer_rao_bound() -> None:
    """Good geometry, Gaussian dB noise: the robust ML fix is nearly efficient."""
    rng = np.random.default_rng(2024)
    q = np.array([8.0, 11.0])
    sigma = 2.0
    z = readings(q)
    errors = np.array(
        [fix(RX, z + rng.normal(0.0, sigma, len(RX)), A, N, sigma).xy - q for _ in range(400)]
    )
    rmse = np.sqrt(np.mean(np.sum(errors**2, axis=1)))
    bound = crlb_rmse(q, RX, N, sigma)[0]
    assert 0.9 * bound < rmse < 1.2 * bound
