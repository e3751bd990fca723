"""HQ's end-to-end acknowledgement, agent side, through a real mosquitto (HQ played by a plain paho client)."""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import BufferConfig
from agent.events import AgentStatus, utc_from_epoch, uuid7
from agent.localbroker import Broker
from agent.outbox import Outbox
from agent.uplink import Uplink
from tests.helpers.hq_acks import AckingSubscriber, ack_payload, publish_ack, publish_raw
from tests.helpers.outbox_writer import AGENT, STORE, fill
from tests.helpers.uplink import Subscriber, make_uplink
from tests.helpers.wait import wait_until


@contextlib.contextmanager
def all_sent(broker: Broker, outbox: Outbox, n: int) -> Iterator[tuple[Subscriber, Uplink]]:
    """``n`` events stored, published and PUBACKed, with nobody acknowledging them yet."""
    sub = Subscriber(broker, acks=False)
    fill(outbox, n)
    link = make_uplink(broker.port, outbox)
    link.start()
    try:
        wait_until(lambda: outbox.ack_view().sent_unacked == n, 10.0, 'outbox.ack_view().sent_unacked == n')
        yield sub, link
    finally:
        link.stop(drain_deadline_s=1)
        sub.close()


def ack(broker: Broker, epoch: str, seq: int) -> None:
    publish_ack(broker.host, broker.port, STORE, AGENT, epoch, seq)


def test_rows_survive_the_puback_until_hq_acknowledges_them(broker: Broker, outbox: Outbox) -> None:
    with all_sent(broker, outbox, 50) as (sub, link):
        assert len({e["event_id"] for e in sub.events(50, timeout=10)}) == 50
        assert outbox.depth() == 50
        ack(broker, outbox.epoch, 30)
        wait_until(lambda: outbox.depth() == 20, 10, "20 rows left in the outbox")
        view = outbox.ack_view()
        assert (view.acked_seq, view.sent_unacked) == (30, 20)
        assert [row.seq for row in outbox.peek(0, 1)] == [31]
        ack(broker, outbox.epoch, 50)
        wait_until(lambda: outbox.depth() == 0, 10, "0 rows left in the outbox")
        assert link.stats.hq_acked_rows == 50


def test_acks_for_another_epoch_or_an_unassigned_seq_are_ignored_and_counted(
    broker: Broker, outbox: Outbox
) -> None:
    with all_sent(broker, outbox, 20) as (_sub, link):
        ack(broker, "0123456789abcdef", 20)  # a reset outbox's old epoch
        wait_until(lambda: outbox.acks_ignored.get("other_epoch") == 1, 10.0, 'outbox.acks_ignored.get("other_epoch") == 1')
        ack(broker, outbox.epoch, 21)  # a seq this outbox never assigned
        wait_until(lambda: outbox.acks_ignored.get("beyond_last_seq") == 1, 10.0, 'outbox.acks_ignored.get("beyond_last_seq") == 1')
        assert outbox.depth() == 20
        assert link.ack_status()["acks_ignored"] == {"other_epoch": 1, "beyond_last_seq": 1}
        ack(broker, outbox.epoch, 20)
        wait_until(lambda: outbox.depth() == 0, 10, "0 rows left in the outbox")


def test_unacknowledged_rows_are_sent_again_after_the_timeout(broker: Broker, outbox: Outbox) -> None:
    """The lowest window (20) goes again after the timeout; HQ's ack moving sends the next overdue one at once."""
    sub = Subscriber(broker, acks=False)
    fill(outbox, 30)
    link = make_uplink(broker.port, outbox, ack_timeout_s=1.0)
    link.start()
    try:
        received = sub.events(30, timeout=10)
        assert sorted(int(str(e["seq"])) for e in received) == list(range(1, 31))
        again: list[int] = []

        def seen_again(seqs: set[int]) -> bool:
            again.extend(int(str(e["seq"])) for e in sub.events(30, timeout=0.2))
            return set(again) >= seqs

        wait_until(lambda: seen_again(set(range(1, 21))), 10, 'seen_again(set(range(1, 21)))')
        assert not set(again) & set(range(21, 31))  # not the blockers: they wait while 1-20 are unacknowledged
        ack(broker, outbox.epoch, 20)  # HQ has 1-20 now: the overdue 21-30 go without another timeout
        wait_until(lambda: seen_again(set(range(21, 31))), 5, 'seen_again(set(range(21, 31)))')
        ack(broker, outbox.epoch, 30)
        wait_until(lambda: outbox.depth() == 0, 10, "0 rows left in the outbox")
        settled = link.stats.resent
        time.sleep(2.5)  # two more timeouts: nothing is left to re-send
        assert link.stats.resent == settled
    finally:
        link.stop(drain_deadline_s=1)
        sub.close()


