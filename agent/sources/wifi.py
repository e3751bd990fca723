"""Wi-Fi probe requests: a monitor-mode interface live, or a pcap/pcapng file for replay.

Phones looking for networks send probe requests; a radio in monitor mode
hears them with a radiotap header carrying the signal (dBm) and channel.
Parsing is dpkt's (radiotap fields with their alignment rules, the 802.11
management header; pcap and pcapng files), so this module only decides what
a frame means to us.

Most phones randomise their MAC while probing (the locally administered
bit, ``0x02`` of the first octet): such an address still follows one phone
for a while, so it is pseudonymised like any other, and the share of
randomised versus global addresses is counted for the operator.

The raw MAC and elements live only in the ``ProbeRequest`` record inside
this module's callers' reach; what leaves is ``Observation(tech="wifi")``
with ``emitter_id = pseudonym("wifi", mac)`` and, in ``probe``, the keys that
link one phone's bursts across MAC changes (`agent.probe_keys`: sequence
number, keyed element signature, randomised bit), which the occupancy count
needs and which name no device beyond a salt period.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import dpkt

from agent.backoff import RADIO_RETRY, BackoffPolicy
from agent.errors import SantiError
from agent.observations import Observation, ProbeFields, rssi_problem
from agent.privacy import Pseudonymizer
from agent.probe_keys import elements as all_elements
from agent.probe_keys import probe_keys
from agent.sources.base import Sink, SourceStats

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

LINKTYPE_IEEE802_11_RADIOTAP = 127
ARPHRD_IEEE80211_RADIOTAP = 803
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
PROBE_REQUEST_FC = 0x40  # frame control octet 0: type management (0), subtype probe request (4)
RADIOTAP_FCS = 0x10
RADIOTAP_BAD_FCS = 0x40
MGMT_HEADER_LEN = 24
HT_CONTROL_LEN = 4
ORDER_BIT = 0x80
IE_SSID = 0
IE_DS_PARAMETER = 3
READ_BURST = 256


class FrameSkipped(SantiError):
    """A frame that is not a usable probe request; ``reason`` keys the counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WifiCaptureError(SantiError):
    """A capture file or interface we cannot use, worded for the operator."""


@dataclass(frozen=True)
class ProbeRequest:
    """One probe request as heard; ``mac`` is raw and must not leave the adapter."""

    ts: float
    mac: bytes
    rssi_dbm: float
    freq_mhz: int | None
    channel: int | None
    mac_randomised: bool
    ssid_present: bool
    """A directed probe (names a network) rather than a wildcard one."""
    sequence: int
    """The 802.11 sequence number (0..4095) of the frame."""
    items: tuple[tuple[int, bytes], ...]
    """Every information element in order, raw: keyed by `agent.probe_keys`, never passed on."""


def channel_of(freq_mhz: int) -> int | None:
    """IEEE channel number of a centre frequency (2.4, 5 and 6 GHz bands)."""
    if freq_mhz == 2484:
        return 14
    if 2412 <= freq_mhz <= 2472:
        return (freq_mhz - 2407) // 5
    if 5955 <= freq_mhz <= 7115:
        return (freq_mhz - 5950) // 5
    if 5000 <= freq_mhz <= 5900:
        return (freq_mhz - 5000) // 5
    return None


def is_randomised(mac: bytes) -> bool:
    """Locally administered address: set by software, not burnt in by the maker."""
    return bool(mac[0] & 0x02)


