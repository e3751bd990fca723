"""HQ that never wedges, never loses and acknowledges: poison, bounds, acks, accounting, erasure.

Through the real parts: mosquitto from agent/localbroker.py, SQLite files on
disk, the PostgreSQL server at 127.0.0.1:5432 (a fresh schema per test).
"""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from agent.cli import cli
from agent.events import (
    AgentStatus,
    CardTapped,
    Event,
    IdentityLinked,
    SectorEntered,
    VisitEnded,
    VisitStarted,
    parse_event,
    topic_for,
    uuid7,
)
from agent.localbroker import Broker
from hq.backends import open_store
from hq.ingest import Accepted, Rejected, decode
from hq.sqlitestore import SqliteStore
from hq.store import IngestResult, Store
from hq.subscriber import HqSubscriber
from tests.helpers.consent import grant
from tests.helpers.hq import pg_schema_url, publish
from tests.helpers.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LONG_ID = random.Random(1).randbytes(5_000).hex()
"""10,000 characters that do not compress: no PostgreSQL index row holds them."""
_ids = iter(range(1, 10**9))


def event(seq: int, *, epoch: str | None = "e1", agent: str = "a1", at: datetime | None = None,
          **fields: Any) -> VisitStarted:
    """A visit.started of agent ``agent`` (store s1) with a fresh event id."""
    when = at or T0 + timedelta(seconds=seq)
    data = {"event_id": uuid7(int(when.timestamp() * 1000), next(_ids).to_bytes(10, "big")), "seq": seq,
            "store_id": "s1", "agent_id": agent, "epoch": epoch, "ts": when, "subject": f"p{seq}",
            "visit_id": f"v{seq}", "tech": "ble", **fields}
    return VisitStarted.model_validate(data)


def unchecked(seq: int, **fields: Any) -> tuple[str, bytes | str]:
    """(topic, payload) of an event that skips validation: what an agent without bounds could send."""
    good = event(1)
    data = {**json.loads(good.to_json()), "seq": seq, **fields}
    return topic_for(good), json.dumps(data)


def wire(events: Iterable[Event]) -> list[Accepted | Rejected]:
    return [decode(topic_for(e), e.to_json().encode()) for e in events]


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    yield from pg_schema_url(pg_server)


class AckWatcher:
    """A plain MQTT client on the ack topics: what an agent would read."""

    def __init__(self, broker: Broker) -> None:
        self.acks: list[dict[str, Any]] = []
        self.retained: list[bool] = []
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.subscribe("santi/v1/+/+/ack", qos=1)
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.acks.append(json.loads(message.payload))
        self.retained.append(bool(message.retain))

    def last_seq(self) -> int | None:
        return self.acks[-1]["seq"] if self.acks else None

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# --- poison through the real broker -------------------------------------------------------


@pytest.mark.parametrize(("backend", "poison"), [
    ("sqlite", {"seq": 2**70}),
    ("postgresql", {"seq": 2**63}),
    ("postgresql", {"seq": 51, "visit_id": LONG_ID}),
])
def test_poison_goes_to_dead_letters_and_100_events_after_it_are_stored_and_acked(
        broker: Broker, tmp_path: Path, request: pytest.FixtureRequest, backend: str,
        poison: dict[str, Any]) -> None:
    url = f"sqlite:///{tmp_path}/hq.sqlite" if backend == "sqlite" else request.getfixturevalue("pg_url")
    before = [event(seq) for seq in range(1, 51)]
    after = [event(seq) for seq in range(52, 152)]
    watcher = AckWatcher(broker)
    with HqSubscriber(broker.host, broker.port, url, "hq") as sub:
        assert sub.wait_connected(10)
        publish(broker, [(topic_for(e), e.to_json()) for e in before] + [unchecked(**poison)]
                + [(topic_for(e), e.to_json()) for e in after])
        wait_until(lambda: sub.stats().received >= 151, 30, "151 messages")
        stats = sub.stats()
        assert (stats.stored, stats.dead_letters, stats.failure) == (150, 1, None)
        (letter,) = sub.store.dead_letters()
        assert letter.reason.startswith("invalid event")
        # The poison's seq (51, when it names one a bigint holds) does not hold the ack back.
        expected = 151 if poison["seq"] == 51 else 50
        wait_until(lambda: watcher.last_seq() == expected, 10, f"ack {expected}")
    watcher.close()


