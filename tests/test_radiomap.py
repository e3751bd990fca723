"""The radio map: eq. (15) fitted from walk residuals, its file, and the tracker that adds it to the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, load_site
from agent.radiomap_file import RadioMapFileError, StoredRadioMap, read_radio_map, write_radio_map
from agent.site_arrays import site_arrays
from positioning.multilaterate import fix
from positioning.pathloss import rssi_at_distance, slant_distance
from positioning.radiomap import RadioMap, fit_radio_map
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
