"""Castillo-Cara et al. ESIIAB BLE fingerprints: six beacons, a phone, 28 small sectors on two floors.

Rows are untimed RSSI vectors (B1..B6) labelled with a sector; coordinates
exist only as our digitisation (approx_layout_digitized.csv, +-0.5 m). Roles
are swapped with respect to a store: the beacons are fixed and the phone
listens, which is the same geometry for the model, so the beacons become
'receivers' at their digitised positions (z = 6 m) and each row one window.
Sectors are the grid cells around the digitised centres.

Beside the path-loss model, the sector fingerprint of
``positioning.fingerprint`` (eq. (18)) is fitted on the training rows'
sector labels alone (no coordinates: the digitised ones are approximate) and
classifies each test row by itself, and fused with the model's sector
probability by eq. (19). Two splits: the seeded random 70/30 per sector the
published figures used, and a harder one that holds out whole blocks of
BLOCK_ROWS consecutive rows (rows are in recording order, so a test row's
neighbours in time are not in training).

The published table has a third column, both floors as one set of 28
sectors (the files without a floor suffix). Those rows are the fingerprint
alone: the path-loss model here places the phone in the plane of one floor,
and floor A's sectors lie above floor B's first column, so in the plane it
cannot tell them apart.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from positioning.fingerprint import fit_fingerprint, fuse
from positioning.multilaterate import fix
from positioning.pathloss import fit_calibration
from positioning.sectors import SectorModel

FloatArray = NDArray[np.float64]

ALL_FLOORS = "A+B"
"""The floor name of the files that hold both floors, sectors 1-7 floor A's and 8-28 floor B's."""

PHONE_Z = {"A": 4.7, "B": 1.2}
"""Phone height: 1.2 m above each floor; the first floor is assumed 3.5 m up (not published)."""

PUBLISHED = {  # technical report Table 2, best of RF / ET / GBM, accuracy
    ("A", 0): 0.7086, ("A", -4): 0.7343, ("A", -8): 0.7329,
    ("B", 0): 0.5971, ("B", -4): 0.5838, ("B", -8): 0.6495,
    (ALL_FLOORS, 0): 0.5904, (ALL_FLOORS, -4): 0.5800, (ALL_FLOORS, -8): 0.6268,
}
FILES = {0: "Tx0", -4: "Tx_4", -8: "Tx_8"}
BLOCK_ROWS = 10
"""Rows held out together by the block split: ten consecutive samples of one sector."""


@dataclass(frozen=True, eq=False)
class Layout:
    beacons: FloatArray  # (6, 3)
    centres: dict[str, FloatArray]  # floor -> (S, 2), sector label 1..S in row order


def read_layout(root: Path) -> Layout:
    beacons: dict[str, list[float]] = {}
    sectors: dict[str, list[tuple[int, float, float]]] = {"A": [], "B": []}
    with (root / "approx_layout_digitized.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["kind"] == "beacon":
                beacons[row["id"]] = [float(row["x_m_approx"]), float(row["y_m_approx"]), float(row["z_m_or_note"])]
            else:
                floor = row["id"][-1]
                sectors[floor].append((int(row["id"][:-1]), float(row["x_m_approx"]), float(row["y_m_approx"])))
    centres = {f: np.array([[x, y] for _, x, y in sorted(items)]) for f, items in sectors.items()}
    return Layout(np.array([beacons[f"B{i}"] for i in range(1, 7)]), centres)


def _edges(values: FloatArray) -> FloatArray:
    v = np.unique(np.round(values, 3))
    mids = (v[1:] + v[:-1]) / 2.0
    half = (v[1] - v[0]) / 2.0 if v.size > 1 else 0.6
    return np.concatenate([[v[0] - half], mids, [v[-1] + half]])


def sector_polygons(centres: FloatArray) -> list[FloatArray]:
    """Grid cells around the digitised centres, bounded halfway to the neighbours."""
    ex, ey = _edges(centres[:, 0]), _edges(centres[:, 1])
    polygons = []
    for x, y in centres:
        i, j = np.searchsorted(ex, x) - 1, np.searchsorted(ey, y) - 1
        polygons.append(np.array([[ex[i], ey[j]], [ex[i + 1], ey[j]], [ex[i + 1], ey[j + 1]], [ex[i], ey[j + 1]]]))
    return polygons


def read_rows(root: Path, floor: str, tx: int) -> tuple[FloatArray, NDArray[np.intp]]:
    """RSSI (rows, 6) and sector index (rows,) of one floor ("A", "B" or ALL_FLOORS) at one TX power."""
    suffix = "" if floor == ALL_FLOORS else floor
    with (root / "data" / f"{FILES[tx]}{suffix}.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rssi = np.array([[float(r[f"B{i}"]) for i in range(1, 7)] for r in rows])
    return rssi, np.array([int(r["Sector"]) - 1 for r in rows], dtype=np.intp)


def held_out(label: NDArray[np.intp], seed: int, block: int = 1) -> NDArray[np.bool_]:
    """A seeded 30 % of every sector's rows, taken as whole blocks of `block` consecutive rows (1: any rows)."""
    rng = np.random.default_rng(seed)
    test = np.zeros(label.size, dtype=bool)
    for s in np.unique(label):
        rows = np.flatnonzero(label == s)
        blocks = np.array_split(rows, max(1, round(rows.size / block)))
        chosen = rng.permutation(len(blocks))[: round(0.3 * len(blocks))]
        for b in chosen:
            test[blocks[b]] = True
    return test


