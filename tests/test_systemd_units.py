"""The unit files pass systemd's own checks where systemd is present."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.agent import SANTI

UNITS = Path(__file__).resolve().parent.parent / "systemd"

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


# -- issue 18: a broken config is not retried, start limits, NFC devices, the Wi-Fi monitor unit --

def _directives(name: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values, in file order."""
    section = ""
    values: dict[tuple[str, str], list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault((section, key), []).append(value)
    return values


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


@pytest.mark.parametrize("name", ["santi-agent.service", "santi-node.service"])
def test_a_broken_config_is_not_retried(tmp_path: Path, name: str) -> None:
    """The main command exits 2 on a broken config, the status that stops restarts.

    RestartPreventExitStatus= looks at the main process only, so the config
    check may not sit in an ExecStartPre= (its 2 would be retried).
    """
    units = _directives(name)
    assert "2" in units["Service", "RestartPreventExitStatus"][0].split()
    assert ("Service", "ExecStartPre") not in units
    broken = tmp_path / "site.toml"
    broken.write_text('[store]\nid = "x"\n')
    command = units["Service", "ExecStart"][0].replace("/opt/santi/.venv/bin/santi", str(SANTI))
    command = command.replace("/etc/santi/site.toml", str(broken)).replace("/var/lib/santi", str(tmp_path / "state"))
    result = subprocess.run(command.split(), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr == f"santi: {broken}:1: store.name: Field required\n"


@pytest.mark.parametrize("name", ["santi-agent.service", "santi-node.service"])
def test_start_limit_ends_a_crash_loop(name: str) -> None:
    units = _directives(name)
    interval = _seconds(units["Unit", "StartLimitIntervalSec"][0])
    burst = int(units["Unit", "StartLimitBurst"][0])
    restart = _seconds(units["Service", "RestartSec"][0])
    # the limit can only trip if `burst` restarts fit in the interval
    assert burst * restart < interval
    assert burst >= 3


@pytest.mark.parametrize(("device", "allow"), [
    ("usb", "char-usb_device"), ("usb:001:004", "char-usb_device"), ("usb:054c:06c3", "char-usb_device"),
    ("tty:USB0:pn532", "char-ttyUSB"), ("tty:ACM0", "char-ttyACM"), ("tty:AMA0:pn532", "char-ttyAMA"),
    ("tty:S0:pn532", "char-ttyS"),
])
def test_agent_unit_allows_the_nfc_devices_the_config_accepts(device: str, allow: str) -> None:
    from agent.config import NfcReaderConfig  # noqa: PLC0415

    NfcReaderConfig(id="till-1", device=device, x=1.0, y=1.0, sector="checkout")
    units = _directives("santi-agent.service")
    assert f"{allow} rw" in units["Service", "DeviceAllow"]
    assert units["Service", "DevicePolicy"] == ["closed"]
    if allow.startswith("char-tty"):
        assert "dialout" in units["Service", "SupplementaryGroups"][0].split()


def test_agent_unit_allows_the_udp_nfc_emulator() -> None:
    assert "AF_INET" in _directives("santi-agent.service")["Service", "RestrictAddressFamilies"][0].split()


def _monitor_copy(tmp_path: Path) -> Path:
    """The template as instance wlan1, with iw and ip (absent on CI machines) standing in as true."""
    true = shutil.which("true") or "/usr/bin/true"
    text = (UNITS / "santi-wifi-monitor@.service").read_text()
    path = tmp_path / "santi-wifi-monitor@wlan1.service"
    path.write_text(text.replace("/usr/sbin/iw", true).replace("/usr/sbin/ip", true))
    return path


@needs_systemd
def test_wifi_monitor_unit_verifies_and_stays_confined(tmp_path: Path) -> None:
    path = _monitor_copy(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(path)],
                              capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout + security.stderr)
    assert match, security.stdout[-500:]
    assert float(match.group(1)) <= 2.0


def test_wifi_monitor_unit_makes_the_interface_the_installer_expects() -> None:
    """install-pi.sh enables santi-wifi-monitor@<adapter> for [wifi] interface = "<adapter>mon"."""
    units = _directives("santi-wifi-monitor@.service")
    assert units["Service", "ExecStart"][0] == "/usr/sbin/iw dev %i interface add %imon type monitor"
    assert units["Service", "ExecStart"][1] == "/usr/sbin/ip link set %imon up"
    assert "santi-agent.service" in units["Unit", "Before"][0].split()
    assert units["Service", "CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]

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
