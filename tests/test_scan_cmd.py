"""``santi scan`` through the real bleak BlueZ backend (fake org.bluez) and a real radiotap TAP interface."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bleak.backends.scanner import AdvertisementData
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import cli
from agent.cli.scan_cmd import ScanTable, short_address
from agent.config import BleConfig
from agent.localbroker import example_site_for
from agent.sources.adverts import AllowList
from agent.sources.wifi import parse_frame
from tests.helpers.ble import ESTIMOTE_UID, TLM, ibeacon
from tests.helpers.fake_bluez import FakeBluez
from tests.helpers.wifi import Tap, probe, radiotap

APP_UUID = "5a4e7469-0000-4000-8000-00000000f15c"  # in the example store's ble.ibeacon_uuids
CART_NAMESPACE = "5a4e54490000000000c1"  # in its ble.eddystone_namespaces
OTHER_UUID = "2686f39c-bada-4658-854a-a62e7e5e8b8d"
PHONE = "7C:1E:52:0A:11:01"
CART = "D0:2A:BB:0C:33:03"
STRANGER_TAG = "C1:2A:BB:0C:44:05"
NEIGHBOUR = "6B:00:11:0D:44:04"
WATCH = "5E:77:10:AA:B2:C3"


def eddystone_uid(namespace: str, instance: str, power: int = -50) -> bytes:
    return bytes([0x00, power & 0xFF]) + bytes.fromhex(namespace) + bytes.fromhex(instance)


@pytest.fixture
def air(fake_bluez: FakeBluez) -> Iterator[FakeBluez]:
    """The store's air while a scan runs: each device advertises every 50 ms until the test ends."""
    done = threading.Event()

    def advertise() -> None:
        while not done.wait(0.05):
            fake_bluez.advertise(PHONE, -48, manufacturer_data=ibeacon(APP_UUID, 7, 42))
            fake_bluez.advertise(CART, -71, service_data={"feaa": eddystone_uid(CART_NAMESPACE, "0000000000a1")})
            fake_bluez.advertise(CART, -73, service_data={"feaa": TLM})
            fake_bluez.advertise(STRANGER_TAG, -80, service_data={"feaa": ESTIMOTE_UID})
            fake_bluez.advertise(NEIGHBOUR, -66, manufacturer_data=ibeacon(OTHER_UUID, 1, 2))
            fake_bluez.advertise(WATCH, -90, manufacturer_data={0x0006: b"\x01\x09\x20"})

    thread = threading.Thread(target=advertise, daemon=True)
    thread.start()
    try:
        yield fake_bluez
    finally:
        done.set()
        thread.join(5)


def _by_identity(emitters: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["identity"] or e["address"]: e for e in emitters}


