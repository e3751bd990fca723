"""The notify protocol against a real datagram socket, as systemd would listen."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agent.sdnotify import Notifier


def test_messages_reach_the_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier(str(path))
    try:
        notifier.ready("3 sources up")
        assert server.recv(1024) == b"READY=1\nSTATUS=3 sources up"
        notifier.watchdog()
        assert server.recv(1024) == b"WATCHDOG=1"
        notifier.stopping()
        assert server.recv(1024) == b"STOPPING=1"
        assert notifier.watchdog_interval_s() == 10.0
    finally:
        notifier.close()
        server.close()


def test_disabled_without_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("x")
    assert notifier.watchdog_interval_s() is None
