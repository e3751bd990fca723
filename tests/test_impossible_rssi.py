"""Readings above the physical maximum (0 dBm) are dropped as ``impossible_rssi`` on every path.

Real receivers report impossible positives (+42 dBm in real recordings);
one check in ``agent.observations`` decides for the BLE and Wi-Fi sources,
both node formats and replay files.
"""

from __future__ import annotations

import io
import json
import time

import pytest
from bleak.backends.device import BLEDevice

from agent.config import load_site
from agent.observations import RSSI_MAX_DBM, Observation, rssi_problem
from agent.privacy import Pseudonymizer
from agent.replayfile import RecordReader
from agent.sources.base import Record, SourceStats
from agent.sources.node_ingest import NodeIngest, santi_topic
from agent.sources.wifi import ProbeCounter
from tests.conftest import EXAMPLE_SITE
from tests.helpers.ble import APP_UUID, STRANGER, adv, ibeacon, make_source
from tests.helpers.wifi import probe, radiotap

PSEUDO = Pseudonymizer(b"k" * 32, "fishmonger-01", 86_400.0)


@pytest.mark.parametrize(("rssi", "problem"), [(-130.0, None), (0.0, None), (0.5, "impossible_rssi"),
                                               (42.0, "impossible_rssi"), (-131.0, "bad_rssi"),
                                               (float("nan"), "bad_rssi")])
def test_the_one_check(rssi: float, problem: str | None) -> None:
    assert RSSI_MAX_DBM == 0.0
    assert rssi_problem(rssi) == problem


def test_ble() -> None:
    source = make_source()
    records: list[Record] = []
    callback = source.detection_callback(records.append)
    callback(BLEDevice(STRANGER, None, None), adv(rssi=42, manufacturer=ibeacon(APP_UUID, 1, 1)))
    callback(BLEDevice(STRANGER, None, None), adv(rssi=-60, manufacturer=ibeacon(APP_UUID, 1, 1)))
    assert source.stats.dropped == {"impossible_rssi": 1}
    assert [r.rssi_dbm for r in records if isinstance(r, Observation)] == [-60.0]


def test_wifi() -> None:
    stats = SourceStats("wifi")
    counter = ProbeCounter("pi-wifi", PSEUDO, stats)
    assert counter.observe(radiotap(signal=42) + probe(), 10.0) is None
    assert counter.observe(radiotap(signal=-61) + probe(), 10.0) is not None
    assert stats.dropped == {"impossible_rssi": 1}


def test_nodes_both_formats() -> None:
    ingest = NodeIngest(load_site(EXAMPLE_SITE).receivers, PSEUDO, "fishmonger-01")
    now = time.time()
    assert ingest.ingest("espresense/devices/abc/fish", b'{"rssi": 42}', now) == []
    batch = [{"ts": now, "receiver_id": "x", "emitter_id": "a" * 24, "tech": "ble", "rssi_dbm": rssi}
             for rssi in (42.0, 1.0, -60.0)]
    out = ingest.ingest(santi_topic("fishmonger-01", "greens"), json.dumps(batch).encode(), now)
    assert [o.rssi_dbm for o in out] == [-60.0]
    assert ingest.stats.dropped == {"impossible_rssi": 3}


def test_replay_lines() -> None:
    line = {"ts": 1_763_900_000.0, "receiver_id": "r", "emitter_id": "a" * 24, "tech": "ble", "rssi_dbm": 42}
    data = json.dumps(line).encode() + b"\n" + json.dumps({**line, "rssi_dbm": -60}).encode() + b"\n"
    reader = RecordReader(io.BytesIO(data), Observation)
    assert [o.rssi_dbm for o in reader] == [-60.0]
    assert reader.bad_by_key == {"impossible_rssi": 1}
