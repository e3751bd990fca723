"""What sources produce: an RSSI heard at a receiver, or a card read at a reader.

These are normalised at the radio edge: ids are already pseudonymised, times
are float epoch seconds (UTC) so the pure core can do arithmetic on them
without touching a clock.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from agent.privacy import PSEUDONYM_HEX

Tech = Literal["ble", "wifi"]

RSSI_MIN_DBM = -130.0
"""Below any receiver's noise floor (BLE radios report down to about -105 dBm; -127 means "not available")."""

RSSI_MAX_DBM = 0.0
"""The highest received power that can be real.

A phone radiates at most +10 dBm over BLE (most advertise at 0 to +8) and
+20 dBm over Wi-Fi; even pressed against the antenna the coupling loses
well over 10 dB, and a receiver's front end saturates near -10 dBm. So no
reading above 0 dBm is a measurement: it is a firmware artefact (HCI's 127
"not available", a signed byte read as unsigned, the +42 dBm seen in real
recordings). No margin above 0: a reading that close to saturation carries
no distance information the path-loss model (clamped at its minimum
distance) could use, so dropping it loses nothing.
"""

IMPOSSIBLE_RSSI = "impossible_rssi"
"""The drop reason (and validation error type) of a reading above ``RSSI_MAX_DBM``, on every path."""

NOT_PSEUDONYMISED = "not_pseudonymised"
"""The drop reason of an observation whose emitter id could be a raw MAC or UUID."""

_PSEUDONYM = re.compile(rf"[0-9a-f]{{{PSEUDONYM_HEX}}}")


def is_pseudonym(emitter_id: str) -> bool:
    """True for an id that ``Pseudonymizer`` could have made; a raw MAC, UUID or name is not.

    Every path that takes emitter ids from outside (Santi node batches,
    replay files) checks this, so no raw identifier can become a subject.
    """
    return _PSEUDONYM.fullmatch(emitter_id) is not None


def rssi_problem(rssi_dbm: float) -> str | None:
    """Why a reading cannot be used (``bad_rssi``, ``impossible_rssi``), or None.

    The one RSSI check: the ``Observation`` model applies it, and sources
    that look at a reading before building one (to skip pseudonymising
    garbage) call it directly, so every path drops the same readings under
    the same reason.
    """
    if not math.isfinite(rssi_dbm) or rssi_dbm < RSSI_MIN_DBM:
        return "bad_rssi"
    if rssi_dbm > RSSI_MAX_DBM:
        return IMPOSSIBLE_RSSI
    return None


def drop_reason(error: ValidationError, default: str) -> str:
    """The counter key for a record that failed validation: ``impossible_rssi`` if that was why, else ``default``."""
    if any(item["type"] == IMPOSSIBLE_RSSI for item in error.errors()):
        return IMPOSSIBLE_RSSI
    return default

EpochSeconds = Annotated[
    float,
    Field(ge=0.0, lt=32503680000.0, description="UTC epoch seconds (float)."),
]


class ProbeFields(BaseModel):
    """What links the probe bursts of one phone across MAC changes: numbers and a keyed pseudonym only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sequence: int | None = Field(default=None, ge=0, le=4095,
                                 description="802.11 sequence number, or null when the frame had none.")
    signature: str = Field(min_length=1, max_length=128,
                           description="Keyed pseudonym of the element signature: equal for phones of one model and OS.")
    randomised: bool = Field(description="Locally administered MAC (the phone made it up).")


class Observation(BaseModel):
    """One RSSI reading of one emitter at one receiver."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ts: EpochSeconds
    receiver_id: str = Field(min_length=1, max_length=128)
    emitter_id: str = Field(
        min_length=1, max_length=128, description="Pseudonymised id of the emitter."
    )
    tech: Tech
    rssi_dbm: float = Field(ge=RSSI_MIN_DBM, description="Received power, dBm.",
                            json_schema_extra={"maximum": RSSI_MAX_DBM})
    tx_power_dbm: float | None = Field(
        default=None, ge=-100.0, le=30.0, description="Advertised TX power (or measured power at 1 m), if any."
    )
    probe: ProbeFields | None = Field(
        default=None, description="A Wi-Fi probe request's linking keys (agent.probe_keys), for the occupancy count.")

    @field_validator("ts", "rssi_dbm", "tx_power_dbm")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("rssi_dbm")
    @classmethod
    def _possible(cls, value: float) -> float:
        if rssi_problem(value) == IMPOSSIBLE_RSSI:
            raise PydanticCustomError(IMPOSSIBLE_RSSI, "RSSI {rssi} dBm is above the physical maximum of {limit} dBm",
                                      {"rssi": value, "limit": RSSI_MAX_DBM})
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
