"""The agent's state is private outside systemd too, and a password file others can read is said so."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from agent.config import load_site
from agent.doctor import check_permissions
from agent.localbroker import Broker, example_site_for
from tests.helpers.agent import SANTI
from tests.helpers.recording import recording


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _site_with_password(tmp_path: Path, port: int, mode: int) -> Path:
    password = tmp_path / "mqtt-password"
    password.write_text("s3cret\n", encoding="utf-8")
    password.chmod(mode)
    site = example_site_for(tmp_path, port)
    text = site.read_text(encoding="utf-8").replace(
        "[uplink]\n", f'[uplink]\nusername = "pi-1"\npassword_file = "{password}"\n', 1)
    site.write_text(text, encoding="utf-8")
    return site


def test_state_is_private_under_a_shell_umask_and_a_readable_password_is_warned(
    broker: Broker, tmp_path: Path
) -> None:
    site = _site_with_password(tmp_path, broker.port, 0o644)
    obs_path, taps_path = recording(tmp_path)
    state = tmp_path / "state"
    result = subprocess.run(
        [str(SANTI), "run", "--config", str(site), "--replay", str(obs_path), "--taps", str(taps_path),
         "--speed", "20"],
        capture_output=True, text=True, timeout=90, env={**os.environ, "NOTIFY_SOCKET": ""}, check=False,
        preexec_fn=lambda: os.umask(0o022),  # what a shell gives; systemd's UMask=0077 would hide the bug
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _mode(state) == 0o700
    files = sorted(path.name for path in state.iterdir())
    assert {"outbox.sqlite", "status.json"} <= set(files)
    assert {name: _mode(state / name) for name in files} == dict.fromkeys(files, 0o600)
    warned = [line for line in result.stderr.splitlines() if "mqtt-password" in line]
    assert len(warned) == 1, result.stderr[-3000:]
    assert "readable by other users (mode 0644)" in warned[0]
    assert "s3cret" not in result.stderr


def test_doctor_fails_a_readable_password_file_and_warns_about_loose_state(tmp_path: Path) -> None:
    site = load_site(_site_with_password(tmp_path, 1884, 0o640))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    check = check_permissions(site, state)
    assert check.status == "fail"
    assert "mode 0640" in check.detail
    assert check.fix == f"`chmod 600 {tmp_path / 'mqtt-password'}`"
    (tmp_path / "mqtt-password").chmod(0o600)
    assert check_permissions(site, state).status == "ok"
    (state / "status.json").write_text("{}", encoding="utf-8")
    (state / "status.json").chmod(0o644)
    loose = check_permissions(site, state)
    assert loose.status == "warn"
    assert "status.json 0644" in loose.detail
    assert "\n" not in loose.detail


def test_doctor_fails_a_readable_node_broker_password_file(tmp_path: Path) -> None:
    password = tmp_path / "locator.password"
    password.write_text("s3cret\n", encoding="utf-8")
    password.chmod(0o644)
    site_path = example_site_for(tmp_path, 1)
    text = site_path.read_text(encoding="utf-8").replace(
        "[nodes]\n", f'[nodes]\nusername = "santi-locator"\npassword_file = "{password}"\n', 1)
    site_path.write_text(text, encoding="utf-8")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    check = check_permissions(load_site(site_path), state)
    assert (check.status, check.fix) == ("fail", f"`chmod 600 {password}`")
    assert check.detail.startswith(f"nodes.password_file {password} is readable by other users (mode 0644)")
