"""The staff cards of customers in the store now: kept while their visit lasts, gone at its end.

HQ publishes a :class:`agent.messages.StaffCard` to the store's staff topic
when an activation rule fires for a customer who consented. The agent keeps
it while the customer's visit is open (its ``visit.ended`` drops the card;
a card for a visit already ended is not shown) and follows the visit's
current sector, so the staff see who is here and where. ``santi staff`` and
the console read the board from ``staff.json`` in the agent's state
directory, written atomically by the service and readable by the service user only (0600):
it names loyalty customers.

The board is pure state: the service feeds it cards and the events it
stores, with their times (its steady clock); it reads no clock. Times in
``staff.json`` are wall times.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.events import Event, SectorEntered, VisitEnded
from agent.messages import StaffCard

STAFF_FILE = "staff.json"
MAX_CARDS = 500
"""Cards kept at once; the oldest goes first beyond it (a store holds far fewer customers)."""
MAX_AGE_S = 6 * 3600.0
"""A card whose visit.ended never came (an agent restart, a lost event) leaves after this long."""
ENDED_REMEMBERED = 2000
"""Visit ids remembered as ended, so a card arriving after its visit's end is dropped."""


@dataclass(frozen=True)
class BoardCard:
    """A card on the board: HQ's card and where the customer is now."""

    card: StaffCard
    sector_id: str | None
    received_at: float

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.card.to_json())
        data["current_sector_id"] = self.sector_id
        data["received_at"] = self.received_at
        return data


class StaffBoard:
    """Cards by visit id, oldest first; bounded in count and age."""

    def __init__(self, store_id: str, *, max_cards: int = MAX_CARDS, max_age_s: float = MAX_AGE_S) -> None:
        self.store_id = store_id
        self.max_cards = max_cards
        self.max_age_s = max_age_s
        self._cards: OrderedDict[str, BoardCard] = OrderedDict()
        self._sectors: dict[str, str | None] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self.dropped: dict[str, int] = {}

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def add(self, card: StaffCard, now: float) -> bool:
        """Show ``card``; False (counted) for another store's card or a visit that already ended."""
        if card.store_id != self.store_id:
            self._drop("other_store")
            return False
        if card.visit_id in self._ended:
            self._drop("visit_ended")
            return False
        sector = self._sectors.get(card.visit_id, card.sector_id)
        self._cards[card.visit_id] = BoardCard(card, sector, now)
        self._cards.move_to_end(card.visit_id)
        while len(self._cards) > self.max_cards:
            self._cards.popitem(last=False)
            self._drop("board_full")
        return True

    def receive(self, payload: bytes, now: float) -> bool:
        """A message from the staff topic: ``add`` its card; ``ValueError`` (counted as invalid) if it is none."""
        try:
            card = parse_card(payload)
        except ValueError:
            self._drop("invalid")
            raise
        return self.add(card, now)

    def sector(self, visit_id: str, sector_id: str | None) -> None:
        """The visit's sector changed (a ``sector.entered``)."""
        self._sectors[visit_id] = sector_id
        held = self._cards.get(visit_id)
        if held is not None:
            self._cards[visit_id] = BoardCard(held.card, sector_id, held.received_at)

    def visit_ended(self, visit_id: str) -> bool:
        """The visit ended: its card goes; True when there was one."""
        self._sectors.pop(visit_id, None)
        self._ended[visit_id] = None
        while len(self._ended) > ENDED_REMEMBERED:
            self._ended.popitem(last=False)
        return self._cards.pop(visit_id, None) is not None

    def expire(self, now: float) -> int:
        """Drop cards older than ``max_age_s``; returns how many went."""
        old = [v for v, c in self._cards.items() if now - c.received_at > self.max_age_s]
        for visit_id in old:
            del self._cards[visit_id]
            self._drop("expired")
        return len(old)

    def cards(self) -> list[BoardCard]:
        return list(self._cards.values())

    def follow(self, events: Iterable[Event]) -> bool:
        """Follow stored events: a ``sector.entered`` moves a card, a ``visit.ended`` takes it away.

        True when the board changed.
        """
        changed = False
        for event in events:
            if isinstance(event, SectorEntered):
                changed |= event.visit_id in self._cards
                self.sector(event.visit_id, event.sector_id)
            elif isinstance(event, VisitEnded):
                changed |= self.visit_ended(event.visit_id)
        return changed

    def to_json(self, now: float, wall_offset: float = 0.0) -> bytes:
        """The content of ``staff.json``; its times are wall times (``now + wall_offset``)."""
        cards = []
        for held in self.cards():
            data = held.to_dict()
            data["received_at"] = held.received_at + wall_offset
            cards.append(data)
        body = {"store_id": self.store_id, "updated": now + wall_offset, "dropped": dict(self.dropped),
                "cards": cards}
        return json.dumps(body).encode()


@dataclass(frozen=True)
class BoardView:
    """What ``santi staff`` reads back."""

    updated: float | None
    cards: tuple[dict[str, Any], ...]
    problem: str | None = None


def read_board(state_dir: Path) -> BoardView:
    """The agent's board as written, or why it cannot be read (one line)."""
    path = state_dir / STAFF_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return BoardView(None, (), f"{path}: no staff cards yet (the agent writes this file when one arrives)")
    except PermissionError:
        return BoardView(None, (), f"{path}: permission denied (run as the service user or root)")
    except (OSError, ValueError) as exc:
        return BoardView(None, (), f"{path}: unreadable: {exc}")
    cards = data.get("cards") if isinstance(data, dict) else None
    if not isinstance(cards, list):
        return BoardView(None, (), f"{path}: not a staff board")
    valid = []
    for item in cards:
        if not isinstance(item, dict):
            continue
        try:
            StaffCard.model_validate({k: v for k, v in item.items() if k not in ("current_sector_id", "received_at")})
        except ValidationError:
            continue
        valid.append(item)
    updated = data.get("updated")
    return BoardView(float(updated) if isinstance(updated, int | float) else None, tuple(valid))


def parse_card(payload: bytes) -> StaffCard:
    """A card from the staff topic; ``ValueError`` (with pydantic's reason) for anything else."""
    if len(payload) > 16_384:
        raise ValueError("staff card larger than 16 KiB")
    try:
        return StaffCard.model_validate_json(payload)
    except ValidationError as exc:
        raise ValueError(f"not a staff card: {exc.errors()[0]['msg']}") from None
