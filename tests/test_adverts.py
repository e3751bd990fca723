"""Advertisement parsers on real payloads, property tests on random bytes, and the allow-list."""

from __future__ import annotations

import json
import re
import struct
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import BleConfig
from agent.sources.adverts import (
    EDDYSTONE_UUID,
    AdStructure,
    AdvertParseError,
    AllowList,
    AltBeacon,
    EddystoneEID,
    EddystoneETLM,
    EddystoneTLM,
    EddystoneUID,
    EddystoneURL,
    Emitter,
    IBeacon,
    Manufacturer,
    ServiceData,
    normalise_uuid,
    parse_ad,
    parse_eddystone,
    parse_manufacturer,
    parse_service_data,
    plausible_power,
    split_ad,
)

HCI_SAMPLES = Path("ble-adv-raw-samples/hci_and_adv_samples_from_public_issues.txt")
ESPRESENSE_LOG = Path("espresense-mqtt-samples/serial_log_lines_from_public_issues.txt")
SNIFF = Path("ble-adv-raw-samples/blakete_take3_adv37_2.pcap")


# --- real payloads -----------------------------------------------------------------------------

def _hci_events(text: str) -> list[bytes]:
    """The ``hcidump --raw`` events of the sample file: a line starting '>' and its continuation lines."""
    events: list[str] = []
    for line in text.splitlines():
        if line.startswith(">"):
            events.append(line[1:])
        elif line.startswith("  ") and events:
            events[-1] += line
    return [bytes.fromhex(event) for event in events]


def _le_advertising_report(event: bytes) -> tuple[int, str, bytes, int]:
    """(event type, address, AD payload, RSSI) of a single-report HCI LE Advertising Report."""
    assert (event[:2], event[3], event[4]) == (b"\x04\x3e", 0x02, 1)
    address = ":".join(f"{b:02X}" for b in event[7:13][::-1])
    length = event[13]
    return event[5], address, event[14:14 + length], struct.unpack("b", event[14 + length:15 + length])[0]


def test_eddystone_url_from_a_real_hci_dump(shared_data: Path) -> None:
    """google/eddystone#118: the advertiser's ADV_IND and its scan response, as hcidump printed them."""
    adv, scan_response = _hci_events((shared_data / HCI_SAMPLES).read_text(encoding="utf-8"))
    kind, address, payload, rssi = _le_advertising_report(adv)
    assert (kind, address, rssi) == (0x00, "DC:53:60:C1:54:BB", -73)
    assert split_ad(payload)[:2] == [AdStructure(0x01, b"\x1a"), AdStructure(0x03, b"\xaa\xfe")]
    assert parse_ad(payload) == [EddystoneURL(url="https://www.google.com", tx_power_0m_dbm=-19)]
    kind, _, payload, rssi = _le_advertising_report(scan_response)
    assert (kind, rssi) == (0x04, -72)
    assert split_ad(payload) == [AdStructure(0x09, b"localhost.localdomain")]
    assert parse_ad(payload) == []


def test_eddystone_uid_from_a_real_estimote_tag(shared_data: Path) -> None:
    """sandeepmistry/node-eddystone-beacon-scanner#13, checked against that library's own decoding."""
    text = (shared_data / HCI_SAMPLES).read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith("gap advertisement = "))
    gap = json.loads(line.removeprefix("gap advertisement = "))
    (entry,) = gap["serviceData"]
    frame = parse_service_data(entry["uuid"], bytes(entry["data"]))
    assert frame == EddystoneUID(namespace="edd1ebeac04e5defa017", instance="f4c683198fb6", tx_power_0m_dbm=-50)
    assert frame.identity == "eddystone:edd1ebeac04e5defa017:f4c683198fb6"


def _md_lines(shared_data: Path) -> dict[str, bytes]:
    text = (shared_data / ESPRESENSE_LOG).read_text(encoding="utf-8")
    return {m.group(1): bytes.fromhex(m.group(2)) for m in re.finditer(r"Verbose \| (\S+)\s+MD: ([0-9a-f]+)", text)}


