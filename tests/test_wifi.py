"""Probe-request parsing: built frames, fuzzing, and a real day of captures."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
from collections import Counter
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.observations import Observation
from agent.privacy import Pseudonymizer
from agent.probe_keys import probe_keys
from agent.sources.base import Record, SourceStats
from agent.sources.wifi import (
    FrameSkipped,
    ProbeCounter,
    WifiCaptureError,
    WifiCaptureSource,
    channel_of,
    is_randomised,
    parse_frame,
    read_capture,
)
from tests.helpers.wifi import probe, radiotap

CAPTURE = Path("fryza-wifi-probe-requests") / "position_1_2024-02-08_anonymized.pcap"
CSV_EXPORT = Path("fryza-wifi-probe-requests") / "position_1_2024-02-08_ver-99.csv"
PSEUDO = Pseudonymizer(b"w" * 32, "store", 86_400.0)


def test_a_built_probe_request_parses() -> None:
    parsed = parse_frame(radiotap(signal=-61, freq=2437) + probe(ssid=b"CafeWiFi"), 10.0)
    assert (parsed.ts, parsed.rssi_dbm, parsed.freq_mhz, parsed.channel) == (10.0, -61.0, 2437, 6)
    assert parsed.mac == bytes.fromhex("68ecc5240344")
    assert not parsed.mac_randomised
    assert parsed.ssid_present


def test_alignment_with_tsft_and_flags() -> None:
    parsed = parse_frame(radiotap(signal=-77, freq=5180, flags=0x00, tsft=True) + probe(), 1.0)
    assert (parsed.rssi_dbm, parsed.freq_mhz, parsed.channel, parsed.ssid_present) == (-77.0, 5180, 36, False)


def test_fcs_is_stripped_and_bad_fcs_dropped() -> None:
    frame = probe(ssid=b"x") + b"\xde\xad\xbe\xef"
    assert parse_frame(radiotap(flags=0x10) + frame, 1.0).ssid_present
    with pytest.raises(FrameSkipped, match="bad_fcs"):
        parse_frame(radiotap(flags=0x10 | 0x40) + frame, 1.0)


def test_channel_falls_back_to_the_ds_parameter_set() -> None:
    parsed = parse_frame(radiotap(freq=None) + probe(extra_ies=b"\x03\x01\x0b"), 1.0)
    assert (parsed.freq_mhz, parsed.channel) == (None, 11)


@pytest.mark.parametrize(("frame", "reason"), [
    (radiotap() + probe(subtype_fc=0x80), "not_probe_request"),  # a beacon
    (radiotap(signal=None) + probe(), "no_signal"),
    (radiotap() + probe(src=bytes.fromhex("ffffffffffff")), "bad_source_address"),
    (radiotap() + probe()[:20], "malformed_frame"),
    (b"\x01\x00\x08\x00\x00\x00\x00\x00" + probe(), "malformed_frame"),
    (b"", "malformed_frame"),
])
def test_unusable_frames_are_skipped_with_a_reason(frame: bytes, reason: str) -> None:
    with pytest.raises(FrameSkipped) as caught:
        parse_frame(frame, 1.0)
    assert caught.value.reason == reason


def test_randomised_bit_and_channels() -> None:
    assert is_randomised(bytes.fromhex("d6f6fba2c5ab"))
    assert not is_randomised(bytes.fromhex("68ecc5240344"))
    assert [channel_of(f) for f in (2412, 2472, 2484, 5180, 5825, 5955, 6115, 900)] == [1, 13, 14, 36, 165, 1, 33, None]


@settings(derandomize=True, max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    for frame in (data, radiotap() + data, radiotap()[:-1] + data):
        try:
            parsed = parse_frame(frame, 1.0)
        except FrameSkipped:
            continue
        assert len(parsed.mac) == 6


@settings(derandomize=True, max_examples=500)
@given(st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), min_size=1, max_size=6))
def test_corrupted_real_frames_never_crash(flips: list[tuple[int, int]]) -> None:
    frame = bytearray(radiotap(flags=0x10, tsft=True) + probe(ssid=b"net") + b"\x00\x00\x00\x00")
    for position, value in flips:
        frame[position % len(frame)] = value
    with contextlib.suppress(FrameSkipped):
        parse_frame(bytes(frame), 1.0)


def csv_rows(shared_data: Path) -> list[dict[str, str]]:
    with (shared_data / CSV_EXPORT).open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    return sorted(rows, key=lambda row: int(row["idx"]))


def test_real_capture_matches_its_csv_export(shared_data: Path) -> None:
    rows = csv_rows(shared_data)
    with (shared_data / CAPTURE).open("rb") as handle:
        parsed = [parse_frame(frame, ts) for ts, frame in read_capture(handle)]
    assert len(parsed) == len(rows) == 13238
    assert [p.rssi_dbm for p in parsed] == [float(row["rssi"]) for row in rows]
    assert [p.freq_mhz for p in parsed] == [int(row["ch_freq"]) for row in rows]
    assert [p.mac.hex(":") for p in parsed] == [row["src"] for row in rows]
    assert [p.mac_randomised for p in parsed] == [row["randomized"] == "1" for row in rows]
    assert [p.ssid_present for p in parsed] == [row["ssid"] != "" for row in rows]
    assert {p.channel for p in parsed} <= set(range(1, 14))


def play_capture(path: Path) -> tuple[WifiCaptureSource, list[Observation]]:
    source = WifiCaptureSource(path, "pi-wifi", PSEUDO)
    out: list[Record] = []
    asyncio.run(source.run(out.append, asyncio.Event()))
    observations = [record for record in out if isinstance(record, Observation)]
    assert len(observations) == len(out)
    return source, observations


def test_real_capture_as_a_source(shared_data: Path) -> None:
    rows = csv_rows(shared_data)
    source, out = play_capture(shared_data / CAPTURE)
    assert len(out) == source.stats.accepted == len(rows)
    first = out[0]
    assert isinstance(first, Observation)
    assert first.tech == "wifi"
    assert first.emitter_id == PSEUDO.pseudonym("wifi", rows[0]["src"], first.ts)
    assert rows[0]["src"].replace(":", "") not in first.emitter_id
    randomised = Counter(row["randomized"] for row in rows)
    assert source.probes.macs["randomised"] == randomised["1"]
    assert source.probes.macs["global"] == randomised["0"]
    assert source.probes.macs["directed"] == sum(1 for row in rows if row["ssid"])
    assert sum(source.stats.dropped.values()) == 0


def test_pcapng_gives_the_same_observations(shared_data: Path, tmp_path: Path) -> None:
    """The first 2,000 real frames, rewritten as pcapng by dpkt, read back alike."""
    classic, converted = tmp_path / "part.pcap", tmp_path / "part.pcapng"
    with (shared_data / CAPTURE).open("rb") as src, classic.open("wb") as a, converted.open("wb") as b:
        pcap_writer = dpkt.pcap.Writer(a, linktype=127, nano=False)
        pcapng_writer = dpkt.pcapng.Writer(b, linktype=127)
        for (ts, frame), _ in zip(dpkt.pcap.Reader(src), range(2000), strict=False):
            pcap_writer.writepkt(frame, ts=ts)
            pcapng_writer.writepkt(frame, ts=ts)
    _, from_pcap = play_capture(classic)
    _, from_pcapng = play_capture(converted)
    assert len(from_pcapng) == len(from_pcap) == 2000
    assert [(o.emitter_id, o.rssi_dbm) for o in from_pcapng] == [(o.emitter_id, o.rssi_dbm) for o in from_pcap]
    assert [o.ts for o in from_pcapng] == pytest.approx([o.ts for o in from_pcap], abs=1e-5)


def test_truncated_capture_keeps_every_whole_packet(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / CAPTURE).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2 + 7])
    source, out = play_capture(cut)
    assert 6000 < len(out) < 7000
    assert source.stats.state == "up"


def test_wrong_link_type_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ethernet.pcap"
    with path.open("wb") as handle:
        dpkt.pcap.Writer(handle, linktype=1).writepkt(b"\x00" * 60, ts=1.0)
    with path.open("rb") as handle, pytest.raises(WifiCaptureError, match=r"not 802\.11 with radiotap"):
        next(read_capture(handle))
    source, out = play_capture(path)
    assert out == []
    assert source.stats.state == "down"
    assert source.stats.last_error is not None
    assert "monitor-mode" in source.stats.last_error


def test_not_a_capture_and_missing_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello", encoding="utf-8")
    source, _ = play_capture(text)
    assert source.stats.last_error is not None
    assert "not a pcap" in source.stats.last_error
    source, _ = play_capture(tmp_path / "absent.pcap")
    assert source.stats.last_error is not None
    assert "cannot open" in source.stats.last_error


def test_capture_paced_by_an_injected_clock(shared_data: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.pcap"
    with (shared_data / CAPTURE).open("rb") as src, small.open("wb") as dst:
        writer = dpkt.pcap.Writer(dst, linktype=127)
        for index, (ts, frame) in enumerate(dpkt.pcap.Reader(src)):
            if index == 20:
                break
            writer.writepkt(frame, ts=ts)
    now = [1000.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    source = WifiCaptureSource(small, "pi-wifi", PSEUDO, speed=4.0, clock=lambda: now[0], sleep=sleep)
    emitted: list[tuple[float, float]] = []
    asyncio.run(source.run(lambda record: emitted.append((now[0], record.ts)), asyncio.Event()))
    assert len(emitted) == 20
    for wall, ts in emitted:
        assert wall - 1000.0 == pytest.approx((ts - emitted[0][1]) / 4.0, abs=1e-6)


def test_a_probe_observation_carries_its_keys_and_no_raw_mac_or_elements() -> None:
    rates = b"\x01\x04\x02\x04\x0b\x16"
    vendor = b"\xdd\x07\x00\x50\xf2\x04" + b"\x10\x4a\x00"
    random_mac, other_mac = bytes.fromhex("7a2b3c4d5e6f"), bytes.fromhex("7e1122334455")
    frame = radiotap(signal=-58) + probe(src=random_mac, extra_ies=rates + vendor)
    counter = ProbeCounter("rx-1", PSEUDO, SourceStats("wifi"))
    obs = counter.observe(frame, 100.0)
    assert obs is not None
    assert obs.probe is not None
    keys = probe_keys(ts=100.0, mac=random_mac, rssi_dbm=-58.0, channel=6, sequence=1,
                      items=[(0, b""), (1, rates[2:]), (221, vendor[2:])], pseudonymizer=PSEUDO)
    assert (obs.emitter_id, obs.probe.sequence, obs.probe.signature, obs.probe.randomised) == (
        keys.mac_key, 1, keys.signature, True)
    # Same model (elements), another random MAC: same signature, another key; another model: another signature.
    same_model = counter.observe(radiotap(signal=-70) + probe(src=other_mac, extra_ies=rates + vendor), 101.0)
    other_model = counter.observe(radiotap(signal=-70) + probe(src=other_mac, extra_ies=rates), 102.0)
    assert same_model is not None
    assert same_model.probe is not None
    assert other_model is not None
    assert other_model.probe is not None
    assert same_model.probe.signature == obs.probe.signature != other_model.probe.signature
    assert same_model.emitter_id != obs.emitter_id
    wire = obs.model_dump_json().lower()
    for raw in (random_mac.hex(), random_mac.hex(":"), random_mac.hex("-"), rates[2:].hex(), vendor[2:].hex()):
        assert raw not in wire
    assert set(json.loads(wire)["probe"]) == {"sequence", "signature", "randomised"}
