"""Simulator → agent → real mosquitto → HQ: visits exact, durations and dwell close, no raw id leaks."""

from __future__ import annotations

import io
import queue
import statistics
from pathlib import Path

import pytest
from rich.console import Console

from agent.config import load_site
from agent.demo import DemoResult, run_demo
from agent.events import VisitEnded, parse_event
from agent.localbroker import Broker
from tests.test_service import _subscribe

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, list[bytes]]:
    work = tmp_path_factory.mktemp("e2e")
    broker = Broker(work / "broker")
    broker.start()
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    spy = _subscribe(broker, got)
    try:
        result = run_demo(load_site(EXAMPLE), shoppers=12, minutes=4, seed=5, speed=120,
                          broker=(broker.host, broker.port), workdir=work / "demo",
                          console=Console(file=io.StringIO()), quiet=True)
    finally:
        spy.disconnect()
        spy.loop_stop()
        broker.stop()
    payloads = []
    while not got.empty():
        payloads.append(got.get()[1])
    return result, payloads


def test_every_app_shopper_is_exactly_one_visit(run: tuple[DemoResult, list[bytes]]) -> None:
    result, _ = run
    truth = result.truth
    app_emitters = {e.emitter_id: e.shopper_id for e in truth.emitters.values()
                    if e.tech == "ble" and truth.shoppers[e.shopper_id].has_app}
    started = [e for e in result.events if e.type == "visit.started"]
    assert sorted(e.subject for e in started) == sorted(app_emitters)
    assert result.outbox_left <= 1


def test_visit_durations_and_dwell_match_truth(run: tuple[DemoResult, list[bytes]]) -> None:
    result, _ = run
    truth = result.truth
    errors = []
    dwell_hq: dict[str, float] = {}
    for event in result.events:
        if not isinstance(event, VisitEnded):
            continue
        shopper = truth.shopper_of(event.subject)
        assert shopper is not None
        real = truth.shoppers[shopper]
        errors.append(abs(event.duration_s - (real.leave_ts - real.enter_ts)))
        for sector, seconds in event.dwell_s.items():
            dwell_hq[sector] = dwell_hq.get(sector, 0.0) + seconds
    assert errors
    assert statistics.median(errors) < 60.0, f"median visit duration error {statistics.median(errors):.0f} s"
    dwell_truth: dict[str, float] = {}
    app = {s for s, t in truth.shoppers.items() if t.has_app}
    for shopper, visits in truth.visits.items():
        if shopper in app:
            for visit in visits:
                dwell_truth[visit.sector] = dwell_truth.get(visit.sector, 0.0) + visit.exit_ts - visit.enter_ts
    total = sum(dwell_truth.values())
    for sector in ("fish", "greengrocer", "aisle-1", "aisle-3", "aisle-centre"):
        share_hq = dwell_hq.get(sector, 0.0) / sum(dwell_hq.values())
        share_truth = dwell_truth.get(sector, 0.0) / total
        assert abs(share_hq - share_truth) < 0.10, f"{sector}: HQ {share_hq:.2f} vs truth {share_truth:.2f}"


def test_no_raw_identifier_leaves_the_store(run: tuple[DemoResult, list[bytes]]) -> None:
    result, payloads = run
    truth = result.truth
    assert payloads
    forbidden: set[str] = set()
    for emitter in truth.emitters.values():
        raw = emitter.raw_id
        forbidden |= {raw, raw.lower(), raw.upper(), raw.replace(":", "").lower(), raw.replace(":", "").upper()}
    for tap in truth.taps:
        uid = tap.card_uid
        forbidden |= {uid, uid.lower(), uid.upper(), uid.replace(":", "").lower(), uid.replace(":", "").upper()}
    text = b"\n".join(payloads).decode()
    leaks = sorted(item for item in forbidden if len(item) >= 8 and item in text)
    assert not leaks, f"raw identifiers published: {leaks[:5]}"
    loyalty = [parse_event(p) for p in payloads if b'"identity.linked"' in p]
    assert all(getattr(e, "loyalty_id", "").startswith("L-") for e in loyalty)
