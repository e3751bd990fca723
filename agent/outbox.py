"""The durable outbox: every event is on disk, sequenced, before anything else happens to it.

One SQLite file in WAL mode. ``append``/``append_many`` give each event the
next ``seq`` (gap-free from 1, kept in a one-row ``state`` table updated in
the same transaction as the rows, so it survives restarts and a fully drained
outbox) and the outbox's ``epoch``, a random id drawn when the file is created
(or first opened by an agent that knows epochs) and kept in ``state``: seq is
unique within an epoch, and a fresh outbox (a corrupt file moved aside) starts
a new epoch at seq 1, so HQ never mistakes reused seqs for duplicates.

A row leaves only when HQ acknowledges it (``ack(epoch, seq)``: HQ has
committed, or dead-lettered, every seq up to ``seq`` of this epoch) or when a
bound (rows, bytes, age, free space) evicts it, oldest first; every eviction is counted on
disk, and the counter is handed to the next ``agent.status`` event, so loss is
never silent, not even across a crash. The broker's PUBACK only marks a row
as sent (``mark_sent``, with the time); such rows still count in the depth and
the bounds, and the uplink sends them again when HQ has not acknowledged them
in time (``due``). With ``[uplink] ack = "broker"`` the PUBACK deletes the row
(``ack_published``), as before HQ acknowledged anything.

What "nothing lost" means, then. With ``ack = "hq"``: an event whose
``append`` returned is deleted here only after HQ has stored it (or stored it
as a dead letter, with the reason), whatever happens between (the broker
restarting with or without saving, HQ down or killed, the agent killed): it
is re-sent until acknowledged, and HQ drops repeats by ``event_id``. What can
still be lost: rows the bounds evict (counted and reported, never silent), and
rows on a disk that dies, or whose last commits a power cut takes when the
storage lies about fsync. With ``ack = "broker"`` a PUBACK ends the agent's
responsibility: a broker that loses a message after PUBACK (SIGKILLed before
it saves, a restart that drops a subscription) loses the event for good; HQ
sees the gap in ``seq`` (past its highest seq only through ``agent.status``'s
``last_seq``).

Durability: appends commit with ``synchronous=FULL``. In WAL mode that
fsyncs the WAL at every commit, so an event whose ``append`` returned
survives a power cut. ``NORMAL`` would fsync only at checkpoints: it survives
``kill -9`` (the crash tests pass with it too, because the WAL is already in
the OS page cache) but may lose the last commits on a power cut, which is the
promise we make. Batched appends pay one fsync per batch. Acks and sent marks
commit with ``NORMAL``: losing one only means a re-send, which HQ drops by
``event_id``, and the next FULL commit makes earlier frames durable anyway.

Free space: ``reserve_bytes`` of the filesystem are kept free. Before each
append the outbox measures the filesystem's free space plus the free pages
inside its own file (which new rows reuse); when that falls below the
reserve it checkpoints and truncates the WAL and, if still short, evicts the
oldest rows, counted like every other eviction. Deleting needs WAL space of
its own, so the outbox also keeps a small preallocated spare file beside it
(``<name>.spare``): when SQLite reports the disk full (something else filled
it), the spare is released and the WAL truncated, and the write is tried
once more. That is what lets an agent restarted on a full disk come up,
send, and delete what HQ acknowledged.

A file at the path that is not a readable SQLite outbox is moved aside with a
timestamp suffix (never overwritten) and a fresh outbox starts; ``recovered``
says so in one line. A disk still full after all that fails the append with
``OutboxFull`` and leaves every stored row in place.

Time: ``stored_at`` (what the age bound reads) comes from the injected clock,
which in the agent advances with the monotonic clock, so a wall-clock jump
during a run ages nothing. A row stamped before ``PLAUSIBLE_SINCE`` was
stored by a device whose clock was not yet set (a Pi without RTC before NTP):
its age is unknown, so only the row, byte and free-space bounds evict it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

from agent.errors import EXIT_BAD_INPUT, SantiError
from agent.events import AckMode, AgentStatus, Event, topic_for
from agent.privatefiles import private_dir, private_file

log = logging.getLogger(__name__)

T = TypeVar("T")

Clock = Callable[[], float]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    ts REAL NOT NULL,
    stored_at REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    evicted_total INTEGER NOT NULL,
    evicted_unreported INTEGER NOT NULL
);
INSERT OR IGNORE INTO state (id, last_seq, rows, bytes, evicted_total, evicted_unreported) VALUES (1, 0, 0, 0, 0, 0);
"""
_INSERT = "INSERT INTO outbox (seq, event_id, topic, payload, ts, stored_at, size) VALUES (?, ?, ?, ?, ?, ?, ?)"
_ACK_COLUMNS = {
    "outbox": (("sent_at", "REAL"), ("first_sent_at", "REAL")),
    "state": (("epoch", "TEXT"), ("acked_seq", "INTEGER NOT NULL DEFAULT 0")),
}
"""Columns of the end-to-end acknowledgement, added in place to outboxes created before it."""
_PEEK = "SELECT seq, event_id, topic, payload, ts FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?"
_PEEK_UNSENT = ("SELECT seq, event_id, topic, payload, ts FROM outbox WHERE seq > ? AND sent_at IS NULL "
                "ORDER BY seq LIMIT ?")
