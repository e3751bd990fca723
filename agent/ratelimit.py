"""Warnings that cannot flood the journal: one line per reason per interval, the rest counted.

A hostile or broken input can repeat a million times (408k bad lines in one
replay file, a street full of advertisers): logging each would fill the
disk and hide everything else. ``Throttle`` lets the first occurrence of a
reason through, then at most one line per ``interval_s``, each carrying how
many were held back since the previous one; ``summary`` gives the totals.
Time is passed in, so the pure locator can use it with its window time.
"""

from __future__ import annotations

from collections import Counter

DEFAULT_INTERVAL_S = 60.0


class Throttle:
    """Decides which occurrences of a reason are logged; counts all of them."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.total: Counter[str] = Counter()
        self._held: Counter[str] = Counter()
        self._last: dict[str, float] = {}

    def allow(self, reason: str, now: float) -> int | None:
        """Count one occurrence; None to stay quiet, else how many were held back before this one."""
        self.total[reason] += 1
        last = self._last.get(reason)
        if last is not None and 0.0 <= now - last < self.interval_s:
            self._held[reason] += 1
            return None
        self._last[reason] = now
        return self._held.pop(reason, 0)

    def summary(self) -> dict[str, int]:
        """Every reason seen and how often, for a closing log line."""
        return dict(self.total)
