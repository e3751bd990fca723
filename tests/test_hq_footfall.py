"""HQ stores the anonymous counts and ``santi hq footfall`` shows a store's day (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.config import load_site
from agent.events import Event, FootfallCounted, OccupancySampled, topic_for, uuid7
from agent.localbroker import Broker, example_site_for
from agent.replayclock import ReplayClock
from agent.replayfile import write_records
from agent.service import Service
from agent.sources.replay import ReplaySource
from hq.backends import open_store
from hq.footfall import read_day
from hq.ingest import decode
from hq.subscriber import HqSubscriber
from tests.helpers.footfall import START, recording
from tests.helpers.hq import pg_schema_url
from tests.helpers.wait import wait_until

DAY = date(2026, 12, 5)
NINE = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def _envelope(store_id: str, seq: int, ts: datetime) -> dict[str, object]:
    return {"event_id": uuid7(int(ts.timestamp() * 1000)), "seq": seq, "epoch": "e1", "store_id": store_id,
            "agent_id": "pi-1", "subject": "pi-1", "ts": ts}


def day_of_counts(store_id: str = "shop-1") -> list[Event]:
    """09:00-11:00: a sample a minute (the count rises by one every ten minutes), 09:00 counted whole,
    10:00 in two parts around a restart; a sample of the day before and one of a sector, which the day leaves out."""
    events: list[Event] = []
    for minute in range(120):
        end = NINE + timedelta(minutes=minute)
        events.append(OccupancySampled(**_envelope(store_id, len(events) + 1, end + timedelta(minutes=2)),
                                       interval_start=end - timedelta(minutes=1), interval_end=end,
                                       method="probe_stays", count=float(minute // 10), count_sd=1.0))
    for start, end, entries, sd in ((NINE, NINE + timedelta(hours=1), 12.0, 2.0),
                                    (NINE + timedelta(hours=1), NINE + timedelta(minutes=80), 5.0, 1.0),
                                    (NINE + timedelta(minutes=85), NINE + timedelta(hours=2), 7.0, 1.5)):
        events.append(FootfallCounted(**_envelope(store_id, len(events) + 1, end + timedelta(minutes=2)),
                                      interval_start=start, interval_end=end, method="probe_stays",
                                      entries=entries, entries_sd=sd))
    before = NINE - timedelta(hours=10)
    events.append(OccupancySampled(**_envelope(store_id, len(events) + 1, before), interval_start=before,
                                   interval_end=before, method="probe_stays", count=40.0, count_sd=1.0))
    events.append(OccupancySampled(**_envelope(store_id, len(events) + 1, NINE), interval_start=NINE,
                                   interval_end=NINE, method="probe_stays", count=40.0, count_sd=1.0,
                                   sector_id="fish"))
    return events


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database holding one store's day, stored the way HQ stores what it receives (hq.ingest)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/hq.sqlite"
        urls: Iterator[str] = iter([url])
    else:
        urls = pg_schema_url(request.getfixturevalue("pg_server"))
        url = next(urls)
    store = open_store(url)
    try:
        result = store.ingest([decode(topic_for(e), e.to_json().encode()) for e in day_of_counts()],
                              received_at=1.0)
        assert (result.stored, result.dead_letters) == (len(day_of_counts()), 0)
    finally:
        store.close()
    yield url
    for _ in urls:  # the PostgreSQL schema is dropped when its generator ends
        pass


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["hq", "footfall", *args])
    return result.exit_code, result.output


def test_the_day_adds_hours_up_and_keeps_other_days_and_sectors_out(db: str) -> None:
    store = open_store(db)
    try:
        day = read_day(store, "shop-1", DAY)
        assert read_day(store, "shop-2", DAY).samples == []
    finally:
        store.close()
    nine, ten = day.hours[9], day.hours[10]
    assert (nine.entries, nine.entries_sd, nine.covered_s) == (12.0, 2.0, 3600.0)
    assert ten.entries == 12.0
    assert ten.entries_sd == pytest.approx(math.sqrt(1.0 + 1.5**2))
    assert ten.covered_s == 55 * 60.0
    assert (nine.samples, ten.samples) == (60, 60)
    assert (nine.inside_mean, nine.inside_max, ten.inside_mean, ten.inside_max) == (2.5, 5.0, 8.5, 11.0)
    assert [h.entries for h in day.hours[:9]] == [None] * 9
    assert day.entries == 24.0
    assert len(day.samples) == 120
    assert day.samples[0].at == NINE


def test_the_command_prints_a_table_a_person_reads_in_80_columns(db: str) -> None:
    code, out = run("--db", db, "--day", "2026-12-05")
    assert code == 0, out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    nine = next(line for line in lines if "09:00" in line)
    ten = next(line for line in lines if "10:00" in line)
    for cell in ("12 ± 2", "60 min", "2.5", "5", "60"):
        assert cell in nine
    for cell in ("12 ± 2", "55 min", "8.5", "11"):
        assert cell in ten
    assert not any("08:00" in line for line in lines)
    assert "entries over the day: 24 ± 3" in out


def test_the_command_json_and_png(db: str, tmp_path: Path) -> None:
    png = tmp_path / "day.png"
    code, out = run("--db", db, "--store", "shop-1", "--day", "2026-12-05", "--json", "--png", str(png))
    assert code == 0, out
    data = json.loads(out)
    assert (data["store_id"], data["day"], data["entries"]) == ("shop-1", "2026-12-05", 24.0)
    assert data["hours"][10]["covered_s"] == 3300.0
    assert data["samples"][0] == {"at": "2026-12-05T09:00:00Z", "count": 0.0, "count_sd": 1.0}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_line_errors(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("--db", db, "--day", "5/12/2026") == (2, "santi: --day '5/12/2026' is not a day like 2026-12-05\n")
    empty = f"sqlite:///{tmp_path}/empty.sqlite"
    open_store(empty).close()  # a reading command refuses a database that does not exist; this one is empty
    assert run("--db", empty) == (2, "santi: no store has sent counts yet\n")
    code, out = run("--db", db, "--store", "shop-9", "--day", "2026-12-05")
    assert code == 0
    assert "no counts stored for this day" in out
    real_find_spec = __import__("importlib").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    assert run("--db", db, "--png", str(tmp_path / "x.png")) == (
        2, "santi: santi hq footfall --png needs matplotlib: pip install 'santi[plot]'\n")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_counts_reach_hq_through_mosquitto_and_the_command_shows_them(broker: Broker, tmp_path: Path) -> None:
    """The agent's stage on a replay → its outbox → a real mosquitto → HQ's subscriber → santi hq footfall."""
    rec = recording(6)
    site_path = example_site_for(tmp_path, broker.port, extra="[footfall]\ninterval_s = 10\nlead_s = 0\n")
    obs_path, taps_path = tmp_path / "obs.jsonl", tmp_path / "taps.jsonl"
    write_records(obs_path, [o for o in rec.observations if o.ts < START + 300.0])
    write_records(taps_path, [])
    db_url = f"sqlite:///{tmp_path}/hq.sqlite"
    stored: list[Event] = []
    with HqSubscriber(broker.host, broker.port, db_url, "hq", on_event=stored.append) as hq:
        assert hq.wait_connected(10)
        speed = 60.0
        clock = ReplayClock(START, speed)
        service = Service(load_site(site_path), [ReplaySource(obs_path, taps_path, speed=speed)],
                          state_dir=tmp_path / "state", clock=clock, stop_when_sources_finish=True,
                          time_scale=speed, drain_deadline_s=20.0)
        clock.start()
        assert asyncio.run(service.run()) == 0
        assert service.outbox_left == 0
        wait_until(lambda: any(isinstance(e, FootfallCounted) for e in stored), timeout=30.0,
                   what="the closing footfall count")
    samples = sorted((e for e in stored if isinstance(e, OccupancySampled)), key=lambda e: e.interval_end)
    assert len(samples) >= 25
    day = datetime.fromtimestamp(START, tz=UTC).date().isoformat()
    code, out = run("--db", db_url, "--day", day, "--json")
    assert code == 0, out
    shown = json.loads(out)
    assert shown["store_id"] == "fishmonger-01"
    assert [(s["at"], s["count"]) for s in shown["samples"]] == [
        (e.interval_end.isoformat().replace("+00:00", "Z"), e.count) for e in samples]
    assert shown["entries"] == sum(e.entries for e in stored if isinstance(e, FootfallCounted))
    code, out = run("--db", db_url, "--day", day)
    assert code == 0
    assert "08:00" in out