_DELETE_SEQS = "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?)) RETURNING size"
_SENT_INDEX = "CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL"
_SAVE_STATE = (
    "UPDATE state SET last_seq = ?, rows = ?, bytes = ?, evicted_total = ?, evicted_unreported = ? WHERE id = 1"
)
_EVICT_CHUNK = 512
SPARE_MAX_BYTES = 1024 * 1024
"""The spare file's size at most (a quarter of the reserve when that is smaller): room for a WAL that deletes."""
EVICTION_LOG_EVERY_S = 60.0
"""At most one eviction warning a minute (it carries the count since the previous one)."""
_ACK_CHUNK = 64
"""Rows deleted per acknowledgement transaction (~25 KiB of WAL with SQLite zeroing what it deletes)."""
_RESERVE_STEPS = 64
"""At most this many eviction steps per append: a disk filled by others is not emptied of events in one go."""
_PAGE_BYTES = 4096
"""SQLite's default page size (what the WAL limit below is counted in)."""
PLAUSIBLE_SINCE = 1_704_067_200.0
"""2024-01-01 UTC: a ``stored_at`` before it came from an unset clock, so its age is unknown."""
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


class Bounds(Protocol):
    """What the outbox needs of ``agent.config.BufferConfig``."""

    @property
    def max_rows(self) -> int: ...
    @property
    def max_bytes(self) -> int: ...
    @property
    def max_age_days(self) -> float: ...
    @property
    def reserve_bytes(self) -> int: ...


class OutboxError(SantiError):
    """A storage failure, worded as one line a technician can act on.

    Exit 2: at the command line it means the outbox the config points at is
    unusable (wrong state directory, permissions, a foreign file): fix and rerun.
    """

    exit_code = EXIT_BAD_INPUT


class OutboxFull(OutboxError):
    """The disk (or the file's page limit) is full; nothing stored was lost."""


class _NotAnOutbox(SantiError):
    """A readable SQLite file that is not (or no longer) a sound outbox: moved aside, never shown."""


class Row(NamedTuple):
    """One stored event as the uplink publishes it."""

    seq: int
    event_id: str
    topic: str
    payload: bytes
    ts: float


@dataclass(frozen=True)
class OutboxStats:
    """The outbox's part of an ``agent.status`` event."""

    depth: int
    oldest_ts: float | None
    evicted_total: int
    evicted_since_last: int


@dataclass
class _State:
    last_seq: int
    rows: int
    bytes: int
    evicted_total: int
    evicted_unreported: int

    def values(self) -> tuple[int, int, int, int, int]:
        return (self.last_seq, self.rows, self.bytes, self.evicted_total, self.evicted_unreported)


@dataclass
class _AckState:
    epoch: str
    acked_seq: int


@dataclass(frozen=True)
class AckView:
    """Where HQ's acknowledgement stands, for the status file and ``santi status``."""

    epoch: str
    acked_seq: int
    """The highest seq HQ has acknowledged in this epoch (0: none yet)."""
    sent_unacked: int
    """Rows the broker has PUBACKed that HQ has not acknowledged yet."""
    oldest_sent_at: float | None
    """Wall time the oldest of those was first sent, or None."""


def new_epoch() -> str:
    """A fresh outbox epoch: 64 random bits as 16 hex characters, so no two outboxes of a fleet share one."""
    return secrets.token_hex(8)


