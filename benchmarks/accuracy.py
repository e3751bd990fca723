"""Accuracy on the example store: the issue's target run, measured.

200 shoppers arriving over 30 minutes in examples/fishmonger.toml, seed 1.
Three channels (simulator.channel.CHANNELS) are run: `lognormal` (4 dB
log-normal shadowing and 10 % packet loss only: the conditions the
Cramér-Rao bound and the first targets are stated for), `impaired` (the
simulator's defaults: plus per-receiver bias 1 dB, device offset 1 dB, body
loss up to 3 dB) and `store` (phones differing by 4 dB, bodies up to 8 dB,
shoppers turning at shelves, receiver bias 2 dB, 5 dB shadowing of which
most stays put over 3 m). Each is located with the tracker and scored by the
same code as `santi sim report`.

`store` is also calibrated as a technician would: `santi sim --survey
--channel store` walks a reference tag through the same store (the store's
static radio comes from the site, the walk's day from --walk-seed), `santi
calibrate fit` fits the receivers (and keeps a radio map if its check says
so), and the shoppers are located again with the calibrated config. Every
calibrated row but the last is calibrated for the tracker's own filter
(`--no-grid-filter`), so that each shows what its one change buys. The
uncalibrated and calibrated figures are reported side by side, each also
with the tracker estimating every phone's TX offset (`[tracking]
phone_offset_db = 4`, eq. (16) of positioning.ekf), and calibrated once
more with the carrier's body expected too (`body_loss_db = 3`, held while
standing: `body_hold_s = 300`, eqs. (20)-(21)), and once more with the
sector filter's walk test on (`sector_walk_m = 4`, eq. (26) of
positioning.sectors) and its hold at `hysteresis_s = 2`, and once more with
still tracks placed on a grid of the store (`still_grid_s = 5`, eqs.
(43)-(47) of positioning.stillgrid), and once more calibrated with the
walker's own body taken out of the walk (`calibrate fit
--without-walker-body`, eq. (48) of positioning.pathloss). The last row
is the example as shipped, calibrated as a technician's plain `calibrate
fit` does it, which fits the walk both for the filter and for the grid
filter (a kriged map, eqs. (49)-(50) of positioning.radiomap, the walker's
whole body out and expected on every shopper) and keeps the one that
tracks held-out walk segments better; on this store's walks that is the
grid filter, which places every track on a grid of the store (eqs.
(51)-(57) of positioning.gridfilter, each track carrying its body's facing
and its phone's offset), and with it the phone offsets and the walk test
and hold above. The row's calibration note says which was chosen.
`calibrate fit` writes the sector fingerprint (eq. (18) of
positioning.fingerprint) with every calibrated config, so the calibrated
rows fuse it in the sector filter.

    .venv/bin/python benchmarks/accuracy.py [--shoppers 200] [--minutes 30] [--channel store] [--out DIR] [--json]

Targets (lognormal): median position error <= 1.5 m; snapshot RMSE <= 1.2 x
CRLB; sector accuracy >= 95 % of shopper-time; <= 1 false sector change per
shopper-hour. Targets (store, calibrated): median <= 2.0 m, sector accuracy
>= 92 %, <= 1.5 false changes per shopper-hour, entry precision >= 0.95 with
recall >= 0.8; entries decided p50 <= 4 s, p90 <= 10 s after the true crossing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from click.testing import CliRunner  # noqa: E402

from agent.cli import cli  # noqa: E402
from agent.config import SiteConfig, load_site  # noqa: E402
from agent.replayfile import RecordReader  # noqa: E402
from positioning.sectors import WALK_TEST_HOLD_S, WALK_TEST_M  # noqa: E402
from simulator.channel import CHANNELS, ChannelConfig  # noqa: E402
from simulator.locate import Estimate, locate_file  # noqa: E402
from simulator.plot import plot_report  # noqa: E402
from simulator.report import build_report, group_estimates  # noqa: E402
from simulator.run import SimConfig, simulate  # noqa: E402
from simulator.truth import read_truth  # noqa: E402

SITE = ROOT / "examples" / "fishmonger.toml"
TARGETS = {"median_m": 1.5, "bound_ratio": 1.2, "sector_accuracy": 0.95, "false_changes_per_hour": 1.0}
STORE_TARGETS = {"median_m": 2.0, "sector_accuracy": 0.92, "false_changes_per_hour": 1.5, "precision": 0.95,
                 "recall": 0.8, "latency_p50_s": 4.0, "latency_p90_s": 10.0}
CALIBRATED = ("store",)
"""Channels also calibrated from a survey walk, as a technician would."""


def environment() -> dict[str, str]:
    """The versions a run's figures depend on: NumPy, SciPy and Shapely make the simulated store, its calibration and
    the tracking, and a fresh install has moved a calibrated row by points on the same seed (benchmarks/README.md,
    2026-12-05, night)."""
    return {"python": platform.python_version(),
            **{name: metadata.version(name) for name in ("numpy", "scipy", "shapely")}}


def santi(*args: str) -> str:
    """Run a santi command in-process, as a technician would type it; its output, or an error naming it."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if result.exit_code != 0:
        raise RuntimeError(f"santi {' '.join(args)}: exit {result.exit_code}: {result.output.strip()}")
    return result.output


