"""The profile store on SQLite and on the PostgreSQL server at 127.0.0.1:5432."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.events import AgentStatus, IdentityLinked, VisitStarted, topic_for, uuid7
from hq.backends import open_store, split_schema
from hq.ingest import decode
from hq.store import HqStoreError, Store
from hq.synthetic import synthetic_stream
from hq.views import loyalty_profile, visitor_profile
from tests.helpers.consent import SYNTHETIC_IDS, grant
from tests.helpers.hq import NOW, check_hand_figures, decoded, fixed_stream, make


def test_open_store_urls(tmp_path: Path) -> None:
    assert split_schema("postgresql://u@h/db?schema=x&sslmode=disable") == ("postgresql://u@h/db?sslmode=disable", "x")
    for url in (f"sqlite:///{tmp_path}/a.db", str(tmp_path / "b.db")):
        open_store(url).close()
    with pytest.raises(HqStoreError, match="unsupported database URL"):
        open_store("mysql://h/db")
    with pytest.raises(HqStoreError, match="cannot open SQLite"):
        open_store(f"sqlite:///{tmp_path}/missing-dir/x.db")


def test_fixed_stream_profile_in_any_order_and_batching(store: Store) -> None:
    items = decoded(fixed_stream())
    random.Random(3).shuffle(items)
    for start in range(0, len(items), 4):
        store.ingest(items[start:start + 4], received_at=1.0)
    check_hand_figures(loyalty_profile(store, "L1", NOW.timestamp()))
    visitor = visitor_profile(store, "sb", NOW.timestamp())
    assert (visitor.visits, visitor.average_visit_s, dict(visitor.stores)) == (1, 900.0, {"s1": 1})
    assert store.loyalty_ids() == ["L1"]


def test_replay_is_a_no_op(store: Store) -> None:
    events = synthetic_stream(600, start=datetime(2026, 2, 1, tzinfo=UTC))
    first = store.ingest(decoded(events), received_at=1.0)
    assert (len(first.new), first.stored) == (600, 600)
    before = {lid: loyalty_profile(store, lid, NOW.timestamp()) for lid in store.loyalty_ids()}
    again = store.ingest(decoded(events), received_at=2.0, want_events=False)
    assert (again.stored, again.duplicates) == (0, 600)
    extra = synthetic_stream(610, start=datetime(2026, 2, 1, tzinfo=UTC))[600:]
    counted = store.ingest(decoded(extra + events[:5]), received_at=2.5, want_events=False)
    assert (counted.stored, counted.duplicates, counted.new) == (10, 5, [])
    within = store.ingest(decoded(events[:10] + events[:10]), received_at=3.0)
    assert (len(within.new), within.duplicates) == (0, 20)
    assert store.counts()["events"] == 610
    assert {lid: loyalty_profile(store, lid, NOW.timestamp()) for lid in store.loyalty_ids()} == before


def test_dead_letters_are_kept_with_reason(store: Store) -> None:
    good = fixed_stream()[0]
    result = store.ingest([decode("santi/v1/x/y/events/z", b"not json"), *decoded([good])], received_at=5.0)
    assert (result.dead_letters, len(result.new)) == (1, 1)
    (letter,) = store.dead_letters()
    assert (letter.topic, letter.payload, letter.size, letter.received_at) == (
        "santi/v1/x/y/events/z", "not json", 8, 5.0)
    assert letter.reason.startswith("invalid event")
    assert store.counts()["dead_letters"] == 1


def test_gaps_per_agent_with_evictions(store: Store) -> None:
    events = [e for e in fixed_stream() if (e.store_id, e.agent_id) == ("s1", "a1")]
    assert [e.seq for e in events] == list(range(1, 15))
    status = make(AgentStatus, "2026-03-06T00:00:00Z", "s1", "a1", "a1", uptime_s=5.0, outbox_depth=0,
                  evicted_total=3).model_copy(update={"seq": 20})
    missing = {4, 5, 9}
    store.ingest(decoded([e for e in events if e.seq not in missing] + [status]), received_at=1.0)
    (report,) = [g for g in store.gaps() if g.agent_id == "a1"]
    assert (report.max_seq, report.ranges, report.missing, report.evicted_total) == (
        20, [(4, 5), (9, 9), (15, 19)], 8, 3)
    store.ingest(decoded([e for e in events if e.seq in {4, 5}]), received_at=2.0)
    (report,) = [g for g in store.gaps() if g.agent_id == "a1"]
    assert report.ranges == [(9, 9), (15, 19)]
    late_start = [e.model_copy(update={"seq": e.seq + 2, "agent_id": "a9", "event_id": uuid7()})
                  for e in events[:3]]
    store.ingest([decode(topic_for(e), e.to_json().encode()) for e in late_start], received_at=3.0)
    (report,) = [g for g in store.gaps() if g.agent_id == "a9"]
    assert report.ranges == [(1, 2)]


def test_erasure_removes_the_person_and_survives_replay(store: Store) -> None:
    events = fixed_stream()
    secret_letter = decode("santi/v1/s1/a1/events/identity.linked", b'{"loyalty_id": "L1", "broken": true}')
    store.ingest([*decoded(events), secret_letter], received_at=1.0)
    done = store.erase("L1")
    assert (done.visits, done.dead_letters_deleted) == (4, 1)
    # Everything but the anonymous visit (2 events) and the agent status is gone.
    assert done.events_deleted == len(events) - 3
    assert store.counts()["events"] == 3
    assert loyalty_profile(store, "L1", NOW.timestamp()).visits == 0
    assert visitor_profile(store, "sa", NOW.timestamp()).visits == 0
    assert visitor_profile(store, "anon", NOW.timestamp()).visits == 1
    replay = store.ingest(decoded(events), received_at=2.0)
    assert (len(replay.new), replay.suppressed) == (0, len(events) - 3)
    assert loyalty_profile(store, "L1", NOW.timestamp()).visits == 0
    assert all(g.missing == 0 for g in store.gaps()), "erased seqs are not gaps"
    assert store.dead_letters() == []


def test_a_new_visit_linked_to_an_erased_id_is_erased_too(store: Store) -> None:
    store.ingest(decoded(fixed_stream()), received_at=1.0)
    store.erase("L1")
    later = [
        make(VisitStarted, "2026-03-14T10:00:00Z", "s1", "a1", "sq", visit_id="v99", tech="ble"),
        make(IdentityLinked, "2026-03-14T10:01:00Z", "s1", "a1", "sq", visit_id="v99", loyalty_id="L1",
             method="card_tap", confidence=0.9),
    ]
    later = [e.model_copy(update={"seq": 100 + i}) for i, e in enumerate(later)]
    store.ingest(decoded(later[:1]), received_at=2.0)
    assert visitor_profile(store, "sq", NOW.timestamp()).visits == 1
    result = store.ingest(decoded(later[1:]), received_at=3.0)
    assert result.suppressed == 1
    assert visitor_profile(store, "sq", NOW.timestamp()).visits == 0
    assert loyalty_profile(store, "L1", NOW.timestamp()).visits == 0
    assert store.ingest(decoded(later[:1]), received_at=4.0).suppressed == 1


def test_two_stores_on_one_database_agree(db_url: str) -> None:
    """Two writers (as two subscribers) share one database without losing or doubling events."""
    events = synthetic_stream(400, start=datetime(2026, 2, 1, tzinfo=UTC))
    a, b = open_store(db_url), open_store(db_url)
    grant(a, SYNTHETIC_IDS)
    try:
        items = decoded(events)
        for start in range(0, len(items), 50):
            (a if start % 100 else b).ingest(items[start:start + 50], received_at=1.0)
            (b if start % 100 else a).ingest(items[start:start + 25], received_at=1.0)
        assert a.counts()["events"] == b.counts()["events"] == 400
    finally:
        a.close()
        b.close()
