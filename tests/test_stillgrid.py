"""The still grid, eqs. (43)-(47): exact on noise-free segments, statistical on a short store simulation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.config import load_site
from agent.site_arrays import make_tracker, site_arrays
from positioning.pathloss import Receivers
from positioning.stillgrid import FloatArray, StillGrid, cell_centres
from positioning.tracker import Tracker, TrackerConfig
from tests.helpers.fingerprints import gaussian_fingerprint
from tests.helpers.store_runs import calibrated, located_figures, store_day

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml"
BOX = ((0.0, 0.0), (30.0, 20.0))
RECEIVERS = Receivers.of(
    [[15.0, 19.0, 2.4], [15.0, 0.3, 2.8], [29.7, 2.5, 2.6], [0.3, 4.0, 2.6], [2.0, 19.0, 2.6], [29.0, 17.0, 2.6]],
    -59.0, 2.0, 4.0,
)


def _segment(grid: StillGrid, cell: int, heading: int, n: float, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A still segment of n noise-free readings per receiver from cell `cell`, its carrier facing `heading`."""
    g = grid.centres.shape[0]
    mu = grid.mu[heading * g + cell] + offset
    count = np.full((1, mu.shape[0]), n)
    return count, count * mu


@pytest.mark.parametrize("heading", range(8))
@pytest.mark.parametrize("cell", [0, 517, 1234, 2399])
def test_a_noise_free_still_emitter_is_found_at_its_cell_whatever_its_facing_and_offset(cell: int, heading: int) -> None:
    """Receivers of 0.5 dB noise: the facing the segment was read with fits exactly, the other seven do
    not, so (45) at the true cell is ln(1/8) above nothing else; a phone 6 dB loud costs its prior only."""
    precise = Receivers.of(RECEIVERS.xyz, -59.0, 2.0, 0.5)
    grid = StillGrid.of(precise, BOX, body_loss_db=8.0, offset_sigma_db=4.0)
    assert grid.centres.shape == (2400, 2)
    assert grid.headings == 8
    for offset in (0.0, 6.0):
        count, total = _segment(grid, cell, heading, 20.0, offset)
        ll = grid.loglik(count, total)
        assert int(np.argmax(ll[0])) == cell
        xy, cov, rejected = grid.estimate(count, total, grid.centres[[cell]])
        assert rejected[0] == 0.0  # eq. (47): the filter's cell is the best one
        assert np.all(np.linalg.eigvalsh(cov[0]) > 0.0)
        gap = xy[0] - grid.centres[cell]  # (46)'s mean is within its spread of the cell (a corner's is skewed)
        assert gap @ np.linalg.solve(cov[0], gap) < 4.0