@pytest.mark.parametrize("poison", [{"seq": 2**70}, {"seq": 2**63}, {"visit_id": LONG_ID},
                                    {"visit_id": "bad\x00nul"}])
def test_a_value_the_database_refuses_is_dead_lettered_alone(store: Store, poison: dict[str, Any]) -> None:
    """Bypassing the schema (an event built unchecked): the store still isolates it."""
    good = [event(seq) for seq in range(1, 101)]
    fields = {**event(200).model_dump(), **poison}
    bad = VisitStarted.model_construct(**fields)
    items: list[Accepted | Rejected] = [*wire(good[:50]), Accepted.of(bad, bad.to_json()), *wire(good[50:])]
    result = store.ingest(items, received_at=1.0)
    if result.dead_letters == 0:
        pytest.skip(f"{store.dialect} stores {sorted(poison)} as it is")
    assert (result.stored, result.dead_letters) == (100, 1)
    (letter,) = store.dead_letters()
    assert letter.reason.startswith("unstorable:")
    assert store.counts()["events"] == 100


def test_shutdown_within_5_s_with_a_poison_event_queued(broker: Broker, pg_url: str, tmp_path: Path) -> None:
    command = [sys.executable, "-c", "from agent.cli import main; main()", "hq", "run", "--broker",
               f"mqtt://{broker.host}:{broker.port}", "--db", pg_url, "--client-id", "hq-stop-test",
               "--report-s", "0.2"]
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: " connected " in log.read_text(), 20, "the subscriber")
        publish(broker, [unchecked(7, visit_id=LONG_ID), *[(topic_for(e), e.to_json())
                                                                 for e in map(event, range(1, 20))]])
        wait_until(lambda: "received=20" in log.read_text(), 20, "the batch")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert elapsed < 5.0, f"SIGTERM took {elapsed:.1f} s"


# --- acknowledgements -----------------------------------------------------------------------


