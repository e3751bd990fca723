"""``santi run`` as the tests start it: a child process, its stderr line by line, its status file.

The child is the ``santi`` entry point beside this Python (the venv under
test, never whatever ``santi`` is first on PATH), told it is not under systemd.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from click.testing import CliRunner

from agent.cli import cli
from tests.helpers.wait import wait_until

SANTI = Path(sys.executable).parent / "santi"


def santi_run(site: Path, *args: str, verbose: bool = False, stdout: int | IO[Any] = subprocess.DEVNULL,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``santi [-v] run --config SITE ARGS…`` with stderr piped as text and no systemd notify socket."""
    command = [str(SANTI), *(["-v"] if verbose else []), "run", "--config", str(site), *args]
    return subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NOTIFY_SOCKET": "", **(env or {})})


class StderrLines:
    """A child's stderr, read on a thread line by line as it comes, so a test can wait for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None, "start the child with stderr=PIPE"
        self._stream = proc.stderr
        self._lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._next = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self._stream:  # closed at the child's end, so no test leaves the pipe open
            for line in self._stream:
                self._lines.put(line)

    def _drain(self) -> None:
        while not self._lines.empty():
            self.seen.append(self._lines.get())

    def wait_for(self, match: Callable[[str], bool], timeout: float, what: str) -> str:
        """The first line after the last one waited for that ``match``es, within ``timeout`` seconds."""

        def found() -> str | None:
            self._drain()
            for index in range(self._next, len(self.seen)):
                if match(self.seen[index]):
                    self._next = index + 1
                    return self.seen[index]
            return None

        return wait_until(found, timeout, what)

    def text(self, timeout: float = 10.0) -> str:
        """Everything the child wrote, once its stderr has closed (call after it exited)."""
        self._reader.join(timeout)
        self._drain()
        return "".join(self.seen)


def status(state: Path) -> tuple[int, dict[str, Any]]:
    """``santi status --json`` on a state folder: its exit code and report."""
    result = CliRunner().invoke(cli, ["status", "--state-dir", str(state), "--json"])
    assert result.exit_code in (0, 1, 3), result.output
    return result.exit_code, json.loads(result.stdout)


def status_until(state: Path, check: Callable[[int, dict[str, Any]], bool], timeout: float,
                 what: str) -> tuple[int, dict[str, Any]]:
    """Poll ``santi status`` until ``check(code, report)``; the last report is in the timeout's message."""
    last: list[tuple[int, dict[str, Any]]] = []

    def probe() -> tuple[int, dict[str, Any]] | None:
        if not (state / "status.json").exists():
            return None
        last[:] = [status(state)]
        return last[0] if check(*last[0]) else None

    try:  # every 0.2 s: each look runs ``santi status``, whose CPU the agent under test needs more
        return wait_until(probe, timeout, what, interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status: {last}") from None
