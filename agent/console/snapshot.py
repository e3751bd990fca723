"""What the console shows, built once per window from the service's parts.

The service calls :meth:`Feed.stored` with every batch of events it put in
the outbox and :meth:`Feed.tick` once per window; :meth:`Feed.current`
builds that window's :class:`Snapshot` on first use, and the HTTP side
serialises it at most once per view, so twenty viewers cost one build and
one ``json.dumps`` each window, and no viewer costs next to nothing. Nothing
here imports the HTTP library: the feed is plain state the tests drive
without a server.

Positions leave only as the tracker's estimate and its 95 % ellipse, under
a shortened pseudonym (the first 8 characters of the emitter's keyed hash):
the console never sees a MAC address.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from agent.config import SiteConfig
from agent.events import Event
from agent.staffboard import StaffBoard

if TYPE_CHECKING:
    from agent.locator import Locator
    from agent.outbox import Outbox
    from agent.sources.base import Source
    from agent.uplink import Uplink

HEALTHY_S = 15.0
"""A receiver heard within this many store seconds is healthy (green)."""
SILENT_S = 60.0
"""A receiver unheard for longer is silent (red); between the two it is stale (amber)."""
RECENT_EVENTS = 30
"""Events listed under "delivery" (newest first)."""
ELLIPSE_K = float(np.sqrt(5.991))
"""Scale from 1 σ to the 95 % ellipse of a 2-D Gaussian (chi-square, 2 degrees of freedom)."""
PSEUDONYM_CHARS = 8
LATENCY_PENDING_MAX = 100_000
"""Stored events whose delivery time is still awaited; beyond it the oldest are forgotten, unmeasured."""


def ellipses(cov: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Semi-axes (m) and orientation (degrees, from +x) of the 95 % ellipse of each (k, 2, 2) covariance.

    The closed form of a symmetric 2 × 2 eigenproblem, vectorised: a
    thousand ``eigh`` calls would cost more than the rest of the snapshot.
    """
    a, b, c = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
    mean = (a + c) / 2.0
    root = np.sqrt(((a - c) / 2.0) ** 2 + b**2)
    major = ELLIPSE_K * np.sqrt(np.maximum(mean + root, 0.0))
    minor = ELLIPSE_K * np.sqrt(np.maximum(mean - root, 0.0))
    angle = np.degrees(0.5 * np.arctan2(2.0 * b, a - c))
    return major, minor, angle


def health(last_heard: float | None, t: float) -> str:
    """"ok", "stale" or "silent" for a receiver last heard at ``last_heard`` (None: never)."""
    if last_heard is None or t - last_heard > SILENT_S:
        return "silent"
    return "ok" if t - last_heard <= HEALTHY_S else "stale"


def layout(site: SiteConfig) -> dict[str, Any]:
    """The store's static drawing: outline, sectors, receivers (fetched once by the page)."""
    return {
        "store": {"id": site.store.id, "name": site.store.name, "outline": site.store.outline},
        "sectors": [{"id": s.id, "name": s.name, "polygon": s.polygon, "entrance": s.entrance}
                    for s in site.sectors],
        "receivers": [{"id": r.id, "kind": r.kind, "x": r.x, "y": r.y, "node_name": r.node_name}
                      for r in site.receivers],
    }


@dataclass(frozen=True)
class SourceView:
    name: str
    state: str
    accepted: int
    rate_per_s: float
    dropped: dict[str, int]
    last_error: str | None


