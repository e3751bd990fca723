"""The presence events: the only thing HQ ever sees of a store.

One frozen, versioned envelope and one model per event type. The agent, the
simulator and HQ all build and read events through these models, and the JSON
Schema shipped in ``docs/schema/`` is generated from them
(``python -m agent.schema``), so a consumer in any language validates against
exactly what the agent emits.

Times are aware UTC datetimes, written as RFC 3339 with a ``Z``. Event ids are
UUIDv7, so they sort by creation time and index well at HQ.
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    field_validator,
    model_validator,
)

SCHEMA_VERSION: Literal["santi.presence/1"] = "santi.presence/1"

EventType = Literal[
    "visit.started",
    "sector.entered",
    "sector.exited",
    "visit.ended",
    "identity.linked",
    "card.tapped",
    "agent.status",
    "occupancy.sampled",
    "footfall.counted",
]

AGGREGATE_TYPES: frozenset[str] = frozenset({"agent.status", "occupancy.sampled", "footfall.counted"})
"""Events about no person: their subject is the agent id, so HQ keeps them out of profiles and erasure."""


def uuid7(unix_ms: int | None = None, rand: bytes | None = None) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then 74 random bits.

    ``unix_ms`` is passed in by callers that must stay clock-free (the
    presence logic uses the event's own time); ``rand`` makes tests exact.
    """
    if unix_ms is None:
        unix_ms = int(datetime.now(UTC).timestamp() * 1000)
    if not 0 <= unix_ms < 1 << 48:
        raise ValueError(f"uuid7 timestamp out of range: {unix_ms}")
    tail = rand if rand is not None else os.urandom(10)
    if len(tail) != 10:
        raise ValueError("uuid7 needs exactly 10 random bytes")
    value = (unix_ms << 80) | int.from_bytes(tail, "big")
    value &= ~(0xF << 76)
    value |= 0x7 << 76  # version
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # RFC 4122 variant
    return uuid.UUID(int=value)


def _rfc3339(value: datetime) -> str:
    text = value.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


UtcTime = Annotated[
    AwareDatetime,
    PlainSerializer(_rfc3339, return_type=str, when_used="json"),
    Field(description="RFC 3339 time in UTC, e.g. 2026-11-23T09:14:03.250Z."),
]

Identifier = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"),
]

Epoch = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]

# Bounds: every field HQ stores has a size it can index and a value its columns
# hold (BIGINT, finite DOUBLE), so a schema-valid event is always storable.
MAX_TEXT = 128
MAX_ERROR = 500
MAX_SECTORS = 256
MAX_SOURCES = 64
MAX_INT = 2**63 - 1

Text = Annotated[
    str,
    Field(min_length=1, max_length=MAX_TEXT, pattern=r"^[^\x00-\x1f\x7f]+$"),
]
"""A free-form id (visit, pseudonym, loyalty id): bounded, printable, no control characters."""

Count = Annotated[int, Field(ge=0, le=MAX_INT)]
"""A counter or seq: fits a signed 64-bit column."""

Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
"""A finite, non-negative duration."""


def _one_line(value: object) -> object:
    """An error message as one printable line of at most MAX_ERROR characters.

    Agents report whatever an exception said; cutting it here keeps a long or
    multi-line message from making the agent's own status invalid.
    """
    if isinstance(value, str):
        line = next((part for part in value.splitlines() if part.strip()), "")
        return re.sub(r"[\x00-\x1f\x7f]", " ", line)[:MAX_ERROR]
    return value


ErrorText = Annotated[
    str, BeforeValidator(_one_line), Field(max_length=MAX_ERROR, pattern=r"^[^\x00-\x1f\x7f]*$"),
]

AckMode = Literal["hq", "broker"]


def utc_from_epoch(ts: float) -> datetime:
    """The aware UTC datetime of an epoch-seconds timestamp (observations' time base)."""
    return datetime.fromtimestamp(ts, tz=UTC)


