"""The HQ subscriber against a real mosquitto: shared groups, replays, bad payloads, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.events import Event
from agent.localbroker import Broker
from hq.backends import open_store
from hq.profile import Profile
from hq.subscriber import HqSubscriber
from hq.synthetic import synthetic_stream
from tests.helpers.consent import SYNTHETIC_IDS, grant_url
from tests.helpers.hq import START, pg_conninfo, pg_schema_url, publish, wire
from tests.helpers.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 1, tzinfo=UTC).timestamp()


@pytest.fixture(params=["sqlite", "postgresql"])
def two_dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/shared.sqlite", f"sqlite:///{tmp_path}/solo.sqlite"
        return
    server = pg_conninfo()
    if server is None:
        pytest.skip("no PostgreSQL at 127.0.0.1:5432 (database test, user postgres or root, trust auth)")
    shared, solo = pg_schema_url(server), pg_schema_url(server)
    yield next(shared), next(solo)
    for gen in (shared, solo):
        next(gen, None)


def test_shared_group_builds_the_single_subscriber_profile(broker: Broker, two_dbs: tuple[str, str]) -> None:
    shared_db, solo_db = two_dbs
    for url in two_dbs:
        grant_url(url, SYNTHETIC_IDS)
    events = synthetic_stream(10_000, start=START)
    pair = [HqSubscriber(broker.host, broker.port, shared_db, "hq") for _ in range(2)]
    solo = HqSubscriber(broker.host, broker.port, solo_db, "solo")
    subs = [*pair, solo]
    for sub in subs:
        sub.start()
    try:
        assert all(sub.wait_connected(10) for sub in subs)
        publish(broker, wire(events))
        wait_until(lambda: sum(s.stats().received for s in pair) >= 10_000 and solo.stats().received >= 10_000, 60.0, "10,000 events at both groups")
        parts = [s.stats().received for s in pair]
        assert all(part >= 1_000 for part in parts), f"the shared group did not split the load: {parts}"
        assert sum(s.stats().stored for s in pair) == solo.stats().stored == 10_000

        def everything(sub: HqSubscriber) -> tuple[dict[str, Profile], dict[str, Profile], dict[str, int]]:
            loyalty = {lid: sub.profile(lid, now=NOW) for lid in sub.store.loyalty_ids()}
            visitors = {s: sub.visitor(s, now=NOW) for s in sub.store.subjects()[:60]}
            return loyalty, visitors, sub.store.counts()

        single = everything(solo)
        assert len(single[0]) > 20
        assert everything(pair[0]) == single
        assert all(g.missing == 0 for g in pair[0].gaps())

        publish(broker, wire(events) + wire(events))
        wait_until(lambda: sum(s.stats().received for s in pair) >= 30_000 and solo.stats().received >= 30_000, 60.0, "the replays")
        assert sum(s.stats().duplicates for s in pair) == solo.stats().duplicates == 20_000
        assert everything(pair[0]) == single
        assert everything(solo) == single
    finally:
        for sub in subs:
            sub.stop()


def test_bad_payloads_are_dead_lettered_and_counted(broker: Broker, tmp_path: Path) -> None:
    events = synthetic_stream(50, start=START)
    seen: list[Event] = []
    db = f"sqlite:///{tmp_path}/hq.sqlite"
    grant_url(db, SYNTHETIC_IDS)
    with HqSubscriber(broker.host, broker.port, db, "hq", on_event=seen.append) as sub:
        assert sub.wait_connected(10)
        bad: list[tuple[str, bytes | str]] = [
            ("santi/v1/s/a/events/visit.started", b"\x00\x01 not json"),
            ("santi/v1/s/a/events/visit.started", '{"schema": "santi.presence/1"}'),
            ("santi/v1/other/agent/events/visit.started", events[0].to_json()),
        ]
        publish(broker, wire(events[:25]) + bad + wire(events[25:]) + wire(events[:5]))
        wait_until(lambda: sub.stats().received >= 58, 60.0, "58 messages")
        stats = sub.stats()
        assert (stats.stored, stats.dead_letters, stats.duplicates) == (50, 3, 5)
        letters = sub.store.dead_letters()
        assert sorted(d.reason.split(":")[0] for d in letters) == [
            "invalid event", "invalid event", "topic does not match the event (expected santi/v1/store-2/agent-2/events/visit.started)"]
    assert sorted(str(e.event_id) for e in seen) == sorted(str(e.event_id) for e in events)


def test_kill_9_mid_stream_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    """PUBACK only after commit: a subscriber killed at any instant misses no event after restart."""
    db = f"sqlite:///{tmp_path}/hq.sqlite"
    grant_url(db, SYNTHETIC_IDS)
    command = [sys.executable, "-c", "from agent.cli import main; main()", "hq", "run", "--broker", f"mqtt://{broker.host}:{broker.port}",
               "--db", db, "--client-id", "hq-crash-test", "--report-s", "0.2", "--batch-size", "200"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def launch() -> subprocess.Popen[bytes]:
        log = tmp_path / "run.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: " connected " in log.read_text(), 20, "the subscriber")
        return proc

    def stored() -> int:
        store = open_store(db)
        try:
            return store.counts()["events"]
        finally:
            store.close()

    events = synthetic_stream(6_000, start=START)
    proc = launch()
    try:
        publish(broker, wire(events[:3_000]))
        wait_until(lambda: stored() >= 500, 60.0, "some events stored")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        publish(broker, wire(events[3_000:]))  # the broker keeps them for the stopped session
        proc = launch()
        wait_until(lambda: stored() >= 6_000, 60.0, "all 6,000 events after the restart")
        assert stored() == 6_000
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0
