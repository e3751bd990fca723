"""systemd's notify protocol: READY, WATCHDOG, STATUS, STOPPING over a datagram.

Nothing to do when ``NOTIFY_SOCKET`` is unset (a shell, a test, the demo).
The watchdog interval comes from ``WATCHDOG_USEC``; the service pings at
half of it from its main loop, so a stuck loop gets the unit restarted.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to systemd if it is listening."""

    def __init__(self, address: str | None = None) -> None:
        self._address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def watchdog_interval_s(self) -> float | None:
        """Half the watchdog timeout systemd set, or None when there is no watchdog."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return max(int(usec) / 2e6, 0.5)
        except ValueError:
            return None

    def send(self, *fields: str) -> None:
        if self._socket is None or self._address is None:
            return
        address = self._address
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            self._socket.sendto("\n".join(fields).encode(), address)
        except OSError as exc:
            log.warning("sd_notify failed", extra={"error": str(exc)})

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
