"""Staff cards at the store: shown while the customer's visit lasts, following their sector, gone at its end."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.events import SectorEntered, VisitEnded
from agent.messages import StaffCard
from agent.privatefiles import write_private
from agent.staffboard import STAFF_FILE, StaffBoard, parse_card, read_board

T = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def _card(visit: str = "v1", loyalty: str = "L1", store: str = "fishmonger-01") -> StaffCard:
    return StaffCard(card_id=f"act-{visit}", store_id=store, visit_id=visit, loyalty_id=loyalty, sector_id="fish",
                     rule_id="cod-regular", text="fresh cod arrived today", facts={"visits_in_days": 4}, ts=T)


def test_a_card_follows_its_visit_and_goes_at_visit_ended() -> None:
    board = StaffBoard("fishmonger-01")
    assert board.add(_card("v1"), now=100.0)
    assert board.add(_card("v2", "L2"), now=101.0)
    board.sector("v1", "checkout")
    assert [(c.card.loyalty_id, c.sector_id) for c in board.cards()] == [("L1", "checkout"), ("L2", "fish")]
    assert board.visit_ended("v1")
    assert [c.card.visit_id for c in board.cards()] == ["v2"]
    assert not board.visit_ended("v1")


def test_a_card_for_an_ended_visit_or_another_store_is_dropped_and_counted() -> None:
    board = StaffBoard("fishmonger-01")
    board.visit_ended("v1")
    assert not board.add(_card("v1"), now=1.0)
    assert not board.add(_card("v3", store="greengrocer-02"), now=1.0)
    assert board.cards() == []
    assert board.dropped == {"visit_ended": 1, "other_store": 1}


def test_a_sector_known_before_the_card_arrives_is_where_it_shows() -> None:
    board = StaffBoard("fishmonger-01")
    board.sector("v1", "aisle-1")
    board.add(_card("v1"), now=1.0)
    assert board.cards()[0].sector_id == "aisle-1"


def test_the_board_is_bounded_in_count_and_age() -> None:
    board = StaffBoard("fishmonger-01", max_cards=2, max_age_s=60.0)
    for i in range(3):
        board.add(_card(f"v{i}", f"L{i}"), now=float(i))
    assert [c.card.visit_id for c in board.cards()] == ["v1", "v2"]
    assert board.expire(now=61.5) == 1
    assert [c.card.visit_id for c in board.cards()] == ["v2"]
    assert board.dropped == {"board_full": 1, "expired": 1}


def test_the_file_is_private_and_reads_back(tmp_path: Path) -> None:
    board = StaffBoard("fishmonger-01")
    board.add(_card("v1"), now=100.0)
    path = tmp_path / STAFF_FILE
    write_private(path, board.to_json(now=100.5))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    view = read_board(tmp_path)
    assert view.problem is None
    assert view.updated == 100.5
    assert [(c["loyalty_id"], c["current_sector_id"], c["text"]) for c in view.cards] == [
        ("L1", "fish", "fresh cod arrived today")]


@pytest.mark.parametrize(
    "payload",
    [b"", b"{}", b"[]", b"null", b'{"schema": "santi.staff-card/1"}', b"x" * 20_000, b"[" * 50_000,
     _card().to_json().replace('"facts":{', '"facts":{"x":1e999,').encode()],
)
def test_hostile_payloads_are_value_errors(payload: bytes) -> None:
    with pytest.raises(ValueError, match=r"staff card"):
        parse_card(payload)


def test_santi_staff_prints_the_cards_as_json_and_as_a_table(tmp_path: Path) -> None:
    board = StaffBoard("fishmonger-01")
    board.add(_card("v1"), now=100.0)
    write_private(tmp_path / STAFF_FILE, board.to_json(now=100.0))
    result = CliRunner().invoke(cli, ["staff", "--state-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [c["loyalty_id"] for c in data["cards"]] == ["L1"]
    table = CliRunner().invoke(cli, ["staff", "--state-dir", str(tmp_path), "--once"], terminal_width=160)
    assert table.exit_code == 0, table.output
    assert "1 customer in the store" in table.output
    assert "fresh cod arrived today" in table.output


def test_santi_staff_says_why_when_there_is_no_board(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["staff", "--state-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0
    assert "no staff cards yet" in json.loads(result.output)["problem"]
    missing = CliRunner().invoke(cli, ["staff", "--state-dir", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "does not exist" in missing.output


def test_the_board_follows_stored_events() -> None:
    def envelope() -> dict[str, object]:
        return {"event_id": uuid4(), "store_id": "fishmonger-01", "agent_id": "pi", "ts": T, "subject": "s"}

    board = StaffBoard("fishmonger-01")
    board.add(_card("v1"), now=1.0)
    assert not board.follow([SectorEntered(**envelope(), visit_id="v2", sector_id="aisle-1", probability=0.9)])
    assert board.follow([SectorEntered(**envelope(), visit_id="v1", sector_id="checkout", probability=0.9)])
    assert board.cards()[0].sector_id == "checkout"
    assert board.follow([VisitEnded(**envelope(), visit_id="v1", duration_s=60.0, reason="exit")])
    assert board.cards() == []


def test_a_staff_topic_message_is_a_card_or_a_counted_drop() -> None:
    board = StaffBoard("fishmonger-01")
    assert board.receive(_card("v1").to_json().encode(), now=1.0)
    with pytest.raises(ValueError, match=r"staff card"):
        board.receive(b"[[[", now=2.0)
    assert [c.card.visit_id for c in board.cards()] == ["v1"]
    assert board.dropped == {"invalid": 1}
