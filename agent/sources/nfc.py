"""NFC loyalty cards at a till: nfcpy's reader loop on a thread, taps into asyncio.

The reader thread polls with ``clf.connect(rdwr=...)``. When a card comes
into the field it reads the NDEF message once, turns it into a ``CardTap``
(the loyalty id if the card is ours, see ``ndef_loyalty``; otherwise the
pseudonymised UID with ``known=False``), then waits until the card leaves:
one tap per presence. A card that flickers out and back within
``debounce_s`` (a hand hovering at the edge of the field) is not a new tap.
After each card the reader is muted (RF off), so the next presentation
starts from a clean selection.

A reader that cannot be opened (unplugged, busy, no driver) puts the source
``down`` with one line saying why, and is retried with backoff; when it
comes back the source is ``up`` again. A card whose NDEF message is broken
is counted and logged, and still tapped by its UID.

Every presented card also becomes a ``CardRead`` (what it held, its UID
masked, what the source made of it) for an optional ``on_read`` callback:
``santi nfc test`` shows a technician exactly what the agent would do.

Taps and reads cross into asyncio in one place, ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import nfc
import nfc.clf
import nfc.tag

from agent.backoff import RADIO_RETRY, BackoffPolicy
from agent.config import NfcReaderConfig
from agent.observations import CardTap
from agent.privacy import Pseudonymizer
from agent.sources.base import Sink, SourceStats
from agent.sources.ndef_loyalty import LoyaltyFormat, MalformedNdef, loyalty_id

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("106A", "106B", "212F")
"""Type A (Type 2 and 4 tags), Type B, FeliCa: what nfcpy polls for by default."""
NDEF_READS = 3
"""Reads of a card's NDEF message before it counts as having none: nfcpy answers a read that timed out (a card at
the edge of the field, a reader kept waiting) as it answers a card without NDEF, and our own card taken for not
ours loses the visit its loyalty id."""
DEBOUNCE_S = 2.0
"""The same card back within this long after it left is a hand hovering at the edge, not a new tap."""

_TAG_ERRORS: tuple[type[BaseException], ...] = (
    nfc.tag.TagCommandError, nfc.clf.CommunicationError,
    # nfcpy's tag parsers trip over some malformed memory layouts with these:
    IndexError, ValueError, TypeError, struct.error, AssertionError,
)


Problem = Literal["read_error", "malformed_ndef", "debounced"]


def uid_tail(uid: bytes) -> str:
    """The last two bytes only (``…:E5:F6``): enough to tell two cards apart on the bench, not to follow one."""
    return "…:" + uid[-2:].hex(":").upper() if uid else "?"


@dataclass(frozen=True)
class CardRead:
    """One card presentation as the source saw it, for tools that show a technician what happens.

    The raw UID stays in this module: only its last two bytes and its length
    come out. ``ndef`` is the message as read, unstable by nature (whatever
    the card holds).
    """

    ts: float
    reader_id: str
    tag_type: str
    product: str
    uid_tail: str
    uid_bytes: int
    ndef: bytes
    tap: CardTap | None
    """What the card amounts to; ``None`` when it could not be read."""
    problems: tuple[Problem, ...] = ()
    """What the source counted for this card, in order."""
    error: str | None = None
    """The one-line reason of a read error or a malformed NDEF message."""

    @property
    def delivered(self) -> bool:
        """The tap went to the locator (it was read, and was not a flicker of the previous card)."""
        return self.tap is not None and "debounced" not in self.problems


class Frontend(Protocol):
    """The part of ``nfc.ContactlessFrontend`` the reader loop uses."""

    device: Any

    def connect(self, **options: Any) -> Any: ...

    def close(self) -> None: ...


def open_nfcpy(path: str) -> Frontend:
    """Open a reader with nfcpy; raises ``OSError`` when there is none on ``path``."""
    frontend: Frontend = nfc.ContactlessFrontend(path)
    return frontend


def describe_open_error(path: str, exc: BaseException) -> str:
    """One line a technician can act on."""
    if isinstance(exc, FileNotFoundError) and "libusb" in str(exc):
        return f"reader {path}: libusb is not installed (apt-get install libusb-1.0-0)"
    if isinstance(exc, OSError):
        if exc.errno == errno.ENODEV:
            return f"no NFC reader at {path} (unplugged?)"
        if exc.errno == errno.EACCES:
            return f"reader {path}: permission denied (udev rule or plugdev group)"
        if exc.errno == errno.EBUSY:
            return f"reader {path} is busy (another program, or the pn533 kernel driver: blacklist it)"
        return f"reader {path}: {exc.strerror or exc}"
    return f"reader {path}: {exc}"


class NfcSource:
    """One NFC reader producing ``CardTap``s."""

    def __init__(
        self,
        reader: NfcReaderConfig,
        pseudonymizer: Pseudonymizer,
        *,
        loyalty: LoyaltyFormat | None = None,
        clock: Callable[[], float] = time.time,
        open_frontend: Callable[[str], Frontend] = open_nfcpy,
        targets: Sequence[str] = DEFAULT_TARGETS,
        debounce_s: float = DEBOUNCE_S,
        retry: BackoffPolicy = RADIO_RETRY,
        on_read: Callable[[CardRead], None] | None = None,
    ) -> None:
        self._reader = reader
        self._pseudonymizer = pseudonymizer
        self._loyalty = loyalty or LoyaltyFormat()
        self._clock = clock
        self._open_frontend = open_frontend
        self._targets = list(targets)
        self._debounce_s = debounce_s
        self._retry = retry
        self._on_read = on_read
        self.stats = SourceStats(f"nfc:{reader.id}")
        self.taps: Counter[str] = Counter()
        """``known`` / ``unknown`` taps handed out."""
        self.rereads = 0
        """NDEF reads that came back empty and were tried again (NDEF_READS)."""
        self.open_attempts = 0
        self._halt = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: Sink | None = None
        self._last: tuple[str, float] | None = None

    async def run(self, sink: Sink, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._sink = sink
        self._halt.clear()
        thread = threading.Thread(target=self._reader_thread, name=f"nfc-{self._reader.id}", daemon=True)
        thread.start()
        try:
            await stop.wait()
        finally:
            self._halt.set()
            await asyncio.to_thread(thread.join, 15.0)
            self.stats.state = "down"

    def _hand_over(self, read: CardRead) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver, read)

    def _deliver(self, read: CardRead) -> None:
        """The one bridge from the reader thread: runs on the event loop."""
        if read.delivered and read.tap is not None and self._sink is not None:
            self._sink(read.tap)
            self.stats.accepted += 1
        if self._on_read is not None:
            self._on_read(read)

    def _reader_thread(self) -> None:
        try:
            self._reader_loop()
        except BaseException as exc:  # noqa: BLE001 -- whatever kills the thread, say so in status
            self.stats.crash(f"reader thread died: {type(exc).__name__}: {str(exc)[:200]}")

    def _reader_loop(self) -> None:
        attempt = 0
        while not self._halt.is_set():
            self.open_attempts += 1
            try:
                frontend = self._open_frontend(self._reader.device)
            except (OSError, ValueError) as exc:
                self.stats.fail(describe_open_error(self._reader.device, exc))
                self._halt.wait(self._retry.wait_s(attempt))
                attempt += 1
                continue
            attempt = 0
            self.stats.up()
            try:
                self._serve(frontend)
            except Exception as exc:  # a driver bug must cost one reopen, not the reader
                log.exception("NFC reader loop failed; reopening", extra={"reader": self._reader.id})
                self.stats.fail(f"reader {self._reader.device}: {type(exc).__name__}: {exc}")
                self._halt.wait(self._retry.wait_s(0))
            finally:
                frontend.close()

    def _serve(self, frontend: Frontend) -> None:
        options = {
            "targets": self._targets,
            "on-connect": self._on_connect,
            "iterations": 1,
            "interval": 0.05,
            "beep-on-connect": False,
        }
        while not self._halt.is_set():
            result = frontend.connect(rdwr=options, terminate=self._halt.is_set)
            if result is False:
                self.stats.fail(f"reader {self._reader.device} stopped answering (unplugged?)")
                self._halt.wait(self._retry.wait_s(0))
                return
            if result:
                # the card left: remember when, and turn the field off so the
                # next card (or the same one again) starts a clean selection
                if self._last is not None:
                    self._last = (self._last[0], self._clock())
                mute = getattr(frontend.device, "mute", None)
                if mute is not None:
                    mute()

    def _on_connect(self, tag: Any) -> bool:
        """Called by nfcpy with the activated card; ``True`` waits for it to leave."""
        ts = self._clock()
        tag_type, product = str(getattr(tag, "type", "?")), str(getattr(tag, "product", "?"))
        try:
            uid = bytes(tag.identifier)
            record = tag.ndef
            for _ in range(NDEF_READS - 1):
                if record is not None:
                    break
                self.rereads += 1
                record = tag.ndef  # nfcpy reads again while it holds no message
            octets = bytes(record.octets) if record is not None else b""
        except _TAG_ERRORS as exc:
            self.stats.drop("read_error", reader=self._reader.id, error=str(exc)[:200])
            self._hand_over(CardRead(ts, self._reader.id, tag_type, product, "?", 0, b"", None,
                                     ("read_error",), f"{type(exc).__name__}: {exc}"[:200]))
            return True
        card: str | None = None
        problems: tuple[Problem, ...] = ()
        error: str | None = None
        if octets:
            try:
                card = loyalty_id(octets, self._loyalty)
            except MalformedNdef as exc:
                problems, error = ("malformed_ndef",), str(exc)[:200]
                self.stats.drop("malformed_ndef", reader=self._reader.id)
                log.warning("card with a malformed NDEF message; tapped by its UID",
                            extra={"reader": self._reader.id, "error": error})
        known = card is not None
        if card is None:
            card = self._pseudonymizer.pseudonym("card", uid, ts)
        tap = CardTap(ts=ts, reader_id=self._reader.id, card=card, known=known)
        if self._last is not None and self._last[0] == card and ts - self._last[1] < self._debounce_s:
            self.stats.drop("debounced", reader=self._reader.id)
            problems += ("debounced",)
        else:
            self.taps["known" if known else "unknown"] += 1
        self._last = (card, float("inf"))
        self._hand_over(CardRead(ts, self._reader.id, tag_type, product, uid_tail(uid), len(uid), octets, tap,
                                 problems, error))
        return True
