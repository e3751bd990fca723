"""The one small interface every source implements, and its counters."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from agent.events import SourceStatus
from agent.observations import AppBeacon, CardTap, Observation

log = logging.getLogger(__name__)

Record = Observation | CardTap | AppBeacon
Sink = Callable[[Record], None]
"""Where a source hands each record; must not block (the service's bounded queue)."""

SourceState = Literal["up", "down", "degraded"]


@dataclass
class SourceStats:
    """Counters a source keeps for ``agent.status`` and ``santi status``."""

    name: str
    state: SourceState = "down"
    accepted: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None
    crashed: bool = False
    """A thread or task of this source died: it will not come back by itself, so the
    service stops feeding the systemd watchdog and the unit gets restarted."""

    def drop(self, reason: str, **fields: object) -> None:
        """Count a dropped input by reason and log it (debug: drops can be frequent)."""
        self.dropped[reason] += 1
        log.debug("input dropped", extra={"source": self.name, "reason": reason, **fields})

    def fail(self, message: str) -> None:
        """The hardware went away: one line, logged once per state change."""
        if self.state != "down" or self.last_error != message:
            log.warning("source down", extra={"source": self.name, "error": message})
        self.state = "down"
        self.last_error = message

    def crash(self, message: str) -> None:
        """A thread or task of the source died: down for good, logged with the cause."""
        log.error("source crashed", extra={"source": self.name, "error": message})
        self.crashed = True
        self.state = "down"
        self.last_error = message

    def up(self) -> None:
        if self.crashed:
            return
        if self.state != "up":
            log.info("source up", extra={"source": self.name})
        self.state = "up"

    def status(self, rate_per_s: float) -> SourceStatus:
        return SourceStatus(state=self.state, rate_per_s=rate_per_s,
                            dropped=sum(self.dropped.values()), last_error=self.last_error)


class Source(Protocol):
    """A running source: ``run`` until ``stop`` is set, handing records to ``sink``."""

    stats: SourceStats

    async def run(self, sink: Sink, stop: asyncio.Event) -> None: ...
