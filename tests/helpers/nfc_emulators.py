"""NFC cards for tests: real emulator processes on nfcpy's ``udp:`` transport.

* ``type3``: a FeliCa (Type 3) tag emulated by nfcpy itself
  (``clf.connect(card=...)`` with a ``LocalTarget('212F')``), serving the
  NDEF read service from the given message.
* ``type2``: an NXP NTAG213 (Type 2, the chip in most loyalty cards). nfcpy
  does not emulate Type 2, so this speaks the udp transport directly: the
  Type A selection (SENS/SDD/SEL with a 7-byte UID), READ (0x30),
  GET_VERSION (0x60), and silence for everything else, as a real tag does.
  ``--missed-reads N`` leaves the first N READs of each tap unanswered (a
  card at the edge of the field, or a reader too busy to wait for it): the
  reader's first NDEF read fails and only a second one gets the message.

Each process presents its card ``--taps`` times, ``--hold`` seconds each
(counted from activation), with ``--gap`` seconds of absence between, and
prints one JSON line per event (``listening``, ``activated``, ``removed``,
``done``) with ``time.time()`` stamps so a test can measure latency.
Run as ``python -m tests.helpers.nfc_emulators type2 --port ... --uid ... --ndef ...``.
``EmulatedCard`` starts one with a parent-death signal and stops it in
teardown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from binascii import hexlify, unhexlify
from functools import reduce
from pathlib import Path
from types import TracebackType
from typing import Any

import nfc

from agent.localbroker import die_with_parent

ROOT = Path(__file__).resolve().parents[2]

NTAG213_VERSION = bytes.fromhex("0004040201000f03")
NTAG213_PAGES = 45


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def ntag213_memory(uid: bytes, ndef_message: bytes) -> bytearray:
    """Pages 0-44 of an NTAG213 holding ``ndef_message`` in an NDEF TLV."""
    assert len(uid) == 7
    memory = bytearray(NTAG213_PAGES * 4)
    memory[0:3] = uid[0:3]
    memory[3] = 0x88 ^ uid[0] ^ uid[1] ^ uid[2]
    memory[4:8] = uid[3:7]
    memory[8] = uid[3] ^ uid[4] ^ uid[5] ^ uid[6]
    memory[9] = 0x48
    memory[12:16] = b"\xe1\x10\x12\x00"  # capability container: NDEF 1.0, 144 bytes, read/write
    if len(ndef_message) < 0xFF:
        tlv = b"\x03" + bytes([len(ndef_message)]) + ndef_message + b"\xfe"
    else:
        tlv = b"\x03\xff" + len(ndef_message).to_bytes(2, "big") + ndef_message + b"\xfe"
    assert len(tlv) <= 144, "NDEF message too long for an NTAG213"
    memory[16:16 + len(tlv)] = tlv
    memory[40 * 4:45 * 4] = bytes.fromhex("000000bd" "040000ff" "00050000" "00000000" "00000000")
    return memory


class Type2Card:
    """An NTAG213 on the udp transport: Type A states (idle, ready, active) and its commands.

    As a real tag, it answers READ and GET_VERSION only once selected, and
    falls silent and idle on any command it does not support; a reader must
    then select it again (nfcpy does exactly that after probing for
    AUTHENTICATE).
    """

    def __init__(self, uid: bytes, ndef_message: bytes, missed_reads: int = 0) -> None:
        self.uid = uid
        self.missed_reads = missed_reads
        self.misses_left = missed_reads
        self.memory = ntag213_memory(uid, ndef_message)
        cl1 = b"\x88" + uid[0:3]
        cl2 = uid[3:7]
        self.sdd1 = cl1 + bytes([reduce(lambda a, b: a ^ b, cl1)])
        self.sdd2 = cl2 + bytes([reduce(lambda a, b: a ^ b, cl2)])
        self.state = "idle"

    def power_off(self) -> None:
        self.state = "idle"

    def answer(self, command: bytes) -> bytes | None:
        if command in (b"\x26", b"\x52"):
            self.state = "ready"
            return b"\x44\x00"  # SENS_RES of an NTAG21x
        if self.state == "ready":
            if command == b"\x93\x20":
                return self.sdd1
            if command == b"\x93\x70" + self.sdd1:
                return b"\x04"  # SEL_RES: UID not complete
            if command == b"\x95\x20":
                return self.sdd2
            if command == b"\x95\x70" + self.sdd2:
                self.state = "active"
                return b"\x00"  # SEL_RES: Type 2 tag
        elif self.state == "active":
            if len(command) == 2 and command[0] == 0x30:
                if self.misses_left > 0:  # not heard: no answer, still selected
                    self.misses_left -= 1
                    return None
                return self.read(command[1])
            if command == b"\x60":
                return NTAG213_VERSION
        self.state = "idle"  # a real tag goes mute on what it does not know
        return None

    def read(self, page: int) -> bytes:
        if page >= NTAG213_PAGES:
            self.state = "idle"
            return b"\x00"  # NAK
        data = bytearray()
        for offset in range(4):
            index = (page + offset) % NTAG213_PAGES
            data += self.memory[index * 4:index * 4 + 4]
        return bytes(data)


def run_type2(port: int, uid: bytes, ndef_message: bytes, taps: int, hold: float, gap: float,
              missed_reads: int = 0) -> None:
    card = Type2Card(uid, ndef_message, missed_reads)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    for tap in range(taps):
        emit("listening", tap=tap)
        card.misses_left = card.missed_reads
        activated: float | None = None
        while activated is None or time.time() < activated + hold:
            sock.settimeout(0.05 if activated is not None else None)
            try:
                data, peer = sock.recvfrom(1024)
            except TimeoutError:
                continue
            if data.startswith(b"RFOFF"):
                card.power_off()
                continue
            brty, _, payload = data.partition(b" ")
            if brty != b"106A":
                continue
            response = card.answer(unhexlify(payload))
            if response is not None:
                if activated is None and response == b"\x44\x00":
                    activated = time.time()
                    emit("activated", tap=tap)
                sock.sendto(b"106A " + hexlify(response), peer)
        card.power_off()
        emit("removed", tap=tap)
        sock.settimeout(0.05)
        absent_until = time.time() + gap
        while time.time() < absent_until:  # out of the field: hear nothing, say nothing
            with contextlib.suppress(TimeoutError):
                sock.recvfrom(1024)
    emit("done")


def run_type3(port: int, idm: bytes, ndef_message: bytes, taps: int, hold: float, gap: float) -> None:
    assert len(idm) == 8, "an IDm is 8 bytes"
    assert idm[:2] != b"\x01\xfe", "an IDm starting 01FE announces NFC-DEP, not a tag"
    blocks = max(1, (len(ndef_message) + 15) // 16)
    attribute = bytearray(16)
    attribute[0:5] = bytes([0x10, 4, 1]) + blocks.to_bytes(2, "big")
    attribute[10] = 0x00  # read only
    attribute[11:14] = len(ndef_message).to_bytes(3, "big")
    attribute[14:16] = sum(attribute[0:14]).to_bytes(2, "big")
    data = attribute + ndef_message + bytes(blocks * 16 - len(ndef_message))

    def read(block: int, rb: bool, re: bool) -> bytes | None:
        if block * 16 >= len(data):
            return None
        return bytes(data[block * 16:block * 16 + 16])

    clf = nfc.ContactlessFrontend(f"udp:127.0.0.1:{port}")
    try:
        for tap in range(taps):
            state: dict[str, float] = {}

            def on_startup(target: Any, tap: int = tap) -> Any:
                target.brty = "212F"
                target.sensf_res = b"\x01" + idm + bytes.fromhex("03014b024f4993ff") + b"\x12\xfc"
                emit("listening", tap=tap)
                return target

            def on_connect(tag: Any, tap: int = tap, state: dict[str, float] = state) -> bool:
                state["activated"] = time.time()
                emit("activated", tap=tap)
                tag.add_service(0x0009, read, None)
                tag.add_service(0x000B, read, None)
                return True

            def terminate(state: dict[str, float] = state) -> bool:
                started = state.get("activated")
                return started is not None and time.time() > started + hold

            clf.connect(card={"on-startup": on_startup, "on-connect": on_connect, "timeout": 0.5},
                        terminate=terminate)
            clf.device.mute()  # out of the field
            emit("removed", tap=tap)
            time.sleep(gap)
    finally:
        clf.close()
    emit("done")


class EmulatedCard:
    """An emulator process, its events, and its end at teardown."""

    def __init__(self, kind: str, port: int, card_id: bytes, ndef_message: bytes, *,
                 taps: int = 1, hold: float = 0.6, gap: float = 0.8, missed_reads: int = 0) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.log: list[dict[str, Any]] = []
        id_flag = "--uid" if kind == "type2" else "--idm"
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.nfc_emulators", kind, "--port", str(port),
             id_flag, card_id.hex(), "--ndef", ndef_message.hex(),
             "--taps", str(taps), "--hold", str(hold), "--gap", str(gap),
             *(["--missed-reads", str(missed_reads)] if missed_reads else [])],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,  # noqa: PLW1509
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            event = json.loads(line)
            self.log.append(event)
            self.events.put(event)

    def wait_for(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"emulator never reported {name!r}; stderr: {self.stderr()}")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if event["event"] == name:
                return event

    def stderr(self) -> str:
        if self._proc.poll() is None or self._proc.stderr is None:
            return "(running)"
        return self._proc.stderr.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> EmulatedCard:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="NFC card emulators for Santi's tests")
    parser.add_argument("kind", choices=["type2", "type3"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uid", help="7-byte UID, hex (type2)")
    parser.add_argument("--idm", help="8-byte IDm, hex (type3)")
    parser.add_argument("--ndef", default="", help="NDEF message, hex")
    parser.add_argument("--taps", type=int, default=1)
    parser.add_argument("--hold", type=float, default=0.6)
    parser.add_argument("--gap", type=float, default=0.8)
    parser.add_argument("--missed-reads", type=int, default=0, help="READs left unanswered each tap (type2)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    message = bytes.fromhex(args.ndef)
    if args.kind == "type2":
        run_type2(args.port, bytes.fromhex(args.uid), message, args.taps, args.hold, args.gap, args.missed_reads)
    else:
        run_type3(args.port, bytes.fromhex(args.idm), message, args.taps, args.hold, args.gap)


if __name__ == "__main__":
    main()
