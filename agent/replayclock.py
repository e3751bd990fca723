"""The store's time during a replay: the recording's time, running ``speed`` times faster.

The service windows on the data's own time, so a 30-minute recording
replayed at 30x still yields 30-minute visits and real dwell times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from agent.observations import Observation
from agent.replayfile import RecordReader, skip_time_jumps


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

    def wall_time_of(self, ts: float) -> float:
        """Seconds of real time from the start until the data reaches ``ts``."""
        return (ts - self.first_ts) / self.speed


def first_timestamp(path: Path) -> float:
    """Time of the first good observation in a replay file (clock jumps skipped, as the replay skips them)."""
    for record in skip_time_jumps(RecordReader(path, Observation), lambda _record, _median: None):
        return record.ts
    raise ValueError(f"{path}: no observation in the file")