PHONE_OFFSET_DB = 4.0
"""`[tracking] phone_offset_db` of the rows that estimate each phone's offset: the store channel's spread."""

BODY_LOSS_DB = 3.0
"""`[tracking] body_loss_db` of the rows that expect the carrier's body (eq. (20))."""

BODY_HOLD_S = 300.0
"""`[tracking] body_hold_s` of those rows: a stopped shopper's facing held from their walk (eq. (21))."""



STILL_GRID_S = 5.0
"""`[tracking] still_grid_s` of the row whose still tracks a grid of the store places (eqs. (43)-(47) of
positioning.stillgrid)."""


WALKER_BODY = "--without-walker-body"
"""The `calibrate fit` option of the last row: the walker's own body out of the walk's readings (eq. (48))."""


NO_GRID_FILTER = "--no-grid-filter"
"""The `calibrate fit` option of every calibrated row but the last: calibrated for the tracker's own filter, as each
row's options say, whatever the walk's held-out segments would prefer."""


def with_phone_offsets(out: Path, body_loss_db: float = 0.0, walk: bool = False, grid: bool = False) -> Path:
    """The example site with the tracker estimating each phone's TX offset (and expecting the body, if given;
    with the sector filter's walk test and its shorter hold, if `walk`; with the still grid, if `grid`)."""
    body = f"body_loss_db = {body_loss_db}\nbody_hold_s = {BODY_HOLD_S}\n" if body_loss_db else ""
    text = SITE.read_text().replace("[tracking]\n", f"[tracking]\nphone_offset_db = {PHONE_OFFSET_DB}\n{body}")
    if walk:
        text = text.replace("hysteresis_s = 3.0\n", f"hysteresis_s = {WALK_TEST_HOLD_S}\nsector_walk_m = {WALK_TEST_M}\n")
    if grid:
        text = text.replace("[tracking]\n", f"[tracking]\nstill_grid_s = {STILL_GRID_S}\n")
    path = out / f"fishmonger-phone-offsets{'-body' if body else ''}{'-walk' if walk else ''}{'-grid' if grid else ''}.toml"
    path.write_text(text)
    return path


def calibrate(name: str, site: Path, walk_seed: int, out: Path, *options: str) -> tuple[Path, str]:
    """A survey walk through channel `name`, then `santi calibrate fit` from `site` with `options`: the calibrated
    config, the verdict on its map."""
    walk = out / f"{name}-walk"
    if not (walk / "truth.jsonl").is_file():
        santi("sim", "--site", str(SITE), "--channel", name, "--survey", "--seed", str(walk_seed), "--out", str(walk),
              "-q")
    calibrated = out / f"{name}-{site.stem}{''.join(options) or '-chosen'}-calibrated.toml"
    said = santi("calibrate", "fit", "--site", str(site), "--observations", str(walk / "observations.jsonl"),
                 "--truth", str(walk / "truth.jsonl"), "--out", str(calibrated), *options).strip().splitlines()
    return calibrated, "; ".join([line for line in said if line.startswith("tracker: ")] + said[-1:])


