"""What the store channel lets any locator reach: a grid filter told what the tracker has to estimate.

The tracker must learn, or do without, four things the simulator knows:
the store's static shadowing field (70 % of the 5 dB, correlated over 3 m),
each phone's TX offset (4 dB), where each shopper faces (bodies take up to
8 dB), and each receiver's bias (2 dB). This benchmark asks what sector
accuracy is possible when some of them are known, so that the targets of
the store channel can be told from what the readings carry.

The same shoppers as `benchmarks/accuracy.py --channel store` (fishmonger,
the run's seed; their readings drawn again through the same channel, the
same store, with fresh fading) are located by a grid Bayes filter: cells of
0.5 m over the sectors, a Gaussian random-walk motion of `--motion-m` per
1 s window, each reading weighed by the Gaussian of the per-packet fading
about the mean the filter is told, what it is not told either marginalised
(offset on a 1 dB grid within +-3 sigma, facing over 8 headings) or treated as
noise (the field: the full 5 dB). The sector is the one holding most of the
posterior, reported after it has led for `--hold` windows and stamped with
the window it first led (what `sector_since` does), and scored by
`simulator.report.sector_metrics` against the run's truth as `santi sim
report` scores the tracker.

Rows "field from the walk" give the filter, instead of the true field, what
the technician's survey walk (`santi sim --survey`, seed --walk-seed) can
tell of it: the residuals of the walk's readings against each receiver's
true model, smoothed as `santi calibrate fit` does (eq. (15),
`--bandwidth-m`), as recorded or with the walker's own body taken out
(eq. (48), B estimated from the walk), or kriged (the Gaussian-process mean
with the channel's own covariance, the best linear estimate). Each such row
also reports the map's error against the true field over the sectors.

Row "told nothing" marginalises the offset and the facing and leaves the
bias (and the field) as noise: what a locator with no calibration could
reach. `--channel` runs another of `simulator.channel.CHANNELS` through the
same rows (on a channel with no static field, `impaired` or `lognormal`,
the rows about the field are left out): there the filter shows what the
uncalibrated targets ask of any locator.

    .venv/bin/python benchmarks/oracle.py [--shoppers 60] [--minutes 10] [--seed 1] [--channel store] [--json]

The filter is no product (its cost is cells x offsets x headings per
reading); it is a yardstick.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from scipy.ndimage import gaussian_filter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import SiteConfig, load_site  # noqa: E402
from agent.observations import Observation  # noqa: E402
from agent.replayfile import RecordReader  # noqa: E402
from agent.site_arrays import SiteArrays, site_arrays  # noqa: E402
from positioning.pathloss import rssi_at_distance, slant_distance  # noqa: E402
from positioning.radiomap import FieldCovariance, fit_radio_map, krige_radio_map  # noqa: E402
from simulator.calibrate import calibration_samples, without_body  # noqa: E402
from simulator.channel import CHANNELS, Channel, store_seed, turns  # noqa: E402
from simulator.report import EmitterEstimates, position_errors, sector_metrics  # noqa: E402
from simulator.run import BLE, SURVEY_PHONES, Seeds, SimConfig, cast, simulate, span, turned  # noqa: E402
from simulator.store import Store  # noqa: E402
from simulator.truth import Truth, read_truth  # noqa: E402

FloatArray = NDArray[np.float64]

SITE = ROOT / "examples" / "fishmonger.toml"
CELL_M = 0.5
OFFSET_STEP_DB = 1.0
"""Spacing of the offsets the filter marginalises, over +-3 sigma of the channel's device offsets."""
HEADINGS = np.linspace(-math.pi, math.pi, 8, endpoint=False)
FLOOR = 1e-4
"""Share of the predicted posterior spread over every cell each window: a lost shopper can be found again."""

