"""Consent for test customers: HQ joins presence to a loyalty id only with the customer's profiling consent."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from agent.messages import PURPOSES, Purpose
from hq.backends import open_store
from hq.consent import ConsentRecord
from hq.store import Store

GIVEN_AT = datetime(2025, 1, 1, tzinfo=UTC)
SYNTHETIC_IDS = tuple(f"L{100000 + p}" for p in range(1000))
"""Every loyalty id hq.synthetic.synthetic_stream can make (shoppers below 1,000)."""


def grant(store: Store, loyalty_ids: Iterable[str], purposes: Iterable[Purpose] = PURPOSES,
          *, granted: bool = True, at: datetime = GIVEN_AT, source: str = "test") -> None:
    """Record consent (or its refusal) for every id and purpose, as of ``at``."""
    store.add_consent([ConsentRecord(loyalty_id=lid, purpose=p, granted=granted, ts=at, source=source)
                       for lid in loyalty_ids for p in purposes], 0.0)


def grant_url(url: str, loyalty_ids: Iterable[str], purposes: Iterable[Purpose] = PURPOSES) -> None:
    store = open_store(url)
    try:
        grant(store, loyalty_ids, purposes)
    finally:
        store.close()