class BaseEvent(BaseModel):
    """The envelope every event carries."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)

    schema_: Literal["santi.presence/1"] = Field(
        default=SCHEMA_VERSION,
        alias="schema",
        description="Schema name and major version; a consumer rejects versions it does not know.",
    )
    event_id: uuid.UUID = Field(
        description="UUIDv7, unique per event; HQ deduplicates on it.",
    )
    seq: int = Field(
        default=0,
        ge=0,
        le=MAX_INT,
        description=(
            "Per-agent sequence number, gap-free from 1 and surviving restarts, assigned "
            "by the agent's outbox when the event is stored; HQ detects loss on its gaps. "
            "0 only on an event that has not been stored yet, never on the wire."
        ),
    )
    store_id: Identifier = Field(description="The store, as in the site config.")
    agent_id: Identifier = Field(description="The agent that produced the event.")
    epoch: Epoch | None = Field(
        default=None,
        description=(
            "The outbox's epoch: a random id drawn when the agent's outbox is created, new whenever "
            "the outbox starts again from seq 1 (a corrupt file moved aside, a reinstall). ``seq`` is "
            "unique within (agent_id, epoch); HQ acknowledges per epoch. Assigned with ``seq``; "
            "absent only on an event not stored yet and on events of agents older than the field."
        ),
    )
    ts: UtcTime = Field(description="When the event happened at the store.")
    subject: Text = Field(
        description=(
            "Pseudonymous visitor id (keyed hash, rotates with the store's salt). "
            "For agent.status, occupancy.sampled and footfall.counted, the agent id: they are about no person."
        ),
    )

    @field_validator("ts")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def to_json(self) -> str:
        """The wire form: compact JSON, field names as in the schema."""
        return self.model_dump_json(by_alias=True)


class VisitStarted(BaseEvent):
    """A shopper's device was first seen inside the store (a new visit)."""

    type: Literal["visit.started"] = Field(default="visit.started", description="Event type; also the last topic level.")
    visit_id: Text = Field(description="Id of this visit, shared by all its events.")
    sector_id: Identifier | None = Field(
        default=None, description="Sector where the visit was first located, if known yet."
    )
    tech: Literal["ble", "wifi"] = Field(description="Radio the visitor was heard on.")


class SectorEntered(BaseEvent):
    """The visitor's most likely sector became this one (after hysteresis)."""

    type: Literal["sector.entered"] = Field(default="sector.entered", description="Event type; also the last topic level.")
    visit_id: Text = Field(description="The visit this event belongs to.")
    sector_id: Identifier = Field(description="Sector id, as in the site config.")
    probability: float = Field(ge=0.0, le=1.0, description="Posterior probability of the sector.")


class SectorExited(BaseEvent):
    """The visitor left a sector; ``dwell_s`` is the time spent in it."""

    type: Literal["sector.exited"] = Field(default="sector.exited", description="Event type; also the last topic level.")
    visit_id: Text = Field(description="The visit this event belongs to.")
    sector_id: Identifier = Field(description="Sector id, as in the site config.")
    dwell_s: Seconds = Field(description="Seconds between sector.entered and this exit.")


class VisitEnded(BaseEvent):
    """A visit closed: by silence, or by passing the entrance outward."""

    type: Literal["visit.ended"] = Field(default="visit.ended", description="Event type; also the last topic level.")
    visit_id: Text = Field(description="The visit this event belongs to.")
    duration_s: Seconds = Field(description="Seconds from visit.started to the end.")
    dwell_s: dict[Identifier, Seconds] = Field(
        default_factory=dict,
        max_length=MAX_SECTORS,
        description="Seconds spent per sector id during the visit (one entry per sector).",
    )
    reason: Literal["silence", "exit", "shutdown"] = Field(
        description="Why the visit was closed."
    )


class IdentityLinked(BaseEvent):
    """A visit is linked to a loyalty id the customer presented; nothing sent is rewritten."""

    type: Literal["identity.linked"] = Field(default="identity.linked", description="Event type; also the last topic level.")
    visit_id: Text = Field(description="The visit now linked to the loyalty id.")
    loyalty_id: Text = Field(description="As presented by the customer.")
    method: Literal["card_tap", "app_beacon"] = Field(description="How the link was made.")
    confidence: float = Field(
        ge=0.0, le=1.0, description="Probability the link is right (lower when several shoppers were near the reader)."
    )
    reader_id: Identifier | None = Field(default=None, description="NFC reader of a card_tap link.")