ROWS: tuple[tuple[str, frozenset[str], str], ...] = (
    ("told everything", frozenset({"field", "offset", "facing", "bias"}), "true"),
    ("field unknown (noise)", frozenset({"offset", "facing", "bias"}), "true"),
    ("offset unknown", frozenset({"field", "facing", "bias"}), "true"),
    ("facing unknown", frozenset({"field", "offset", "bias"}), "true"),
    ("bias unknown", frozenset({"field", "offset", "facing"}), "true"),
    ("told nothing", frozenset(), "true"),
    ("field from the walk, as recorded", frozenset({"field", "offset", "facing", "bias"}), "walk"),
    ("field from the walk, walker's body out", frozenset({"field", "offset", "facing", "bias"}), "walk-body"),
    ("field from the walk, body out, kriged", frozenset({"field", "offset", "facing", "bias"}), "kriged"),
)
"""(label, what the filter is told, where its field comes from)."""


@dataclass
class Shopper:
    """One shopper's BLE readings regenerated through the channel: ts (n,) s, rssi (n, m), facing (n,), offset, z."""

    emitter_id: str
    ts: FloatArray
    rssi: FloatArray
    facing: FloatArray
    offset: float
    z: float


@dataclass
class Store2D:
    """The filter's grid: cell centres (C, 2) on an (ny, nx) raster, each cell's sector (len(sectors) outside)."""

    cells: FloatArray
    shape: tuple[int, int]
    label: NDArray[np.intp]
    inside: NDArray[np.bool_]
    sector_ids: tuple[str, ...]


def grid(store: Store, arrays: SiteArrays) -> Store2D:
    (x0, y0), (x1, y1) = arrays.bbox
    xs, ys = np.arange(x0 + CELL_M / 2, x1, CELL_M), np.arange(y0 + CELL_M / 2, y1, CELL_M)
    gx, gy = np.meshgrid(xs, ys)
    cells = np.column_stack([gx.ravel(), gy.ravel()])
    label = store.label(cells)
    return Store2D(cells, gx.shape, label, label < len(store.sector_ids), store.sector_ids)


def shoppers(site: SiteConfig, config: SimConfig, truth: Truth, channel: Channel) -> list[Shopper]:
    """Every BLE-carrying shopper's readings, drawn again as `simulator.run.simulate` draws them."""
    store, arrays = Store.of(site), site_arrays(site)
    seeds = Seeds.of(config.seed)
    crew = cast(store, config, seeds, site.tracking.emitter_height_m)
    offsets = channel.device_offsets(len(crew.plans))
    posture = np.random.default_rng(seeds.posture)
    turning = [turns(posture, *span(p), config.channel.turn_interval_s, config.channel.turn_sigma_rad)
               for p in crew.plans]
    listens = np.array([kind in ("ble", "node") for kind in arrays.kinds])
    out = []
    for i, (plan, phone) in enumerate(zip(crew.plans, crew.phones, strict=True)):
        sid = f"S-{plan.index + 1:05d}"
        emitters = sorted(e.emitter_id for e in truth.emitters.values() if e.shopper_id == sid and e.tech == "ble")
        ble = phone.tech == BLE
        if not emitters or not ble.any() or plan.path is None:
            continue
        ts = phone.ts[ble]
        facing = plan.path.facing_at(ts) + turned(turning[i], plan.path.still_at(ts), ts)
        z = float(crew.heights[i])
        rssi = channel.readings(plan.path.at(ts), np.full(ts.size, z), facing, np.full(ts.size, offsets[i]),
                                np.tile(listens, (ts.size, 1)))
        out.append(Shopper(emitters[0], ts, rssi, facing, float(offsets[i]), z))
    return out


def true_field(channel: Channel, cells: FloatArray) -> FloatArray:
    """The static part of the channel's shadowing at cells (C, m), dB."""
    cfg = channel.config
    if channel.fields is None:
        return np.zeros((cells.shape[0], channel.xyz.shape[0]))
    ij = np.floor((cells - channel.origin) / 0.25).astype(np.intp)
    return cfg.sigma_db * math.sqrt(cfg.spatial_fraction) * channel.fields[:, ij[:, 1], ij[:, 0]].T