def _manufacturer(raw: bytes) -> IBeacon | AltBeacon | Manufacturer:
    return parse_manufacturer(int.from_bytes(raw[:2], "little"), raw[2:])


def test_ibeacons_from_real_espresense_logs(shared_data: Path) -> None:
    lines = _md_lines(shared_data)
    # ESPresense#475: ESPresense itself printed "iBeacon:fda50693-a4e2-4fb1-afcf-c6eb07647825-100-65535".
    radioland = _manufacturer(lines["name:jojo"])
    assert radioland == IBeacon(uuid="fda50693-a4e2-4fb1-afcf-c6eb07647825", major=100, minor=65535,
                                measured_power_dbm=30)
    assert plausible_power(radioland.measured_power_dbm) is None  # +30 dBm at 1 m: wrongly programmed
    # ESPresense#289: the company id bytes are swapped (00 4c), so ESPresense labelled it "md:4c00:25",
    # not iBeacon; so do we. 25 is the payload length.
    swapped = _manufacturer(lines["323ce1e9fa38"])
    assert isinstance(swapped, Manufacturer)
    assert (swapped.company_id, len(lines["323ce1e9fa38"])) == (0x4C00, 25)
    # The same bytes with the company id the right way round are the beacon the thread describes.
    fixed = _manufacturer(b"\x4c\x00" + lines["323ce1e9fa38"][2:])
    assert fixed == IBeacon(uuid="2686f39c-bada-4658-854a-a62e7e5e8b8d", major=1, minor=0, measured_power_dbm=-55)
    assert _manufacturer(lines["msft:cdp:0902"]) == Manufacturer(0x0006, lines["msft:cdp:0902"][2:])
    assert _manufacturer(lines["a4c138e1212e"]) == Manufacturer(0x8801, lines["a4c138e1212e"][2:])


def _sniffed_adverts(path: Path) -> list[bytes]:
    """AdvData of every advertising PDU carrying one in a LINKTYPE_BLUETOOTH_LE_LL_WITH_PHDR pcap."""
    data = path.read_bytes()
    assert struct.unpack_from("<I", data, 0)[0] == 0xA1B2C3D4
    assert struct.unpack_from("<I", data, 20)[0] == 256
    payloads: list[bytes] = []
    offset = 24
    while offset < len(data):
        _, _, captured, _ = struct.unpack_from("<IIII", data, offset)
        packet = data[offset + 16:offset + 16 + captured]
        offset += 16 + captured
        link_layer = packet[10:]  # after the 10-byte pseudo-header
        pdu_type, length = link_layer[4] & 0x0F, link_layer[5]
        if pdu_type in (0x0, 0x2, 0x4, 0x6):  # ADV_IND, ADV_NONCONN_IND, SCAN_RSP, ADV_SCAN_IND
            payloads.append(link_layer[6:6 + length][6:])  # drop AdvA
    return payloads


def test_real_over_the_air_sniff_parses_or_fails_typed(shared_data: Path) -> None:
    """A HackRF sniff of a Boston street: mostly Apple continuity; CRCs unchecked, so some PDUs are corrupt."""
    outcomes: Counter[str] = Counter()
    for payload in _sniffed_adverts(shared_data / SNIFF):
        try:
            adverts = parse_ad(payload)
        except AdvertParseError as exc:
            outcomes["error:" + exc.reason] += 1
            continue
        outcomes["ok"] += 1
        outcomes["apple"] += any(isinstance(a, Manufacturer) and a.company_id == 0x004C for a in adverts)
    assert outcomes == {"ok": 3163, "apple": 1912, "error:ad_truncated": 178, "error:service_data_length": 2}


# --- decoding rules ----------------------------------------------------------------------------

