"""Throughput and memory of the positioning core, against a per-fix baseline.

A synthetic store (40 m x 30 m, 8 receivers on the walls, 6 sectors) with
emitters walking at about 1 m/s. Each 1 s window, every emitter is heard by
each receiver with probability heard/receivers (about 5 of 8), with 4 dB
noise. Measured on one core, as medians over windows and repeats:

- observations per second through `Tracker.step`, through `Tracker.step`
  followed by `SectorTracker.step` on its snapshot, through the
  `Tracker.step` of a tracker with a radio map (a calibration walk's), of
  one that estimates each phone's TX offset (eq. (16), 4 dB), and of
  everything on: offset state, the body of eqs. (20)-(21) (3 dB, held
  300 s), a radio map, the still grid of eqs. (43)-(47) (5 s, with the
  fingerprint), followed by a `SectorTracker.step` that fuses a sector
  fingerprint (eqs. (18)-(19)) over the window's readings; and the same
  with every track counted as still (`still_speed` above any walk), the
  grid's worst case: a store where every shopper stands, each weighed
  against every cell once every `still_every_s` (its CPU rate over all
  windows, since the benchmark's tracks stop together and are weighed in the
  same windows, and its worst window); and everything on with the grid
  filter of eqs. (51)-(57) as `calibrate fit --grid-filter` turns it on
  (1 m cells, 8 dB body), every track weighed on the block of cells about
  it, on 2 m squares of the store where its posterior spreads past the
  block, and on every cell every `WHOLE_EVERY_S` (its CPU rate over all
  windows, since the whole weighings fall on some windows and not others);
- bytes per track: the bank's arrays (spare capacity included: it doubles),
  what tracemalloc sees held after the births (arrays, id map, id strings),
  and the tracemalloc peak of a steady-state window, each over the tracks;
- the naive baseline in the same run: one robust `least_squares`
  multilateration (`multilaterate.fix`) per emitter per window.

Rates are wall time; on a shared machine a 60 ms window is preempted far
more often than a 1 ms fix, which biases the ratio against the tracker, so
everything-on and the baseline are also timed in this process's CPU time
(`*_cpu_*`, and `everything_on_cpu_vs_naive`).

Run from the repository root:

    python -m benchmarks.positioning            # readable table
    python -m benchmarks.positioning --json     # one JSON object
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: its folder would shadow the `positioning` package
    sys.path[0] = str(Path(__file__).resolve().parents[1])
# One core, as the rates say: a BLAS pool left spinning after one tracker's large product bills its CPU to the next
# tracker's window (everything-on read 32x the baseline in CPU time against 62x by wall, 2026-12-06).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import time
import tracemalloc
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from positioning.fingerprint import Fingerprint, fit_fingerprint
from positioning.gridfilter import GRID_FILTER_CELL_M, GRID_MOTION_M, GridFilter
from positioning.multilaterate import fix
from positioning.pathloss import Receivers, rssi_at_distance, slant_distance
from positioning.radiomap import RadioMap, fit_radio_map
from positioning.sectors import SectorModel, SectorTracker
from positioning.stillgrid import SEGMENT_CORRELATION, STILL_GRID_CELL_M, StillGrid, cell_centres
from positioning.tracker import Tracker, TrackerConfig

WIDTH, DEPTH = 40.0, 30.0
RX_XYZ = np.array(
    [
        [0, 0, 2.8],
        [20, 0, 2.8],
        [40, 0, 2.8],
        [40, 15, 2.8],
        [40, 30, 2.8],
        [20, 30, 2.8],
        [0, 30, 2.8],
        [0, 15, 2.8],
    ],
    dtype=float,
)
RSSI_AT_1M, EXPONENT, SIGMA_DB = -59.0, 2.2, 4.0


def sector_model() -> SectorModel:
    """Six sectors in a 3 x 2 grid, neighbours adjacent, the door in sector 0."""
    cells = [(i, j) for j in range(2) for i in range(3)]
    w, d = WIDTH / 3, DEPTH / 2
    polygons = [
        np.array(
            [[i * w, j * d], [(i + 1) * w, j * d], [(i + 1) * w, (j + 1) * d], [i * w, (j + 1) * d]]
        )
        for i, j in cells
    ]
    adjacency = np.array([[abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for b in cells] for a in cells])
    return SectorModel(polygons, adjacency, np.arange(6) == 0)


@dataclass
class Window:
    """One window of readings, as a source would hand them over, plus ground truth."""

    ids: list[str]
    receiver_index: NDArray[np.intp]
    rssi: NDArray[np.float64]
    truth: NDArray[np.float64]  # (emitters, 2), row i is emitter names[i]


def make_windows(
    emitters: int, windows: int, heard: int, rng: np.random.Generator
) -> tuple[list[str], list[Window]]:
    """Emitters walking at ~1 m/s, bouncing off the walls, heard with 4 dB noise."""
    names = np.array([f"{v:016x}" for v in rng.integers(0, 2**63, emitters)])
    size = np.array([WIDTH, DEPTH])
    pos = rng.uniform(1.0, size - 1.0, (emitters, 2))
    heading = rng.uniform(0, 2 * np.pi, emitters)
    out = []
    for _ in range(windows):
        heading += rng.normal(0.0, 0.4, emitters)
        pos = pos + np.column_stack([np.cos(heading), np.sin(heading)])
        pos = size - np.abs(size - np.abs(pos))  # reflect at the walls
        hear = rng.random((emitters, len(RX_XYZ))) < heard / len(RX_XYZ)
        k, r = np.nonzero(hear)
        d = slant_distance(pos, RX_XYZ, 1.2)[k, r]
        z = rssi_at_distance(d, RSSI_AT_1M, EXPONENT) + rng.normal(0.0, SIGMA_DB, k.size)
        out.append(Window(names[k].tolist(), r.astype(np.intp), z, pos.copy()))
    return names.tolist(), out


def bench_tracker(
    emitters: int, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, float]:
    """Median obs/s of Tracker.step (and + SectorTracker.step) after the births window."""
    track_rates, both_rates, map_rates, offset_rates, ms, obs, errors = [], [], [], [], [], [], []
    full_rates, full_cpu_rates, still_windows, grid_windows = [], [], [], []
    model = sector_model()
    for _ in range(args.repeats):
        names, wins = make_windows(emitters, args.windows + 1, args.heard, rng)
        row = {e: i for i, e in enumerate(names)}
        tracker = Tracker(RX_XYZ, RSSI_AT_1M, EXPONENT, SIGMA_DB, ((0.0, 0.0), (WIDTH, DEPTH)))
        mapped = Tracker(RX_XYZ, RSSI_AT_1M, EXPONENT, SIGMA_DB, ((0.0, 0.0), (WIDTH, DEPTH)),
                         radio_map=walk_map(rng))
        offsets = Tracker(RX_XYZ, RSSI_AT_1M, EXPONENT, SIGMA_DB, ((0.0, 0.0), (WIDTH, DEPTH)),
                          TrackerConfig(offset_sigma_db=4.0))
        sectors = SectorTracker(model)
        fingerprint, radio_map = walk_fingerprint(rng, model.n_sectors), walk_map(rng)
        everything = TrackerConfig(offset_sigma_db=4.0, body_loss_db=3.0, body_hold_s=300.0, still_grid_s=5.0)
        grid = still_grid(model, radio_map, fingerprint, everything)
        full = Tracker(RX_XYZ, RSSI_AT_1M, EXPONENT, SIGMA_DB, ((0.0, 0.0), (WIDTH, DEPTH)), everything,
                       radio_map=radio_map, still_grid=grid)
        on_grid = replace(everything, body_loss_db=8.0, still_grid_s=0.0, grid_motion_m=GRID_MOTION_M,
                          grid_sigma_db=3.0)
        gridded = Tracker(RX_XYZ, RSSI_AT_1M, EXPONENT, SIGMA_DB, ((0.0, 0.0), (WIDTH, DEPTH)), on_grid,
                          radio_map=radio_map, grid_filter=grid_filter(model, radio_map, on_grid))
        gridded_sectors = SectorTracker(model, fingerprint=fingerprint, offset_sigma_db=4.0)
        full_sectors = SectorTracker(model, fingerprint=fingerprint, offset_sigma_db=4.0)
        standing = Tracker(RX_XYZ, RSSI_AT_1M, EXPONENT, SIGMA_DB, ((0.0, 0.0), (WIDTH, DEPTH)),
                           replace(everything, still_speed=10.0), radio_map=radio_map, still_grid=grid)
        for t, w in enumerate(wins):
            t0 = time.perf_counter()
            snap = tracker.step(float(t), w.ids, w.receiver_index, w.rssi)
            t1 = time.perf_counter()
            sectors.step(float(t), snap.emitter_ids, snap.xy, snap.cov)
            t2 = time.perf_counter()
            mapped.step(float(t), w.ids, w.receiver_index, w.rssi)
            t3 = time.perf_counter()
            offsets.step(float(t), w.ids, w.receiver_index, w.rssi)
            t4 = time.perf_counter()
            c4 = time.process_time()
            out = full.step(float(t), w.ids, w.receiver_index, w.rssi)
            full_sectors.step(float(t), out.emitter_ids, out.xy, out.cov,
                              (out.reading_track, w.receiver_index, w.rssi))
            t5 = time.perf_counter()
            c5 = time.process_time()
            standing.step(float(t), w.ids, w.receiver_index, w.rssi)
            c6 = time.process_time()
            out = gridded.step(float(t), w.ids, w.receiver_index, w.rssi)
            gridded_sectors.step(float(t), out.emitter_ids, out.xy, out.cov,
                                 (out.reading_track, w.receiver_index, w.rssi))
            c7 = time.process_time()
            if t == 0:  # births: not steady state
                continue
            grid_windows.append((len(w.ids), c7 - c6))
            still_windows.append((len(w.ids), c6 - c5))
            full_rates.append(len(w.ids) / (t5 - t4))
            full_cpu_rates.append(len(w.ids) / max(c5 - c4, 1e-9))
            offset_rates.append(len(w.ids) / (t4 - t3))
            track_rates.append(len(w.ids) / (t1 - t0))
            both_rates.append(len(w.ids) / (t2 - t0))
            map_rates.append(len(w.ids) / (t3 - t2))
            ms.append(1e3 * (t1 - t0))
            obs.append(len(w.ids))
        truth = wins[-1].truth[[row[e] for e in snap.emitter_ids]]
        errors.append(float(np.median(np.linalg.norm(snap.xy - truth, axis=1))))
    return {
        "emitters": emitters,
        "obs_per_window": float(np.median(obs)),
        "ms_per_window": float(np.median(ms)),
        "tracker_obs_per_s": float(np.median(track_rates)),
        "tracker_and_sectors_obs_per_s": float(np.median(both_rates)),
        "tracker_with_radio_map_obs_per_s": float(np.median(map_rates)),
        "tracker_with_phone_offsets_obs_per_s": float(np.median(offset_rates)),
        "everything_on_obs_per_s": float(np.median(full_rates)),
        "everything_on_cpu_obs_per_s": float(np.median(full_cpu_rates)),
        "grid_filter_cpu_obs_per_s": float(sum(n for n, _ in grid_windows)
                                           / max(sum(c for _, c in grid_windows), 1e-9)),
        # Over all steady windows, not their median: each still track is weighed once every `still_every_s`, and
        # the benchmark's tracks all stood still at once, so the grid's cost falls on one window in a few.
        "tracker_all_still_cpu_obs_per_s": float(sum(n for n, _ in still_windows)
                                                 / max(sum(c for _, c in still_windows), 1e-9)),
        "tracker_all_still_worst_window_cpu_ms": float(1e3 * max(c for _, c in still_windows)),
        "median_error_m": float(np.median(errors)),
    }


def still_grid(model: SectorModel, radio_map: RadioMap, fingerprint: Fingerprint | None, config: TrackerConfig,
               cell_m: float = STILL_GRID_CELL_M, segment_correlation: float = SEGMENT_CORRELATION,
               sigma_db: float = 0.0) -> StillGrid:
    """The still grid of eqs. (43)-(47) over the store's sectors, as `agent.site_arrays.still_grid` builds it."""
    receivers = Receivers.of(RX_XYZ, RSSI_AT_1M, EXPONENT, SIGMA_DB, radio_map)
    box = ((0.0, 0.0), (WIDTH, DEPTH))
    sector = model.label(cell_centres(box, cell_m))
    return StillGrid.of(receivers, box, cell_m=cell_m, body_loss_db=config.body_loss_db,
                        offset_sigma_db=config.offset_sigma_db, inside=np.where(sector < model.n_sectors, sector, -1),
                        fingerprint=fingerprint, segment_correlation=segment_correlation, sigma_db=sigma_db)


