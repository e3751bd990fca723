"""The log-distance model, its inverse, and robust calibration."""

import numpy as np
import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from positioning.pathloss import (
    MIN_DISTANCE_M,
    Receivers,
    distance_from_rssi,
    fit_body_loss,
    fit_calibration,
    rssi_at_distance,
    slant_distance,
)

A_TRUE, N_TRUE, SIGMA_TRUE = -59.0, 2.2, 3.0


def survey(
    rng: np.random.Generator, size: int, outlier_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic survey: Gaussian shadowing plus body-blocked readings 15-30 dB low."""
    d = rng.uniform(0.5, 15.0, size)
    z = rssi_at_distance(d, A_TRUE, N_TRUE) + rng.normal(0.0, SIGMA_TRUE, size)
    blocked = rng.random(size) < outlier_fraction
    z[blocked] -= rng.uniform(15.0, 30.0, blocked.sum())
    return d, z


def test_model_values_and_near_field_clamp() -> None:
    assert rssi_at_distance(1.0, A_TRUE, N_TRUE) == pytest.approx(A_TRUE)
    assert rssi_at_distance(10.0, A_TRUE, N_TRUE) == pytest.approx(A_TRUE - 10 * N_TRUE)
    at_clamp = rssi_at_distance(MIN_DISTANCE_M, A_TRUE, N_TRUE)
    assert rssi_at_distance([0.0, 0.01], A_TRUE, N_TRUE) == pytest.approx([at_clamp, at_clamp])


@seed(20240601)
@settings(max_examples=100, deadline=None)
@given(
    d=st.floats(MIN_DISTANCE_M, 200.0),
    a=st.floats(-90.0, -30.0),
    n=st.floats(1.2, 4.0),
)
def test_distance_inverts_model(d: float, a: float, n: float) -> None:
    assert distance_from_rssi(rssi_at_distance(d, a, n), a, n) == pytest.approx(d, rel=1e-9)


def test_slant_distance_includes_height() -> None:
    receivers = np.array([[0.0, 0.0, 2.8], [3.0, 4.0, 1.2]])
    d = slant_distance(np.array([[0.0, 0.0], [3.0, 0.0]]), receivers, 1.2)
    assert d == pytest.approx(np.array([[1.6, 5.0], [np.hypot(3.0, 1.6), 4.0]]))


def test_calibration_recovers_parameters_despite_outliers() -> None:
    rng = np.random.default_rng(7)
    d, z = survey(rng, 300, outlier_fraction=0.15)
    cal = fit_calibration(d, z)
    assert cal.n_samples == 300
    assert cal.rssi_at_1m == pytest.approx(A_TRUE, abs=1.0)
    assert cal.path_loss_exponent == pytest.approx(N_TRUE, abs=0.1)
    assert cal.sigma_db == pytest.approx(SIGMA_TRUE, rel=0.2)
    # Plain least squares on the same data is dragged down by the blocked readings.
    g = -10 * np.log10(d)
    ols = np.linalg.lstsq(np.column_stack([np.ones_like(g), g]), z, rcond=None)[0]
    assert abs(ols[0] - A_TRUE) > 2 * abs(cal.rssi_at_1m - A_TRUE)


def test_standard_errors_match_spread_of_estimates() -> None:
    rng = np.random.default_rng(11)
    fits = [fit_calibration(*survey(rng, 80, outlier_fraction=0.0)) for _ in range(150)]
    a_hat = np.array([f.rssi_at_1m for f in fits])
    n_hat = np.array([f.path_loss_exponent for f in fits])
    assert np.std(a_hat) == pytest.approx(np.mean([f.rssi_at_1m_se for f in fits]), rel=0.25)
    assert np.std(n_hat) == pytest.approx(
        np.mean([f.path_loss_exponent_se for f in fits]), rel=0.25
    )


@pytest.mark.parametrize(
    ("distance", "rssi", "message"),
    [
        ([1.0, 2.0], [-59.0, -65.0], "at least 3 samples"),
        ([2.0, 2.0, 2.0, 2.0], [-60.0, -66.0, -64.0, -65.0], "one distance"),
        ([1.0, 2.0, 3.0], [-59.0, -65.0], "differ|has 3 samples"),
        ([1.0, -2.0, 3.0], [-59.0, -65.0, -70.0], "positive"),
        ([1.0, 2.0, 3.0], [-59.0, np.nan, -70.0], "finite"),
    ],
)
def test_calibration_rejects_unusable_surveys(
    distance: list[float], rssi: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fit_calibration(distance, rssi)


def test_receivers_broadcast_scalars_and_validate() -> None:
    rx = Receivers.of([[0, 0, 2.5], [5, 0, 2.5]], -59.0, [2.0, 2.5], 4.0)
    assert len(rx) == 2
    assert rx.rssi_at_1m.tolist() == [-59.0, -59.0]
    assert rx.sigma_db.tolist() == [4.0, 4.0]
    assert not rx.xyz.flags.writeable
    with pytest.raises(ValueError, match=r"\(m, 3\)"):
        Receivers.of([[0, 0]], -59.0, 2.0, 4.0)
    with pytest.raises(ValueError, match="positive"):
        Receivers.of([[0, 0, 2.5]], -59.0, 2.0, 0.0)


def _walk_rows(rng: np.random.Generator, body_db: float) -> tuple[np.ndarray, ...]:
    """Three receivers reading a walk back and forth along rows 2 m apart (48): group, distance, rssi, behind, and
    the shadowing each reading carries, a field that stays put and so is the same on both passes of a place."""
    receivers = np.array([[0.0, 0.0], [20.0, 3.0], [10.0, 12.0]])
    a, n = np.array([-59.0, -63.0, -55.0]), np.array([2.0, 2.6, 1.8])
    rows = []
    for y in np.arange(0.5, 12.0, 2.0):
        for direction in (1.0, -1.0):  # every row walked both ways, as a technician's back-and-forth does
            x = np.linspace(0.5, 19.5, 120)[:: int(direction)]
            rows.append((np.column_stack([x, np.full_like(x, y)]), np.array([direction * 1.0, 0.0])))
    group, d, behind, field = [], [], [], []
    for xy, v in rows:
        for r, rx in enumerate(receivers):
            to_rx = rx - xy
            dist = np.hypot(to_rx[:, 0], to_rx[:, 1])
            group.append(np.full(len(xy), r))
            d.append(np.hypot(dist, 1.2))
            behind.append(np.maximum(0.0, -(to_rx @ v) / np.maximum(dist, 1e-9)))
            field.append(3.0 * np.sin(xy[:, 0] / 2.0 + r) * np.cos(xy[:, 1] / 3.0))
    g_, d_, b_, f_ = (np.concatenate(c) for c in (group, d, behind, field))
    z = rssi_at_distance(d_, a[g_], n[g_]) - body_db * b_ + f_ + rng.normal(0.0, 2.5, g_.size)
    return g_, d_, z, b_


@pytest.mark.parametrize("body_db", [0.0, 3.0, 8.0])
def test_the_walkers_body_is_told_from_the_place_and_the_receivers(body_db: float) -> None:
    # 4,320 readings, 2.5 dB fading: B's standard error is about 0.1 dB; the field, the same both ways, adds nothing.
    estimates = [fit_body_loss(*_walk_rows(np.random.default_rng(seed_), body_db)) for seed_ in range(5)]
    assert np.mean(estimates) == pytest.approx(body_db, abs=0.3)
    assert np.std(estimates) < 0.3


@settings(max_examples=40, deadline=None)
@seed(48)
@given(shift=st.lists(st.floats(-30.0, 30.0), min_size=3, max_size=3), extra=st.floats(-10.0, 10.0))
def test_body_loss_ignores_each_receivers_level_and_is_linear_in_the_loss(shift: list[float], extra: float) -> None:
    group, d, z, behind = _walk_rows(np.random.default_rng(3), 5.0)
    base = fit_body_loss(group, d, z, behind)
    # A receiver's A moving is (1)'s business, not the body's; more loss behind the walker is more B, exactly.
    assert fit_body_loss(group, d, z + np.asarray(shift)[group], behind) == pytest.approx(base, abs=1e-9)
    assert fit_body_loss(group, d, z - extra * behind, behind) == pytest.approx(base + extra, abs=1e-9)


def test_body_loss_without_a_receiver_behind_is_zero_and_bad_input_is_refused() -> None:
    group, d, z, behind = _walk_rows(np.random.default_rng(1), 5.0)
    assert fit_body_loss(group, d, z, np.zeros_like(behind)) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        fit_body_loss(group, d, z[:-1], behind)
    z[3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fit_body_loss(group, d, z, behind)
