"""Where HQ's acknowledgement stands, as ``santi status`` and ``santi doctor`` show it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from click.testing import CliRunner

from agent.cli import cli
from agent.config import load_site
from agent.doctor import check_ack_mode
from agent.localbroker import Broker, example_site_for
from tests.helpers.agent import santi_run, status_until
from tests.helpers.hq_acks import publish_ack
from tests.helpers.recording import recording


def test_status_shows_what_waits_for_hq_and_what_hq_acknowledged(broker: Broker, tmp_path: Path) -> None:
    """A real agent, a real broker, no HQ: the broker takes everything, the outbox keeps it until HQ's ack."""
    site_path = example_site_for(tmp_path, broker.port)
    obs_path, taps_path = recording(tmp_path)
    state = tmp_path / "state"
    proc = santi_run(site_path, "--replay", str(obs_path), "--taps", str(taps_path), "--speed", "1.5")
    try:
        _, waiting = status_until(state, lambda c, r: r["outbox"] is not None and r["outbox"]["sent_unacked"] >= 3
                            and r["ack"] is not None, 30, "events sent and waiting for HQ")
        box = waiting["outbox"]
        assert waiting["ack"]["mode"] == "hq"
        assert box["acked_seq"] == 0
        assert box["depth"] >= box["sent_unacked"]
        assert box["oldest_sent_at"] is not None
        text = CliRunner().invoke(cli, ["status", "--state-dir", str(state)], env={"COLUMNS": "300"})
        assert f"HQ acknowledged through seq 0 (epoch {box['epoch']})" in text.output
        assert "sent and waiting for HQ's ack" in text.output
        upto = box["sent_unacked"]
        publish_ack(broker.host, broker.port, "fishmonger-01", "pi-backoffice", box["epoch"], upto)
        _, acked = status_until(state, lambda c, r: r["outbox"]["acked_seq"] == upto, 20, "HQ's ack applied")
        assert acked["outbox"]["epoch"] == box["epoch"]
        text = CliRunner().invoke(cli, ["status", "--state-dir", str(state)], env={"COLUMNS": "300"})
        assert f"HQ acknowledged through seq {upto}" in text.output
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=40)
    assert proc.returncode == 0


def test_status_and_doctor_say_loudly_when_the_broker_acknowledges(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    data = {"store_id": "s", "agent_id": "a", "uptime_s": 10.0,
            "uplink": {"state": "online", "last_error": None,
                       "ack": {"ack_mode": "broker", "resent": 0, "acks_dropped": {}, "acks_ignored": {}}},
            "outbox": {"depth": 0, "oldest_ts": None, "evicted_total": 0}, "sources": {}}
    (state / "status.json").write_text(json.dumps(data))
    result = CliRunner().invoke(cli, ["status", "--state-dir", str(state)], env={"COLUMNS": "300"})
    assert 'ack = "broker": events leave the outbox at the broker\'s PUBACK, not when HQ has stored them' in (
        result.output)
    report = json.loads(CliRunner().invoke(cli, ["status", "--state-dir", str(state), "--json"]).stdout)
    assert report["ack"] == {"mode": "broker", "resent": 0, "dropped": 0}

    site_path = example_site_for(tmp_path, 1)
    assert check_ack_mode(load_site(site_path)).status == "ok"
    site_path.write_text(site_path.read_text().replace("inflight = 20\n", 'inflight = 20\nack = "broker"\n'))
    check = check_ack_mode(load_site(site_path))
    assert check.status == "warn"
    assert check.detail.startswith('ack = "broker": events leave the outbox at the broker\'s PUBACK')
    assert 'ack = "hq"' in check.fix


def test_status_counts_unusable_acks(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    data = {"uplink": {"state": "online", "ack": {"ack_mode": "hq", "resent": 7,
                                                   "acks_dropped": {"invalid": 2}, "acks_ignored": {"other_epoch": 1}}},
            "sources": {}}
    (state / "status.json").write_text(json.dumps(data))
    report = json.loads(CliRunner().invoke(cli, ["status", "--state-dir", str(state), "--json"]).stdout)
    assert report["ack"] == {"mode": "hq", "resent": 7, "dropped": 3}
