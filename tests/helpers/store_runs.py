"""A day in the example store's `store` channel: a technician's survey walk, shoppers, `calibrate fit` on the walk,
and the shoppers located and scored with a config; for the statistical tests of what calibration buys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner

from agent.cli import cli
from agent.config import load_site
from agent.observations import Observation
from agent.replayfile import RecordReader
from simulator.channel import CHANNELS
from simulator.locate import locate
from simulator.report import build_report, group_estimates
from simulator.run import SURVEY_PHONES, SimConfig, simulate
from simulator.truth import read_truth

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fishmonger.toml"


def store_day(out: Path, shoppers: int = 20, minutes: float = 3.0) -> tuple[Path, Path]:
    """The survey walk (seed 5) and `shoppers` over `minutes` (seed 7) in the same store: their run folders."""
    site = load_site(EXAMPLE)
    store = CHANNELS["store"]
    simulate(site, SimConfig(shoppers=1, seed=5, channel=store, phones=SURVEY_PHONES), out / "walk", survey=True)
    simulate(site, SimConfig(shoppers=shoppers, minutes=minutes, seed=7, channel=store), out / "shoppers")
    return out / "walk", out / "shoppers"


def calibrated(source: Path, walk: Path, out: Path, *options: str) -> Path:
    """`santi calibrate fit` of `source` on the walk, with `options`, written to `out` (which it returns)."""
    result = CliRunner().invoke(cli, ["calibrate", "fit", "--site", str(source), "--observations",
                                      str(walk / "observations.jsonl"), "--truth", str(walk / "truth.jsonl"),
                                      "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    return out


def located_figures(config: Path, shoppers: Path) -> dict[str, Any]:
    """The shoppers located with `config` and scored against their truth: the report's figures."""
    site = load_site(config)
    groups = group_estimates(list(locate(site, RecordReader(shoppers / "observations.jsonl", Observation))))
    return build_report(site, read_truth(shoppers / "truth.jsonl"), groups, bound_sample=0).figures()