def test_acks_are_retained_contiguous_and_cross_dead_letters(broker: Broker, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/hq.sqlite"
    with HqSubscriber(broker.host, broker.port, url, "hq") as sub:
        assert sub.wait_connected(10)
        invalid = unchecked(11, sector_id="not an id")
        publish(broker, [*[(topic_for(e), e.to_json()) for e in map(event, range(1, 11))], invalid,
                         *[(topic_for(e), e.to_json()) for e in map(event, [*range(12, 21), 22])]])
        wait_until(lambda: sub.stats().received >= 21, 60.0, "21 messages")
        watcher = AckWatcher(broker)
        wait_until(lambda: watcher.last_seq() == 20, 10, "the ack of 20")
        later = AckWatcher(broker)  # connects after the ack: reads it retained
        wait_until(lambda: later.last_seq() == 20, 10, "the retained ack of 20")
        assert later.retained == [True]
        later.close()
        assert watcher.acks[-1] == {**watcher.acks[-1], "store_id": "s1", "agent_id": "a1", "epoch": "e1"}
        late = event(21)
        publish(broker, [(topic_for(late), late.to_json())])
        wait_until(lambda: watcher.last_seq() == 22, 10, "the ack of 22 once 21 came")
        acks = sub.stats().acks
        publish(broker, [(topic_for(late), late.to_json())])  # a re-send: the agent missed the ack
        wait_until(lambda: sub.stats().acks == acks + 1, 60.0, "the ack sent again")
        watcher.close()


def test_hq_resubscribes_after_a_broker_restart(broker: Broker, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/hq.sqlite"
    with HqSubscriber(broker.host, broker.port, url, "hq", client_id="hq-restart-test") as sub:
        assert sub.wait_connected(10)
        publish(broker, [(topic_for(e), e.to_json()) for e in map(event, range(1, 6))])
        wait_until(lambda: sub.stats().stored == 5, 60.0, "5 events")
        broker.stop(kill=True)
        wait_until(lambda: not sub.stats().connected, 60.0, "the disconnect")
        broker.start()
        assert sub.wait_connected(20)
        publish(broker, [(topic_for(e), e.to_json()) for e in map(event, range(6, 106))])
        wait_until(lambda: sub.stats().stored == 105, 30, "100 events after the restart")
        (gaps,) = sub.gaps()
        assert (gaps.acked, gaps.missing) == (105, 0)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_hq_run_says_why_it_cannot_connect(broker: Broker, tmp_path: Path) -> None:
    runner = CliRunner()
    free = Broker(tmp_path / "unused").port  # a port no broker listens on
    db = f"sqlite:///{tmp_path}/hq.sqlite"
    result = runner.invoke(cli, ["hq", "run", "--broker", f"mqtt://127.0.0.1:{free}", "--db", db,
                                 "--max-seconds", "2", "--report-s", "0.5"])
    assert result.exit_code == 1, result.output  # unreachable is a run-time failure; a refusal is exit 2
    assert result.output.startswith(f"santi: cannot connect to the broker at 127.0.0.1:{free}: ")
    assert "refused" in result.output.lower()
    # TLS to a plain listener: the broker drops the handshake (an EOF, exit 2, or a reset, which looks
    # like a network fault, exit 1, depending on timing), and the reason is printed. A certificate that
    # does not verify is always exit 2: test_hq_cli's wrong-CA test.
    ca = _self_signed_ca(tmp_path)
    result = runner.invoke(cli, ["hq", "run", "--broker", f"mqtts://{broker.host}:{broker.port}", "--ca-file",
                                 str(ca), "--db", db, "--max-seconds", "2", "--report-s", "0.5"])
    assert result.exit_code in (1, 2), result.output
    assert result.output.count("\n") == 1
    assert "cannot connect to the broker" in result.output
    del result
    gc.collect()  # paho does not close the socket of a failed TLS handshake; collect it here


def _self_signed_ca(tmp_path: Path) -> Path:
    key, cert = tmp_path / "ca.key", tmp_path / "ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=santi-test-ca"], check=True, capture_output=True)
    return cert


# --- bounds -----------------------------------------------------------------------------------


def test_the_schema_refuses_what_no_column_holds() -> None:
    good = json.loads(event(1).to_json())
    change: dict[str, Any]
    for change in ({"seq": 2**63}, {"seq": 2**70}, {"visit_id": "v" * 129}, {"subject": "a\x00b"},
                   {"sector_id": "two words"}, {"store_id": "s" * 129}):
        with pytest.raises(ValidationError):
            parse_event(json.dumps({**good, **change}))
    assert parse_event(json.dumps({**good, "seq": 2**63 - 1})).seq == 2**63 - 1
    ended = json.loads(VisitEnded(**{k: v for k, v in event(2).model_dump().items()
                                     if k not in ("type", "tech", "sector_id")},
                                  duration_s=5.0, reason="exit").to_json())
    for change in ({"duration_s": "Infinity"}, {"duration_s": "NaN"}, {"duration_s": -1.0},
                   {"dwell_s": {f"s{i}": 1.0 for i in range(257)}}, {"dwell_s": {"fish": "Infinity"}}):
        text = json.dumps({**ended, **change}).replace('"Infinity"', "Infinity").replace('"NaN"', "NaN")
        with pytest.raises(ValidationError):
            parse_event(text)
    widest = parse_event(json.dumps({**ended, "dwell_s": {f"s{i}": 1.0 for i in range(256)}}))
    assert isinstance(widest, VisitEnded)
    assert len(widest.dwell_s) == 256
    status = AgentStatus(**{k: v for k, v in event(3).model_dump().items()
                            if k not in ("type", "tech", "sector_id", "visit_id")},
                         uptime_s=1.0, outbox_depth=0, sources={"ble": {"rate_per_s": 1.0, "dropped": 0,
                                                                        "last_error": "x" * 5000 + "\nmore"}})
    assert status.sources["ble"].last_error == "x" * 500


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=st.text(min_size=0, max_size=300) | st.sampled_from(["a\x00b", LONG_ID, "x" * 129]),
       number=st.integers(-(2**70), 2**70) | st.sampled_from([2**63 - 1, 2**63, 2**70]),
       real=st.floats(allow_nan=True, allow_infinity=True), which=st.integers(0, 5))
