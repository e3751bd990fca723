"""The live Wi-Fi source through the kernel: a TAP device with the radiotap link type.

A TAP interface set to ``ARPHRD_IEEE80211_RADIOTAP`` (803) delivers the
frames written to it to ``AF_PACKET`` sockets exactly as a monitor-mode
adapter does, so the raw socket, the kernel probe filter and the
interface vanishing (the TAP closed) are all real. The interface carries no
address and no traffic leaves the machine.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import dpkt
import pytest

from agent.backoff import BackoffPolicy
from agent.observations import Observation
from agent.privacy import Pseudonymizer
from agent.sources.base import Record
from agent.sources.wifi import WifiMonitorSource
from tests.helpers.wait import wait_until
from tests.helpers.wifi import Tap

CAPTURE = Path("fryza-wifi-probe-requests") / "position_1_2024-02-08_anonymized.pcap"


@pytest.fixture
def real_frames(shared_data: Path) -> list[bytes]:
    with (shared_data / CAPTURE).open("rb") as handle:
        return [bytes(frame) for (_, frame), _ in zip(dpkt.pcap.Reader(handle), range(40), strict=False)]


def beacon(frame: bytes) -> bytes:
    header_len = frame[2] | frame[3] << 8
    return frame[:header_len] + b"\x80" + frame[header_len + 1:]


def test_probe_requests_from_a_monitor_interface(tap_name: str, real_frames: list[bytes]) -> None:
    pseudo = Pseudonymizer(b"m" * 32, "store", 86_400.0)
    source = WifiMonitorSource(tap_name, "pi-wifi", pseudo, retry=BackoffPolicy(base_s=0.05))
    received: list[Record] = []

    async def main() -> None:
        tap = Tap(tap_name)
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(received.append, stop))
        try:
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 10.0, 'source.stats.state == "up"')
            for frame in real_frames[:20]:
                tap.send(beacon(frame))  # the kernel filter keeps these out
                tap.send(frame)
            await asyncio.to_thread(wait_until, lambda: len(received) == 20, 10.0, 'len(received) == 20')

            tap.close()  # the adapter is pulled out
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "down", 10.0, 'source.stats.state == "down"')
            assert source.stats.last_error is not None
            assert tap_name in source.stats.last_error

            tap = Tap(tap_name)  # and plugged back in
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 10.0, 'source.stats.state == "up"')
            for frame in real_frames[20:]:
                tap.send(frame)
            await asyncio.to_thread(wait_until, lambda: len(received) == len(real_frames), 10.0, 'len(received) == len(real_frames)')
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
            tap.close()

    asyncio.run(main())
    assert all(isinstance(r, Observation) and r.tech == "wifi" for r in received)
    assert source.probes.ignored == 0
    assert source.stats.accepted == len(real_frames)
    assert source.probes.macs["randomised"] + source.probes.macs["global"] == len(real_frames)


def run_briefly(source: WifiMonitorSource) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(lambda record: None, stop))
        await asyncio.to_thread(wait_until, lambda: source.stats.last_error is not None, 10.0, 'source.stats.last_error is not None')
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())


def test_an_interface_not_in_monitor_mode_is_named(tap_name: str) -> None:
    tap = Tap(tap_name, link_type=None)
    try:
        source = WifiMonitorSource(tap_name, "pi-wifi", Pseudonymizer(b"m" * 32, "s", 60.0))
        run_briefly(source)
    finally:
        tap.close()
    assert source.stats.state == "down"
    assert source.stats.last_error == (
        f"interface {tap_name} is not in monitor mode (link type 1); run: iw dev {tap_name} set type monitor")


def test_a_missing_interface_is_named(tap_name: str) -> None:
    source = WifiMonitorSource(tap_name + "x", "pi-wifi", Pseudonymizer(b"m" * 32, "s", 60.0))
    run_briefly(source)
    assert source.stats.last_error == f"no interface {tap_name}x"
