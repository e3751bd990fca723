"""Danis et al. "tetam" BLE dataset: one beacon walked through a lab past 12 receivers, with camera truth.

Files (see ../shared/data/danis-ble-tetam/SOURCE.txt): ``cnf/tetam.dev`` holds
the receivers' x, y, z; ``trk/<name>_all_sensors.mbd`` is CSV without a
header, one advertisement heard by one sensor per row, labelled with the
beacon's true position: ``unix_time_s, sensor_mac, beacon_mac, rssi_dBm,
gt_x_m, gt_y_m, gt_z_m, R11..R33``. The lab becomes a one-sector site (the
config needs one entrance sector); receivers keep the dataset's aliases.
"""

from __future__ import annotations

import ast
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from agent.config import SiteConfig, parse_site
from agent.observations import Observation
from agent.privacy import Pseudonymizer
from simulator.truth import EmitterTruth, PositionTruth, RunTruth, ShopperTruth, TruthRecord

FloatArray = NDArray[np.float64]

SECRET = b"santi-dataset-fixed-secret-danis"
MARGIN_M = 1.0
"""The outline is the map's limits grown by this: truth strays slightly beyond them."""


@dataclass(frozen=True)
class Receiver:
    mac: str
    alias: str
    xyz: tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class Track:
    """One walk: per row ts (n,), receiver alias, rssi (n,), true xyz (n, 3); sorted by time."""

    name: str
    beacon: str
    ts: FloatArray
    receiver: list[str]
    rssi: FloatArray
    xyz: FloatArray


def read_receivers(root: Path) -> list[Receiver]:
    text = (root / "cnf" / "tetam.dev").read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith("Dongles:"))
    dongles = ast.literal_eval(line.split(":", 1)[1].strip())
    return [Receiver(mac, str(value[2]), (float(value[0][0]), float(value[0][1]), float(value[0][2])))
            for mac, value in sorted(dongles.items(), key=lambda item: item[1][2])]


def read_limits(root: Path) -> tuple[float, float, float, float]:
    par = ast.literal_eval((root / "cnf" / "tetam.par").read_text(encoding="utf-8"))
    x0, y0, x1, y1 = (float(v) for v in par["limits"])
    return x0, y0, x1, y1


def track_names(root: Path) -> list[str]:
    return sorted(p.name.removesuffix("_all_sensors.mbd") for p in (root / "trk").glob("*_all_sensors.mbd"))


def read_track(root: Path, name: str, receivers: list[Receiver]) -> Track:
    alias = {r.mac: r.alias for r in receivers}
    rows = []
    with (root / "trk" / f"{name}_all_sensors.mbd").open(newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if len(row) < 7 or row[1] not in alias:
                continue
            rows.append((float(row[0]), alias[row[1]], row[2], float(row[3]), float(row[4]), float(row[5]), float(row[6])))
    rows.sort(key=lambda r: r[0])
    return Track(name, rows[0][2], np.array([r[0] for r in rows]), [r[1] for r in rows],
                 np.array([r[3] for r in rows]), np.array([[r[4], r[5], r[6]] for r in rows]))


def site_text(receivers: list[Receiver], limits: tuple[float, float, float, float], emitter_height_m: float,
              calibration: dict[str, tuple[float, float, float]] | None = None, radio_map: Path | None = None) -> str:
    """A site config for the lab; `calibration` maps alias -> (rssi_at_1m, exponent, sigma)."""
    x0, y0, x1, y1 = limits[0] - MARGIN_M, limits[1] - MARGIN_M, limits[2] + MARGIN_M, limits[3] + MARGIN_M
    box = f"[[{x0:.2f}, {y0:.2f}], [{x1:.2f}, {y0:.2f}], [{x1:.2f}, {y1:.2f}], [{x0:.2f}, {y1:.2f}]]"
    parts = [
        "# Danis et al. 'tetam' lab (CC0), converted by simulator.datasets.danis\n",
        f'[store]\nid = "tetam"\nname = "tetam lab"\noutline = {box}\n\n[agent]\nid = "bench"\n',
    ]
    for r in receivers:
        parts.append(f'\n[[receivers]]\nid = "{r.alias}"\nkind = "ble"\nx = {r.xyz[0]}\ny = {r.xyz[1]}\nz = {r.xyz[2]}\n')
        if calibration is not None and r.alias in calibration:
            a, n, s = calibration[r.alias]
            parts.append(f"rssi_at_1m = {a:.2f}\npath_loss_exponent = {n:.3f}\nnoise_sigma_db = {min(max(s, 0.5), 20.0):.2f}\n")
    parts.append(f'\n[[sectors]]\nid = "lab"\nname = "Lab"\npolygon = {box}\nentrance = true\n')
    parts.append(f"\n[tracking]\nemitter_height_m = {emitter_height_m:.2f}\n")
    if radio_map is not None:
        parts.append(f"radio_map = {json.dumps(str(radio_map))}\n")
    return "".join(parts)


def site(receivers: list[Receiver], limits: tuple[float, float, float, float], emitter_height_m: float,
         calibration: dict[str, tuple[float, float, float]] | None = None, radio_map: Path | None = None) -> SiteConfig:
    return parse_site(site_text(receivers, limits, emitter_height_m, calibration, radio_map), Path("tetam.toml"))


def observations(track: Track) -> list[Observation]:
    """The track's rows as a BLE source would report them: the beacon MAC pseudonymised."""
    pseudo = Pseudonymizer(SECRET, "tetam", 24 * 3600.0)
    return [Observation(ts=float(t), receiver_id=rx, emitter_id=pseudo.pseudonym("ble", track.beacon, float(t)),
                        tech="ble", rssi_dbm=float(z))
            for t, rx, z in zip(track.ts, track.receiver, track.rssi, strict=True)]


def truth(track: Track, emitter_ids: set[str]) -> list[TruthRecord]:
    """Truth records: the beacon as one 'shopper', its pseudonyms, and its distinct true positions."""
    start, end = float(track.ts[0]), float(track.ts[-1])
    records: list[object] = [
        RunTruth(store_id="tetam", site="", start_ts=start, end_ts=end, shoppers=1,
                 emitter_height_m=float(np.median(track.xyz[:, 2])), sigma_db=float("nan"),
                 settings={"dataset": "danis-ble-tetam", "track": track.name}),
        ShopperTruth(shopper_id=track.name, enter_ts=start, leave_ts=end, has_app=True),
    ]
    records += [EmitterTruth(emitter_id=e, tech="ble", raw_id=track.beacon, shopper_id=track.name,
                             first_ts=start, last_ts=end) for e in sorted(emitter_ids)]
    ts, first = np.unique(track.ts, return_index=True)
    for t, i in zip(ts, first, strict=True):
        x, y, z = track.xyz[i]
        records.append(PositionTruth(ts=float(t), shopper_id=track.name, x=float(x), y=float(y), z=float(z),
                                     sector="lab"))
    return [TruthRecord(root=r) for r in records]