def scored(site: SiteConfig, run_dir: Path, label: str, seed: int, bound_sample: int) -> dict[str, Any]:
    """Locate run_dir's observations with `site` and score them: the report's figures."""
    estimates = run_dir / f"estimates-{label}.jsonl"
    started = time.perf_counter()
    stats = locate_file(site, run_dir / "observations.jsonl", estimates)
    located = time.perf_counter()
    truth = read_truth(run_dir / "truth.jsonl")
    groups = group_estimates(RecordReader(estimates, Estimate))
    report = build_report(site, truth, groups, observations=run_dir / "observations.jsonl",
                          bound_sample=bound_sample, seed=seed)
    figures = report.figures()
    figures.update({"windows": stats.windows, "locate_s": round(located - started, 1)})
    figures["png"] = str(plot_report(site, truth, groups, report, run_dir / f"report-{label}.png",
                                     title=f"fishmonger, {len(truth.shoppers)} shoppers, {label}"))
    return figures


def run(name: str, channel: ChannelConfig, shoppers: int, minutes: float, seed: int, walk_seed: int, out: Path,
        bound_sample: int) -> dict[str, Any]:
    site = load_site(SITE)
    run_dir = out / name
    started = time.perf_counter()
    summary = simulate(site, SimConfig(shoppers=shoppers, minutes=minutes, seed=seed, channel=channel), run_dir)
    simulated = time.perf_counter()
    figures = scored(site, run_dir, "uncalibrated", seed, bound_sample)
    figures.update({
        "channel": name, "observations": summary.observations,
        "simulated_minutes": round(summary.duration_s / 60, 1),
        "seconds": {"simulate": round(simulated - started, 1), "locate": figures.pop("locate_s")},
    })
    b, s, p = figures["bound"], figures["sectors"], figures["position"]
    figures["targets"] = {
        "median_m": p["median_m"] <= TARGETS["median_m"],
        "bound_ratio": b is not None and b["ratio"] <= TARGETS["bound_ratio"],
        "sector_accuracy": s["accuracy"] >= TARGETS["sector_accuracy"],
        "false_changes_per_hour": s["false_changes_per_hour"] <= TARGETS["false_changes_per_hour"],
    }
    if name in CALIBRATED:
        offsets = with_phone_offsets(out)
        figures["phone_offsets"] = store_targets(scored(load_site(offsets), run_dir, "phone-offsets", seed, bound_sample))
        grid = with_phone_offsets(out, BODY_LOSS_DB, walk=True, grid=True)
        for key, base, options in (("calibrated", SITE, (NO_GRID_FILTER,)),
                                   ("calibrated_phone_offsets", offsets, (NO_GRID_FILTER,)),
                                   ("calibrated_phone_offsets_body", with_phone_offsets(out, BODY_LOSS_DB),
                                    (NO_GRID_FILTER,)),
                                   ("calibrated_phone_offsets_body_walk",
                                    with_phone_offsets(out, BODY_LOSS_DB, walk=True), (NO_GRID_FILTER,)),
                                   ("calibrated_phone_offsets_body_walk_grid", grid, (NO_GRID_FILTER,)),
                                   ("calibrated_phone_offsets_body_walk_grid_walker", grid,
                                    (NO_GRID_FILTER, WALKER_BODY)),
                                   ("calibrated_chosen", SITE, ())):
            calibrated, verdict = calibrate(name, base, walk_seed, out, *options)
            figures[key] = store_targets(scored(load_site(calibrated), run_dir, key, seed, bound_sample))
            figures[key]["calibration"] = verdict
    return figures


def store_targets(figures: dict[str, Any]) -> dict[str, Any]:
    """`figures` with each STORE_TARGETS figure marked met or not."""
    s, p = figures["sectors"], figures["position"]
    figures["targets"] = {
        "median_m": p["median_m"] <= STORE_TARGETS["median_m"],
        "sector_accuracy": s["accuracy"] >= STORE_TARGETS["sector_accuracy"],
        "false_changes_per_hour": s["false_changes_per_hour"] <= STORE_TARGETS["false_changes_per_hour"],
        "precision": s["precision"] >= STORE_TARGETS["precision"],
        "recall": s["recall"] >= STORE_TARGETS["recall"],
        "latency_p50_s": (s["latency_p50_s"] or float("inf")) <= STORE_TARGETS["latency_p50_s"],
        "latency_p90_s": (s["latency_p90_s"] or float("inf")) <= STORE_TARGETS["latency_p90_s"],
    }
    return figures


