"""HQ for tests: a hand-checked synthetic stream, the PostgreSQL fixtures, an agent's publisher and HQ's wiring."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.events import (
    AgentStatus,
    CardTapped,
    Event,
    IdentityLinked,
    SectorEntered,
    SectorExited,
    VisitEnded,
    VisitStarted,
    topic_for,
    uuid7,
)
from agent.localbroker import Broker
from hq.ingest import Accepted, Rejected, decode

NOW = datetime(2026, 3, 15, tzinfo=UTC)


def make(model: type[Event], ts: str, store: str, agent: str, subject: str, **fields: Any) -> Event:
    when = at(ts)
    rand = random.Random(f"{ts}{store}{subject}{model.__name__}{sorted(fields.items())}").randbytes(10)
    return model.model_validate({"event_id": uuid7(int(when.timestamp() * 1000), rand), "ts": when,
                                 "store_id": store, "agent_id": agent, "subject": subject, **fields})


def fixed_stream() -> list[Event]:
    """L1 has four visits in two stores (one open), plus an unlinked visitor; see the hand figures."""
    s1, a1, s2, a2 = "s1", "a1", "s2", "a2"
    return with_seqs([
        # V0, long ago (outside the last 30 days), store s2.
        make(VisitStarted, "2026-01-10T12:00:00Z", s2, a2, "sz", visit_id="v0", tech="ble"),
        make(IdentityLinked, "2026-01-10T12:05:00Z", s2, a2, "sz", visit_id="v0", loyalty_id="L1",
             method="app_beacon", confidence=0.9),
        make(VisitEnded, "2026-01-10T12:20:00Z", s2, a2, "sz", visit_id="v0", duration_s=1200.0,
             dwell_s={"fish": 1200.0}, reason="exit"),
        # V1, store s1, linked by a card tap.
        make(VisitStarted, "2026-03-02T10:00:00Z", s1, a1, "sa", visit_id="v1", tech="ble"),
        make(SectorEntered, "2026-03-02T10:01:00Z", s1, a1, "sa", visit_id="v1", sector_id="fish", probability=0.9),
        make(SectorExited, "2026-03-02T10:06:00Z", s1, a1, "sa", visit_id="v1", sector_id="fish", dwell_s=300.0),
        make(SectorEntered, "2026-03-02T10:06:00Z", s1, a1, "sa", visit_id="v1", sector_id="deli", probability=0.8),
        make(CardTapped, "2026-03-02T10:07:00Z", s1, a1, "card-x", reader_id="till", card="L1", known=True,
             linked=True),
        make(IdentityLinked, "2026-03-02T10:07:00Z", s1, a1, "sa", visit_id="v1", loyalty_id="L1",
             method="card_tap", confidence=0.95, reader_id="till"),
        make(SectorExited, "2026-03-02T10:08:00Z", s1, a1, "sa", visit_id="v1", sector_id="deli", dwell_s=120.0),
        make(VisitEnded, "2026-03-02T10:10:00Z", s1, a1, "sa", visit_id="v1", duration_s=600.0,
             dwell_s={"fish": 300.0, "deli": 120.0, "entrance": 180.0}, reason="exit"),
        # V2, store s1.
        make(VisitStarted, "2026-03-05T18:00:00Z", s1, a1, "sb", visit_id="v2", tech="wifi"),
        make(IdentityLinked, "2026-03-05T18:01:00Z", s1, a1, "sb", visit_id="v2", loyalty_id="L1",
             method="app_beacon", confidence=0.7),
        make(VisitEnded, "2026-03-05T18:15:00Z", s1, a1, "sb", visit_id="v2", duration_s=900.0,
             dwell_s={"deli": 600.0, "bakery": 300.0}, reason="silence"),
        # An unlinked visitor in s1 the same evening.
        make(VisitStarted, "2026-03-05T18:02:00Z", s1, a1, "anon", visit_id="v3", tech="ble"),
        make(VisitEnded, "2026-03-05T18:04:00Z", s1, a1, "anon", visit_id="v3", duration_s=120.0,
             dwell_s={"fish": 120.0}, reason="exit"),
        make(AgentStatus, "2026-03-05T18:05:00Z", s1, a1, a1, uptime_s=10.0, outbox_depth=0),
        # V3, store s2, still open: no visit.ended.
        make(VisitStarted, "2026-03-12T09:00:00Z", s2, a2, "sc", visit_id="v7", tech="ble"),
        make(SectorEntered, "2026-03-12T09:02:00Z", s2, a2, "sc", visit_id="v7", sector_id="bakery", probability=0.9),
        make(IdentityLinked, "2026-03-12T09:04:00Z", s2, a2, "sc", visit_id="v7", loyalty_id="L1",
             method="app_beacon", confidence=0.8),
        make(SectorExited, "2026-03-12T09:05:00Z", s2, a2, "sc", visit_id="v7", sector_id="bakery", dwell_s=180.0),
    ])


def check_hand_figures(profile: Any) -> None:
    for name, expected in HAND.items():
        got = getattr(profile, name)
        if isinstance(expected, float):
            assert got == pytest.approx(expected, rel=1e-12), name
        elif isinstance(expected, dict):
            assert dict(got) == pytest.approx(expected, rel=1e-12), name
        else:
            assert got == expected, name


def pg_conninfo() -> str | None:
    """A reachable PostgreSQL URL for the test database, or None."""
    for user in PG_USERS:
        url = f"postgresql://{user}@127.0.0.1:5432/test"
        try:
            with psycopg.connect(url, connect_timeout=3):
                return url
        except psycopg.Error:
            continue
    return None


def pg_schema_url(server: str) -> Iterator[str]:
    """A fresh schema for one test, dropped afterwards, so parallel runs never collide."""
    schema = f"hq_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        yield f"{server}?schema={schema}"
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


START = datetime(2026, 1, 5, tzinfo=UTC)


def publish(broker: Broker, messages: list[tuple[str, bytes | str]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(500)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(60)
    finally:
        client.disconnect()
        client.loop_stop()


def wire(events: list[Event]) -> list[tuple[str, bytes | str]]:
    return [(topic_for(e), e.to_json()) for e in events]


def decoded(events: list[Event]) -> list[Accepted | Rejected]:
    """The events as HQ's ingest decodes them off the wire, ready for ``Store.ingest``."""
    return [decode(topic_for(e), e.to_json().encode()) for e in events]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def with_seqs(events: list[Event]) -> list[Event]:
    """Number events per agent in list order, as the outbox does."""
    counters: dict[tuple[str, str], int] = {}
    numbered = []
    for e in events:
        key = (e.store_id, e.agent_id)
        counters[key] = counters.get(key, 0) + 1
        numbered.append(e.model_copy(update={"seq": counters[key]}))
    return numbered


HAND = {
    "visits": 4,
    "first_visit": at("2026-01-10T12:00:00Z"),
    "last_visit": at("2026-03-12T09:00:00Z"),
    "visits_last_30d": 3,
    "median_days_between": 6.625,
    "average_visit_s": 750.0,
    "dwell_share": {"fish": 1500 / 2880, "deli": 720 / 2880, "bakery": 480 / 2880, "entrance": 180 / 2880},
    "stores": {"s1": 2, "s2": 2},
    "card_taps": 1,
    "last_card_tap": at("2026-03-02T10:07:00Z"),
}


PG_USERS = ("postgres", "root")