def walk_field(site: SiteConfig, channel: Channel, walk: Path, cells: FloatArray, how: str,
               bandwidth_m: float) -> tuple[FloatArray, float]:
    """What the survey walk tells of the field at cells (C, m), and the walker's body B taken out (0 if not)."""
    truth = read_truth(walk / "truth.jsonl")
    samples = calibration_samples(site, RecordReader(walk / "observations.jsonl", Observation), truth)
    body = 0.0
    if how != "walk":
        # B as `calibrate fit` estimates it, but all of it out: the filter's mean is the bare model, no body's mean.
        body = without_body(samples)[1]
        samples = {r: s._replace(rssi=s.rssi + body * s.behind) for r, s in samples.items()}
    arrays = site_arrays(site)
    index = {r.id: k for k, r in enumerate(site.receivers)}
    rows, xy, residual = [], [], []
    for rid, s in samples.items():
        r = index[rid]
        model = rssi_at_distance(s.distance, arrays.rssi_at_1m[r], arrays.exponent[r]) + channel.bias[r]
        rows.append(np.full(s.rssi.size, r))
        xy.append(s.xy)
        residual.append(s.rssi - model)
    ri, p, e = np.concatenate(rows), np.concatenate(xy), np.concatenate(residual)
    m = len(site.receivers)
    if how == "kriged":
        # Eq. (50) with the channel's own covariance: the best linear estimate of its field from this walk.
        cfg = channel.config
        covariance = FieldCovariance(cfg.sigma_db**2 * (1 - cfg.spatial_fraction),
                                     cfg.sigma_db**2 * cfg.spatial_fraction, cfg.correlation_m)
        radio_map = krige_radio_map(ri, p, e, m, arrays.bbox, covariance=covariance)
    else:
        radio_map = fit_radio_map(ri, p, e, m, arrays.bbox, bandwidth_m=bandwidth_m)
    return np.stack([radio_map.at(np.full(cells.shape[0], r), cells)[0] for r in range(m)], axis=1), body


def locate(shopper: Shopper, g: Store2D, arrays: SiteArrays, channel: Channel, field: FloatArray,
           told: frozenset[str], motion_m: float) -> tuple[FloatArray, FloatArray, NDArray[np.intp]]:
    """The grid filter over one shopper's windows: window end times, posterior mean positions, leading sectors."""
    cfg = channel.config
    static = "field" in told and channel.fields is not None
    fading = cfg.sigma_db * math.sqrt(1.0 - cfg.spatial_fraction) if static else cfg.sigma_db
    mean = rssi_at_distance(slant_distance(g.cells, arrays.xyz, shopper.z), arrays.rssi_at_1m, arrays.exponent)
    if "bias" in told:
        mean = mean + channel.bias
    if "field" in told:
        mean = mean + field
    reach = math.ceil(3.0 * cfg.device_offset_db / OFFSET_STEP_DB) * OFFSET_STEP_DB
    offsets = np.zeros(1) if "offset" in told else np.arange(-reach, reach + OFFSET_STEP_DB / 2, OFFSET_STEP_DB)
    prior = -0.5 * (offsets / max(cfg.device_offset_db, 1e-9)) ** 2
    if "offset" in told:
        mean = mean + shopper.offset
    to_rx = arrays.xyz[None, :, :2] - g.cells[:, None, :]
    bearing = np.arctan2(to_rx[..., 1], to_rx[..., 0])
    logp = np.where(g.inside, 0.0, -np.inf)[None, :] + prior[:, None]
    window = np.floor(shopper.ts).astype(int)
    n_sectors = len(g.sector_ids)
    out_t, out_xy, out_sector = [], [], []
    for w in range(window[0], window[-1] + 1):
        p = np.exp(logp - logp.max())
        p /= p.sum()
        moved = np.stack([gaussian_filter(row.reshape(g.shape), motion_m / CELL_M, mode="nearest").ravel()
                          for row in p])
        moved = moved * g.inside + FLOOR * g.inside / g.inside.sum() * moved.sum(axis=1, keepdims=True)
        logp = np.log(np.maximum(moved / moved.sum(), 1e-300))
        for j in np.flatnonzero(window == w):
            heard = np.flatnonzero(~np.isnan(shopper.rssi[j]))
            if heard.size:
                logp = logp + loglik(shopper.rssi[j, heard], mean[:, heard], bearing[:, heard], offsets,
                                     [shopper.facing[j]] if "facing" in told else HEADINGS, cfg.body_loss_db, fading)
        logp = np.where(g.inside[None, :], logp, -np.inf)
        p = np.exp(logp - logp.max()).sum(axis=0)
        p /= p.sum()
        out_t.append(w + 1.0)
        out_xy.append(p @ g.cells)
        out_sector.append(int(np.argmax(np.bincount(g.label[g.inside], p[g.inside], minlength=n_sectors))))
    return np.array(out_t), np.array(out_xy), np.array(out_sector)


