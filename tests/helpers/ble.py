"""BLE for tests: advertisement payloads as phones and tags send them, and a BLE source wired for the fake BlueZ."""

from __future__ import annotations

from bleak.backends.scanner import AdvertisementData

from agent.backoff import BackoffPolicy
from agent.config import BleConfig
from agent.privacy import Pseudonymizer
from agent.sources.ble import BleSource

APP_UUID = "fda50693-a4e2-4fb1-afcf-c6eb07647825"

TAG_NAMESPACE = "edd1ebeac04e5defa017"

NOW = 1_700_000_000.0

STRANGER = "6B:00:11:0D:44:04"


def ibeacon(uuid: str, major: int, minor: int, power: int = -59) -> dict[int, bytes]:
    return {0x004C: b"\x02\x15" + bytes.fromhex(uuid.replace("-", "")) + major.to_bytes(2, "big")
            + minor.to_bytes(2, "big") + (power & 0xFF).to_bytes(1, "big")}


# The Estimote tag's real UID frame (sandeepmistry/node-eddystone-beacon-scanner#13): tx -50 dBm at 0 m.
ESTIMOTE_UID = bytes([0, 206, 237, 209, 235, 234, 192, 78, 93, 239, 160, 23, 244, 198, 131, 25, 143, 182])

TLM = bytes.fromhex("2000" "0bb8" "1780" "00000064" "00000e10")


def make_source(scanning: str = "active", adapter: str = "hci0", **config: object) -> BleSource:
    ble = BleConfig(adapter=adapter, scanning=scanning, ibeacon_uuids=[APP_UUID],
                    eddystone_namespaces=[TAG_NAMESPACE], **config)
    return BleSource(ble, "rx-pi", Pseudonymizer(b"s" * 32, "store-1", 86400.0), clock=lambda: NOW,
                     retry=BackoffPolicy(base_s=0.05, cap_s=0.2), start_timeout_s=5.0)


def adv(rssi: int = -60, manufacturer: dict[int, bytes] | None = None,
        service: dict[str, bytes] | None = None, tx_power: int | None = None) -> AdvertisementData:
    return AdvertisementData(local_name=None, manufacturer_data=manufacturer or {}, service_data=service or {},
                             service_uuids=[], tx_power=tx_power, rssi=rssi, platform_data=())
