"""The PostgreSQL backend: the shared SQL with ``%s`` placeholders and table locks.

Kept apart from the shared SQL (hq/store.py) so that SQLite users need no psycopg. A lost
connection is reopened on the next call; the batch that failed is retried
by the subscriber, never acked. An error of SQLSTATE class 22 (data
exception: a value out of range), 23 (integrity) or 54 (program limit: an
index row too large) blames the event, not the server: :class:`Unstorable`.

Erasure: the deleted rows are gone from the tables' files only once they are
rewritten, so an erasure ends with ``VACUUM FULL`` of ``events``,
``dead_letters``, ``consent``, ``activations`` and ``deliveries`` (an exclusive lock on them while it runs: ingest waits).
What remains is PostgreSQL's write-ahead log: the erased ids stay in WAL
segments (and in any WAL archive or base backup) until those are recycled
and overwritten. The operator shortens that with ``CHECKPOINT`` followed by
``SELECT pg_switch_wal()`` (and by expiring archives and backups per the
retention policy); HQ cannot do more from a client connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import sql

from hq.profile import VisitKey
from hq.store import (
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    FIRING_COLUMNS,
    POISON_ERRORS,
    Cursor,
    HqStoreError,
    Lock,
    Store,
    Unstorable,
)

_LOCKS: dict[Lock, str] = {
    # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalog.
    "schema": "SELECT pg_advisory_xact_lock(7343920117)",
    # Ingests share; an erasure excludes them (and other erasures) while it runs.
    "ingest": "LOCK TABLE tombstones IN SHARE MODE",
    "erase": "LOCK TABLE tombstones IN SHARE ROW EXCLUSIVE MODE",
}


_EVENT_TYPES = ("text", "text", "text", "bigint", "text", "float8", "text", "text", "text", "text", "float8", "text")

_FIRING_TYPES = ("text",) * 8 + ("float8", "float8", "text")
_DELIVERY_TYPES = ("text", "int4", "text", "text", "text", "text", "float8", "float8")

_DATA_CLASSES = ("22", "23", "54")
"""SQLSTATE classes that blame the data: data exception, integrity, program limit exceeded."""


@lru_cache(maxsize=256)
def _pg(query: str) -> str:
    return query.replace("?", "%s")


def _unnest(cur: Cursor, table: str, columns: Sequence[str], kinds: Sequence[str], rows: list[tuple[Any, ...]],
            tail: str, *constants: str) -> None:
    """One INSERT over column arrays, sent in binary: a round trip per call, not per row, and one
    statement text whatever the number of rows (psycopg prepares it once)."""
    assert isinstance(cur, _PgCursor)
    arrays = ", ".join(f"?::{kind}[]" for kind in kinds)
    cur.execute_binary(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(['*', *constants])}"  # noqa: S608
                       f" FROM unnest({arrays}){tail}", [list(column) for column in zip(*rows, strict=True)])


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as column lists (``width`` empty ones for no rows), for ``unnest``."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


class _PgCursor:
    """Translates the shared ``?`` placeholders."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def execute(self, query: str, params: Sequence[Any] = (), /) -> Any:
        return self._cur.execute(_pg(query), params)

    def execute_binary(self, query: str, params: Sequence[Any]) -> Any:
        """Each ``?`` sent in binary: arrays of JSON text then need no quoting or escaping."""
        return self._cur.execute(query.replace("?", "%b"), params)

    def executemany(self, query: str, params_seq: Iterable[Sequence[Any]], /) -> Any:
        return self._cur.executemany(_pg(query), params_seq)

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount


