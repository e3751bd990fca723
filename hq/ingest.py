"""From an MQTT message to a row HQ stores, or a reason it does not.

Pure functions: validation against the one event schema, the topic check,
the tombstone digests and the seq gap arithmetic. The subscriber and the
store call these; tests call them directly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from agent.events import CardTapped, Event, IdentityLinked, parse_event, topic_for

MAX_DEAD_LETTER_CHARS = 65_536


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

    def digests(self) -> list[str]:
        """Tombstone digests that, if erased, make this event about an erased person."""
        event = self.event
        found = []
        if event.type != "agent.status":
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
    """A payload HQ cannot use; it goes to the dead-letter table with the reason."""

    topic: str
    payload: str
    size: int
    reason: str


def decode(topic: str, payload: bytes) -> Accepted | Rejected:
    """Validate one message: the schema, a stored seq, and a topic that matches the event."""
    text = payload.decode("utf-8", errors="backslashreplace")
    try:
        event = parse_event(payload)
    except ValidationError as exc:
        return Rejected(topic, text[:MAX_DEAD_LETTER_CHARS], len(payload), _reason(exc))
    if event.seq < 1:
        return Rejected(topic, text[:MAX_DEAD_LETTER_CHARS], len(payload),
                        "seq 0: the event never went through an agent's outbox")
    expected = topic_for(event)
    if topic != expected:
        return Rejected(topic, text[:MAX_DEAD_LETTER_CHARS], len(payload),
                        f"topic does not match the event (expected {expected})")
    return Accepted.of(event, text)


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
