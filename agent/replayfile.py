"""The replay format: JSON Lines, one record a line, streamed both ways.

Replay files hold observations (``observations.jsonl``), card taps
(``taps.jsonl``) or any other pydantic record. Files from the field are
messy: a bad line must not cost the rest of the file, so the reader yields
every good record and reports each bad line with its number and reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Generic, TypeVar

from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

RecordT = TypeVar("RecordT", bound=BaseModel)

MAX_LINE_BYTES = 64 * 1024


@dataclass(frozen=True)
class BadLine:
    """A line that did not parse: where and why, for the operator."""

    line: int
    reason: str


@dataclass
class ReadReport:
    """What a reader saw; filled in as the file streams."""

    good: int = 0
    bad: list[BadLine] = field(default_factory=list)

    @property
    def bad_count(self) -> int:
        return len(self.bad)


def _reason(exc: ValidationError | UnicodeDecodeError | ValueError) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "line"
        return f"{where}: {first['msg']}"
    return str(exc).splitlines()[0]


class RecordReader(Generic[RecordT]):
    """Stream records of one model out of a JSON Lines file.

    Iterate it for the good records; ``report`` counts good and bad lines.
    Blank lines are skipped without counting. At most ``keep_bad`` bad lines
    are kept with their reasons (all are counted), so a file of garbage
    cannot exhaust memory.
    """

    def __init__(
        self, source: Path | IO[bytes], model: type[RecordT], *, keep_bad: int = 1000
    ) -> None:
        self._source = source
        self._model = model
        self._keep_bad = keep_bad
        self.report = ReadReport()
        self._bad_total = 0

    @property
    def bad_total(self) -> int:
        """All bad lines seen, including those beyond ``keep_bad``."""
        return self._bad_total

    def __iter__(self) -> Iterator[RecordT]:
        if isinstance(self._source, Path):
            with self._source.open("rb") as handle:
                yield from self._records(handle)
        else:
            yield from self._records(self._source)

    def _records(self, handle: IO[bytes]) -> Iterator[RecordT]:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                if len(raw) > MAX_LINE_BYTES:
                    raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
                record = self._model.model_validate_json(raw)
            except (ValidationError, ValueError) as exc:
                self._bad(number, _reason(exc))
                continue
            self.report.good += 1
            yield record

    def _bad(self, number: int, reason: str) -> None:
        self._bad_total += 1
        if len(self.report.bad) < self._keep_bad:
            self.report.bad.append(BadLine(number, reason))
        log.warning("replay line dropped", extra={"line": number, "reason": reason})


def read_records(
    path: Path, model: type[RecordT], *, keep_bad: int = 1000
) -> tuple[list[RecordT], ReadReport]:
    """Read a whole (small) file; for big ones iterate a ``RecordReader``."""
    reader = RecordReader(path, model, keep_bad=keep_bad)
    records = list(reader)
    return records, reader.report


class RecordWriter:
    """Append records as JSON Lines; buffered, flushed on close."""

    def __init__(self, path: Path, *, append: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("ab" if append else "wb")
        self.written = 0

    def write(self, record: BaseModel) -> None:
        self._handle.write(record.model_dump_json(by_alias=True).encode() + b"\n")
        self.written += 1

    def write_all(self, records: Iterable[BaseModel]) -> int:
        before = self.written
        for record in records:
            self.write(record)
        return self.written - before

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_records(path: Path, records: Iterable[BaseModel]) -> int:
    """Write every record to ``path`` (replacing it); returns how many."""
    with RecordWriter(path) as writer:
        return writer.write_all(records)
