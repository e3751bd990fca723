"""Sector probabilities, the adjacency HMM and hysteresis."""

import numpy as np
import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st
from scipy.ndimage import distance_transform_edt

from positioning.geometry import LabelRaster, nearest_cells, points_in_polygon
from positioning.sectors import (
    SECTOR_SETTLE_S,
    SECTOR_STILL_HOLD_S,
    SectorModel,
    SectorTracker,
    hmm_step,
)

# Three 10 m x 10 m sectors in a row, A | B | C; shoppers come in through A.
A_, B_, C_ = (
    np.array([[x0, 0.0], [x0 + 10, 0.0], [x0 + 10, 10.0], [x0, 10.0]]) for x0 in (0, 10, 20)
)
ADJACENCY = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=bool)
ENTRANCES = np.array([True, False, False])
OUT = 3
TIGHT = np.diag([0.04, 0.04])  # a 0.2 m standard deviation


def model(mean_dwell_s: float = 10.0) -> SectorModel:
    return SectorModel([A_, B_, C_], ADJACENCY, ENTRANCES, mean_dwell_s=mean_dwell_s)


def test_ray_casting_handles_concave_polygons_and_shared_edges() -> None:
    ell = np.array([[0, 0], [4, 0], [4, 1], [1, 1], [1, 4], [0, 4]], dtype=float)
    pts = np.array([[0.5, 0.5], [3.5, 0.5], [0.5, 3.5], [2.0, 2.0], [5.0, 0.5], [-0.1, 2.0]])
    assert points_in_polygon(pts, ell).tolist() == [True, True, True, False, False, False]
    on_shared_edge = np.array([[10.0, 3.0], [10.0, 7.5]])
    both = points_in_polygon(on_shared_edge, A_) & points_in_polygon(on_shared_edge, B_)
    either = points_in_polygon(on_shared_edge, A_) | points_in_polygon(on_shared_edge, B_)
    assert not both.any()
    assert either.all()


def test_raster_labels_and_first_polygon_wins_overlaps() -> None:
    raster = LabelRaster.build([A_, A_ + np.array([5.0, 0.0])], cell=0.5, margin=1.0)
    got = raster.lookup(np.array([[2.0, 5.0], [7.0, 5.0], [12.0, 5.0], [40.0, 5.0], [np.nan, 1.0]]))
    assert got.tolist() == [0, 0, 1, 2, 2]


def test_deep_inside_a_sector_is_certain_and_rows_sum_to_one() -> None:
    m = model()
    p = m.likelihood(np.array([[5.0, 5.0], [25.0, 5.0], [-5.0, 5.0]]), np.stack([TIGHT] * 3))
    assert p.shape == (3, 4)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p[0, 0] > 0.99
    assert p[1, 2] > 0.99
    assert p[2, OUT] > 0.99
    assert m.label([[5.0, 5.0], [15.0, 5.0], [-5.0, 5.0]]).tolist() == [0, 1, OUT]



def test_beyond_a_wall_is_outside_only_past_an_entrance() -> None:
    m = model()
    wide = np.stack([np.diag([1.0, 1.0])] * 3)
    # On a wall of A (the entrance) half the mass is outside; on walls of B and C none is.
    p = m.likelihood(np.array([[5.0, 0.0], [15.0, 0.0], [30.0, 5.0]]), wide)
    assert p[0, OUT] == pytest.approx(0.5, abs=0.05)
    assert p[1, 1] > 0.99
    assert p[2, 2] > 0.99

def test_a_border_point_is_split_and_spread_follows_the_covariance() -> None:
    m = model()
    border = m.likelihood(np.array([[10.0, 5.0]]), np.diag([1.0, 1.0])[None])[0]
    assert border[0] == pytest.approx(0.5, abs=0.05)
    assert border[1] == pytest.approx(0.5, abs=0.05)
    # 1 m from the border with sigma 1 m: about Phi(1) = 0.84 on the near side.
    near = m.likelihood(np.array([[9.0, 5.0]]), np.diag([1.0, 1.0])[None])[0]
    assert near[0] == pytest.approx(0.84, abs=0.05)