def test_with_hq_away_the_resends_are_a_trickle_not_the_backlog_again(broker: Broker, outbox: Outbox) -> None:
    """One window (20) per ack_timeout_s while HQ's ack does not move: not all 200 rows every timeout."""
    fill(outbox, 200)
    link = make_uplink(broker.port, outbox, ack_timeout_s=3.0)
    link.start()
    try:
        wait_until(lambda: link.stats.resent > 0, 15, 'link.stats.resent > 0')
        first = time.monotonic()
        wait_until(lambda: link.stats.resent >= 40, 15, 'link.stats.resent >= 40')  # the second round: one timeout later
        assert time.monotonic() - first > 2.0
        assert link.stats.resent == 40
        assert outbox.depth() == 200
    finally:
        link.stop(drain_deadline_s=1)


def test_a_broker_restart_that_loses_acknowledged_events_costs_a_resend_not_the_events(
    broker: Broker, outbox: Outbox
) -> None:
    """The issue's loss: the broker PUBACKs with no subscriber, restarts without them; the agent sends again."""
    fill(outbox, 100)
    link = make_uplink(broker.port, outbox, ack_timeout_s=2.0)
    link.start()
    try:
        wait_until(lambda: outbox.ack_view().sent_unacked == 100, 10.0, 'outbox.ack_view().sent_unacked == 100')  # PUBACKed to nobody: the broker drops them
        broker.restart()
        got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        hq = AckingSubscriber(broker.host, broker.port, got)
        try:
            wait_until(lambda: outbox.depth() == 0, 20, "0 rows left in the outbox")
        finally:
            hq.close()
        assert link.stats.connections >= 2  # it subscribed again on the new connection
        assert link.stats.resent >= 100
    finally:
        link.stop(drain_deadline_s=1)


def test_the_retained_ack_deletes_what_hq_has_when_the_agent_comes_back(broker: Broker, sqlite_path: Path) -> None:
    with Outbox.open(sqlite_path, BufferConfig()) as box:
        fill(box, 40)
        epoch = box.epoch
    ack(broker, epoch, 25)  # retained while the agent is away
    with Outbox.open(sqlite_path, BufferConfig()) as box:
        link = make_uplink(broker.port, box)
        link.start()
        try:
            wait_until(lambda: box.depth() == 15, 10, "15 rows left in the outbox")
            assert box.ack_view().acked_seq == 25
        finally:
            link.stop(drain_deadline_s=1)