def parse_frame(frame: bytes, ts: float) -> ProbeRequest:
    """A radiotap + 802.11 frame as a probe request, or ``FrameSkipped`` with the reason."""
    if len(frame) < 8 or frame[0] != 0:
        raise FrameSkipped("malformed_frame")
    header_len = frame[2] | frame[3] << 8
    if header_len < 8 or header_len + 24 > len(frame):
        raise FrameSkipped("malformed_frame")
    if frame[header_len] != PROBE_REQUEST_FC:
        raise FrameSkipped("not_probe_request")
    try:
        radiotap = dpkt.radiotap.Radiotap(frame)
    except (dpkt.Error, struct.error, ValueError, IndexError):
        raise FrameSkipped("malformed_frame") from None
    if radiotap.flags_present and radiotap.flags.val & RADIOTAP_BAD_FCS:
        raise FrameSkipped("bad_fcs")
    if not radiotap.ant_sig_present:
        raise FrameSkipped("no_signal")
    dot11 = radiotap.data
    mgmt = getattr(dot11, "mgmt", None)
    if not isinstance(dot11, dpkt.ieee80211.IEEE80211) or mgmt is None:
        raise FrameSkipped("malformed_frame")
    mac = bytes(mgmt.src)
    if len(mac) != 6 or mac[0] & 0x01:
        raise FrameSkipped("bad_source_address")
    freq = int(radiotap.channel.freq) if radiotap.channel_present else None
    has_fcs = radiotap.flags_present and radiotap.flags.val & RADIOTAP_FCS
    body_start = header_len + MGMT_HEADER_LEN + (HT_CONTROL_LEN if frame[header_len + 1] & ORDER_BIT else 0)
    body = frame[body_start: len(frame) - 4 if has_fcs else len(frame)]
    elements = dict(_elements(body))
    ds = elements.get(IE_DS_PARAMETER)
    channel = channel_of(freq) if freq is not None else (ds[0] if ds is not None and len(ds) == 1 else None)
    return ProbeRequest(ts=ts, mac=mac, rssi_dbm=float(radiotap.ant_sig.db), freq_mhz=freq, channel=channel,
                        mac_randomised=is_randomised(mac), ssid_present=bool(elements.get(IE_SSID)),
                        sequence=(frame[header_len + 22] | frame[header_len + 23] << 8) >> 4,
                        items=tuple(all_elements(body)))


def _elements(body: bytes) -> Iterator[tuple[int, bytes]]:
    """Information elements of a management frame body; stops at a truncated one.

    Walked here rather than by dpkt, which skips a short element at the end.
    Only the first element of each id is yielded.
    """
    offset = 0
    seen: set[int] = set()
    while offset + 2 <= len(body):
        element, length = body[offset], body[offset + 1]
        if offset + 2 + length > len(body):
            return
        if element not in seen:
            seen.add(element)
            yield element, body[offset + 2: offset + 2 + length]
        offset += 2 + length


def read_capture(handle: BinaryIO) -> Iterator[tuple[float, bytes]]:
    """``(ts, frame)`` from a pcap or pcapng file of radiotap frames.

    Raises ``WifiCaptureError`` for a file that is not a capture or was not taken
    with radiotap headers. A capture cut short (power lost while writing) ends
    the iteration at the last whole packet.
    """
    try:
        reader = dpkt.pcap.UniversalReader(handle)
    except (ValueError, dpkt.Error, struct.error) as exc:
        raise WifiCaptureError(f"not a pcap or pcapng capture ({exc})") from None
    link = reader.datalink()
    if link != LINKTYPE_IEEE802_11_RADIOTAP:
        raise WifiCaptureError(
            f"link type {link} is not 802.11 with radiotap ({LINKTYPE_IEEE802_11_RADIOTAP}); "
            "capture on a monitor-mode interface")
    packets = iter(reader)
    while True:
        try:
            ts, frame = next(packets)
        except StopIteration:
            return
        except (dpkt.Error, struct.error, ValueError) as exc:
            log.warning("capture ends in a damaged packet; stopping there", extra={"error": str(exc)})
            return
        yield float(ts), bytes(frame)


