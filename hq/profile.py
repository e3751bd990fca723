"""The customer profile as pure functions over events and visits.

Nothing here reads the clock or a database: the store hands over the events
of the visits that belong to one person, and the caller passes ``now``. That
is what makes the figures hand-checkable, and what makes the order in which
events arrived at HQ irrelevant: visits are rebuilt from whatever is stored.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from agent.events import (
    AgentStatus,
    CardTapped,
    Event,
    FootfallCounted,
    IdentityLinked,
    OccupancySampled,
    SectorEntered,
    SectorExited,
    VisitEnded,
    VisitStarted,
)

RECENT_DAYS = 30
DAY_S = 86_400.0

VisitKey = tuple[str, str, str]
"""(store_id, agent_id, visit_id): visit ids are only unique per agent."""

VisitEvent = VisitStarted | SectorEntered | SectorExited | VisitEnded | IdentityLinked
_NOT_VISIT = (CardTapped, AgentStatus, OccupancySampled, FootfallCounted)
"""Event types that belong to no visit (a tuple: the faster ``isinstance`` test, once per event)."""


@dataclass(frozen=True)
class Visit:
    """One visit, rebuilt from its stored events."""

    store_id: str
    agent_id: str
    visit_id: str
    subject: str
    started: datetime
    ended: datetime | None
    duration_s: float | None
    """From visit.ended; else last minus first event; None with a single event."""
    dwell_s: Mapping[str, float]
    closed: bool
    """True when a visit.ended was received."""

    @property
    def key(self) -> VisitKey:
        return (self.store_id, self.agent_id, self.visit_id)


@dataclass(frozen=True)
class Profile:
    """What HQ knows of one person (``kind="loyalty"``) or one device (``"visitor"``)."""

    kind: Literal["loyalty", "visitor"]
    key: str
    visits: int
    first_visit: datetime | None
    last_visit: datetime | None
    visits_last_30d: int
    median_days_between: float | None
    average_visit_s: float | None
    dwell_share: Mapping[str, float]
    """Fraction of all sector dwell time per sector id (sums to 1 when any dwell)."""
    stores: Mapping[str, int]
    """Visits per store id."""
    card_taps: int
    last_card_tap: datetime | None
    visit_list: Sequence[Visit] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form, times as RFC 3339."""
        return {
            "kind": self.kind,
            "key": self.key,
            "visits": self.visits,
            "first_visit": _iso(self.first_visit),
            "last_visit": _iso(self.last_visit),
            "visits_last_30d": self.visits_last_30d,
            "median_days_between": self.median_days_between,
            "average_visit_s": self.average_visit_s,
            "dwell_share": dict(self.dwell_share),
            "stores": dict(self.stores),
            "card_taps": self.card_taps,
            "last_card_tap": _iso(self.last_card_tap),
            "visit_list": [
                {
                    "store_id": v.store_id,
                    "agent_id": v.agent_id,
                    "visit_id": v.visit_id,
                    "started": _iso(v.started),
                    "ended": _iso(v.ended),
                    "duration_s": v.duration_s,
                    "dwell_s": dict(v.dwell_s),
                    "closed": v.closed,
                }
                for v in self.visit_list
            ],
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def visits_from_events(events: Iterable[Event]) -> list[Visit]:
    """Group events into visits by (store, agent, visit_id), in start order.

    A duplicate event (same event_id) counts once. Dwell comes from
    visit.ended's per-sector dwell when it has one, else from the sum of
    sector.exited dwell; a visit with no visit.ended lasts from its first to
    its last event, so a visit cut short by lost events still counts.
    """
    grouped: dict[VisitKey, dict[str, VisitEvent]] = defaultdict(dict)
    for event in events:
        if isinstance(event, _NOT_VISIT):
            continue
        grouped[(event.store_id, event.agent_id, event.visit_id)][str(event.event_id)] = event
    visits = [_visit(key, list(by_id.values())) for key, by_id in grouped.items()]
    visits.sort(key=lambda v: (v.started, v.key))
    return visits


def _visit(key: VisitKey, events: list[VisitEvent]) -> Visit:
    events.sort(key=lambda e: (e.ts, e.seq))
    starts = [e for e in events if isinstance(e, VisitStarted)]
    ends = [e for e in events if isinstance(e, VisitEnded)]
    started = starts[0].ts if starts else events[0].ts
    subjects = [e.subject for e in events if not isinstance(e, IdentityLinked)]
    if not subjects:
        subject = events[0].subject
    elif subjects.count(subjects[0]) == len(subjects):
        subject = subjects[0]  # one device, the usual visit: no count needed
    else:
        subject = Counter(subjects).most_common(1)[0][0]
    exited: dict[str, float] = defaultdict(float)
    for e in events:
        if isinstance(e, SectorExited):
            exited[e.sector_id] += e.dwell_s
    if ends:
        end = ends[-1]
        dwell = dict(end.dwell_s) if end.dwell_s else dict(exited)
        return Visit(*key, subject=subject, started=started, ended=end.ts,
                     duration_s=end.duration_s, dwell_s=dwell, closed=True)
    last = events[-1].ts
    duration = (last - started).total_seconds() if len(events) > 1 else None
    return Visit(*key, subject=subject, started=started, ended=None,
                 duration_s=duration, dwell_s=dict(exited), closed=False)


def median_days_between(starts: Sequence[datetime]) -> float | None:
    """Median gap in days between consecutive visit starts; None below two visits."""
    ordered = sorted(starts)
    if len(ordered) < 2:
        return None
    gaps = [(b - a).total_seconds() / DAY_S for a, b in itertools.pairwise(ordered)]
    return float(statistics.median(gaps))


def dwell_share(visits: Iterable[Visit]) -> dict[str, float]:
    """share[s] = Σ_visits dwell[s] / Σ_visits Σ_sectors dwell, sorted by share, largest first."""
    totals: dict[str, float] = defaultdict(float)
    for visit in visits:
        for sector, seconds in visit.dwell_s.items():
            totals[sector] += seconds
    whole = sum(totals.values())
    if whole <= 0.0:
        return {}
    return dict(sorted(((s, t / whole) for s, t in totals.items()), key=lambda kv: (-kv[1], kv[0])))


def build_profile(
    kind: Literal["loyalty", "visitor"],
    key: str,
    visits: Sequence[Visit],
    card_taps: Sequence[datetime],
    now: datetime,
) -> Profile:
    """The profile of one person from their visits and card taps, as seen at ``now``."""
    starts = [v.started for v in visits]
    recent_from = now - timedelta(days=RECENT_DAYS)
    durations = [v.duration_s for v in visits if v.duration_s is not None]
    return Profile(
        kind=kind,
        key=key,
        visits=len(visits),
        first_visit=min(starts) if starts else None,
        last_visit=max(starts) if starts else None,
        visits_last_30d=sum(1 for s in starts if recent_from <= s <= now),
        median_days_between=median_days_between(starts),
        average_visit_s=statistics.fmean(durations) if durations else None,
        dwell_share=dwell_share(visits),
        stores=dict(sorted(Counter(v.store_id for v in visits).items())),
        card_taps=len(card_taps),
        last_card_tap=max(card_taps) if card_taps else None,
        visit_list=tuple(sorted(visits, key=lambda v: (v.started, v.key))),
    )
