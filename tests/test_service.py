"""The daemon end to end through real parts: replay → service → outbox → real mosquitto → subscriber."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from agent.config import load_site
from agent.events import parse_event
from agent.localbroker import Broker, example_site_for
from agent.observations import CardTap, Observation
from agent.replayclock import ReplayClock
from agent.replayfile import write_records
from agent.service import Service
from agent.sources.replay import ReplaySource
from tests.helpers.hq_acks import AckingSubscriber
from tests.test_locator import _readings

T0 = 1_763_900_000.0
SHOPPER_A, SHOPPER_B = "a" * 24, "b" * 24
"""Pseudonyms, as a recording carries them (a replay drops anything else)."""


def _recording(tmp_path: Path) -> tuple[Path, Path]:
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
                    observations.extend(_readings(emitter, xy, t, rng))
    observations.sort(key=lambda o: o.ts)
    obs_path, taps_path = tmp_path / "observations.jsonl", tmp_path / "taps.jsonl"
    write_records(obs_path, observations)
    write_records(taps_path, [CardTap(ts=T0 + 25, reader_id="till-1", card="L-000123")])
    return obs_path, taps_path


def _subscribe(broker: Broker, got: queue.Queue[tuple[str, bytes]]) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, msg: got.put((msg.topic, msg.payload))
    subscribed = threading.Event()
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe("santi/v1/#", qos=1)
    assert subscribed.wait(5), "no SUBACK from the test broker"
    return client


def test_replay_through_the_service_reaches_the_broker(broker: Broker, tmp_path: Path) -> None:
    site_path = example_site_for(tmp_path, broker.port)
    site = load_site(site_path)
    obs_path, taps_path = _recording(tmp_path)
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    hq = AckingSubscriber(broker.host, broker.port, got)  # HQ's part: its acks let the outbox empty
    speed = 25.0
    clock = ReplayClock(T0 + 1.0, speed)
    source = ReplaySource(obs_path, taps_path, speed=speed)
    service = Service(site, [source], state_dir=tmp_path / "state", clock=clock,
                      stop_when_sources_finish=True, time_scale=speed)
    try:
        clock.start()
        assert asyncio.run(service.run()) == 0
        messages = []
        while True:
            try:
                messages.append(got.get(timeout=2.0))
            except queue.Empty:
                break
    finally:
        hq.close()
    status = [payload for topic, payload in messages if topic.endswith("/status")]
    assert status[-1] == b"offline" or b"online" in status
    events = [parse_event(payload) for topic, payload in messages if "/events/" in topic]
    seqs = sorted({e.seq for e in events})
    assert seqs == list(range(1, len(seqs) + 1))
    started = [e for e in events if e.type == "visit.started"]
    ended = [e for e in events if e.type == "visit.ended"]
    assert sorted(e.subject for e in started) == [SHOPPER_A, SHOPPER_B]
    assert len(ended) == 2
    linked = [e for e in events if e.type == "identity.linked"]
    assert [(e.subject, e.loyalty_id) for e in linked] == [(SHOPPER_B, "L-000123")]
    fish = [e for e in events if e.type == "sector.entered" and e.subject == SHOPPER_A and e.sector_id == "fish"]
    assert fish
    assert any(e.type == "agent.status" for e in events)
    state = json.loads((tmp_path / "state" / "status.json").read_text())
    assert state["outbox"]["depth"] == 0
    assert state["queue_dropped"] == 0