@dataclass(frozen=True)
class ReceiverView:
    id: str
    kind: str
    node_name: str | None
    readings: int
    rate_per_s: float
    last_heard: float | None
    health: str


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One window as the console shows it; the JSON of each view is made on first use."""

    t: float
    layout_version: int
    emitters: tuple[str, ...]
    xy: NDArray[np.float64]
    axes: tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]
    track_sectors: tuple[str | None, ...]
    occupancy: dict[str, int]
    receivers: tuple[ReceiverView, ...]
    sources: tuple[SourceView, ...]
    dropped: dict[str, int]
    """Drops by reason outside the sources: the locator's and its queue's."""
    uplink_state: str
    uplink_error: str | None
    outbox_depth: int
    oldest_unsent: float | None
    recent: tuple[dict[str, Any], ...]
    events_by_type: dict[str, int]
    observations_by_source: dict[str, int]
    staff_cards: tuple[dict[str, Any], ...]
    built_monotonic: float = field(default_factory=time.monotonic)

    @cached_property
    def technician_json(self) -> bytes:
        major, minor, angle = self.axes
        data = {
            "t": self.t,
            "layout_version": self.layout_version,
            "tracks": {
                "id": [e[:PSEUDONYM_CHARS] for e in self.emitters],
                "x": np.round(self.xy[:, 0], 2).tolist(),
                "y": np.round(self.xy[:, 1], 2).tolist(),
                "major": np.round(major, 2).tolist(),
                "minor": np.round(minor, 2).tolist(),
                "angle": np.round(angle, 1).tolist(),
                "sector": list(self.track_sectors),
            },
            "occupancy": self.occupancy,
            "receivers": [r.__dict__ for r in self.receivers],
            "sources": [s.__dict__ for s in self.sources],
            "dropped": self.dropped,
            "delivery": {"uplink": self.uplink_state, "last_error": self.uplink_error,
                         "outbox_depth": self.outbox_depth, "oldest_unsent": self.oldest_unsent,
                         "recent": list(self.recent)},
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @cached_property
    def staff_json(self) -> bytes:
        return json.dumps({"t": self.t, "cards": list(self.staff_cards)}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class _Parts:
    """What a window's snapshot is built from, kept until someone asks for it."""

    t: float
    locator: Locator
    sources: tuple[Source, ...]
    outbox: Outbox | None
    uplink: Uplink | None
    queue_dropped: int


