"""The profile store: SQLite by default, PostgreSQL by URL, one schema and one set of queries.

``open_store(url)`` picks the backend: ``sqlite:///path.db`` (or a bare
path) or ``postgresql://user@host/db`` (``?schema=name`` puts the tables in
that schema). Everything a backend does differently — placeholders, locking,
the list parameter — lives in its small subclass; the SQL is shared.

Concurrency: several subscribers may write one database. SQLite serialises
writers (``BEGIN IMMEDIATE``); on PostgreSQL an ingest holds a SHARE lock on
``tombstones`` and an erasure a SHARE ROW EXCLUSIVE one, so an erasure never
interleaves with a batch that could bring the person back.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from agent.events import AgentStatus, Event, parse_event
from hq.ingest import (
    Accepted,
    Rejected,
    gap_ranges,
    loyalty_digest,
    subject_digest,
    visit_digest,
)
from hq.profile import VisitKey
from hq.schema import SCHEMA_VERSION, ddl

CHUNK = 500

EVENT_COLUMNS = ("event_id", "store_id", "agent_id", "seq", "type", "ts", "subject", "visit_id",
                 "loyalty_id", "payload", "received_at")

Lock = Literal["schema", "ingest", "erase"]


class StoreError(Exception):
    """A database failure, worded for the operator; the batch is retried, never acked."""


class _Cursor(Protocol):
    def execute(self, query: str, params: Sequence[Any] = ..., /) -> Any: ...
    def executemany(self, query: str, params_seq: Iterable[Sequence[Any]], /) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...
    @property
    def rowcount(self) -> int: ...


@dataclass
class IngestResult:
    """What one batch did; ``new`` lists the events stored for the first time when asked for."""

    stored: int = 0
    new: list[Event] = field(default_factory=list)
    duplicates: int = 0
    suppressed: int = 0
    dead_letters: int = 0


@dataclass(frozen=True)
class AgentGaps:
    store_id: str
    agent_id: str
    max_seq: int
    missing: int
    ranges: list[tuple[int, int]]
    evicted_total: int
    """Events the agent's outbox reported dropping: they explain that many missing seqs."""
    last_seen: float


@dataclass(frozen=True)
class Erasure:
    loyalty_ids: int
    visits: int
    subjects: int
    events_deleted: int
    dead_letters_deleted: int


@dataclass(frozen=True)
class DeadLetter:
    id: int
    received_at: float
    topic: str
    reason: str
    size: int
    payload: str


