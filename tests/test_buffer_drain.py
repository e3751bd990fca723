"""``santi buffer drain`` against a real mosquitto: on its own, with the broker down, and through a running agent."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import time
from pathlib import Path

from click.testing import CliRunner

from agent.cli import cli
from agent.config import BufferConfig
from agent.events import SectorEntered, parse_event
from agent.localbroker import Broker, example_site_for
from agent.outbox import OUTBOX_FILE, Outbox, summarize
from tests.helpers.agent import SANTI, StderrLines, santi_run
from tests.helpers.hq_acks import AckingSubscriber
from tests.helpers.outbox_writer import events as _events
from tests.helpers.recording import recording
from tests.helpers.wait import wait_until


def events(n: int) -> list[SectorEntered]:
    """Events of the example site's own store and agent, so an acknowledging HQ answers on its ack topic."""
    return [e.model_copy(update={"store_id": "fishmonger-01", "agent_id": "pi-backoffice"}) for e in _events(n)]


def _published(got: queue.Queue[tuple[str, bytes]]) -> list[int]:
    seqs = []
    while not got.empty():
        topic, payload = got.get()
        if "/events/" in topic:
            seqs.append(parse_event(payload).seq)
    return seqs


def test_drain_without_an_agent_sends_everything(broker: Broker, tmp_path: Path) -> None:
    site = example_site_for(tmp_path, broker.port)
    with Outbox.open(tmp_path / "state" / OUTBOX_FILE, BufferConfig()) as outbox:
        outbox.append_many(events(300))
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    hq = AckingSubscriber(broker.host, broker.port, got)
    try:
        result = CliRunner().invoke(cli, ["buffer", "drain", str(site), "--json", "--timeout", "20"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == {
            "sent": 300, "acknowledged": 300, "awaiting_ack": 0, "not_sent": 0, "left": 0, "ack_mode": "hq",
            "stopped": "all acknowledged", "agent_pid": None, "uplink_error": None}
        seqs: list[int] = []

        def all_arrived() -> bool:
            seqs.extend(_published(got))
            return len(set(seqs)) >= 301

        wait_until(all_arrived, 5, "the 301 seqs at the subscriber")
    finally:
        hq.close()
    # 300 events, then the agent.status the drain stores first so HQ learns where the outbox starts.
    assert sorted(set(seqs)) == list(range(1, 302))
    assert summarize(tmp_path / "state" / OUTBOX_FILE).stats.depth == 0


def test_drain_with_the_broker_down_keeps_everything_and_says_why(broker: Broker, tmp_path: Path) -> None:
    site = example_site_for(tmp_path, broker.port)
    with Outbox.open(tmp_path / "state" / OUTBOX_FILE, BufferConfig()) as outbox:
        outbox.append_many(events(50))
    broker.stop()
    result = CliRunner().invoke(cli, ["buffer", "drain", str(site), "--timeout", "1"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0] == "sent 0 events: 0 acknowledged by HQ, 0 waiting for HQ's acknowledgement; 50 not sent"
    assert lines[1] == (f"stopped: time up after 1 s: cannot reach broker 127.0.0.1:{broker.port}: connection "
                        f"refused — is mosquitto running and listening there?")
    assert len(lines) == 2
    assert summarize(tmp_path / "state" / OUTBOX_FILE).stats.depth == 50 + 1  # and the drain's agent.status


def test_drain_without_hq_says_the_broker_has_them_and_hq_has_not_acknowledged(
    broker: Broker, tmp_path: Path
) -> None:
    """The broker PUBACKs everything, nobody acknowledges: nothing is deleted, and the outcome says whose turn it is."""
    site = example_site_for(tmp_path, broker.port)
    with Outbox.open(tmp_path / "state" / OUTBOX_FILE, BufferConfig()) as outbox:
        outbox.append_many(events(40))
    result = CliRunner().invoke(cli, ["buffer", "drain", str(site), "--json", "--timeout", "2"])
    assert result.exit_code == 1
    outcome = json.loads(result.output)
    assert {k: outcome[k] for k in ("sent", "acknowledged", "awaiting_ack", "not_sent", "left")} == {
        "sent": 40, "acknowledged": 0, "awaiting_ack": 40, "not_sent": 0, "left": 40}
    assert outcome["stopped"] == ("time up after 2 s: the broker has them all, HQ has not acknowledged them "
                                  "(is `santi hq run` up?)")
    assert summarize(tmp_path / "state" / OUTBOX_FILE).stats.depth == 40 + 1  # and the drain's agent.status


def test_drain_wakes_a_running_agent_out_of_its_backoff(broker: Broker, tmp_path: Path) -> None:
    """The agent has been offline long enough to wait 4-16 s between attempts; drain makes it send at once."""
    site = example_site_for(tmp_path, broker.port)
    obs_path, taps_path = recording(tmp_path)
    state = tmp_path / "state"
    broker.stop()
    agent = santi_run(site, "--replay", str(obs_path), "--taps", str(taps_path), verbose=True)
    stderr = StderrLines(agent)
    try:
        wait_until((state / "status.json").exists, 20, "the agent's first status file")
        wait_until(lambda: summarize(state / OUTBOX_FILE).stats.depth > 0, 20, "events waiting in the outbox")
        # Four failed attempts in a row: the agent's next one is 4-8 s away (backoff base 1 s, doubling),
        # so only the drain's wake-up can explain a send within 4 s (else the test races the backoff).
        for attempt in range(1, 5):
            stderr.wait_for(lambda line: "uplink state" in line and "offline" in line, 30,
                            f"failed connection attempt {attempt}")
        broker.start()
        hq = AckingSubscriber(broker.host, broker.port, queue.Queue())
        started = time.monotonic()
        result = subprocess.run([str(SANTI), "buffer", "drain", str(site), "--json", "--timeout", "20"],
                                capture_output=True, text=True, timeout=60, check=False)
        took = time.monotonic() - started
        hq.close()
        assert result.returncode == 0, result.stderr
        outcome = json.loads(result.stdout)
        assert outcome["agent_pid"] == agent.pid
        assert outcome["left"] == 0
        assert outcome["sent"] > 0
        assert took < 4.0, f"the agent should have reconnected at once, took {took:.1f} s"
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    log = stderr.text()
    assert agent.returncode == 0, log[-2000:]
    assert "uplink retry requested" in log
