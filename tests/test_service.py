"""The daemon end to end through real parts: replay → service → outbox → real mosquitto → subscriber."""

from __future__ import annotations

import asyncio
import json
import queue
from pathlib import Path

from agent.config import load_site
from agent.events import parse_event
from agent.localbroker import Broker, example_site_for
from agent.replayclock import ReplayClock
from agent.service import Service
from agent.sources.replay import ReplaySource
from tests.helpers.hq_acks import AckingSubscriber
from tests.helpers.recording import SHOPPER_A, SHOPPER_B, T0, recording


def test_replay_through_the_service_reaches_the_broker(broker: Broker, tmp_path: Path) -> None:
    site_path = example_site_for(tmp_path, broker.port)
    site = load_site(site_path)
    obs_path, taps_path = recording(tmp_path)
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
