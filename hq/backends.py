"""``open_store``: the one place that turns a database URL (or a path) into a store backend.

PostgreSQL's module is imported only when a ``postgresql://`` URL asks for
it, so SQLite users need no psycopg.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from hq.sqlitestore import SqliteStore
from hq.store import HqStoreError, Store


def open_store(url: str, *, create: bool = True, **caps: int) -> Store:
    """``sqlite:///relative.db``, ``sqlite:////abs.db``, a bare path, or ``postgresql://...``.

    ``caps``: ``dead_letter_rows`` and ``dead_letter_bytes`` (defaults DEAD_LETTER_ROWS/_BYTES).
    ``create=False`` (commands that only read) refuses a SQLite file that does not exist instead of
    leaving an empty database behind a mistyped ``--db``.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("postgresql", "postgres"):
        from hq.pgstore import PostgresStore  # noqa: PLC0415 - psycopg is an optional extra

        conninfo, schema = split_schema(url)
        return PostgresStore(conninfo, schema=schema, **caps)
    if scheme == "sqlite":
        path = url[len("sqlite://"):]
        if not path.startswith("/") or path == "/":
            raise HqStoreError(f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs.db")
        return _sqlite(path[1:], create, caps)
    if scheme and len(scheme) > 1:
        raise HqStoreError(f"unsupported database URL {url!r}: use sqlite:///path.db or postgresql://...")
    return _sqlite(url, create, caps)


def _sqlite(path: str, create: bool, caps: dict[str, int]) -> SqliteStore:
    if not create and not Path(path).is_file():
        raise HqStoreError(f"no HQ database at {path}: check --db (santi hq run or santi hq import creates it)")
    return SqliteStore(path, **caps)


def split_schema(url: str) -> tuple[str, str | None]:
    """Take our ``schema=`` query parameter out of a PostgreSQL URL (libpq does not know it)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema
