"""The radio map: eq. (15) fitted from walk residuals, kriged by (49)-(50), its file, and the tracker that adds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, load_site
from agent.radiomap_file import RadioMapFileError, StoredRadioMap, read_radio_map, write_radio_map
from agent.site_arrays import site_arrays
from positioning import radiomap
from positioning.multilaterate import fix
from positioning.pathloss import rssi_at_distance, slant_distance
from positioning.radiomap import (
    FieldCovariance,
    RadioMap,
    fit_field_covariance,
    fit_radio_map,
    krige_radio_map,
)
from positioning.tracker import Tracker, TrackerConfig

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml"
BOX = np.array([[0.0, 0.0], [20.0, 20.0]])


def field(xy: np.ndarray) -> np.ndarray:
    """A smooth 'wall' field: receiver reads up to 6 dB low on the right-hand side."""
    return -6.0 / (1.0 + np.exp(-(xy[:, 0] - 12.0) / 1.5))


def test_dense_walk_recovers_a_smooth_field() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0.0, 20.0, (40_000, 2))
    e = field(p) + rng.normal(0.0, 4.0, p.shape[0])
    m = fit_radio_map(np.zeros(p.shape[0], np.intp), p, e, 1, BOX)
    q = rng.uniform(2.0, 18.0, (500, 2))
    g, _ = m.at(np.zeros(500, np.intp), q)
    assert np.sqrt(np.mean((g - field(q)) ** 2)) < 0.6  # of a 6 dB step, under 4 dB noise


def test_places_the_walk_missed_keep_the_plain_model() -> None:
    p = np.array([[2.0, 2.0], [2.5, 2.0], [2.0, 2.5]])
    m = fit_radio_map(np.zeros(3, np.intp), p, np.full(3, 8.0), 2, BOX)
    far, _ = m.at(np.array([0, 1]), np.array([[15.0, 15.0], [2.0, 2.0]]))
    assert far[0] == pytest.approx(0.0, abs=1e-9)  # 13 m from any reading
    assert far[1] == pytest.approx(0.0, abs=1e-9)  # receiver 1 was never heard
    near, _ = m.at(np.array([0]), np.array([[2.2, 2.2]]))
    assert 0.0 < near[0] < 8.0 * 3 / (3 + 5)  # three readings against five pseudo-readings of zero


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cell=st.sampled_from([0.25, 0.5, 1.0]))
def test_the_gradient_is_the_derivative_and_the_field_stays_within_the_residuals(seed: int, cell: float) -> None:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.0, 20.0, (200, 2))
    e = rng.normal(0.0, 5.0, 200)
    m = fit_radio_map(np.zeros(200, np.intp), p, e, 1, BOX, cell_m=cell, bandwidth_m=1.5)
    assert np.max(np.abs(m.values)) <= np.max(np.abs(e)) + 1e-9
    q = rng.uniform(0.5, 19.5, (20, 2))
    q = q + 1e-3 * (np.abs((q / cell) % 1.0 - 0.5) < 1e-3)  # not on a cell edge, where the slope jumps
    ri = np.zeros(20, np.intp)
    _, grad = m.at(ri, q)
    h = 1e-6
    for axis in (0, 1):
        step = np.zeros(2)
        step[axis] = h
        numeric = (m.at(ri, q + step)[0] - m.at(ri, q - step)[0]) / (2 * h)
        np.testing.assert_allclose(grad[:, axis], numeric, atol=1e-5)


def test_beyond_the_grid_the_edge_value_holds_without_slope() -> None:
    m = RadioMap(np.zeros(2), 1.0, np.arange(9.0).reshape(1, 3, 3))
    g, grad = m.at(np.zeros(2, np.intp), np.array([[-5.0, 1.0], [1.0, 40.0]]))
    np.testing.assert_allclose(g, [1.0, 5.0])
    np.testing.assert_allclose(grad, [[0.0, 1.0], [3.0, 0.0]])


def _walk_points(rng: np.random.Generator) -> np.ndarray:
    """A technician's walk over a 24 x 16 m floor: aisles 2 m apart and three cross-aisles, a reading every ~8 cm."""
    rows = [np.column_stack([np.linspace(0, 24, 300), np.full(300, y)]) for y in np.arange(0.5, 16, 2.0)]
    cols = [np.column_stack([np.full(200, x), np.linspace(0, 16, 200)]) for x in (0.5, 12.0, 23.5)]
    return np.concatenate(rows + cols) + rng.normal(0.0, 0.1, (3000, 2))