def test_eddystone_frames() -> None:
    tlm = parse_eddystone(bytes.fromhex("2000" "0bb8" "1780" "00000064" "00000e10"))
    assert tlm == EddystoneTLM(battery_mv=3000, temperature_c=23.5, adv_count=100, uptime_s=360.0)
    unsupported = parse_eddystone(bytes.fromhex("2000" "0000" "8000" "00000001" "00000000"))
    assert unsupported == EddystoneTLM(battery_mv=None, temperature_c=None, adv_count=1, uptime_s=0.0)
    etlm = parse_eddystone(bytes.fromhex("2001" + "ab" * 12 + "1234" + "beef"))
    assert etlm == EddystoneETLM(etlm=b"\xab" * 12, salt=0x1234, mic=0xBEEF)
    assert parse_eddystone(bytes.fromhex("30f0" + "01" * 8)) == EddystoneEID(eid=b"\x01" * 8, tx_power_0m_dbm=-16)
    url = parse_eddystone(b"\x10\xeb\x02" + b"santi" + b"\x01" + b"x")
    assert url == EddystoneURL(url="http://santi.org/x", tx_power_0m_dbm=-21)
    uid20 = parse_eddystone(b"\x00\xee" + bytes(range(16)) + b"\x00\x00")
    assert isinstance(uid20, EddystoneUID)
    assert uid20.instance == "0a0b0c0d0e0f"


@pytest.mark.parametrize(("payload", "reason"), [
    (b"", "eddystone_empty"),
    (b"\x50\x00", "eddystone_frame"),
    (b"\x00\xee" + bytes(10), "eddystone_uid_length"),
    (b"\x10\xeb\x09abc", "eddystone_url_scheme"),
    (b"\x10\xeb\x00a\x1fb", "eddystone_url_char"),
    (b"\x10\xeb\x00" + b"a" * 18, "eddystone_url_length"),
    (b"\x20\x00\x00", "eddystone_tlm_length"),
    (b"\x20\x07" + bytes(12), "eddystone_tlm_version"),
    (b"\x30\x00\x01", "eddystone_eid_length"),
])
def test_eddystone_errors_name_their_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(AdvertParseError) as info:
        parse_eddystone(payload)
    assert info.value.reason == reason


def test_manufacturer_errors_and_uuids() -> None:
    with pytest.raises(AdvertParseError, match="ibeacon_length"):
        parse_manufacturer(0x004C, b"\x02\x15" + bytes(20))
    with pytest.raises(AdvertParseError, match="altbeacon_length"):
        parse_manufacturer(0x0118, b"\xbe\xac" + bytes(10))
    with pytest.raises(AdvertParseError, match="company_id"):
        parse_manufacturer(0x10000, b"")
    with pytest.raises(AdvertParseError, match="uuid"):
        parse_service_data("not-a-uuid", b"")
    assert normalise_uuid("FEAA") == EDDYSTONE_UUID
    assert parse_service_data("181a", b"\x01") == ServiceData("0000181a-0000-1000-8000-00805f9b34fb", b"\x01")
    alt = parse_manufacturer(0x0118, b"\xbe\xac" + uuid.UUID(int=1).bytes + b"\x00\x02\x00\x03\xc5\x00")
    assert alt == AltBeacon(company_id=0x0118, id1=str(uuid.UUID(int=1)), id2=2, id3=3,
                            reference_rssi_dbm=-59, reserved=0)


# --- property tests ----------------------------------------------------------------------------

REASONS = {
    "ok", "company_id", "uuid", "ibeacon_length", "altbeacon_length", "eddystone_empty", "eddystone_frame",
    "eddystone_uid_length", "eddystone_url_length", "eddystone_url_scheme", "eddystone_url_char",
    "eddystone_tlm_length", "eddystone_tlm_version", "eddystone_eid_length", "ad_truncated",
    "manufacturer_length", "service_data_length",
}


def _outcome(parse: Callable[..., object], *args: object) -> str:
    """"ok", or the reason of the typed error; any other exception fails the test."""
    try:
        parse(*args)
    except AdvertParseError as exc:
        return exc.reason
    return "ok"


UUIDS = st.sampled_from(["feaa", EDDYSTONE_UUID, "181a", "0000fe9f-0000-1000-8000-00805f9b34fb", "xyz", ""])


