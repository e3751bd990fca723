"""A seeded, realistic event stream for HQ's tests, benchmarks and demo.

Shoppers (some with loyalty cards) visit a few stores over weeks; each visit
is what an agent emits: started, sector entries and exits, an identity link
and a card tap for card holders, the end with per-sector dwell, plus the
agents' periodic status. Seqs are assigned per agent in emission order, as
the outbox does.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from datetime import datetime, timedelta

from agent.events import (
    AgentStatus,
    CardTapped,
    Event,
    IdentityLinked,
    SectorEntered,
    SectorExited,
    VisitEnded,
    VisitStarted,
    uuid7,
)

SECTORS = ("entrance", "fish", "deli", "bakery", "checkout")


def synthetic_stream(
    n_events: int,
    *,
    seed: int = 1,
    stores: int = 3,
    shoppers: int = 200,
    card_holders: float = 0.5,
    visit_every_s: float = 1800.0,
    start: datetime,
) -> list[Event]:
    """Exactly ``n_events`` events (the last visits may be cut short), ordered by time.

    Visits start on average every ``visit_every_s`` seconds (Poisson), so
    10,000 events span about four weeks with the defaults.
    """
    rng = random.Random(seed)
    agents = [(f"store-{i + 1}", f"agent-{i + 1}") for i in range(stores)]
    loyalty = {p: f"L{100000 + p}" for p in range(shoppers) if rng.random() < card_holders}
    seqs: dict[tuple[str, str], int] = defaultdict(int)
    raw: list[tuple[datetime, tuple[str, str], dict[str, object], type[Event]]] = []
    clock = start
    visit_no = 0
    while len(raw) < n_events:
        clock += timedelta(milliseconds=round(rng.expovariate(1 / visit_every_s) * 1000))
        person = rng.randrange(shoppers)
        store, agent = agents[(person + rng.randrange(2)) % stores]
        visit_no += 1
        visit_id = f"v{visit_no}"
        subject = _pseudonym(store, person, clock)
        base = {"store_id": store, "agent_id": agent, "subject": subject, "visit_id": visit_id}
        t = clock
        raw.append((t, (store, agent), {**base, "tech": "ble", "sector_id": "entrance"}, VisitStarted))
        dwell: dict[str, float] = defaultdict(float)
        for sector in rng.sample(SECTORS[1:], rng.randint(1, 4)):
            stay = round(rng.uniform(20.0, 400.0), 1)
            raw.append((t, (store, agent), {**base, "sector_id": sector, "probability": 0.9}, SectorEntered))
            t += timedelta(seconds=stay)
            raw.append((t, (store, agent), {**base, "sector_id": sector, "dwell_s": stay}, SectorExited))
            dwell[sector] += stay
            if sector == "deli" and person in loyalty:
                tap = {"store_id": store, "agent_id": agent, "subject": _pseudonym("card", person, t),
                       "reader_id": "till-1", "card": loyalty[person], "known": True, "linked": True}
                raw.append((t, (store, agent), tap, CardTapped))
                raw.append((t, (store, agent), {**base, "loyalty_id": loyalty[person], "method": "card_tap",
                                                 "confidence": 0.95, "reader_id": "till-1"}, IdentityLinked))
        t += timedelta(seconds=5)
        raw.append((t, (store, agent), {**base, "duration_s": (t - clock).total_seconds(),
                                         "dwell_s": dict(dwell), "reason": "exit"}, VisitEnded))
        if visit_no % 25 == 0:
            for s, a in agents:
                raw.append((t, (s, a), {"store_id": s, "agent_id": a, "subject": a, "uptime_s": 1.0,
                                        "outbox_depth": 0}, AgentStatus))
    raw.sort(key=lambda item: item[0])
    events: list[Event] = []
    for ts, key, fields, model in raw[:n_events]:
        seqs[key] += 1
        unix_ms = int(ts.timestamp() * 1000)
        event_id = uuid7(unix_ms, rng.randbytes(10))
        events.append(model.model_validate({**fields, "event_id": event_id, "seq": seqs[key], "ts": ts}))
    return events


def _pseudonym(scope: str, person: int, when: datetime) -> str:
    """Like the agent's keyed hash: the same device gets a new id each salt day."""
    day = when.date().isoformat()
    return hashlib.sha256(f"{scope}/{person}/{day}".encode()).hexdigest()[:16]
