"""Feng et al. Wi-Fi RSS/RTT dataset: scans at reference points in three rooms, AP positions known.

CSV columns: X, Y (grid units of 0.6 m), AP1..AP5 RTT (mm), AP1..AP5 RSS
(dBm, -200 = not heard), LOS APs. ``ap_positions.csv`` maps each room's AP
columns to positions (the corridor's AP1 column is never heard). AP heights
are not given, so the model is planar (APs and phone at one height).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from positioning.multilaterate import fix
from positioning.pathloss import fit_calibration

FloatArray = NDArray[np.float64]

GRID_M = 0.6
ROOMS = ("lecture_theatre", "office", "corridor")
NOT_HEARD = -200.0


def read_aps(root: Path, room: str) -> tuple[list[int], FloatArray]:
    """AP column numbers (1-based) with a position, and their (k, 3) positions (z 0)."""
    columns, xyz = [], []
    with (root / "ap_positions.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["environment"] == room and row["x_m"]:
                columns.append(int(row["csv_ap_column"].removeprefix("AP")))
                xyz.append([float(row["x_m"]), float(row["y_m"]), 0.0])
    return columns, np.array(xyz)


def read_scans(root: Path, room: str, split: str, columns: list[int]) -> tuple[FloatArray, FloatArray]:
    """Positions (n, 2) metres and RSS (n, k) dBm with NaN where not heard."""
    with (root / f"database_{room}_{split}.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    xy = np.array([[float(r["X"]) * GRID_M, float(r["Y"]) * GRID_M] for r in rows])
    rss = np.array([[float(r[f"AP{c} RSS(dBm)"]) for c in columns] for r in rows])
    return xy, np.where(rss <= NOT_HEARD, np.nan, rss)


def _fix_all(aps: FloatArray, rss: FloatArray, a: FloatArray, n: FloatArray, s: FloatArray) -> FloatArray:
    out = np.full((rss.shape[0], 2), np.nan)
    for i, row in enumerate(rss):
        result = fix(aps, row, a, n, s, 0.0)
        if result.ok:
            out[i] = result.xy
    return out


def evaluate(root: Path, room: str) -> dict[str, Any]:
    columns, aps = read_aps(root, room)
    train_xy, train_rss = read_scans(root, room, "train", columns)
    test_xy, test_rss = read_scans(root, room, "test", columns)
    a, n, s = (np.empty(len(columns)) for _ in range(3))
    for k in range(len(columns)):
        heard = ~np.isnan(train_rss[:, k])
        d = np.linalg.norm(train_xy[heard] - aps[k, :2], axis=1)
        cal = fit_calibration(np.maximum(d, 0.1), train_rss[heard, k])
        a[k], n[k], s[k] = cal.rssi_at_1m, max(cal.path_loss_exponent, 0.5), max(cal.sigma_db, 1.0)
    fixes = _fix_all(aps, test_rss, a, n, s)
    scan_err = np.linalg.norm(fixes - test_xy, axis=1)
    points, index = np.unique(test_xy, axis=0, return_inverse=True)
    heard = ~np.isnan(test_rss)
    counts = np.stack([np.bincount(index, heard[:, k], points.shape[0]) for k in range(len(columns))], axis=1)
    sums = np.stack([np.bincount(index, np.where(heard[:, k], test_rss[:, k], 0.0), points.shape[0])
                     for k in range(len(columns))], axis=1)
    mean_rss = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)  # an AP never heard at a point stays NaN
    point_err = np.linalg.norm(_fix_all(aps, mean_rss, a, n, s / np.sqrt(60.0)) - points, axis=1)
    ok = np.isfinite(scan_err)
    return {"room": room, "aps": len(columns), "test_scans": int(test_xy.shape[0]), "fixed_scans": int(ok.sum()),
            "scan_median_m": float(np.median(scan_err[ok])), "scan_mean_m": float(np.mean(scan_err[ok])),
            "point_median_m": float(np.nanmedian(point_err)), "exponent": np.round(n, 2).tolist()}


def benchmark(root: Path) -> dict[str, Any]:
    return {"dataset": "feng-wifi-rss-rtt", "rooms": [evaluate(root, room) for room in ROOMS]}
