"""The agent daemon: sources → locator → outbox → uplink, for months on a Pi.

Sources hand records to one bounded queue without ever blocking (a full
queue drops and counts: scanning must not stall behind anything). The
locator runs on fixed windows of ``tracking.window_s``; every event it
produces goes to the SQLite outbox first, and the uplink thread publishes
from there, so a slow or absent uplink is absorbed by the outbox.

Lifecycle (systemd ``Type=notify``): READY once the outbox, uplink and
sources are up; WATCHDOG from the window loop (a stuck loop gets the unit
restarted); SIGTERM drains the queue, closes visits, gives the uplink a
deadline and exits 0; SIGHUP re-reads the site config and keeps the old
one, with a one-line error, if the new one is broken; SIGUSR1 cuts the
uplink's reconnect wait short (``santi buffer drain``).

Time: ``clock`` gives the store's time in epoch seconds. It is the wall
clock in production and a replay's clock in the demo (``time_scale`` store
seconds per real second), so windows follow the data's own time. Windows,
durations and the outbox's age bound run on ``self.clock``, a
``SteadyClock`` that advances with the monotonic clock (an injected clock,
a replay's, is taken as already steady); the wall clock only dates events,
so a jump forward or back is logged once and changes nothing else.

The counting stage's estimates (``[footfall]``) run in a worker thread, one
batch at a time: a window starts the batch that is due when none is
running and stores the events of the one that finished. Shutdown waits for
a running batch and then counts the hour so far, so no count is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import ConfigError, SiteConfig, load_site, site_warnings
from agent.events import AgentStatus, Event, SourceStatus, utc_from_epoch, uuid7
from agent.footfall import EstimateJob, FootfallStage, run_jobs
from agent.locator import Locator
from agent.observations import AppBeacon, CardTap, Observation, Reading
from agent.outbox import Outbox, OutboxError, OutboxFull, with_outbox_figures
from agent.privatefiles import write_private
from agent.replayclock import SteadyClock, wall_clock_for_tests
from agent.sdnotify import Notifier
from agent.sources.base import Record, Source, SourceStats
from agent.staffboard import STAFF_FILE, StaffBoard
from agent.text import plural
from agent.uplink import Uplink

if TYPE_CHECKING:
    from agent.console import Console

log = logging.getLogger(__name__)

Clock = Callable[[], float]

QUEUE_LIMIT = 100_000
"""Records waiting for the locator; beyond it sources drop and count (minutes of a busy store)."""

STATUS_FILE_EVERY_S = 5.0
"""How often ``state_dir/status.json`` is refreshed for ``santi status``."""


@dataclass
class ServiceStats:
    """What ``agent.status`` and the status file report."""

    started: float = 0.0
    windows: int = 0
    events: int = 0
    queue_dropped: int = 0
    per_source: dict[str, int] = field(default_factory=dict)
    reloads: int = 0
    reload_errors: int = 0


def status_text(sources: Sequence[SourceStats], uplink: str | None) -> str:
    """One line for systemd's STATUS=: how many sources are up, which are not, and the uplink's state."""
    up = sum(1 for stats in sources if stats.state == "up")
    others = [f"{stats.name} {stats.state}" for stats in sources if stats.state != "up"]
    text = f"{plural(len(sources), 'source')} up" if not others else (
        f"{up} of {plural(len(sources), 'source')} up ({', '.join(others)})")
    return text if uplink is None else f"{text}, uplink {uplink}"


class Service:
    """One agent process. ``await run()`` returns an exit code."""

    def __init__(
        self,
        site: SiteConfig,
        sources: Sequence[Source],
        *,
        state_dir: Path,
        clock: Clock = time.time,
        notifier: Notifier | None = None,
        stop_when_sources_finish: bool = False,
        drain_deadline_s: float = 10.0,
        on_events: Callable[[Sequence[Event]], None] | None = None,
        time_scale: float = 1.0,
        monotonic: Clock | None = None,
        staff_board: StaffBoard | None = None,
    ) -> None:
        self.site = site
        self.sources = list(sources)
        self.state_dir = state_dir
        steady = monotonic or (time.monotonic if clock is time.time else clock)
        self.clock = SteadyClock(wall_clock_for_tests(clock, steady), steady)
        """Steady store time: windows, durations, ages; ``self.clock.wall_offset()`` turns it into wall time."""
        self.notifier = notifier or Notifier()
        self.stop_when_sources_finish = stop_when_sources_finish
        self.drain_deadline_s = drain_deadline_s
        self.on_events = on_events
        self.time_scale = time_scale
        self.locator = Locator(site)
        self.footfall = _footfall_stage(site)
        """The occupancy and footfall count, when ``[footfall]`` is configured and enabled."""
        self.counting: asyncio.Task[list[Event]] | None = None
        """The counting stage's estimates running in a worker thread, if any (its events are stored when done)."""
        self.stats = ServiceStats()
        self.stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._queue: asyncio.Queue[Reading | CardTap | AppBeacon] = asyncio.Queue(maxsize=QUEUE_LIMIT)
        self._tasks: list[asyncio.Task[None]] = []
        self.outbox: Outbox | None = None
        self.outbox_left = 0
        """Events still in the outbox when the service stopped (delivered later)."""
        self.uplink: Uplink | None = None
        self._last_status = 0.0
        self._status_written = 0.0
        self._recent: deque[Event] = deque(maxlen=5)
        self._file_counts: dict[str, tuple[float, int]] = {}
        self.not_stored = 0
        """Events lost because the disk stayed full even after evicting (logged at the first and every 10x)."""
        self._file_errors: dict[str, str] = {}
        """The last write error per state file, so a full disk logs each new error once."""
        self._losing = False
        self.staff_board = staff_board or StaffBoard(site.store.id)
        """Staff cards of customers here now; the console shows it, the staff-topic subscription fills it."""
        self._staff_changed = False
        self.console: Console | None = None
        self._status_line: str | None = None
        """The STATUS= text systemd has now."""
        self._reload_note: str | None = None
        if site.console is not None:
            # aiohttp and prometheus-client load here, before a replay's clock runs: in run()
            # their 0.2 s would hand the first window half a store minute of records at 120x.
            importlib.import_module("agent.console")

    # -- records in ------------------------------------------------------------

    def sink(self, record: Record) -> None:
        """Hand a record to the locator (and a probe to the footfall count); never blocks, drops and counts when full."""
        if self.footfall is not None and isinstance(record, Observation):
            self.footfall.add(record)
        try:
            self._queue.put_nowait(record.reading() if isinstance(record, Observation) else record)
        except asyncio.QueueFull:
            self.stats.queue_dropped += 1
            if self.stats.queue_dropped in (1, 10, 100) or self.stats.queue_dropped % 10_000 == 0:
                log.warning("locator queue full: records dropped", extra={"dropped": self.stats.queue_dropped})

    def _drain_queue(self) -> tuple[list[Reading], list[CardTap]]:
        observations: list[Reading] = []
        taps: list[CardTap] = []
        while True:
            try:
                record = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return observations, taps
            if isinstance(record, CardTap):
                taps.append(record)
            elif isinstance(record, AppBeacon):
                self.locator.register_app_beacon(record.emitter_id, record.loyalty_id)
            else:
                observations.append(record)

    # -- lifecycle -------------------------------------------------------------

    async def run(self) -> int:
        for broker in (self.site.uplink, self.site.nodes):
            exposed = None if broker is None else broker.password_file_problem()
            if exposed is not None:
                log.warning(exposed)
        for warning in site_warnings(self.site):
            log.warning(warning)
        if self.site.console is not None:
            from agent.console import ConsoleError, open_console  # noqa: PLC0415 (aiohttp only when configured)

            try:
                self.console = await open_console(self.site, self.staff_board)
            except ConsoleError as exc:
                log.error("console unavailable", extra={"error": str(exc)})
                return 1
        try:
            self.outbox = Outbox.open(self.state_dir / "outbox.sqlite", self.site.buffer, self.clock)
        except OutboxError as exc:
            log.error("outbox unavailable", extra={"error": str(exc)})
            if self.console is not None:
                await self.console.stop()
            return 1
        self.stats.started = self.clock()
        self._last_status = self.stats.started
        loop = asyncio.get_running_loop()

        def staff(payload: bytes) -> None:
            loop.call_soon_threadsafe(self._staff_card, payload)

        self.uplink = Uplink(self.site.uplink, self.outbox, store_id=self.site.store.id, agent_id=self.site.agent.id,
                             on_staff=staff)
        self.uplink.start()
        self._install_signals()
        for source in self.sources:
            self._tasks.append(asyncio.create_task(self._run_source(source), name=f"source-{source.stats.name}"))
        self._store(self._status(self.clock()))
        self._status_line = self._status_text()
        self.notifier.ready(self._status_line)
        log.info("agent ready", extra=self._ready_fields())
        code = 0
        try:
            await self._window_loop()
        except OutboxError as exc:
            log.error("outbox failed; stopping", extra={"error": str(exc)})
            code = 1
        finally:
            await self._shutdown()
        return code

    async def _run_source(self, source: Source) -> None:
        try:
            await source.run(self.sink, self.stop)
        except Exception as exc:  # a source bug must not take the store down silently
            log.exception("source crashed", extra={"source": source.stats.name})
            source.stats.crash(f"crashed: {exc!r}")

    def _crashed(self) -> bool:
        """A source's thread or task died: starving the watchdog gets the unit restarted."""
        return any(source.stats.crashed for source in self.sources)

    def _sources_finished(self) -> bool:
        return all(task.done() for task in self._tasks) and self._queue.empty()

    async def _window_loop(self) -> None:
        window = self.site.tracking.window_s
        watchdog = self.notifier.watchdog_interval_s()
        last_ping = time.monotonic()
        next_t = self.clock() + window
        while not self.stop.is_set():
            delay = next_t - self.clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=min(delay / self.time_scale, 1.0))
                if self.stop.is_set():
                    break
                if self.clock() < next_t:
                    continue
            if self._reload.is_set():
                self._reload.clear()
                self._apply_reload()
            self.clock.wall_offset()
            t = self.clock()
            finished = self.stop_when_sources_finish and self._sources_finished()
            self._step(t)
            next_t = max(next_t + window, t)
            if watchdog is not None and time.monotonic() - last_ping >= watchdog and not self._crashed():
                self.notifier.watchdog()
                last_ping = time.monotonic()
            if finished:
                break

    def _step(self, t: float) -> None:
        observations, taps = self._drain_queue()
        offset = self.clock.offset
        if offset and taps:  # a tap is dated by the wall clock; the locator's time is steady
            taps = [tap.model_copy(update={"ts": tap.ts - offset}) for tap in taps]
        events = [*self.locator.window(t, observations, taps, wall_offset=offset), *self._counts(t, offset)]
        self.stats.windows += 1
        if events:
            self._store(events)
        if self.staff_board.expire(t):
            self._staff_changed = True
        if self._staff_changed:
            self._write_staff_file(t)
        if self.console is not None:
            self.console.window(t, self.locator, self.sources, self.outbox, self.uplink, self.stats.queue_dropped)
        if t - self._last_status >= self.site.agent.status_interval_s:
            self._last_status = t
            assert self.outbox is not None
            try:
                self.outbox.enforce(t)
            except OutboxFull as exc:
                log.error("outbox bounds not applied", extra={"error": str(exc)})
            self._store(self._status(t))
        if time.monotonic() - self._status_written >= STATUS_FILE_EVERY_S:
            self._write_status_file()
        self._notify_status()

    def _counts(self, t: float, offset: float) -> list[Event]:
        """The events of the estimates that finished since the last window; the ones due now, started if none runs."""
        events: list[Event] = []
        if self.counting is not None and self.counting.done():
            events = self._counted()
        if self.footfall is not None and self.counting is None:
            jobs = self.footfall.due(t, offset)
            if jobs:
                self.counting = asyncio.get_running_loop().create_task(
                    self._estimate(self.footfall, jobs), name="footfall-estimate")
        return events

    @staticmethod
    async def _estimate(stage: FootfallStage, jobs: Sequence[EstimateJob]) -> list[Event]:
        """The jobs in a worker thread (they read only their snapshots), then their events from the stage."""
        return stage.finish(await asyncio.to_thread(run_jobs, jobs))

    def _counted(self) -> list[Event]:
        """The finished estimate task's events; a failure is logged and its counts are missing, not the agent."""
        task, self.counting = self.counting, None
        assert task is not None
        try:
            return task.result()
        except Exception as exc:  # a bug in the estimator must not stop the visits and uplink
            log.exception("footfall estimate failed; its counts are missing")
            if self.footfall is not None:
                self.footfall.stats.last_error = f"estimate failed: {exc!r}"
            return []

    async def _final_counts(self, t: float) -> list[Event]:
        """At shutdown: the running estimate's events, then the hour so far, both awaited (no count is lost)."""
        events: list[Event] = []
        if self.counting is not None:
            await asyncio.wait([self.counting])
            events = self._counted()
        if self.footfall is not None:
            events.extend(await self._estimate(self.footfall, self.footfall.closing(t, self.clock.offset)))
        return events

    def _store(self, events: Sequence[Event] | AgentStatus) -> None:
        """Append to the outbox; a disk still full after evicting loses these events, logged, and the agent goes on."""
        assert self.outbox is not None
        try:
            if isinstance(events, AgentStatus):
                stored: Sequence[Event] = [self.outbox.append_status(with_outbox_figures(events))]
            else:
                stored = self.outbox.append_many(events)
        except OutboxFull as exc:
            lost = 1 if isinstance(events, AgentStatus) else len(events)
            if not self._losing or len(str(self.not_stored)) < len(str(self.not_stored + lost)):
                log.error("events not stored", extra={"error": str(exc), "lost": lost,
                                                      "lost_total": self.not_stored + lost})
            self.not_stored += lost
            self._losing = True
            return
        if self._losing:
            log.warning("outbox storing again", extra={"lost_total": self.not_stored})
            self._losing = False
        self.stats.events += len(stored)
        self._recent.extend(stored)
        if self.staff_board.follow(stored):
            self._staff_changed = True
        if self.console is not None:
            self.console.feed.stored(stored)
        if self.on_events is not None:
            self.on_events(stored)

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        self.stop.set()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, timeout=5.0)
            except TimeoutError:
                task.cancel()
        t = self.clock()
        if self.outbox is not None:
            try:
                self._step(t)
                closing = [*self.locator.close(t), *(await self._final_counts(t))]
                if closing:
                    self._store(closing)
                self._store(self._status(t, state="draining"))
            except OutboxError as exc:
                log.error("could not store the final events", extra={"error": str(exc)})
        if self.uplink is not None:
            left = self.uplink.stop(self.drain_deadline_s)
            log.info("uplink stopped", extra={"left_in_outbox": left})
        if self.console is not None:
            await self.console.stop()
        self._write_status_file()
        if self.outbox is not None:
            self.outbox_left = self.outbox.depth()
            self.outbox.close()
        self.notifier.close()

    # -- signals and reload ----------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, self.stop.set)
            loop.add_signal_handler(signal.SIGINT, self.stop.set)
            loop.add_signal_handler(signal.SIGHUP, self._reload.set)
            loop.add_signal_handler(signal.SIGUSR1, self.retry_uplink_now)
        except (NotImplementedError, RuntimeError):
            log.debug("signal handlers unavailable in this thread")

    def retry_uplink_now(self) -> None:
        """SIGUSR1 (``santi buffer drain``): reconnect now instead of at the end of the backoff wait."""
        if self.uplink is not None:
            log.info("uplink retry requested")
            self.uplink.retry_now()

    def _apply_reload(self) -> None:
        """Re-read the site config; a broken file keeps the running one."""
        path = self.site.path
        if path is None:
            return
        self.notifier.reloading()
        try:
            new = load_site(path)
        except ConfigError as exc:
            self.stats.reload_errors += 1
            log.error("reload refused, keeping the running config", extra={"error": str(exc)})
            self._reload_note = f"reload refused: {exc}"
            self._status_line = self._status_text()
            self.notifier.ready(self._status_line)
            return
        self.locator = self.locator.reconfigured(new)
        if self.footfall is not None and new.footfall is not None and new.footfall.enabled:
            self.footfall.reconfigure(new, new.footfall)
        else:
            self.footfall = _footfall_stage(new)
        self.site = new
        if self.console is not None:
            self.console.feed.reconfigured(new)
        self.stats.reloads += 1
        log.info("site config reloaded", extra={"path": str(path)})
        self._reload_note = None
        self._status_line = self._status_text()
        self.notifier.ready(self._status_line)

    # -- status ----------------------------------------------------------------

    def _status_text(self) -> str:
        """systemd's STATUS=: the sources' and the uplink's states, and a refused reload until the next good one."""
        text = status_text([source.stats for source in self.sources], None if self.uplink is None else self.uplink.state)
        return text if self._reload_note is None else f"{text}; {self._reload_note}"

    def _notify_status(self) -> None:
        """Send STATUS= when a source or the uplink changed state (``systemctl status`` shows the last one)."""
        text = self._status_text()
        if text != self._status_line:
            self._status_line = text
            self.notifier.status(text)

    def _ready_fields(self) -> dict[str, str]:
        """What the one ``agent ready`` line says: enough for store IT to see what runs, never a secret."""
        site = self.site
        uplink = site.uplink
        fields = {
            "store": site.store.id, "agent": site.agent.id,
            "sources": ",".join(source.stats.name for source in self.sources) or "none",
            "receivers": ",".join(receiver.id for receiver in site.receivers),
            "radio_map": str(site.tracking.radio_map or "none"),
            "broker": f"{uplink.host}:{uplink.port}", "tls": "yes" if uplink.tls is not None else "no",
            "state_dir": str(self.state_dir),
        }
        if site.nodes is not None:
            fields["nodes_broker"] = f"{site.nodes.host}:{site.nodes.port}"
        return fields

    def _status(self, t: float, state: str = "online") -> AgentStatus:
        """A placeholder status; ``_status_builder`` fills the outbox figures atomically."""
        sources = {s.stats.name: s.stats.status(self._rate(s)) for s in self.sources}
        if self.stats.queue_dropped:
            sources["locator-queue"] = SourceStatus(state="degraded", rate_per_s=0.0, dropped=self.stats.queue_dropped)
        if self.locator.stats.dropped:
            sources["locator"] = SourceStatus(state="up", rate_per_s=0.0, dropped=self.locator.stats.dropped.total())
        if self.footfall is not None and self.footfall.stats.dropped:
            sources["footfall"] = SourceStatus(state="up", rate_per_s=0.0, dropped=self.footfall.stats.dropped.total())
        wall = t + self.clock.offset
        return AgentStatus(
            event_id=uuid7(int(wall * 1000)), store_id=self.site.store.id, agent_id=self.site.agent.id,
            ts=utc_from_epoch(wall), subject=self.site.agent.id,
            state="draining" if state == "draining" else ("online" if self._healthy() else "degraded"),
            uptime_s=max(t - self.stats.started, 0.0), sources=sources, outbox_depth=0,
            tracks=len(self.locator.tracker),
        )

    def _rate(self, source: Source) -> float:
        name = source.stats.name
        now = self.clock()
        previous = self.stats.per_source.get(name, 0)
        self.stats.per_source[name] = source.stats.accepted
        elapsed = max(min(now - self.stats.started, self.site.agent.status_interval_s), 1e-9)
        return max(source.stats.accepted - previous, 0) / elapsed

    def _file_rate(self, source: Source) -> float:
        """Accepted per wall second since the previous status-file write (for ``santi status``)."""
        now = time.monotonic()
        then, count = self._file_counts.get(source.stats.name, (now, source.stats.accepted))
        self._file_counts[source.stats.name] = (now, source.stats.accepted)
        return (source.stats.accepted - count) / (now - then) if now > then else 0.0

    def _healthy(self) -> bool:
        return all(s.stats.state == "up" for s in self.sources) and (
            self.uplink is None or self.uplink.state in ("online", "connecting")
        )

    def _staff_card(self, payload: bytes) -> None:
        """A message on the store's staff topic, in the service's loop: a card on the board, or a counted drop."""
        first_bad = not self.staff_board.dropped.get("invalid")
        try:
            self.staff_board.receive(payload, self.clock())
        except ValueError as exc:
            if first_bad:
                log.warning("unusable message on the staff topic dropped", extra={"error": str(exc)[:200]})
        self._staff_changed = True

    def _write_staff_file(self, t: float) -> None:
        """``state_dir/staff.json`` for ``santi staff``, when the board changed."""
        if self._write_state_file("staff file", STAFF_FILE, self.staff_board.to_json(t, self.clock.offset)):
            self._staff_changed = False

    def _write_state_file(self, what: str, name: str, data: bytes) -> bool:
        """Write a file of the state folder; a full disk is one logged line per new error, never a crash."""
        path = self.state_dir / name
        try:
            write_private(path, data)
        except OSError as exc:
            message = f"{what} {path} not written: {exc.strerror}"
            if message != self._file_errors.get(name):
                log.error(message, extra={"errno": exc.errno})
            self._file_errors[name] = message
            return False
        self._file_errors.pop(name, None)
        return True

    def _write_status_file(self) -> None:
        """``state_dir/status.json`` for ``santi status``: written atomically."""
        if self.outbox is None:
            return
        stats = self.outbox.stats()
        data = {
            "store_id": self.site.store.id,
            "agent_id": self.site.agent.id,
            "updated": self.clock() + self.clock.offset,
            "uptime_s": self.clock() - self.stats.started,
            "uplink": None if self.uplink is None else {"state": self.uplink.state, "last_error": self.uplink.last_error,
                                                        "ack": self.uplink.ack_status()},
            "outbox": {"depth": stats.depth, "oldest_ts": stats.oldest_ts, "evicted_total": stats.evicted_total},
            "pid": os.getpid(),
            "sources": {s.stats.name: {"state": s.stats.state, "accepted": s.stats.accepted,
                                       "rate_per_s": self._file_rate(s),
                                       "dropped": dict(s.stats.dropped), "last_error": s.stats.last_error}
                        for s in self.sources} | {"locator": self.locator.stats.status_line()}
                       | ({} if self.footfall is None else {"footfall": self.footfall.status_line()}),
            "footfall": None if self.footfall is None else self.footfall.status(self.clock.offset),
            "last_events": [event.model_dump(mode="json", by_alias=True, include={
                "seq", "type", "ts", "subject", "sector_id", "dwell_s", "duration_s", "state", "outbox_depth",
                "method", "reader_id", "count", "count_sd", "entries", "entries_sd"}) for event in self._recent],
            "tracks": len(self.locator.tracker),
            "visits": len(self.locator.presence.visits),
            "windows": self.stats.windows,
            "events": self.stats.events,
            "queue_dropped": self.stats.queue_dropped,
            "not_stored": self.not_stored,
            "outbox_error": self.outbox.last_error,
        }
        self._status_written = time.monotonic()
        self._write_state_file("status file", "status.json", json.dumps(data, indent=2).encode())


def _footfall_stage(site: SiteConfig) -> FootfallStage | None:
    """The counting stage of ``site``, or None when ``[footfall]`` is absent or disabled."""
    if site.footfall is None or not site.footfall.enabled:
        return None
    return FootfallStage(site, site.footfall)
