"""Report figures on hand-made truth and estimates (exact), the bound, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import cli
from agent.config import load_site
from agent.replayfile import read_records
from positioning.bounds import crlb_rmse
from simulator.locate import Estimate
from simulator.report import crlb_at, group_estimates, position_errors, sector_metrics
from simulator.truth import (
    EmitterTruth,
    PositionTruth,
    ShopperTruth,
    TruthRecord,
    VisitTruth,
    gather,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _truth(seconds: int = 60) -> list[TruthRecord]:
    """One shopper walking along x at 0.2 m/s: entrance for 20 s, then aisle-centre."""
    records: list[object] = [
        ShopperTruth(shopper_id="S-1", enter_ts=0.0, leave_ts=float(seconds), has_app=True),
        EmitterTruth(emitter_id="e1", tech="ble", raw_id="C0:00:00:00:00:01", shopper_id="S-1",
                     first_ts=0.0, last_ts=float(seconds)),
        VisitTruth(shopper_id="S-1", sector="entrance", enter_ts=0.0, exit_ts=20.0),
        VisitTruth(shopper_id="S-1", sector="aisle-centre", enter_ts=20.0, exit_ts=float(seconds)),
    ]
    for t in range(seconds + 1):
        records.append(PositionTruth(ts=float(t), shopper_id="S-1", x=15.0, y=1.0 + 0.15 * t,
                                     sector="entrance" if t < 20 else "aisle-centre"))
    return [TruthRecord(root=r) for r in records]  # type: ignore[arg-type]


def _estimates(offset: float = 0.0, delay: float = 0.0, flap: bool = False) -> list[Estimate]:
    out = []
    for t in np.arange(0.5, 60.0, 1.0):
        sector = "entrance" if t < 20 + delay else "aisle-centre"
        if flap and 40 < t < 44:
            sector = "aisle-1"
        since = {"entrance": 0.5, "aisle-centre": 44.5 if flap and t > 44 else 20.0, "aisle-1": 40.5}[sector]
        out.append(Estimate(ts=float(t), emitter_id="e1", x=15.0 + offset, y=1.0 + 0.15 * t, sector=sector,
                            sector_probability=0.9, covariance=((1.0, 0.0), (0.0, 1.0)),
                            sector_since=since if delay == 0 else None))
    return out


def test_perfect_estimates_score_perfectly() -> None:
    truth = gather(_truth())
    groups = group_estimates(_estimates())
    assert np.allclose(position_errors(truth, groups, "ble"), 0.0, atol=1e-9)
    stats = sector_metrics(truth, groups, "ble")
    # Second 0 comes before the first estimate (0.5): the only shopper-time not covered.
    assert stats.accuracy == pytest.approx(60 / 61)
    assert stats.covered == pytest.approx(60 / 61)
    assert stats.precision == 1.0
    assert stats.recall == 1.0
    assert stats.false_changes == 0
    assert stats.shopper_hours == pytest.approx(60 / 3600)


def test_offset_delay_and_flap_are_counted() -> None:
    truth = gather(_truth())
    assert np.allclose(position_errors(truth, group_estimates(_estimates(offset=2.0)), "ble"), 2.0)
    late = sector_metrics(truth, group_estimates(_estimates(delay=8.0)), "ble")  # entry 8 s late: unmatched
    assert late.matched_entries == 1
    assert late.false_changes == 1
    assert late.recall == 0.5
    assert late.accuracy == pytest.approx(51 / 61)  # seconds 0 and 20..28 wrong
    flap = sector_metrics(truth, group_estimates(_estimates(flap=True)), "ble")
    # Into aisle-1 at 40.5 and back at 44.5: two changes that match no true entry.
    assert flap.false_changes == 2
    assert flap.estimated_entries == 4
    assert flap.accuracy == pytest.approx(56 / 61)  # seconds 0 and 41..44
    assert flap.false_changes_per_hour == pytest.approx(2 / (60 / 3600))


def test_time_without_estimates_counts_as_wrong() -> None:
    truth = gather(_truth())
    estimates = [e for e in _estimates() if e.ts < 30]
    stats = sector_metrics(truth, group_estimates(estimates), "ble", stale_s=5.0)
    assert stats.covered == pytest.approx(34 / 61)  # seconds 1..34: last estimate 29.5 + 5 s
    assert stats.accuracy == pytest.approx(34 / 61)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.floats(0.5, 29.5), st.floats(0.5, 19.5))
def test_bound_with_one_reading_per_receiver_is_the_core_bound(x: float, y: float) -> None:
    site = load_site(EXAMPLE)
    xyz = np.array([[r.x, r.y, r.z] for r in site.receivers])
    n = np.array([r.path_loss_exponent for r in site.receivers])
    ours = crlb_at(np.array([[x, y]]), np.ones((1, len(xyz))), xyz, n, 4.0, 1.2)
    core = crlb_rmse(np.array([[x, y]]), xyz, n, 4.0, 1.2)
    assert ours[0] == pytest.approx(core[0], rel=1e-9)
    four = crlb_at(np.array([[x, y]]), np.full((1, len(xyz)), 4.0), xyz, n, 4.0, 1.2)
    assert four[0] == pytest.approx(core[0] / 2.0, rel=1e-9)  # 4 readings each: half the RMSE bound


def test_cli_sim_locate_report_end_to_end(tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(cli, ["sim", "--site", str(EXAMPLE), "--shoppers", "3", "--minutes", "1", "--seed", "4",
                                 "--out", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in run.iterdir()} == {"observations.jsonl", "taps.jsonl", "truth.jsonl"}

    snap = tmp_path / "snap.jsonl"
    result = runner.invoke(cli, ["locate", "--site", str(EXAMPLE), "--observations", str(run / "observations.jsonl"),
                                 "--out", str(snap), "--mode", "snapshot", "-q"])
    assert result.exit_code == 0, result.output
    records, report = read_records(snap, Estimate)
    assert records
    assert report.bad_count == 0

    result = runner.invoke(cli, ["sim", "report", str(run), "--json", "--bound-sample", "100"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    for key in ("median_m", "p90_m", "rmse_m"):
        assert figures["position"][key] > 0
    assert 0 <= figures["sectors"]["accuracy"] <= 1
    for key in ("precision", "recall", "false_changes_per_hour"):
        assert key in figures["sectors"]
    assert figures["bound"]["crlb_rmse_m"] > 0
    assert figures["bound"]["ratio"] > 0
    png = Path(figures["png"])
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert png.stat().st_size > 20_000
    assert (run / "estimates.jsonl").is_file()  # report ran locate itself

    result = runner.invoke(cli, ["sim", "report", str(run), "--bound-sample", "0", "--png", str(tmp_path / "r.png")])
    assert result.exit_code == 0, result.output
    assert "sector accuracy" in result.stdout
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["sim", "--shoppers", "3"])
    assert result.exit_code == 2
    assert "needs --config and --out" in result.stderr
    result = runner.invoke(cli, ["sim", "report", str(tmp_path)])
    assert result.exit_code == 2
    assert "truth.jsonl: no such file" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[store]\nid = 'x'\n")
    result = runner.invoke(cli, ["locate", "--site", str(bad), "--observations", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
