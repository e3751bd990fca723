"""Consent records: imports from the CRM or CIAM, and the newest record per purpose winning."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.messages import ConsentUpdate, consent_topic
from hq.consent import ConsentError, ConsentRecord, parse_import, records_of, state
from hq.ingest import Rejected
from hq.subscriber import MAX_CONSENT_BYTES, parse_consent_message

T = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
CSV = """loyalty_id,purpose,granted,ts,source
L1,profiling,true,2026-11-01T09:00:00Z,crm
L1,personalisation,no,2026-11-01T09:00:00Z,crm
L2,profiling,1,2026-11-01T09:00:00+01:00,
"""


def test_a_csv_export_imports_every_record() -> None:
    records = parse_import(CSV, Path("export.csv"), source="crm-import")
    assert [(r.loyalty_id, r.purpose, r.granted, r.source) for r in records] == [
        ("L1", "profiling", True, "crm"),
        ("L1", "personalisation", False, "crm"),
        ("L2", "profiling", True, "crm-import"),
    ]
    assert records[2].ts == datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def test_json_lines_take_ciam_messages_and_plain_records() -> None:
    update = ConsentUpdate(loyalty_id="L1", purposes={"profiling": True, "personalisation": True}, ts=T, source="ciam")
    plain = {"loyalty_id": "L2", "purpose": "personalisation", "granted": False, "ts": "2026-11-02T10:00:00Z"}
    text = update.to_json() + "\n\n" + json.dumps(plain) + "\n"
    records = parse_import(text, Path("export.jsonl"))
    assert [(r.loyalty_id, r.purpose, r.granted) for r in records] == [
        ("L1", "profiling", True), ("L1", "personalisation", True), ("L2", "personalisation", False)]
    assert consent_topic("L1") == "santi/v1/hq/consent/L1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("loyalty_id,purpose,ts\nL1,profiling,2026-11-01T09:00:00Z\n", "x.csv:1: CSV header lacks granted"),
        ("loyalty_id,purpose,granted,ts,colour\n", "x.csv:1: unknown CSV column 'colour'"),
        (CSV + "L3,marketing,true,2026-11-01T09:00:00Z,crm\n", "x.csv:5: purpose:"),
        (CSV + "L3,profiling,maybe,2026-11-01T09:00:00Z,crm\n", "x.csv:5: granted must be true or false"),
        (CSV + "L3,profiling,yes,2026-11-01T09:00:00,crm\n", "x.csv:5: ts:"),
        ('{"loyalty_id": "L1"}\n[1, 2]\n', "x.csv:1: missing field 'granted'"),
        ('{"loyalty_id": "L1", "purpose": "profiling", "granted": true, "ts": "2026-11-01T09:00:00Z"}\n[1]\n',
         "x.csv:2: a line must be a JSON object"),
        ('{"a": ' * 5000 + "\n", "x.csv:1: longer than 4096 characters"),
        ("{" + "x" * 10 + "\n", "x.csv:1:"),
    ],
)
def test_a_bad_line_is_one_error_naming_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConsentError) as caught:
        parse_import(text, Path("x.csv"))
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_newest_record_per_purpose_wins_and_no_record_refuses() -> None:
    older = ConsentRecord(loyalty_id="L1", purpose="profiling", granted=True, ts=T, source="crm")
    newer = older.model_copy(update={"granted": False, "ts": T.replace(hour=11)})
    held = state("L1", [newer, older])
    assert not held.allows("profiling")
    assert held.decided_by["profiling"] == newer
    assert not held.allows("personalisation")
    assert not state("L2", [older]).allows("profiling")


@given(st.lists(st.tuples(st.integers(0, 100), st.booleans()), min_size=1, max_size=30), st.randoms())
def test_the_decision_does_not_depend_on_the_order_records_arrive(items: list[tuple[int, bool]], rnd: random.Random) -> None:
    # Distinct times: with two records at the same time the later one given wins by design.
    seen: dict[int, bool] = dict(items)
    records = [ConsentRecord(loyalty_id="L1", purpose="profiling", granted=g, ts=datetime.fromtimestamp(T.timestamp() + m, UTC), source="s")
               for m, g in seen.items()]
    expected = seen[max(seen)]
    shuffled = list(records)
    rnd.shuffle(shuffled)
    assert state("L1", shuffled).allows("profiling") is expected


def test_a_ciam_message_is_one_record_per_purpose() -> None:
    update = ConsentUpdate(loyalty_id="L9", purposes={"personalisation": False}, ts=T, source="ciam")
    assert [(r.purpose, r.granted, r.source) for r in records_of(update)] == [("personalisation", False, "ciam")]


_LOYALTY = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40)


@given(payload=st.binary(max_size=MAX_CONSENT_BYTES + 100), loyalty_id=_LOYALTY)
def test_any_bytes_on_the_consent_topic_are_records_a_dead_letter_or_nothing(payload: bytes,
                                                                            loyalty_id: str) -> None:
    found = parse_consent_message(consent_topic(loyalty_id), payload)
    if isinstance(found, Rejected):
        assert found.reason.startswith("consent: ")
        assert "\x00" not in found.reason + found.payload
    else:
        assert (found is None) == (payload == b"")


@given(loyalty_id=_LOYALTY, other=_LOYALTY, granted=st.booleans())
def test_a_valid_update_is_stored_only_under_its_own_topic(loyalty_id: str, other: str, granted: bool) -> None:
    try:
        update = ConsentUpdate(loyalty_id=loyalty_id, purposes={"profiling": granted},
                               ts=datetime(2026, 3, 1, tzinfo=UTC), source="ciam")
    except ValueError:
        return  # not a loyalty id the schema accepts (a control character)
    found = parse_consent_message(consent_topic(loyalty_id), update.to_json().encode())
    assert isinstance(found, list)
    assert [(r.loyalty_id, r.purpose, r.granted) for r in found] == [(loyalty_id, "profiling", granted)]
    elsewhere = parse_consent_message(consent_topic(other), update.to_json().encode())
    assert isinstance(elsewhere, Rejected) if other != loyalty_id else isinstance(elsewhere, list)