@seed(271828)
@settings(max_examples=30, deadline=None)
@given(
    xy=st.lists(st.tuples(st.floats(-5, 35), st.floats(-5, 15)), min_size=1, max_size=6),
    sd=st.floats(0.05, 5.0),
    rho=st.floats(-0.9, 0.9),
)
def test_likelihood_is_vectorised_across_tracks(
    xy: list[tuple[float, float]], sd: float, rho: float
) -> None:
    m = model()
    cov = sd**2 * np.array([[1.0, rho], [rho, 1.0]])
    batch = m.likelihood(np.array(xy), np.stack([cov] * len(xy)))
    for i, q in enumerate(xy):
        np.testing.assert_allclose(batch[i], m.likelihood(np.array([q]), cov[None])[0])


def test_probability_moves_only_along_adjacency() -> None:
    m = model()
    delta = np.eye(4)  # all mass in A, B, C or outside
    for dt in (0.1, 1.0, 30.0, 1e4):
        moved = m.predict(delta, dt)
        np.testing.assert_allclose(moved.sum(axis=1), 1.0)
        assert moved[0, 2] == 0.0  # A -> C skips B
        assert moved[1, OUT] == 0.0  # B is no entrance
        assert moved[2, OUT] == 0.0
        assert moved[OUT, 1] == 0.0
        assert moved[0, OUT] > 0.0  # A is
    assert m.predict(delta, 1.0)[0, 0] == pytest.approx(np.exp(-1.0 / m.mean_dwell_s))


def walk_through(tracker: SectorTracker, xs: np.ndarray, sd: float = 0.5) -> list[tuple[int, int]]:
    """Step one shopper along y = 5 through the given x, once a second; returns (exited, entered)."""
    transitions = []
    for t, x in enumerate(xs):
        out = tracker.step(float(t), ["s"], np.array([[x, 5.0]]), np.diag([sd**2, sd**2])[None])
        if out.entered[0] >= 0:
            transitions.append((int(out.exited[0]), int(out.entered[0])))
    return transitions


def test_a_walk_reports_each_sector_once_along_the_adjacency() -> None:
    xs = np.r_[np.full(5, -3.0), np.arange(-3.0, 27.0, 1.0), np.full(10, 26.0)]
    transitions = walk_through(SectorTracker(model(), hold_s=2.0), xs)
    assert transitions == [(-1, OUT), (OUT, 0), (0, 1), (1, 2)]


def test_a_shopper_on_a_border_does_not_flap() -> None:
    xs = np.r_[np.full(8, 5.0), np.tile([9.6, 10.4], 30)]  # settle in A, then straddle A|B
    with_hysteresis = walk_through(SectorTracker(model(), threshold=0.6, hold_s=3.0), xs)
    assert with_hysteresis == [(-1, 0)]
    # Without hold time, HMM memory, margin or walk test (26), the same track flaps at every step.
    flapping = walk_through(
        SectorTracker(model(mean_dwell_s=1e-9), threshold=0.55, hold_s=0.0, margin_m=0.0, walk_m=0.0), xs
    )
    assert len(flapping) > 20
    # The spatial margin alone stops it: the mean never gets 1 m into B.
    margin_only = walk_through(
        SectorTracker(model(mean_dwell_s=1e-9), threshold=0.55, hold_s=0.0, margin_m=1.0, walk_m=0.0), xs
    )
    assert margin_only == [(-1, 0)]


def test_the_entry_is_stamped_at_the_crossing_not_the_confirmation() -> None:
    st_ = SectorTracker(model(), threshold=0.6, hold_s=3.0, margin_m=1.0)
    # Stand in A, walk at 1 m/s from x = 5.5 (t = 6) to x = 12.5 (t = 13), stop there.
    xs = np.r_[np.full(6, 5.5), np.arange(5.5, 12.6, 1.0), np.full(10, 12.5)]
    entries = []
    for t, x in enumerate(xs):
        out = st_.step(float(t), ["s"], np.array([[x, 5.0]]), np.diag([0.5, 0.5])[None])
        if out.entered[0] == 1:
            entries.append((t, float(out.entered_at[0]), float(out.qualified_at[0])))
        elif out.entered[0] < 0:
            assert np.isnan(out.qualified_at[0])
        if out.sector[0] == 1:
            assert out.entered_at[0] == entries[0][1]
    crossing = 6 + 4.5  # x = 10 at t = 10.5
    ((reported, entered_at, qualified_at),) = entries
    assert reported >= crossing + 3.0
    assert abs(entered_at - crossing) <= 1.0
    # The hold ran from the first step 1 m deep in B (x = 11 at t = 11.5 -> step 12) to the report.
    assert qualified_at == 12.0 == reported - 3.0