def test_the_variogram_recovers_the_covariance_of_a_gaussian_random_field() -> None:
    rng = np.random.default_rng(7)
    p = _walk_points(rng)
    nugget, signal, length = 7.5, 17.5, 3.0  # the simulator's store channel
    apart = ((p[:, None] - p[None]) ** 2).sum(-1)
    draw = np.linalg.cholesky(signal * np.exp(-apart / length**2) + 1e-6 * signal * np.eye(p.shape[0]))
    receivers = 6  # six independent fields, pooled as a walk's receivers are
    e = np.concatenate([draw @ rng.standard_normal(p.shape[0]) + rng.normal(0.0, np.sqrt(nugget), p.shape[0])
                        for _ in range(receivers)])
    cov = fit_field_covariance(np.repeat(np.arange(receivers), p.shape[0]), np.tile(p, (receivers, 1)), e, receivers)
    # Over seeds 0-19 the estimates scatter with sd 0.23 / 2.0 / 0.16 about 7.5 / 17.3 / 3.06: about 3 sd allowed.
    assert cov.nugget_db2 == pytest.approx(nugget, abs=1.0)
    assert cov.signal_db2 == pytest.approx(signal, abs=6.0)
    assert cov.length_m == pytest.approx(length, abs=0.5)


SMOOTH = FieldCovariance(4.0, 9.0, 3.0)


def test_kriging_follows_a_smooth_field_near_the_walk_and_falls_to_the_model_far_from_it() -> None:
    rng = np.random.default_rng(2)
    box = np.array([[0.0, 0.0], [40.0, 20.0]])
    p = rng.uniform([0.0, 0.0], [16.0, 20.0], (6000, 2))  # the walk stays in the left part of the store

    def known(xy: np.ndarray) -> np.ndarray:
        return 3.0 * np.sin(xy[:, 0] / 2.5) * np.cos(xy[:, 1] / 3.0)

    e = known(p) + rng.normal(0.0, 2.0, p.shape[0])
    m = krige_radio_map(np.zeros(p.shape[0], np.intp), p, e, 2, box, covariance=SMOOTH)
    near = rng.uniform([2.0, 2.0], [14.0, 18.0], (500, 2))
    g, _ = m.at(np.zeros(500, np.intp), near)
    assert np.sqrt(np.mean((g - known(near)) ** 2)) < 0.4  # a 3 dB field under 2 dB noise, 15 readings per m²
    far, _ = m.at(np.zeros(3, np.intp), np.array([[30.0, 5.0], [36.0, 10.0], [39.0, 19.0]]))
    np.testing.assert_allclose(far, 0.0, atol=1e-3)  # 14 m and more from any reading: 4.7 lengths
    assert np.all(m.values[1] == 0.0)  # receiver 1 was never heard


def test_kriging_a_dense_noiseless_sample_reproduces_it() -> None:
    x, y = np.meshgrid(np.arange(0.0, 10.01, 0.5), np.arange(0.0, 8.01, 0.5), indexing="ij")
    p = np.column_stack([x.ravel(), y.ravel()])  # on cell centres of the 0.25 m grid, one reading per 0.5 m bin
    e = 3.0 * np.sin(p[:, 0] / 2.0) + 2.0 * np.cos(p[:, 1] / 1.5)
    m = krige_radio_map(np.zeros(p.shape[0], np.intp), p, e, 1, [[0.0, 0.0], [10.0, 8.0]],
                        covariance=FieldCovariance(0.0, 9.0, 2.0))
    g, _ = m.at(np.zeros(p.shape[0], np.intp), p)
    np.testing.assert_allclose(g, e, atol=0.02)


