"""Visits, sector dwell and their end, from sector reports; pure and exact."""

from __future__ import annotations

import uuid
from itertools import count

from agent.events import SectorEntered, SectorExited, VisitEnded, VisitStarted
from agent.presence import Located, Presence


def _presence() -> Presence:
    ids = count(1)
    return Presence("store", "agent", entrances={"entrance"}, visit_silence_s=60,
                    new_event_id=lambda _ts: uuid.UUID(int=next(ids)))


def _at(emitter: str, sector: str | None, p: float = 0.9) -> Located:
    return Located(emitter, "ble", sector, p)


def test_a_visit_through_the_store_and_out_by_the_entrance() -> None:
    presence = _presence()
    events = []
    events += presence.update(100.0, [_at("a", "entrance")])
    events += presence.update(101.0, [_at("a", "entrance")])
    events += presence.update(110.0, [_at("a", "fish")])
    events += presence.update(170.0, [_at("a", "entrance")])
    events += presence.update(175.0, [_at("a", None)])
    kinds = [(type(e).__name__, getattr(e, "sector_id", None)) for e in events]
    assert kinds == [
        ("VisitStarted", "entrance"), ("SectorEntered", "entrance"),
        ("SectorExited", "entrance"), ("SectorEntered", "fish"),
        ("SectorExited", "fish"), ("SectorEntered", "entrance"),
        ("SectorExited", "entrance"), ("VisitEnded", None),
    ]
    ended = events[-1]
    assert isinstance(ended, VisitEnded)
    assert ended.reason == "exit"
    assert ended.duration_s == 75.0
    assert ended.dwell_s == {"entrance": 15.0, "fish": 60.0}
    exits = [e for e in events if isinstance(e, SectorExited)]
    assert [e.dwell_s for e in exits] == [10.0, 60.0, 5.0]
    assert len({e.visit_id for e in events if hasattr(e, "visit_id")}) == 1  # type: ignore[attr-defined]
    assert {e.subject for e in events} == {"a"}
    assert "a" not in presence.visits


def test_silence_ends_the_visit_when_last_heard() -> None:
    presence = _presence()
    presence.update(0.0, [_at("b", "fish")])
    presence.update(30.0, [_at("b", "fish")])
    assert presence.expire(89.0) == []
    events = presence.expire(91.0)
    assert [type(e) for e in events] == [SectorExited, VisitEnded]
    ended = events[1]
    assert isinstance(ended, VisitEnded)
    assert ended.reason == "silence"
    assert ended.duration_s == 30.0
    assert ended.ts.timestamp() == 30.0


def test_outside_from_an_inner_sector_does_not_end_the_visit() -> None:
    presence = _presence()
    presence.update(0.0, [_at("c", "fish")])
    assert presence.update(1.0, [_at("c", None)]) == []
    assert "c" in presence.visits
    assert presence.update(2.0, [_at("c", "fish")]) == []


def test_never_inside_never_a_visit_and_reentry_is_a_new_visit() -> None:
    presence = _presence()
    assert presence.update(0.0, [_at("d", None)]) == []
    first = presence.update(1.0, [_at("d", "entrance")])
    presence.update(2.0, [_at("d", None)])
    second = presence.update(500.0, [_at("d", "entrance")])
    assert isinstance(first[0], VisitStarted)
    assert isinstance(second[0], VisitStarted)
    assert first[0].visit_id != second[0].visit_id


def test_shutdown_closes_everything_and_entries_carry_probability() -> None:
    presence = _presence()
    events = presence.update(0.0, [_at("e", "fish", 0.75), _at("f", "entrance", 1.0)])
    entered = [e for e in events if isinstance(e, SectorEntered)]
    assert sorted(e.probability for e in entered) == [0.75, 1.0]
    closing = presence.close_all(10.0)
    assert sorted(type(e).__name__ for e in closing) == ["SectorExited"] * 2 + ["VisitEnded"] * 2
    assert all(e.reason == "shutdown" for e in closing if isinstance(e, VisitEnded))
    assert presence.visits == {}


def test_entries_are_dated_at_the_crossing_not_the_confirmation() -> None:
    presence = _presence()
    presence.update(100.0, [Located("g", "ble", "entrance", 0.9, since=98.0)])
    events = presence.update(130.0, [Located("g", "ble", "fish", 0.9, since=126.5)])
    exited, entered = events
    assert isinstance(exited, SectorExited)
    assert isinstance(entered, SectorEntered)
    assert exited.ts.timestamp() == entered.ts.timestamp() == 126.5
    assert exited.dwell_s == 28.5
    late = presence.update(140.0, [Located("g", "ble", "aisle-1", 0.9, since=float("nan"))])
    assert late[1].ts.timestamp() == 140.0
    early = presence.update(150.0, [Located("g", "ble", "fish", 0.9, since=10.0)])
    assert early[0].ts.timestamp() == 140.0  # never before the previous change