def test_a_hold_between_windows_that_close_a_little_late_is_not_a_window_longer() -> None:
    st_ = SectorTracker(model(), threshold=0.6, hold_s=3.0, margin_m=1.0)
    jitter = [0.002, 0.004, 0.001, 0.003, 0.002, 0.004, 0.001, 0.002, 0.003, 0.001, 0.002, 0.003]
    times = [float(k) + j for k, j in enumerate(jitter)]
    xs = [5.0] * 5 + [15.0] * 7  # deep in B from the window closing at t = 5.004 on
    sectors = [int(st_.step(t, ["s"], np.array([[x, 5.0]]), TIGHT[None]).sector[0]) for t, x in zip(times, xs, strict=True)]
    # 8.003 - 5.004 = 2.999 s of hold: B is reported there, not a window later.
    assert sectors == [-1, -1, -1, 0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_a_narrow_sector_can_still_be_entered_under_a_wide_margin() -> None:
    strip = np.array([[10.0, 0.0], [11.0, 0.0], [11.0, 10.0], [10.0, 10.0]])
    m = SectorModel([A_, strip], np.array([[0, 1], [1, 0]], bool), np.array([True, False]))
    st_ = SectorTracker(m, threshold=0.6, hold_s=1.0, margin_m=2.0)
    sectors = [
        int(st_.step(float(t), ["s"], np.array([[x, 5.0]]), TIGHT[None]).sector[0])
        for t, x in enumerate(np.r_[np.full(5, 5.0), np.full(8, 10.5)])
    ]
    assert sectors[-1] == 1


def test_the_reported_sector_waits_out_the_hold_time() -> None:
    st_ = SectorTracker(model(mean_dwell_s=2.0), threshold=0.6, hold_s=3.0)
    xs = np.r_[np.full(6, 5.0), np.full(12, 15.0)]
    reported = []
    for t, x in enumerate(xs):
        out = st_.step(float(t), ["s"], np.array([[x, 5.0]]), TIGHT[None])
        reported.append(int(out.sector[0]))
        if reported[-1] < 0:
            assert out.probability[0] == 0.0
    first_b = reported.index(1)
    crossing = 6  # first step with the estimate in B
    assert first_b >= crossing + 3
    assert reported[:3] == [-1, -1, -1]
    assert set(reported[3:first_b]) == {0}


WALK = 4.0
"""walk_m of eq. (26) where the store's bodies call for it (the default is no walk test)."""


def drift(tracker: SectorTracker, xs: np.ndarray) -> list[int]:
    """The sector reported at each second as one shopper's estimate goes through the given x (y = 5)."""
    return [int(tracker.step(float(t), ["s"], np.array([[x, 5.0]]), TIGHT[None]).sector[0]) for t, x in enumerate(xs)]


def test_an_estimate_that_drifts_off_a_still_shopper_is_no_walk_but_a_walk_is() -> None:
    # Standing in A at x = 5; then the estimate creeps at 0.2 m/s to x = 12.2, 2.2 m into B, for 4 s and back:
    # a body turned to the shelf, not a step. Eq. (26): 0.2 m/s leaves the mean 2 m from the smoothed position.
    creep = np.r_[np.full(20, 5.0), np.arange(5.0, 12.2, 0.2), np.full(4, 12.2), np.arange(12.2, 5.0, -0.2)]
    assert set(drift(SectorTracker(model()), creep)[20:]) == {0, 1}  # the margin alone (the default) lets it in
    assert set(drift(SectorTracker(model(), walk_m=WALK), creep)[20:]) == {0}
    # The same way at 1 m/s is a walk: 4 m from the smoothed position before the mean is 1.5 m inside B.
    walk = np.r_[np.full(20, 5.0), np.arange(5.0, 15.0, 1.0), np.full(10, 15.0)]
    reported = drift(SectorTracker(model(), walk_m=WALK), walk)
    assert reported[-1] == 1
    assert reported.index(1) <= 20 + 7 + 3 + 1  # 1.5 m deep at t = 27, then the hold
    # An estimate that stays in B long enough has settled there (its smoothed position is inside): B at last.
    stays = np.r_[np.full(20, 5.0), np.arange(5.0, 13.0, 0.2), np.full(60, 13.0)]
    assert drift(SectorTracker(model(), walk_m=WALK), stays)[-1] == 1
    # A jump of 6.5 m to 1.5 m inside B, under a walk test of 8 m: no walk, and the anchor takes about 25 s to be
    # 1 m deep in B (settled); the longer hold reports B after 20 s of it first, and settling does before 50 s.
    jump = np.r_[np.full(20, 5.0), np.full(80, 11.5)]
    assert drift(SectorTracker(model(), margin_m=1.0, walk_m=8.0), jump).index(1) == 20 + SECTOR_STILL_HOLD_S
    settled = drift(SectorTracker(model(), margin_m=1.0, walk_m=8.0, still_hold_s=50.0), jump).index(1)
    assert 20 + SECTOR_STILL_HOLD_S < settled < 20 + 50


def test_functional_form_equals_the_wrapper() -> None:
    m = model()
    wrapper = SectorTracker(m, threshold=0.6, hold_s=1.0, walk_m=WALK)
    rng = np.random.default_rng(12)
    states = {}
    for t in range(12):
        ids = ["a", "b"] + (["c"] if t >= 4 else [])
        xy = rng.uniform([-2, 0], [32, 10], (len(ids), 2))
        cov = np.stack([np.diag(rng.uniform(0.1, 4.0, 2)) for _ in ids])
        got = wrapper.step(float(t), ids, xy, cov)
        for i, e in enumerate(ids):
            if e not in states:
                states[e] = m.initial(1, float(t))
            states[e], out = hmm_step(
                m, states[e], xy[i : i + 1], cov[i : i + 1], float(t),
                threshold=0.6, hold_s=1.0, margin_m=1.0, walk_m=WALK, settle_s=SECTOR_SETTLE_S,
                still_hold_s=SECTOR_STILL_HOLD_S,
            )
            assert out.sector[0] == got.sector[i]
            assert out.probability[0] == pytest.approx(got.probability[i], rel=1e-12)
            assert (out.entered[0], out.exited[0]) == (got.entered[i], got.exited[i])
            np.testing.assert_equal(out.entered_at[0], got.entered_at[i])
    ids, state = wrapper.state()
    for i, e in enumerate(ids):
        np.testing.assert_allclose(state.posterior[i], states[e].posterior[0], rtol=1e-12)


def test_forget_drops_state_and_inputs_are_checked() -> None:
    wrapper = SectorTracker(model())
    wrapper.step(0.0, ["a", "b", "c"], np.full((3, 2), 5.0), np.stack([TIGHT] * 3))
    wrapper.forget(["b", "unknown"])
    ids, state = wrapper.state()
    assert ids == ["a", "c"]
    assert state.posterior.shape == (2, 4)
    with pytest.raises(ValueError, match="unique"):
        wrapper.step(1.0, ["a", "a"], np.full((2, 2), 5.0), np.stack([TIGHT] * 2))
    with pytest.raises(ValueError, match="adjacency"):
        SectorModel([A_, B_], ADJACENCY, ENTRANCES)
    with pytest.raises(ValueError, match="threshold"):
        SectorTracker(model(), threshold=0.4)
    with pytest.raises(ValueError, match="settle_s"):
        SectorTracker(model(), settle_s=0.0)
    with pytest.raises(ValueError, match="still_hold_s"):
        SectorTracker(model(), hold_s=30.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 30), st.integers(2, 30), st.floats(0.02, 0.98), st.integers(0, 2**31 - 1))
def test_nearest_cells_is_an_exact_distance_transform(ny: int, nx: int, density: float, key: int) -> None:
    """Same distances as SciPy's exact EDT; the cell named is a target at that distance."""
    mask = np.random.default_rng(key).random((ny, nx)) < density
    dist, rows, cols = nearest_cells(~mask, mask)
    if mask.all():
        assert np.all(np.isinf(dist))
        return
    np.testing.assert_allclose(dist, distance_transform_edt(mask)[mask])
    qr, qc = np.nonzero(mask)
    assert not mask[rows, cols].any()
    np.testing.assert_allclose(np.hypot(rows - qr, cols - qc), dist)
