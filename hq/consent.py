"""Consent records: parsing what the CRM or CIAM exports, and deciding what holds at a time.

A record says that a customer granted or refused one purpose at a time, and
where that came from. The newest record per (loyalty id, purpose) wins; with
no record a purpose is refused (consent is opt-in). Pure functions: the store
keeps the records, the subscriber asks.

Import formats (``santi hq consent import FILE``):

* CSV with a header: ``loyalty_id,purpose,granted,ts,source`` (``granted``:
  true/false, yes/no, 1/0; ``ts``: RFC 3339 with a zone);
* JSON Lines: one :class:`agent.messages.ConsentUpdate` per line, or one
  record per line with the CSV's fields.

A bad line is one error naming the file and line; nothing of the file is
stored then, so an import is all or nothing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import InputError
from agent.events import UtcTime
from agent.messages import PURPOSES, ConsentUpdate, LoyaltyId, Purpose, Source

MAX_IMPORT_LINE = 4096
"""Longest line an import accepts: a record is well under 300 bytes."""

_TRUE = {"true", "yes", "1", "granted", "y"}
_FALSE = {"false", "no", "0", "refused", "withdrawn", "n"}


class ConsentError(InputError):
    """A consent file or record problem, worded as one line."""


class ConsentRecord(BaseModel):
    """One purpose granted or refused for one customer at one time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loyalty_id: LoyaltyId
    purpose: Purpose
    granted: bool
    ts: UtcTime
    source: Source = Field(default="import")


@dataclass(frozen=True)
class ConsentState:
    """What holds for one customer: per purpose, granted or not, and the record that decided it."""

    loyalty_id: str
    granted: dict[str, bool]
    decided_by: dict[str, ConsentRecord]

    def allows(self, purpose: Purpose) -> bool:
        return self.granted.get(purpose, False)


def records_of(update: ConsentUpdate) -> list[ConsentRecord]:
    """One record per purpose named in a CIAM message."""
    return [
        ConsentRecord(loyalty_id=update.loyalty_id, purpose=purpose, granted=granted, ts=update.ts, source=update.source)
        for purpose, granted in update.purposes.items()
    ]


def state(loyalty_id: str, records: Iterable[ConsentRecord]) -> ConsentState:
    """The newest record per purpose wins (ties: the later one given); no record: refused."""
    decided: dict[str, ConsentRecord] = {}
    for record in records:
        if record.loyalty_id != loyalty_id:
            continue
        held = decided.get(record.purpose)
        if held is None or record.ts >= held.ts:
            decided[record.purpose] = record
    return ConsentState(loyalty_id, {p: r.granted for p, r in decided.items()}, decided)


def _granted(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"granted must be true or false, not {value!r}")


def _record(data: dict[str, object], source: str) -> list[ConsentRecord]:
    if "purposes" in data:
        return records_of(ConsentUpdate.model_validate(data))
    fields = dict(data)
    if "granted" not in fields:
        raise ValueError("missing field 'granted'")
    fields["granted"] = _granted(fields["granted"])
    fields.setdefault("source", source)
    if fields.get("source") in (None, ""):
        fields["source"] = source
    return [ConsentRecord.model_validate(fields)]


def _why(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "record"
        return f"{where}: {error['msg']}"
    return str(exc)


def _lines(text: str, path: Path) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if len(line) > MAX_IMPORT_LINE:
            raise ConsentError(f"{path}:{number}: longer than {MAX_IMPORT_LINE} characters")
        yield number, line


def parse_import(text: str, path: Path, *, source: str = "import") -> list[ConsentRecord]:
    """Every record of a CSV or JSON Lines export (by content, not by name), or ``ConsentError``."""
    first = text.lstrip()[:1]
    records: list[ConsentRecord] = []
    try:
        if first in ("{", ""):
            for number, line in _lines(text, path):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                    if not isinstance(data, dict):
                        raise ValueError("a line must be a JSON object")
                    records.extend(_record(data, source))
                except (ValueError, ValidationError, RecursionError) as exc:
                    raise ConsentError(f"{path}:{number}: {_why(exc)}") from None
            return records
        for _ in _lines(text, path):
            pass
        reader = csv.DictReader(io.StringIO(text))
        header = set(reader.fieldnames or ())
        missing = {"loyalty_id", "purpose", "granted", "ts"} - header
        if missing:
            raise ConsentError(f"{path}:1: CSV header lacks {', '.join(sorted(missing))} "
                               "(want loyalty_id,purpose,granted,ts[,source])")
        extra = header - {"loyalty_id", "purpose", "granted", "ts", "source"}
        if extra:
            raise ConsentError(f"{path}:1: unknown CSV column {sorted(extra)[0]!r}")
        for row in reader:
            try:
                records.extend(_record({k: v for k, v in row.items() if k is not None}, source))
            except (ValueError, ValidationError) as exc:
                raise ConsentError(f"{path}:{reader.line_num}: {_why(exc)}") from None
    except csv.Error as exc:
        raise ConsentError(f"{path}: not CSV: {exc}") from None
    return records


def purposes_text(granted: dict[str, bool]) -> str:
    """``profiling yes, personalisation no`` for tables."""
    return ", ".join(f"{p} {'yes' if granted.get(p, False) else 'no'}" for p in PURPOSES)


def newest(records: Iterable[ConsentRecord]) -> datetime | None:
    """Time of the newest record, for a ``show`` line."""
    return max((r.ts for r in records), default=None)