@settings(max_examples=600, derandomize=True)
@given(st.integers(-10, 0x10010), st.binary(max_size=40))
def test_random_manufacturer_data_only_fails_typed(company: int, data: bytes) -> None:
    for payload in (data, b"\x02\x15" + data, b"\xbe\xac" + data):
        assert _outcome(parse_manufacturer, company, payload) in REASONS
        assert _outcome(parse_manufacturer, 0x004C, payload) in REASONS


@settings(max_examples=600, derandomize=True)
@given(UUIDS, st.binary(max_size=40), st.integers(0, 0x50))
def test_random_service_data_only_fails_typed(service: str, data: bytes, frame: int) -> None:
    for payload in (data, bytes([frame]) + data, bytes([frame & 0xF0, frame & 0x01]) + data):
        assert _outcome(parse_service_data, service, payload) in REASONS


@settings(max_examples=600, derandomize=True)
@given(st.binary(max_size=62))
def test_random_ad_payloads_only_fail_typed(payload: bytes) -> None:
    assert _outcome(parse_ad, payload) in REASONS


@settings(max_examples=200, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=29)), max_size=6))
def test_split_ad_inverts_the_encoding(structures: list[tuple[int, bytes]]) -> None:
    payload = b"".join(bytes([len(data) + 1, kind]) + data for kind, data in structures)
    assert split_ad(payload + b"\x00\x00") == [AdStructure(kind, data) for kind, data in structures]


@settings(max_examples=300, derandomize=True)
@given(st.uuids(), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(-128, 127))
def test_ibeacon_round_trip(beacon: uuid.UUID, major: int, minor: int, power: int) -> None:
    payload = b"\x02\x15" + beacon.bytes + struct.pack(">HHb", major, minor, power)
    parsed = parse_manufacturer(0x004C, payload)
    assert parsed == IBeacon(str(beacon), major, minor, power)
    assert isinstance(parsed, IBeacon)
    assert parsed.identity == f"ibeacon:{beacon}:{major}:{minor}"


@settings(max_examples=300, derandomize=True)
@given(st.binary(min_size=10, max_size=10), st.binary(min_size=6, max_size=6), st.integers(-128, 127))
def test_eddystone_uid_round_trip(namespace: bytes, instance: bytes, tx: int) -> None:
    frame = parse_service_data("feaa", b"\x00" + struct.pack("b", tx) + namespace + instance)
    assert frame == EddystoneUID(namespace.hex(), instance.hex(), tx)


# --- allow-list --------------------------------------------------------------------------------

APP = "fda50693-a4e2-4fb1-afcf-c6eb07647825"
NS = "edd1ebeac04e5defa017"
PHONE = IBeacon(APP, 7, 42, -59)
STRANGER = IBeacon("2686f39c-bada-4658-854a-a62e7e5e8b8d", 1, 0, -55)
TAG = EddystoneUID(NS, "f4c683198fb6", -50)
URL = EddystoneURL("https://www.google.com", -19)


def test_allow_list_admits_only_configured_emitters() -> None:
    allow = AllowList.from_config(BleConfig(ibeacon_uuids=[APP.upper()], eddystone_namespaces=[NS]))
    assert allow.admits(PHONE)
    assert allow.admits(TAG)
    assert allow.admits(AltBeacon(0x0118, APP, 1, 2, -60, 0))
    assert not allow.admits(STRANGER)
    assert not allow.admits(URL)
    assert allow.choose([STRANGER, PHONE], None) == Emitter(PHONE.identity, -59)
    assert allow.choose([TAG], None) == Emitter(TAG.identity, -91)
    assert allow.choose([STRANGER, URL, Manufacturer(6, b"")], 4) is None


def test_allow_all_prefers_beacon_identity_then_address() -> None:
    allow = AllowList.from_config(BleConfig(allow_all=True))
    assert allow.choose([Manufacturer(6, b""), STRANGER], None) == Emitter(STRANGER.identity, -55)
    assert allow.choose([URL], None) == Emitter(None, -60)
    assert allow.choose([], 4) == Emitter(None, -37)
    assert allow.choose([], None) == Emitter(None, None)
    assert allow.choose([IBeacon(APP, 1, 1, 30)], None) == Emitter(f"ibeacon:{APP}:1:1", None)
