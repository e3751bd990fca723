"""``santi buffer drain`` against a real mosquitto: on its own, with the broker down, and through a running agent."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from click.testing import CliRunner

from agent.cli import cli
from agent.config import BufferConfig
from agent.events import SectorEntered, parse_event
from agent.localbroker import Broker, example_site_for
from agent.outbox import OUTBOX_FILE, Outbox, summarize
from tests.helpers.hq_acks import AckingSubscriber
from tests.test_outbox import events as _events
from tests.test_service import _recording
from tests.test_service_signals import SANTI, _wait_for


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
        deadline = time.monotonic() + 5
        seqs: list[int] = []
        while len(set(seqs)) < 301 and time.monotonic() < deadline:
            time.sleep(0.1)
            seqs += _published(got)
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


def _pump(agent: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    """The agent's stderr, line by line as it comes, for a test to wait on."""
    assert agent.stderr is not None
    for line in agent.stderr:
        lines.put(line)


def test_drain_wakes_a_running_agent_out_of_its_backoff(broker: Broker, tmp_path: Path) -> None:
    """The agent has been offline long enough to wait 4-16 s between attempts; drain makes it send at once."""
    site = example_site_for(tmp_path, broker.port)
    obs_path, taps_path = _recording(tmp_path)
    state = tmp_path / "state"
    broker.stop()
    agent = subprocess.Popen(
        [str(SANTI), "-v", "run", "--config", str(site), "--replay", str(obs_path), "--taps", str(taps_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "NOTIFY_SOCKET": ""},
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(agent, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        _wait_for(state / "status.json", 20)
        time.sleep(12)
        assert summarize(state / OUTBOX_FILE).stats.depth > 0
        # Start the broker just after a failed attempt: the agent's next one is then >= 4 s away,
        # so only the drain's wake-up can explain a send within 4 s (else the test races the backoff).
        while not lines.empty():
            seen.append(lines.get())
        deadline = time.monotonic() + 30
        while True:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            seen.append(line)
            if "uplink state" in line and "offline" in line:
                break
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
        reader.join(timeout=10)
        if agent.stderr is not None:
            agent.stderr.close()
    stderr = "".join(seen) + "".join(lines.queue)
    assert agent.returncode == 0, stderr[-2000:]
    assert "uplink retry requested" in stderr
