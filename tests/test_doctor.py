"""``santi doctor``: each check against the real part where one runs here, the CLI end to end."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import cli
from agent.config import NfcReaderConfig, SiteConfig, WifiConfig, load_site
from agent.doctor import (
    check_bluetooth,
    check_clock,
    check_disk,
    check_nfc,
    check_state_dir,
    check_wifi,
    effective_capabilities,
    parse_chronyc_tracking,
    parse_timedatectl,
)
from agent.doctor_broker import check_broker, check_tls
from agent.localbroker import Broker, free_port
from tests.conftest import EXAMPLE_SITE
from tests.helpers.fake_bluez import FakeBluez

NOW = 1_760_000_000.0  # 2025-10-09


def write_site(tmp_path: Path, host: str, port: int, extra: str = "", replace: dict[str, str] | None = None) -> Path:
    """The fishmonger store with the uplink pointed at a test broker and state in tmp."""
    text = EXAMPLE_SITE.read_text()
    text = text.replace('state_dir = "/var/lib/santi"', f'state_dir = "{tmp_path / "state"}"')
    text = re.sub(r"\[uplink\]\nhost = \"[^\"]*\"\nport = \d+", f'[uplink]\nhost = "{host}"\nport = {port}', text)
    text = re.sub(r'(\[nodes\]\n(?:#[^\n]*\n)*host = )"[^"]*"\nport = \d+', f'\\g<1>"{host}"\nport = {port}', text)
    for old, new in (replace or {}).items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "site.toml"
    path.write_text(text + extra)
    return path


def site_of(tmp_path: Path, host: str = "127.0.0.1", port: int = 1, **kwargs: object) -> SiteConfig:
    return load_site(write_site(tmp_path, host, port, **kwargs))  # type: ignore[arg-type]


# -- the whole command, on this machine ----------------------------------------------------------


def test_doctor_on_this_machine_reports_each_missing_part_with_its_fix(tmp_path: Path, broker: Broker) -> None:
    if Path("/sys/class/bluetooth/hci0").exists() or Path("/sys/bus/usb").exists():
        pytest.skip("this machine has a Bluetooth adapter or a USB bus; the test expects neither")
    site = write_site(tmp_path, broker.host, broker.port)
    result = CliRunner().invoke(cli, ["doctor", "--config", str(site), "--json", "--timeout", "1"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    checks = {check["name"]: check for check in report["checks"]}
    assert report["status"] == "fail"
    assert checks["config"]["status"] == "ok"
    assert checks["broker"]["status"] == "ok", checks["broker"]
    assert checks["broker"]["detail"] == f"127.0.0.1:{broker.port}: MQTT 5 CONNECT accepted"
    assert checks["node broker"]["detail"] == f"127.0.0.1:{broker.port}: MQTT 5 CONNECT accepted"
    for name, fix_mentions in (("bluetooth", "systemctl enable --now"), ("wifi monitor", "type monitor"),
                               ("nfc till-1", "")):
        assert checks[name]["status"] == "fail", checks[name]
        assert checks[name]["fix"], f"{name} failed without a fix"
        assert fix_mentions in checks[name]["fix"]
    for check in report["checks"]:
        assert "\n" not in check["detail"]
        assert "\n" not in check["fix"]
        assert (check["status"] == "ok") == (check["fix"] == ""), check


def test_doctor_table_output_and_state_dir_override(tmp_path: Path, broker: Broker) -> None:
    site = write_site(tmp_path, broker.host, broker.port)
    state = tmp_path / "elsewhere"
    state.mkdir()
    result = CliRunner().invoke(cli, ["doctor", "--config", str(site), "--state-dir", str(state), "--timeout", "1"],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert f"{state} is writable" in result.stdout
    assert re.search(r"\d+ failed, \d+ warnings, \d+ ok", result.stdout)
    no_interface = write_site(tmp_path, broker.host, broker.port, replace={'interface = "wlan1mon"': ""})
    broken = CliRunner().invoke(cli, ["doctor", "--config", str(no_interface), "--timeout", "1"],
                                env={"COLUMNS": "300"})
    assert "[wifi] interface is not set" in broken.stdout  # rich markup did not eat the brackets


def test_doctor_with_a_broken_config_fails_on_that_line(tmp_path: Path) -> None:
    site = write_site(tmp_path, "127.0.0.1", 1883, replace={"x = 29.7": "x = 35.0"})
    result = CliRunner().invoke(cli, ["doctor", "--config", str(site), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [c["name"] for c in report["checks"]] == ["config"]
    assert "receivers[3].x" in report["checks"][0]["detail"]
    assert "outside the store outline" in report["checks"][0]["detail"]


# -- broker and TLS --------------------------------------------------------------------------------


def test_broker_check_passes_against_a_real_broker(tmp_path: Path, broker: Broker) -> None:
    check = check_broker(site_of(tmp_path, broker.host, broker.port), timeout=2.0)
    assert check.status == "ok", check


def test_broker_check_fails_with_one_line_against_a_closed_port(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    check = check_broker(site_of(tmp_path, "127.0.0.1", port), timeout=2.0)
    assert time.monotonic() - started < 2.0
    assert check.status == "fail"
    assert check.detail == f"127.0.0.1:{port}: connection refused"
    assert "host and port" in check.fix
    assert "\n" not in check.detail + check.fix


def test_broker_check_fails_when_the_port_is_not_mqtt(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check = check_broker(site_of(tmp_path, "127.0.0.1", port), timeout=0.5)
    assert check.status == "fail"
    assert "no MQTT CONNACK" in check.detail


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
             "-days", "2", "-subj", f"/CN={name}")
    return key, cert


@pytest.fixture
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Path, Path]]:
    """A real mosquitto with a TLS listener; returns it, the CA that signed it, and an unrelated CA."""
    directory = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _make_ca(directory, "santi-test-ca")
    _other_key, other_cert = _make_ca(directory, "some-other-ca")
    server_key, csr, server_cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(server_key), "-out", str(csr),
             "-subj", "/CN=127.0.0.1")
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(server_cert), "-days", "1", "-extfile", str(ext))
    instance = Broker(tmp_path_factory.mktemp("tls-mosquitto"),
                      extra_config=f"cafile {ca_cert}\ncertfile {server_cert}\nkeyfile {server_key}\n")
    instance.start()
    try:
        yield instance, ca_cert, other_cert
    finally:
        instance.stop(kill=True)


def _tls_site(tmp_path: Path, broker: Broker, ca: Path) -> SiteConfig:
    return site_of(tmp_path, broker.host, broker.port, extra=f'\n[uplink.tls]\nca_file = "{ca}"\n')


def test_tls_handshake_and_mqtt_over_tls_with_the_right_ca(tmp_path: Path, tls_broker: tuple[Broker, Path, Path]) -> None:
    broker, ca, _other = tls_broker
    site = _tls_site(tmp_path, broker, ca)
    tls = check_tls(site.uplink, now=time.time())
    assert tls.status == "warn", tls  # the test certificate expires tomorrow
    assert "certificate verified" in tls.detail
    assert "expires in" in tls.detail
    assert check_broker(site, timeout=3.0).status == "ok"


def test_tls_fails_with_the_reason_when_the_ca_is_wrong(tmp_path: Path, tls_broker: tuple[Broker, Path, Path]) -> None:
    broker, _ca, other = tls_broker
    tls = check_tls(_tls_site(tmp_path, broker, other).uplink, now=time.time())
    assert tls.status == "fail"
    assert "certificate rejected" in tls.detail
    assert "ca_file" in tls.fix


def test_tls_not_configured_is_fine_on_loopback_and_a_warning_across_the_network(tmp_path: Path) -> None:
    assert check_tls(site_of(tmp_path).uplink, now=NOW).status == "ok"
    remote = site_of(tmp_path, host="hq.example.net", port=1883)
    check = check_tls(remote.uplink, now=NOW)
    assert check.status == "warn"
    assert "[uplink.tls]" in check.fix


# -- Bluetooth against a fake org.bluez on a private bus ---------------------------------------------


def test_bluetooth_ok_when_bluez_has_the_adapter_powered(tmp_path: Path, fake_bluez: FakeBluez) -> None:
    check = check_bluetooth(site_of(tmp_path), bus_address=fake_bluez.bus_address)
    assert check.status == "ok", check
    assert "hci0 present and powered" in check.detail


def test_bluetooth_powered_off_and_missing_adapter(tmp_path: Path, fake_bluez: FakeBluez) -> None:
    site = site_of(tmp_path)
    fake_bluez.set_powered("hci0", False)
    off = check_bluetooth(site, bus_address=fake_bluez.bus_address)
    assert off.status == "fail"
    assert "powered off" in off.detail
    assert "power on" in off.fix
    other = site_of(tmp_path, replace={'adapter = "hci0"': 'adapter = "hci1"'})
    missing = check_bluetooth(other, bus_address=fake_bluez.bus_address, sys_root=tmp_path)
    assert missing.status == "fail"
    assert "no adapter hci1" in missing.detail
    fake_bluez.vanish()
    gone = check_bluetooth(site, bus_address=fake_bluez.bus_address)
    assert gone.status == "fail"
    assert "not running" in gone.detail
    assert "bluetooth" in gone.fix


def test_bluetooth_without_a_system_bus(tmp_path: Path) -> None:
    check = check_bluetooth(site_of(tmp_path), bus_address=f"unix:path={tmp_path}/no-bus", sys_root=tmp_path)
    assert check.status == "fail"
    assert "D-Bus unreachable" in check.detail
    assert "systemctl enable --now dbus bluetooth" in check.fix


def test_bluetooth_not_checked_without_a_local_ble_receiver(tmp_path: Path) -> None:
    site = site_of(tmp_path, replace={'id = "pi-ble"\nkind = "ble"': 'id = "pi-ble"\nkind = "node"\nnode_name = "pi"'})
    assert check_bluetooth(site, bus_address="unix:path=/nonexistent").status == "ok"


# -- Wi-Fi, capabilities -------------------------------------------------------------------------


def fake_net(root: Path, name: str, link_type: int, flags: str) -> None:
    """A sysfs net entry with the two attributes the check reads (their kernel format)."""
    entry = root / "class" / "net" / name
    entry.mkdir(parents=True)
    (entry / "type").write_text(f"{link_type}\n")
    (entry / "flags").write_text(f"{flags}\n")


def test_wifi_monitor_interface_states(tmp_path: Path) -> None:
    site = site_of(tmp_path)  # the example's wlan1mon
    sysfs = tmp_path / "sys"
    assert check_wifi(site, sys_root=sysfs).status == "fail"
    fake_net(sysfs, "wlan1mon", 1, "0x1003")
    managed = check_wifi(site, sys_root=sysfs)
    assert managed.status == "fail"
    assert "not in monitor mode" in managed.detail
    assert "set type monitor" in managed.fix
    (sysfs / "class/net/wlan1mon/type").write_text("803\n")
    (sysfs / "class/net/wlan1mon/flags").write_text("0x1002\n")
    down = check_wifi(site, sys_root=sysfs)
    assert down.status == "fail"
    assert down.fix == "`ip link set wlan1mon up`"
    (sysfs / "class/net/wlan1mon/flags").write_text("0x1003\n")
    assert check_wifi(site, sys_root=sysfs).status == "ok"


def test_wifi_receiver_without_interface_suggests_the_monitor_interface_present(tmp_path: Path) -> None:
    site = site_of(tmp_path).model_copy(update={"wifi": WifiConfig()})  # config check refuses it; doctor explains
    sysfs = tmp_path / "sys"
    fake_net(sysfs, "mon0", 803, "0x1003")
    check = check_wifi(site, sys_root=sysfs)
    assert check.status == "fail"
    assert check.fix == 'set [wifi] interface = "mon0"'


def test_effective_capabilities_parses_proc_status() -> None:
    status = "Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t0000000000002000\n"
    assert effective_capabilities(status) == 1 << 13
    assert effective_capabilities("Name: x\n") is None


# -- NFC -----------------------------------------------------------------------------------------------


def test_nfc_udp_simulator_opens_and_is_flagged_as_not_a_reader() -> None:
    reader = NfcReaderConfig(id="till-1", device=f"udp:127.0.0.1:{free_port()}", x=1, y=1, sector="checkout")
    check = check_nfc(reader)
    assert check.status == "warn", check
    assert "UDP simulator" in check.detail


def test_nfc_usb_reader_listed_but_not_accessible(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    device = sysfs / "bus" / "usb" / "devices" / "1-1"
    device.mkdir(parents=True)
    for key, value in (("busnum", "1"), ("devnum", "4"), ("idVendor", "072f"), ("idProduct", "2200")):
        (device / key).write_text(value + "\n")
    reader = NfcReaderConfig(id="till-1", device="usb", x=1, y=1, sector="checkout")
    check = check_nfc(reader, sys_root=sysfs, dev_root=tmp_path / "dev")
    assert check.status == "fail"
    assert "072f:2200 (acr122) at usb:001:004" in check.detail
    assert 'ATTRS{idVendor}=="072f"' in check.fix
    other = NfcReaderConfig(id="till-1", device="usb:054c:06c1", x=1, y=1, sector="checkout")
    none = check_nfc(other, sys_root=sysfs, dev_root=tmp_path / "dev")
    assert none.status == "fail"
    assert "no nfcpy-supported reader matches" in none.detail
    assert "lsusb" in none.fix


# -- clock, disk, state dir --------------------------------------------------------------------------


def test_clock_parsers_on_real_outputs() -> None:
    assert parse_timedatectl("NTPSynchronized=yes\n") is True
    assert parse_timedatectl("NTPSynchronized=no\n") is False
    assert parse_timedatectl("System has not been booted with systemd as init system (PID 1).") is None
    chrony = ("Reference ID    : A29FC87B (time.cloudflare.com)\nStratum         : 4\n"
              "System time     : 0.000012345 seconds slow of NTP time\nLeap status     : Normal\n")
    assert parse_chronyc_tracking(chrony) == (True, -12.345e-6)
    assert parse_chronyc_tracking(chrony.replace("Normal", "Not synchronised")) == (False, -12.345e-6)


@settings(derandomize=True, max_examples=200)
@given(st.text())
def test_clock_parsers_never_raise(text: str) -> None:
    assert parse_timedatectl(text) in (True, False, None)
    parsed = parse_chronyc_tracking(text)
    assert parsed is None or isinstance(parsed[0], bool)


def test_clock_check_order_and_verdicts() -> None:
    def timedatectl(answer: str) -> object:
        return lambda command, _timeout: (0, answer) if command[0] == "timedatectl" else None

    assert check_clock(now=NOW, run=timedatectl("NTPSynchronized=yes")).status == "ok"  # type: ignore[arg-type]
    assert check_clock(now=NOW, run=timedatectl("NTPSynchronized=no")).status == "fail"  # type: ignore[arg-type]
    unknown = check_clock(now=NOW, run=lambda _c, _t: None)
    assert unknown.status == "warn"
    assert "set-ntp" in unknown.fix
    epoch = check_clock(now=86_400.0, run=lambda _c, _t: (0, "NTPSynchronized=yes"))
    assert epoch.status == "fail"
    assert "1970-01-02" in epoch.detail


def test_clock_check_on_this_machine_answers_without_raising() -> None:
    assert check_clock(now=time.time()).status in ("ok", "warn", "fail")


def test_disk_check_against_the_real_filesystem(tmp_path: Path) -> None:
    assert check_disk(tmp_path, 64 * 1024).status == "ok"
    huge = check_disk(tmp_path / "not-yet", 1 << 62)
    assert huge.status == "fail"
    assert "[buffer] max_bytes" in huge.fix


def test_disk_check_leaves_the_outbox_reserve_out(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    assert check_disk(tmp_path, free // 2).status == "ok"
    kept = check_disk(tmp_path, free // 2, reserve_bytes=free - free // 4)
    assert kept.status == "fail"
    assert "kept free" in kept.detail


def test_state_dir_states(tmp_path: Path) -> None:
    assert check_state_dir(tmp_path).status == "ok"
    assert check_state_dir(tmp_path / "new").status == "warn"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert check_state_dir(blocker).status == "fail"