class Store(ABC):
    """The shared SQL; subclasses connect and say how their dialect differs."""

    dialect: str
    param = "?"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tombstones: set[str] = set()
        self._tombstone_count = -1
        with self._write(lock="schema") as cur:
            for statement in ddl(self.dialect):
                cur.execute(statement)
            cur.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                        ("schema_version", SCHEMA_VERSION))

    # --- dialect hooks -------------------------------------------------
    @abstractmethod
    def _transaction(self, lock: Lock) -> AbstractContextManager[_Cursor]:
        """A cursor inside one write transaction holding ``lock`` (see the module docstring)."""

    @abstractmethod
    def _read_cursor(self) -> _Cursor: ...

    @abstractmethod
    def close(self) -> None: ...

    def _insert_events(self, cur: _Cursor, rows: list[tuple[Any, ...]], *, want_ids: bool) -> set[str] | int:
        """Insert rows (EVENT_COLUMNS order, unique ids) unless already there.

        Returns the ids inserted, or only their number when ``want_ids`` is false.
        """
        insert = (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES"  # noqa: S608
                  f" ({', '.join('?' * len(EVENT_COLUMNS))}) ON CONFLICT (event_id) DO NOTHING")
        if not want_ids:
            cur.executemany(insert, rows)
            return int(cur.rowcount)
        ids = [row[0] for row in rows]
        existing: set[str] = set()
        for start in range(0, len(ids), CHUNK):
            part = ids[start:start + CHUNK]
            cur.execute(f"SELECT event_id FROM events WHERE event_id IN ({', '.join('?' * len(part))})",  # noqa: S608
                        part)
            existing.update(row[0] for row in cur.fetchall())
        cur.executemany(insert, [row for row in rows if row[0] not in existing])
        return set(ids) - existing

    @contextmanager
    def _write(self, lock: Lock = "ingest") -> Iterator[_Cursor]:
        with self._lock, self._errors(), self._transaction(lock) as cur:
            yield cur

    @contextmanager
    def _read(self) -> Iterator[_Cursor]:
        with self._lock, self._errors():
            yield self._read_cursor()

    @abstractmethod
    def _errors(self) -> AbstractContextManager[None]:
        """Translate the driver's exceptions into StoreError."""

    # --- ingest --------------------------------------------------------
    def ingest(self, batch: Sequence[Accepted | Rejected], received_at: float, *,
               want_events: bool = True) -> IngestResult:
        """Store one batch in one transaction: new events, dead letters, agents' seq state.

        ``want_events=False`` skips naming the new events (a cheaper insert on SQLite).
        """
        result = IngestResult()
        unique: dict[str, Accepted] = {}
        rejected = []
        for item in batch:
            if isinstance(item, Rejected):
                rejected.append(item)
            elif item.event_id in unique:
                result.duplicates += 1
            else:
                unique[item.event_id] = item
        # Sorted ids: concurrent writers take index locks in one order (no deadlock).
        accepted = [unique[k] for k in sorted(unique)]
        follow_up: list[tuple[VisitKey, str]] = []
        with self._write() as cur:
            tombstones = self._current_tombstones(cur)
            keep, retire = [], []
            for item in accepted:
                if tombstones and tombstones.intersection(item.digests()):
                    retire.append(item)
                    if item.visit_id is not None and visit_digest(
                            item.event.store_id, item.event.agent_id, item.visit_id) not in tombstones:
                        follow_up.append(((item.event.store_id, item.event.agent_id, item.visit_id),
                                          item.event.subject))
                else:
                    keep.append(item)
            inserted = self._insert_events(cur, [
                (i.event_id, i.event.store_id, i.event.agent_id, i.event.seq, i.event.type,
                 i.event.ts.timestamp(), i.event.subject, i.visit_id, i.loyalty_id, i.payload,
                 received_at) for i in keep], want_ids=want_events) if keep else 0
            result.stored = inserted if isinstance(inserted, int) else len(inserted)
            if want_events and not isinstance(inserted, int):
                result.new = [item.event for item in keep if item.event_id in inserted]
            result.duplicates += len(keep) - result.stored
            result.suppressed = len(retire)
            result.dead_letters = len(rejected)
            if retire:
                cur.executemany(
                    "INSERT INTO retired_seqs (store_id, agent_id, seq) VALUES (?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    [(i.event.store_id, i.event.agent_id, i.event.seq) for i in retire],
                )
            if rejected:
                cur.executemany(
                    "INSERT INTO dead_letters (received_at, topic, reason, size, payload)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(received_at, r.topic, r.reason, r.size, r.payload) for r in rejected],
                )
            self._update_agents(cur, accepted, received_at)
        if follow_up:
            # A tombstoned loyalty id linked to a new visit: that visit is the person's too.
            self._erase(loyalty_ids=[], visits=[k for k, _ in follow_up],
                        subjects=[s for _, s in follow_up])
        return result

    def _current_tombstones(self, cur: _Cursor) -> set[str]:
        cur.execute("SELECT count(*) FROM tombstones")
        count = int(cur.fetchone()[0])
        if count != self._tombstone_count:
            cur.execute("SELECT digest FROM tombstones")
            self._tombstones = {row[0] for row in cur.fetchall()}
            self._tombstone_count = count
        return self._tombstones

    def _update_agents(self, cur: _Cursor, accepted: list[Accepted], now: float) -> None:
        agents: dict[tuple[str, str], tuple[int, int]] = {}
        for item in accepted:
            key = (item.event.store_id, item.event.agent_id)
            top, evicted = agents.get(key, (0, 0))
            if isinstance(item.event, AgentStatus):
                evicted = max(evicted, item.event.evicted_total)
            agents[key] = (max(top, item.event.seq), evicted)
        cur.executemany(
            "INSERT INTO agents (store_id, agent_id, max_seq, evicted_total, last_seen)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (store_id, agent_id) DO UPDATE SET"
            " max_seq = CASE WHEN excluded.max_seq > agents.max_seq"
            "   THEN excluded.max_seq ELSE agents.max_seq END,"
            " evicted_total = CASE WHEN excluded.evicted_total > agents.evicted_total"
            "   THEN excluded.evicted_total ELSE agents.evicted_total END,"
            " last_seen = excluded.last_seen",
            [(s, a, top, ev, now) for (s, a), (top, ev) in sorted(agents.items())],
        )

    # --- queries -------------------------------------------------------
    def loyalty_events(self, loyalty_id: str) -> tuple[list[Event], list[Event]]:
        """(events of every visit linked to the loyalty id, its card taps)."""
        with self._read() as cur:
            cur.execute("SELECT DISTINCT store_id, agent_id, visit_id FROM events"
                        " WHERE loyalty_id = ? AND type = 'identity.linked'", (loyalty_id,))
            keys = [tuple(row) for row in cur.fetchall()]
            events = self._visit_events(cur, keys)
            cur.execute("SELECT payload FROM events WHERE loyalty_id = ? AND type = 'card.tapped'",
                        (loyalty_id,))
            taps = [parse_event(row[0]) for row in cur.fetchall()]
        return events, taps

    def subject_events(self, subject: str) -> list[Event]:
        """Events of every visit of one pseudonymous visitor."""
        with self._read() as cur:
            cur.execute("SELECT DISTINCT store_id, agent_id, visit_id FROM events"
                        " WHERE subject = ? AND visit_id IS NOT NULL", (subject,))
            return self._visit_events(cur, [tuple(row) for row in cur.fetchall()])

    def _visit_events(self, cur: _Cursor, keys: Iterable[Sequence[str]]) -> list[Event]:
        events: list[Event] = []
        for key in keys:
            cur.execute("SELECT payload FROM events WHERE store_id = ? AND agent_id = ?"
                        " AND visit_id = ?", tuple(key))
            events.extend(parse_event(row[0]) for row in cur.fetchall())
        return events

    def loyalty_ids(self) -> list[str]:
        with self._read() as cur:
            cur.execute("SELECT DISTINCT loyalty_id FROM events WHERE type = 'identity.linked'"
                        " ORDER BY loyalty_id")
            return [row[0] for row in cur.fetchall()]

    def subjects(self) -> list[str]:
        with self._read() as cur:
            cur.execute("SELECT DISTINCT subject FROM events WHERE visit_id IS NOT NULL ORDER BY subject")
            return [row[0] for row in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        with self._read() as cur:
            found = {}
            for table in ("events", "dead_letters", "tombstones", "retired_seqs", "agents"):
                cur.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed table names
                found[table] = int(cur.fetchone()[0])
            return found

    def dead_letters(self, limit: int = 20) -> list[DeadLetter]:
        with self._read() as cur:
            cur.execute("SELECT id, received_at, topic, reason, size, payload FROM dead_letters"
                        " ORDER BY id DESC LIMIT ?", (limit,))
            return [DeadLetter(*row) for row in cur.fetchall()]

    def gaps(self) -> list[AgentGaps]:
        """Missing seqs per agent, moving each agent's known-complete mark forward."""
        report = []
        with self._write() as cur:
            cur.execute("SELECT store_id, agent_id, max_seq, contiguous_upto, evicted_total, last_seen"
                        " FROM agents ORDER BY store_id, agent_id")
            for store_id, agent_id, max_seq, upto, evicted, last_seen in cur.fetchall():
                params = (store_id, agent_id, upto) * 2
                received = ("SELECT seq FROM events WHERE store_id = ? AND agent_id = ? AND seq > ?"
                            " UNION SELECT seq FROM retired_seqs WHERE store_id = ? AND agent_id = ?"
                            " AND seq > ?")
                cur.execute(f"SELECT min(seq) FROM ({received}) AS s", params)  # noqa: S608
                first = cur.fetchone()[0]
                cur.execute(
                    "SELECT seq, nxt FROM (SELECT seq, LEAD(seq) OVER (ORDER BY seq) AS nxt"  # noqa: S608
                    f" FROM ({received}) AS s) AS t WHERE nxt > seq + 1 ORDER BY seq",
                    params,
                )
                edges = [(int(seq), int(nxt)) for seq, nxt in cur.fetchall()]
                ranges = gap_ranges(int(upto), None if first is None else int(first), edges)
                complete = ranges[0][0] - 1 if ranges else int(max_seq)
                if complete > upto:
                    cur.execute("UPDATE agents SET contiguous_upto = ? WHERE store_id = ? AND agent_id = ?"
                                " AND contiguous_upto < ?", (complete, store_id, agent_id, complete))
                report.append(AgentGaps(store_id, agent_id, int(max_seq),
                                        sum(hi - lo + 1 for lo, hi in ranges), ranges,
                                        int(evicted), float(last_seen)))
        return report

    # --- erasure -------------------------------------------------------
    def erase(self, loyalty_id: str) -> Erasure:
        """Right to erasure: every row about the person goes; tombstones keep replays out."""
        return self._erase(loyalty_ids=[loyalty_id], visits=[], subjects=[])

    def _erase(self, loyalty_ids: list[str], visits: list[VisitKey], subjects: list[str]) -> Erasure:
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
                retire = ("INSERT INTO retired_seqs (store_id, agent_id, seq) SELECT store_id,"  # noqa: S608
                          f" agent_id, seq FROM events WHERE {where} ON CONFLICT DO NOTHING")
                cur.execute(retire, params)
                cur.execute(f"SELECT count(*) FROM events WHERE {where}", params)  # noqa: S608
                deleted += int(cur.fetchone()[0])
                cur.execute(f"DELETE FROM events WHERE {where}", params)  # noqa: S608
            dead = 0
            for lid in loyalty_ids:
                cur.execute(f"SELECT count(*) FROM dead_letters WHERE {self._contains('payload')}", (lid,))  # noqa: S608
                dead += int(cur.fetchone()[0])
                cur.execute(f"DELETE FROM dead_letters WHERE {self._contains('payload')}", (lid,))  # noqa: S608
            stones = ([(loyalty_digest(lid), "loyalty") for lid in loyalty_ids]
                      + [(visit_digest(*key), "visit") for key in sorted(keys)]
                      + [(subject_digest(s), "subject") for s in sorted(who)])
            cur.executemany("INSERT INTO tombstones (digest, kind, erased_at) VALUES (?, ?, ?)"
                            " ON CONFLICT (digest) DO NOTHING", [(d, k, now) for d, k in stones])
        return Erasure(len(loyalty_ids), len(keys), len(who), deleted, dead)

    def _contains(self, column: str) -> str:
        return f"instr({column}, ?) > 0"


class SqliteStore(Store):
    """SQLite in WAL mode, synchronous=FULL: a commit (and so a PUBACK) survives a power cut."""

    dialect = "sqlite"

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                         timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        super().__init__()

    @contextmanager
    def _transaction(self, lock: Lock) -> Iterator[_Cursor]:
        cur = cast(_Cursor, self._conn.cursor())
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            self._conn.rollback()
            raise
        cur.execute("COMMIT")

    def _read_cursor(self) -> _Cursor:
        return cast(_Cursor, self._conn.cursor())

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_store(url: str) -> Store:
    """``sqlite:///relative.db``, ``sqlite:////abs.db``, a bare path, or ``postgresql://...``."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("postgresql", "postgres"):
        from hq.pgstore import PostgresStore  # noqa: PLC0415 - psycopg is an optional extra

        conninfo, schema = split_schema(url)
        return PostgresStore(conninfo, schema=schema)
    if scheme == "sqlite":
        path = url[len("sqlite://"):]
        if not path.startswith("/") or path == "/":
            raise StoreError(f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs.db")
        return SqliteStore(path[1:])
    if scheme and len(scheme) > 1:
        raise StoreError(f"unsupported database URL {url!r}: use sqlite:///path.db or postgresql://...")
    return SqliteStore(url)


def split_schema(url: str) -> tuple[str, str | None]:
    """Take our ``schema=`` query parameter out of a PostgreSQL URL (libpq does not know it)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema
