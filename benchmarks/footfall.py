"""Occupancy and footfall from anonymous radio on the simulated fishmonger (issue #19).

The day: examples/fishmonger.toml on the ``store`` channel, 200 shoppers
arriving over two hours, half of them without the app; phones without it
probe over Wi-Fi as `simulator.anonymous` draws them and half of them
advertise over BLE from rotating addresses; 600 passers-by (3x the
shoppers) on the pavement, 70 % of them probing; four fixed devices
inside (PC, printer, till, PC) on from the start.

The live estimate `positioning.occupancy.estimate_occupancy` is asked every
minute, as the agent asks it, with the Wi-Fi probes of the last two hours
(``--tech wifi+ble`` adds the BLE adverts, one row per address, receiver
and 10 s). Every parameter is fitted on seed 0 only: the thresholds of
eq. (37) by a small grid, then people per device (34) and entries per
counted visit; seeds 1-3 are scored with them:

- occupancy MAE over the minute samples, as % of the mean true occupancy
  (target <= 10 %);
- footfall per hour: estimated entries over each whole hour of the arrival
  window against the true entries (target within +-10 %), and the total;
- passers-by counted inside: the share of passers-by any of whose stays
  the estimate counted as a person at any sample (target <= 5 %), from
  the simulator's truth of who sent what;
- people per sector (eq. 42, where eq. 41 places counted devices: with BLE
  rows), MAE per sector against the simulator's shoppers per sector, beside
  the store's count split by floor area;
- time per estimate call (median, ms) at 200 and at 500 shoppers (1,500
  passers-by), the two-hour window the agent keeps.

``--outline on`` (the default) places stays heard by two or more receivers
against the outline (eq. 41) and fits its wall loss and (42)'s lambda on
seed 0 as well; ``--fit-every`` spaces the samples the grids compare.

    .venv/bin/python benchmarks/footfall.py [--json] [--tech wifi|wifi+ble] [--outline on|off] [--fit-every S]
                                            [--work DIR] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import load_site  # noqa: E402
from agent.site_arrays import occupancy_outline  # noqa: E402
from positioning.occupancy import (  # noqa: E402
    EstimateConfig,
    LinkConfig,
    OccupancyEstimate,
    Outline,
    StayVerdicts,
    classify_stays,
    estimate_occupancy,
    fit_occupancy,
)
from simulator.anonymous import CrowdConfig  # noqa: E402
from simulator.channel import CHANNELS  # noqa: E402
from simulator.run import PhoneConfig, SimConfig, simulate  # noqa: E402
from simulator.truth import Truth, read_truth  # noqa: E402

SITE = ROOT / "examples" / "fishmonger.toml"
FIT_SEED = 0
SCORE_SEEDS = (1, 2, 3)
SHOPPERS, TIMING_SHOPPERS = 200, 500
ARRIVAL_MIN = 120.0
SAMPLE_S = 60.0
BLE_BUCKET_S = 10.0
GRID: dict[str, tuple[Any, ...]] = {
    "min_rssi_dbm": (-80.0, -78.0, -76.0, -74.0),
    "still_sd_db": (2.8, 3.2, 3.6),
    "min_span_s": (0.0, 60.0),
    "hold_s": (30.0, 60.0, 90.0),
    "still_s": (300.0, 600.0),
}
"""The thresholds of eq. (38) and the reach h of (37) the fit on seed 0 chooses from."""
LINK_GRID: tuple[LinkConfig, ...] = tuple(
    LinkConfig(gap_s=gap, seq_slack=slack, seq_rate_per_s=rate, rssi_step_db=step)
    for gap in (120.0, 180.0) for slack, rate in ((64, 4.0), (32, 0.5)) for step in (15.0, 25.0))
"""Eq. (30)'s sequence bounds the fit chooses from next, with the thresholds it chose."""
SECTOR_PRIOR_GRID = (0.0, 5.0, 10.0, 20.0, 50.0)
"""lambda of eq. (42) the fit chooses from (with ``--outline on``), by the sector MAE."""
WALL_GRID = (0.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0)
"""The outer wall's loss in eq. (41)'s model the fit chooses from last (with ``--outline on``)."""
BASE = EstimateConfig(window_s=7200.0, lead_s=120.0, interval_s=3600.0, gap_s=300.0, still_s=600.0,
                      fixture_s=2700.0, visit_s=120.0)


