"""``santi hq import``: what ``santi buffer export`` writes reaches HQ as live traffic would.

The round trip: an agent's outbox whose first events went live and whose next
ones were lost after the broker's PUBACK (``ack = "broker"``), exported by
``santi buffer export``, imported by ``santi hq import`` into SQLite and
PostgreSQL. HQ then holds exactly the rows it would hold had the exported
events come over MQTT, reports the same gap, and a second import adds nothing.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.config import BufferConfig
from agent.events import parse_event, topic_for
from agent.localbroker import example_site_for
from agent.outbox import Outbox
from hq.backends import open_store
from hq.ingest import decode
from hq.store import AgentGaps, Store
from tests.helpers.hq import pg_schema_url
from tests.helpers.outbox_writer import AGENT, STORE, make_event

LIVE, LOST, WAITING = 5, 4, 23
"""Seqs 1-5 reached HQ live; 6-9 the broker PUBACKed and lost; 10-32 wait in the outbox."""


@pytest.fixture(params=["sqlite", "postgresql"])
def db_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two empty HQ databases of one kind: one fed by import, one by the live path."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/imported.sqlite", f"sqlite:///{tmp_path}/live.sqlite"
        return
    server = request.getfixturevalue("pg_server")
    for imported in pg_schema_url(server):
        for live in pg_schema_url(server):
            yield imported, live


def _outbox_with_a_gap(tmp_path: Path) -> tuple[Path, list[tuple[str, bytes]]]:
    """The example site's outbox after the loss; returns the site file and the events that went live."""
    site = example_site_for(tmp_path, 1883)
    rng = random.Random(7)
    events = [make_event(i, rng) for i in range(LIVE + LOST + WAITING)]
    with Outbox.open(tmp_path / "state" / "outbox.sqlite", BufferConfig()) as outbox:
        stored = outbox.append_many(events)
        live = [(topic_for(e), e.to_json().encode()) for e in stored[:LIVE]]
        assert outbox.ack(outbox.epoch, LIVE + LOST) == LIVE + LOST
        assert outbox.depth() == WAITING
    return site, live


def _rows(store: Store) -> list[tuple[object, ...]]:
    with store._read() as cur:  # the rows themselves are what the round trip must keep
        cur.execute("SELECT event_id, store_id, agent_id, seq, type, payload, epoch FROM events ORDER BY seq")
        return [tuple(row) for row in cur.fetchall()]


def _gaps(store: Store) -> list[AgentGaps]:
    return [g.__class__(**{**g.__dict__, "last_seen": 0.0}) for g in store.gaps()]


def test_export_then_import_matches_live_traffic_and_twice_adds_nothing(tmp_path: Path,
                                                                         db_urls: tuple[str, str]) -> None:
    imported_url, live_url = db_urls
    site, live = _outbox_with_a_gap(tmp_path)
    export = tmp_path / "pi-1-events.jsonl"
    runner = CliRunner()
    exported = runner.invoke(cli, ["buffer", "export", str(site), str(export)])
    assert exported.exit_code == 0, exported.output
    lines = export.read_bytes().splitlines()
    assert len(lines) == WAITING

    imported, by_mqtt = open_store(imported_url), open_store(live_url)
    try:
        for store in (imported, by_mqtt):
            store.ingest([decode(topic, payload) for topic, payload in live], 1.0)
        # The live path: each exported line on the topic its event names, as the uplink publishes it.
        by_mqtt.ingest([decode(topic_for(parse_event(line)), line) for line in lines], 2.0)

        first = runner.invoke(cli, ["hq", "import", str(export), "--db", imported_url])
        assert first.exit_code == 0, first.output
        assert first.stdout.splitlines()[0] == (
            f"pi-1-events.jsonl: {WAITING} lines, {WAITING} stored, 0 already stored, "
            "0 suppressed (erased or without consent), 0 dead-lettered")
        assert f"{LIVE + 1}-{LIVE + LOST}" in first.stdout  # the gap, as santi hq gaps shows it
        rows = _rows(imported)
        assert rows == _rows(by_mqtt)
        assert [row[3] for row in rows] == [*range(1, LIVE + 1), *range(LIVE + LOST + 1, LIVE + LOST + WAITING + 1)]
        assert {row[5] for row in rows[LIVE:]} == {line.decode() for line in lines}
        gaps = _gaps(imported)
        assert gaps == _gaps(by_mqtt)
        assert [(g.store_id, g.agent_id, g.missing, g.ranges) for g in gaps] == [
            (STORE, AGENT, LOST, [(LIVE + 1, LIVE + LOST)])]

        again = runner.invoke(cli, ["hq", "import", str(export), "--db", imported_url])
        assert again.exit_code == 0, again.output
        assert again.stdout.splitlines()[0] == (
            f"pi-1-events.jsonl: {WAITING} lines, 0 stored, {WAITING} already stored, "
            "0 suppressed (erased or without consent), 0 dead-lettered")
        assert _rows(imported) == rows
        assert _gaps(imported) == gaps
    finally:
        imported.close()
        by_mqtt.close()


def test_a_bad_line_is_dead_lettered_named_and_the_rest_stored(tmp_path: Path) -> None:
    site, _ = _outbox_with_a_gap(tmp_path)
    export = tmp_path / "events.jsonl"
    assert CliRunner().invoke(cli, ["buffer", "export", str(site), str(export)]).exit_code == 0
    lines = export.read_text().splitlines()
    export.write_text("\n".join([lines[0], '{"schema": "santi.presence/1", "type": "visit.started"', *lines[1:]]) + "\n")
    db = f"sqlite:///{tmp_path}/hq.sqlite"
    result = CliRunner().invoke(cli, ["hq", "import", str(export), "--db", db])
    assert result.exit_code == 1
    out = result.stdout.splitlines()
    assert out[0] == (f"events.jsonl: {WAITING + 1} lines, {WAITING} stored, 0 already stored, "
                      "0 suppressed (erased or without consent), 1 dead-lettered")
    assert out[1].startswith("  line 2: ")
    letters = CliRunner().invoke(cli, ["hq", "dead-letters", "--db", db, "--json"])
    assert '"topic": "import:events.jsonl:2"' in letters.stdout


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["hq", "import", str(tmp_path / "nope.jsonl"), "--db",
                                      f"sqlite:///{tmp_path}/hq.sqlite"])
    assert result.exit_code == 2
    assert "nope.jsonl" in result.stderr
    assert not (tmp_path / "hq.sqlite").exists()
