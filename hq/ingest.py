"""From an MQTT message to a row HQ stores, or a reason it does not.

Pure functions: validation against the one event schema, the topic check,
the tombstone digests and the seq gap arithmetic. The subscriber and the
store call these; tests call them directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agent.events import (
    AGGREGATE_TYPES,
    MAX_INT,
    CardTapped,
    Event,
    IdentityLinked,
    parse_event,
    topic_for,
)

log = logging.getLogger(__name__)

MAX_DEAD_LETTER_CHARS = 65_536
MAX_EVENT_BYTES = 262_144
"""Larger than any event the schema's bounds allow (~60 KB), far smaller than a flood."""

LEGACY_EPOCH = ""
"""The epoch of events from agents older than the field: one epoch per agent."""

_TOPIC = re.compile(r"^santi/v1/([^/]+)/([^/]+)/events/")
_EPOCH = re.compile(r"[A-Za-z0-9_-]+")
"""An epoch as the event schema allows it; another is no agent's, so its seq finishes nothing."""
_UNPRINTABLE = re.compile("[\x00\ud800-\udfff]")

Origin = tuple[str, str, str, int]
"""(store_id, agent_id, epoch, seq) of an event: where its seq counts."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid event, with the columns the store indexes."""

    event: Event
    payload: str
    event_id: str
    visit_id: str | None
    loyalty_id: str | None
    """The loyalty id the event names: a link's, or a known card's."""

    @classmethod
    def of(cls, event: Event, payload: str) -> Accepted:
        loyalty_id = None
        if isinstance(event, IdentityLinked):
            loyalty_id = event.loyalty_id
        elif isinstance(event, CardTapped) and event.known:
            loyalty_id = event.card
        return cls(event, payload, str(event.event_id), getattr(event, "visit_id", None), loyalty_id)

    @property
    def epoch(self) -> str:
        return self.event.epoch or LEGACY_EPOCH

    @property
    def origin(self) -> Origin:
        return (self.event.store_id, self.event.agent_id, self.epoch, self.event.seq)

    def rejected(self, topic: str, reason: str) -> Rejected:
        """This event as a dead letter (it cannot be stored, or conflicts with a stored one)."""
        seq = self.event.seq
        return Rejected(topic, _printable(self.payload[:MAX_DEAD_LETTER_CHARS]),
                        len(self.payload.encode("utf-8", "replace")), reason,
                        self.origin if 1 <= seq <= MAX_INT else None)

    def digests(self) -> list[str]:
        """Tombstone digests that, if erased, make this event about an erased person."""
        event = self.event
        found = []
        if event.type not in AGGREGATE_TYPES:
            found.append(subject_digest(event.subject))
        if self.visit_id is not None:
            found.append(visit_digest(event.store_id, event.agent_id, self.visit_id))
        if isinstance(event, IdentityLinked):
            found.append(loyalty_digest(event.loyalty_id))
        if isinstance(event, CardTapped):
            found.append(loyalty_digest(event.card))
        return found


@dataclass(frozen=True, slots=True)
class Rejected:
    """A payload HQ cannot use; it goes to the dead-letter table with the reason.

    ``origin`` is the agent, epoch and seq the payload names, when it names
    them plausibly (the topic agrees): that seq is finished, so one poison
    event does not hold back the acknowledgement of everything after it.
    """

    topic: str
    payload: str
    size: int
    reason: str
    origin: Origin | None = None


def decode(topic: str, payload: bytes) -> Accepted | Rejected:
    """Validate one message: the schema, a stored seq, and a topic that matches the event.

    Never raises: whatever a hostile payload makes the parser raise is a reason.
    """
    try:
        return _decode(topic, payload)
    except Exception as exc:  # noqa: BLE001 - a payload must never stop the writer
        log.warning("payload not decodable", extra={"topic": _printable(topic[:200]), "error": type(exc).__name__})
        return _rejected(topic, payload, f"undecodable payload: {type(exc).__name__}")


def _decode(topic: str, payload: bytes) -> Accepted | Rejected:
    if len(payload) > MAX_EVENT_BYTES:
        return _rejected(topic, payload, f"payload of {len(payload)} bytes (at most {MAX_EVENT_BYTES})")
    try:
        event = parse_event(payload)
    except ValidationError as exc:
        return _rejected(topic, payload, _reason(exc))
    text = payload.decode("utf-8", errors="backslashreplace")
    if event.seq < 1:
        return _rejected(topic, payload, "seq 0: the event never went through an agent's outbox")
    expected = topic_for(event)
    if topic != expected:
        return _rejected(topic, payload, f"topic does not match the event (expected {expected})")
    return Accepted.of(event, text)


def _rejected(topic: str, payload: bytes, reason: str) -> Rejected:
    text = payload[:MAX_DEAD_LETTER_CHARS * 4].decode("utf-8", errors="backslashreplace")
    # The reason may quote the payload (a dict key in a validation error's location): printable too.
    return Rejected(_printable(topic), _printable(text[:MAX_DEAD_LETTER_CHARS]), len(payload), _printable(reason),
                    _origin(topic, payload))


def _printable(text: str) -> str:
    """Text every database stores: no NUL (PostgreSQL refuses it), no lone surrogate."""
    return _UNPRINTABLE.sub("\ufffd", text)


def _origin(topic: str, payload: bytes) -> Origin | None:
    """The (store, agent, epoch, seq) a rejected payload names, if the topic agrees with it."""
    match = _TOPIC.match(topic)
    if match is None or len(payload) > MAX_EVENT_BYTES:
        return None
    try:
        data: Any = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    store_id, agent_id, seq = data.get("store_id"), data.get("agent_id"), data.get("seq")
    epoch = data.get("epoch") or LEGACY_EPOCH
    if ((store_id, agent_id) != match.groups() or not isinstance(epoch, str) or len(epoch) > 64
            or (epoch and _EPOCH.fullmatch(epoch) is None) or type(seq) is not int or not 1 <= seq <= MAX_INT):
        return None
    return (match[1], match[2], epoch, seq)


def _reason(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid event: {where}: {first['msg']}{more}"[:500]


def _digest(kind: str, *parts: str) -> str:
    return hashlib.sha256("\x1f".join((kind, *parts)).encode("utf-8")).hexdigest()


def loyalty_digest(loyalty_id: str) -> str:
    """SHA-256 of a loyalty id: a tombstone that does not itself hold the id."""
    return _digest("loyalty", loyalty_id)


def visit_digest(store_id: str, agent_id: str, visit_id: str) -> str:
    return _digest("visit", store_id, agent_id, visit_id)


def subject_digest(subject: str) -> str:
    return _digest("subject", subject)


def gap_ranges(after: int, first: int | None, edges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive missing seq ranges above ``after`` (the part known complete).

    ``first`` is the smallest seq received above ``after``; ``edges`` are the
    pairs (seq, next received seq) where next > seq + 1, as a window query
    over the received seqs returns them.
    """
    ranges = []
    if first is not None and first > after + 1:
        ranges.append((after + 1, first - 1))
    ranges.extend((seq + 1, nxt - 1) for seq, nxt in sorted(edges) if nxt > seq + 1)
    return ranges
