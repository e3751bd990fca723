"""A private Mosquitto broker on loopback: own port, own config, own lifetime.

``santi demo`` runs one when no broker is configured, and the tests run one
per test (never the machine's broker on 1883). Started on a free loopback
port with a config in its own folder. ``stop()`` ends it
(``kill=True`` for a SIGKILL, as in a crash), ``start()`` brings it back on
the same port, ``restart()`` does both. The broker gets a parent-death
signal, so a test run that is itself killed leaves no orphan behind.
``example_site_for`` points a copy of the example store at such a broker, for
the tests and the benchmarks that run a real agent against one.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from agent.errors import SantiError

PR_SET_PDEATHSIG = 1
EXAMPLE_SITE = Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGKILL when its parent dies, so a killed run leaves no orphan."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalBrokerError(SantiError):
    """The private mosquitto cannot run here (not installed, or it did not start): a run-time failure, exit 1."""


def mosquitto_path() -> str:
    for candidate in ("mosquitto", "/usr/sbin/mosquitto"):
        found = shutil.which(candidate)
        if found:
            return found
    raise LocalBrokerError("mosquitto is not installed: apt-get install mosquitto (bash .ci/run does it)")


class Broker:
    """One mosquitto process under a test's control."""

    def __init__(self, workdir: Path, *, extra_config: str = "", port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.extra_config = extra_config
        self.log_path = workdir / "mosquitto.log"
        self.config_path = workdir / "mosquitto.conf"
        self._proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "\n".join([
                f"listener {self.port} 127.0.0.1",
                "allow_anonymous true",
                # As root, mosquitto drops to its own user unless told not to,
                # and then cannot read anything in our private temp folder.
                "user root",
                "persistence true",
                f"persistence_location {self.workdir / 'data'}/",
                "autosave_interval 1",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "max_queued_messages 0",
                self.extra_config,
                "",
            ]),
            encoding="utf-8",
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self.write_config()
        binary = mosquitto_path()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 (our own binary and config)
                [binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent,  # noqa: PLW1509
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LocalBrokerError(f"mosquitto exited at start: {self.log_path.read_text()[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.2):
                return
            time.sleep(0.02)
        self.stop(kill=True)
        raise LocalBrokerError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def stop(self, *, kill: bool = False) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if kill:
                proc.kill()
            else:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._proc = None

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


def example_site_for(workdir: Path, port: int, *, host: str = "127.0.0.1", extra: str = "",
                     nodes_port: int | None = None) -> Path:
    """A copy of the example store whose uplink goes to ``host:port`` and state to ``workdir/state``.

    Status every 5 s rather than 60, so a run of a minute shows it changing.
    Its ``[nodes]`` broker (on 127.0.0.1) moves to ``nodes_port``, by default the uplink's
    ``port``: a copy never listens to whatever broker the machine runs on 1883.
    ``extra`` is TOML appended as is.
    """
    text = EXAMPLE_SITE.read_text(encoding="utf-8")
    text = re.sub(r'(\[uplink\]\nhost = )"[^"]*"\nport = \d+', f'\\1"{host}"\nport = {port}', text)
    text, count = re.subn(r'(\[nodes\]\n(?:#[^\n]*\n)*host = "127\.0\.0\.1"\nport = )\d+',
                          f"\\g<1>{port if nodes_port is None else nodes_port}", text)
    if count != 1:
        raise ValueError("the example site has no [nodes] host = \"127.0.0.1\" and port to move")
    text = text.replace('state_dir = "/var/lib/santi"', f'state_dir = "{workdir / "state"}"')
    text = text.replace("status_interval_s = 60", "status_interval_s = 5")
    path = workdir / "site.toml"
    path.write_text(text + extra, encoding="utf-8")
    return path