def test_a_walk_too_large_for_one_solve_is_kriged_on_coarser_bins(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    p = rng.uniform(0.0, 20.0, (20_000, 2))
    e = field(p) + rng.normal(0.0, 2.0, p.shape[0])
    monkeypatch.setattr(radiomap, "KRIGE_MAX_BINS", 120)  # 0.5 m bins: 1600; 1 m: 400; 2 m: 100
    m = krige_radio_map(np.zeros(p.shape[0], np.intp), p, e, 1, BOX, covariance=SMOOTH)
    q = rng.uniform(3.0, 17.0, (500, 2))
    g, _ = m.at(np.zeros(500, np.intp), q)
    assert np.sqrt(np.mean((g - field(q)) ** 2)) < 0.6  # the 6 dB wall, from bins of 2 m against a 3 m length


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), nugget=st.floats(0.0, 20.0), signal=st.floats(0.5, 30.0),
       length=st.floats(0.5, 4.0), scale=st.floats(-5.0, 5.0))
def test_the_kriged_field_is_linear_in_the_residuals_and_zero_far_from_them(
    seed: int, nugget: float, signal: float, length: float, scale: float
) -> None:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.0, 5.0, (60, 2))
    e = rng.normal(0.0, 5.0, 60)
    ri = np.zeros(60, np.intp)
    cov = FieldCovariance(nugget, signal, length)
    m = krige_radio_map(ri, p, e, 1, BOX, covariance=cov)
    scaled = krige_radio_map(ri, p, scale * e, 1, BOX, covariance=cov)
    np.testing.assert_allclose(scaled.values, scale * m.values, atol=1e-6 * (1.0 + np.abs(m.values).max()))
    far, _ = m.at(np.zeros(1, np.intp), np.array([[5.0 + 7.0 * length, 19.5]]))
    assert abs(far[0]) < 1e-6 * np.abs(m.values).max() + 1e-9


