"""The agent's clocks: a replay's time, the steady store time, and a wall clock that jumps for tests.

``ReplayClock``: the store's time during a replay, the recording's time
running ``speed`` times faster. The service windows on the data's own time,
so a 30-minute recording replayed at 30x still yields 30-minute visits and
real dwell times.

``SteadyClock``: what windows, visit durations and the outbox's age bound
run on. It starts at the wall time and then advances only with a monotonic
clock, so a wall-clock jump (a Pi without RTC setting its clock from 1970
when NTP answers, an operator turning it back an hour) neither freezes the
window loop nor stretches a visit to 56 years nor ages the outbox. The wall
clock is read only for timestamps: an event dated at steady time ``t`` is
stamped ``t + wall_offset()``, so events are dated by the corrected clock as
soon as it is corrected, and each jump is logged once.

``SANTI_TEST_WALL_CLOCK`` (tests only; unset in production): makes the wall
clock jump during a real ``santi run``, as ``BEFORE,AFTER_S,AFTER``: the wall
clock reads ``clock() + BEFORE`` until ``AFTER_S`` seconds of the steady
clock have passed, then ``clock() + AFTER``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from agent.observations import Observation
from agent.replayfile import RecordReader, ReplayFileError, skip_time_jumps

log = logging.getLogger(__name__)

Clock = Callable[[], float]

JUMP_S = 2.0
"""A change of wall minus steady time larger than this between two readings is a jump, not NTP slewing."""

TEST_WALL_CLOCK_ENV = "SANTI_TEST_WALL_CLOCK"


class ReplayClock:
    """``now() = first_ts + (monotonic - start) * speed``; started by the first call to ``start``."""

    def __init__(self, first_ts: float, speed: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        if not speed > 0:
            raise ValueError("replay speed must be positive")
        self.first_ts = first_ts
        self.speed = speed
        self._monotonic = monotonic
        self._start = monotonic()

    def start(self) -> None:
        self._start = self._monotonic()

    def __call__(self) -> float:
        return self.first_ts + (self._monotonic() - self._start) * self.speed


def first_timestamp(path: Path) -> float:
    """Time of the first good observation in a replay file (clock jumps skipped, as the replay skips them).

    `ReplayFileError` (exit 2, the file and its first bad line) when the file has none.
    """
    reader = RecordReader(path, Observation)
    try:
        for record in skip_time_jumps(reader, lambda _record, _median: None):
            return record.ts
    except OSError as exc:
        raise ReplayFileError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    raise reader.nothing_to_replay("observation")


class SteadyClock:
    """``origin + (monotonic() - start)``: store time that never jumps; ``wall_offset`` dates events."""

    def __init__(self, wall: Clock = time.time, monotonic: Clock = time.monotonic, jump_s: float = JUMP_S) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._start = monotonic()
        self.origin = wall()
        self.jump_s = jump_s
        self.offset = 0.0
        """Wall minus steady time at the last ``wall_offset`` call."""
        self.jumps = 0

    def __call__(self) -> float:
        return self.origin + (self._monotonic() - self._start)

    def wall_offset(self) -> float:
        """Wall minus steady time now; a change of more than ``jump_s`` since the last call is logged once."""
        offset = self._wall() - self()
        if abs(offset - self.offset) > self.jump_s:
            self.jumps += 1
            log.warning("wall clock jumped: timestamps follow it, durations and windows do not",
                        extra={"jump_s": round(offset - self.offset, 3), "wall_offset_s": round(offset, 3),
                               "jumps": self.jumps})
        self.offset = offset
        return offset


class JumpingClock:
    """A wall clock ``base() + before`` that becomes ``base() + after`` once ``after_s`` steady seconds passed."""

    def __init__(self, base: Clock, before: float, after_s: float, after: float, steady: Clock) -> None:
        self._base = base
        self._steady = steady
        self._switch = steady() + after_s
        self.before = before
        self.after = after

    def __call__(self) -> float:
        return self._base() + (self.before if self._steady() < self._switch else self.after)


def wall_clock_for_tests(base: Clock, steady: Clock) -> Clock:
    """``base``, or a ``JumpingClock`` as ``SANTI_TEST_WALL_CLOCK`` describes (a bad value is one-line error)."""
    spec = os.environ.get(TEST_WALL_CLOCK_ENV)
    if not spec:
        return base
    try:
        before, after_s, after = (float(part) for part in spec.split(","))
    except ValueError:
        raise ValueError(f"{TEST_WALL_CLOCK_ENV}={spec!r}: expected BEFORE,AFTER_S,AFTER (three numbers)") from None
    log.warning("test wall clock in use", extra={"spec": spec})
    return JumpingClock(base, before, after_s, after, steady)