class CardTapped(BaseEvent):
    """A card was read at an NFC reader; ``subject`` is the card's own pseudonym."""

    type: Literal["card.tapped"] = Field(default="card.tapped", description="Event type; also the last topic level.")
    reader_id: Identifier = Field(description="NFC reader id, as in the site config.")
    card: Text = Field(
        description="Loyalty id from the card's NDEF record, or the pseudonymised UID of an unknown card.",
    )
    known: bool = Field(description="True when the card carried one of our loyalty ids.")
    linked: bool = Field(description="True when an identity.linked event was emitted for this tap.")


class SourceStatus(BaseModel):
    """Health of one observation source over the last status period."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    state: Literal["up", "down", "degraded"] = Field(default="up", description="Whether the source is delivering.")
    rate_per_s: float = Field(ge=0.0, description="Observations (or taps) per second.")
    dropped: Count = Field(description="Inputs dropped since start (malformed, not allowed, queue full).")
    last_error: ErrorText | None = Field(
        default=None, description=f"The last error, its first line cut to {MAX_ERROR} characters, if any."
    )


class AgentStatus(BaseEvent):
    """Periodic health of the agent; also how the outbox reports evicted events."""

    type: Literal["agent.status"] = Field(default="agent.status", description="Event type; also the last topic level.")
    state: Literal["online", "degraded", "draining"] = Field(default="online", description="Agent health.")
    uptime_s: Seconds = Field(description="Seconds since the agent started.")
    sources: dict[Text, SourceStatus] = Field(
        default_factory=dict, max_length=MAX_SOURCES, description="Health per source name."
    )
    outbox_depth: Count = Field(description="Events stored and not yet acknowledged by the broker.")
    oldest_unsent_ts: UtcTime | None = Field(default=None, description="Time of the oldest stored event.")
    evicted_total: Count = Field(default=0, description="Events dropped by outbox bounds since the outbox was created.")
    evicted_since_last: Count = Field(
        default=0, description="Events dropped by outbox bounds since the previous agent.status."
    )
    tracks: Count = Field(default=0, description="Emitters currently tracked.")
    last_seq: Count = Field(
        default=0,
        description=(
            "The highest seq this agent's outbox has assigned in its epoch (this event's own seq "
            "included), so HQ sees losses past the last event it received."
        ),
    )
    first_held_seq: Count = Field(
        default=0,
        description=(
            "The lowest seq still in the agent's outbox when this status was stored (this event's "
            "own seq when nothing older is left). Every seq below it has left the outbox, "
            "acknowledged by HQ or evicted by a bound, and will never be sent again: HQ counts "
            "the ones it lacks as lost and acknowledges past them. 0 from agents older than the field."
        ),
    )
    ack_mode: AckMode = Field(
        default="hq",
        description=(
            "When the agent deletes an event from its outbox: 'hq' once HQ has acknowledged it "
            "as committed (santi/v1/<store>/<agent>/ack), 'broker' at the broker's PUBACK (weaker: "
            "a broker restart or an absent subscriber can lose acknowledged events)."
        ),
    )
    clock_offset_s: float | None = Field(default=None, description="Clock offset to a reference, if known.")


CountMethod = Literal["probe_stays", "probe_places"]
"""How a count was made: ``probe_stays``, eqs. (37)-(39) of positioning/occupancy.py over anonymous Wi-Fi probes;
``probe_places``, a sector's share of that count by where eq. (41) places the devices two or more receivers hear (42)."""

Estimate = Annotated[float, Field(ge=0.0, le=1e9, allow_inf_nan=False)]
"""An estimated number of people: finite, not negative (a fraction is an expectation)."""


