"""The BLE source through the real bleak BlueZ backend, against a fake org.bluez on a private D-Bus bus."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from bleak.backends.device import BLEDevice

from agent.config import BleConfig, ConfigError
from agent.observations import AppBeacon, Observation
from agent.privacy import Pseudonymizer
from agent.sources.base import Record
from agent.sources.ble import BleSource, describe, passive_patterns
from tests.conftest import ROOT
from tests.helpers.ble import (
    APP_UUID,
    ESTIMOTE_UID,
    NOW,
    STRANGER,
    TAG_NAMESPACE,
    TLM,
    adv,
    ibeacon,
    make_source,
)
from tests.helpers.fake_bluez import FakeBluez, release_bleak
from tests.helpers.wait import wait_until

OTHER_UUID = "2686f39c-bada-4658-854a-a62e7e5e8b8d"
PHONE_A = "7C:1E:52:0A:11:01"
PHONE_B = "4F:9A:33:0B:22:02"
TAG = "D0:2A:BB:0C:33:03"


@contextlib.asynccontextmanager
async def running(source: BleSource) -> AsyncIterator[list[Record]]:
    """Run the source in this loop; stop it cleanly and close bleak's bus on the way out."""
    records: list[Record] = []
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(records.append, stop))
    try:
        yield records
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await release_bleak()


def observations(records: list[Record]) -> list[Observation]:
    return [r for r in records if isinstance(r, Observation)]


def test_active_scan_turns_adverts_and_rssi_updates_into_observations(
    fake_bluez: FakeBluez, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    source = make_source("active")

    async def main() -> list[Observation]:
        async with running(source) as records:
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 5.0, "source up")
            assert fake_bluez.discovering()
            assert fake_bluez.discovery_filter() == {"Transport": "le", "DuplicateData": False}
            assert fake_bluez.advertise(PHONE_A, -61, manufacturer_data=ibeacon(APP_UUID, 7, 42))
            await asyncio.to_thread(wait_until, lambda: len(records) == 1, 5.0, "first observation")
            assert fake_bluez.advertise(PHONE_A, -67)  # RSSI update only: PropertiesChanged
            await asyncio.to_thread(wait_until, lambda: len(records) == 2, 5.0, "RSSI update")
            # The phone rotates its address: same iBeacon, new Device1.
            assert fake_bluez.advertise(PHONE_B, -70, manufacturer_data=ibeacon(APP_UUID, 7, 42))
            assert fake_bluez.advertise(STRANGER, -50, manufacturer_data=ibeacon(OTHER_UUID, 1, 1))
            assert fake_bluez.advertise(TAG, -80, service_data={"feaa": ESTIMOTE_UID})
            assert fake_bluez.advertise(TAG, -82, service_data={"feaa": TLM})
            await asyncio.to_thread(wait_until, lambda: len(records) == 5, 5.0, "rotation and tag observations")
            await asyncio.to_thread(wait_until, lambda: source.stats.dropped["not_allowed"] == 1, 5.0,
                                    "the stranger's advert dropped")
            return observations(records)

    obs = asyncio.run(main())
    assert [o.rssi_dbm for o in obs] == [-61.0, -67.0, -70.0, -80.0, -82.0]
    phone = Pseudonymizer(b"s" * 32, "store-1", 86400.0).pseudonym("ble", f"ibeacon:{APP_UUID}:7:42", NOW)
    assert {o.emitter_id for o in obs[:3]} == {phone}
    assert (obs[0].tx_power_dbm, obs[0].receiver_id, obs[0].ts) == (-59.0, "rx-pi", NOW)
    assert obs[3].emitter_id == obs[4].emitter_id != phone  # TLM frame tied to the tag's UID
    assert obs[3].tx_power_dbm == -50.0 - 41.0
    assert source.stats.accepted == 5
    assert source.stats.state == "down"  # stopped
    assert not fake_bluez.discovering()
    text = " ".join(o.model_dump_json() for o in obs) + " ".join(r.getMessage() + str(r.__dict__)
                                                               for r in caplog.records)
    for address in (PHONE_A, PHONE_B, TAG, STRANGER):
        for spelling in (address, address.replace(":", "_"), address.replace(":", "").lower()):
            assert spelling not in text


