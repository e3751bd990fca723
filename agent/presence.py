"""Visits and sector dwell, from the sector model's per-window output.

Pure state in, events out: the service passes the window's time and what
the sector model reported for each located emitter, and gets back the
events of the design (``visit.started``, ``sector.entered``,
``sector.exited``, ``visit.ended``). No clock is read here; event ids come
from an injected factory so tests are exact.

Times given here are steady (monotonic) store time, so durations and dwell
are differences of a clock that never jumps; ``wall_offset`` (wall minus
steady, set by the service each window) only dates the events. A wall
clock set from 1970 to now during a visit moves its ``visit.ended``
timestamp, never its ``duration_s``.

A visit ends after ``visit_silence_s`` without hearing the emitter (dated
when it was last heard, not when the silence was noticed), or at once when
the shopper leaves the store through an entrance sector.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, TypedDict

from agent.events import (
    Event,
    SectorEntered,
    SectorExited,
    VisitEnded,
    VisitStarted,
    utc_from_epoch,
    uuid7,
)

EndReason = Literal["silence", "exit", "shutdown"]


@dataclass(frozen=True)
class Located:
    """One emitter's sector in one window; ``sector_id`` None means outside the store."""

    emitter_id: str
    tech: Literal["ble", "wifi"]
    sector_id: str | None
    probability: float
    since: float | None = None
    """When the shopper crossed into this sector (hysteresis confirms it later); None: the window time."""


@dataclass
class Visit:
    """An open visit: one emitter inside the store."""

    visit_id: str
    subject: str
    tech: Literal["ble", "wifi"]
    started: float
    last_seen: float
    sector_id: str | None = None
    sector_since: float = 0.0
    dwell: dict[str, float] = field(default_factory=dict)


class Envelope(TypedDict):
    """The fields every event shares, built once per event."""

    event_id: uuid.UUID
    store_id: str
    agent_id: str
    ts: datetime
    subject: str


def visit_id_for(subject: str, started: float) -> str:
    """Deterministic visit id: the same replay gives the same ids."""
    digest = hashlib.sha256(f"{subject}|{started:.3f}".encode()).hexdigest()
    return f"v-{digest[:20]}"


def _default_ids(ts: float) -> uuid.UUID:
    return uuid7(int(ts * 1000))


class Presence:
    """Turns sector reports into visit and sector events, one window at a time."""

    def __init__(
        self,
        store_id: str,
        agent_id: str,
        entrances: Iterable[str],
        visit_silence_s: float,
        new_event_id: Callable[[float], uuid.UUID] = _default_ids,
    ) -> None:
        self.store_id = store_id
        self.agent_id = agent_id
        self.entrances = frozenset(entrances)
        self.visit_silence_s = visit_silence_s
        self._new_id = new_event_id
        self.visits: dict[str, Visit] = {}
        self.wall_offset = 0.0
        """Wall minus steady time: what turns a steady ``ts`` into an event's timestamp."""

    def envelope(self, ts: float, subject: str) -> Envelope:
        """The shared fields of an event that happened at steady time ``ts``."""
        wall = ts + self.wall_offset
        return {
            "event_id": self._new_id(wall),
            "store_id": self.store_id,
            "agent_id": self.agent_id,
            "ts": utc_from_epoch(wall),
            "subject": subject,
        }

    def update(self, ts: float, located: Sequence[Located]) -> list[Event]:
        """Events caused by this window's sector reports (dated ``ts``)."""
        events: list[Event] = []
        for item in located:
            visit = self.visits.get(item.emitter_id)
            if visit is None:
                if item.sector_id is None:
                    continue
                started = self._when(item, ts, float("-inf"))
                visit = Visit(visit_id_for(item.emitter_id, started), item.emitter_id, item.tech, started, ts)
                self.visits[item.emitter_id] = visit
                events.append(VisitStarted(**self.envelope(started, visit.subject), visit_id=visit.visit_id,
                                           sector_id=item.sector_id, tech=item.tech))
            visit.last_seen = ts
            if item.sector_id == visit.sector_id:
                continue
            left_by_entrance = item.sector_id is None and visit.sector_id in self.entrances
            if item.sector_id is None and not left_by_entrance:
                continue
            at = self._when(item, ts, visit.sector_since if visit.sector_id is not None else visit.started)
            events.extend(self._exit_sector(visit, at))
            if left_by_entrance:
                events.append(self._end(visit, at, "exit"))
                continue
            assert item.sector_id is not None
            visit.sector_id = item.sector_id
            visit.sector_since = at
            events.append(SectorEntered(**self.envelope(at, visit.subject), visit_id=visit.visit_id,
                                        sector_id=item.sector_id, probability=min(max(item.probability, 0.0), 1.0)))
        return events

    @staticmethod
    def _when(item: Located, ts: float, not_before: float) -> float:
        """The crossing time the sector model reported, kept between the last change and now."""
        if item.since is None or item.since != item.since:  # None or NaN
            return ts
        return min(max(item.since, not_before), ts)

    def expire(self, ts: float) -> list[Event]:
        """Close visits not heard for ``visit_silence_s``, dated when last heard."""
        events: list[Event] = []
        silent = [v for v in self.visits.values() if ts - v.last_seen > self.visit_silence_s]
        for visit in silent:
            events.extend(self._exit_sector(visit, visit.last_seen))
            events.append(self._end(visit, visit.last_seen, "silence"))
        return events

    def close_all(self, ts: float, reason: EndReason = "shutdown") -> list[Event]:
        """Close every open visit (the agent is stopping)."""
        events: list[Event] = []
        for visit in list(self.visits.values()):
            end = min(ts, visit.last_seen) if reason == "silence" else ts
            events.extend(self._exit_sector(visit, end))
            events.append(self._end(visit, end, reason))
        return events

    def _exit_sector(self, visit: Visit, ts: float) -> list[Event]:
        if visit.sector_id is None:
            return []
        dwell = max(ts - visit.sector_since, 0.0)
        visit.dwell[visit.sector_id] = visit.dwell.get(visit.sector_id, 0.0) + dwell
        event = SectorExited(**self.envelope(ts, visit.subject), visit_id=visit.visit_id,
                             sector_id=visit.sector_id, dwell_s=dwell)
        visit.sector_id = None
        return [event]

    def _end(self, visit: Visit, ts: float, reason: EndReason) -> Event:
        del self.visits[visit.subject]
        return VisitEnded(**self.envelope(ts, visit.subject), visit_id=visit.visit_id,
                          duration_s=max(ts - visit.started, 0.0),
                          dwell_s={k: round(v, 3) for k, v in visit.dwell.items()}, reason=reason)