def grid_filter(model: SectorModel, radio_map: RadioMap, config: TrackerConfig) -> GridFilter:
    """The grid filter of eqs. (51)-(57) over the store's sectors, as `agent.site_arrays.grid_filter` builds it."""
    grid = still_grid(model, radio_map, None, config, GRID_FILTER_CELL_M, segment_correlation=0.0,
                      sigma_db=config.grid_sigma_db)
    return GridFilter.over(grid, ((0.0, 0.0), (WIDTH, DEPTH)), config.grid_motion_m,
                           offset_drift_db=config.offset_drift_db)


def walk_fingerprint(rng: np.random.Generator, sectors: int) -> Fingerprint:
    """A sector fingerprint as a calibration walk would leave (its values do not matter for speed)."""
    window = rng.integers(0, 600, 20_000)
    return fit_fingerprint(window, rng.integers(0, len(RX_XYZ), 20_000), rng.normal(-70.0, 8.0, 20_000),
                           rng.integers(0, sectors, 600), sectors, len(RX_XYZ))


def walk_map(rng: np.random.Generator) -> RadioMap:
    """A radio map as a calibration walk of the store would leave (its values do not matter for speed)."""
    xy = rng.uniform((0.0, 0.0), (WIDTH, DEPTH), (20_000, 2))
    receiver = rng.integers(0, len(RX_XYZ), 20_000)
    return fit_radio_map(receiver, xy, rng.normal(0.0, 4.0, 20_000), len(RX_XYZ), ((0.0, 0.0), (WIDTH, DEPTH)))


