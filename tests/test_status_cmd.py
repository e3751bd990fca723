"""``santi status`` against a real ``santi run`` on the example store, its real outbox and a real broker."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import cli
from agent.localbroker import Broker, example_site_for
from agent.statusfile import classify, duration, event_line, read_status
from tests.helpers.agent import santi_run, status, status_until
from tests.helpers.recording import recording


def test_status_of_a_running_agent_through_an_outage_and_after_it_stops(broker: Broker, tmp_path: Path) -> None:
    site_path = example_site_for(tmp_path, broker.port)
    obs_path, taps_path = recording(tmp_path)
    state = tmp_path / "state"
    proc = santi_run(site_path, "--state-dir", str(state), "--replay", str(obs_path), "--taps", str(taps_path),
                     "--speed", "1.5")
    try:
        code, online = status_until(state, lambda c, r: r["uplink"]["state"] == "online", 20, "uplink online")
        assert code == 0
        assert online["state"] == "online"
        assert online["running"]
        assert online["store_id"] == "fishmonger-01"
        assert online["agent_id"] == "pi-backoffice"
        assert online["status_file_age_s"] < 6
        assert [s["name"] for s in online["sources"]] == ["locator", "replay"]

        text = CliRunner().invoke(cli, ["status", "--state-dir", str(state)])
        assert text.exit_code == 0, text.output
        assert "online" in text.output
        assert "uplink" in text.output
        assert "replay" in text.output

        broker.stop()  # the store's uplink goes down: events pile up in the outbox
        code, offline = status_until(state, lambda c, r: r["uplink"]["state"] == "offline"
                               and r["outbox"]["depth"] > 0 and r["outbox"]["newest"], 25, "events waiting")
        assert code == 1
        assert offline["state"] == "degraded"
        assert "uplink offline" in offline["reason"]
        assert offline["outbox"]["oldest_ts"] is not None
        newest = offline["outbox"]["newest"]
        assert [e["seq"] for e in newest] == sorted((e["seq"] for e in newest), reverse=True)
        assert newest[0]["seq"] == offline["outbox"]["last_seq"]
        assert {e["type"] for e in newest} <= {"visit.started", "sector.entered", "sector.exited", "visit.ended",
                                               "identity.linked", "card.tapped", "agent.status"}
        accepted = offline["sources"][0]["accepted"]
        assert accepted > 0
        assert offline["sources"][0]["rate_per_s"] > 0
        text = CliRunner().invoke(cli, ["status", "--state-dir", str(state)])
        assert text.exit_code == 1
        assert "Last events" in text.output
        assert "offline" in text.output

        broker.start()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    code, stopped = status(state)
    assert code == 3
    assert stopped["state"] == "stopped"
    assert not stopped["running"]
    with sqlite3.connect(state / "outbox.sqlite") as db:
        left = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    assert stopped["outbox"]["depth"] == left  # still readable after the agent is gone
    text = CliRunner().invoke(cli, ["status", "--state-dir", str(state)])
    assert text.exit_code == 3
    assert "stopped" in text.output


def test_a_status_file_nobody_refreshes_is_stale(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    data = {"store_id": "s", "agent_id": "a", "uptime_s": 100.0, "uplink": {"state": "online", "last_error": None},
            "outbox": {"depth": 4, "oldest_ts": 1_700_000_000.0, "evicted_total": 0},
            "sources": {"ble": {"state": "up", "accepted": 500, "dropped": {"not_allowed": 3}, "last_error": None}}}
    path = state / "status.json"
    path.write_text(json.dumps(data))
    fresh = read_status(state, time.time())
    assert fresh.state == "online"
    assert fresh.sources[0].rate_per_s == pytest.approx(5.0)
    assert fresh.sources[0].rate_is_mean
    assert fresh.sources[0].dropped == 3
    assert fresh.outbox is not None
    assert fresh.outbox.depth == 4
    old = time.time() - 40
    os.utime(path, (old, old))
    result = CliRunner().invoke(cli, ["status", "--state-dir", str(state)])
    assert result.exit_code == 3
    assert "stale" in result.output
    assert "not running" in result.output


def test_no_status_file_and_bad_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["status", "--state-dir", str(empty), "--json"])
    assert result.exit_code == 3
    assert json.loads(result.stdout)["state"] == "not running"
    missing = CliRunner().invoke(cli, ["status", "--state-dir", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert missing.stderr.startswith("santi: state directory")
    assert missing.stderr.count("\n") == 1
    broken = tmp_path / "site.toml"
    broken.write_text("[store\n")
    bad = CliRunner().invoke(cli, ["status", "--config", str(broken)])
    assert bad.exit_code == 2
    assert "TOML syntax" in bad.stderr
    (empty / "status.json").write_text("{not json")
    garbled = CliRunner().invoke(cli, ["status", "--state-dir", str(empty), "--json"])
    assert garbled.exit_code == 3
    assert "unreadable" in json.loads(garbled.stdout)["reason"]


def test_state_dir_comes_from_the_config(tmp_path: Path) -> None:
    site = example_site_for(tmp_path, 1)
    (tmp_path / "state").mkdir()
    result = CliRunner().invoke(cli, ["status", "--config", str(site), "--json"])
    assert result.exit_code == 3
    assert json.loads(result.stdout)["state_dir"] == str(tmp_path / "state")


def test_classify_names_what_is_wrong() -> None:
    base: dict[str, Any] = {"uplink": {"state": "online"}, "sources": {"ble": {"state": "up"}, "nfc": {"state": "up"}}}
    assert classify(base, 2.0)[0] == "online"
    assert classify(base, 16.0)[0] == "stale"
    down = {**base, "sources": {"ble": {"state": "down"}, "nfc": {"state": "up"}}, "uplink": {"state": "auth_failed"}}
    assert classify(down, 2.0) == ("degraded", "source ble down; uplink auth_failed")
    assert classify({**base, "uplink": {"state": "connecting"}}, 2.0)[0] == "online"
    assert classify({**base, "uplink": {"state": "stopped"}}, 100.0)[0] == "stopped"
    assert classify(None, None)[0] == "not running"


def test_recent_events_and_rates_from_the_status_file_win(tmp_path: Path) -> None:
    """When the agent writes its latest events and recent rates, those are shown rather than derived figures."""
    (tmp_path / "status.json").write_text(json.dumps({
        "uplink": {"state": "online"}, "uptime_s": 1000.0,
        "sources": {"ble": {"state": "up", "accepted": 1000, "rate_per_s": 12.5}},
        "last_events": [{"seq": 9, "type": "sector.entered", "ts": "2026-01-05T10:00:00.000Z", "subject": "v1",
                         "sector_id": "fish"}]}))
    report = read_status(tmp_path, time.time())
    assert (report.sources[0].rate_per_s, report.sources[0].rate_is_mean) == (12.5, False)
    assert [(e.seq, e.type, e.detail) for e in report.recent_events] == [(9, "sector.entered", "fish")]
    result = CliRunner().invoke(cli, ["status", "--state-dir", str(tmp_path)])
    assert "Last events" in result.output
    assert "fish" in result.output


def test_event_line_reads_each_type() -> None:
    ts = "2026-01-05T10:00:00.000Z"
    assert event_line(1, {"type": "sector.exited", "ts": ts, "subject": "v", "sector_id": "fish", "dwell_s": 42.4},
                      0.0).detail == "fish after 42 s"
    assert event_line(2, {"type": "visit.ended", "ts": ts, "duration_s": 300.0}, 0.0).detail == "300 s"
    line = event_line(3, {"type": "agent.status", "ts": "garbage", "state": "online", "outbox_depth": 2}, 5.0)
    assert (line.ts, line.detail) == (5.0, "online, outbox 2")


@settings(max_examples=300, derandomize=True)
@given(st.floats(0, 10 * 365 * 86400, allow_nan=False))
def test_duration_is_short_and_never_negative(seconds: float) -> None:
    text = duration(seconds)
    assert len(text) <= 12
    assert not text.startswith("-")
    assert duration(-seconds) == "0 s" or seconds == 0
