"""What store IT sees of a running agent: systemd's STATUS= and the journal.

``santi run`` runs as systemd would start it: its own process, NOTIFY_SOCKET
on a real datagram socket, stderr captured as the journal captures it. Its
only source is the node ingest on a real mosquitto (the store's node
broker), its uplink another, so each can be taken away: the status text
follows every change of a source's or the uplink's state, and a healthy
start writes exactly one line.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.localbroker import Broker
from agent.service import status_text
from agent.sources.base import SourceStats
from tests.helpers.sites import rectangle_site

UPLINK_AND_NODES = """
[uplink]
host = "127.0.0.1"
port = {uplink_port}
username = "pi-1"
password_file = "uplink.password"

[nodes]
host = "127.0.0.1"
port = {nodes_port}
"""
PASSWORD = "s3cret-uplink-password"
CORNERS = [(0.5, 0.5), (19.5, 0.5), (0.5, 9.5), (19.5, 9.5)]


class Notifications:
    """The notify socket systemd listens on; each datagram is one message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.2)
        self.messages: list[str] = []

    def until(self, wanted: Callable[[str], bool], timeout: float = 20.0) -> str:
        """Read messages until one is ``wanted``; fail with what came instead."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self._socket.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(message)
            if wanted(message):
                return message
        raise AssertionError(f"no such notify message within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self._socket.close()


def _status(text: str) -> Callable[[str], bool]:
    return lambda message: f"STATUS={text}" in message.splitlines()


class Journal:
    """The agent's stderr, line by line, as journald would store it."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            self.lines.append(raw.decode().rstrip("\n"))

    def join(self) -> None:
        self._thread.join(timeout=10)


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[tuple[Broker, Broker]]:
    uplink, nodes = Broker(tmp_path / "uplink"), Broker(tmp_path / "nodes")
    uplink.workdir.mkdir()
    nodes.workdir.mkdir()
    uplink.start()
    nodes.start()
    try:
        yield uplink, nodes
    finally:
        uplink.stop(kill=True)
        nodes.stop(kill=True)


def test_status_follows_sources_and_uplink_and_a_healthy_start_logs_one_line(
        tmp_path: Path, brokers: tuple[Broker, Broker]) -> None:
    uplink, nodes = brokers
    receivers = "\n".join(f'[[receivers]]\nid = "node-{i}"\nkind = "node"\nnode_name = "n{i}"\nx = {x}\ny = {y}\n'
                          for i, (x, y) in enumerate(CORNERS))
    site = tmp_path / "site.toml"
    site.write_text(rectangle_site(store_id="corner-shop", name="Corner shop", width=20, depth=10, receivers=receivers,
                                   sectors=(("front", "Front"), ("back", "Back")), split="y",
                                   agent=f'id = "pi-1"\nstate_dir = "{tmp_path / "state"}"')
                    + UPLINK_AND_NODES.format(uplink_port=uplink.port, nodes_port=nodes.port))
    (tmp_path / "uplink.password").write_text(PASSWORD + "\n")
    (tmp_path / "uplink.password").chmod(0o600)
    notify = Notifications(tmp_path / "notify")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    env.pop("WATCHDOG_USEC", None)
    agent = subprocess.Popen([sys.executable, "-c", "from agent.cli import main; main()", "run", "--config", str(site)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    journal = Journal(agent.stderr)
    try:
        ready = notify.until(lambda message: "READY=1" in message.splitlines())
        assert ready.startswith("READY=1\nSTATUS="), ready  # the sources and the uplink may still connect
        assert ready.endswith((", uplink connecting", ", uplink online")), ready
        notify.until(_status("1 source up, uplink online"))
        # Healthy: one line so far, the ready line, with what runs and where it sends; no secret.
        assert len(journal.lines) == 1, journal.lines
        line = journal.lines[0]
        assert line.startswith('level=info logger=agent.service msg="agent ready" store=corner-shop agent=pi-1 '
                               "sources=nodes receivers=node-0,node-1,node-2,node-3 radio_map=none "
                               f"broker=127.0.0.1:{uplink.port} tls=no "), line
        assert line.endswith(f" nodes_broker=127.0.0.1:{nodes.port}"), line
        assert PASSWORD not in line

        nodes.stop()
        notify.until(_status("0 of 1 source up (nodes down), uplink online"))
        nodes.start()
        notify.until(_status("1 source up, uplink online"))
        uplink.stop()
        down = notify.until(lambda m: m.startswith("STATUS=1 source up, uplink ") and "online" not in m)
        assert down in ("STATUS=1 source up, uplink offline", "STATUS=1 source up, uplink connecting")
        uplink.start()
        notify.until(_status("1 source up, uplink online"))
        # A refused reload stays in the status until a good one (systemctl reload santi-agent).
        good = site.read_text()
        site.write_text(good.replace('id = "front"', 'id = "front door"'))
        agent.send_signal(signal.SIGHUP)
        refused = notify.until(lambda m: "reload refused" in m)
        assert refused.startswith("READY=1\nSTATUS=1 source up, uplink online; reload refused: "), refused
        assert "sectors[0].id" in refused
        site.write_text(good)
        agent.send_signal(signal.SIGHUP)
        notify.until(lambda m: m == "READY=1\nSTATUS=1 source up, uplink online")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
        notify.until(lambda message: message == "STOPPING=1")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        journal.join()
        assert agent.stderr is not None
        agent.stderr.close()
        notify.close()
    assert PASSWORD not in "\n".join(journal.lines)


def test_status_text_names_what_is_not_up() -> None:
    ble, wifi, nfc = SourceStats("ble", state="up"), SourceStats("wifi"), SourceStats("nfc:till-1", state="degraded")
    assert status_text([ble], "online") == "1 source up, uplink online"
    assert status_text([ble, wifi, nfc], "offline") == "1 of 3 sources up (wifi down, nfc:till-1 degraded), uplink offline"
    assert status_text([], None) == "0 sources up"