def _migrate_ack(db: sqlite3.Connection) -> _AckState:
    """Add the acknowledgement columns to an outbox that predates them; give it an epoch on first open."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for table, columns in _ACK_COLUMNS.items():
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        db.execute(_SENT_INDEX)
        epoch, acked_seq = db.execute("SELECT epoch, acked_seq FROM state WHERE id = 1").fetchone()
        if epoch is None:
            epoch = new_epoch()
            db.execute("UPDATE state SET epoch = ? WHERE id = 1", (epoch,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return _AckState(str(epoch), int(acked_seq))


def _stamp(now: float) -> str:
    return datetime.fromtimestamp(now, tz=UTC).strftime("%Y%m%dT%H%M%SZ")


def _move_aside(path: Path, now: float) -> Path:
    """Rename the unusable file (and its WAL/SHM) to ``<name>.corrupt-<UTC stamp>``; never overwrite."""
    base = path.with_name(f"{path.name}.corrupt-{_stamp(now)}")
    target, n = base, 1
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}.{n}")
    path.rename(target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    return target


def _describe(path: Path, exc: sqlite3.Error, what: str) -> OutboxError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return OutboxFull(
            f"outbox {path}: disk full, {what} not stored (stored events are safe) — "
            f"free space on that disk or lower buffer.max_bytes"
        )
    if code in {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}:
        return OutboxError(f"outbox {path}: database is locked — is another santi agent using the same state_dir?")
    if code == sqlite3.SQLITE_READONLY:
        return OutboxError(f"outbox {path}: read-only — check the permissions of the file and its folder")
    return OutboxError(f"outbox {path}: {exc} ({what} not stored)")


def _wal_pages(bounds: Bounds) -> int:
    """WAL pages between checkpoints: SQLite's 1000 by default, fewer so the WAL stays a quarter of the reserve.

    Everything written lives in the WAL until a checkpoint copies it into the
    file, which grows the file by as much: a WAL larger than the free space
    can never be checkpointed, and nothing in it can be freed.
    """
    return max(16, min(1000, bounds.reserve_bytes // (4 * _PAGE_BYTES)))


def _spare_path(path: Path) -> Path:
    """The preallocated file released when the disk fills: ``<outbox>.spare``, beside the outbox."""
    return path.with_name(path.name + ".spare")


def free_bytes(folder: Path) -> int:
    """Bytes a non-root writer may still use on the filesystem holding ``folder`` (root's extra margin excluded)."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


OUTBOX_FILE = "outbox.sqlite"
"""The outbox's file name inside ``agent.state_dir``."""


@dataclass(frozen=True)
class Summary:
    """What ``santi buffer status`` shows, read without changing the file."""

    path: Path
    stats: OutboxStats
    last_seq: int
    stored_bytes: int
    file_bytes: int


def _read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise OutboxError(f"no outbox at {path} — has the agent run with this state_dir?")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as exc:
        # A reader needs room for the -shm file (32 KiB). Without a whole one no writer is attached (a
        # writer keeps it), so nothing can change under us: read as immutable rather than fail on a full disk.
        db.close()
        shm = path.with_name(path.name + "-shm")
        if shm.exists() and shm.stat().st_size >= 32768:
            raise OutboxError(f"outbox {path} cannot be read: {exc}") from exc
        db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, timeout=5.0)
    return db


def summarize(path: Path) -> Summary:
    """Read an outbox's counters read-only (safe while the agent runs: WAL readers do not block it)."""
    db = _read_only(path)
    try:
        last_seq, rows, size, evicted, unreported = db.execute(
            "SELECT last_seq, rows, bytes, evicted_total, evicted_unreported FROM state WHERE id = 1"
        ).fetchone()
        head = db.execute("SELECT ts FROM outbox ORDER BY seq LIMIT 1").fetchone()
    except (sqlite3.Error, TypeError) as exc:
        raise OutboxError(f"outbox {path} cannot be read: {exc}") from exc
    finally:
        db.close()
    wal = path.with_name(path.name + "-wal")
    files = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    stats = OutboxStats(rows, None if head is None else float(head[0]), evicted, unreported)
    return Summary(path, stats, last_seq, size, files)


class Waiting(NamedTuple):
    """Rows up to a seq still stored: ``sent`` of them PUBACKed and waiting for HQ's ack, the rest not sent."""

    total: int
    sent: int


def waiting_through(path: Path, seq: int) -> Waiting:
    """How many rows up to ``seq`` are still stored, read-only (a drain's progress while events keep coming)."""
    db = _read_only(path)
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
        total = db.execute("SELECT count(*) FROM outbox WHERE seq <= ?", (seq,)).fetchone()[0]
        sent = 0
        if "sent_at" in columns:  # an outbox no ack-aware agent has opened yet has sent nothing
            sent = db.execute("SELECT count(sent_at) FROM outbox WHERE seq <= ?", (seq,)).fetchone()[0]
        return Waiting(int(total), int(sent))
    except sqlite3.Error as exc:
        raise OutboxError(f"outbox {path} cannot be read: {exc}") from exc
    finally:
        db.close()