def loglik(z: FloatArray, mean: FloatArray, bearing: FloatArray, offsets: FloatArray, headings: Any,
           body_db: float, fading_db: float) -> FloatArray:
    """log p(z | offset, cell) (O, C) of one transmission heard at h receivers, facing marginalised over `headings`."""
    per_heading = []
    for heading in headings:
        mu = mean - body_db * np.maximum(0.0, -np.cos(bearing - heading))  # (C, h)
        resid = z[None, None, :] - (mu[None] + offsets[:, None, None])
        per_heading.append(-0.5 * np.sum(resid**2, axis=-1) / fading_db**2)
    stacked = np.stack(per_heading)
    top = stacked.max(axis=0)
    return np.asarray(top + np.log(np.mean(np.exp(stacked - top), axis=0)), dtype=np.float64)


def held(ts: FloatArray, sectors: NDArray[np.intp], hold: int) -> tuple[list[int], FloatArray]:
    """Each window's reported sector, changed once another has led for `hold` windows, and since when it led."""
    report, since = [int(sectors[0])], [float(ts[0])]
    run_sector, run_start, run_len = -1, 0.0, 0
    for t, s in zip(ts[1:].tolist(), sectors[1:].tolist(), strict=True):
        if s == report[-1]:
            run_sector, run_len = -1, 0
        elif s == run_sector:
            run_len += 1
        else:
            run_sector, run_start, run_len = s, t, 1
        if run_sector >= 0 and run_len > hold:
            report.append(run_sector)
            since.append(run_start)
            run_sector, run_len = -1, 0
        else:
            report.append(report[-1])
            since.append(since[-1])
    return report, np.array(since)


def scored(truth: Truth, located: dict[str, tuple[FloatArray, FloatArray, NDArray[np.intp]]],
           sector_ids: tuple[str, ...], hold: int, start_ts: float) -> dict[str, Any]:
    """The filter's windows (times from the run's start) scored as `santi sim report` scores the tracker's."""
    groups = {}
    for emitter, (ts, xy, sectors) in located.items():
        report, since = held(ts, sectors, hold)
        groups[emitter] = EmitterEstimates(start_ts + ts, xy, [sector_ids[s] for s in report], start_ts + since)
    s = sector_metrics(truth, groups, "ble")
    errors = position_errors(truth, groups, "ble")
    return {"median_m": float(np.median(errors)), "sector_accuracy": s.accuracy,
            "false_changes_per_hour": s.false_changes_per_hour, "precision": s.precision, "recall": s.recall,
            "latency_p50_s": s.latency_p50_s, "latency_p90_s": s.latency_p90_s}


def rows_for(channel: Channel) -> tuple[tuple[str, frozenset[str], str], ...]:
    """The ROWS that mean something on `channel`: where it has no static field, none that tell or map one."""
    if channel.fields is not None:
        return ROWS
    return tuple(row for row in ROWS if row[2] == "true" and row[0] != "field unknown (noise)")