class Feed:
    """The console's running state: counters across windows and the staff board it reads."""

    def __init__(self, site: SiteConfig, board: StaffBoard) -> None:
        self.site = site
        self.board = board
        self.layout_version = 0
        self.layout = layout(site)
        self.events_by_type: Counter[str] = Counter()
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self._previous: dict[str, tuple[float, int]] = {}
        self._pending: deque[tuple[int, float]] = deque()
        self.latencies: list[float] = []
        """Seconds from stored to acknowledged, since the last :meth:`take_latencies`."""
        self.latest: Snapshot | None = None
        self.ticks = 0
        """Windows seen; the snapshot is rebuilt when this moved on since the last build."""
        self._built_tick = -1
        self._parts: _Parts | None = None

    def reconfigured(self, site: SiteConfig) -> None:
        """A reloaded site config: the page redraws the store when the version changes."""
        self.site = site
        self.layout = layout(site)
        self.layout_version += 1

    def stored(self, events: Iterable[Event], now: float | None = None) -> None:
        """Events just written to the outbox: counted and listed (the service keeps the staff board in step)."""
        stamp = time.monotonic() if now is None else now
        for event in events:
            self.events_by_type[event.type] += 1
            if event.seq is not None:
                self._pending.append((event.seq, stamp))
            if event.type != "agent.status":
                self._recent.appendleft(event.model_dump(mode="json", include={
                    "seq", "type", "ts", "subject", "sector_id", "duration_s", "reader_id", "method"}))
        while len(self._pending) > LATENCY_PENDING_MAX:
            self._pending.popleft()

    def delivered_through(self, first_unsent_seq: int, now: float | None = None) -> None:
        """Every stored seq below ``first_unsent_seq`` has left the outbox: time their delivery."""
        stamp = time.monotonic() if now is None else now
        while self._pending and self._pending[0][0] < first_unsent_seq:
            self.latencies.append(stamp - self._pending.popleft()[1])

    def take_latencies(self) -> list[float]:
        taken, self.latencies = self.latencies, []
        return taken

    def tick(self, t: float, locator: Locator, sources: Sequence[Source], outbox: Outbox | None,
             uplink: Uplink | None, queue_dropped: int) -> None:
        """The window ending at ``t`` closed: keep its parts and time deliveries.

        Cheap on purpose: the snapshot itself is built by :meth:`current`
        only when someone looks, so an agent nobody watches pays almost
        nothing per window. Deliveries are read from the outbox's counters,
        not a query: the outbox's lock is held by the uplink thread through
        each acknowledgement's fsync, and waiting on it here stalled windows.
        Rows leave the outbox oldest first (acknowledged or evicted), so the
        first unsent seq is ``last_seq - depth + 1``.
        """
        self._parts = _Parts(t, locator, tuple(sources), outbox, uplink, queue_dropped)
        self.ticks += 1
        if outbox is not None and self._pending:
            self.delivered_through(outbox.last_seq - outbox.depth() + 1)

    def current(self) -> Snapshot | None:
        """The snapshot of the last window, built on first use (None before the first window)."""
        parts = self._parts
        if parts is None:
            return None
        if self.latest is None or self._built_tick != self.ticks:
            self.latest = self._build(parts)
            self._built_tick = self.ticks
        return self.latest

    def _build(self, parts: _Parts) -> Snapshot:
        t, locator = parts.t, parts.locator
        tracks = locator.tracker.snapshot()
        visits = locator.presence.visits
        track_sectors = tuple(visit.sector_id if (visit := visits.get(e)) else None for e in tracks.emitter_ids)
        occupancy = {s.id: 0 for s in self.site.sectors}
        for visit in visits.values():
            if visit.sector_id in occupancy:
                occupancy[visit.sector_id] += 1
        depth, oldest = 0, None
        if parts.outbox is not None:
            stats = parts.outbox.stats()
            depth, oldest = stats.depth, stats.oldest_ts
        dropped = {f"locator_{reason}": count for reason, count in locator.stats.dropped.items()}
        if parts.queue_dropped:
            dropped["queue_full"] = parts.queue_dropped
        uplink = parts.uplink
        return Snapshot(
            t=t, layout_version=self.layout_version, emitters=tracks.emitter_ids, xy=tracks.xy,
            axes=ellipses(tracks.cov), track_sectors=track_sectors, occupancy=occupancy,
            receivers=self._receivers(t, locator), sources=self._sources(t, parts.sources), dropped=dropped,
            uplink_state="none" if uplink is None else uplink.state,
            uplink_error=None if uplink is None else uplink.last_error,
            outbox_depth=depth, oldest_unsent=oldest, recent=tuple(self._recent),
            events_by_type=dict(self.events_by_type),
            observations_by_source={s.stats.name: s.stats.accepted for s in parts.sources},
            staff_cards=tuple(self._cards()),
        )

    def _rate(self, key: str, t: float, count: int) -> float:
        """Per store second since the previous window, from a running count."""
        then, before = self._previous.get(key, (t, count))
        self._previous[key] = (t, count)
        return (count - before) / (t - then) if t > then else 0.0

    def _receivers(self, t: float, locator: Locator) -> tuple[ReceiverView, ...]:
        stats = locator.stats
        views = []
        for receiver in self.site.receivers:
            count = stats.per_receiver.get(receiver.id, 0)
            heard = stats.last_heard.get(receiver.id)
            views.append(ReceiverView(
                id=receiver.id, kind=receiver.kind, node_name=receiver.node_name, readings=count,
                rate_per_s=round(self._rate(f"r:{receiver.id}", t, count), 2), last_heard=heard,
                health=health(heard, t)))
        return tuple(views)

    def _sources(self, t: float, sources: Sequence[Source]) -> tuple[SourceView, ...]:
        return tuple(SourceView(
            name=s.stats.name, state=s.stats.state, accepted=s.stats.accepted,
            rate_per_s=round(self._rate(f"s:{s.stats.name}", t, s.stats.accepted), 2),
            dropped=dict(s.stats.dropped), last_error=s.stats.last_error) for s in sources)

    def _cards(self) -> list[dict[str, Any]]:
        names = {s.id: s.name for s in self.site.sectors}
        cards = []
        for held in self.board.cards():
            card = held.card
            cards.append({"card_id": card.card_id, "loyalty_id": card.loyalty_id, "text": card.text,
                          "sector_id": held.sector_id, "sector": names.get(held.sector_id or ""),
                          "facts": card.facts, "since": card.ts.timestamp()})
        return cards