def test_passive_scan_registers_our_patterns_and_hears_only_matches(fake_bluez: FakeBluez) -> None:
    source = make_source("passive")

    async def main() -> tuple[list[Observation], list[list[tuple[int, int, bytes]]]]:
        async with running(source) as records:
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 5.0, "source up")
            await asyncio.to_thread(wait_until, lambda: bool(fake_bluez.monitor_patterns()), 5.0, "monitor activated")
            assert not fake_bluez.discovering()  # passive: no discovery session, only a monitor
            assert fake_bluez.advertise(PHONE_A, -58, manufacturer_data=ibeacon(APP_UUID, 1, 2))
            assert fake_bluez.advertise(TAG, -75, service_data={"feaa": ESTIMOTE_UID})
            # Another company's beacon and Apple continuity data do not match the patterns.
            assert not fake_bluez.advertise(STRANGER, -50, manufacturer_data=ibeacon(OTHER_UUID, 1, 1))
            assert not fake_bluez.advertise(PHONE_B, -50, manufacturer_data={0x004C: bytes.fromhex("1005031c")})
            await asyncio.to_thread(wait_until, lambda: len(records) == 2, 5.0, "two observations")
            return observations(records), fake_bluez.monitor_patterns()

    obs, patterns = asyncio.run(main())
    assert [o.rssi_dbm for o in obs] == [-58.0, -75.0]
    config = BleConfig(scanning="passive", ibeacon_uuids=[APP_UUID], eddystone_namespaces=[TAG_NAMESPACE])
    assert patterns == [[(p.start_position, int(p.ad_data_type), p.content_of_pattern)
                         for p in passive_patterns(config)]]
    assert fake_bluez.monitor_patterns() == []  # unregistered on stop


def test_recovers_when_bluez_vanishes_and_returns(fake_bluez: FakeBluez) -> None:
    source = make_source("active")

    async def main() -> list[Observation]:
        async with running(source) as records:
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 5.0, "source up")
            assert fake_bluez.advertise(PHONE_A, -60, manufacturer_data=ibeacon(APP_UUID, 7, 42))
            await asyncio.to_thread(wait_until, lambda: len(records) == 1, 5.0, "observation before the restart")

            fake_bluez.vanish()
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "down", 5.0, "source down")
            assert "org.bluez" in (source.stats.last_error or "")
            await asyncio.sleep(0.5)  # several retries fail while bluetoothd is away
            assert source.stats.state == "down"
            assert not fake_bluez.advertise(PHONE_A, -60, manufacturer_data=ibeacon(APP_UUID, 7, 42))

            fake_bluez.appear()  # a fresh bluetoothd: nobody is discovering any more
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 5.0, "source up again")
            await asyncio.to_thread(wait_until, fake_bluez.discovering, 5.0, "discovery restarted")
            assert fake_bluez.advertise(PHONE_A, -64, manufacturer_data=ibeacon(APP_UUID, 7, 42))
            await asyncio.to_thread(wait_until, lambda: len(records) == 2, 5.0, "observation after the restart")
            await asyncio.sleep(0.1)
            return observations(records)

    obs = asyncio.run(main())
    assert [o.rssi_dbm for o in obs] == [-60.0, -64.0]
    assert obs[0].emitter_id == obs[1].emitter_id


def test_recovers_when_the_system_bus_itself_restarts(fake_bluez: FakeBluez) -> None:
    source = make_source("active")
    assert fake_bluez.daemon is not None
    daemon = fake_bluez.daemon

    async def main() -> list[Observation]:
        async with running(source) as records:
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 5.0, "source up")
            daemon.stop()
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "down", 5.0, "down with the bus")
            await asyncio.to_thread(wait_until, lambda: "system D-Bus" in (source.stats.last_error or ""), 5.0, "bus error")
            daemon.start()
            fake_bluez.appear()
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 5.0, "up on the new bus")
            await asyncio.to_thread(wait_until, fake_bluez.discovering, 5.0, "discovering on the new bus")
            assert fake_bluez.advertise(PHONE_A, -66, manufacturer_data=ibeacon(APP_UUID, 7, 42))
            await asyncio.to_thread(wait_until, lambda: len(records) == 1, 5.0, "observation on the new bus")
            await asyncio.sleep(0.1)  # and only one: the old session's callback is gone
            return observations(records)

    assert [o.rssi_dbm for o in asyncio.run(main())] == [-66.0]