def run(args: argparse.Namespace, work: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    site = load_site(SITE)
    config = SimConfig(shoppers=args.shoppers, minutes=args.minutes, seed=args.seed, channel=CHANNELS[args.channel])
    simulate(site, config, work / "shop")
    walk_config = SimConfig(shoppers=1, seed=args.walk_seed, channel=CHANNELS[args.channel], phones=SURVEY_PHONES)
    simulate(site, walk_config, work / "walk", survey=True)
    truth = read_truth(work / "shop" / "truth.jsonl")
    arrays, store = site_arrays(site), Store.of(site)
    seeds = Seeds.of(config.seed)
    channel = Channel(arrays.xyz, arrays.rssi_at_1m, arrays.exponent, arrays.bbox, config.channel,
                      np.random.default_rng(seeds.channel), np.random.default_rng(store_seed(site.store.id)))
    people = shoppers(site, config, truth, channel)
    g = grid(store, arrays)
    truth_field = true_field(channel, g.cells)
    rows = []
    for label, told, source in rows_for(channel):
        progress(label)
        started = time.perf_counter()
        row: dict[str, Any] = {"row": label, "told": sorted(told), "field": source}
        field = truth_field
        if source != "true":
            field, body = walk_field(site, channel, work / "walk", g.cells, source, args.bandwidth_m)
            row["field_rmse_db"] = float(np.sqrt(np.mean((field - truth_field)[g.inside] ** 2)))
            row["walker_body_db"] = body
        located = {p.emitter_id: locate(p, g, arrays, channel, field, told, args.motion_m) for p in people}
        row.update(scored(truth, located, g.sector_ids, args.hold, config.start_ts))
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
    return {"channel": args.channel, "seed": args.seed, "walk_seed": args.walk_seed, "shoppers": args.shoppers, "minutes": args.minutes,
            "hold_windows": args.hold, "motion_m": args.motion_m, "bandwidth_m": args.bandwidth_m,
            "field_sd_db": float(truth_field[g.inside].std()), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shoppers", type=int, default=60)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--channel", choices=list(CHANNELS), default="store",
                        help="The channel shoppers and walk go through (rows about the static field need one).")
    parser.add_argument("--walk-seed", type=int, default=101, help="The survey walk's day (its store is the site's).")
    parser.add_argument("--hold", type=int, default=2, help="Windows another sector must lead before it is reported.")
    parser.add_argument("--motion-m", type=float, default=0.8, help="The filter's random walk per 1 s window, m.")
    parser.add_argument("--bandwidth-m", type=float, default=1.0, help="Smoothing of the walk's map, eq. (15), m.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="santi-oracle-") as tmp, \
            Progress(transient=True, disable=args.json) as bar:
        task = bar.add_task("simulate", total=len(ROWS))

        def progress(label: str) -> None:
            bar.update(task, description=label, advance=0 if label == ROWS[0][0] else 1)

        result = run(args, Path(tmp), progress)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    table = Table("the filter knows", "field error dB", "median m", "sectors", "false/h", "P / R", "entries p50/p90 s",
                  title=(f"Grid filter on the {args.channel} channel: fishmonger, {args.shoppers} shoppers, {args.minutes:g} min, "
                         f"seed {args.seed}, hold {args.hold} windows (true field's spread "
                         f"{result['field_sd_db']:.2f} dB)"))
    for row in result["rows"]:
        error = f"{row['field_rmse_db']:.2f}" if "field_rmse_db" in row else "0 (true)" if "field" in row["told"] \
            else "not told"
        table.add_row(row["row"], error,
                      f"{row['median_m']:.2f}", f"{row['sector_accuracy']:.1%}", f"{row['false_changes_per_hour']:.2f}",
                      f"{row['precision']:.2f} / {row['recall']:.2f}",
                      f"{row['latency_p50_s']:.1f} / {row['latency_p90_s']:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
