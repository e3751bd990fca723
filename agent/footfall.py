"""The counting stage: anonymous probe receptions in, ``occupancy.sampled`` and ``footfall.counted`` out.

Phones without the loyalty app never become a visit, but most of them send
Wi-Fi probe requests. The Wi-Fi source has already reduced each one to keyed
pseudonyms and numbers (`agent.probe_keys`); this stage keeps the last
``[footfall] window_s`` of them and asks the pure estimator
(`positioning.occupancy.estimate_occupancy`, eqs. 30-31 and 37-39) every
``interval_s`` how many people are inside, and at every whole hour how many
came in during it. Only those counts leave the store: the events carry no
pseudonym, and the keys held here are process-local hashes that die with it.

Memory is bounded by ``max_probes`` receptions (41 bytes each; up to
``PENDING_ROWS`` more wait for the next fold), and an estimate's temporaries
by what it holds (about 175 bytes a reception; benchmarks/README.md).
Beyond it the oldest receptions go, counted as ``window_full`` and logged
at the 1st, 10th, 100th...: in a crowd the window shortens (fixtures, found
by hours of presence, show less) rather than going blind to what is heard now.
Receptions of receivers the site config does not name are dropped and
counted as ``unknown_receiver``. Rows older than the window go at each
estimate. A device that two or more receivers hear is placed inside or
outside the store's outline by eq. (41) (receiver codes are the site's
receiver rows); one that a single receiver hears, by its power threshold.
BLE readings are not this stage's input (an app phone's adverts would count
it twice).

Time: the service steps the stage with its steady store time ``t`` (the
locator's time base, which observations are dated in) and the wall offset;
hours are whole hours of the wall clock, so HQ can add stores up.

Threads: an estimate over a full window takes a second or more of CPU
(benchmarks/README.md), too long for the agent's event loop, which would
stop ingesting, uplinking and stepping sectors meanwhile. So the stage's
work comes in three parts: `FootfallStage.due` (on the loop: what is due,
with a read-only snapshot of the receptions it needs), `EstimateJob.run`
(anywhere, touching nothing shared: the service runs it in a worker thread)
and `FootfallStage.finish` (on the loop: the events and the figures).
`FootfallStage.step` does all three in one call for callers without a loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from agent.config import FootfallConfig, SiteConfig
from agent.events import Event, FootfallCounted, OccupancySampled, utc_from_epoch, uuid7
from agent.observations import Observation
from agent.site_arrays import occupancy_outline
from positioning.occupancy import EstimateConfig, OccupancyEstimate, estimate_occupancy

log = logging.getLogger(__name__)

HOUR_S = 3600.0

ROW = np.dtype([("t", "f8"), ("mac", "i8"), ("sig", "i8"), ("seq", "i2"), ("rnd", "?"), ("z", "f4"),
                ("rx", "i2")])
"""One held reception: time, MAC key, signature key (-1 unknown), sequence (-1 unknown), randomised, dBm, receiver."""

PENDING_ROWS = 4096
"""Receptions kept as tuples before they are packed into the array form (41 bytes each, not ~200)."""

_KEY_MASK = (1 << 63) - 1
"""Keys as non-negative int64, so -1 keeps meaning 'no signature'."""

Row = tuple[float, int, int, int, bool, float, int]


@dataclass(frozen=True)
class EstimateJob:
    """One estimate the stage wants, with everything it reads: running it touches nothing the loop holds.

    ``rows`` is the held window at the time it was asked for, read-only (the
    stage never writes into its arrays in place; it replaces them), so new
    receptions and folds on the loop meanwhile do not reach it.
    """

    kind: Literal["sample", "hour"]
    now: float
    """Store time the estimate is taken at (eq. 39 counts at now - L)."""
    rows: NDArray[np.void]
    config: EstimateConfig
    t: float
    """Store time of the step that asked for it: the event's ``ts``."""
    wall_offset: float
    start_wall: float = math.nan
    """For an hour: the wall time its interval starts."""
    end_wall: float = math.nan

    def run(self) -> EstimateResult:
        """The pure estimate of eqs. (37)-(40) on the snapshot, and the CPU it took in this thread."""
        rows = self.rows
        started = time.thread_time()
        estimate = estimate_occupancy(rows["t"], rows["mac"], rows["sig"], rows["seq"], rows["rnd"],
                                      rows["z"], rows["rx"], self.now, config=self.config)
        return EstimateResult(self, estimate, time.thread_time() - started)


