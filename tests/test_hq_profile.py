"""HQ's pure parts: profile figures by hand, decoding, gap arithmetic."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.events import (
    CardTapped,
    Event,
    IdentityLinked,
    VisitEnded,
    VisitStarted,
    topic_for,
)
from hq.ingest import Accepted, Rejected, decode, gap_ranges, loyalty_digest
from hq.profile import build_profile, dwell_share, median_days_between, visits_from_events
from tests.helpers.hq import NOW, check_hand_figures, fixed_stream, make


def linked_events(events: list[Event], loyalty_id: str) -> tuple[list[Event], list[datetime]]:
    keys = {(e.store_id, e.agent_id, e.visit_id) for e in events
            if isinstance(e, IdentityLinked) and e.loyalty_id == loyalty_id}
    visit_events = [e for e in events if (e.store_id, e.agent_id, getattr(e, "visit_id", None)) in keys]
    taps = [e.ts for e in events if isinstance(e, CardTapped) and e.known and e.card == loyalty_id]
    return visit_events, taps


# Hand-computed from fixed_stream():
#   starts  Jan 10 12:00, Mar 2 10:00, Mar 5 18:00, Mar 12 09:00
#   gaps    50 d 22 h = 50.91667 d, 3 d 8 h = 3.33333 d, 6 d 15 h = 6.625 d  -> median 6.625
#   durations 1200, 600, 900, 300 (open visit: 09:00 -> 09:05)  -> mean 750 s
#   dwell  fish 1200+300 = 1500, deli 120+600 = 720, bakery 300+180 = 480, entrance 180; total 2880


def test_loyalty_profile_matches_hand_figures() -> None:
    events, taps = linked_events(fixed_stream(), "L1")
    profile = build_profile("loyalty", "L1", visits_from_events(events), taps, NOW)
    check_hand_figures(profile)
    assert list(profile.dwell_share) == ["fish", "deli", "bakery", "entrance"]
    open_visit = profile.visit_list[-1]
    assert (open_visit.visit_id, open_visit.closed, open_visit.duration_s) == ("v7", False, 300.0)
    assert open_visit.dwell_s == {"bakery": 180.0}
    assert [v.subject for v in profile.visit_list] == ["sz", "sa", "sb", "sc"]


def test_profile_ignores_arrival_order_and_duplicates() -> None:
    events, _ = linked_events(fixed_stream(), "L1")
    shuffled = events + events[:5]
    random.Random(7).shuffle(shuffled)
    assert visits_from_events(shuffled) == visits_from_events(events)


def test_visit_with_a_single_event_has_no_duration() -> None:
    only = make(IdentityLinked, "2026-03-01T10:00:00Z", "s", "a", "x", visit_id="v", loyalty_id="L",
                method="card_tap", confidence=1.0)
    (visit,) = visits_from_events([only])
    assert visit.duration_s is None
    profile = build_profile("loyalty", "L", [visit], [], NOW)
    assert (profile.visits, profile.average_visit_s, profile.median_days_between) == (1, None, None)


def test_empty_profile() -> None:
    profile = build_profile("loyalty", "nobody", [], [], NOW)
    assert (profile.visits, profile.first_visit, profile.dwell_share, profile.stores) == (0, None, {}, {})
    assert profile.to_dict()["first_visit"] is None


@settings(derandomize=True, max_examples=200)
@given(st.lists(st.integers(0, 10**9), min_size=2, max_size=30))
def test_median_days_between_is_order_free_and_bounded(offsets: list[int]) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    starts = [base + timedelta(seconds=s) for s in offsets]
    median = median_days_between(starts)
    assert median == median_days_between(list(reversed(starts)))
    assert median is not None
    span = (max(starts) - min(starts)).total_seconds() / 86_400
    assert 0.0 <= median <= span + 1e-9


@settings(derandomize=True, max_examples=200)
@given(st.lists(st.dictionaries(st.sampled_from("abcdef"), st.floats(0, 1e5)), max_size=10))
def test_dwell_share_sums_to_one(dwells: list[dict[str, float]]) -> None:
    visits = [visits_from_events([make(VisitStarted, "2026-03-01T10:00:00Z", "s", "a", "x", visit_id=f"v{i}",
                                       tech="ble"),
                                  make(VisitEnded, "2026-03-01T10:10:00Z", "s", "a", "x", visit_id=f"v{i}",
                                       duration_s=600.0, dwell_s=d, reason="exit")])[0]
              for i, d in enumerate(dwells)]
    share = dwell_share(visits)
    total = sum(sum(d.values()) for d in dwells)
    if total > 0:
        assert sum(share.values()) == pytest.approx(1.0)
        assert all(0.0 <= s <= 1.0 for s in share.values())
    else:
        assert share == {}


# --- decoding ---------------------------------------------------------------

def test_decode_accepts_a_wire_event() -> None:
    event = fixed_stream()[4]
    result = decode(topic_for(event), event.to_json().encode())
    assert isinstance(result, Accepted)
    assert result.event == event
    assert result.visit_id == "v1"


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xff\xfe garbage", "invalid event: payload: Invalid JSON"),
    (b"[]", "invalid event"),
    (b'{"schema": "santi.presence/2"}', "invalid event"),
])
def test_decode_rejects_garbage_with_a_reason(payload: bytes, reason: str) -> None:
    result = decode("santi/v1/s1/a1/events/visit.started", payload)
    assert isinstance(result, Rejected)
    assert result.reason.startswith(reason)
    assert result.size == len(payload)


def test_decode_rejects_unstored_seq_and_wrong_topic() -> None:
    event = fixed_stream()[3]
    unstored = event.model_copy(update={"seq": 0})
    result = decode(topic_for(unstored), unstored.to_json().encode())
    assert isinstance(result, Rejected)
    assert result.reason.startswith("seq 0")
    wrong = decode("santi/v1/other/a1/events/visit.started", event.to_json().encode())
    assert isinstance(wrong, Rejected)
    assert "topic does not match" in wrong.reason


def test_digests_name_the_person_not_the_id() -> None:
    link = next(e for e in fixed_stream() if isinstance(e, IdentityLinked))
    accepted = decode(topic_for(link), link.to_json().encode())
    assert isinstance(accepted, Accepted)
    assert loyalty_digest("L1") in accepted.digests()
    assert all("L1" not in d and len(d) == 64 for d in accepted.digests())


@settings(derandomize=True, max_examples=300)
@given(st.binary(max_size=300))
def test_decode_never_raises(payload: bytes) -> None:
    assert isinstance(decode("santi/v1/s/a/events/x", payload), Accepted | Rejected)


# --- seq gaps -----------------------------------------------------------------

def brute_gaps(after: int, seqs: set[int]) -> list[tuple[int, int]]:
    above = {s for s in seqs if s > after}
    if not above:
        return []
    missing = [s for s in range(after + 1, max(above)) if s not in above]
    ranges: list[tuple[int, int]] = []
    for s in missing:
        if ranges and ranges[-1][1] == s - 1:
            ranges[-1] = (ranges[-1][0], s)
        else:
            ranges.append((s, s))
    return ranges


@settings(derandomize=True, max_examples=300)
@given(st.sets(st.integers(1, 60), max_size=40), st.integers(0, 20))
def test_gap_ranges_match_brute_force(seqs: set[int], after: int) -> None:
    above = sorted(s for s in seqs if s > after)
    edges = [(a, b) for a, b in itertools.pairwise(above) if b > a + 1]
    assert gap_ranges(after, above[0] if above else None, edges) == brute_gaps(after, seqs)
