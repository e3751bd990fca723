"""Linking keys of probe requests: exact signatures, and no raw MAC in what comes out."""

from __future__ import annotations

import csv
from dataclasses import fields
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.privacy import Pseudonymizer
from agent.probe_keys import ProbeKeys, elements, probe_keys, signature
from agent.sources.wifi import parse_frame, read_capture

PSEUDO = Pseudonymizer(b"p" * 32, "store", 86_400.0)
RATES = (1, bytes.fromhex("02040b16"))
HT = (45, bytes.fromhex("ad0113ff") + bytes(22))
WPS = (221, bytes.fromhex("0050f204104a000110"))
CAPTURE = Path("fryza-wifi-probe-requests") / "position_1_2024-02-08_anonymized.pcap"
CSV_EXPORT = Path("fryza-wifi-probe-requests") / "position_1_2024-02-08_ver-99.csv"


def keys(mac: bytes = bytes.fromhex("d6f6fba2c5ab"), items: list[tuple[int, bytes]] | None = None,
         sequence: int | None = 3085, ts: float = 100.0) -> ProbeKeys:
    return probe_keys(ts=ts, mac=mac, rssi_dbm=-61.0, channel=6, sequence=sequence,
                      items=[(0, b"Cafe"), RATES, (3, b"\x06"), HT, WPS] if items is None else items,
                      pseudonymizer=PSEUDO)


def test_signature_keeps_capabilities_and_vendor_ouis_only() -> None:
    got = signature([(0, b"CafeWiFi"), RATES, (3, b"\x0b"), (50, b"\x0c\x12"), WPS, (127, b"\x04"), (42, b"\x01\x02")])
    assert got == (b"\x01\x04\x02\x04\x0b\x16" + b"\x32\x02\x0c\x12" + b"\xdd\x04\x00\x50\xf2\x04"
                   + b"\x7f\x01\x04" + b"\x2a\x00")


def test_ssid_channel_and_vendor_payload_do_not_change_the_signature_key() -> None:
    base = keys()
    other = keys(items=[(0, b""), RATES, (3, b"\x0b"), HT, (221, bytes.fromhex("0050f204ffffffff"))])
    assert other.signature == base.signature


@pytest.mark.parametrize(("items", "same"), [
    ([RATES, (3, b"\x06"), HT, WPS], True),                            # no SSID
    ([HT, RATES, WPS], False),                                        # another order
    ([RATES, (45, HT[1][:-1] + b"\x01"), WPS], False),                 # other HT capabilities
    ([RATES, HT, (221, bytes.fromhex("00101802"))], False),           # another vendor
    ([RATES, HT, WPS, WPS], False),                                   # a repeated element
])
def test_what_a_model_sends_changes_the_signature(items: list[tuple[int, bytes]], same: bool) -> None:
    assert (keys(items=items).signature == keys().signature) is same


def test_keys_are_numbers_and_keyed_pseudonyms() -> None:
    got = keys()
    assert got.randomised
    assert (got.ts, got.rssi_dbm, got.channel, got.sequence) == (100.0, -61.0, 6, 3085)
    assert got.mac_key == PSEUDO.pseudonym("wifi", bytes.fromhex("d6f6fba2c5ab"), 100.0)
    assert got.mac_key != keys(mac=bytes.fromhex("68ecc5240344")).mac_key
    assert not keys(mac=bytes.fromhex("68ecc5240344")).randomised
    assert got.signature != keys(ts=100.0 + 86_400.0).signature  # unlinkable across salt periods


def test_bad_inputs_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="6 octets"):
        keys(mac=b"\x01\x02")
    with pytest.raises(ValueError, match=r"outside 0\.\.4095"):
        keys(sequence=4096)
    assert keys(sequence=None).sequence is None


def test_elements_walks_every_element_and_stops_at_a_truncated_one() -> None:
    body = b"\x00\x00" + b"\xdd\x01\x01" + b"\xdd\x01\x02" + b"\x2d\x05\x01"
    assert list(elements(body)) == [(0, b""), (221, b"\x01"), (221, b"\x02")]


def _scan(found: ProbeKeys, mac: bytes, ssid: bytes) -> None:
    """No spelling of the MAC, nor the SSID, in any field of the record."""
    text = " ".join(str(getattr(found, f.name)) for f in fields(found)).lower()
    spellings = {mac.hex(), mac.hex(":"), mac.hex("-"), mac.hex(" "), mac.decode("latin-1").lower()}
    for spelling in spellings:
        assert spelling not in text
    if ssid:
        assert ssid.decode("latin-1").lower() not in text


@settings(max_examples=200, derandomize=True)
@given(st.binary(min_size=6, max_size=6), st.binary(min_size=3, max_size=32),
       st.lists(st.tuples(st.integers(1, 254), st.binary(max_size=12)), max_size=6),
       st.integers(0, 4095))
def test_no_raw_mac_or_ssid_comes_out(mac: bytes, ssid: bytes, extra: list[tuple[int, bytes]], sequence: int) -> None:
    _scan(keys(mac=mac, items=[(0, ssid), *extra], sequence=sequence), mac, ssid)


def test_real_frames_give_the_csv_sequence_numbers_and_no_raw_mac(shared_data: Path) -> None:
    with (shared_data / CSV_EXPORT).open(encoding="utf-8") as handle:
        rows = {int(row["idx"]): row for row in csv.DictReader(handle, delimiter=";")}
    checked = 0
    with (shared_data / CAPTURE).open("rb") as handle:
        for index, (ts, frame) in enumerate(read_capture(handle)):
            if index >= 2000:
                break
            probe = parse_frame(frame, ts)
            dot11 = dpkt.radiotap.Radiotap(frame).data
            found = probe_keys(ts=ts, mac=probe.mac, rssi_dbm=probe.rssi_dbm, channel=probe.channel,
                               sequence=int(dot11.mgmt.sequence_number),
                               items=[(int(ie.id), bytes(ie.data)) for ie in dot11.ies], pseudonymizer=PSEUDO)
            row = rows[index]
            assert found.sequence == int(row["seq_num"])
            assert found.randomised == (row["randomized"] == "1")
            _scan(found, probe.mac, row["ssid"].encode())
            checked += 1
    assert checked == 2000
