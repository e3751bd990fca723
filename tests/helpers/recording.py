"""Recordings for replay tests: noise-drawn readings of a shopper, and a two-shopper store visit written to JSONL."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.config import load_site
from agent.localbroker import EXAMPLE_SITE
from agent.observations import CardTap, Observation
from agent.replayfile import write_records

SITE = load_site(EXAMPLE_SITE)


def readings(emitter: str, xy: tuple[float, float], t: float, rng: np.random.Generator) -> list[Observation]:
    out = []
    for rx in SITE.receivers:
        if rx.kind == "wifi":
            continue
        d = float(np.sqrt((rx.x - xy[0]) ** 2 + (rx.y - xy[1]) ** 2 + (rx.z - 1.2) ** 2))
        rssi = rx.rssi_at_1m - 10 * rx.path_loss_exponent * np.log10(d) + rng.normal(0, 2.0)
        out.append(Observation(ts=t, receiver_id=rx.id, emitter_id=emitter, tech="ble", rssi_dbm=float(rssi)))
    return out


T0 = 1_763_900_000.0

SHOPPER_A, SHOPPER_B = "a" * 24, "b" * 24
"""Pseudonyms, as a recording carries them (a replay drops anything else)."""


def recording(tmp_path: Path) -> tuple[Path, Path]:
    """Two shoppers: one walks in, to the fish counter, and out; one goes to the till and taps."""
    rng = np.random.default_rng(11)
    plans = {
        SHOPPER_A: [((15.0, 2.0), 8), ((5.0, 16.0), 30), ((15.0, 2.0), 8), ((15.0, -3.0), 6)],
        SHOPPER_B: [((15.0, 2.0), 6), ((24.0, 2.3), 30), ((15.0, 2.0), 6), ((15.0, -3.0), 6)],
    }
    observations: list[Observation] = []
    for emitter, plan in plans.items():
        t = T0
        for xy, seconds in plan:
            for _ in range(seconds):
                t += 1.0
                if xy[1] >= 0:
                    observations.extend(readings(emitter, xy, t, rng))
    observations.sort(key=lambda o: o.ts)
    obs_path, taps_path = tmp_path / "observations.jsonl", tmp_path / "taps.jsonl"
    write_records(obs_path, observations)
    write_records(taps_path, [CardTap(ts=T0 + 25, reader_id="till-1", card="L-000123")])
    return obs_path, taps_path