class PostgresStore(Store):
    """PostgreSQL with synchronous commit: a commit (and so a PUBACK) survives a crash."""

    dialect = "postgresql"

    def __init__(self, conninfo: str, *, schema: str | None = None, **caps: int) -> None:
        self.conninfo = conninfo
        self.schema = schema
        self._conn: psycopg.Connection[Any] | None = None
        super().__init__(**caps)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10)
            if self.schema is not None:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            self._conn = conn
        return self._conn

    @contextmanager
    def _transaction(self, lock: Lock) -> Iterator[Cursor]:
        conn = self._connection()
        with conn.transaction(), conn.cursor() as raw:
            cur = _PgCursor(raw)
            cur.execute(_LOCKS[lock])
            yield cur

    def _read_cursor(self) -> Cursor:
        return _PgCursor(self._connection().cursor())

    def _insert_events(self, cur: Cursor, rows: list[tuple[Any, ...]]) -> set[str]:
        _unnest(cur, "events", EVENT_COLUMNS, _EVENT_TYPES, rows, " ON CONFLICT (event_id) DO NOTHING RETURNING event_id")
        return {row[0] for row in cur.fetchall()}

    def _insert_recorded(self, cur: Cursor, firings: list[tuple[Any, ...]], deliveries: list[tuple[Any, ...]]
                         ) -> set[str]:
        # One statement, one round trip: the deliveries insert reads the firings insert's RETURNING.
        assert isinstance(cur, _PgCursor)
        fired = ", ".join(f"?::{kind}[]" for kind in _FIRING_TYPES)
        sent = ", ".join(f"?::{kind}[]" for kind in _DELIVERY_TYPES)
        cur.execute_binary(
            f"WITH fired AS (INSERT INTO activations ({', '.join(FIRING_COLUMNS)}) SELECT * FROM unnest({fired})"  # noqa: S608
            " ON CONFLICT DO NOTHING RETURNING activation_id),"
            f" sent AS (INSERT INTO deliveries ({', '.join(DELIVERY_COLUMNS)}, state) SELECT d.*, 'pending'"
            f" FROM unnest({sent}) AS d({', '.join(DELIVERY_COLUMNS)})"
            " WHERE d.activation_id IN (SELECT activation_id FROM fired))"
            " SELECT activation_id FROM fired",
            [*_columns(firings, len(_FIRING_TYPES)), *_columns(deliveries, len(_DELIVERY_TYPES))])
        return {row[0] for row in cur.fetchall()}

    def _update_deliveries(self, cur: Cursor, rows: list[tuple[str, str | None, int, float, str, int]]) -> None:
        # One UPDATE joined to the changes' arrays: executemany ran one statement per delivery, a
        # thousand a second in the activation benchmark, under the store's lock that ingest waits for.
        assert isinstance(cur, _PgCursor)
        cur.execute_binary("UPDATE deliveries AS d SET state = u.state, detail = u.detail, attempts = u.attempts,"
                           " updated_at = u.updated_at FROM unnest(?::text[], ?::text[], ?::int4[], ?::float8[],"
                           " ?::text[], ?::int4[]) AS u(state, detail, attempts, updated_at, activation_id, action_no)"
                           " WHERE d.activation_id = u.activation_id AND d.action_no = u.action_no"
                           " AND d.state NOT IN ('delivered', 'dead')", [list(c) for c in zip(*rows, strict=True)])

    def _renew_leases(self, cur: Cursor, me: str, now: float, held: list[tuple[str, int]]) -> None:
        assert isinstance(cur, _PgCursor)
        if held:
            cur.execute_binary("UPDATE deliveries AS d SET claimed_at = ? FROM unnest(?::text[], ?::int4[])"
                               " AS u(activation_id, action_no) WHERE d.activation_id = u.activation_id"
                               " AND d.action_no = u.action_no AND d.claimed_by = ?",
                               [now, *[list(c) for c in zip(*held, strict=True)], me])

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        # One array parameter: one statement text whatever the list's length (parsed and prepared once).
        return f"{column} = ANY(?)", [list(values)]

    def _fetch_each(self, cur: Cursor, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        # Pipeline mode: all the statements go out before the first result is awaited, one round
        # trip instead of one each (on a busy HQ each wait also costs the writer the GIL back).
        conn = self._connection()
        with conn.pipeline():
            cursors = [conn.cursor() for _ in statements]
            for raw, (query, params) in zip(cursors, statements, strict=True):
                raw.execute(_pg(query), params)
            return [raw.fetchall() for raw in cursors]

    def _visit_rows(self, cur: Cursor, keys: Iterable[VisitKey], columns: Sequence[str],
                    condition: str = "", *, text: bool = False) -> list[Any]:
        # One query for all agents, joined to the keys' arrays: a nested loop of exact probes of
        # events_visit whatever the statistics say. With "store_id = ? AND visit_id = ANY(?)" per
        # agent, a store that is new since the last ANALYZE is estimated at one row and walked
        # whole by (store_id, type, ts), a scan that grows with every batch. ``text`` changes nothing
        # here: psycopg fetches a result whole.
        assert isinstance(cur, _PgCursor)
        wanted = sorted(set(keys))
        if not wanted:
            return []
        cur.execute_binary(f"SELECT k.store_id, k.agent_id, k.visit_id, {', '.join(columns)}"  # noqa: S608
                           " FROM unnest(?::text[], ?::text[], ?::text[]) AS k(store_id, agent_id, visit_id)"
                           " JOIN events AS e ON e.store_id = k.store_id AND e.agent_id = k.agent_id"
                           f" AND e.visit_id = k.visit_id{condition}", [list(c) for c in zip(*wanted, strict=True)])
        return cur.fetchall()

    def _contains(self, column: str) -> str:
        return f"strpos({column}, ?) > 0"

    def _octets(self, column: str) -> str:
        return f"octet_length({column})"

    def _scrub(self) -> None:
        conn = self._connection()
        for table in ("events", "dead_letters", "consent", "activations", "deliveries"):
            conn.execute(sql.SQL("VACUUM FULL {}").format(sql.Identifier(table)))

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except POISON_ERRORS as exc:
            raise Unstorable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        except psycopg.Error as exc:
            state = getattr(exc, "sqlstate", None) or ""
            if state[:2] in _DATA_CLASSES:
                raise Unstorable(f"PostgreSQL: {str(exc).strip().splitlines()[0]}") from exc
            if self._conn is not None and (self._conn.broken or isinstance(exc, psycopg.OperationalError)):
                self._conn.close()
                self._conn = None
            where = self.conninfo.split("@")[-1]
            raise HqStoreError(f"PostgreSQL {where}: {str(exc).strip().splitlines()[0]}") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