class _AggregateEvent(BaseEvent):
    """A count over an interval of the store's time: names no person and no device.

    Only counts leave the store (issue 19): the subject is the agent id, and
    no field can carry a pseudonym, so the model refuses any other subject.
    """

    interval_start: UtcTime = Field(description="Start of the interval the figures are about.")
    interval_end: UtcTime = Field(description="End of the interval the figures are about.")
    method: CountMethod = Field(
        description="How the figures were estimated: 'probe_stays', anonymous Wi-Fi probe requests grouped into "
                    "stays, fixtures and passers-by set aside (positioning/occupancy.py, eqs. 37-39); 'probe_places', "
                    "a sector's share of that count, by where the devices two or more receivers hear are (eqs. 41-42).")

    @field_validator("interval_start", "interval_end")
    @classmethod
    def _interval_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _names_no_one(self) -> _AggregateEvent:
        if self.subject != self.agent_id:
            raise ValueError("an aggregate count names no one: its subject must be the agent id")
        if self.interval_end < self.interval_start:
            raise ValueError("interval_end is before interval_start")
        return self


class OccupancySampled(_AggregateEvent):
    """People inside the store (or one sector) at the end of the interval, sampled every interval."""

    type: Literal["occupancy.sampled"] = Field(
        default="occupancy.sampled", description="Event type; also the last topic level.")
    sector_id: Identifier | None = Field(
        default=None, description="The sector counted, as in the site config; null for the whole store.")
    count: Estimate = Field(description="People estimated inside at interval_end.")
    count_sd: Estimate = Field(description="Standard deviation of ``count`` (one sigma), persons.")


class FootfallCounted(_AggregateEvent):
    """People who came into the store over one hour (interval_start is the whole hour)."""

    type: Literal["footfall.counted"] = Field(
        default="footfall.counted", description="Event type; also the last topic level.")
    entries: Estimate = Field(description="People estimated to have entered during the interval.")
    entries_sd: Estimate = Field(description="Standard deviation of ``entries`` (one sigma), persons.")


Event = Annotated[
    VisitStarted
    | SectorEntered
    | SectorExited
    | VisitEnded
    | IdentityLinked
    | CardTapped
    | AgentStatus
    | OccupancySampled
    | FootfallCounted,
    Field(discriminator="type"),
]

EVENT_MODELS: dict[str, type[BaseEvent]] = {
    "visit.started": VisitStarted,
    "sector.entered": SectorEntered,
    "sector.exited": SectorExited,
    "visit.ended": VisitEnded,
    "identity.linked": IdentityLinked,
    "card.tapped": CardTapped,
    "agent.status": AgentStatus,
    "occupancy.sampled": OccupancySampled,
    "footfall.counted": FootfallCounted,
}

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(payload: str | bytes) -> Event:
    """Parse and validate one event from its JSON wire form.

    Raises ``pydantic.ValidationError`` for anything that is not a valid
    event of a known type; callers turn that into a counted drop.
    """
    return _EVENT_ADAPTER.validate_json(payload)


def topic_for(event: Event) -> str:
    """The MQTT topic of an event: ``santi/v1/<store>/<agent>/events/<type>``."""
    return f"santi/v1/{event.store_id}/{event.agent_id}/events/{event.type}"


class Ack(BaseModel):
    """HQ's acknowledgement to one agent: everything up to ``seq`` in ``epoch`` is committed at HQ.

    Published retained with QoS 1 on :func:`ack_topic`. ``seq`` is the highest
    *contiguous* seq HQ has finished with (stored, or stored as a dead letter),
    so an agent may delete every outbox row of that epoch with a seq at or below it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["santi.ack/1"] = Field(default="santi.ack/1", alias="schema", description="Schema name and major version.")
    store_id: Identifier = Field(description="The store, as in the agent's events.")
    agent_id: Identifier = Field(description="The agent acknowledged.")
    epoch: Epoch = Field(description="The outbox epoch the seq belongs to.")
    seq: int = Field(ge=0, le=MAX_INT, description="Highest contiguous seq committed at HQ in this epoch.")
    ts: UtcTime = Field(description="When HQ published this acknowledgement.")

    def to_json(self) -> str:
        """The wire form: compact JSON, field names as in the schema."""
        return self.model_dump_json(by_alias=True)


def ack_topic(store_id: str, agent_id: str) -> str:
    """The retained topic where HQ acknowledges an agent's committed events."""
    return f"santi/v1/{store_id}/{agent_id}/ack"


def status_topic(store_id: str, agent_id: str) -> str:
    """The retained online/offline topic of an agent (the last will goes here)."""
    return f"santi/v1/{store_id}/{agent_id}/status"