def bench_memory(
    emitters: int, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, float]:
    """Bytes per track: the bank's arrays, and tracemalloc's view of a full window."""
    _, wins = make_windows(emitters, 3, args.heard, rng)
    tracker = Tracker(RX_XYZ, RSSI_AT_1M, EXPONENT, SIGMA_DB, ((0.0, 0.0), (WIDTH, DEPTH)))
    tracemalloc.start()
    tracker.step(0.0, wins[0].ids, wins[0].receiver_index, wins[0].rssi)
    held, _ = tracemalloc.get_traced_memory()  # the bank after births: arrays, id map
    tracemalloc.reset_peak()
    tracker.step(1.0, wins[1].ids, wins[1].receiver_index, wins[1].rssi)
    _, peak = tracemalloc.get_traced_memory()  # held + a steady-state window's temporaries
    tracemalloc.stop()
    return {
        "bank_bytes_per_track": tracker.nbytes / len(tracker),
        "held_bytes_per_track": held / len(tracker),
        "peak_bytes_per_track": peak / len(tracker),
    }


def bench_naive(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, float]:
    """One least-squares multilateration per emitter per window: obs/s."""
    names, wins = make_windows(args.naive_fixes, 2, args.heard, rng)
    w = wins[1]
    ids = np.array(w.ids)
    rates, cpu_rates, errors = [], [], []
    for _ in range(args.repeats):
        for i, e in enumerate(names):
            mine = ids == e
            if not mine.any():
                continue
            ri = w.receiver_index[mine]
            t0, c0 = time.perf_counter(), time.process_time()
            f = fix(RX_XYZ[ri], w.rssi[mine], RSSI_AT_1M, EXPONENT, SIGMA_DB)
            rates.append(mine.sum() / (time.perf_counter() - t0))
            cpu_rates.append(mine.sum() / max(time.process_time() - c0, 1e-9))
            if f.ok:
                errors.append(float(np.linalg.norm(f.xy - w.truth[i])))
    return {
        "naive_obs_per_s": float(np.median(rates)),
        "naive_cpu_obs_per_s": float(np.median(cpu_rates)),
        "naive_median_error_m": float(np.median(errors)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--emitters", type=int, nargs="+", default=[100, 1000, 5000], help="concurrent emitters"
    )
    parser.add_argument(
        "--windows", type=int, default=10, help="steady-state 1 s windows per repeat"
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats (medians are taken)")
    parser.add_argument(
        "--heard",
        type=float,
        default=5.0,
        help="receivers hearing an emitter per window, on average",
    )
    parser.add_argument(
        "--naive-fixes", type=int, default=300, help="emitters in the naive baseline"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    wall, cpu = time.perf_counter(), time.process_time()
    naive = bench_naive(args, rng)
    rows = []
    for k in args.emitters:
        row = bench_tracker(k, args, rng) | bench_memory(k, args, rng)
        row["speedup_vs_naive"] = row["tracker_obs_per_s"] / naive["naive_obs_per_s"]
        row["everything_on_vs_naive"] = row["everything_on_obs_per_s"] / naive["naive_obs_per_s"]
        row["everything_on_cpu_vs_naive"] = row["everything_on_cpu_obs_per_s"] / naive["naive_cpu_obs_per_s"]
        row["all_still_cpu_vs_naive"] = row["tracker_all_still_cpu_obs_per_s"] / naive["naive_cpu_obs_per_s"]
        row["grid_filter_cpu_vs_naive"] = row["grid_filter_cpu_obs_per_s"] / naive["naive_cpu_obs_per_s"]
        rows.append(row)
    # CPU time over wall time: ~1.0 means the run used one core.
    cpu_per_wall = (time.process_time() - cpu) / (time.perf_counter() - wall)
    if args.json:
        report = {"receivers": len(RX_XYZ), "heard": args.heard, "cpu_per_wall": cpu_per_wall}
        print(json.dumps(report | {"naive": naive, "tracker": rows}, indent=2))
        return 0
    print(
        f"{len(RX_XYZ)} receivers, ~{args.heard:g} heard per emitter per 1 s window, 4 dB noise; "
        f"medians; CPU/wall {cpu_per_wall:.2f}"
    )
    columns = [  # header, key, format
        ("emitters", "emitters", "{:>8.0f}"),
        ("obs/win", "obs_per_window", "{:>8.0f}"),
        ("ms/win", "ms_per_window", "{:>8.2f}"),
        ("tracker obs/s", "tracker_obs_per_s", "{:>14,.0f}"),
        ("+sectors obs/s", "tracker_and_sectors_obs_per_s", "{:>15,.0f}"),
        ("map obs/s", "tracker_with_radio_map_obs_per_s", "{:>12,.0f}"),
        ("offset obs/s", "tracker_with_phone_offsets_obs_per_s", "{:>13,.0f}"),
        ("x naive", "speedup_vs_naive", "{:>8.0f}"),
        ("all-on obs/s", "everything_on_obs_per_s", "{:>13,.0f}"),
        ("all x naive", "everything_on_vs_naive", "{:>12.0f}"),
        ("all CPU x naive", "everything_on_cpu_vs_naive", "{:>16.0f}"),
        ("still CPU obs/s", "tracker_all_still_cpu_obs_per_s", "{:>16,.0f}"),
        ("still CPU x naive", "all_still_cpu_vs_naive", "{:>18.0f}"),
        ("still worst ms", "tracker_all_still_worst_window_cpu_ms", "{:>14,.0f}"),
        ("grid CPU obs/s", "grid_filter_cpu_obs_per_s", "{:>15,.0f}"),
        ("grid CPU x naive", "grid_filter_cpu_vs_naive", "{:>17.0f}"),
        ("bank B/trk", "bank_bytes_per_track", "{:>11.0f}"),
        ("held B/trk", "held_bytes_per_track", "{:>11.0f}"),
        ("peak B/trk", "peak_bytes_per_track", "{:>11.0f}"),
        ("med err m", "median_error_m", "{:>10.2f}"),
    ]
    widths = [len(fmt.format(0)) for _, _, fmt in columns]
    print(" ".join(f"{h:>{w}}" for (h, _, _), w in zip(columns, widths, strict=True)))
    for r in rows:
        print(" ".join(fmt.format(r[key]) for _, key, fmt in columns))
    print(
        f"naive baseline, one least_squares fix per emitter per window: "
        f"{naive['naive_obs_per_s']:,.0f} obs/s, median error {naive['naive_median_error_m']:.2f} m"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