def test_recovers_when_the_adapter_is_unplugged_or_powered_off(fake_bluez: FakeBluez) -> None:
    source = make_source("active")

    async def main() -> list[Observation]:
        async with running(source) as records:
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 5.0, "source up")
            fake_bluez.remove_adapter("hci0")
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "down", 5.0, "down after unplug")
            assert source.stats.last_error == "adapter hci0 was removed"
            await asyncio.to_thread(wait_until, lambda: "not found" in (source.stats.last_error or ""), 5.0, "retry fails")

            fake_bluez.add_adapter("hci0")
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 5.0, "up after replug")
            fake_bluez.set_powered("hci0", False)
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "down", 5.0, "down after power off")
            await asyncio.to_thread(wait_until, lambda: "powered off" in (source.stats.last_error or ""), 5.0, "power advice")

            fake_bluez.set_powered("hci0", True)
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 5.0, "up after power on")
            await asyncio.to_thread(wait_until, fake_bluez.discovering, 5.0, "discovering again")
            assert fake_bluez.advertise(PHONE_A, -55, manufacturer_data=ibeacon(APP_UUID, 7, 42))
            await asyncio.to_thread(wait_until, lambda: len(records) == 1, 5.0, "observation after recovery")
            return observations(records)

    assert [o.rssi_dbm for o in asyncio.run(main())] == [-55.0]


def test_missing_adapter_is_reported_then_picked_up(fake_bluez: FakeBluez) -> None:
    source = make_source("active", adapter="hci1")

    async def main() -> None:
        async with running(source):
            await asyncio.to_thread(wait_until, lambda: source.stats.last_error is not None, 5.0, "first failure")
            assert source.stats.state == "down"
            assert source.stats.last_error == "adapter hci1 not found; check ble.adapter (bluetoothctl list)"
            fake_bluez.add_adapter("hci1")
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 5.0, "source up on hci1")
            await asyncio.to_thread(wait_until, lambda: fake_bluez.discovering("hci1"), 5.0, "discovering on hci1")
            assert not fake_bluez.discovering("hci0")

    asyncio.run(main())


def test_no_system_bus_is_one_line_and_stop_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/tmp/santi-no-such-bus")
    source = make_source("active")

    async def main() -> None:
        async with running(source):
            await asyncio.to_thread(wait_until, lambda: source.stats.last_error is not None, 5.0, "failure")
        assert source.stats.last_error is not None
        assert source.stats.last_error.startswith("cannot reach the system D-Bus")
        assert "\n" not in source.stats.last_error

    asyncio.run(main())


# The callback path on its own: bleak-shaped inputs, no bus.


def test_callback_counts_every_drop_by_reason() -> None:
    source = make_source()
    records: list[Record] = []
    callback = source.detection_callback(records.append)
    device = BLEDevice(STRANGER, None, None)
    callback(device, adv(rssi=-127, manufacturer=ibeacon(APP_UUID, 1, 1)))  # BlueZ's "no RSSI"
    callback(device, adv(manufacturer={0x004C: b"\x02\x15\x00"}))  # truncated iBeacon
    callback(device, adv(service={"0000feaa-0000-1000-8000-00805f9b34fb": b"\x55"}))
    callback(device, adv(manufacturer={0x0006: b"\x01\x09"}))
    assert records == []
    assert source.stats.dropped == {"no_rssi": 1, "corrupt_ibeacon_length": 1, "corrupt_eddystone_frame": 1,
                                    "not_allowed": 3}

    def full(_: Record) -> None:
        raise asyncio.QueueFull

    source.detection_callback(full)(device, adv(manufacturer=ibeacon(APP_UUID, 1, 1)))
    assert source.stats.dropped["queue_full"] == 1
    assert source.stats.accepted == 0