@example(text="v", number=2**70, real=1.0, which=0)
@example(text="v", number=2**63, real=1.0, which=4)
@example(text=LONG_ID[:128], number=1, real=float("inf"), which=2)
def test_bounds_never_let_an_unstorable_event_through(store: Store, text: str, number: int, real: float,
                                                      which: int) -> None:
    """Whatever passes validation is stored as an event, never dead-lettered by the database."""
    base = event(next(_ids) % 10**6 + 1)
    fields = json.loads(base.to_json())
    if which == 0:
        fields.update(visit_id=text, seq=number)
    elif which == 1:
        fields.update(subject=text, sector_id=text)
    elif which == 2:
        fields.update(type="visit.ended", duration_s=real, dwell_s={text: real}, reason="exit")
        fields.pop("tech")
        fields.pop("sector_id")
    elif which == 3:
        fields.update(type="identity.linked", loyalty_id=text, method="card_tap", confidence=0.5, reader_id=None)
        fields.pop("tech")
        fields.pop("sector_id")
        if 0 < len(text) <= 128 and text.isprintable():  # stored only with profiling consent
            grant(store, [text], ["profiling"])
    elif which == 4:
        fields = {k: v for k, v in fields.items() if k not in ("tech", "sector_id", "visit_id")}
        fields.update(type="agent.status", uptime_s=real, outbox_depth=number, last_seq=number,
                      sources={text: {"rate_per_s": real, "dropped": number, "last_error": text}})
    else:
        fields.update(epoch=text or None, seq=number)
    payload = json.dumps(fields, ensure_ascii=False).encode("utf-8", "surrogatepass")
    item = decode(f"santi/v1/s1/a1/events/{fields['type']}", payload)
    before = store.counts()
    result = store.ingest([item], received_at=1.0)
    if isinstance(item, Accepted) and result.unlinked:
        assert (result.suppressed, result.dead_letters, which) == (1, 0, 3), result
    elif isinstance(item, Accepted):
        assert (result.stored, result.dead_letters) == (1, 0), result
    else:
        assert (result.stored, result.dead_letters) == (0, 1)
    assert store.counts()["events"] == before["events"] + result.stored


def test_dead_letters_are_capped_oldest_first_and_counted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/hq.sqlite"
    store = open_store(url, dead_letter_rows=5, dead_letter_bytes=10_000)
    try:
        for i in range(8):
            store.ingest([decode("santi/v1/s/a/events/x", f"garbage {i}".encode())], received_at=float(i))
        assert [d.payload for d in store.dead_letters()] == [f"garbage {i}" for i in range(7, 2, -1)]
        counts = store.counts()
        assert (counts["dead_letters"], counts["dead_letters_evicted"]) == (5, 3)
        store.ingest([decode("santi/v1/s/a/events/x", b"y" * 9_995)], received_at=9.0)
        assert [d.size for d in store.dead_letters()] == [9_995]
        assert store.counts()["dead_letters_evicted"] == 8
    finally:
        store.close()
    out = CliRunner().invoke(cli, ["hq", "dead-letters", "--db", url]).output
    assert "1 kept (9995 bytes), 8 evicted by the caps" in out


# --- accounting -------------------------------------------------------------------------------


def test_same_event_id_with_other_content_is_a_conflict(store: Store) -> None:
    original = event(5)
    store.ingest(wire([original]), received_at=1.0)
    changed = original.model_copy(update={"seq": 1000})
    twin = original.model_copy(update={"subject": "someone-else"})
    result = store.ingest(wire([changed, original]), received_at=2.0)
    assert (result.stored, result.duplicates, result.dead_letters, result.conflicts) == (0, 1, 1, 1)
    result = store.ingest(wire([twin, twin.model_copy(update={"visit_id": "v-other"})]), received_at=3.0)
    assert (result.conflicts, result.dead_letters) == (2, 2)
    assert all(d.reason.startswith("conflict: event_id") for d in store.dead_letters())
    (gaps,) = store.gaps()
    assert gaps.max_seq == 5, "neither a duplicate nor a conflict raises max_seq"
    assert store.subject_events("p5")[0] == original


