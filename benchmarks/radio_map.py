"""What a calibration walk's radio map buys, and what it costs where there is nothing to learn.

In examples/fishmonger.toml, a technician's survey walk (`santi sim
--survey`) and a shopper run share the seed, so they happen in the same
store: the same receiver biases and, with the `walled` channel, the same
spatially correlated shadowing field (correlation 3 m, 70 % of the 4 dB;
what shelves and walls do). With `lognormal` the shadowing is independent
per packet: there is nothing for a map to learn. For each channel the walk
is calibrated as `santi calibrate fit` does it (path-loss fit, then the
radio map and its held-out check), and the shoppers are located three ways:
with the models from the walk only, with the map the command's check
decided on, and with the map forced on whatever the check said.

    .venv/bin/python benchmarks/radio_map.py [--shoppers 100] [--minutes 20] [--seeds 3 4 5] [--json]

Each seed is another store (field, biases) and another day of shoppers; the
tail of the error (p90) moves a lot between them, and even with small
changes to the map, because a few tracks that lose their shopper for a
minute weigh on it: quote all seeds, not one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import load_site  # noqa: E402
from agent.observations import Observation  # noqa: E402
from agent.replayfile import RecordReader  # noqa: E402
from simulator.calibrate import (  # noqa: E402
    calibration_samples,
    chosen_radio_map,
    fit_receivers,
    walk_radio_map,
    write_calibrated_site,
)
from simulator.channel import ChannelConfig  # noqa: E402
from simulator.locate import Estimate, locate_file  # noqa: E402
from simulator.report import build_report, group_estimates  # noqa: E402
from simulator.run import SURVEY_PHONES, SimConfig, simulate  # noqa: E402
from simulator.truth import read_truth  # noqa: E402

SITE = ROOT / "examples" / "fishmonger.toml"
CHANNELS = {
    "walled": ChannelConfig(sigma_db=4.0, correlation_m=3.0, spatial_fraction=0.7, body_loss_db=0.0),
    "lognormal": ChannelConfig(sigma_db=4.0, body_loss_db=0.0),
}


def score(site_path: Path, run_dir: Path) -> dict[str, float]:
    site = load_site(site_path)
    out = run_dir / f"estimates-{site_path.stem}.jsonl"
    locate_file(site, run_dir / "observations.jsonl", out)
    report = build_report(site, read_truth(run_dir / "truth.jsonl"), group_estimates(RecordReader(out, Estimate)))
    return {"median_m": report.position.median_m, "p90_m": float(np.percentile(report.errors, 90)),
            "sector_accuracy": report.sectors.accuracy,
            "false_changes_per_hour": report.sectors.false_changes_per_hour}


def run(name: str, channel: ChannelConfig, shoppers: int, minutes: float, seed: int, work: Path) -> dict[str, Any]:
    site = load_site(SITE)
    walk, shop = work / name / "walk", work / name / "shop"
    simulate(site, SimConfig(shoppers=1, seed=seed, channel=channel, phones=SURVEY_PHONES), walk, survey=True)
    simulate(site, SimConfig(shoppers=shoppers, minutes=minutes, seed=seed, channel=channel), shop)
    samples = calibration_samples(site, RecordReader(walk / "observations.jsonl", Observation),
                                  read_truth(walk / "truth.jsonl"))
    fits = fit_receivers(site, samples)
    chosen, ratio = chosen_radio_map(site, samples, fits)
    plain, decided, forced = work / name / "plain.toml", work / name / "decided.toml", work / name / "forced.toml"
    write_calibrated_site(site, SITE, fits, plain)
    write_calibrated_site(site, SITE, fits, decided, chosen)
    write_calibrated_site(site, SITE, fits, forced, walk_radio_map(site, samples, fits))
    return {"channel": name, "held_out_ratio": ratio, "map_kept": chosen is not None,
            "walk_models": score(plain, shop), "as_decided": score(decided, shop), "map_forced": score(forced, shop)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shoppers", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    runs = [(seed, name) for seed in args.seeds for name in CHANNELS]
    with tempfile.TemporaryDirectory() as tmp, Progress(transient=True, disable=args.json) as progress:
        task = progress.add_task("walk, shoppers, calibrate, locate x3", total=len(runs))
        for seed, name in runs:
            rows.append({"seed": seed, **run(name, CHANNELS[name], args.shoppers, args.minutes, seed, Path(tmp) / str(seed))})
            progress.advance(task)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("channel", "seed", "map check", "located with", "median m", "p90 m", "sectors", "false/h",
                  title=f"Radio map: fishmonger, {args.shoppers} shoppers, {args.minutes:g} min")
    for row in sorted(rows, key=lambda r: (list(CHANNELS).index(r["channel"]), r["seed"])):
        check = f"x{row['held_out_ratio']:.2f} {'kept' if row['map_kept'] else 'dropped'}"
        for label, key in (("walk models", "walk_models"), ("as decided", "as_decided"), ("map forced", "map_forced")):
            f = row[key]
            table.add_row(row["channel"], str(row["seed"]), check, label, f"{f['median_m']:.2f}", f"{f['p90_m']:.2f}",
                          f"{f['sector_accuracy']:.1%}", f"{f['false_changes_per_hour']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
