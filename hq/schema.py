"""The HQ tables, one DDL for SQLite and PostgreSQL.

Raw events are the source of truth; visits and profiles are derived on query
(hq/profile.py), so arrival order never matters and a replay is a no-op.
Only the auto-numbered key differs between the two dialects.

Version 2 keys the seq accounting by the agent's outbox epoch (``epoch``;
``''`` for agents older than the field): ``agent_epochs`` replaces
``agents`` and ``finished_seqs`` replaces ``retired_seqs``. A version 1
database is migrated in place when it is opened (:func:`migration_v1`).

Version 3 adds consent records (``consent``), activation firings
(``activations``, unique per rule and triggering event: the key that makes a
firing happen once across redelivery, restarts and several HQs) and their
per-action delivery state (``deliveries``, claimed by one HQ at a time). The
new tables are created by the DDL itself: an older database needs no other step.
So is ``lost_seqs``: the seqs HQ gave up waiting for because the agent's outbox
no longer holds them, and the index ``events_store_type_ts`` that reads a
store's occupancy and footfall counts by day (``hq/footfall.py``).
"""

from __future__ import annotations

SCHEMA_VERSION = "3"

_DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- One row per event ever accepted; event_id makes a replay a no-op.
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    store_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    subject TEXT NOT NULL,
    visit_id TEXT,
    loyalty_id TEXT,
    payload TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    epoch TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_epoch_seq ON events (store_id, agent_id, epoch, seq);
CREATE INDEX IF NOT EXISTS events_visit ON events (store_id, agent_id, visit_id)
    WHERE visit_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_subject ON events (subject);
CREATE INDEX IF NOT EXISTS events_loyalty ON events (loyalty_id) WHERE loyalty_id IS NOT NULL;
-- A store's events of one type over a time range: the day of counts santi hq footfall reads.
CREATE INDEX IF NOT EXISTS events_store_type_ts ON events (store_id, type, ts);
-- Seqs HQ finished with but does not keep as events (erased, about an erased
-- person, dead-lettered): neither gaps nor a block to the acknowledgement.
CREATE TABLE IF NOT EXISTS finished_seqs (
    store_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (store_id, agent_id, epoch, seq)
);
-- Seqs HQ never received that the agent's outbox no longer holds (its bounds
-- evicted them, ``agent.status`` first_held_seq says so): given up, acknowledged
-- past, and kept here so ``santi hq gaps`` still counts them as lost.
CREATE TABLE IF NOT EXISTS lost_seqs (
    store_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    epoch TEXT NOT NULL,
    lo BIGINT NOT NULL,
    hi BIGINT NOT NULL,
    PRIMARY KEY (store_id, agent_id, epoch, lo)
);
-- Per agent and outbox epoch: highest seq received, seqs known complete (what
-- HQ acknowledges), the agent's own last seq and evictions from agent.status,
-- the span of event times, when HQ first and last received one (HQ's clock orders
-- epochs: an agent's clock may start in 1970), reused seqs, and events dated
-- after a newer epoch began.
CREATE TABLE IF NOT EXISTS agent_epochs (
    store_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    epoch TEXT NOT NULL,
    max_seq BIGINT NOT NULL DEFAULT 0,
    contiguous_upto BIGINT NOT NULL DEFAULT 0,
    status_last_seq BIGINT NOT NULL DEFAULT 0,
    evicted_total BIGINT NOT NULL DEFAULT 0,
    first_ts DOUBLE PRECISION NOT NULL,
    last_ts DOUBLE PRECISION NOT NULL,
    first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL,
    reused_seqs BIGINT NOT NULL DEFAULT 0,
    interleaved BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (store_id, agent_id, epoch)
);
-- SHA-256 digests of erased loyalty ids, visits and subjects: no personal data.
CREATE TABLE IF NOT EXISTS tombstones (
    digest TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    erased_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id {serial},
    received_at DOUBLE PRECISION NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    size BIGINT NOT NULL,
    payload TEXT NOT NULL
);
-- Consent per loyalty id and purpose; the newest ts wins (hq/consent.py). A record
-- received twice (every HQ reads the CIAM's retained topic) is stored once.
CREATE TABLE IF NOT EXISTS consent (
    id {serial},
    loyalty_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    granted INTEGER NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL,
    UNIQUE (loyalty_id, purpose, ts, source, granted)
);
CREATE INDEX IF NOT EXISTS consent_newest ON consent (loyalty_id, purpose, ts);
-- One row per rule that fired on one triggering event: never two (the unique key).
CREATE TABLE IF NOT EXISTS activations (
    activation_id TEXT PRIMARY KEY,
    rule_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    loyalty_id TEXT NOT NULL,
    store_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    visit_id TEXT,
    sector_id TEXT,
    ts DOUBLE PRECISION NOT NULL,
    fired_at DOUBLE PRECISION NOT NULL,
    facts TEXT NOT NULL,
    UNIQUE (rule_id, event_id)
);
CREATE INDEX IF NOT EXISTS activations_loyalty ON activations (loyalty_id, ts);
-- Per firing and action: what to send, its state (pending, retrying, delivered, dead)
-- and which HQ holds it (claimed_by, renewed at claimed_at).
CREATE TABLE IF NOT EXISTS deliveries (
    activation_id TEXT NOT NULL,
    action_no INTEGER NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    detail TEXT,
    claimed_by TEXT NOT NULL,
    claimed_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (activation_id, action_no)
);
CREATE INDEX IF NOT EXISTS deliveries_open ON deliveries (state, claimed_at);
"""

SERIAL = {
    "sqlite": "INTEGER PRIMARY KEY",
    "postgresql": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
}


def ddl(dialect: str) -> list[str]:
    """The statements that create the schema in ``dialect`` (``sqlite`` or ``postgresql``)."""
    lines = [line for line in _DDL.splitlines() if line.strip() and not line.lstrip().startswith("--")]
    text = "\n".join(lines).replace("{serial}", SERIAL[dialect])
    return [statement.strip() for statement in text.split(";") if statement.strip()]


def migration_v1() -> tuple[list[str], list[str]]:
    """(before the DDL, after it): version 1 to 2, the old rows as the legacy epoch ``''``."""
    before = [
        "ALTER TABLE events ADD COLUMN epoch TEXT NOT NULL DEFAULT ''",
        "DROP INDEX IF EXISTS events_agent_seq",
    ]
    after = [
        ("INSERT INTO agent_epochs (store_id, agent_id, epoch, max_seq, contiguous_upto, evicted_total,"
         " first_ts, last_ts, first_seen, last_seen) SELECT a.store_id, a.agent_id, '', a.max_seq,"
         " a.contiguous_upto, a.evicted_total, coalesce(min(e.ts), 0), coalesce(max(e.ts), 0),"
         " coalesce(min(e.received_at), a.last_seen), a.last_seen FROM agents AS a"
         " LEFT JOIN events AS e ON e.store_id = a.store_id AND e.agent_id = a.agent_id"
         " GROUP BY a.store_id, a.agent_id, a.max_seq, a.contiguous_upto, a.evicted_total, a.last_seen"),
        ("INSERT INTO finished_seqs (store_id, agent_id, epoch, seq) SELECT store_id, agent_id, '', seq"
         " FROM retired_seqs"),
        "DROP TABLE agents",
        "DROP TABLE retired_seqs",
    ]
    return before, after