def export_rows(path: Path, after_seq: int = 0) -> Iterator[Row]:
    """Every stored row in seq order, read-only, a chunk at a time (for carrying data out by hand)."""
    db = _read_only(path)
    try:
        while True:
            chunk = db.execute(
                "SELECT seq, event_id, topic, payload, ts FROM outbox WHERE seq > ? ORDER BY seq LIMIT 1000",
                (after_seq,),
            ).fetchall()
            if not chunk:
                return
            yield from (Row(*row) for row in chunk)
            after_seq = chunk[-1][0]
    except sqlite3.Error as exc:
        raise OutboxError(f"outbox {path} cannot be read: {exc}") from exc
    finally:
        db.close()


def with_outbox_figures(draft: AgentStatus) -> Callable[[OutboxStats], AgentStatus]:
    """A builder for :meth:`Outbox.append_status`: ``draft`` with the outbox's figures as they are at store time."""
    def build(stats: OutboxStats) -> AgentStatus:
        oldest = None if stats.oldest_ts is None else datetime.fromtimestamp(stats.oldest_ts, tz=UTC)
        return draft.model_copy(update={
            "outbox_depth": stats.depth, "oldest_unsent_ts": oldest,
            "evicted_total": stats.evicted_total, "evicted_since_last": stats.evicted_since_last,
        })
    return build