def test_scan_lists_beacons_with_kind_identity_and_allowed(air: FakeBluez, tmp_path: Path) -> None:
    site = example_site_for(tmp_path, 1)
    result = CliRunner().invoke(cli, ["scan", "--config", str(site), "--seconds", "1.5", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["sources"]["ble"]["state"] == "up"
    rows = _by_identity(report["emitters"])
    phone = rows[f"{APP_UUID} 7/42"]
    assert (phone["kind"], phone["allowed"], phone["rssi_dbm"], phone["power_at_1m_dbm"]) == ("iBeacon", True, -48, -59)
    assert phone["address"] == ""  # a beacon is named by its identity, not its address
    cart = rows[f"{CART_NAMESPACE} 0000000000a1"]
    assert (cart["kind"], cart["allowed"]) == ("Eddystone-UID", True)
    assert "mV" in cart["telemetry"]  # the TLM frames of the same tag land on its row
    assert cart["rssi_max_dbm"] == -71
    stranger = rows["edd1ebeac04e5defa017 f4c683198fb6"]
    assert (stranger["kind"], stranger["allowed"]) == ("Eddystone-UID", False)
    assert "namespace" in stranger["note"]
    neighbour = rows[f"{OTHER_UUID} 1/2"]
    assert (neighbour["kind"], neighbour["allowed"]) == ("iBeacon", False)
    watch = rows["…:B2:C3"]
    assert (watch["kind"], watch["allowed"], watch["note"]) == ("Microsoft", False, "ignored: no beacon identity")
    assert len(rows) == 5
    assert [e["rssi_dbm"] for e in report["emitters"]] == sorted((e["rssi_dbm"] for e in report["emitters"]),
                                                                reverse=True)
    for address in (PHONE, CART, STRANGER_TAG, NEIGHBOUR, WATCH):
        assert address not in result.output
        assert address.replace(":", "_") not in result.output


@pytest.mark.parametrize("terminal", [True, False])
def test_the_table_for_a_person(air: FakeBluez, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                terminal: bool) -> None:
    """On a terminal the table refreshes in place; into a pipe it is printed once at the end."""
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("TTY_COMPATIBLE", "1" if terminal else "0")
    site = example_site_for(tmp_path, 1)
    result = CliRunner().invoke(cli, ["scan", "--config", str(site), "--seconds", "1.2"])
    assert result.exit_code == 0, result.output
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout)
    for text in ("iBeacon", f"{APP_UUID} 7/42", "Eddystone-UID", "allowed", "ignored", "…:B2:C3",
                 "5 emitters heard: 2 allowed, 3 ignored"):
        assert text in plain
    assert ("\x1b[2K" in result.stdout) == terminal  # the live table redraws in place
    assert (plain.count("santi scan") > 1) == terminal
    assert PHONE not in result.output


def test_passive_scan_hears_only_what_the_agent_would(air: FakeBluez, tmp_path: Path) -> None:
    site = example_site_for(tmp_path, 1)
    result = CliRunner().invoke(cli, ["scan", "--config", str(site), "--seconds", "1.5", "--passive", "--json"])
    assert result.exit_code == 0, result.output
    rows = _by_identity(json.loads(result.stdout)["emitters"])
    assert set(rows) == {f"{APP_UUID} 7/42", f"{CART_NAMESPACE} 0000000000a1"}


def test_no_bluetooth_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/tmp/santi-no-such-bus")
    site = example_site_for(tmp_path, 1)
    result = CliRunner().invoke(cli, ["scan", "--config", str(site), "--seconds", "0.5", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["emitters"] == []
    assert result.stderr.splitlines()[-1].startswith("santi: ble never came up: cannot reach the system D-Bus")


def test_bad_inputs_exit_2(tmp_path: Path) -> None:
    site = example_site_for(tmp_path, 1)
    nothing = CliRunner().invoke(cli, ["scan", "--config", str(site), "--no-ble"])
    assert nothing.exit_code == 2
    assert "--no-ble needs --wifi" in nothing.stderr
    adapter = CliRunner().invoke(cli, ["scan", "--config", str(site), "--adapter", "hci0/x", "--seconds", "1"])
    assert adapter.exit_code == 2
    assert "ble.adapter" in adapter.stderr
    missing = CliRunner().invoke(cli, ["scan", "--config", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2
    assert "no such file" in missing.stderr


def test_wifi_probes_from_a_monitor_interface(tap_name: str, tmp_path: Path) -> None:
    site = example_site_for(tmp_path, 1)
    random_mac, global_mac = bytes.fromhex("da a1 19 00 00 01"), bytes.fromhex("68 ec c5 24 03 44")
    tap = Tap(tap_name)
    done = threading.Event()

    def transmit() -> None:
        while not done.wait(0.05):
            tap.send(radiotap(signal=-52, freq=2437) + probe(src=random_mac))
            tap.send(radiotap(signal=-75, freq=5180) + probe(src=global_mac, ssid=b"CafeWiFi"))

    thread = threading.Thread(target=transmit, daemon=True)
    thread.start()
    try:
        result = CliRunner().invoke(cli, ["scan", "--config", str(site), "--no-ble", "--wifi", tap_name,
                                          "--seconds", "1", "--json"])
    finally:
        done.set()
        thread.join(5)
        tap.close()
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["sources"]["wifi"]["state"] == "up"
    rows = {e["address"]: e for e in report["emitters"]}
    assert set(rows) == {"…:00:01", "…:03:44"}
    near, far = rows["…:00:01"], rows["…:03:44"]
    assert (near["kind"], near["identity"], near["rssi_dbm"], near["detail"]) == ("Wi-Fi probe", "random MAC", -52,
                                                                                   "ch 6")
    assert (far["identity"], far["detail"]) == ("global MAC", "ch 36, directed")
    assert near["allowed"]  # the example store has a Wi-Fi receiver
    assert "68:ec:c5:24:03:44" not in result.output.lower()


def _adv(rssi: int, manufacturer: dict[int, bytes] | None = None,
         service: dict[str, bytes] | None = None) -> AdvertisementData:
    return AdvertisementData(local_name=None, manufacturer_data=manufacturer or {}, service_data=service or {},
                             service_uuids=[], tx_power=None, rssi=rssi, platform_data=())


def test_table_counts_and_keeps_corrupt_frames_on_the_row() -> None:
    table = ScanTable(allow=AllowList.from_config(BleConfig(ibeacon_uuids=[APP_UUID])), wifi_located=False)
    table.add_ble(1.0, PHONE, _adv(-60, ibeacon(APP_UUID, 1, 1)))
    table.add_ble(2.0, PHONE, _adv(-50, ibeacon(APP_UUID, 1, 1)))
    table.add_ble(2.5, NEIGHBOUR, _adv(-127, ibeacon(APP_UUID, 1, 1)))  # BlueZ's "no RSSI": not heard
    table.add_ble(3.0, WATCH, _adv(-70, {0x004C: b"\x02\x15\x00"}))  # a truncated iBeacon
    (phone, watch) = table.sorted_rows()
    assert (phone.count, phone.rssi_dbm, phone.rssi_max, phone.to_dict(4.0)["rssi_mean_dbm"]) == (2, -50, -50, -55)
    assert phone.to_dict(4.0)["last_seen_s"] == 2.0
    assert (watch.kind, watch.corrupt, watch.allowed) == ("BLE device", 1, False)


def test_allow_all_admits_devices_by_address() -> None:
    table = ScanTable(allow=AllowList.from_config(BleConfig(allow_all=True)), wifi_located=False)
    table.add_ble(1.0, WATCH, _adv(-70, {0x0006: b"\x01"}))
    (row,) = table.sorted_rows()
    assert row.allowed
    assert row.note == "allowed by address (ble.allow_all)"


def test_probe_rows_follow_the_mac() -> None:
    table = ScanTable(allow=AllowList.from_config(BleConfig()), wifi_located=False)
    frame = radiotap(signal=-61) + probe()
    table.add_probe(parse_frame(frame, 1.0))
    table.add_probe(parse_frame(frame, 2.0))
    (row,) = table.sorted_rows()
    assert (row.count, row.allowed, row.address) == (2, False, "…:03:44")


@settings(max_examples=200, derandomize=True)
@given(st.binary(min_size=6, max_size=6))
def test_short_address_keeps_only_the_last_two_octets(raw: bytes) -> None:
    text = raw.hex(":").upper()
    short = short_address(text)
    assert short == short_address(raw) == "…:" + text[-5:]
    assert text[:8] not in short


def test_open_ended_scan_with_bluetooth_off_ends_with_one_line(fake_bluez: FakeBluez, tmp_path: Path) -> None:
    fake_bluez.set_powered("hci0", False)
    site = example_site_for(tmp_path, 1)
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": fake_bluez.bus_address}
    done = subprocess.run([sys.executable, "-c", "from agent.cli import main; main()", "scan", "--config", str(site)],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[-1] == "0 emitters heard: 0 allowed, 0 ignored"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("santi: ble never came up: ")
    assert "hci0" in lines[0]
