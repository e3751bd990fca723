"""The profile store's base: one schema and one set of queries, shared by the SQLite and PostgreSQL backends.

This module knows no backend. `hq.sqlitestore.SqliteStore` and
`hq.pgstore.PostgresStore` subclass `Store`; everything a backend does
differently — placeholders, locking, the list parameter, which errors blame
the data — lives in its small subclass. `hq.backends.open_store(url)` picks
one. Imports point one way: backends → this module, factory → backends.

Concurrency: several subscribers may write one database. SQLite serialises
writers (``BEGIN IMMEDIATE``); on PostgreSQL an ingest holds a SHARE lock on
``tombstones`` and an erasure a SHARE ROW EXCLUSIVE one, so an erasure never
interleaves with a batch that could bring the person back.

Poison: a batch the database refuses because of its data (a value out of a
column's range, a string an index cannot hold) is stored again one event at
a time, and the one event refused alone goes to the dead letters with the
database's reason. A refusal that blames the connection or the server (a lost
connection, a full disk, a lock) is a :class:`HqStoreError`: nothing is stored,
the subscriber retries the batch and acknowledges nothing meanwhile.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, TypeVar, cast

from pydantic import ValidationError

from agent.errors import EXIT_BAD_INPUT, SantiError
from agent.events import AgentStatus, Event, parse_event, topic_for, utc_from_epoch
from agent.messages import PURPOSES, Purpose
from hq.consent import ConsentRecord, ConsentState
from hq.consent import state as consent_state
from hq.ingest import (
    LEGACY_EPOCH,
    Accepted,
    Rejected,
    gap_ranges,
    loyalty_digest,
    subject_digest,
    visit_digest,
)
from hq.profile import VisitKey
from hq.schema import SCHEMA_VERSION, ddl, migration_v1

log = logging.getLogger(__name__)

CHUNK = 500
SQLITE_PARAMETERS = 999
"""Parameters per statement at most: SQLite's oldest limit (``SQLITE_MAX_VARIABLE_NUMBER`` before 3.32)."""
CONTIGUITY_STEP = 1_000

RECENT_PARSED = 10_000
"""Events ``ingest_then`` keeps parsed, by payload: ``rule_inputs`` reads a batch's visits back (most of
what it reads was in that batch or the last few), and finds them without parsing their payloads again."""

DEAD_LETTER_ROWS = 10_000
DEAD_LETTER_BYTES = 32 * 1024 * 1024
"""Default dead-letter caps: a flood of garbage costs at most this much disk; the oldest go first."""

EVENT_COLUMNS = ("event_id", "store_id", "agent_id", "seq", "type", "ts", "subject", "visit_id",
                 "loyalty_id", "payload", "received_at", "epoch")

FIRING_COLUMNS = ("activation_id", "rule_id", "event_id", "loyalty_id", "store_id", "agent_id", "visit_id",
                  "sector_id", "ts", "fired_at", "facts")
DELIVERY_COLUMNS = ("activation_id", "action_no", "kind", "target", "body", "claimed_by", "claimed_at",
                    "updated_at")
FINAL_STATES = frozenset({"delivered", "dead"})
"""Delivery states never changed back."""

POISON_ERRORS = (OverflowError, ValueError, TypeError, RecursionError, ArithmeticError)
"""What Python raises on a value no column holds (2^70 into an INTEGER, text SQLite cannot encode)."""

Lock = Literal["schema", "ingest", "erase"]
T = TypeVar("T")

EpochKey = tuple[str, str, str]
"""(store_id, agent_id, epoch): where a seq is unique."""


class HqStoreError(SantiError):
    """A database failure, worded for the operator; the batch is retried, never acked.

    Exit 2 at the command line: the database URL given cannot be used (fix it and rerun).
    """

    exit_code = EXIT_BAD_INPUT


class Unstorable(HqStoreError):
    """The database refused the data itself (not the connection): the event is at fault, not the store."""


class _Separately(HqStoreError):
    """Raised inside :meth:`Store.ingest_then`'s transaction for work that needs its own: it is redone apart."""


class Cursor(Protocol):
    """What the shared SQL needs of a backend's cursor (``?`` placeholders; a backend translates its own)."""

    def execute(self, query: str, params: Sequence[Any] = ..., /) -> Any: ...
    def executemany(self, query: str, params_seq: Iterable[Sequence[Any]], /) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...
    @property
    def rowcount(self) -> int: ...


@dataclass
class IngestResult:
    """What one batch did; ``new`` lists the events stored for the first time when asked for.

    ``acks`` holds, per agent epoch to acknowledge, the highest contiguous
    finished seq: one entry per agent at most (its current epoch).
    """

    stored: int = 0
    new: list[Event] = field(default_factory=list)
    duplicates: int = 0
    suppressed: int = 0
    dead_letters: int = 0
    conflicts: int = 0
    unlinked: int = 0
    """Links stored as nothing (counted in ``suppressed``): the customer does not consent to profiling."""
    acks: dict[EpochKey, int] = field(default_factory=dict)

    def add(self, other: IngestResult) -> None:
        """Fold in the result of a later part of the same batch."""
        self.stored += other.stored
        self.new.extend(other.new)
        self.duplicates += other.duplicates
        self.suppressed += other.suppressed
        self.dead_letters += other.dead_letters
        self.conflicts += other.conflicts
        self.unlinked += other.unlinked
        self.acks.update(other.acks)


@dataclass(frozen=True)
class AgentGaps:
    """The seq accounting of one agent's outbox epoch."""

    store_id: str
    agent_id: str
    max_seq: int
    missing: int
    ranges: list[tuple[int, int]]
    evicted_total: int
    """Events the agent's outbox reported dropping: they explain that many missing seqs."""
    last_seen: float
    epoch: str = LEGACY_EPOCH
    acked: int = 0
    """Highest contiguous finished seq: what HQ acknowledges."""
    agent_last_seq: int = 0
    """The last seq the agent said it assigned (agent.status): losses past ``max_seq`` show."""
    reused_seqs: int = 0
    """Seqs received twice with different event ids in this epoch (an outbox reset by an old agent)."""
    interleaved: int = 0
    """Events of this epoch dated after a newer epoch of the same agent id began: two live devices."""


@dataclass(frozen=True)
class Erasure:
    loyalty_ids: int
    visits: int
    subjects: int
    events_deleted: int
    dead_letters_deleted: int
    consent_deleted: int = 0
    activations_deleted: int = 0


@dataclass
class ConsentChange:
    """What storing consent records did: records new to HQ, links deleted by a withdrawal."""

    stored: int = 0
    unlinked: int = 0
    erased: int = 0
    """Records of erased customers (a CIAM's retained message read again): not stored."""


@dataclass(frozen=True)
class FiringRow:
    """One firing as recorded; ``activation_id`` is derived from (rule_id, event_id)."""

    activation_id: str
    rule_id: str
    event_id: str
    loyalty_id: str
    store_id: str
    agent_id: str
    visit_id: str | None
    sector_id: str | None
    ts: float
    fired_at: float
    facts: str


@dataclass(frozen=True)
class RuleInputs:
    """What the activation rules read of one customer (``Store.rule_inputs``)."""

    consent: dict[Purpose, bool]
    events: list[Event]
    """Events of every visit linked to the customer; none without consent to profiling."""
    taps: list[Event]
    history: list[tuple[str, float, str, str, str | None]]
    """(rule_id, ts, store_id, agent_id, visit_id) of the customer's firings, oldest first."""


