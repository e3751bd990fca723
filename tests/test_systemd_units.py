"""The unit files pass systemd's own checks where systemd is present."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
SANTI = Path(sys.executable).parent / "santi"

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed on this machine")


def _installed_copy(tmp_path: Path, name: str) -> Path:
    """The unit as installed, with ExecStart pointing at this venv's santi."""
    text = (UNITS / name).read_text().replace("/opt/santi/.venv/bin/santi", str(SANTI))
    path = tmp_path / name
    path.write_text(text)
    return path


@needs_systemd
@pytest.mark.parametrize("name", ["santi-agent.service", "santi-node.service"])
def test_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(_installed_copy(tmp_path, name))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


@needs_systemd
@pytest.mark.parametrize(("name", "limit"), [("santi-agent.service", 2.5), ("santi-node.service", 2.0)])
def test_exposure_score_stays_low(tmp_path: Path, name: str, limit: float) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(_installed_copy(tmp_path, name))],
                            capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout[-500:]
    assert float(match.group(1)) <= limit


@pytest.mark.parametrize("name", ["santi-agent.service", "santi-node.service"])
def test_units_are_notify_with_watchdog(name: str) -> None:
    text = (UNITS / name).read_text()
    for line in ("Type=notify", "Restart=on-failure", "User=santi", "StateDirectory=santi", "NoNewPrivileges=yes"):
        assert line in text
    assert re.search(r"^WatchdogSec=\d+s$", text, re.MULTILINE)


@pytest.mark.parametrize("name", ["santi-agent.service", "santi-node.service"])
def test_units_start_after_the_clock_is_set(name: str) -> None:
    """A Pi has no RTC: started before NTP, every timestamp says 1970 until the clock jumps."""
    unit: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            unit.setdefault(key.strip(), []).extend(value.split())
    assert "time-sync.target" in unit["After"]
    assert "time-sync.target" in unit["Wants"]