def test_an_outbox_reset_is_a_new_epoch_not_reused_seqs(store: Store) -> None:
    first = [event(seq, epoch="e1") for seq in range(1, 6)]
    second = [event(seq, epoch="e2", at=T0 + timedelta(minutes=5, seconds=seq)) for seq in range(1, 4)]
    r1 = store.ingest(wire(first), received_at=1.0)
    r2 = store.ingest(wire(second), received_at=2.0)
    assert (r1.stored, r2.stored) == (5, 3)
    assert (r1.acks, r2.acks) == ({("s1", "a1", "e1"): 5}, {("s1", "a1", "e2"): 3})
    report = {g.epoch: g for g in store.gaps()}
    assert {e: (g.max_seq, g.acked, g.missing, g.reused_seqs, g.interleaved) for e, g in report.items()} == {
        "e1": (5, 5, 0, 0, 0), "e2": (3, 3, 0, 0, 0)}
    # An agent without epochs that resets: the reused seqs are stored and counted, not silent.
    legacy = [event(seq, epoch=None, agent="old") for seq in (1, 2, 3)]
    store.ingest(wire(legacy), received_at=3.0)
    store.ingest(wire([event(seq, epoch=None, agent="old") for seq in (1, 2)]), received_at=4.0)
    (old,) = [g for g in store.gaps() if g.agent_id == "old"]
    assert (old.epoch, old.reused_seqs, old.max_seq) == ("", 2, 3)


def test_two_live_epochs_of_one_agent_id_are_flagged_and_the_older_not_acked(store: Store) -> None:
    assert store.ingest(wire([event(1, epoch="dev-a")]), received_at=1.0).acks
    assert store.ingest(wire([event(1, epoch="dev-b", at=T0 + timedelta(minutes=1))]), received_at=2.0).acks
    late_a = store.ingest(wire([event(2, epoch="dev-a", at=T0 + timedelta(minutes=2))]), received_at=3.0)
    assert late_a.stored == 1
    assert late_a.acks == {}, "the older epoch's ack would overwrite the newer one's retained ack"
    flags = {g.epoch: g.interleaved for g in store.gaps()}
    assert flags == {"dev-a": 1, "dev-b": 0}
    out = CliRunner().invoke(cli, ["hq", "gaps", "--db", _url(store)], env={"COLUMNS": "300"}).stdout
    assert "TWO LIVE EPOCHS (1 events after a newer epoch began)" in out


def test_a_new_epoch_is_current_even_when_its_clock_starts_in_1970(store: Store) -> None:
    """HQ orders epochs by when it first received them: a Pi without RTC dates its first events 1970."""
    store.ingest(wire([event(seq, epoch="old") for seq in (1, 2)]), received_at=1.0)
    early = datetime(1970, 1, 1, 0, 5, tzinfo=UTC)
    result = store.ingest(wire([event(1, epoch="new", at=early)]), received_at=2.0)
    assert result.acks == {("s1", "a1", "new"): 1}
    assert store.ingest(wire([event(3, epoch="old")]), received_at=3.0).acks == {}
    assert {g.epoch: g.interleaved for g in store.gaps()} == {"old": 1, "new": 0}


def test_gaps_see_losses_past_the_highest_seq_received(store: Store) -> None:
    status = AgentStatus(**{k: v for k, v in event(9).model_dump().items()
                            if k not in ("type", "tech", "sector_id", "visit_id")},
                         uptime_s=1.0, outbox_depth=0, last_seq=12)
    store.ingest(wire([*map(event, range(1, 9)), status]), received_at=1.0)
    (gaps,) = store.gaps()
    assert (gaps.max_seq, gaps.agent_last_seq, gaps.ranges, gaps.missing) == (9, 12, [(10, 12)], 3)
    data = json.loads(CliRunner().invoke(cli, ["hq", "gaps", "--db", _url(store), "--json"]).stdout)
    assert [(g["epoch"], g["missing"], g["acked"]) for g in data] == [("e1", 3, 9)]


