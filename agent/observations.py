"""What sources produce: an RSSI heard at a receiver, or a card read at a reader.

These are normalised at the radio edge: ids are already pseudonymised, times
are float epoch seconds (UTC) so the pure core can do arithmetic on them
without touching a clock.
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

Tech = Literal["ble", "wifi"]

EpochSeconds = Annotated[
    float,
    Field(ge=0.0, lt=32503680000.0, description="UTC epoch seconds (float)."),
]


class Observation(BaseModel):
    """One RSSI reading of one emitter at one receiver."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ts: EpochSeconds
    receiver_id: str = Field(min_length=1, max_length=128)
    emitter_id: str = Field(
        min_length=1, max_length=128, description="Pseudonymised id of the emitter."
    )
    tech: Tech
    rssi_dbm: float = Field(ge=-130.0, le=20.0, description="Received power, dBm.")
    tx_power_dbm: float | None = Field(
        default=None, ge=-100.0, le=30.0, description="Advertised TX power (or measured power at 1 m), if any."
    )

    @field_validator("ts", "rssi_dbm", "tx_power_dbm")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    def reading(self) -> Reading:
        """What the locator keeps of this observation while its window fills."""
        return Reading(self.ts, sys.intern(self.receiver_id), sys.intern(self.emitter_id), self.tech, self.rssi_dbm)


class Reading(NamedTuple):
    """A validated observation, as the agent queues it for the next window.

    A window of a busy store holds tens of thousands (1,000 phones heard by
    7 receivers: ~19,000 a second). The pydantic model costs ~1,160 bytes
    each, this tuple ~100 with its ids interned (tracemalloc): queuing these
    took the peak RSS of ``santi run`` at 1,000 tracked emitters from 128 to
    98 MB (``benchmarks/agent.py``).
    """

    ts: float
    receiver_id: str
    emitter_id: str
    tech: Tech
    rssi_dbm: float


class CardTap(BaseModel):
    """One card presented at one NFC reader."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ts: EpochSeconds
    reader_id: str = Field(min_length=1, max_length=128)
    card: str = Field(
        min_length=1,
        max_length=128,
        description="Loyalty id from the card's NDEF record, or the pseudonymised UID of an unknown card.",
    )
    known: bool = Field(default=True, description="True when the card carried one of our loyalty ids.")

    @field_validator("ts")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class AppBeacon(BaseModel):
    """The loyalty app announced who it is: its emitter carries this customer's loyalty id.

    The customer opted in by installing the app, so the loyalty id is sent
    as is, like a presented card. Sources emit one per emitter per salt period.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ts: EpochSeconds
    emitter_id: str = Field(min_length=1, max_length=128)
    loyalty_id: str = Field(min_length=1, max_length=128)
