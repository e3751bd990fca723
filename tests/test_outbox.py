"""The outbox on real SQLite files: sequencing, bounds, counters, bad files and a full disk."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import cli
from agent.config import BufferConfig
from agent.events import AgentStatus, parse_event, topic_for, utc_from_epoch, uuid7
from agent.outbox import OUTBOX_FILE, Outbox, OutboxError, OutboxFull, OutboxStats
from tests.helpers.outbox_writer import AGENT, STORE, FakeClock, events

BIG = BufferConfig()


def status(stats: OutboxStats) -> AgentStatus:
    return AgentStatus(
        event_id=uuid7(1_760_000_000_000, bytes(10)), store_id=STORE, agent_id=AGENT,
        ts=datetime(2025, 10, 9, tzinfo=UTC), subject=AGENT, uptime_s=1.0,
        outbox_depth=stats.depth,
        oldest_unsent_ts=None if stats.oldest_ts is None else utc_from_epoch(stats.oldest_ts),
        evicted_total=stats.evicted_total, evicted_since_last=stats.evicted_since_last,
    )


def test_seq_is_gap_free_from_one_and_on_the_wire(sqlite_path: Path) -> None:
    with Outbox.open(sqlite_path, BIG) as outbox:
        first = outbox.append(events(1)[0])
        batch = outbox.append_many(events(5, start=1))
        assert first.seq == 1
        assert [e.seq for e in batch] == [2, 3, 4, 5, 6]
        rows = outbox.peek(0, 100)
        assert [r.seq for r in rows] == [1, 2, 3, 4, 5, 6]
        for row, event in zip(rows, [first, *batch], strict=True):
            assert parse_event(row.payload) == event
            assert row.topic == topic_for(event)
            assert row.event_id == str(event.event_id)
            assert row.ts == event.ts.timestamp()
        assert outbox.append_many([]) == []


def test_seq_survives_restart_and_a_drained_outbox(sqlite_path: Path) -> None:
    with Outbox.open(sqlite_path, BIG) as outbox:
        outbox.append_many(events(10))
        assert outbox.ack_published(range(1, 11)) == 10
        assert outbox.depth() == 0
        assert outbox.oldest_ts() is None
    with Outbox.open(sqlite_path, BIG) as outbox:
        assert outbox.last_seq == 10
        assert outbox.append(events(1, start=10)[0]).seq == 11
        assert outbox.depth() == 1


def test_peek_ack_and_counters(sqlite_path: Path) -> None:
    with Outbox.open(sqlite_path, BIG) as outbox:
        stored = outbox.append_many(events(20))
        assert [r.seq for r in outbox.peek(5, 3)] == [6, 7, 8]
        assert outbox.ack_published([1, 2, 3, 99]) == 3
        assert outbox.ack_published([1, 2]) == 0
        assert outbox.ack_published([]) == 0
        assert outbox.depth() == 17
        assert outbox.oldest_ts() == stored[3].ts.timestamp()
        expected = sum(len(r.payload) + len(r.topic) for r in outbox.peek(0, 100))
        assert outbox.stored_bytes() == expected
    with Outbox.open(sqlite_path, BIG) as outbox:
        assert outbox.depth() == 17
        assert outbox.stored_bytes() == expected


def test_row_bound_evicts_oldest_counts_exactly_and_reports_once(sqlite_path: Path) -> None:
    bounds = BufferConfig(max_rows=100)
    with Outbox.open(sqlite_path, bounds) as outbox:
        for start in range(0, 130, 13):
            outbox.append_many(events(13, start=start))
        assert outbox.depth() == 100
        assert outbox.evicted_total == 30
        assert outbox.peek(0, 1)[0].seq == 31
    with Outbox.open(sqlite_path, bounds) as outbox:
        # The unreported count survives a restart: a crash cannot hide a loss.
        report = outbox.append_status(status)
        assert (report.evicted_total, report.evicted_since_last) == (30, 30)
        assert report.seq == 131
        assert report.outbox_depth == 100
        stored = outbox.peek(130, 1)[0]
        assert parse_event(stored.payload) == report
        # Storing the status evicted one more row, which the next status reports.
        assert outbox.evicted_total == 31
        assert outbox.take_evicted_since_last() == 1
        assert outbox.take_evicted_since_last() == 0
        assert outbox.append_status(status).evicted_since_last == 0


def test_byte_bound_evicts_just_enough(sqlite_path: Path) -> None:
    bounds = BufferConfig(max_bytes=64 * 1024)
    batch = events(400)
    with Outbox.open(sqlite_path, bounds) as outbox:
        for i in range(0, 400, 40):
            outbox.append_many(batch[i:i + 40])
        assert outbox.stored_bytes() <= bounds.max_bytes
        rows = outbox.peek(0, 1000)
        assert [r.seq for r in rows] == list(range(rows[0].seq, 401))
        assert outbox.evicted_total == 400 - len(rows) == rows[0].seq - 1
        # Keeping one more (older) row would have broken the bound.
        older = json.loads(batch[rows[0].seq - 2].model_copy(update={"seq": rows[0].seq - 1}).to_json())
        older_size = len(json.dumps(older, separators=(",", ":"))) + len(rows[0].topic)
        assert outbox.stored_bytes() + older_size > bounds.max_bytes


def test_age_bound_applies_on_enforce(sqlite_path: Path) -> None:
    clock = FakeClock()
    bounds = BufferConfig(max_age_days=1.0)
    with Outbox.open(sqlite_path, bounds, clock) as outbox:
        outbox.append_many(events(5))
        clock.now += 0.5 * 86400
        outbox.append_many(events(3, start=5))
        assert outbox.enforce() == 0
        clock.now += 0.6 * 86400
        assert outbox.enforce() == 5
        assert [r.seq for r in outbox.peek(0, 10)] == [6, 7, 8]
        assert outbox.take_evicted_since_last() == 5
        assert outbox.enforce(clock.now + 10 * 86400) == 3
        assert outbox.depth() == 0


def test_garbage_file_is_moved_aside_and_a_fresh_outbox_starts(
    sqlite_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = b"this is not a database, it is a shopping list\n" * 200
    sqlite_path.write_bytes(garbage)
    clock = FakeClock(1_760_000_000.0)
    with Outbox.open(sqlite_path, BIG, clock) as outbox:
        assert outbox.recovered is not None
        assert str(sqlite_path) in outbox.recovered
        assert "\n" not in outbox.recovered
        aside = sqlite_path.with_name("santi.sqlite.corrupt-20251009T085320Z")
        assert aside.read_bytes() == garbage
        assert aside.name in outbox.recovered
        assert outbox.append(events(1)[0]).seq == 1
    assert any(r.levelname == "ERROR" and str(sqlite_path) in r.getMessage() for r in caplog.records)
    # A second bad file in the same second does not overwrite the first one aside.
    sqlite_path.unlink()
    sqlite_path.with_name("santi.sqlite-wal").unlink(missing_ok=True)
    sqlite_path.write_bytes(b"x" * 5000)
    with Outbox.open(sqlite_path, BIG, clock) as outbox:
        assert outbox.recovered is not None
    assert aside.read_bytes() == garbage
    assert sqlite_path.with_name(aside.name + ".2").read_bytes() == b"x" * 5000


def test_truncated_outbox_is_detected_and_kept(sqlite_path: Path) -> None:
    with Outbox.open(sqlite_path, BIG) as outbox:
        outbox.append_many(events(3000))
    size = sqlite_path.stat().st_size
    with sqlite_path.open("r+b") as handle:
        handle.truncate(size // 2)
    with Outbox.open(sqlite_path, BIG) as outbox:
        assert outbox.recovered is not None
        assert str(sqlite_path) in outbox.recovered
        assert outbox.depth() == 0
    moved = list(sqlite_path.parent.glob("santi.sqlite.corrupt-*"))
    assert len(moved) == 1
    assert moved[0].stat().st_size == size // 2


def test_someone_elses_database_is_moved_aside(sqlite_path: Path) -> None:
    other = sqlite3.connect(sqlite_path)
    other.execute("CREATE TABLE invoices (id INTEGER)")
    other.commit()
    other.close()
    with Outbox.open(sqlite_path, BIG) as outbox:
        assert outbox.recovered is not None
        assert "invoices" in outbox.recovered


def test_unopenable_path_is_an_error_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    path.mkdir()
    with pytest.raises(OutboxError, match=str(path)) as info:
        Outbox.open(path, BIG)
    assert "\n" not in str(info.value)
    assert path.is_dir()
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_full_disk_is_one_line_and_loses_nothing(sqlite_path: Path) -> None:
    outbox = Outbox.open(sqlite_path, BIG)
    outbox.append_many(events(50))
    pages = outbox._db.execute("PRAGMA page_count").fetchone()[0]
    # The disk-full condition: the file may not grow past a few more pages.
    outbox._db.execute(f"PRAGMA max_page_count = {pages + 8}")
    stored = 50
    failure: OutboxFull | None = None
    while failure is None:
        try:
            outbox.append_many(events(10, start=stored))
            stored += 10
        except OutboxFull as exc:
            failure = exc
    message = str(failure)
    assert "\n" not in message
    assert "disk full" in message
    assert str(sqlite_path) in message
    assert outbox.depth() == stored
    assert outbox.last_seq == stored
    outbox.close()
    with Outbox.open(sqlite_path, BIG) as reopened:
        rows = reopened.peek(0, 100_000)
        assert [r.seq for r in rows] == list(range(1, stored + 1))
        assert reopened.append(events(1, start=stored)[0]).seq == stored + 1


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 30)),
        st.tuples(st.just("ack"), st.integers(0, 40)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=25,
))
def test_property_seq_gap_free_and_counts_match_a_model(tmp_path: Path, ops: list[tuple[str, int]]) -> None:
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "outbox.sqlite"
    bounds = BufferConfig(max_rows=100)
    model: list[int] = []
    last = evicted = 0
    outbox = Outbox.open(path, bounds)
    try:
        for op, n in ops:
            if op == "append":
                got = outbox.append_many(events(n, start=last))
                assert [e.seq for e in got] == list(range(last + 1, last + n + 1))
                last += n
                model.extend(range(last - n + 1, last + 1))
                overflow = max(0, len(model) - bounds.max_rows)
                evicted += overflow
                model = model[overflow:]
            elif op == "ack":
                chosen = model[::3][:n]
                assert outbox.ack_published(chosen) == len(chosen)
                model = [s for s in model if s not in set(chosen)]
            else:
                outbox.close()
                outbox = Outbox.open(path, bounds)
            assert [r.seq for r in outbox.peek(0, 1000)] == model
            assert outbox.depth() == len(model)
            assert outbox.last_seq == last
            assert outbox.evicted_total == evicted
    finally:
        outbox.close()


def test_buffer_cli_status_and_export(tmp_path: Path, example_site: Path) -> None:
    state = tmp_path / "state"
    site = tmp_path / "site.toml"
    site.write_text(example_site.read_text().replace('state_dir = "/var/lib/santi"', f'state_dir = "{state}"'))
    runner = CliRunner()
    missing = runner.invoke(cli, ["buffer", "status", str(site)])
    assert missing.exit_code == 2
    assert missing.output.strip() == (f"santi: no outbox at {state / OUTBOX_FILE} — has the agent run "
                                      f"with this state_dir?")
    with Outbox.open(state / OUTBOX_FILE, BufferConfig(max_rows=100)) as outbox:
        stored = outbox.append_many(events(120))
        outbox.ack_published([21, 22])
        result = runner.invoke(cli, ["buffer", "status", str(site), "--json"])
        assert result.exit_code == 0, result.output
        figures = json.loads(result.output)
        assert (figures["depth"], figures["last_seq"], figures["evicted_total"]) == (98, 120, 20)
        assert figures["evicted_unreported"] == 20
        assert figures["oldest_event"] == stored[22].ts.isoformat()
        assert runner.invoke(cli, ["buffer", "status", str(site)]).exit_code == 0
        out = tmp_path / "events.jsonl"
        result = runner.invoke(cli, ["buffer", "export", str(site), str(out), "--after-seq", "100"])
        assert result.exit_code == 0, result.output
        assert [parse_event(line) for line in out.read_text().splitlines()] == stored[100:]
        assert outbox.depth() == 98