class ProbeCounter:
    """Turns frames into observations for one receiver and keeps the counts."""

    def __init__(self, receiver_id: str, pseudonymizer: Pseudonymizer, stats: SourceStats) -> None:
        self.receiver_id = receiver_id
        self._pseudonymizer = pseudonymizer
        self.stats = stats
        self.macs: Counter[str] = Counter()
        """``randomised`` / ``global`` probe requests, and ``directed`` (SSID named)."""
        self.ignored = 0
        """Frames that were not probe requests (beacons, data...): expected, not drops."""

    def probe(self, frame: bytes, ts: float) -> ProbeRequest | None:
        """The probe request in a frame, or None: other frames are ignored, broken ones dropped and counted."""
        try:
            return parse_frame(frame, ts)
        except FrameSkipped as skipped:
            if skipped.reason == "not_probe_request":
                self.ignored += 1
            else:
                self.stats.drop(skipped.reason)
            return None

    def observe(self, frame: bytes, ts: float) -> Observation | None:
        probe = self.probe(frame, ts)
        if probe is None:
            return None
        self.macs["randomised" if probe.mac_randomised else "global"] += 1
        if probe.ssid_present:
            self.macs["directed"] += 1
        problem = rssi_problem(probe.rssi_dbm)
        if problem is not None:
            self.stats.drop(problem)
            return None
        self.stats.accepted += 1
        keys = probe_keys(ts=ts, mac=probe.mac, rssi_dbm=probe.rssi_dbm, channel=probe.channel,
                          sequence=probe.sequence, items=probe.items, pseudonymizer=self._pseudonymizer)
        return Observation(ts=ts, receiver_id=self.receiver_id, emitter_id=keys.mac_key, tech="wifi",
                           rssi_dbm=probe.rssi_dbm,
                           probe=ProbeFields(sequence=keys.sequence, signature=keys.signature,
                                             randomised=keys.randomised))


class WifiCaptureSource:
    """A pcap/pcapng capture played as a source, in capture time.

    ``speed=0`` plays as fast as possible; otherwise frames are paced by their
    capture timestamps divided by ``speed``, with the injected clock and sleep.
    Observations keep the capture's timestamps.
    """

    def __init__(self, path: Path, receiver_id: str, pseudonymizer: Pseudonymizer, *,
                 speed: float = 0.0, clock: Clock = time.time, sleep: Sleep = asyncio.sleep,
                 name: str = "wifi-capture") -> None:
        if not speed >= 0.0:
            raise ValueError("capture speed must be 0 (as fast as possible) or positive")
        self._path = path
        self._speed = speed
        self._clock = clock
        self._sleep = sleep
        self.stats = SourceStats(name)
        self.probes = ProbeCounter(receiver_id, pseudonymizer, self.stats)

    async def run(self, sink: Sink, stop: asyncio.Event) -> None:
        try:
            handle = self._path.open("rb")
        except OSError as exc:
            self.stats.fail(f"cannot open capture {self._path}: {exc.strerror}")
            return
        with handle:
            try:
                frames = read_capture(handle)
                first = next(frames, None)
            except WifiCaptureError as exc:
                self.stats.fail(f"{self._path}: {exc}")
                return
            if first is None:
                return
            self.stats.up()
            start_wall, first_ts = self._clock(), first[0]
            for count, (ts, frame) in enumerate(_chain(first, frames), start=1):
                if stop.is_set():
                    return
                if self._speed > 0.0:
                    while (wait := start_wall + (ts - first_ts) / self._speed - self._clock()) > 0.0:
                        if stop.is_set():
                            return
                        await self._sleep(min(wait, 0.5))
                elif count % READ_BURST == 0:
                    await self._sleep(0.0)
                observation = self.probes.observe(frame, ts)
                if observation is not None:
                    sink(observation)


def _chain(first: tuple[float, bytes], rest: Iterator[tuple[float, bytes]]) -> Iterator[tuple[float, bytes]]:
    yield first
    yield from rest


