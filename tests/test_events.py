"""Events and observations survive JSON out and in unchanged."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.events import (
    EVENT_MODELS,
    AgentStatus,
    FootfallCounted,
    OccupancySampled,
    SectorEntered,
    SourceStatus,
    VisitEnded,
    parse_event,
    status_topic,
    topic_for,
    uuid7,
)
from agent.observations import CardTap, Observation

ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,30}\Z")
names = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=40)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)  # noqa: DTZ001
).map(lambda t: t.replace(microsecond=(t.microsecond // 1000) * 1000))
finite = st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)
unit = st.floats(min_value=0, max_value=1, allow_nan=False)


def envelope() -> st.SearchStrategy[dict[str, object]]:
    return st.fixed_dictionaries({
        "event_id": st.builds(uuid7, st.integers(0, (1 << 48) - 1), st.binary(min_size=10, max_size=10)),
        "seq": st.integers(1, 2**62),
        "store_id": ids,
        "agent_id": ids,
        "ts": times,
        "subject": names,
    })


per_type: dict[str, st.SearchStrategy[dict[str, object]]] = {
    "visit.started": st.fixed_dictionaries({
        "visit_id": names, "sector_id": st.none() | ids, "tech": st.sampled_from(["ble", "wifi"])}),
    "sector.entered": st.fixed_dictionaries({"visit_id": names, "sector_id": ids, "probability": unit}),
    "sector.exited": st.fixed_dictionaries({"visit_id": names, "sector_id": ids, "dwell_s": finite}),
    "visit.ended": st.fixed_dictionaries({
        "visit_id": names, "duration_s": finite,
        "dwell_s": st.dictionaries(ids, finite, max_size=5),
        "reason": st.sampled_from(["silence", "exit", "shutdown"])}),
    "identity.linked": st.fixed_dictionaries({
        "visit_id": names, "loyalty_id": names, "method": st.sampled_from(["card_tap", "app_beacon"]),
        "confidence": unit, "reader_id": st.none() | ids}),
    "card.tapped": st.fixed_dictionaries({
        "reader_id": ids, "card": names, "known": st.booleans(), "linked": st.booleans()}),
    "agent.status": st.fixed_dictionaries({
        "uptime_s": finite,
        "sources": st.dictionaries(names, st.builds(
            SourceStatus, state=st.sampled_from(["up", "down", "degraded"]), rate_per_s=finite,
            dropped=st.integers(0, 10**9), last_error=st.none() | names), max_size=3),
        "outbox_depth": st.integers(0, 10**9), "oldest_unsent_ts": st.none() | times,
        "evicted_total": st.integers(0, 10**9), "evicted_since_last": st.integers(0, 10**9),
        "tracks": st.integers(0, 10**6), "clock_offset_s": st.none() | finite}),
    "occupancy.sampled": st.fixed_dictionaries({
        "interval_start": times, "interval_end": times, "method": st.just("probe_stays"),
        "sector_id": st.none() | ids, "count": finite, "count_sd": finite}),
    "footfall.counted": st.fixed_dictionaries({
        "interval_start": times, "interval_end": times, "method": st.just("probe_stays"),
        "entries": finite, "entries_sd": finite}),
}


@pytest.mark.parametrize("type_name", sorted(EVENT_MODELS))
@settings(max_examples=60, derandomize=True)
@given(data=st.data())
def test_every_event_type_round_trips(type_name: str, data: st.DataObject) -> None:
    fields = {**data.draw(envelope()), **data.draw(per_type[type_name])}
    if type_name in ("occupancy.sampled", "footfall.counted"):
        fields["subject"] = fields["agent_id"]
        fields["interval_start"], fields["interval_end"] = sorted([fields["interval_start"], fields["interval_end"]])
    event = EVENT_MODELS[type_name](**fields)
    wire = event.to_json()
    assert parse_event(wire) == event
    assert '"schema":"santi.presence/1"' in wire
    assert f'"type":"{type_name}"' in wire


observations = st.builds(
    Observation,
    ts=st.floats(0, 4e9, allow_nan=False),
    receiver_id=names,
    emitter_id=names,
    tech=st.sampled_from(["ble", "wifi"]),
    rssi_dbm=st.floats(-130, 0, allow_nan=False),
    tx_power_dbm=st.none() | st.floats(-100, 30, allow_nan=False),
)


@settings(max_examples=200, derandomize=True)
@given(observations)
def test_observation_round_trips(obs: Observation) -> None:
    assert Observation.model_validate_json(obs.model_dump_json()) == obs


@settings(max_examples=100, derandomize=True)
@given(observations)
def test_a_queued_reading_keeps_what_the_locator_uses_and_shares_its_ids(obs: Observation) -> None:
    reading = obs.reading()
    assert reading == (obs.ts, obs.receiver_id, obs.emitter_id, obs.tech, obs.rssi_dbm)
    again = Observation.model_validate_json(obs.model_dump_json()).reading()
    assert again.emitter_id is reading.emitter_id
    assert again.receiver_id is reading.receiver_id


@settings(max_examples=100, derandomize=True)
@given(st.builds(CardTap, ts=st.floats(0, 4e9, allow_nan=False), reader_id=names, card=names, known=st.booleans()))
def test_card_tap_round_trips(tap: CardTap) -> None:
    assert CardTap.model_validate_json(tap.model_dump_json()) == tap


@pytest.mark.parametrize("model", [OccupancySampled, FootfallCounted])
def test_an_aggregate_count_names_no_one(model: type[OccupancySampled | FootfallCounted]) -> None:
    start = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
    figures = ({"count": 3.0, "count_sd": 1.0} if model is OccupancySampled else {"entries": 12.0, "entries_sd": 2.5})
    fields = {"event_id": uuid7(), "store_id": "s", "agent_id": "a", "ts": start, "interval_start": start,
              "interval_end": start + timedelta(hours=1), "method": "probe_stays", **figures}
    assert model(subject="a", **fields).subject == "a"
    with pytest.raises(ValidationError, match="names no one"):
        model(subject="3f9a1c0b7e2d4a65", **fields)
    with pytest.raises(ValidationError, match="before interval_start"):
        model(subject="a", **{**fields, "interval_end": start - timedelta(seconds=1)})
    with pytest.raises(ValidationError):
        model(subject="a", emitter_id="3f9a1c0b7e2d4a65", **fields)
    negative = dict.fromkeys(figures, -1.0)
    with pytest.raises(ValidationError):
        model(subject="a", **{**fields, **negative})


def test_times_are_rfc3339_utc_with_z() -> None:
    paris = datetime(2026, 11, 23, 10, 0, 0, 250000, tzinfo=UTC) + timedelta(hours=0)
    event = SectorEntered(event_id=uuid7(), store_id="s", agent_id="a", ts=paris.astimezone(),
                          subject="v", visit_id="v1", sector_id="fish", probability=0.9)
    assert '"ts":"2026-11-23T10:00:00.250Z"' in event.to_json()


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        VisitEnded(event_id=uuid7(), store_id="s", agent_id="a", ts=datetime(2026, 1, 1),  # noqa: DTZ001
                   subject="v", visit_id="v", duration_s=1.0, reason="exit")


def test_unknown_type_and_extra_fields_are_refused() -> None:
    good = AgentStatus(event_id=uuid7(), seq=1, store_id="s", agent_id="a", ts=datetime.now(UTC),
                       subject="a", uptime_s=1.0, outbox_depth=0).to_json()
    with pytest.raises(ValidationError):
        parse_event(good.replace('"agent.status"', '"agent.exploded"'))
    with pytest.raises(ValidationError):
        parse_event(good[:-1] + ',"surprise":1}')
    with pytest.raises(ValidationError):
        parse_event(good.replace("santi.presence/1", "santi.presence/2"))


def test_uuid7_layout_and_order() -> None:
    first = uuid7(1_700_000_000_000, bytes(10))
    assert first.version == 7
    assert first.variant == uuid.RFC_4122
    assert first.int >> 80 == 1_700_000_000_000
    later = uuid7(1_700_000_000_001, b"\xff" * 10)
    assert later > first
    assert uuid7() != uuid7()
    with pytest.raises(ValueError, match="out of range"):
        uuid7(-1)


def test_topics() -> None:
    event = SectorEntered(event_id=uuid7(), store_id="fishmonger-01", agent_id="pi", ts=datetime.now(UTC),
                          subject="v", visit_id="v1", sector_id="fish", probability=0.9)
    assert topic_for(event) == "santi/v1/fishmonger-01/pi/events/sector.entered"
    assert status_topic("fishmonger-01", "pi") == "santi/v1/fishmonger-01/pi/status"