def _print(label: str, r: dict[str, Any]) -> None:
    p, s, b = r["position"], r["sectors"], r["bound"]
    mark = {k: "ok" if v else "MISSED" for k, v in r["targets"].items()}
    print(f"-- {label}")
    print(f"position error median {p['median_m']:.2f} m [{mark.get('median_m', '-')}], p90 {p['p90_m']:.2f} m, "
          f"tracker RMSE {p['rmse_m']:.2f} m")
    if b is not None:
        print(f"snapshot RMSE {b['rmse_m']:.2f} m vs CRLB {b['crlb_rmse_m']:.2f} m: {b['ratio']:.2f}x "
              f"[{mark.get('bound_ratio', '-')}] over {b['windows']} windows")
    print(f"sector accuracy {s['accuracy']:.1%} [{mark['sector_accuracy']}]; entries precision "
          f"{s['precision']:.2f} [{mark.get('precision', '-')}] recall {s['recall']:.2f} [{mark.get('recall', '-')}]; "
          f"false changes {s['false_changes_per_hour']:.2f} per shopper-hour [{mark['false_changes_per_hour']}]")
    print(f"entries decided after the true crossing: p50 {s['latency_p50_s']} s [{mark.get('latency_p50_s', '-')}], "
          f"p90 {s['latency_p90_s']} s [{mark.get('latency_p90_s', '-')}], p99 {s['latency_p99_s']} s")
    print(f"plot: {r['png']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shoppers", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--walk-seed", type=int, default=101, help="The survey walk's day (its store is the site's).")
    parser.add_argument("--bound-sample", type=int, default=3000)
    parser.add_argument("--channel", choices=[*CHANNELS, "all"], default="all")
    parser.add_argument("--out", type=Path, help="Keep the runs here (default: a temporary directory).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = list(CHANNELS) if args.channel == "all" else [args.channel]
    with tempfile.TemporaryDirectory(prefix="santi-accuracy-") as tmp:
        out = args.out or Path(tmp)
        results = [run(n, CHANNELS[n], args.shoppers, args.minutes, args.seed, args.walk_seed, out, args.bound_sample)
                   for n in names]
        versions = environment()
        for r in results:
            r["environment"] = versions
        if args.json:
            print(json.dumps(results, indent=2))
            return
        print("simulated with " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        for r in results:
            print(f"== channel {r['channel']}: {r['tracked_shoppers']} tracked shoppers, {r['observations']} "
                  f"observations, {r['simulated_minutes']} simulated min (simulate {r['seconds']['simulate']} s, "
                  f"locate {r['seconds']['locate']} s)")
            _print("uncalibrated", r)
            if "phone_offsets" in r:
                _print(f"uncalibrated, phone offsets estimated ({PHONE_OFFSET_DB:g} dB)", r["phone_offsets"])
            for key, label in (("calibrated", "calibrated"), ("calibrated_phone_offsets", "calibrated, phone offsets"),
                               ("calibrated_phone_offsets_body", f"calibrated, phone offsets, body {BODY_LOSS_DB:g} dB held {BODY_HOLD_S:g} s"),
                               ("calibrated_phone_offsets_body_walk", (f"calibrated, phone offsets, body {BODY_LOSS_DB:g} "
                                f"dB held {BODY_HOLD_S:g} s, walk test {WALK_TEST_M:g} m, hold {WALK_TEST_HOLD_S:g} s")),
                               ("calibrated_phone_offsets_body_walk_grid", (f"the same, still tracks on the grid after "
                                f"{STILL_GRID_S:g} s")),
                               ("calibrated_phone_offsets_body_walk_grid_walker",
                                f"the same, calibrated {WALKER_BODY}"),
                               ("calibrated_chosen",
                                "the example as shipped, calibrated for the tracker `calibrate fit` chooses")):
                if key in r:
                    _print(f"{label} from a survey walk ({r[key]['calibration']})", r[key])


if __name__ == "__main__":
    main()
