"""A store's day of counts: people who came in per hour, and how many were inside.

Built from the stored ``footfall.counted`` and ``occupancy.sampled`` events
(the agent's counting stage, ``agent/footfall.py``); they name no one, so
this needs no consent. Days and hours are UTC, as the agents cut them. An
hour that an agent counted in parts (it restarted, or stopped mid-hour) adds
its parts up, their spreads in quadrature, and says how much of the hour
they covered; several agents of one store add up the same way.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from agent.events import Event, FootfallCounted, OccupancySampled
from hq.store import Store

COUNT_TYPES = ("occupancy.sampled", "footfall.counted")
DAY_S = 86_400.0
HOUR_S = 3600.0
LATE_S = 2 * HOUR_S
"""An event is dated when it was made, up to a lead after the interval it counts: read this far past the day."""


@dataclass(frozen=True)
class HourRow:
    """One hour of a day: entries (None when no agent counted it), and the occupancy samples that fell in it."""

    start: datetime
    entries: float | None
    entries_sd: float | None
    covered_s: float
    """Seconds of the hour the footfall counts covered."""
    inside_mean: float | None
    inside_max: float | None
    samples: int


@dataclass(frozen=True)
class Sample:
    at: datetime
    count: float
    count_sd: float


@dataclass(frozen=True)
class FootfallDay:
    store_id: str
    day: date
    hours: list[HourRow]
    samples: list[Sample]

    @property
    def entries(self) -> float:
        return sum(h.entries or 0.0 for h in self.hours)

    @property
    def entries_sd(self) -> float:
        return math.sqrt(sum((h.entries_sd or 0.0) ** 2 for h in self.hours))

    def to_dict(self) -> dict[str, object]:
        return {
            "store_id": self.store_id, "day": self.day.isoformat(), "entries": self.entries,
            "entries_sd": self.entries_sd,
            "hours": [{"hour": _iso(h.start), "entries": h.entries, "entries_sd": h.entries_sd,
                       "covered_s": h.covered_s, "inside_mean": h.inside_mean, "inside_max": h.inside_max,
                       "samples": h.samples} for h in self.hours],
            "samples": [{"at": _iso(s.at), "count": s.count, "count_sd": s.count_sd} for s in self.samples],
        }


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def day_bounds(day: date) -> tuple[float, float]:
    """[start, end) of a UTC day, epoch seconds."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    return start, start + DAY_S


def summarise(store_id: str, day: date, events: Iterable[Event]) -> FootfallDay:
    """The day's 24 hours from the store's count events (any others, or other days', are ignored)."""
    start, end = day_bounds(day)
    parts: dict[int, list[FootfallCounted]] = defaultdict(list)
    inside: dict[int, list[float]] = defaultdict(list)
    samples: list[Sample] = []
    for event in events:
        if event.store_id != store_id:
            continue
        if isinstance(event, FootfallCounted) and start <= event.interval_start.timestamp() < end:
            parts[int((event.interval_start.timestamp() - start) // HOUR_S)].append(event)
        elif isinstance(event, OccupancySampled) and event.sector_id is None \
                and start <= event.interval_end.timestamp() < end:
            inside[int((event.interval_end.timestamp() - start) // HOUR_S)].append(event.count)
            samples.append(Sample(event.interval_end, event.count, event.count_sd))
    hours = []
    for hour in range(24):
        counted, seen = parts.get(hour, []), inside.get(hour, [])
        hours.append(HourRow(
            start=datetime.fromtimestamp(start + hour * HOUR_S, tz=UTC),
            entries=sum(e.entries for e in counted) if counted else None,
            entries_sd=math.sqrt(sum(e.entries_sd ** 2 for e in counted)) if counted else None,
            covered_s=sum((e.interval_end - e.interval_start).total_seconds() for e in counted),
            inside_mean=sum(seen) / len(seen) if seen else None, inside_max=max(seen) if seen else None,
            samples=len(seen)))
    samples.sort(key=lambda s: s.at)
    return FootfallDay(store_id, day, hours, samples)


def read_day(store: Store, store_id: str, day: date) -> FootfallDay:
    """The day of ``store_id`` as HQ stored it."""
    start, end = day_bounds(day)
    return summarise(store_id, day, store.store_events(store_id, COUNT_TYPES, start, end + LATE_S))


def table_rows(day: FootfallDay) -> list[tuple[str, ...]]:
    """The hours anything was counted in, as text cells: hour, entries ± sd, covered, inside mean / max, samples."""
    rows: list[tuple[str, ...]] = []
    for h in day.hours:
        if h.entries is None and not h.samples:
            continue
        entries = "-" if h.entries is None else f"{h.entries:.0f} ± {h.entries_sd or 0.0:.0f}"
        covered = "-" if h.entries is None else f"{h.covered_s / 60:.0f} min"
        mean = "-" if h.inside_mean is None else f"{h.inside_mean:.1f}"
        peak = "-" if h.inside_max is None else f"{h.inside_max:.0f}"
        rows.append((h.start.strftime("%H:%M"), entries, covered, mean, peak, str(h.samples)))
    return rows


def render_png(day: FootfallDay, path: Path) -> None:
    """People inside through the day (a band of one sigma) over the entries per hour (bars), hours on the x axis."""
    import matplotlib  # noqa: PLC0415  (optional dependency, loaded only to plot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    midnight, _ = day_bounds(day.day)
    fig, ax = plt.subplots(figsize=(11, 4.8))
    counted = [(hour, h.entries) for hour, h in enumerate(day.hours) if h.entries is not None]
    ax.bar([hour + 0.5 for hour, _ in counted], [entries for _, entries in counted], width=0.85,
           color="#c9d8ef", label="entries per hour")
    if day.samples:
        at = [(s.at.timestamp() - midnight) / HOUR_S for s in day.samples]
        ax.fill_between(at, [max(0.0, s.count - s.count_sd) for s in day.samples],
                        [s.count + s.count_sd for s in day.samples], color="#f4b183", alpha=0.5, linewidth=0)
        ax.plot(at, [s.count for s in day.samples], color="#c55a11", label="inside (± 1 sigma)")
    ax.set_xlim(0.0, 24.0)
    ax.set_xticks(range(0, 25, 3))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("hour (UTC)")
    ax.set_ylabel("people")
    ax.set_title(f"{day.store_id}, {day.day.isoformat()}: {day.entries:.0f} ± {day.entries_sd:.0f} entries")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