def day(shoppers: int, seed: int) -> SimConfig:
    """The benchmark's simulated day for one seed."""
    return SimConfig(shoppers=shoppers, minutes=ARRIVAL_MIN, seed=seed, channel=CHANNELS["store"],
                     phones=PhoneConfig(app_share=0.5),
                     crowd=CrowdConfig(anon_ble_share=0.5, passers=3 * shoppers, passer_probe_share=0.7, fixtures=4))


@dataclass
class Receptions:
    """One run's receptions as the estimator takes them (time order), and the truth owner of each row."""

    t: np.ndarray
    mac: np.ndarray
    signature: np.ndarray
    sequence: np.ndarray
    randomised: np.ndarray
    rssi: np.ndarray
    receiver: np.ndarray
    owner: np.ndarray

    def window(self, now: float, span_s: float) -> slice:
        """The rows of the last ``span_s`` before ``now``: what the agent keeps for the estimate."""
        lo, hi = np.searchsorted(self.t, [now - span_s, now], side="right")
        return slice(int(lo), int(hi))

    def estimate(self, now: float, config: EstimateConfig) -> OccupancyEstimate:
        r = self.window(now, config.window_s)
        return estimate_occupancy(self.t[r], self.mac[r], self.signature[r], self.sequence[r], self.randomised[r],
                                  self.rssi[r], self.receiver[r], now, config=config)

    def classify(self, now: float, config: EstimateConfig) -> tuple[np.ndarray, StayVerdicts]:
        """The verdicts of eq. (38) and the truth owner of each row they kept."""
        r = self.window(now, config.window_s)
        verdict = classify_stays(self.t[r], self.mac[r], self.signature[r], self.sequence[r], self.randomised[r],
                                 self.rssi[r], self.receiver[r], now, config=config)
        return self.owner[r][verdict.rows], verdict