@pytest.mark.parametrize(("call", "fragment"), [
    (lambda: fit_field_covariance([0, 0], np.zeros((3, 2)), [1.0, 2.0, 3.0], 1), "differ in length"),
    (lambda: fit_field_covariance([0, 0], [[0.0, 0.0], [np.nan, 1.0]], [1.0, 2.0], 1), "must be finite"),
    (lambda: fit_field_covariance([0] * 5, np.arange(10.0).reshape(5, 2), np.ones(5), 1), "too few walk readings"),
    (lambda: fit_field_covariance([3], [[0.0, 0.0]], [1.0], 2), "receiver_index must be in"),
    (lambda: krige_radio_map([0], [[0.0, 0.0]], [np.inf], 1, BOX, covariance=SMOOTH), "must be finite"),
    (lambda: krige_radio_map([0], [[0.0, 0.0]], [1.0], 1, BOX, covariance=SMOOTH, bin_m=0.0), "bin_m"),
    (lambda: krige_radio_map([0] * 3, np.ones((3, 2)), np.ones(3), 1, BOX), "too few walk readings"),
    (lambda: FieldCovariance(-1.0, 9.0, 3.0), "field covariance"),
    (lambda: FieldCovariance(1.0, 9.0, 0.0), "field covariance"),
])
def test_bad_walk_readings_are_a_one_line_value_error(call: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        call()  # type: ignore[operator]
    assert "\n" not in str(info.value)


RX_XY = np.array([[0, 0], [20, 0], [20, 20], [0, 20], [10, 0], [20, 10], [10, 20], [0, 10]], float)
RX = np.column_stack([RX_XY, np.full(len(RX_XY), 2.8)])
TRUTH = np.array([14.0, 9.0])
# Receivers 1, 2 and 5 sit behind a wall for this part of the store.
OFFSETS = np.array([0.0, -6.0, -6.0, 0.0, 0.0, -6.0, 0.0, 0.0])
WALL = RadioMap(np.zeros(2), 1.0, np.broadcast_to(OFFSETS[:, None, None], (8, 21, 21)).copy())


def test_snapshot_fix_with_the_map_finds_a_phone_the_plain_model_misplaces() -> None:
    z = rssi_at_distance(slant_distance(TRUTH, RX, 1.2), -59.0, 2.2) + OFFSETS
    with_map = fix(RX, z, -59.0, 2.2, 4.0, 1.2, radio_map=WALL)
    plain = fix(RX, z, -59.0, 2.2, 4.0, 1.2)
    assert with_map.ok
    assert plain.ok
    assert np.hypot(*(with_map.xy - TRUTH)) < 0.01
    assert np.hypot(*(plain.xy - TRUTH)) > 1.0


def test_tracker_with_the_map_finds_a_phone_the_plain_model_misplaces() -> None:
    rx, truth, radio_map = RX, TRUTH, WALL
    z = rssi_at_distance(slant_distance(truth, rx, 1.2), -59.0, 2.2) + OFFSETS
    errors = {}
    for label, used in (("map", radio_map), ("plain", None)):
        tr = Tracker(rx, -59.0, 2.2, 4.0, BOX, TrackerConfig(), used)
        for t in range(60):
            snap = tr.step(float(t), ["phone"] * 8, np.arange(8), z)
        errors[label] = float(np.hypot(*(snap.xy[0] - truth)))
    assert errors["map"] < 0.05
    assert errors["plain"] > 1.0


def _stored(ids: tuple[str, ...]) -> StoredRadioMap:
    values = np.stack([np.full((4, 3), float(i + 1)) for i in range(len(ids))])
    return StoredRadioMap(ids, RadioMap(np.array([1.0, 2.0]), 0.5, values), np.arange(len(ids)), 1.0, 5.0)


def test_file_round_trip_and_receivers_matched_by_id(tmp_path: Path) -> None:
    path = tmp_path / "store.radiomap.npz"
    write_radio_map(path, _stored(("a", "b", "c")))
    back = read_radio_map(path)
    assert back.receiver_ids == ("a", "b", "c")
    assert (back.bandwidth_m, back.prior_readings, back.radio_map.cell_m) == (1.0, 5.0, 0.5)
    np.testing.assert_allclose(back.radio_map.origin, [1.0, 2.0])
    ordered = back.for_receivers(("c", "new", "a"))  # b is gone, new was never walked
    np.testing.assert_allclose(ordered.values[:, 0, 0], [3.0, 0.0, 1.0])
    assert read_radio_map(path) is back  # unchanged on disk: read once
    write_radio_map(path, _stored(("x",)))
    assert read_radio_map(path).receiver_ids == ("x",)  # replaced: read again


@pytest.mark.parametrize(("content", "fragment"), [
    (b"not a zip at all", "not a radio map file"),
    (None, "not a santi.radiomap/1 file"),
])
def test_a_file_that_is_not_a_radio_map_is_one_line(tmp_path: Path, content: bytes | None, fragment: str) -> None:
    path = tmp_path / "bad.npz"
    if content is None:
        with path.open("wb") as handle:
            np.savez(handle, values=np.zeros((1, 2, 2)))
    else:
        path.write_bytes(content)
    with pytest.raises(RadioMapFileError) as info:
        read_radio_map(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_site_names_its_map_relative_to_itself_and_blames_the_line_when_it_is_corrupt(tmp_path: Path) -> None:
    ids = tuple(r.id for r in load_site(EXAMPLE).receivers)
    write_radio_map(tmp_path / "store.radiomap.npz", _stored(ids))
    text = EXAMPLE.read_text().replace("[tracking]\n", '[tracking]\nradio_map = "store.radiomap.npz"\n')
    site_path = tmp_path / "store.toml"
    site_path.write_text(text)
    arrays = site_arrays(load_site(site_path))
    assert arrays.radio_map is not None
    np.testing.assert_allclose(arrays.radio_map.values[:, 0, 0], np.arange(1, len(ids) + 1))
    (tmp_path / "store.radiomap.npz").write_bytes(b"truncated")
    with pytest.raises(ConfigError) as info:
        load_site(site_path)
    line = text.splitlines().index('radio_map = "store.radiomap.npz"') + 1
    assert str(info.value).startswith(f"{site_path}:{line}: tracking.radio_map:")
    assert "not a radio map file" in str(info.value)