def test_seqs_gone_from_the_agent_are_acknowledged_past_and_stay_missing(store: Store) -> None:
    # The agent's bounds evicted seqs 1-4 before they were sent: its status says it holds 5 and up.
    status = AgentStatus(**{k: v for k, v in event(9).model_dump().items()
                            if k not in ("type", "tech", "sector_id", "visit_id")},
                         uptime_s=1.0, outbox_depth=5, last_seq=9, first_held_seq=5)
    before = store.ingest(wire(map(event, range(5, 9))), received_at=1.0)
    assert before.acks == {}, "nothing is contiguous from 1 yet"
    after = store.ingest(wire([status]), received_at=2.0)
    assert list(after.acks.values()) == [9]
    (gaps,) = store.gaps()
    assert (gaps.acked, gaps.ranges, gaps.missing) == (9, [(1, 4)], 4)


def _url(store: Store) -> str:
    if store.dialect == "sqlite":
        return f"sqlite:///{store.path}"  # type: ignore[attr-defined]
    conninfo, schema = store.conninfo, store.schema  # type: ignore[attr-defined]
    return f"{conninfo}?schema={schema}"


# --- erasure, files, old rows -------------------------------------------------------------------


SECRET = "LOYAL-7d3f9a"


def _person() -> list[Event]:
    start = event(1, subject="pz-41c2", visit_id="v-77aa01")
    base = {k: v for k, v in start.model_dump().items() if k not in ("type", "tech", "sector_id")}
    link = IdentityLinked(**{**base, "seq": 2, "event_id": uuid7(), "ts": T0 + timedelta(seconds=2)},
                          loyalty_id=SECRET, method="card_tap", confidence=0.9, reader_id="till")
    card = CardTapped(**{k: v for k, v in base.items() if k != "visit_id"} | {
        "seq": 3, "event_id": uuid7(), "ts": T0 + timedelta(seconds=3)},
        reader_id="till", card=SECRET, known=True, linked=True)
    enter = SectorEntered(**{**base, "seq": 4, "event_id": uuid7(), "ts": T0 + timedelta(seconds=4)},
                          sector_id="fish", probability=0.8)
    return [start, link, card, enter]


def test_erase_leaves_no_copy_in_any_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "hq.sqlite"
    store = open_store(f"sqlite:///{path}")
    grant(store, [SECRET])
    try:
        items: list[Accepted | Rejected] = [*wire(_person()), *wire(map(event, range(5, 40)))]
        letters = [decode("santi/v1/s1/a1/events/identity.linked", json.dumps(
            {"loyalty_id": SECRET, "broken": True}).encode()),
            decode("santi/v1/s1/a1/events/sector.exited", b'{"subject": "pz-41c2", "dwell_s": "x"}'),
            decode("santi/v1/s1/a1/events/sector.exited", b'{"visit_id": "v-77aa01"}')]
        store.ingest([*items, *letters], received_at=1.0)
        files = [p for p in tmp_path.iterdir() if p.name.startswith("hq.sqlite")]
        assert any(SECRET.encode() in p.read_bytes() for p in files)
        done = store.erase(SECRET)
        assert (done.events_deleted, done.dead_letters_deleted) == (4, 3)
        for needle in (SECRET, "pz-41c2", "v-77aa01"):
            found = [p.name for p in tmp_path.iterdir() if p.name.startswith("hq.sqlite")
                     and needle.encode() in p.read_bytes()]
            assert found == [], f"{needle} still in {found}"
        assert store.counts()["events"] == 35
    finally:
        store.close()