def test_garbage_on_the_ack_topic_is_counted_and_does_not_stop_the_uplink(
    broker: Broker, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.uplink")
    with all_sent(broker, outbox, 10) as (sub, link):
        poison = [
            b"not json", b"[" * 4000, b"[" * 100_000, b'{"seq": ' + b"9" * 400 + b"}", b"\xff\xfe\x00",
            ack_payload(STORE, AGENT, outbox.epoch, 10).replace('"seq":10', '"seq":' + str(2**70)).encode(),
            ack_payload(STORE, "pi-2", outbox.epoch, 10).encode(),  # someone else's ack on our topic
            b"x" * 1_000_000,
        ]
        for payload in poison:
            publish_raw(broker.host, broker.port, STORE, AGENT, payload)
        wait_until(lambda: sum(link.stats.acks_dropped.values()) == len(poison), 10.0, 'sum(link.stats.acks_dropped.values()) == len(poison)')
        assert link.stats.acks_dropped == {"invalid": 5, "other_agent": 1, "too_large": 2}
        assert outbox.depth() == 10
        assert link.state == "online"
        ack(broker, outbox.epoch, 10)  # and the next real ack still works
        wait_until(lambda: outbox.depth() == 0, 10, "0 rows left in the outbox")
        fill(outbox, 5, start=10)
        assert {int(str(e["seq"])) for e in sub.events(15, timeout=10)} == set(range(1, 16))
    warnings = [r for r in caplog.records if r.getMessage() == "unusable message on the ack topic dropped"]
    assert len(warnings) == 3  # once per reason


def test_ack_broker_keeps_the_old_behaviour_and_says_so(
    broker: Broker, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.uplink")
    fill(outbox, 25)
    link = make_uplink(broker.port, outbox, ack="broker")
    assert any('ack = "broker"' in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    link.start()
    try:
        wait_until(lambda: outbox.depth() == 0, 10, "0 rows left in the outbox")  # deleted at PUBACK, nobody listening
        status = outbox.append_status(lambda stats: _status(stats.depth))
        assert status.ack_mode == "broker"
        assert link.ack_status()["ack_mode"] == "broker"
    finally:
        link.stop(drain_deadline_s=1)


def _status(depth: int) -> AgentStatus:
    ts = 1_760_000_000.0
    return AgentStatus(event_id=uuid7(int(ts * 1000)), store_id=STORE, agent_id=AGENT, ts=utc_from_epoch(ts),
                       subject=AGENT, state="online", uptime_s=1.0, sources={}, outbox_depth=depth)


# -- the outbox's epoch ----------------------------------------------------------------


def test_events_carry_the_epoch_and_the_status_its_last_seq_and_ack_mode(sqlite_path: Path) -> None:
    with Outbox.open(sqlite_path, BufferConfig()) as box:
        assert len(box.epoch) == 16
        fill(box, 3)
        status = box.append_status(lambda stats: _status(stats.depth))
        assert (status.seq, status.last_seq, status.epoch, status.ack_mode) == (4, 4, box.epoch, "hq")
        rows = box.peek(0, 10)
    assert all(f'"epoch":"{box.epoch}"'.encode() in row.payload for row in rows)


def test_a_restarted_outbox_keeps_its_epoch_and_a_reset_one_gets_a_new_one(sqlite_path: Path) -> None:
    with Outbox.open(sqlite_path, BufferConfig()) as box:
        first = box.epoch
        fill(box, 5)
    with Outbox.open(sqlite_path, BufferConfig()) as box:
        assert box.epoch == first
        assert box.last_seq == 5
    for side in (sqlite_path.with_name(sqlite_path.name + "-wal"), sqlite_path.with_name(sqlite_path.name + "-shm")):
        side.unlink(missing_ok=True)
    sqlite_path.write_bytes(b"this is not an outbox" * 500)
    with Outbox.open(sqlite_path, BufferConfig()) as box:
        assert box.recovered is not None
        assert "new epoch" in box.recovered
        assert box.epoch != first
        assert box.last_seq == 0


def test_an_outbox_from_before_epochs_gets_one_on_first_open_and_keeps_its_rows(sqlite_path: Path) -> None:
    db = sqlite3.connect(sqlite_path)
    db.executescript("""
        CREATE TABLE outbox (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, topic TEXT NOT NULL,
                             payload BLOB NOT NULL, ts REAL NOT NULL, stored_at REAL NOT NULL, size INTEGER NOT NULL);
        CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 1), last_seq INTEGER NOT NULL, rows INTEGER NOT NULL,
                            bytes INTEGER NOT NULL, evicted_total INTEGER NOT NULL,
                            evicted_unreported INTEGER NOT NULL);
        INSERT INTO state VALUES (1, 7, 1, 10, 0, 0);
        INSERT INTO outbox VALUES (7, 'e7', 'santi/v1/s/a/events/x', X'7B7D', 1.0, 1.0, 10);
    """)
    db.close()
    with Outbox.open(sqlite_path, BufferConfig()) as box:
        epoch = box.epoch
        assert len(epoch) == 16
        assert [row.seq for row in box.peek(0, 10)] == [7]
        fill(box, 1)
        assert box.last_seq == 8
        assert box.ack(epoch, 8) == 2
    with Outbox.open(sqlite_path, BufferConfig()) as box:
        assert box.epoch == epoch
        assert box.ack_view().acked_seq == 8
        assert box.depth() == 0