@dataclass(frozen=True)
class DeliveryRow:
    """One action of a firing: what to send where, and who holds it."""

    action_no: int
    kind: str
    target: str
    body: str
    claimed_by: str
    activation_id: str = ""
    rule_id: str = ""
    attempts: int = 0


@dataclass(frozen=True)
class ActivationView:
    """A firing as ``santi hq activations`` lists it."""

    activation_id: str
    rule_id: str
    event_id: str
    loyalty_id: str
    store_id: str
    visit_id: str | None
    sector_id: str | None
    ts: float
    fired_at: float
    facts: dict[str, Any]
    deliveries: list[dict[str, Any]]


@dataclass(frozen=True)
class DeadLetter:
    id: int
    received_at: float
    topic: str
    reason: str
    size: int
    payload: str


@dataclass
class _EpochBatch:
    """What one batch brings to one agent epoch."""

    seqs: list[int] = field(default_factory=list)
    stored: list[Accepted] = field(default_factory=list)
    resent: bool = False


class Store(ABC):
    """The shared SQL; subclasses connect and say how their dialect differs."""

    dialect: str
    param = "?"

    def __init__(self, *, dead_letter_rows: int = DEAD_LETTER_ROWS,
                 dead_letter_bytes: int = DEAD_LETTER_BYTES) -> None:
        self._lock = threading.RLock()
        self._unit: Cursor | None = None
        self._tombstones: set[str] = set()
        self._tombstone_count = -1
        self._recent: dict[str, Event] = {}
        """Payload → event of the last RECENT_PARSED events given to ``ingest_then`` (oldest first)."""
        self.dead_letter_rows = dead_letter_rows
        self.dead_letter_bytes = dead_letter_bytes
        with self._write(lock="schema") as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            row = cur.fetchone()
            before, after = migration_v1() if row is not None and row[0] == "1" else ([], [])
            for statement in [*before, *ddl(self.dialect), *after]:
                cur.execute(statement)
            cur.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                        " SET value = excluded.value", ("schema_version", SCHEMA_VERSION))
            if after:
                log.info("HQ database migrated", extra={"from": "1", "to": SCHEMA_VERSION})

    # --- dialect hooks -------------------------------------------------
    @abstractmethod
    def _transaction(self, lock: Lock) -> AbstractContextManager[Cursor]:
        """A cursor inside one write transaction holding ``lock`` (see the module docstring)."""

    @abstractmethod
    def _read_cursor(self) -> Cursor: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _scrub(self) -> None:
        """After an erasure: leave no copy of deleted rows in the database's files (what the backend can)."""

    def _insert_events(self, cur: Cursor, rows: list[tuple[Any, ...]]) -> set[str]:
        """Insert rows (EVENT_COLUMNS order, ids not stored yet) and return the ids inserted.

        SQLite holds the write lock from the check to here, so every row goes in.
        """
        insert = (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES"  # noqa: S608
                  f" ({', '.join('?' * len(EVENT_COLUMNS))}) ON CONFLICT (event_id) DO NOTHING")
        cur.executemany(insert, rows)
        return {row[0] for row in rows}

    def _insert_firings(self, cur: Cursor, rows: list[tuple[Any, ...]]) -> set[str]:
        """Insert activations (FIRING_COLUMNS order, distinct ids) and return the ids that were not there before.

        Which were there is read first (none, unless redelivered), and the rest go in by multi-row INSERTs:
        SQLite holds the write lock from the read to here. A RETURNING would hand back each
        row by a step of its own, and the sqlite3 module releases the GIL for every step: a
        thread hand-off per firing while the subscriber's network thread is busy.
        """
        there: set[str] = set()
        for start in range(0, len(rows), CHUNK):
            where, params = self._in("activation_id", [row[0] for row in rows[start:start + CHUNK]])
            cur.execute(f"SELECT activation_id FROM activations WHERE {where}", params)  # noqa: S608
            there.update(row[0] for row in cur.fetchall())
        fresh = [row for row in rows if row[0] not in there]
        self._insert_rows(cur, f"activations ({', '.join(FIRING_COLUMNS)})", len(FIRING_COLUMNS), fresh,
                          " ON CONFLICT DO NOTHING")
        return {row[0] for row in fresh}

    def _insert_deliveries(self, cur: Cursor, rows: list[tuple[Any, ...]]) -> None:
        """Insert pending deliveries (DELIVERY_COLUMNS order)."""
        self._insert_rows(cur, f"deliveries ({', '.join(DELIVERY_COLUMNS)}, state)", len(DELIVERY_COLUMNS), rows,
                          "", extra="'pending'")

    def _insert_rows(self, cur: Cursor, into: str, width: int, rows: list[tuple[Any, ...]], tail: str,
                     extra: str = "") -> None:
        """``INSERT INTO {into} VALUES (...), (...){tail}``, up to 999 parameters a statement (SQLite's
        oldest limit): one step per statement, where ``executemany`` takes one per row."""
        marks = f"({', '.join('?' * width)}{', ' + extra if extra else ''})"
        per = SQLITE_PARAMETERS // width
        for start in range(0, len(rows), per):
            part = rows[start:start + per]
            cur.execute(f"INSERT INTO {into} VALUES " + ", ".join([marks] * len(part)) + tail,  # noqa: S608
                        [value for row in part for value in row])

    def _octets(self, column: str) -> str:
        return f"length(CAST({column} AS BLOB))"

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column`` is one of ``values``: the condition and its parameters (callers keep lists to CHUNK)."""
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    @contextmanager
    def _write(self, lock: Lock = "ingest") -> Iterator[Cursor]:
        with self._lock, self._errors():
            if self._unit is None:
                with self._transaction(lock) as cur:
                    yield cur
            elif lock != "ingest":
                raise _Separately(f"a {lock} lock inside a batch's transaction")
            else:
                yield self._unit  # the lock is held by the thread inside ingest_then: no other sees _unit

    @contextmanager
    def _read(self) -> Iterator[Cursor]:
        with self._lock, self._errors():
            yield self._read_cursor()

    @abstractmethod
    def _errors(self) -> AbstractContextManager[None]:
        """Translate the driver's exceptions: :class:`Unstorable` when the data is at fault, else HqStoreError."""

    # --- ingest --------------------------------------------------------
    def ingest(self, batch: Sequence[Accepted | Rejected], received_at: float, *,
               want_events: bool = True) -> IngestResult:
        """Store one batch: new events, dead letters, the agents' seq accounting and what to acknowledge.

        One transaction for the batch; if the database refuses its data, one
        per event, and an event refused alone becomes a dead letter. Raises
        HqStoreError only when the database itself fails (nothing is stored then).
        """
        try:
            return self._ingest(batch, received_at, want_events)
        except Unstorable as exc:
            if len(batch) == 1 and isinstance(batch[0], Rejected):
                raise
            log.warning("batch refused by the database; storing its events one by one",
                        extra={"error": str(exc), "size": len(batch)})
        result = IngestResult()
        for item in batch:
            try:
                part = self._ingest([item], received_at, want_events)
            except Unstorable as exc:
                if isinstance(item, Rejected):
                    raise
                log.warning("event dead-lettered: the database refused it",
                            extra={"event_id": item.event_id, "error": str(exc)})
                part = self._ingest([item.rejected(topic_for(item.event), f"unstorable: {exc}"[:500])],
                                    received_at, want_events)
            result.add(part)
        return result

    def ingest_then(self, batch: Sequence[Accepted | Rejected], received_at: float, then: Callable[[], T], *,
                    want_events: bool = True) -> tuple[IngestResult, T]:
        """``ingest`` and ``then()`` (which may read and write this store) in one transaction: one commit.

        ``then`` sees the batch's events uncommitted; what it writes commits with
        them or not at all. A batch that needs more than one transaction (one
        the database refuses, which is stored event by event; one that brings
        an erased person back, which erases again) is stored by ``ingest``
        alone and ``then()`` runs after it, in transactions of its own.
        HqStoreError: nothing of either is stored.
        """
        try:
            with self._write() as cur:
                self._unit = cur
                self._remember(batch)
                try:
                    result = self._ingest(batch, received_at, want_events)
                    after = then()
                finally:
                    self._unit = None
            return result, after
        except (_Separately, Unstorable) as exc:
            log.debug("batch stored in separate transactions", extra={"reason": str(exc)})
        return self.ingest(batch, received_at, want_events=want_events), then()

    def _remember(self, batch: Sequence[Accepted | Rejected]) -> None:
        """Keep the batch's events by payload (see RECENT_PARSED), dropping the oldest beyond the bound.

        Keyed by the exact payload, not the event id: a stored row is only ever
        read back as the event parsed from its own bytes, whether or not this
        copy was the one stored.
        """
        recent = self._recent
        for item in batch:
            if isinstance(item, Accepted):
                recent[item.payload] = item.event
        excess = len(recent) - RECENT_PARSED
        if excess > 0:
            for payload in list(itertools.islice(recent, excess)):
                del recent[payload]

    def _ingest(self, batch: Sequence[Accepted | Rejected], received_at: float,
                want_events: bool) -> IngestResult:
        result = IngestResult()
        groups: dict[str, list[Accepted]] = defaultdict(list)
        rejected: list[Rejected] = []
        touched: dict[EpochKey, _EpochBatch] = defaultdict(_EpochBatch)
        for item in batch:
            if isinstance(item, Rejected):
                rejected.append(item)
            else:
                groups[item.event_id].append(item)
        # Sorted ids: concurrent writers take index locks in one order (no deadlock).
        ids = sorted(groups)
        follow_up: list[tuple[VisitKey, str]] = []
        with self._write() as cur:
            tombstones = self._current_tombstones(cur)
            existing = self._stored_payloads(cur, ids)
            fresh, retire = [], []
            for event_id in ids:
                first, *copies = groups[event_id]
                reference = existing.get(event_id, first.payload)
                # Each copy is compared with what is stored, else with the batch's first copy.
                for item in copies if event_id not in existing else [first, *copies]:
                    if _same_event(reference, item):
                        result.duplicates += 1
                        touched[item.origin[:3]].resent = True
                    else:
                        rejected.append(_conflict(item))
                if event_id in existing:
                    continue
                item = first
                if tombstones and tombstones.intersection(item.digests()):
                    retire.append(item)
                    if item.visit_id is not None and visit_digest(
                            item.event.store_id, item.event.agent_id, item.visit_id) not in tombstones:
                        follow_up.append(((item.event.store_id, item.event.agent_id, item.visit_id),
                                          item.event.subject))
                else:
                    fresh.append(item)
            fresh, unlinked = self._split_unconsented(cur, fresh)
            retire.extend(unlinked)
            result.unlinked = len(unlinked)
            inserted = self._insert_events(cur, [
                (i.event_id, i.event.store_id, i.event.agent_id, i.event.seq, i.event.type,
                 i.event.ts.timestamp(), i.event.subject, i.visit_id, i.loyalty_id, i.payload,
                 received_at, i.epoch) for i in fresh]) if fresh else set()
            stored = [i for i in fresh if i.event_id in inserted]
            result.stored = len(stored)
            result.duplicates += len(fresh) - len(stored)
            if want_events:
                result.new = [i.event for i in stored]
            result.suppressed = len(retire)
            result.dead_letters = len(rejected)
            result.conflicts = sum(1 for r in rejected if r.reason.startswith("conflict"))
            finished = [i.origin for i in retire] + [r.origin for r in rejected if r.origin is not None]
            if finished:
                cur.executemany("INSERT INTO finished_seqs (store_id, agent_id, epoch, seq) VALUES (?, ?, ?, ?)"
                                " ON CONFLICT DO NOTHING", finished)
            if rejected:
                cur.executemany(
                    "INSERT INTO dead_letters (received_at, topic, reason, size, payload)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(received_at, r.topic, r.reason, r.size, r.payload) for r in rejected],
                )
                self._cap_dead_letters(cur)
            for origin in finished:
                touched[origin[:3]].seqs.append(origin[3])
            for item in [*stored, *retire]:
                part = touched[item.origin[:3]]
                part.seqs.append(item.event.seq)
                part.stored.append(item)
            result.acks = self._account(cur, touched, received_at)
        if result.conflicts:
            log.warning("event ids reused with different content; dead-lettered as conflicts",
                        extra={"count": result.conflicts})
        if follow_up:
            if self._unit is not None:
                raise _Separately("an erased person's new visit")
            # A tombstoned loyalty id linked to a new visit: that visit is the person's too.
            self._erase(loyalty_ids=[], visits=[k for k, _ in follow_up],
                        subjects=[s for _, s in follow_up])
        return result

    def _split_unconsented(self, cur: Cursor, items: list[Accepted]) -> tuple[list[Accepted], list[Accepted]]:
        """(items to store, links of customers without profiling consent: never stored).

        Without a link the visit stays an anonymous visitor's; the link's seq
        is finished like a tombstoned event's, so acknowledgements go on.
        """
        links = {i.loyalty_id for i in items if i.event.type == "identity.linked" and i.loyalty_id is not None}
        if not links:
            return items, []
        allowed = self._granted_to(cur, links, "profiling")
        keep: list[Accepted] = []
        drop: list[Accepted] = []
        for item in items:
            linked = item.event.type == "identity.linked"
            (drop if linked and item.loyalty_id not in allowed else keep).append(item)
        return keep, drop

    def _granted(self, cur: Cursor, loyalty_id: str, purpose: str) -> bool:
        """The newest consent record for the purpose decides (ties: the one stored last); none: refused."""
        cur.execute("SELECT granted FROM consent WHERE loyalty_id = ? AND purpose = ?"
                    " ORDER BY ts DESC, id DESC LIMIT 1", (loyalty_id, purpose))
        row = cur.fetchone()
        return row is not None and bool(row[0])

    def _granted_to(self, cur: Cursor, loyalty_ids: Iterable[str], purpose: str) -> set[str]:
        """Of these customers, those ``_granted`` the purpose: one query for a batch's links, not one each."""
        ids = sorted(set(loyalty_ids))
        newest: dict[str, tuple[float, int, bool]] = {}
        for start in range(0, len(ids), CHUNK):
            where, params = self._in("loyalty_id", ids[start:start + CHUNK])
            cur.execute(f"SELECT loyalty_id, ts, id, granted FROM consent WHERE {where} AND purpose = ?",  # noqa: S608
                        (*params, purpose))
            for lid, ts, row_id, granted in cur.fetchall():
                record = (float(ts), int(row_id), bool(granted))
                if lid not in newest or record[:2] > newest[lid][:2]:
                    newest[lid] = record
        return {lid for lid, (_, _, granted) in newest.items() if granted}

    def _stored_payloads(self, cur: Cursor, ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(ids), CHUNK):
            part = ids[start:start + CHUNK]
            where, params = self._in("event_id", part)
            cur.execute(f"SELECT event_id, payload FROM events WHERE {where}", params)  # noqa: S608
            found.update((row[0], row[1]) for row in cur.fetchall())
        return found

    def _current_tombstones(self, cur: Cursor) -> set[str]:
        cur.execute("SELECT count(*) FROM tombstones")
        count = int(cur.fetchone()[0])
        if count != self._tombstone_count:
            cur.execute("SELECT digest FROM tombstones")
            self._tombstones = {row[0] for row in cur.fetchall()}
            self._tombstone_count = count
        return self._tombstones

    def _cap_dead_letters(self, cur: Cursor) -> None:
        """Evict the oldest dead letters beyond the row and byte caps, and count them."""
        cur.execute(f"SELECT count(*), coalesce(sum({self._octets('payload')}), 0) FROM dead_letters")  # noqa: S608
        rows, octets = (int(v) for v in cur.fetchone())
        if rows <= self.dead_letter_rows and octets <= self.dead_letter_bytes:
            return
        cur.execute(f"SELECT id, {self._octets('payload')} FROM dead_letters ORDER BY id DESC")  # noqa: S608
        budget, cutoff = 0, None
        for kept, (letter_id, size) in enumerate(cur.fetchall()):
            if kept + 1 > self.dead_letter_rows or budget + int(size) > self.dead_letter_bytes:
                cutoff = int(letter_id)
                break
            budget += int(size)
        if cutoff is None:
            return
        cur.execute("DELETE FROM dead_letters WHERE id <= ?", (cutoff,))
        evicted = int(cur.rowcount)
        cur.execute("SELECT value FROM meta WHERE key = 'dead_letters_evicted'")
        row = cur.fetchone()
        total = (int(row[0]) if row is not None else 0) + evicted
        cur.execute("INSERT INTO meta (key, value) VALUES ('dead_letters_evicted', ?) ON CONFLICT (key)"
                    " DO UPDATE SET value = excluded.value", (str(total),))
        log.warning("dead letters evicted by the caps, oldest first",
                    extra={"evicted": evicted, "total_evicted": total, "max_rows": self.dead_letter_rows,
                           "max_bytes": self.dead_letter_bytes})

    def _account(self, cur: Cursor, touched: dict[EpochKey, _EpochBatch], now: float) -> dict[EpochKey, int]:
        """Move each touched agent epoch's seq state forward; return what to acknowledge.

        Acknowledged: an epoch whose contiguous mark advanced, or whose agent
        re-sent events HQ has (it missed the last ack). Never the legacy epoch
        (its agents do not read acks), never an epoch older (first received
        earlier) than another one of the same agent id: its acks would
        overwrite the newer epoch's retained one. Events of an older epoch
        dated after the newer one's first event are flagged (``interleaved``):
        two devices run with one agent id.
        """
        acks: dict[EpochKey, int] = {}
        for key in sorted(touched):
            part = touched[key]
            first_ts, first_seen, upto, top = self._epoch_row(cur, key, part, now)
            stamps = [i.event.ts.timestamp() for i in part.stored]
            statuses = [i.event for i in part.stored if isinstance(i.event, AgentStatus)]
            # Only a seq at or below the epoch's highest can have been used before.
            reused = self._reused_seqs(cur, key, [i.event.seq for i in part.stored if i.event.seq <= top])
            cur.execute("SELECT first_seen, first_ts FROM agent_epochs WHERE store_id = ? AND agent_id = ?"
                        " AND epoch <> ?", key)
            newer = [float(ts) for seen, ts in cur.fetchall() if (float(seen), float(ts)) > (first_seen, first_ts)]
            late = sum(1 for ts in stamps if newer and ts > min(newer))
            if late:
                log.warning("two live outbox epochs for one agent id (two devices with one agent id?);"
                            " the older epoch is not acknowledged",
                            extra={"store_id": key[0], "agent_id": key[1], "epoch": key[2], "events": late})
            if reused:
                log.warning("seqs reused with new event ids in one epoch (an outbox reset by an agent"
                            " without epochs?)", extra={"store_id": key[0], "agent_id": key[1], "seqs": reused})
            cur.execute(
                "UPDATE agent_epochs SET max_seq = CASE WHEN ? > max_seq THEN ? ELSE max_seq END,"
                " status_last_seq = CASE WHEN ? > status_last_seq THEN ? ELSE status_last_seq END,"
                " evicted_total = CASE WHEN ? > evicted_total THEN ? ELSE evicted_total END,"
                " first_ts = CASE WHEN ? < first_ts THEN ? ELSE first_ts END,"
                " last_ts = CASE WHEN ? > last_ts THEN ? ELSE last_ts END,"
                " last_seen = ?, reused_seqs = reused_seqs + ?, interleaved = interleaved + ?"
                " WHERE store_id = ? AND agent_id = ? AND epoch = ?",
                (*[max(part.seqs, default=0)] * 2,
                 *[max((s.last_seq for s in statuses), default=0)] * 2,
                 *[max((s.evicted_total for s in statuses), default=0)] * 2,
                 *[min(stamps, default=first_ts)] * 2, *[max(stamps, default=0.0)] * 2,
                 now, reused, late, *key),
            )
            # Seqs below an agent's first held one will never come: lost (``hq gaps`` shows them), not awaited.
            gone = max((s.first_held_seq - 1 for s in statuses), default=0)
            if gone > upto:
                log.warning("agent's outbox no longer holds seqs HQ has not finished; counted as lost",
                            extra={"store_id": key[0], "agent_id": key[1], "epoch": key[2], "below": gone + 1})
            contiguous = self._advance(cur, key, upto, floor=gone)
            if key[2] != LEGACY_EPOCH and not newer and (contiguous > upto or part.resent):
                acks[key] = contiguous
        return acks

    def _epoch_row(self, cur: Cursor, key: EpochKey, part: _EpochBatch,
                   now: float) -> tuple[float, float, int, int]:
        """(first event time, first received, contiguous mark, highest seq) of an agent epoch.

        The row is created when the epoch is new. A new epoch of an agent HQ
        knew without epochs (an upgraded agent that kept its seqs) starts
        complete up to the legacy epoch's seqs: its first seq need not be 1.
        """
        select = ("SELECT first_ts, first_seen, contiguous_upto, max_seq FROM agent_epochs WHERE store_id = ?"
                  " AND agent_id = ? AND epoch = ?")
        cur.execute(select, key)
        row = cur.fetchone()
        if row is None:
            base = 0
            if key[2] != LEGACY_EPOCH and part.seqs:
                cur.execute("SELECT max_seq FROM agent_epochs WHERE store_id = ? AND agent_id = ? AND epoch = ?",
                            (key[0], key[1], LEGACY_EPOCH))
                legacy = cur.fetchone()
                if legacy is not None:
                    base = max(0, min(int(legacy[0]), min(part.seqs) - 1))
            first_ts = min((i.event.ts.timestamp() for i in part.stored), default=now)
            # ON CONFLICT: another HQ writing the same database may create the row first.
            cur.execute("INSERT INTO agent_epochs (store_id, agent_id, epoch, contiguous_upto, first_ts, last_ts,"
                        " first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (*key, base, first_ts, first_ts, now, now))
            cur.execute(select, key)
            row = cur.fetchone()
        return float(row[0]), float(row[1]), int(row[2]), int(row[3])

    def _reused_seqs(self, cur: Cursor, key: EpochKey, seqs: list[int]) -> int:
        reused = 0
        for start in range(0, len(seqs), CHUNK):
            part = seqs[start:start + CHUNK]
            cur.execute("SELECT count(*) FROM (SELECT seq FROM events WHERE store_id = ? AND agent_id = ?"  # noqa: S608
                        f" AND epoch = ? AND seq IN ({', '.join('?' * len(part))}) GROUP BY seq"
                        " HAVING count(*) > 1) AS r", (*key, *part))
            reused += int(cur.fetchone()[0])
        return reused

    def _advance(self, cur: Cursor, key: EpochKey, upto: int, floor: int = 0) -> int:
        """The highest seq with every seq up to it finished (stored, retired or dead-lettered) or given up
        (at or below ``floor``: gone from the agent's outbox; what HQ lacks there goes to ``lost_seqs``)."""
        start = upto
        if floor > upto:
            self._give_up(cur, key, upto, floor)
            upto = floor
        while True:
            cur.execute("SELECT seq FROM (SELECT seq FROM events WHERE store_id = ? AND agent_id = ? AND epoch = ?"
                        " AND seq > ? UNION SELECT seq FROM finished_seqs WHERE store_id = ? AND agent_id = ?"
                        " AND epoch = ? AND seq > ?) AS s ORDER BY seq LIMIT ?",
                        (*key, upto, *key, upto, CONTIGUITY_STEP))
            seqs = [int(row[0]) for row in cur.fetchall()]
            for seq in seqs:
                if seq != upto + 1:
                    break
                upto = seq
            else:
                if len(seqs) == CONTIGUITY_STEP:
                    continue
            break
        if upto > start:
            cur.execute("UPDATE agent_epochs SET contiguous_upto = ? WHERE store_id = ? AND agent_id = ?"
                        " AND epoch = ? AND contiguous_upto < ?", (upto, *key, upto))
        return upto

    def _give_up(self, cur: Cursor, key: EpochKey, upto: int, floor: int) -> None:
        """Record the seqs in (upto, floor] HQ never received as lost ranges."""
        cur.execute("SELECT seq FROM events WHERE store_id = ? AND agent_id = ? AND epoch = ? AND seq > ?"
                    " AND seq <= ? UNION SELECT seq FROM finished_seqs WHERE store_id = ? AND agent_id = ?"
                    " AND epoch = ? AND seq > ? AND seq <= ? ORDER BY seq", (*key, upto, floor) * 2)
        have = [int(row[0]) for row in cur.fetchall()]
        lost, expected = [], upto + 1
        for seq in [*have, floor + 1]:
            if seq > expected:
                lost.append((expected, seq - 1))
            expected = seq + 1
        cur.executemany("INSERT INTO lost_seqs (store_id, agent_id, epoch, lo, hi) VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT DO NOTHING", [(*key, lo, hi) for lo, hi in lost])

    # --- queries -------------------------------------------------------
    def loyalty_events(self, loyalty_id: str) -> tuple[list[Event], list[Event]]:
        """(events of every visit linked to the loyalty id, its card taps); nothing without profiling consent.

        Checked here at query time as well as at ingest and withdrawal, so a
        link stored by another HQ in the instant of a withdrawal is never used.
        """
        with self._read() as cur:
            if not self._granted(cur, loyalty_id, "profiling"):
                return [], []
            cur.execute("SELECT DISTINCT store_id, agent_id, visit_id FROM events"
                        " WHERE loyalty_id = ? AND type = 'identity.linked'", (loyalty_id,))
            keys = [tuple(row) for row in cur.fetchall()]
            events = self._visit_events(cur, keys)
            cur.execute("SELECT payload FROM events WHERE loyalty_id = ? AND type = 'card.tapped'",
                        (loyalty_id,))
            taps = _parsed(row[0] for row in cur.fetchall())
        return events, taps

    def subject_events(self, subject: str) -> list[Event]:
        """Events of every visit of one pseudonymous visitor."""
        with self._read() as cur:
            cur.execute("SELECT DISTINCT store_id, agent_id, visit_id FROM events"
                        " WHERE subject = ? AND visit_id IS NOT NULL", (subject,))
            return self._visit_events(cur, [tuple(row) for row in cur.fetchall()])

    def _visit_events(self, cur: Cursor, keys: Iterable[Sequence[str]]) -> list[Event]:
        events: list[Event] = []
        for key in keys:
            cur.execute("SELECT payload FROM events WHERE store_id = ? AND agent_id = ?"
                        " AND visit_id = ?", tuple(key))
            events.extend(_parsed(row[0] for row in cur.fetchall()))
        return events

    def store_events(self, store_id: str, types: Sequence[str], start: float, end: float) -> list[Event]:
        """One store's events of these types dated in [start, end), oldest first (index events_store_type_ts)."""
        with self._read() as cur:
            payloads: list[str] = []
            for kind in types:
                cur.execute("SELECT payload FROM events WHERE store_id = ? AND type = ? AND ts >= ? AND ts < ?"
                            " ORDER BY ts", (store_id, kind, start, end))
                payloads.extend(row[0] for row in cur.fetchall())
        return _parsed(payloads)

    def stores_with(self, types: Sequence[str]) -> list[str]:
        """The stores that sent events of any of these types, sorted."""
        with self._read() as cur:
            found: set[str] = set()
            for kind in types:
                cur.execute("SELECT DISTINCT store_id FROM events WHERE type = ?", (kind,))
                found.update(row[0] for row in cur.fetchall())
        return sorted(found)

    def loyalty_ids(self) -> list[str]:
        """Loyalty ids with a linked visit and profiling consent now."""
        with self._read() as cur:
            cur.execute("SELECT DISTINCT loyalty_id FROM events WHERE type = 'identity.linked'"
                        " ORDER BY loyalty_id")
            found = [row[0] for row in cur.fetchall()]
            return [lid for lid in found if self._granted(cur, lid, "profiling")]

    # --- consent -------------------------------------------------------
    def add_consent(self, records: Sequence[ConsentRecord], recorded_at: float) -> ConsentChange:
        """Store consent records (a record already stored is not stored twice).

        A customer whose profiling consent no longer holds loses their links in
        the same transaction: the identity.linked events are deleted (their seqs
        finished), so their visits are anonymous visitors' visits again. Taken
        under the erasure lock: an ingest either committed its link before (and
        it is deleted here) or reads this withdrawal first (and stores none).
        """
        change = ConsentChange()
        with self._write("erase") as cur:
            tombstones = self._current_tombstones(cur)
            for r in records:
                if loyalty_digest(r.loyalty_id) in tombstones:
                    change.erased += 1
                    continue
                cur.execute("INSERT INTO consent (loyalty_id, purpose, granted, ts, source, recorded_at)"
                            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            (r.loyalty_id, r.purpose, int(r.granted), r.ts.timestamp(), r.source, recorded_at))
                change.stored += max(int(cur.rowcount), 0)
            for loyalty_id in sorted({r.loyalty_id for r in records if r.purpose == "profiling"}):
                if self._granted(cur, loyalty_id, "profiling"):
                    continue
                where = "loyalty_id = ? AND type = 'identity.linked'"
                cur.execute("INSERT INTO finished_seqs (store_id, agent_id, epoch, seq) SELECT store_id,"  # noqa: S608
                            f" agent_id, epoch, seq FROM events WHERE {where} ON CONFLICT DO NOTHING", (loyalty_id,))
                cur.execute(f"DELETE FROM events WHERE {where}", (loyalty_id,))  # noqa: S608
                change.unlinked += max(int(cur.rowcount), 0)
        return change

    def consent_records(self, loyalty_id: str) -> list[ConsentRecord]:
        """Every consent record of one customer, oldest first (the order ``state`` breaks ties by)."""
        with self._read() as cur:
            cur.execute("SELECT loyalty_id, purpose, granted, ts, source FROM consent WHERE loyalty_id = ?"
                        " ORDER BY ts, id", (loyalty_id,))
            rows = cur.fetchall()
        return [ConsentRecord(loyalty_id=lid, purpose=purpose, granted=bool(granted),
                              ts=utc_from_epoch(float(ts)), source=source)
                for lid, purpose, granted, ts, source in rows]

    def consent_state(self, loyalty_id: str) -> ConsentState:
        return consent_state(loyalty_id, self.consent_records(loyalty_id))

    def allows(self, loyalty_id: str, purpose: Purpose) -> bool:
        """What the newest record says now (one indexed look-up)."""
        with self._read() as cur:
            return self._granted(cur, loyalty_id, purpose)

    # --- activations ---------------------------------------------------
    def linked_visits(self, keys: Iterable[VisitKey]) -> dict[VisitKey, str]:
        """For each visit, the loyalty id an identity.linked joined it to (the newest link wins)."""
        newest: dict[VisitKey, tuple[float, str]] = {}
        with self._read() as cur:
            rows = self._visit_rows(cur, keys, ("ts", "loyalty_id", "type"), " AND loyalty_id IS NOT NULL")
            for store_id, agent_id, visit_id, ts, loyalty_id, kind in rows:
                if kind != "identity.linked":
                    continue
                key = (store_id, agent_id, visit_id)
                if key not in newest or (float(ts), loyalty_id) > newest[key]:
                    newest[key] = (float(ts), loyalty_id)
        return {key: loyalty_id for key, (_, loyalty_id) in newest.items()}

    def _fetch_each(self, cur: Cursor, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """The rows of each statement, in order: statements that do not depend on each other, which
        a backend may send together."""
        out: list[list[Any]] = []
        for query, params in statements:
            cur.execute(query, params)
            out.append(cur.fetchall())
        return out

    def _visit_rows(self, cur: Cursor, keys: Iterable[VisitKey], columns: Sequence[str],
                    condition: str = "", *, text: bool = False) -> list[Any]:
        """(store_id, agent_id, visit_id, *columns) of the events of these visits, ``condition`` (`` AND …``) holding.

        One query per agent and chunk of visits, on the visit index: naming the
        type or ordering by ts in SQL lets SQLite's planner walk all of a
        store's links by (store_id, type, ts) instead, one scan per visit.
        ``text``: the columns are TEXT, and each query's rows come back as one
        JSON array (``json_group_array``): one step instead of one per event, as
        the sqlite3 module releases and takes back the GIL for every step.
        """
        by_agent: dict[tuple[str, str], list[str]] = defaultdict(list)
        for store_id, agent_id, visit_id in sorted(set(keys)):
            by_agent[(store_id, agent_id)].append(visit_id)
        rows: list[Any] = []
        for (store_id, agent_id), visits in by_agent.items():
            for start in range(0, len(visits), CHUNK):
                where, params = self._in("visit_id", visits[start:start + CHUNK])
                if text:
                    cur.execute(f"SELECT json_group_array(json_array(visit_id, {', '.join(columns)})) FROM events"  # noqa: S608
                                f" WHERE store_id = ? AND agent_id = ? AND {where}{condition}",
                                (store_id, agent_id, *params))
                    rows.extend((store_id, agent_id, *row) for row in json.loads(cur.fetchone()[0]))
                    continue
                cur.execute(f"SELECT store_id, agent_id, visit_id, {', '.join(columns)} FROM events"  # noqa: S608
                            f" WHERE store_id = ? AND agent_id = ? AND {where}{condition}",
                            (store_id, agent_id, *params))
                rows.extend(cur.fetchall())
        return rows

    def rule_inputs(self, loyalty_ids: Iterable[str]) -> dict[str, RuleInputs]:
        """What activation rules read of each customer, in a few queries for all of them.

        Per customer the same as ``consent_state``, ``loyalty_events`` and the
        customer's rows of ``activations``, read in one transaction: a batch
        of events costs a handful of round trips, not several per customer.
        """
        ids = sorted(set(loyalty_ids))
        consent: dict[tuple[str, str], tuple[float, int, bool]] = {}
        links: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
        taps: dict[str, list[str]] = defaultdict(list)
        history: dict[str, list[tuple[str, float, str, str, str | None]]] = defaultdict(list)
        visit_payloads: dict[tuple[str, str, str], list[str]] = {}
        with self._read() as cur:
            for start in range(0, len(ids), CHUNK):
                where, params = self._in("loyalty_id", ids[start:start + CHUNK])
                granted_rows, linked_rows, fired_rows = self._fetch_each(cur, [
                    (f"SELECT loyalty_id, purpose, ts, id, granted FROM consent WHERE {where}", params),  # noqa: S608
                    (("SELECT loyalty_id, type, store_id, agent_id, visit_id, payload FROM events"  # noqa: S608
                     f" WHERE {where} AND type IN ('identity.linked', 'card.tapped')"), params),
                    (("SELECT loyalty_id, rule_id, ts, store_id, agent_id, visit_id FROM activations"  # noqa: S608
                     f" WHERE {where} ORDER BY ts"), params)])
                for lid, purpose, ts, row_id, granted in granted_rows:
                    newest = (float(ts), int(row_id), bool(granted))
                    if (lid, purpose) not in consent or newest[:2] > consent[(lid, purpose)][:2]:
                        consent[(lid, purpose)] = newest
                for lid, kind, store_id, agent_id, visit_id, payload in linked_rows:
                    if not consent.get((lid, "profiling"), (0, 0, False))[2]:
                        continue  # read with the consent, used only with profiling
                    if kind == "card.tapped":
                        taps[lid].append(payload)
                    elif visit_id is not None:
                        links[lid].add((store_id, agent_id, visit_id))
                for lid, *row in fired_rows:
                    history[lid].append(cast(tuple[str, float, str, str, str | None], tuple(row)))
            for store_id, agent_id, visit_id, payload in self._visit_rows(
                    cur, {key for keys in links.values() for key in keys}, ("payload",), text=True):
                visit_payloads.setdefault((store_id, agent_id, visit_id), []).append(payload)
        out: dict[str, RuleInputs] = {}
        for lid in ids:
            granted = {purpose: consent.get((lid, purpose), (0, 0, False))[2] for purpose in PURPOSES}
            payloads = [p for key in sorted(links.get(lid, ())) for p in visit_payloads.get(key, ())]
            out[lid] = RuleInputs(granted, _parsed(payloads, self._recent), _parsed(taps.get(lid, ()), self._recent),
                                  history.get(lid, []))
        return out

    def record_firing(self, firing: FiringRow, deliveries: Sequence[DeliveryRow]) -> bool:
        """Record one firing and its pending deliveries; False when (rule, event) fired already."""
        return self.record_firings([(firing, deliveries)])[0]

    def record_firings(self, firings: Sequence[tuple[FiringRow, Sequence[DeliveryRow]]]) -> list[bool]:
        """Record firings with their pending deliveries in one transaction; per firing, whether it is new.

        The unique key decides across HQs: only the one whose insert went in
        (RETURNING names it) delivers. One commit per batch, not per firing (a
        commit is a disk flush); inserted in activation_id order, so that two
        HQs recording overlapping firings take their row locks in one order.
        """
        if not firings:
            return []
        first = {f.activation_id: (f, deliveries) for f, deliveries in reversed(firings)}
        ordered = sorted(first.items())
        with self._write() as cur:
            inserted = self._insert_recorded(cur, [
                (f.activation_id, f.rule_id, f.event_id, f.loyalty_id, f.store_id, f.agent_id, f.visit_id,
                 f.sector_id, f.ts, f.fired_at, f.facts) for _, (f, _) in ordered],
                sorted((aid, d.action_no, d.kind, d.target, d.body, d.claimed_by, f.fired_at, f.fired_at)
                       for aid, (f, deliveries) in ordered for d in deliveries))
        new: list[bool] = []
        for firing, _ in firings:
            new.append(firing.activation_id in inserted)
            inserted.discard(firing.activation_id)  # the same firing twice in one call: the first is new
        return new

    def _insert_recorded(self, cur: Cursor, firings: list[tuple[Any, ...]], deliveries: list[tuple[Any, ...]]
                         ) -> set[str]:
        """Insert firings (FIRING_COLUMNS order) and, of those that went in, their deliveries
        (DELIVERY_COLUMNS order, state pending); return the ids that went in."""
        inserted = self._insert_firings(cur, firings)
        rows = [row for row in deliveries if row[0] in inserted]
        if rows:
            self._insert_deliveries(cur, rows)
        return inserted

    def set_deliveries(self, changes: Sequence[tuple[str, int, str, str | None, int]], now: float) -> None:
        """New states of deliveries (activation_id, action_no, state, detail, attempts).

        A final state (delivered, dead) is never changed back: of one delivery's
        changes in one call, the first final one holds, else the last.
        """
        merged: dict[tuple[str, int], tuple[str, str | None, int]] = {}
        for aid, no, state, detail, attempts in changes:
            held = merged.get((aid, no))
            if held is None or held[0] not in FINAL_STATES:
                merged[(aid, no)] = (state, None if detail is None else detail[:500], attempts)
        if not merged:
            return
        with self._write() as cur:
            self._update_deliveries(cur, [(state, detail, attempts, now, aid, no)
                                          for (aid, no), (state, detail, attempts) in sorted(merged.items())])

    def _update_deliveries(self, cur: Cursor, rows: list[tuple[str, str | None, int, float, str, int]]) -> None:
        """(state, detail, attempts, updated_at, activation_id, action_no) per delivery not final yet."""
        cur.executemany("UPDATE deliveries SET state = ?, detail = ?, attempts = ?, updated_at = ?"
                        " WHERE activation_id = ? AND action_no = ? AND state NOT IN ('delivered', 'dead')", rows)

    def _renew_leases(self, cur: Cursor, me: str, now: float, held: list[tuple[str, int]]) -> None:
        """claimed_at = now for the deliveries ``me`` holds (activation_id, action_no)."""
        cur.executemany("UPDATE deliveries SET claimed_at = ? WHERE activation_id = ? AND action_no = ?"
                        " AND claimed_by = ?", [(now, a, n, me) for a, n in held])

    def claim_deliveries(self, me: str, now: float, lease_s: float, held: Iterable[tuple[str, int]],
                         limit: int = 500) -> list[DeliveryRow]:
        """Renew the leases of what ``me`` holds; take over open deliveries whose lease ran out.

        An HQ killed mid-delivery stops renewing, so another picks its work up
        after ``lease_s``. The UPDATE's condition is re-checked per row, so two
        HQs never both take one delivery.
        """
        with self._write() as cur:
            self._renew_leases(cur, me, now, sorted(held))
            cur.execute("SELECT activation_id, action_no FROM deliveries WHERE state IN ('pending', 'retrying')"
                        " AND claimed_at < ? ORDER BY claimed_at LIMIT ?", (now - lease_s, limit))
            stale = [tuple(row) for row in cur.fetchall()]
            taken: list[DeliveryRow] = []
            for activation_id, action_no in stale:
                cur.execute("UPDATE deliveries SET claimed_by = ?, claimed_at = ? WHERE activation_id = ?"
                            " AND action_no = ? AND state IN ('pending', 'retrying') AND claimed_at < ?",
                            (me, now, activation_id, action_no, now - lease_s))
                if int(cur.rowcount) != 1:
                    continue
                cur.execute("SELECT d.activation_id, d.action_no, d.kind, d.target, d.body, a.rule_id, d.attempts"
                            " FROM deliveries AS d JOIN activations AS a ON a.activation_id = d.activation_id"
                            " WHERE d.activation_id = ? AND d.action_no = ?", (activation_id, action_no))
                row = cur.fetchone()
                if row is not None:
                    taken.append(DeliveryRow(row[1], row[2], row[3], row[4], me, row[0], row[5], int(row[6])))
        return taken

    def activations(self, limit: int = 50) -> list[ActivationView]:
        """The newest firings with each action's delivery state."""
        with self._read() as cur:
            cur.execute("SELECT activation_id, rule_id, event_id, loyalty_id, store_id, visit_id, sector_id,"
                        " ts, fired_at, facts FROM activations ORDER BY fired_at DESC, activation_id LIMIT ?",
                        (limit,))
            rows = cur.fetchall()
            views = []
            for row in rows:
                cur.execute("SELECT kind, state, attempts, detail FROM deliveries WHERE activation_id = ?"
                            " ORDER BY action_no", (row[0],))
                states = [{"kind": k, "state": st, "attempts": int(n), "detail": d} for k, st, n, d in cur.fetchall()]
                views.append(ActivationView(row[0], row[1], row[2], row[3], row[4], row[5], row[6], float(row[7]),
                                            float(row[8]), json.loads(row[9]), states))
        return views

    def subjects(self) -> list[str]:
        with self._read() as cur:
            cur.execute("SELECT DISTINCT subject FROM events WHERE visit_id IS NOT NULL ORDER BY subject")
            return [row[0] for row in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        """Rows per table, and the dead letters' bytes and evictions (the caps at work)."""
        with self._read() as cur:
            found = {}
            for table in ("events", "dead_letters", "tombstones", "finished_seqs", "agent_epochs"):
                cur.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed table names
                found[table] = int(cur.fetchone()[0])
            cur.execute(f"SELECT coalesce(sum({self._octets('payload')}), 0) FROM dead_letters")  # noqa: S608
            found["dead_letter_bytes"] = int(cur.fetchone()[0])
            cur.execute("SELECT value FROM meta WHERE key = 'dead_letters_evicted'")
            row = cur.fetchone()
            found["dead_letters_evicted"] = int(row[0]) if row is not None else 0
            return found

    def dead_letters(self, limit: int = 20) -> list[DeadLetter]:
        with self._read() as cur:
            cur.execute("SELECT id, received_at, topic, reason, size, payload FROM dead_letters"
                        " ORDER BY id DESC LIMIT ?", (limit,))
            return [DeadLetter(*row) for row in cur.fetchall()]

    def gaps(self) -> list[AgentGaps]:
        """Missing seqs per agent epoch: those given up below the acknowledged mark (``lost_seqs``),
        holes above it, and past the highest seq received up to the last seq the agent's status reported."""
        report = []
        with self._read() as cur:
            cur.execute("SELECT store_id, agent_id, epoch, max_seq, contiguous_upto, status_last_seq,"
                        " evicted_total, last_seen, reused_seqs, interleaved FROM agent_epochs"
                        " ORDER BY store_id, agent_id, first_seen, first_ts, epoch")
            for (store_id, agent_id, epoch, max_seq, upto, agent_last, evicted, last_seen, reused,
                 interleaved) in cur.fetchall():
                key = (store_id, agent_id, epoch)
                params = (*key, upto) * 2
                received = ("SELECT seq FROM events WHERE store_id = ? AND agent_id = ? AND epoch = ? AND seq > ?"
                            " UNION SELECT seq FROM finished_seqs WHERE store_id = ? AND agent_id = ?"
                            " AND epoch = ? AND seq > ?")
                cur.execute(f"SELECT min(seq) FROM ({received}) AS s", params)  # noqa: S608
                first = cur.fetchone()[0]
                cur.execute(
                    "SELECT seq, nxt FROM (SELECT seq, LEAD(seq) OVER (ORDER BY seq) AS nxt"  # noqa: S608
                    f" FROM ({received}) AS s) AS t WHERE nxt > seq + 1 ORDER BY seq",
                    params,
                )
                edges = [(int(seq), int(nxt)) for seq, nxt in cur.fetchall()]
                cur.execute("SELECT lo, hi FROM lost_seqs WHERE store_id = ? AND agent_id = ? AND epoch = ?"
                            " ORDER BY lo", key)
                ranges = [(int(lo), int(hi)) for lo, hi in cur.fetchall()]
                ranges += gap_ranges(int(upto), None if first is None else int(first), edges)
                top = max(int(max_seq), int(upto))
                if int(agent_last) > top:
                    ranges.append((top + 1, int(agent_last)))
                report.append(AgentGaps(store_id, agent_id, int(max_seq), sum(hi - lo + 1 for lo, hi in ranges),
                                        ranges, int(evicted), float(last_seen), epoch, int(upto),
                                        int(agent_last), int(reused), int(interleaved)))
        return report

    # --- erasure -------------------------------------------------------
    def erase(self, loyalty_id: str) -> Erasure:
        """Right to erasure: every row about the person goes; tombstones keep replays out."""
        return self._erase(loyalty_ids=[loyalty_id], visits=[], subjects=[])

    def _erase(self, loyalty_ids: list[str], visits: list[VisitKey], subjects: list[str]) -> Erasure:
        """Delete the person's events and the dead letters naming them, then scrub the files.

        Dead letters are matched on their raw payloads: a loyalty id anywhere,
        a visit id or pseudonym as a JSON string (``"v-1f..."``), so a short
        id does not take unrelated letters with it.
        """
        now = time.time()
        with self._write("erase") as cur:
            keys: set[VisitKey] = set(visits)
            for loyalty_id in loyalty_ids:
                cur.execute("SELECT DISTINCT store_id, agent_id, visit_id FROM events"
                            " WHERE loyalty_id = ? AND type = 'identity.linked'", (loyalty_id,))
                keys.update(tuple(row) for row in cur.fetchall())
            who = set(subjects)
            for key in sorted(keys):
                cur.execute("SELECT DISTINCT subject FROM events WHERE store_id = ? AND agent_id = ?"
                            " AND visit_id = ? AND type <> 'identity.linked'", key)
                who.update(row[0] for row in cur.fetchall())
            for subject in sorted(who):
                cur.execute("SELECT DISTINCT store_id, agent_id, visit_id FROM events"
                            " WHERE subject = ? AND visit_id IS NOT NULL", (subject,))
                keys.update(tuple(row) for row in cur.fetchall())
            deleted = 0
            matches = (
                [("store_id = ? AND agent_id = ? AND visit_id = ?", key) for key in sorted(keys)]
                + [("subject = ? AND type <> 'agent.status'", (s,)) for s in sorted(who)]
                + [("loyalty_id = ?", (lid,)) for lid in loyalty_ids]
            )
            for where, params in matches:
                retire = ("INSERT INTO finished_seqs (store_id, agent_id, epoch, seq) SELECT store_id,"  # noqa: S608
                          f" agent_id, epoch, seq FROM events WHERE {where} ON CONFLICT DO NOTHING")
                cur.execute(retire, params)
                cur.execute(f"SELECT count(*) FROM events WHERE {where}", params)  # noqa: S608
                deleted += int(cur.fetchone()[0])
                cur.execute(f"DELETE FROM events WHERE {where}", params)  # noqa: S608
            needles = sorted({*loyalty_ids, *(_quoted(s) for s in who), *(_quoted(k[2]) for k in keys)})
            dead = 0
            for needle in needles:
                cur.execute(f"DELETE FROM dead_letters WHERE {self._contains('payload')}", (needle,))  # noqa: S608
                dead += max(int(cur.rowcount), 0)
            stones = ([(loyalty_digest(lid), "loyalty") for lid in loyalty_ids]
                      + [(visit_digest(*key), "visit") for key in sorted(keys)]
                      + [(subject_digest(s), "subject") for s in sorted(who)])
            cur.executemany("INSERT INTO tombstones (digest, kind, erased_at) VALUES (?, ?, ?)"
                            " ON CONFLICT (digest) DO NOTHING", [(d, k, now) for d, k in stones])
            consent = fired = 0
            for loyalty_id in loyalty_ids:
                cur.execute("DELETE FROM deliveries WHERE activation_id IN"
                            " (SELECT activation_id FROM activations WHERE loyalty_id = ?)", (loyalty_id,))
                cur.execute("DELETE FROM activations WHERE loyalty_id = ?", (loyalty_id,))
                fired += max(int(cur.rowcount), 0)
                cur.execute("DELETE FROM consent WHERE loyalty_id = ?", (loyalty_id,))
                consent += max(int(cur.rowcount), 0)
        if deleted or dead or consent or fired:
            with self._lock, self._errors():
                self._scrub()
        return Erasure(len(loyalty_ids), len(keys), len(who), deleted, dead, consent, fired)

    def _contains(self, column: str) -> str:
        return f"instr({column}, ?) > 0"


def _quoted(value: str) -> str:
    """A string as compact JSON writes it, quotes included."""
    return json.dumps(value, ensure_ascii=False)


def _same_event(stored_payload: str, item: Accepted) -> bool:
    """True when a stored payload is the same event as ``item`` (a re-send, not a conflict)."""
    if stored_payload == item.payload:
        return True
    try:
        return parse_event(stored_payload) == item.event
    except ValidationError:
        return False


def _conflict(item: Accepted) -> Rejected:
    """A dead letter for a copy that differs: its seq is not trusted, so it finishes nothing."""
    letter = item.rejected(topic_for(item.event),
                           f"conflict: event_id {item.event_id} already received with different content")
    return replace(letter, origin=None)


def _parsed(payloads: Iterable[str], known: Mapping[str, Event] | None = None) -> list[Event]:
    """Stored payloads as events, skipping (and logging) rows the current schema refuses.

    Rows stored before the schema's bounds (an Infinity duration, a 1 MB id)
    must not stop a profile from being shown. ``known``: payloads parsed
    already (``Store._recent``), taken as they are.
    """
    events: list[Event] = []
    skipped = 0
    for payload in payloads:
        event = None if known is None else known.get(payload)
        if event is not None:
            events.append(event)
            continue
        try:
            events.append(parse_event(payload))
        except ValidationError:
            skipped += 1
    if skipped:
        log.warning("stored events skipped: invalid under the current schema", extra={"count": skipped})
    return events