def receptions(out: Path, truth: Truth, with_ble: bool) -> Receptions:
    """Read observations.jsonl: Wi-Fi probes all, BLE (when asked) one row per address, receiver and bucket.

    Receivers are coded by their row in the site, as the agent's stage codes them (eq. 41's grid needs it)."""
    rx_codes = {receiver.id: code for code, receiver in enumerate(load_site(SITE).receivers)}
    codes: dict[str, dict[str, int]] = {"mac": {}, "sig": {}, "rx": rx_codes}
    rows: list[tuple[float, int, int, int, bool, float, int, str]] = []
    seen_ble: set[tuple[str, str, int]] = set()
    with (out / "observations.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            wifi = '"tech":"wifi"' in line
            if not wifi and not with_ble:
                continue
            o = json.loads(line)
            if not wifi:
                bucket = (o["emitter_id"], o["receiver_id"], int(o["ts"] // BLE_BUCKET_S))
                if bucket in seen_ble:
                    continue
                seen_ble.add(bucket)
            probe = o["probe"]
            rows.append((o["ts"], codes["mac"].setdefault(o["emitter_id"], len(codes["mac"])),
                         -1 if probe is None else codes["sig"].setdefault(probe["signature"], len(codes["sig"])),
                         -1 if probe is None or probe["sequence"] is None else probe["sequence"],
                         True if probe is None else probe["randomised"], o["rssi_dbm"],
                         codes["rx"][o["receiver_id"]],
                         truth.emitters[o["emitter_id"]].shopper_id))
    t, mac, sig, seq, rnd, z, rx, owner = (np.array(c) for c in zip(*rows, strict=True))
    return Receptions(t.astype(float), mac.astype(np.int64), sig.astype(np.int64), seq.astype(np.int64),
                      rnd.astype(bool), z.astype(float), rx.astype(np.int64), owner)


@dataclass
class Run:
    truth: Truth
    data: Receptions
    start: float
    end: float


def load_run(work: Path, shoppers: int, seed: int, with_ble: bool) -> Run:
    out = work / f"fishmonger-{shoppers}-seed{seed}"
    if not (out / "truth.jsonl").is_file():
        simulate(load_site(SITE), day(shoppers, seed), out)
    truth = read_truth(out / "truth.jsonl")
    assert truth.run is not None
    return Run(truth, receptions(out, truth, with_ble), truth.run.start_ts, truth.run.end_ts)


def device_counts(run: Run, config: EstimateConfig, every_s: float = SAMPLE_S
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample times at (K,) ``every_s`` apart, devices counted (K,) with alpha = 1, beta = 0, their true occupancy."""
    raw = replace(config, people_per_device=1.0, people_offset=0.0, residual_sd=0.0)
    nows = np.arange(run.start + config.lead_s, run.end + config.lead_s, every_s)
    counts = np.array([run.data.estimate(now, raw).count for now in nows])
    at = nows - config.lead_s
    return at, counts, run.truth.people_inside(at)


def hours(run: Run) -> np.ndarray:
    """Edges of the whole hours of the arrival window."""
    return run.start + 3600.0 * np.arange(int(ARRIVAL_MIN // 60) + 1)


def counted_visits(run: Run, config: EstimateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Estimated entries per whole hour (with the config's alpha_e) and the true entries."""
    edges = hours(run)
    estimated = np.array([run.data.estimate(end + config.lead_s, config).entries for end in edges[1:]])
    return estimated, run.truth.entries(edges)


def _best(run: Run, candidates: list[EstimateConfig], every_s: float) -> tuple[float, EstimateConfig]:
    """The candidate whose counts (every ``every_s``), through the least-squares line (34), come closest to the truth."""
    best: tuple[float, EstimateConfig] | None = None
    for config in candidates:
        _, counts, truth = device_counts(run, config, every_s)
        line = fit_occupancy(counts, truth)
        mae = float(np.abs(np.maximum(0.0, line.alpha * counts + line.beta) - truth).mean())
        if best is None or mae < best[0]:
            best = (mae, replace(config, people_per_device=line.alpha, people_offset=line.beta, residual_sd=line.s))
    assert best is not None
    return best


def fit(run: Run, geometry: bool, every_s: float) -> tuple[EstimateConfig, dict[str, Any]]:
    """Eq. (38)'s thresholds by grid, then (30)'s sequence bounds, (41)'s wall loss (with an outline), then (34) and
    alpha_e, all on the fitting seed's day; the grids compare counts ``every_s`` apart, (34) and alpha_e all."""
    base = replace(BASE, outline=outline_for(WALL_GRID[0]) if geometry else None)
    _, chosen = _best(run, [replace(base, **dict(zip(GRID, values, strict=True)))
                            for values in itertools.product(*GRID.values())], every_s)
    _, chosen = _best(run, [replace(chosen, link=link) for link in LINK_GRID], every_s)
    wall = None
    if geometry:
        _, chosen = _best(run, [replace(chosen, outline=outline_for(loss)) for loss in WALL_GRID], every_s)
        wall = next(loss for loss in WALL_GRID if outline_for(loss) is chosen.outline)
    best = _best(run, [chosen], SAMPLE_S)
    config = best[1]
    counted, true = counted_visits(run, replace(config, people_per_entry=1.0))
    config = replace(config, people_per_entry=float(true.sum() / max(counted.sum(), 1.0)))
    if geometry:
        nows = np.arange(run.start + config.lead_s, run.end + config.lead_s, every_s)
        by_prior = {}
        for prior in SECTOR_PRIOR_GRID:
            candidate = replace(config, sector_prior_devices=prior)
            scored = sector_scores(run, candidate, [run.data.estimate(now, candidate) for now in nows],
                                   nows - config.lead_s)
            by_prior[prior] = scored["sector_mae_persons"] if scored and scored.get("samples_with_sectors") else np.inf
        config = replace(config, sector_prior_devices=min(by_prior, key=lambda prior: by_prior[prior]))
    return config, {"fit_mae_persons": round(best[0], 3), "wall_loss_db": wall}


_OUTLINES: dict[float, Outline] = {}


def outline_for(wall_loss_db: float) -> Outline:
    """Eq. (41)'s grid for the benchmark's site with that wall loss (built once each)."""
    if wall_loss_db not in _OUTLINES:
        _OUTLINES[wall_loss_db] = occupancy_outline(load_site(SITE), wall_loss_db)
    return _OUTLINES[wall_loss_db]


def passers_counted(run: Run, config: EstimateConfig, nows: np.ndarray) -> tuple[float, float]:
    """Share of passers-by ever counted as a person, and fixed devices counted per sample (means)."""
    passers: set[str] = set()
    fixtures = 0
    for now in nows:
        owner, verdict = run.data.classify(now, config)
        at = now - config.lead_s
        found = verdict.found
        counted = verdict.keep & (found.start <= at) & (at < found.end)
        owners = owner[np.isin(found.of_probe, np.flatnonzero(counted))]
        passers.update(o for o in owners if o.startswith("P-"))
        fixtures += len({o for o in owners if o.startswith("F-")})
    return len(passers) / max(len(run.truth.passers), 1), fixtures / max(nows.size, 1)


def sector_truth(run: Run, at: np.ndarray, sector_ids: tuple[str, ...]) -> np.ndarray:
    """Shoppers (K, S) in each sector at each time, by the sector of their last true position before it."""
    index = {sector: k for k, sector in enumerate(sector_ids)}
    out = np.zeros((at.size, len(sector_ids)))
    for sid, track in run.truth.tracks.items():
        shopper = run.truth.shoppers[sid]
        inside = (shopper.enter_ts <= at) & (at < shopper.leave_ts)
        last = np.searchsorted(track.ts, at, side="right") - 1
        for k in np.flatnonzero(inside & (last >= 0)):
            sector = index.get(track.sector[last[k]] or "")
            if sector is not None:
                out[k, sector] += 1.0
    return out


def sector_scores(run: Run, config: EstimateConfig, estimates: list[OccupancyEstimate], at: np.ndarray
                  ) -> dict[str, Any] | None:
    """Per-sector people (the store count split as the placed devices are) against the truth per sector, beside the
    store count split by floor area; over the samples that have sector figures."""
    outline = config.outline
    if outline is None or not outline.sectors:
        return None
    with_sectors = [k for k, e in enumerate(estimates) if e.sectors is not None]
    if not with_sectors:
        return {"samples_with_sectors": 0}
    ids = tuple(sector.id for sector in load_site(SITE).sectors)
    truth = sector_truth(run, at[with_sectors], ids)
    ours = np.array([estimates[k].sectors for k in with_sectors])
    area = np.bincount(outline.sector[outline.inside], minlength=outline.sectors + 1)[:outline.sectors].astype(float)
    by_area = np.array([estimates[k].count for k in with_sectors])[:, None] * (area / area.sum())[None, :]
    located = [estimates[k].located for k in with_sectors]
    return {"samples_with_sectors": len(with_sectors), "located_median": float(np.median(located)),
            "sector_mae_persons": round(float(np.abs(ours - truth).mean()), 3),
            "by_area_mae_persons": round(float(np.abs(by_area - truth).mean()), 3),
            "mean_per_sector": round(float(truth.mean()), 3),
            "per_sector_mae": dict(zip(ids, np.round(np.abs(ours - truth).mean(axis=0), 3).tolist(), strict=True))}


def score(run: Run, config: EstimateConfig) -> dict[str, Any]:
    nows = np.arange(run.start + config.lead_s, run.end + config.lead_s, SAMPLE_S)
    estimates = [run.data.estimate(now, config) for now in nows]
    at = nows - config.lead_s
    truth = run.truth.people_inside(at)
    count = np.array([e.count for e in estimates])
    sd = np.array([e.count_sd for e in estimates])
    estimated, true = counted_visits(run, config)
    passers, fixtures = passers_counted(run, config, nows)
    mae = float(np.abs(count - truth).mean())
    return {
        "samples": int(nows.size), "mean_occupancy": round(float(truth.mean()), 2),
        "occupancy_mae_persons": round(mae, 3), "occupancy_mae_pct": round(100.0 * mae / float(truth.mean()), 2),
        "coverage_95": round(float(np.mean(np.abs(count - truth) <= 1.96 * sd)), 3),
        "entries_per_hour": [round(float(v), 1) for v in estimated], "true_entries_per_hour": true.tolist(),
        "footfall_error_pct_per_hour": [round(float(100.0 * (e / t - 1.0)), 2)
                                        for e, t in zip(estimated, true, strict=True)],
        "footfall_error_pct_total": round(100.0 * (float(estimated.sum()) / float(true.sum()) - 1.0), 2),
        "passers_counted_pct": round(100.0 * passers, 2), "fixtures_counted_per_sample": round(fixtures, 3),
        "sectors": sector_scores(run, config, estimates, at),
    }


def call_time_ms(run: Run, config: EstimateConfig) -> dict[str, float]:
    """Median and p90 wall time of one estimate call over the busy part of the day, and rows per call."""
    nows = np.arange(run.start + 1800.0, run.end, 300.0)
    times, sizes = [], []
    for now in nows:
        rows = run.data.window(now, config.window_s)
        started = time.perf_counter()
        run.data.estimate(now, config)
        times.append(1000.0 * (time.perf_counter() - started))
        sizes.append(rows.stop - rows.start)
    return {"median_ms": round(float(np.median(times)), 2), "p90_ms": round(float(np.percentile(times, 90)), 2),
            "rows_median": int(np.median(sizes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tech", choices=["wifi", "wifi+ble"], default="wifi")
    parser.add_argument("--outline", choices=["on", "off"], default="on",
                        help="place stays heard by two or more receivers against the outline, eq. (41) (on)")
    parser.add_argument("--fit-every", type=float, default=SAMPLE_S,
                        help=f"seconds between the samples the grids compare ({SAMPLE_S:g}; more is faster)")
    parser.add_argument("--work", type=Path, help="Keep the simulated days here (default: a temporary directory).")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SCORE_SEEDS),
                        help=f"Seeds to score (never {FIT_SEED}, the one fitted on).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if FIT_SEED in args.seeds:
        parser.error(f"seed {FIT_SEED} is the one the parameters are fitted on; score others")
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        with_ble = args.tech == "wifi+ble"
        config, fitted = fit(load_run(work, SHOPPERS, FIT_SEED, with_ble), args.outline == "on", args.fit_every)
        seeds = {seed: score(load_run(work, SHOPPERS, seed, with_ble), config) for seed in args.seeds}
        timing = {n: call_time_ms(load_run(work, n, args.seeds[0], with_ble), config)
                  for n in (SHOPPERS, TIMING_SHOPPERS)}
    result = {
        "scenario": f"{SITE.name}, store channel, {SHOPPERS} shoppers over {ARRIVAL_MIN:g} min, half with the app, "
                    f"{3 * SHOPPERS} passers-by, 4 fixed devices; fitted on seed {FIT_SEED}",
        "tech": args.tech, "outline": args.outline, "fit_every_s": args.fit_every,
        "config": {k: v for k, v in asdict(replace(config, outline=None)).items() if k != "outline"}, **fitted,
        "seeds": seeds, "call_time": timing,
        "targets": {
            "occupancy_mae_le_10pct": all(s["occupancy_mae_pct"] <= 10.0 for s in seeds.values()),
            "footfall_per_hour_within_10pct": all(abs(e) <= 10.0 for s in seeds.values()
                                                  for e in s["footfall_error_pct_per_hour"]),
            "passers_counted_le_5pct": all(s["passers_counted_pct"] <= 5.0 for s in seeds.values()),
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"== {result['scenario']} ({args.tech}, outline {args.outline}, wall loss {fitted['wall_loss_db']} dB)")
    print(f"fitted: {json.dumps(result['config'])}")
    for seed, row in seeds.items():
        print(f"seed {seed}: occupancy MAE {row['occupancy_mae_persons']:.2f} persons = {row['occupancy_mae_pct']:.1f} % "
              f"of {row['mean_occupancy']:.1f}; footfall per hour {row['footfall_error_pct_per_hour']} % "
              f"(total {row['footfall_error_pct_total']:+.1f} %); passers counted {row['passers_counted_pct']:.1f} %; "
              f"fixtures counted {row['fixtures_counted_per_sample']:.2f} per sample; 95 % coverage {row['coverage_95']:.0%}")
        if row["sectors"] and row["sectors"].get("samples_with_sectors"):
            print(f"  per sector: MAE {row['sectors']['sector_mae_persons']:.2f} persons against "
                  f"{row['sectors']['by_area_mae_persons']:.2f} by floor area (mean {row['sectors']['mean_per_sector']:.2f}"
                  f" per sector, {row['sectors']['samples_with_sectors']} samples)")
    for n, row in timing.items():
        print(f"{n} shoppers: estimate call median {row['median_ms']:.1f} ms, p90 {row['p90_ms']:.1f} ms "
              f"({row['rows_median']} rows)")
    print("targets: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in result["targets"].items()))


if __name__ == "__main__":
    main()