def fingerprint_loglik(rssi: FloatArray, label: NDArray[np.intp], test: NDArray[np.bool_]) -> FloatArray:
    """ln L(s) of eq. (18) (test rows, sectors) for the `test` rows, of the fingerprint fitted on the others'
    labels (each row one window)."""
    train, tests = np.flatnonzero(~test), np.flatnonzero(test)
    fp = fit_fingerprint(np.repeat(np.arange(train.size), 6), np.tile(np.arange(6), train.size),
                         rssi[train].ravel(), label[train], int(label.max()) + 1, 6)
    return fp.loglik(np.repeat(np.arange(tests.size), 6), np.tile(np.arange(6), tests.size), rssi[tests].ravel(),
                     tests.size)


def evaluate(layout: Layout, rssi: FloatArray, label: NDArray[np.intp], floor: str, seed: int = 0,
             block: int = 1) -> dict[str, Any]:
    """Calibrate each beacon on a seeded 70 % of every sector's rows (`held_out`); classify the rest
    by the model, by the fingerprint alone and by both fused (ALL_FLOORS: the fingerprint alone, the model's
    figures None)."""
    test = held_out(label, seed, block)
    loglik = fingerprint_loglik(rssi, label, test)
    fingerprint = float(np.mean(np.argmax(loglik, axis=1) == label[test]))
    if floor == ALL_FLOORS:
        return {"accuracy": None, "mean_error_m": None, "test_rows": int(test.sum()),
                "fingerprint_accuracy": fingerprint, "fused_accuracy": None, "unfixed": None, "exponent": None,
                "rssi_at_1m": None}
    centres = layout.centres[floor]
    z = PHONE_Z[floor]
    xyz = layout.beacons
    at = np.column_stack([centres[label], np.full(label.size, z)])
    a, n, sigma = np.empty(6), np.empty(6), np.empty(6)
    for b in range(6):
        d = np.linalg.norm(at[~test] - xyz[b], axis=1)
        cal = fit_calibration(d, rssi[~test, b])
        a[b], n[b], sigma[b] = cal.rssi_at_1m, max(cal.path_loss_exponent, 0.5), max(cal.sigma_db, 1.0)
    polygons = sector_polygons(centres)
    s_count = len(polygons)
    model = SectorModel(polygons, np.zeros((s_count, s_count), bool), np.ones(s_count, bool))
    tests = np.flatnonzero(test)
    geometric = np.full((tests.size, s_count + 1), 1.0 / (s_count + 1))
    predicted = np.full(label.size, -1)
    for j, i in enumerate(tests):
        result = fix(xyz, rssi[i], a, n, sigma, z)
        if result.ok:
            geometric[j] = model.likelihood(result.xy[None], result.cov[None])[0]
            predicted[i] = int(np.argmax(geometric[j, :s_count]))
    fused = fuse(geometric, loglik, model.entrances)[:, :s_count]
    right = predicted[test] == label[test]
    error = np.where(predicted[test] >= 0,
                     np.linalg.norm(centres[np.maximum(predicted[test], 0)] - centres[label[test]], axis=1), np.nan)
    return {"accuracy": float(right.mean()), "mean_error_m": float(np.nanmean(error)), "test_rows": int(test.sum()),
            "fingerprint_accuracy": fingerprint,
            "fused_accuracy": float(np.mean(np.argmax(fused, axis=1) == label[tests])),
            "unfixed": int((predicted[test] < 0).sum()), "exponent": np.round(n, 2).tolist(),
            "rssi_at_1m": np.round(a, 1).tolist()}


SEEDS = (0, 1, 2, 3, 4)
"""Seeds of the held-out draw the benchmark averages over: one draw of 30 rows a sector moves a row's accuracy
by a few points, more than the gaps to the published figures."""


def benchmark(root: Path, seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    """Every floor, TX power and split, each averaged over `seeds` held-out draws (per-seed figures kept)."""
    layout = read_layout(root)
    rows = []
    for floor in ("A", "B", ALL_FLOORS):
        for tx in (0, -4, -8):
            rssi, label = read_rows(root, floor, tx)
            for split, block in (("random", 1), ("blocks", BLOCK_ROWS)):
                runs = [evaluate(layout, rssi, label, floor, seed=seed, block=block) for seed in seeds]
                mean = {key: None if runs[0][key] is None else float(np.mean([r[key] for r in runs]))
                        for key in ("accuracy", "mean_error_m", "fingerprint_accuracy", "fused_accuracy")}
                spread = [r["fingerprint_accuracy"] for r in runs]
                fingerprint = float(np.mean(spread))
                rows.append({"floor": floor, "tx_dbm": tx, "split": split, **mean,
                             "fingerprint_range": [float(min(spread)), float(max(spread))],
                             "test_rows": runs[0]["test_rows"], "seeds": list(seeds), "per_seed": runs,
                             "published_accuracy": PUBLISHED[(floor, tx)],
                             "fingerprint_at_or_above_published": fingerprint >= PUBLISHED[(floor, tx)]})
    return {"dataset": "castillo-cara-ble-esiiab", "rows": rows,
            "note": "published figures: ML fingerprinting (best of RF / ET / GBM), split not stated; ours: path-loss "
                    f"model on digitised coordinates (none for floor {ALL_FLOORS}: in one floor's plane it cannot tell "
                    "the floors apart), the sector fingerprint (18) fitted on the training rows' labels, "
                    "and both fused (19), each the mean over held-out draws with seeds "
                    f"{', '.join(map(str, seeds))}; split 'random': a seeded 30 % of each sector's rows held out, "
                    f"'blocks': whole runs of {BLOCK_ROWS} consecutive rows held out"}
