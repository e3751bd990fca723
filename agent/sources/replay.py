"""A recorded session played back as a live source.

Replay files (``observations.jsonl`` and optionally ``taps.jsonl``, see
``agent.replayfile``) are handed to the sink in time order, paced at the
recording's own rhythm times ``speed`` (``speed=0``: as fast as possible).
Files from the field are not always sorted: a bounded reorder window puts
slightly late lines back in place, and a record later than the window can
repair is dropped and counted rather than handed out of order.

A replay file is input from outside like a node's message, and is checked
as one: a record stamped far from its neighbours (a clock jump) is skipped
as ``time_jump`` rather than waited for; an emitter id that is not a
pseudonym (a raw MAC) is dropped as ``not_pseudonymised`` and never
becomes a subject; bad lines are counted by their reader's reason keys.
Every drop has a counter; warnings are one per reason per minute, and a
summary closes the replay.

The clock and the sleep are injected, so tests replay an hour in no time.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path

from agent.observations import NOT_PSEUDONYMISED, CardTap, Observation, is_pseudonym
from agent.ratelimit import Throttle
from agent.replayfile import RecordReader, skip_time_jumps
from agent.sources.base import Record, Sink, SourceStats

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

REORDER_WINDOW = 4096
"""Records held back to repair small disorder; bounds memory for any file size."""

MAX_SLEEP_SLICE_S = 0.5
"""Long waits are cut into slices so a stop request is honoured promptly."""

YIELD_EVERY = 512
"""At ``speed=0`` the loop still gets a turn this often."""


def reorder(records: Iterable[Record], window: int) -> Iterator[Record]:
    """Yield ``records`` sorted by ``ts`` as far as a heap of ``window`` records allows.

    Ties keep file order. The output is sorted whenever no record is more
    than ``window`` places late; the caller checks for the rest.
    """
    heap: list[tuple[float, int, Record]] = []
    for index, record in enumerate(records):
        heapq.heappush(heap, (record.ts, index, record))
        if len(heap) > window:
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


class ReplaySource:
    """Plays ``observations`` (and ``taps``, if given) into the sink.

    ``retime=True`` shifts every timestamp so that the first record happens
    at the clock's time when the replay starts (the clock must then be
    epoch seconds, as ``time.time`` is); otherwise records keep their
    recorded times. ``run`` returns when the files are exhausted or ``stop``
    is set.
    """

    def __init__(
        self,
        observations: Path,
        taps: Path | None = None,
        *,
        speed: float = 1.0,
        retime: bool = False,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        window: int = REORDER_WINDOW,
        name: str = "replay",
    ) -> None:
        if not speed >= 0.0:
            raise ValueError("replay speed must be 0 (as fast as possible) or positive")
        if retime and speed == 0.0:
            raise ValueError("retime needs a real-time speed (> 0)")
        self._paths = [observations] + ([taps] if taps is not None else [])
        self._speed = speed
        self._retime = retime
        self._clock = clock
        self._sleep = sleep
        self._window = window
        self.stats = SourceStats(name)
        self.finished = False
        self._readers: list[RecordReader[Observation] | RecordReader[CardTap]] = []
        self._throttle = Throttle()

    def _stream(self) -> Iterator[Record]:
        observations = RecordReader(self._paths[0], Observation)
        self._readers = [observations]
        streams: list[Iterator[Record]] = [reorder(skip_time_jumps(observations, self._jump), self._window)]
        if len(self._paths) > 1:
            taps = RecordReader(self._paths[1], CardTap)
            self._readers.append(taps)
            streams.append(reorder(skip_time_jumps(taps, self._jump), self._window))
        return heapq.merge(*streams, key=lambda record: record.ts)

    def _drop(self, reason: str, record: Record, **fields: object) -> None:
        """Count a dropped record; warn once per reason per interval, with how many were held back."""
        self.stats.drop(reason, ts=record.ts, **fields)
        held = self._throttle.allow(reason, time.monotonic())
        if held is not None:
            log.warning("replay record dropped", extra={"source": self.stats.name, "reason": reason,
                                                        "ts": record.ts, "similar_since_last": held, **fields})

    def _jump(self, record: Record, median: float) -> None:
        self._drop("time_jump", record, around=median)

    def _count_bad_lines(self) -> None:
        for reader in self._readers:
            for key in reader.bad_by_key:
                self.stats.dropped[key] = sum(r.bad_by_key[key] for r in self._readers)

    async def _wait_until(self, deadline: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            remaining = deadline - self._clock()
            if remaining <= 0.0:
                return
            await self._sleep(min(remaining, MAX_SLEEP_SLICE_S))

    async def run(self, sink: Sink, stop: asyncio.Event) -> None:
        for path in self._paths:
            if not path.is_file():
                self.stats.fail(f"replay file {path} does not exist")
                return
        self.stats.up()
        start_wall = self._clock()
        first_ts: float | None = None
        last_ts = float("-inf")
        for count, record in enumerate(self._stream(), start=1):
            if stop.is_set():
                break
            self._count_bad_lines()
            if record.ts < last_ts:
                self._drop("out_of_order", record, previous=last_ts)
                continue
            if isinstance(record, Observation) and not is_pseudonym(record.emitter_id):
                self._drop(NOT_PSEUDONYMISED, record)
                continue
            last_ts = record.ts
            if first_ts is None:
                first_ts = record.ts
            offset = record.ts - first_ts
            if self._speed > 0.0:
                await self._wait_until(start_wall + offset / self._speed, stop)
                if stop.is_set():
                    break
            elif count % YIELD_EVERY == 0:
                await self._sleep(0.0)
            if self._retime:
                sink(record.model_copy(update={"ts": start_wall + offset / self._speed}))
            else:
                sink(record)
            self.stats.accepted += 1
        self._count_bad_lines()
        self.finished = not stop.is_set()
        log.info("replay ended", extra={"source": self.stats.name, "accepted": self.stats.accepted,
                                        "dropped": dict(self.stats.dropped), "finished": self.finished})