def test_erase_rewrites_postgresql_tables(pg_url: str) -> None:
    """The tables' and indexes' files, checkpointed before and after: the WAL is the documented limit."""
    store = open_store(pg_url)
    grant(store, [SECRET])
    schema = store.schema  # type: ignore[attr-defined]
    try:
        with psycopg.connect(store.conninfo, autocommit=True) as conn:  # type: ignore[attr-defined]
            data_dir = Path(conn.execute("SHOW data_directory").fetchone()[0])  # type: ignore[index]
            if not os.access(data_dir, os.R_OK):
                pytest.skip(f"cannot read PostgreSQL's files in {data_dir}")

            def files() -> list[Path]:
                conn.execute("CHECKPOINT")
                rows = conn.execute(
                    "SELECT pg_relation_filepath(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = %s AND c.relkind IN ('r', 'i', 't')", (schema,)).fetchall()
                return [data_dir / row[0] for row in rows if row[0] is not None]

            def holding() -> list[str]:
                return [p.name for p in files() if p.exists() and SECRET.encode() in p.read_bytes()]

            store.ingest([*wire(_person()), decode("santi/v1/s1/a1/events/x", json.dumps(
                {"loyalty_id": SECRET}).encode())], received_at=1.0)
            assert holding(), "the id is in the files before the erasure"
            store.erase(SECRET)
            assert holding() == []
    finally:
        store.close()


def test_the_database_file_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        open_store(f"sqlite:///{tmp_path}/hq.sqlite").close()
    finally:
        os.umask(old)
    assert (tmp_path / "hq.sqlite").stat().st_mode & 0o777 == 0o600


