"""The SQLite backend: the shared SQL of hq/store.py on one file in WAL mode."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from hq.store import POISON_ERRORS, Cursor, HqStoreError, Lock, Store, Unstorable

log = logging.getLogger(__name__)


class SqliteStore(Store):
    """SQLite in WAL mode, synchronous=FULL: a commit (and so a PUBACK) survives a power cut.

    ``secure_delete`` zeroes deleted rows in place, and an erasure ends with a
    WAL checkpoint that truncates the WAL, so an erased id stays in no file.
    A new database file is created 0600: it holds loyalty ids.
    """

    dialect = "sqlite"

    def __init__(self, path: Path | str, **caps: int) -> None:
        self.path = str(path)
        try:
            if self.path != ":memory:":
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                         timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA secure_delete=ON")
        except (sqlite3.Error, OSError) as exc:
            raise HqStoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        super().__init__(**caps)

    @contextmanager
    def _transaction(self, lock: Lock) -> Iterator[Cursor]:
        cur = cast(Cursor, self._conn.cursor())
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            self._conn.rollback()
            raise
        cur.execute("COMMIT")

    def _read_cursor(self) -> Cursor:
        return cast(Cursor, self._conn.cursor())

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (sqlite3.DataError, sqlite3.IntegrityError, sqlite3.InterfaceError) as exc:
            raise Unstorable(f"SQLite {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_TOOBIG:
                raise Unstorable(f"SQLite {self.path}: {exc}") from exc
            raise HqStoreError(f"SQLite {self.path}: {exc}") from exc
        except POISON_ERRORS as exc:
            raise Unstorable(f"SQLite {self.path}: {type(exc).__name__}: {exc}") from exc

    def _scrub(self) -> None:
        busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("WAL checkpoint after an erasure was blocked by a reader; the erased rows stay"
                        " in the WAL until the next checkpoint", extra={"path": self.path})

    def close(self) -> None:
        with self._lock:
            self._conn.close()