def test_allow_all_reports_by_address_with_power_from_tx_power_level() -> None:
    source = make_source(allow_all=True)
    records: list[Record] = []
    source.detection_callback(records.append)(BLEDevice(STRANGER, None, None),
                                              adv(-70, manufacturer={0x0006: b"\x01"}, tx_power=0))
    (obs,) = observations(records)
    assert obs.emitter_id == Pseudonymizer(b"s" * 32, "store-1", 86400.0).pseudonym("ble", STRANGER, NOW)
    assert obs.tx_power_dbm == -41.0


def test_tag_memory_expires() -> None:
    clock = [NOW]
    ble = BleConfig(eddystone_namespaces=[TAG_NAMESPACE])
    source = BleSource(ble, "rx", Pseudonymizer(b"s" * 32, "s", 86400.0), clock=lambda: clock[0],
                       tag_memory_s=60.0)
    records: list[Record] = []
    callback = source.detection_callback(records.append)
    tag = BLEDevice(TAG, None, None)
    callback(tag, adv(service={"feaa": ESTIMOTE_UID}))
    clock[0] += 30.0
    callback(tag, adv(service={"feaa": TLM}))
    clock[0] += 61.0
    callback(tag, adv(service={"feaa": TLM}))
    assert len(records) == 2
    assert source.stats.dropped["not_allowed"] == 1


def test_bad_adapter_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"ble\.adapter"):
        make_source(adapter="hci0/../x")


def test_describe_is_one_line_without_addresses() -> None:
    exc = OSError("connect failed for /org/bluez/hci0/dev_7C_1E_52_0A_11_01\nsecond line")
    text = describe(exc)
    assert "\n" not in text
    assert "7C_1E" not in text
    assert "<address>" in text
    assert describe(TimeoutError()) == "BlueZ did not answer in time"


def test_passive_patterns_fall_back_to_generic_beacons() -> None:
    patterns = passive_patterns(BleConfig(scanning="passive"))
    assert [(p.start_position, p.content_of_pattern) for p in patterns] == [
        (0, b"\x4c\x00\x02\x15"), (2, b"\xbe\xac"), (0, b"\xaa\xfe")]


def test_bus_daemon_dies_with_its_parent() -> None:
    """A killed test run leaves no dbus-daemon behind (PR_SET_PDEATHSIG)."""
    code = ("import sys, time; from tests.helpers.fake_bluez import BusDaemon; d = BusDaemon(); d.start(); "
            "print(d.pid, d.socket.parent, flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout is not None
    pid_text, folder = child.stdout.readline().decode().split()
    pid = int(pid_text)
    os.kill(pid, 0)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=5)
    child.stdout.close()
    shutil.rmtree(folder, ignore_errors=True)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, 5, f"dbus-daemon {pid} to die with its parent")


def test_loyalty_app_announces_its_customer_once_per_pseudonym() -> None:
    source = make_source(app_loyalty_prefix="L-")
    records: list[Record] = []
    callback = source.detection_callback(records.append)
    for address in (PHONE_A, PHONE_B, PHONE_A):
        callback(BLEDevice(address, None, None), adv(-60, manufacturer=ibeacon(APP_UUID, 1, 2)))
    callback(BLEDevice(STRANGER, None, None), adv(-60, manufacturer=ibeacon(OTHER_UUID, 1, 2)))
    apps = [r for r in records if isinstance(r, AppBeacon)]
    assert len(observations(records)) == 3
    assert len(apps) == 1
    assert apps[0].loyalty_id == "L-065538"
    assert apps[0].emitter_id == observations(records)[0].emitter_id
    plain = make_source()
    plain_records: list[Record] = []
    plain.detection_callback(plain_records.append)(BLEDevice(PHONE_A, None, None),
                                                   adv(-60, manufacturer=ibeacon(APP_UUID, 1, 2)))
    assert not [r for r in plain_records if isinstance(r, AppBeacon)]