def test_profile_survives_rows_stored_before_the_bounds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/hq.sqlite"
    store = open_store(url)
    grant(store, [SECRET])
    store.ingest(wire(_person()), received_at=1.0)
    store.close()
    ended = json.loads(_person()[0].to_json())
    ended.update(type="visit.ended", event_id=str(uuid7()), seq=9, duration_s=1.0, reason="exit", dwell_s={})
    for key in ("tech", "sector_id"):
        ended.pop(key)
    payload = json.dumps(ended).replace('"duration_s": 1.0', '"duration_s": Infinity')
    with sqlite3.connect(tmp_path / "hq.sqlite") as conn:
        conn.execute("INSERT INTO events (event_id, store_id, agent_id, seq, type, ts, subject, visit_id,"
                     " payload, received_at) VALUES (?, 's1', 'a1', 9, 'visit.ended', 0, 'pz-41c2', 'v-77aa01', ?, 0)",
                     (ended["event_id"], payload))
    runner = CliRunner()
    result = runner.invoke(cli, ["hq", "profile", SECRET, "--db", url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["visits"] == 1
    result = runner.invoke(cli, ["hq", "profile", SECRET, "--db", url])
    assert result.exit_code == 0, result.output


def test_a_version_1_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "hq.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '1');
            CREATE TABLE events (event_id TEXT PRIMARY KEY, store_id TEXT NOT NULL, agent_id TEXT NOT NULL,
                seq BIGINT NOT NULL, type TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, subject TEXT NOT NULL,
                visit_id TEXT, loyalty_id TEXT, payload TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL);
            CREATE INDEX events_agent_seq ON events (store_id, agent_id, seq);
            CREATE TABLE retired_seqs (store_id TEXT NOT NULL, agent_id TEXT NOT NULL, seq BIGINT NOT NULL,
                PRIMARY KEY (store_id, agent_id, seq));
            CREATE TABLE agents (store_id TEXT NOT NULL, agent_id TEXT NOT NULL, max_seq BIGINT NOT NULL,
                contiguous_upto BIGINT NOT NULL DEFAULT 0, evicted_total BIGINT NOT NULL DEFAULT 0,
                last_seen DOUBLE PRECISION NOT NULL, PRIMARY KEY (store_id, agent_id));
            INSERT INTO agents VALUES ('s1', 'a1', 4, 2, 1, 5.0);
            INSERT INTO retired_seqs VALUES ('s1', 'a1', 3);
        """)
        for e in (event(s, epoch=None) for s in (1, 2, 4)):
            conn.execute("INSERT INTO events VALUES (?, 's1', 'a1', ?, ?, ?, ?, ?, NULL, ?, 1.0)",
                         (str(e.event_id), e.seq, e.type, e.ts.timestamp(), e.subject, e.visit_id, e.to_json()))
    store = open_store(f"sqlite:///{path}")
    try:
        (gaps,) = store.gaps()
        assert (gaps.epoch, gaps.max_seq, gaps.missing, gaps.evicted_total) == ("", 4, 0, 1)
        # The upgraded agent keeps its seqs in a new epoch: nothing before seq 5 is missing there.
        result = store.ingest(wire([event(5, epoch="e1"), event(6, epoch="e1")]), received_at=2.0)
        assert result.acks == {("s1", "a1", "e1"): 6}
        assert store.counts()["finished_seqs"] == 1
    finally:
        store.close()


def test_writer_keeps_going_after_a_hostile_burst(broker: Broker, tmp_path: Path) -> None:
    """Deep nesting, huge numbers, NUL bytes, 300 KB: counted as dead letters, valid events still stored."""
    url = f"sqlite:///{tmp_path}/hq.sqlite"
    topic = "santi/v1/s1/a1/events/visit.started"
    hostile: list[tuple[str, bytes | str]] = [
        (topic, b"[" * 100_000), (topic, b'{"seq": 1' + b"0" * 400 + b"}"), (topic, b"\x00" * 100),
        (topic, b"{" + b" " * 300_000 + b"}"), (topic, "\ud800".encode("utf-8", "surrogatepass"))]
    with HqSubscriber(broker.host, broker.port, url, "hq") as sub:
        assert sub.wait_connected(10)
        publish(broker, [*hostile, *[(topic_for(e), e.to_json()) for e in map(event, range(1, 101))]])
        wait_until(lambda: sub.stats().received >= 105, 60.0, "105 messages")
        stats = sub.stats()
        assert (stats.stored, stats.dead_letters, stats.failure) == (100, 5, None)


class _FailingStore(SqliteStore):
    """A store with a bug: ingest raises what no payload explains (the writer must not hide it)."""

    def ingest(self, batch: Sequence[Accepted | Rejected], received_at: float, *,
               want_events: bool = True) -> IngestResult:
        raise RuntimeError("a bug in the store")


def test_a_writer_that_dies_marks_hq_unhealthy(broker: Broker, tmp_path: Path) -> None:
    store = _FailingStore(tmp_path / "hq.sqlite")
    sub = HqSubscriber(broker.host, broker.port, store, "hq")
    sub.start()
    try:
        assert sub.wait_connected(10)
        publish(broker, [(topic_for(e), e.to_json()) for e in map(event, range(1, 4))])
        wait_until(lambda: sub.stats().failure is not None, 60.0, "the failure")
        stats = sub.stats()
        assert stats.failure == "the writer stopped: RuntimeError: a bug in the store"
        assert not stats.healthy
    finally:
        started = time.monotonic()
        sub.stop()
        store.close()
    assert time.monotonic() - started < 5.0


def test_a_reason_quoting_a_nul_is_dead_lettered_not_retried_for_ever(store: Store) -> None:
    """PostgreSQL text holds no NUL: a validation error that quotes one (a dwell key) must still be stored."""
    fields = json.loads(event(7).to_json())
    fields.update(type="visit.ended", duration_s=0.0, dwell_s={"\x00": 0.0}, reason="exit")
    fields.pop("tech")
    fields.pop("sector_id")
    item = decode("santi/v1/s1/a1/events/visit.ended", json.dumps(fields, ensure_ascii=False).encode())
    assert isinstance(item, Rejected)
    result = store.ingest([item], received_at=1.0)
    assert result.dead_letters == 1
    (letter,) = store.dead_letters()
    assert "\x00" not in letter.reason
    assert letter.reason.startswith("invalid event")


def test_a_rejected_event_naming_an_epoch_no_agent_could_have_finishes_no_seq(store: Store) -> None:
    """A NUL in the epoch of an invalid event: dead-lettered, its seq not trusted (PostgreSQL holds no NUL)."""
    fields = json.loads(event(7).to_json())
    fields.update(epoch="\x00", seq=1)
    item = decode("santi/v1/s1/a1/events/visit.started", json.dumps(fields).encode())
    assert isinstance(item, Rejected)
    assert item.origin is None
    assert store.ingest([item], received_at=1.0).dead_letters == 1
    assert store.counts()["finished_seqs"] == 0