def _probe_filter() -> bytes:
    """Classic BPF: pass only probe requests (frame control 0x40 after the radiotap header)."""
    program = [
        (0x30, 0, 0, 3),      # ldb [3]        radiotap length, high octet
        (0x64, 0, 0, 8),      # lsh #8
        (0x07, 0, 0, 0),      # tax
        (0x30, 0, 0, 2),      # ldb [2]        low octet
        (0x4C, 0, 0, 0),      # or x
        (0x07, 0, 0, 0),      # tax            x = radiotap length
        (0x50, 0, 0, 0),      # ldb [x + 0]    frame control, octet 0
        (0x15, 0, 1, PROBE_REQUEST_FC),  # jeq #0x40
        (0x06, 0, 0, 0xFFFF),  # ret #65535
        (0x06, 0, 0, 0),      # ret #0
    ]
    return b"".join(struct.pack("HBBI", *instruction) for instruction in program)


class WifiMonitorSource:
    """Probe requests from a monitor-mode interface through a raw ``AF_PACKET`` socket.

    The interface must already be in monitor mode (``iw dev wlan1 set type
    monitor``); the source checks the link type and says so otherwise. A
    kernel filter passes only probe requests. If the interface vanishes (USB
    adapter pulled) the source goes down and reopens with backoff.
    """

    def __init__(self, interface: str, receiver_id: str, pseudonymizer: Pseudonymizer, *,
                 clock: Clock = time.time, name: str = "wifi", retry: BackoffPolicy = RADIO_RETRY) -> None:
        self._interface = interface
        self._clock = clock
        self._retry = retry
        self.stats = SourceStats(name)
        self.probes = ProbeCounter(receiver_id, pseudonymizer, self.stats)

    def _open(self) -> socket.socket:
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise WifiCaptureError("raw sockets need root or CAP_NET_RAW (systemd: AmbientCapabilities=CAP_NET_RAW)") from None
        try:
            sock.bind((self._interface, ETH_P_ALL))
            hatype = sock.getsockname()[3]
            if hatype != ARPHRD_IEEE80211_RADIOTAP:
                raise WifiCaptureError(
                    f"interface {self._interface} is not in monitor mode (link type {hatype}); "
                    f"run: iw dev {self._interface} set type monitor")
            program = _probe_filter()
            buffer = ctypes.create_string_buffer(program)
            fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buffer))
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.ENODEV, errno.ENXIO):
                raise WifiCaptureError(f"no interface {self._interface}") from None
            raise WifiCaptureError(f"interface {self._interface}: {exc.strerror}") from None
        except WifiCaptureError:
            sock.close()
            raise
        return sock

    async def run(self, sink: Sink, stop: asyncio.Event) -> None:
        attempt = 0
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                try:
                    sock = self._open()
                except WifiCaptureError as exc:
                    self.stats.fail(str(exc))
                    await asyncio.wait({stopping}, timeout=self._retry.wait_s(attempt))
                    attempt += 1
                    continue
                attempt = 0
                self.stats.up()
                try:
                    error = await self._read(sock, sink, stopping)
                finally:
                    sock.close()
                if error is not None:
                    self.stats.fail(f"interface {self._interface}: {error.strerror or error}")
        finally:
            stopping.cancel()

    async def _read(self, sock: socket.socket, sink: Sink, stopping: asyncio.Future[Any]) -> OSError | None:
        """Read until stop or a socket error; the error is returned for the caller to report."""
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[OSError] = loop.create_future()

        def readable() -> None:
            for _ in range(READ_BURST):
                try:
                    frame = sock.recv(65535)
                except BlockingIOError:
                    return
                except OSError as exc:
                    loop.remove_reader(sock.fileno())
                    if not failed.done():
                        failed.set_result(exc)
                    return
                observation = self.probes.observe(frame, self._clock())
                if observation is not None:
                    sink(observation)

        loop.add_reader(sock.fileno(), readable)
        try:
            await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(sock.fileno())
        return failed.result() if failed.done() else None