@dataclass(frozen=True)
class EstimateResult:
    """An estimate done, for `FootfallStage.finish`."""

    job: EstimateJob
    estimate: OccupancyEstimate
    cpu_s: float


def run_jobs(jobs: Sequence[EstimateJob]) -> list[EstimateResult]:
    """The jobs one after the other (in a worker thread: the service hands this to ``asyncio.to_thread``)."""
    return [job.run() for job in jobs]


@dataclass
class FootfallStats:
    """What ``agent.status`` and ``santi status`` say about the stage."""

    accepted: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    estimates: int = 0
    cpu_s_last: float = 0.0
    """CPU seconds the last estimate took (its thread's time)."""
    cpu_s_total: float = 0.0
    held: int = 0
    span_s: float = 0.0
    """How far back the held receptions reach at the last estimate: ``window_s``, or less when max_probes bit."""
    last: OccupancyEstimate | None = None
    """The last occupancy sample's estimate."""
    last_error: str | None = None
    """Why the last estimate that failed did (the service logs it; its counts are missing)."""


class FootfallStage:
    """Holds the window of probe receptions and emits the counts when they are due."""

    def __init__(self, site: SiteConfig, config: FootfallConfig) -> None:
        self.stats = FootfallStats()
        self._pending: list[Row] = []
        self._packed: list[NDArray[np.void]] = []
        self._waiting = 0
        """Receptions in ``_pending`` and ``_packed``, not yet folded into ``_rows``."""
        self._rows: NDArray[np.void] = np.zeros(0, dtype=ROW)
        self._first_wall: float | None = None
        self._next_sample = math.inf
        self._hour_end = math.inf
        """Wall time of the end of the hour being counted."""
        self.reconfigure(site, config)

    def reconfigure(self, site: SiteConfig, config: FootfallConfig) -> None:
        """A reloaded site config: new parameters, the same held receptions and schedule."""
        self.site = site
        self.config = config
        self._receivers = {receiver.id: code for code, receiver in enumerate(site.receivers)}
        self._estimate = EstimateConfig(
            window_s=config.window_s, lead_s=config.lead_s, min_rssi_dbm=config.min_rssi_dbm,
            people_per_device=config.people_per_device, people_offset=config.people_offset,
            residual_sd=config.residual_sd, people_per_entry=config.people_per_entry,
            outline=occupancy_outline(site, config.wall_loss_db))

    # -- receptions in -----------------------------------------------------------

    def add(self, observation: Observation) -> None:
        """One validated observation; only Wi-Fi probe receptions are kept."""
        if observation.tech != "wifi":
            return
        receiver = self._receivers.get(observation.receiver_id)
        if receiver is None:
            self._drop("unknown_receiver")
            return
        probe = observation.probe
        if probe is None:
            signature, sequence, randomised = -1, -1, False
        else:
            signature = hash(probe.signature) & _KEY_MASK
            sequence = -1 if probe.sequence is None else probe.sequence
            randomised = probe.randomised
        self._pending.append((observation.ts, hash(observation.emitter_id) & _KEY_MASK, signature, sequence,
                              randomised, observation.rssi_dbm, receiver))
        self._waiting += 1
        if len(self._pending) >= PENDING_ROWS:
            self._packed.append(np.array(self._pending, dtype=ROW))
            self._pending = []
            if self._rows.size + self._waiting > self.config.max_probes:
                self._fold()
        self.stats.accepted += 1

    def _fold(self) -> None:
        """The waiting receptions join the held ones; beyond ``max_probes`` the oldest go, counted."""
        if self._waiting:
            self._rows = np.concatenate([self._rows, *self._packed, np.array(self._pending, dtype=ROW)])
            self._pending, self._packed, self._waiting = [], [], 0
        excess = self._rows.size - self.config.max_probes
        if excess > 0:
            newest = np.sort(np.argsort(self._rows["t"], kind="stable")[excess:])
            self._rows = self._rows[newest]
            self._drop("window_full", excess)

    def _drop(self, reason: str, count: int = 1) -> None:
        before = self.stats.dropped[reason]
        self.stats.dropped[reason] = before + count
        if len(str(before)) < len(str(before + count)) or before == 0:
            log.warning("footfall: probe receptions dropped", extra={"reason": reason, "dropped": before + count})

    # -- counts out --------------------------------------------------------------

    def step(self, t: float, wall_offset: float) -> list[Event]:
        """The events due at store time ``t``, estimated here and now (`due`, `EstimateJob.run`, `finish`)."""
        return self.finish(run_jobs(self.due(t, wall_offset)))

    def due(self, t: float, wall_offset: float) -> list[EstimateJob]:
        """The estimates due at store time ``t``: a sample every ``interval_s``, a count after every whole hour.

        Each is scheduled once: a step that comes late (the service asks only
        when no estimate is running) is answered for its own time, not for the
        times it missed.
        """
        wall = t + wall_offset
        if self._first_wall is None:
            self._first_wall = wall
            self._next_sample = self._after(t, self.config.interval_s)
            self._hour_end = self._after(wall, HOUR_S)
        jobs: list[EstimateJob] = []
        if t >= self._next_sample:
            self._next_sample = self._after(t, self.config.interval_s)
            jobs.append(EstimateJob("sample", t, self._snapshot(t), self._estimate, t, wall_offset))
        if wall - self.config.lead_s >= self._hour_end:
            end = self._hour_end
            self._hour_end = self._after(wall - self.config.lead_s, HOUR_S)
            jobs.extend(self._hour_job(end, t, wall_offset))
        return jobs

    def close(self, t: float, wall_offset: float) -> list[Event]:
        """At shutdown, the hour so far (interval_end says where it stops), so a short run still reports entries."""
        return self.finish(run_jobs(self.closing(t, wall_offset)))

    def closing(self, t: float, wall_offset: float) -> list[EstimateJob]:
        """The estimate `close` makes: the hour up to ``t`` less the lead, if the stage has stepped in it."""
        if self._first_wall is None:
            return []
        return self._hour_job(t + wall_offset - self.config.lead_s, t, wall_offset)

    def finish(self, results: Sequence[EstimateResult]) -> list[Event]:
        """The events of estimates done (in the order they were asked for), and the stage's figures from them."""
        events: list[Event] = []
        for result in results:
            job, estimate = result.job, result.estimate
            self.stats.estimates += 1
            self.stats.cpu_s_last = result.cpu_s
            self.stats.cpu_s_total += result.cpu_s
            if job.kind == "sample":
                self.stats.last = estimate
                events.append(self._occupancy(estimate, job.t, job.wall_offset))
                events.extend(self._sectors(estimate, job.t, job.wall_offset))
            else:
                events.append(FootfallCounted(
                    **self._envelope(job.t + job.wall_offset), interval_start=utc_from_epoch(job.start_wall),
                    interval_end=utc_from_epoch(job.end_wall), method="probe_stays",
                    entries=estimate.entries, entries_sd=estimate.entries_sd))
        return events

    @staticmethod
    def _after(x: float, period: float) -> float:
        """The first multiple of ``period`` after ``x``."""
        return (math.floor(x / period) + 1.0) * period

    def _hour_job(self, end_wall: float, t: float, wall_offset: float) -> list[EstimateJob]:
        """Entries over [max(hour start, first step), end_wall): the whole hour, or what the stage saw of it."""
        assert self._first_wall is not None
        start_wall = max(math.floor(math.nextafter(end_wall, -math.inf) / HOUR_S) * HOUR_S, self._first_wall)
        if end_wall <= start_wall:
            return []
        now = end_wall - wall_offset + self.config.lead_s
        config = replace(self._estimate, interval_s=end_wall - start_wall)
        return [EstimateJob("hour", now, self._snapshot(now), config, t, wall_offset, start_wall, end_wall)]

    def _occupancy(self, estimate: OccupancyEstimate, t: float, wall_offset: float) -> OccupancySampled:
        end = estimate.at + wall_offset
        return OccupancySampled(
            **self._envelope(t + wall_offset), interval_start=utc_from_epoch(end - self.config.interval_s),
            interval_end=utc_from_epoch(end), method="probe_stays",
            count=estimate.count, count_sd=estimate.count_sd)

    def _sectors(self, estimate: OccupancyEstimate, t: float, wall_offset: float) -> list[OccupancySampled]:
        """Eq. (42)'s people per sector, where the receivers placed a counted device at all; none otherwise.

        The spread of a sector's figure: the store count's, scaled by the
        share, and the split's own as a multinomial of the count over the
        shares (placement errors beyond that are not in it).
        """
        if estimate.sectors is None or estimate.count <= 0.0:
            return []
        end = estimate.at + wall_offset
        out = []
        for sector, people in zip(self.site.sectors, estimate.sectors, strict=True):
            share = people / estimate.count
            sd = math.sqrt((share * estimate.count_sd) ** 2 + estimate.count * share * (1.0 - share))
            out.append(OccupancySampled(
                **self._envelope(t + wall_offset), interval_start=utc_from_epoch(end - self.config.interval_s),
                interval_end=utc_from_epoch(end), method="probe_places", sector_id=sector.id, count=people,
                count_sd=sd))
        return out

    def _envelope(self, wall: float) -> dict[str, object]:
        agent_id = self.site.agent.id
        return {"event_id": uuid7(int(wall * 1000)), "store_id": self.site.store.id, "agent_id": agent_id,
                "ts": utc_from_epoch(wall), "subject": agent_id}

    def _snapshot(self, now: float) -> NDArray[np.void]:
        """Fold the waiting receptions in, forget what the window no longer covers: the rows an estimate at ``now`` reads.

        The array is made read-only and never written again: a fold or a trim
        replaces ``_rows``, so a job holding it sees the window as it was.
        """
        self._fold()
        keep = self._rows["t"] >= now - self.config.window_s
        if not keep.all():
            self._rows = self._rows[keep]
        rows = self._rows
        rows.flags.writeable = False
        self.stats.held = int(rows.size)
        self.stats.span_s = float(now - rows["t"].min()) if rows.size else 0.0
        return rows

    def held_rows(self) -> NDArray[np.void]:
        """The receptions held after the last estimate's fold, oldest first as they came (benchmarks time on them)."""
        return self._rows

    @property
    def estimate_config(self) -> EstimateConfig:
        """The estimator's parameters this stage's config gives."""
        return self._estimate

    # -- status ------------------------------------------------------------------

    def status_line(self) -> dict[str, object]:
        """The stage as a line of the status file's sources: what it took, what it dropped."""
        return {"state": "up", "accepted": self.stats.accepted, "rate_per_s": None,
                "dropped": dict(self.stats.dropped), "last_error": self.stats.last_error}

    def status(self, wall_offset: float) -> dict[str, object]:
        """The stage's figures for ``santi status``: the last count, the window held, the CPU an estimate took."""
        last = self.stats.last
        return {
            "held": self.stats.held + self._waiting, "max_probes": self.config.max_probes,
            "window_s": self.config.window_s, "span_s": self.stats.span_s, "estimates": self.stats.estimates,
            "cpu_s_last": self.stats.cpu_s_last, "cpu_s_total": self.stats.cpu_s_total,
            "count": None if last is None else last.count, "count_sd": None if last is None else last.count_sd,
            "at": None if last is None else last.at + wall_offset,
            "devices": None if last is None else last.devices,
            "stationary": None if last is None else last.stationary,
            "outside": None if last is None else last.outside,
        }