class Outbox:
    """A sequenced, bounded, durable queue of events; safe to share between threads."""

    def __init__(self, db: sqlite3.Connection, path: Path, bounds: Bounds, clock: Clock,
                 state: _State, recovered: str | None, ack: _AckState) -> None:
        self._db = db
        self._ack = ack
        self.ack_mode: AckMode = "hq"
        """When rows leave: set by the uplink from ``[uplink] ack``, reported in every ``agent.status``."""
        self.acks_ignored: dict[str, int] = {}
        self.marks_skipped = 0
        """Sent marks not recorded because free space was below the reserve (see ``mark_sent``)."""
        """HQ acknowledgements not applied, by reason (``other_epoch``, ``beyond_last_seq``)."""
        self.path = path
        self._bounds = bounds
        self._clock = clock
        self._state = state
        self._lock = threading.Lock()
        self._watchers: list[Callable[[], None]] = []
        self.recovered = recovered
        """One line if the file found at ``path`` was unusable and moved aside, else None."""
        self.last_error: str | None = None
        """The last write failure in one line (``santi buffer drain`` says why it stopped), None after a success."""
        self._spare = _spare_path(path)
        self._checkpoint_error: str | None = None
        self._evict_logged_at = float("-inf")
        self._evicted_unlogged = 0

    @classmethod
    def open(cls, path: Path, bounds: Bounds, clock: Clock = time.time, *, check: bool = True) -> Outbox:
        """Open or create the outbox at ``path``; ``check`` runs SQLite's quick_check first.

        Raises ``OutboxError`` (one line) when the file cannot be opened for a
        reason moving it aside would not fix (permissions, locked, disk full).
        """
        try:
            private_dir(path.parent)
            private_file(path)
        except OSError as exc:
            raise OutboxError(f"outbox {path}: cannot create it: {exc.strerror} — check the folder's "
                              f"permissions and free space") from exc
        spare = _spare_path(path)
        if spare.exists() and free_bytes(path.parent) < bounds.reserve_bytes:
            # Opening may need room for the -shm file and a WAL before anything can be deleted.
            spare.unlink()
        try:
            db, state, ack = cls._connect(path, check, _wal_pages(bounds))
            outbox = cls(db, path, bounds, clock, state, None, ack)
            outbox.keep_spare()
            return outbox
        except (sqlite3.DatabaseError, _NotAnOutbox) as exc:
            if getattr(exc, "sqlite_errorcode", None) not in _CORRUPT and not isinstance(exc, _NotAnOutbox):
                raise _describe(path, exc, "outbox") from exc
            reason = str(exc)
        aside = _move_aside(path, clock())
        with contextlib.suppress(OSError):  # if this fails, SQLite creates the file and says why it cannot
            private_file(path)
        message = (f"outbox {path} was unusable ({reason}); moved aside to {aside.name}, "
                   f"starting a fresh outbox — seq restarts at 1 in a new epoch")
        log.error(message, extra={"path": str(path), "moved_to": str(aside)})
        try:
            db, state, ack = cls._connect(path, check, _wal_pages(bounds))
        except sqlite3.Error as exc:
            raise _describe(path, exc, "outbox") from exc
        return cls(db, path, bounds, clock, state, message, ack)

    @staticmethod
    def _connect(path: Path, check: bool, wal_pages: int) -> tuple[sqlite3.Connection, _State, _AckState]:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
            db.execute(f"PRAGMA journal_size_limit={wal_pages * _PAGE_BYTES}")
            if check:
                problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
                if problems != ["ok"]:
                    raise _NotAnOutbox("; ".join(problems))
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and not {"outbox", "state"} <= tables:
                raise _NotAnOutbox(f"a SQLite file with other tables: {', '.join(sorted(tables))}")
            db.executescript(_SCHEMA)
            ack = _migrate_ack(db)
            row = db.execute(
                "SELECT last_seq, rows, bytes, evicted_total, evicted_unreported FROM state WHERE id = 1"
            ).fetchone()
        except BaseException:
            db.close()
            raise
        return db, _State(*row), ack

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the appending thread, must not block) after every commit of new rows."""
        self._watchers.append(callback)

    def unwatch(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback`` (an uplink that stopped)."""
        if callback in self._watchers:
            self._watchers.remove(callback)

    # -- appending ---------------------------------------------------------

    def append(self, event: Event) -> Event:
        """Store one event durably; returns its sequenced copy."""
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[Event]) -> list[Event]:
        """Store events in one transaction (one fsync); returns their sequenced copies, in order.

        Raises ``OutboxFull``/``OutboxError`` with nothing of the batch stored
        and nothing stored before it lost.
        """
        if not events:
            return []
        with self._lock:
            state = self._state
            first = state.last_seq + 1
            now = self._clock()
            stored: list[Event] = []
            rows: list[tuple[int, str, str, bytes, float, float, int]] = []
            added = 0
            for offset, event in enumerate(events):
                sequenced = event.model_copy(update={"seq": first + offset, "epoch": self._ack.epoch})
                payload = sequenced.__pydantic_serializer__.to_json(sequenced, by_alias=True)
                topic = topic_for(sequenced)
                size = len(payload) + len(topic)
                added += size
                rows.append((first + offset, str(event.event_id), topic, payload, event.ts.timestamp(), now, size))
                stored.append(sequenced)
            self._keep_reserve_locked(added, now)
            state = self._state
            new = _State(state.last_seq + len(rows), state.rows + len(rows), state.bytes + added,
                         state.evicted_total, state.evicted_unreported)
            self._write(lambda: self._db.executemany(_INSERT, rows), new, now, f"{len(rows)} event(s)")
        for callback in self._watchers:
            callback()
        return stored

    def append_status(self, build: Callable[[OutboxStats], AgentStatus]) -> AgentStatus:
        """Build an ``agent.status`` from the outbox's counters and store it, atomically.

        The unreported-eviction counter is reset in the same transaction that
        stores the event, so a crash can neither lose nor double-report it.
        """
        with self._lock:
            self._keep_reserve_locked(4096, self._clock())
            stats = self._stats_locked()
            event = build(stats)
            state = self._state
            seq = state.last_seq + 1
            # Rows leave from the bottom (acknowledged or evicted, oldest first): what is held is [first, seq].
            (first,) = self._db.execute("SELECT min(seq) FROM outbox").fetchone()
            sequenced = event.model_copy(update={"seq": seq, "epoch": self._ack.epoch, "last_seq": seq,
                                                 "first_held_seq": seq if first is None else min(first, seq),
                                                 "ack_mode": self.ack_mode})
            payload = sequenced.__pydantic_serializer__.to_json(sequenced, by_alias=True)
            topic = topic_for(sequenced)
            now = self._clock()
            row = (sequenced.seq, str(event.event_id), topic, payload, event.ts.timestamp(), now,
                   len(payload) + len(topic))
            new = _State(sequenced.seq, state.rows + 1, state.bytes + row[6], state.evicted_total,
                         state.evicted_unreported - stats.evicted_since_last)
            self._write(lambda: self._db.execute(_INSERT, row), new, now, "agent.status event")
        for callback in self._watchers:
            callback()
        return sequenced

    def _write(self, insert: Callable[[], object], new: _State, now: float, what: str) -> None:
        """Run ``insert`` and the bounds in one transaction; publish the new state only on commit."""
        def body() -> _State:
            state = _State(*new.values())
            insert()
            self._evict_locked(state, now, age=False)
            self._db.execute(_SAVE_STATE, state.values())
            return state

        self._state = self._transaction(body, what)

    def _transaction(self, body: Callable[[], T], what: str) -> T:
        """Run ``body`` in one write transaction; on a full disk make room (spare, WAL) and try once more."""
        for attempt in (1, 2):
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = body()
                    self._db.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            except sqlite3.Error as exc:
                if attempt == 1 and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL \
                        and self._make_room_locked():
                    continue
                error = _describe(self.path, exc, what)
                self.last_error = str(error)
                raise error from exc
            self.last_error = None
            return result
        raise AssertionError("unreachable")

    def _rollback(self) -> None:
        # SQLite has already rolled back after some errors (a full disk, for one).
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    # -- free space --------------------------------------------------------------

    def _spare_bytes(self) -> int:
        return min(SPARE_MAX_BYTES, self._bounds.reserve_bytes // 4)

    def _available_locked(self) -> int:
        """Filesystem free space plus the free pages inside the file, which new rows reuse first."""
        pages = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return free_bytes(self.path.parent) + int(pages) * int(size)

    def _keep_reserve_locked(self, adding: int, now: float) -> None:
        """Evict oldest rows until storing ``adding`` bytes leaves ``reserve_bytes`` free.

        In steps no larger than half the free space, each its own transaction
        followed by a WAL truncation: deleting writes the freed pages to the
        WAL (this SQLite zeroes deleted content), so one big delete on a
        nearly full disk would need the very space it is meant to free.
        """
        for _ in range(_RESERVE_STEPS):
            short = self._shortfall_locked(adding)
            if short <= 0 or self._state.rows == 0:
                return
            step = max(min(short, free_bytes(self.path.parent) // 2), 1)

            def body(step: int = step) -> _State:
                state = _State(*self._state.values())
                self._evict_locked(state, now, age=False, short_bytes=step)
                self._db.execute(_SAVE_STATE, state.values())
                return state

            try:
                self._state = self._transaction(body, "eviction for free space")
            except OutboxFull:
                return  # not even room to delete: the write that follows says so
            self._checkpoint_locked()

    def _shortfall_locked(self, adding: int) -> int:
        """Bytes to evict so that storing ``adding`` more keeps ``reserve_bytes`` free (0 when it does)."""
        reserve = self._bounds.reserve_bytes
        if reserve <= 0 or self._available_locked() - adding >= reserve:
            return 0
        self._checkpoint_locked()
        return max(reserve + adding - self._available_locked(), 0)

    def _checkpoint_locked(self) -> bool:
        """Copy the WAL into the file and truncate it to zero bytes; True if the WAL shrank."""
        wal = self.path.with_name(self.path.name + "-wal")
        before = wal.stat().st_size if wal.exists() else 0
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            if str(exc) != self._checkpoint_error:  # once per kind of failure, not once per append
                log.warning("outbox checkpoint failed", extra={"error": str(exc), "path": str(self.path)})
            self._checkpoint_error = str(exc)
            return False
        self._checkpoint_error = None
        return (wal.stat().st_size if wal.exists() else 0) < before

    def _make_room_locked(self) -> bool:
        """The disk is full: release the spare file and truncate the WAL; True if anything was freed."""
        released = self._spare.exists()
        if released:
            self._spare.unlink()
        truncated = self._checkpoint_locked()
        if released or truncated:
            log.error("outbox: disk full, released the spare file and truncated the WAL to go on",
                      extra={"path": str(self.path), "spare_released": released, "wal_truncated": truncated,
                             "free_bytes": free_bytes(self.path.parent)})
        return released or truncated

    def keep_spare(self) -> bool:
        """(Re)create the spare file when the disk has room for it on top of the reserve; True if it exists."""
        size = self._spare_bytes()
        if size == 0 or self._spare.exists():
            return size > 0
        if free_bytes(self.path.parent) < self._bounds.reserve_bytes + size:
            return False
        try:
            fd = os.open(self._spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError as exc:
            self._spare.unlink(missing_ok=True)
            log.warning("outbox spare file not created", extra={"path": str(self._spare), "error": str(exc)})
            return False
        return True

    # -- bounds ----------------------------------------------------------------

    def enforce(self, now: float | None = None) -> int:
        """Apply all bounds, age and free space included (call periodically); returns how many rows were evicted."""
        with self._lock:
            now = self._clock() if now is None else now
            before = self._state.evicted_total
            self._keep_reserve_locked(0, now)

            def body() -> _State:
                state = _State(*self._state.values())
                self._evict_locked(state, now, age=True)
                self._db.execute(_SAVE_STATE, state.values())
                return state

            self._state = self._transaction(body, "eviction")
            self.keep_spare()
            return self._state.evicted_total - before

    def _evict_locked(self, state: _State, now: float, *, age: bool, short_bytes: int = 0) -> int:
        """Delete the oldest rows until every bound holds; updates ``state`` in place.

        ``short_bytes`` is what the free-space reserve asks for on top of the
        byte bound. Rows stamped before ``PLAUSIBLE_SINCE`` have no known age.
        """
        excess_rows = state.rows - self._bounds.max_rows
        excess_bytes = max(state.bytes - self._bounds.max_bytes, short_bytes)
        taken_rows = taken_bytes = 0
        last = 0
        done = excess_rows <= 0 and excess_bytes <= 0
        while not done:
            chunk = self._db.execute(
                "SELECT seq, size FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (last, _EVICT_CHUNK),
            ).fetchall()
            for seq, size in chunk:
                if taken_rows >= excess_rows and taken_bytes >= excess_bytes:
                    done = True
                    break
                taken_rows += 1
                taken_bytes += size
                last = seq
            done = done or len(chunk) < _EVICT_CHUNK
        if taken_rows:
            self._db.execute("DELETE FROM outbox WHERE seq <= ?", (last,))
        if age:
            cutoff = now - self._bounds.max_age_days * 86400.0
            old = self._db.execute(
                "DELETE FROM outbox WHERE stored_at < ? AND stored_at >= ? RETURNING seq, size",
                (cutoff, PLAUSIBLE_SINCE),
            ).fetchall()
            taken_rows += len(old)
            taken_bytes += sum(size for _, size in old)
            last = max([last, *(seq for seq, _ in old)])
        if taken_rows == 0:
            return 0
        state.rows -= taken_rows
        state.bytes -= taken_bytes
        state.evicted_total += taken_rows
        state.evicted_unreported += taken_rows
        self._evicted_unlogged += taken_rows
        now_s = time.monotonic()
        if now_s - self._evict_logged_at >= EVICTION_LOG_EVERY_S:
            # An outbox held at its reserve evicts at every append: one line a minute says it all.
            log.warning("outbox bound hit: oldest events evicted",
                        extra={"evicted": self._evicted_unlogged, "up_to_seq": last, "path": str(self.path),
                               "low_disk": short_bytes > 0, "evicted_total": state.evicted_total})
            self._evict_logged_at = now_s
            self._evicted_unlogged = 0
        return taken_rows

    # -- reading and acknowledging -------------------------------------------

    def peek(self, after_seq: int, limit: int, *, unsent_only: bool = False) -> list[Row]:
        """Up to ``limit`` stored rows with ``seq > after_seq``, in ``seq`` order.

        ``unsent_only`` skips rows the broker already PUBACKed: they wait for
        HQ's ack, or for ``due`` to say they are overdue.
        """
        query = _PEEK_UNSENT if unsent_only else _PEEK
        with self._lock:
            rows = self._db.execute(query, (after_seq, limit)).fetchall()
        return [Row(*row) for row in rows]

    def due(self, sent_before: float, limit: int) -> list[Row]:
        """The lowest ``limit`` rows last sent before ``sent_before`` (wall time), still not acknowledged by HQ.

        Lowest seq first, not longest waiting: HQ acknowledges the highest
        contiguous seq, so the bottom rows are what hold every later one up.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, topic, payload, ts FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ? "
                "ORDER BY seq LIMIT ?",
                (sent_before, limit),
            ).fetchall()
        return [Row(*row) for row in rows]

    def mark_sent(self, seqs: Iterable[int], now: float) -> int:
        """Record the broker's PUBACK of these rows at wall time ``now``; they stay until HQ acknowledges them.

        Skipped (returns 0, counted in ``marks_skipped``) while free space is
        below the reserve: a mark makes its row longer, so on a full disk it
        would take the room HQ's acknowledgements need to delete rows. An
        unmarked row only counts as not sent yet: the next session sends it
        again, and HQ drops the repeat by ``event_id``.
        """
        wanted = sorted(set(seqs))
        with self._lock:
            if wanted and self._available_locked() < self._bounds.reserve_bytes:
                if not self.marks_skipped:
                    log.warning("outbox below its free-space reserve: not recording sent marks until HQ's "
                                "acknowledgements make room", extra={"path": str(self.path)})
                self.marks_skipped += len(wanted)
                return 0

            def update() -> int:
                return self._db.execute(
                    "UPDATE outbox SET sent_at = ?, first_sent_at = coalesce(first_sent_at, ?) "
                    "WHERE seq IN (SELECT value FROM json_each(?))",
                    (now, now, json.dumps(wanted)),
                ).rowcount
            return self._light_write(update, "sent mark")

    def ack(self, epoch: str, seq: int) -> int:
        """Apply HQ's acknowledgement: delete every row with a seq at or below ``seq``; returns how many.

        An ack for another epoch (an outbox reset since HQ last acked, or a
        stale retained message) or for a seq this outbox never assigned is
        ignored and counted in ``acks_ignored``: applying it could delete rows
        HQ has never seen.
        """
        with self._lock:
            reason = ("other_epoch" if epoch != self._ack.epoch
                      else "beyond_last_seq" if seq > self._state.last_seq else None)
            if reason is not None:
                if reason not in self.acks_ignored:
                    log.warning("HQ acknowledgement ignored", extra={
                        "reason": reason, "ack_epoch": epoch, "ack_seq": seq, "epoch": self._ack.epoch,
                        "last_seq": self._state.last_seq})
                self.acks_ignored[reason] = self.acks_ignored.get(reason, 0) + 1
                return 0
            acked_seq = max(self._ack.acked_seq, seq)
            through = [row[0] for row in self._db.execute("SELECT seq FROM outbox WHERE seq <= ? ORDER BY seq", (seq,))]
            deleted = self._delete_locked(through, "acknowledgement",
                                          lambda: self._db.execute("UPDATE state SET acked_seq = ? WHERE id = 1",
                                                                   (acked_seq,)))
            self._ack.acked_seq = acked_seq
            return deleted

    def ack_published(self, seqs: Iterable[int]) -> int:
        """Delete rows the broker PUBACKed (``ack = "broker"``); unknown seqs (evicted, acked) are ignored."""
        wanted = sorted(set(seqs))
        if not wanted:
            return 0
        with self._lock:
            return self._delete_locked(wanted, "acknowledgement")

    def _delete_locked(self, seqs: Sequence[int], what: str, also: Callable[[], object] = lambda: None) -> int:
        """Delete these rows and keep the counters right, in light transactions of ``_ACK_CHUNK`` rows.

        A delete writes what it frees to the WAL, so one big delete on a full
        disk would need the space it frees. A chunk that fails leaves the rest
        for the next acknowledgement (a re-send at worst, which HQ drops by
        ``event_id``); ``also`` runs in the last chunk's transaction.
        """
        deleted = 0
        chunks = [list(seqs[i:i + _ACK_CHUNK]) for i in range(0, len(seqs), _ACK_CHUNK)] or [[]]
        for position, chunk in enumerate(chunks):
            last = position == len(chunks) - 1

            def delete(chunk: str = json.dumps(chunk), last: bool = last) -> _State:
                # Built afresh on every attempt: a full disk may roll the first one back.
                new = _State(*self._state.values())
                sizes = self._db.execute(_DELETE_SEQS, (chunk,)).fetchall()
                new.rows -= len(sizes)
                new.bytes -= sum(size for (size,) in sizes)
                self._db.execute(_SAVE_STATE, new.values())
                if last:
                    also()
                return new

            before = self._state.rows
            self._state = self._light_write(delete, what)
            deleted += before - self._state.rows
        return deleted

    def _light_write(self, work: Callable[[], T], what: str) -> T:
        """One transaction committed with ``synchronous=NORMAL``: losing it to a power cut only means a re-send."""
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            return self._transaction(work, what)
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    @property
    def epoch(self) -> str:
        """This outbox's epoch: drawn when the file was created (or first opened by an ack-aware agent)."""
        return self._ack.epoch

    def ack_view(self) -> AckView:
        with self._lock:
            count, oldest = self._db.execute(
                "SELECT count(*), min(first_sent_at) FROM outbox WHERE sent_at IS NOT NULL").fetchone()
        return AckView(self._ack.epoch, self._ack.acked_seq, int(count), None if oldest is None else float(oldest))

    # -- counters ------------------------------------------------------------

    def depth(self) -> int:
        """Events stored and not yet acknowledged (by HQ, or by the broker with ``ack = "broker"``)."""
        return self._state.rows

    def stored_bytes(self) -> int:
        """Topic + payload bytes stored (what ``max_bytes`` bounds; the file is somewhat larger)."""
        return self._state.bytes

    @property
    def last_seq(self) -> int:
        """The highest seq ever assigned (0 for a new outbox)."""
        return self._state.last_seq

    @property
    def evicted_total(self) -> int:
        return self._state.evicted_total

    def oldest_ts(self) -> float | None:
        """Event time (epoch seconds) of the oldest stored event, or None when empty."""
        return self.stats().oldest_ts

    def take_evicted_since_last(self) -> int:
        """Evictions not yet reported, reset to 0 on disk; prefer ``append_status``, which is atomic."""
        with self._lock:
            taken = self._state.evicted_unreported
            if taken:
                new = _State(*self._state.values())
                new.evicted_unreported = 0
                try:
                    self._db.execute(_SAVE_STATE, new.values())
                except sqlite3.Error as exc:
                    raise _describe(self.path, exc, "eviction counter") from exc
                self._state = new
            return taken

    def stats(self) -> OutboxStats:
        with self._lock:
            return self._stats_locked()

    def _stats_locked(self) -> OutboxStats:
        row = self._db.execute("SELECT ts FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return OutboxStats(
            depth=self._state.rows,
            oldest_ts=None if row is None else float(row[0]),
            evicted_total=self._state.evicted_total,
            evicted_since_last=self._state.evicted_unreported,
        )
