"""The positioning core run over simulated stores: accuracy bounds, windows, snapshot mode, drops."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import SiteConfig, load_site
from agent.observations import Observation
from agent.replayfile import RecordReader, read_records
from agent.site_arrays import OUTSIDE, site_arrays
from simulator.channel import ChannelConfig
from simulator.locate import Estimate, LocateStats, locate, locate_file, windows
from simulator.report import build_report, group_estimates
from simulator.run import SimConfig, simulate
from simulator.shoppers import MobilityConfig
from simulator.truth import read_truth

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml"
SHORT = MobilityConfig(dwell_s=(20.0, 60.0), sectors_visited=(3, 4))
LOGNORMAL = ChannelConfig(sigma_db=4.0, receiver_bias_db=0.0, device_offset_db=0.0, body_loss_db=0.0)


@pytest.fixture(scope="module")
def site() -> SiteConfig:
    return load_site(EXAMPLE)


@pytest.fixture(scope="module")
def lognormal_run(tmp_path_factory: pytest.TempPathFactory, site: SiteConfig) -> Path:
    out = tmp_path_factory.mktemp("lognormal")
    config = SimConfig(shoppers=10, minutes=3, seed=11, mobility=SHORT, channel=LOGNORMAL,
                       phones=SimConfig().phones.__class__(app_share=1.0))
    simulate(site, config, out)
    return out


def test_tracker_accuracy_on_a_seeded_short_simulation(site: SiteConfig, lognormal_run: Path) -> None:
    """10 shoppers x 3 minutes, sigma 4 dB log-normal: measured median 1.29 m, p90 2.5 m, sector accuracy 0.86.

    Bounds leave room for the noise of a small sample, and catch a broken
    tracker or sector model (which give medians of 3 m and more).
    """
    truth = read_truth(lognormal_run / "truth.jsonl")
    estimates = list(locate(site, RecordReader(lognormal_run / "observations.jsonl", Observation)))
    report = build_report(site, truth, group_estimates(estimates), bound_sample=0)
    assert report.tracked_shoppers == 10
    assert report.position.median_m < 1.5
    assert report.position.p90_m < 3.0
    assert report.sectors.accuracy > 0.8
    assert report.sectors.covered > 0.97
    assert report.sectors.recall > 0.6
    assert report.sectors.precision > 0.6


def test_snapshot_mode_fixes_each_window_on_its_own(site: SiteConfig, lognormal_run: Path) -> None:
    truth = read_truth(lognormal_run / "truth.jsonl")
    stats = LocateStats()
    estimates = list(locate(site, RecordReader(lognormal_run / "observations.jsonl", Observation), "snapshot",
                            stats=stats))
    assert stats.estimates == len(estimates) > 1000
    assert all(e.sector_since is None and e.sector is not None for e in estimates)
    report = build_report(site, truth, group_estimates(estimates), observations=lognormal_run / "observations.jsonl",
                          bound_sample=300, seed=1)
    assert report.bound is not None
    assert report.bound.windows > 250
    # Matched model: the snapshot fix is efficient to within a modest factor of the bound.
    assert 0.8 < report.bound.ratio < 1.6
    assert report.position.median_m < 3.0
    # Memoryless sectors are worse than the HMM's, but far better than chance (1/7).
    assert report.sectors.accuracy > 0.6


def test_estimates_file_round_trips(tmp_path: Path, site: SiteConfig, lognormal_run: Path) -> None:
    out = tmp_path / "estimates.jsonl"
    stats = locate_file(site, lognormal_run / "observations.jsonl", out)
    records, report = read_records(out, Estimate)
    assert report.bad_count == 0
    assert len(records) == stats.estimates
    sectors = {r.sector for r in records} - {None}
    assert sectors <= {*site_arrays(site).sector_ids, OUTSIDE}
    cov = np.array([r.covariance for r in records])
    assert np.all(cov[:, 0, 0] > 0)
    assert np.allclose(cov[:, 0, 1], cov[:, 1, 0])
    assert np.all([0.0 <= r.sector_probability <= 1.0 for r in records])


def _obs(ts: float, receiver: str, emitter: str = "e1", rssi: float = -70.0) -> Observation:
    return Observation(ts=ts, receiver_id=receiver, emitter_id=emitter, tech="ble", rssi_dbm=rssi)


def test_unknown_receivers_and_late_readings_are_counted_and_dropped(site: SiteConfig) -> None:
    stream = [_obs(100.1, "node-fish"), _obs(100.2, "ghost"), _obs(101.3, "node-fish"), _obs(100.9, "node-fish"),
              _obs(101.4, "ghost")]
    stats = LocateStats()
    out = list(windows(stream, site_arrays(site), 1.0, stats))
    assert [w.t for w in out] == [100.5, 101.5]
    assert [len(w.emitter_ids) for w in out] == [1, 1]
    assert stats.unknown_receiver == 2
    assert stats.late == 1
    assert stats.unknown_receivers == {"ghost"}


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.floats(0.0, 30.0), st.integers(0, 7), st.integers(0, 3)), min_size=1, max_size=80),
       st.sampled_from([0.5, 1.0, 2.0]))
def test_windows_partition_a_sorted_stream(readings: list[tuple[float, int, int]], window_s: float) -> None:
    site = load_site(EXAMPLE)
    arrays = site_arrays(site)
    stream = [_obs(1000.0 + t, arrays.receiver_ids[r], f"e{e}") for t, r, e in sorted(readings)]
    stats = LocateStats()
    out = list(windows(stream, arrays, window_s, stats))
    assert sum(len(w.emitter_ids) for w in out) == len(stream)
    assert all(a.t < b.t for a, b in itertools.pairwise(out))
    for w in out:
        assert np.all(np.abs(np.array([0.0]) + w.t - np.floor(w.t / window_s) * window_s - 0.5 * window_s) < 1e-6)
        ids, mean, counts = w.matrix(len(arrays.receiver_ids))
        assert counts.sum() == len(w.emitter_ids)
        assert len(ids) == len(set(w.emitter_ids))
        assert np.all(np.isnan(mean) == (counts == 0))