def test_eq_44_integrates_the_offset_out_and_without_it_reads_an_offset_as_distance() -> None:
    """A phone 6 dB loud: with tau > 0 a common shift costs only its prior; with tau = 0 the grid moves it."""
    cell = 1234
    for tau, found in ((4.0, True), (0.0, False)):
        grid = StillGrid.of(RECEIVERS, BOX, offset_sigma_db=tau)
        count, total = _segment(grid, cell, 0, 20.0, 6.0)
        assert (int(np.argmax(grid.loglik(count, total)[0])) == cell) is found
    # (44) by hand on two receivers: -1/2 [sum w d² - (sum w d)² / (W + 1/tau²)].
    grid = StillGrid.of(RECEIVERS, BOX, offset_sigma_db=2.0, segment_correlation=0.5)
    count = np.array([[4.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    total = count * np.array([[-70.0, -80.0, 0.0, 0.0, 0.0, 0.0]])
    w = 1.0 / (16.0 * (0.5 + 0.5 / np.array([4.0, 1.0])))  # eq. (43)
    d = np.array([-70.0, -80.0])[None, :] - grid.mu[:, :2]
    ll = -0.5 * ((w * d * d).sum(1) - (w * d).sum(1) ** 2 / (w.sum() + 0.25))
    # (44) runs in single precision about the grid's mean level: within 1e-4 nats of the double sum here.
    np.testing.assert_allclose(grid.loglik(count, total)[0], ll - ll.max(), atol=1e-4)


def test_facings_are_marginalised_with_a_uniform_prior() -> None:
    grid = StillGrid.of(RECEIVERS, BOX, body_loss_db=8.0, headings=4)
    count, total = np.array([[3.0, 2.0, 5.0, 1.0, 0.0, 4.0]]), np.array([[-200.0, -150.0, -380.0, -80.0, 0.0, -300.0]])
    g = grid.centres.shape[0]
    per = np.stack([StillGrid(grid.centres, grid.mu[j * g:(j + 1) * g], 1, grid.cell_m, grid.sigma2, 0.5, 0.0,
                              grid.sector, None).loglik(count, total)[0] for j in range(4)])
    # Each per-facing row is shifted by its own maximum: compare posteriors, which the shift does not change.
    raw = [grid.mu[j * g:(j + 1) * g] for j in range(4)]
    w = np.where(count > 0, 1.0 / (grid.sigma2 * (0.5 + 0.5 / np.maximum(count, 1e-12))), 0.0)[0]
    zbar = np.where(count > 0, total / np.maximum(count, 1e-12), 0.0)[0]
    lj = np.stack([-0.5 * (w * (zbar - mu) ** 2).sum(1) for mu in raw])
    top = lj.max()
    expected = np.log(np.exp(lj - top).mean(0)) + top
    np.testing.assert_allclose(grid.loglik(count, total)[0], expected - expected.max(), atol=1e-4)  # single precision
    assert per.shape == (4, g)


def test_the_fingerprint_adds_its_sector_likelihood_to_every_cell_of_the_sector() -> None:
    centres = cell_centres(BOX, 0.5)
    sector = (centres[:, 0] >= 15.0).astype(np.intp)  # west half sector 0, east half sector 1
    fingerprint = gaussian_fingerprint(np.array([[-60.0] * 6, [-90.0] * 6]), np.full((2, 6), 3.0),
                                       np.array([10, 10]))
    plain = StillGrid.of(RECEIVERS, BOX, inside=sector)
    fused = StillGrid.of(RECEIVERS, BOX, inside=sector, fingerprint=fingerprint)
    assert plain.fingerprint is None
    assert fused.sector.tolist() == sector.tolist()
    count = np.full((1, 6), 5.0)
    total = count * -62.0
    diff = fused.loglik(count, total)[0] - plain.loglik(count, total)[0]
    expected = fingerprint.loglik(np.zeros(6, dtype=np.intp), np.arange(6), np.full(6, -62.0), 1)[0]
    np.testing.assert_allclose(diff - diff.max(), (expected - expected.max())[sector], atol=1e-9)
    # Cells outside every sector are not on the grid.
    inside = np.where(centres[:, 1] < 10.0, 0, -1)
    assert StillGrid.of(RECEIVERS, BOX, inside=inside).centres.shape[0] == int((inside == 0).sum())


def test_the_grid_places_a_track_that_settled_where_its_still_segment_rejects_it() -> None:
    """A still phone heard as from (25, 15) while its filter starts at (5, 5): the grid moves it there and
    the filter is started again from the grid's estimate, eq. (47); with the grid off it creeps."""
    truth = np.array([25.0, 15.0])
    config = {"sigma_a": (0.05,), "mode_dwell_s": (30.0,), "birth_sigma_m": 0.3, "birth_sigma_v": 0.05}
    rx = np.arange(len(RECEIVERS))
    d = np.sqrt(((RECEIVERS.xyz[:, :2] - truth) ** 2).sum(1) + (RECEIVERS.xyz[:, 2] - 1.2) ** 2)
    z = -59.0 - 20.0 * np.log10(d)
    grid = StillGrid.of(RECEIVERS, BOX)
    out = {}
    for on in (False, True):
        tracker = Tracker(RECEIVERS.xyz, -59.0, 2.0, 4.0, BOX, TrackerConfig(still_grid_s=3.0 if on else 0.0, **config),
                          still_grid=grid)
        tracker.step(0.0, ["a"], [3], [-50.0])  # born next to receiver 3 at (0.3, 4)
        for t in range(1, 8):
            snap = tracker.step(float(t), ["a"] * len(rx), rx, z)
        out[on] = np.hypot(*(snap.xy[0] - truth)), np.hypot(*(tracker.snapshot().xy[0] - truth))
    assert out[True][0] < 0.5
    assert out[True][1] < 0.5
    assert out[False][0] > 2.0


def test_the_site_config_turns_the_grid_on(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(EXAMPLE.read_text().replace("[tracking]\n", "[tracking]\nstill_grid_s = 5.0\n"))
    site = load_site(path)
    tracker = make_tracker(site, site_arrays(site))
    assert tracker.config.still_grid_s == 5.0
    assert tracker._grid is not None
    assert make_tracker(load_site(EXAMPLE), site_arrays(load_site(EXAMPLE)))._grid is None
    with pytest.raises(ValueError, match="still_grid_s"):
        TrackerConfig(still_grid_s=-1.0)


@pytest.mark.slow
def test_in_the_store_channel_the_grid_cuts_the_error_of_still_shoppers_and_false_changes(tmp_path: Path) -> None:
    """Survey walk -> calibrate fit -> shoppers located with offsets, body held, walk test, with and without the grid."""
    walk, shoppers = store_day(tmp_path)
    source = tmp_path / "site.toml"
    source.write_text(EXAMPLE.read_text().replace("[tracking]\n", "[tracking]\nphone_offset_db = 4.0\n"
                      "body_loss_db = 3.0\nbody_hold_s = 300.0\nsector_walk_m = 4.0\n"))
    out = calibrated(source, walk, tmp_path / "calibrated.toml", "--no-grid-filter")
    gridded = tmp_path / "calibrated-grid.toml"  # beside `out`: the same map and fingerprint files
    gridded.write_text(out.read_text().replace("[tracking]\n", "[tracking]\nstill_grid_s = 5.0\n"))
    figures = {label: located_figures(path, shoppers) for label, path in (("filter", out), ("grid", gridded))}
    before, after = figures["filter"], figures["grid"]
    # Measured: median 1.70 -> 1.63 m, p90 9.84 -> 8.44 m, mean 3.46 -> 3.18 m, sectors 73.3 -> 75.4 %,
    # entry recall 0.60 -> 0.62; false changes 23 -> 26 (10.6 -> 12.0 per shopper-hour) on this small run.
    assert after["position"]["mean_m"] < 0.97 * before["position"]["mean_m"]
    assert after["position"]["p90_m"] < before["position"]["p90_m"]
    assert after["sectors"]["accuracy"] > before["sectors"]["accuracy"] + 0.01
    assert after["sectors"]["recall"] >= before["sectors"]["recall"]


def test_a_still_segment_is_weighed_once_every_still_every_s() -> None:
    """Two still phones, born a window apart: each is weighed from still_grid_s on, then once every
    still_every_s, also when the windows close a few milliseconds early."""
    calls: list[int] = []

    class CountingGrid(StillGrid):
        """The real grid, recording how many segments each call weighed."""

        def estimate(self, count: FloatArray, total: FloatArray,
                     xy: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
            calls.append(count.shape[0])
            return super().estimate(count, total, xy)

    grid = CountingGrid.of(RECEIVERS, BOX)
    config = TrackerConfig(still_grid_s=2.0, still_every_s=3.0, still_speed=10.0)
    tracker = Tracker(RECEIVERS.xyz, -59.0, 2.0, 4.0, BOX, config, still_grid=grid)
    rx = np.arange(len(RECEIVERS))
    weighed = []
    for k in range(11):
        t = float(k) - (0.003 if k % 2 else 0.0)  # live windows close a hair off the second
        ids = ["a"] * len(rx) + (["b"] * len(rx) if k >= 1 else [])
        before = len(calls)
        tracker.step(t, ids, np.tile(rx, len(ids) // len(rx)), np.full(len(ids), -70.0))
        weighed.append(calls[-1] if len(calls) > before else 0)
    # a: still since 0, weighed at 2, 5, 8; b: still since 1 (its birth), weighed at 3, 6, 9.
    assert weighed == [0, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0]
    with pytest.raises(ValueError, match="still_every_s"):
        TrackerConfig(still_every_s=0.0)
