"""The replay format: JSON Lines, one record a line, streamed both ways.

Replay files hold observations (``observations.jsonl``), card taps
(``taps.jsonl``) or any other pydantic record. Files from the field are
messy: a bad line must not cost the rest of the file, so the reader yields
every good record and reports each bad line with its number and reason.

A file is untrusted input: lines are read with a bounded ``readline`` (a
100 MB line without a newline costs one ``MAX_LINE_BYTES`` buffer, then
is skipped as ``line_too_long``), bad lines are counted by a short reason
key, and their warnings are rate-limited (one per reason per minute, then a
summary) so that a file of garbage cannot flood the journal.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from agent.errors import InputError
from agent.observations import IMPOSSIBLE_RSSI
from agent.ratelimit import Throttle

log = logging.getLogger(__name__)

RecordT = TypeVar("RecordT", bound=BaseModel)

MAX_LINE_BYTES = 64 * 1024
"""An observation line is ~150 bytes; anything this long is not a record."""

LINE_TOO_LONG = "line_too_long"

MAX_JUMP_S = 600.0
"""A record this far from the median time of its neighbours in the file is a clock jump, not data.

Recordings hold several readings a second, so neighbours in file order lie
seconds apart; ten minutes is far beyond any disorder the reorder window
repairs, and far below the jumps seen in the field (1970 from a Pi without
its RTC, a year ahead)."""

JUMP_NEIGHBOURS = 8
"""Records on each side that judge one: an outlier run shorter than this is skipped, while a real
gap (both sides longer than this) passes, because each side's records outvote the other's."""


class Timed(Protocol):
    @property
    def ts(self) -> float: ...


TimedT = TypeVar("TimedT", bound=Timed)


def skip_time_jumps(
    records: Iterable[TimedT],
    on_jump: Callable[[TimedT, float], None],
    *,
    max_jump_s: float = MAX_JUMP_S,
    neighbours: int = JUMP_NEIGHBOURS,
) -> Iterator[TimedT]:
    """``records`` without those more than ``max_jump_s`` from the median time around them.

    Each record is judged against up to ``neighbours`` records before and
    after it in file order (the upper median, so a file of two records
    trusts the later clock); a jump is handed to ``on_jump`` with that
    median and skipped. A replay therefore never waits for a line stamped
    a year ahead, nor starts at 1970 because its first line was. Inside a
    file the median of a steady clock is the record itself; at its ends
    it lies up to ``neighbours / 2`` records away, so a recording with a
    record at least every ``max_jump_s / 4`` (2.5 minutes) loses nothing.
    """
    window: deque[TimedT] = deque()
    times: deque[float] = deque()
    judged = 0  # the leading records of the window that are only context now

    def fits(record: TimedT, around: Sequence[float]) -> bool:
        if max(around) - min(around) <= max_jump_s:  # the usual case, without sorting
            return True
        reference = statistics.median_high(around)
        if abs(record.ts - reference) <= max_jump_s:
            return True
        on_jump(record, reference)
        return False

    for record in records:
        window.append(record)
        times.append(record.ts)
        if len(window) - judged > neighbours:
            candidate = window[judged]
            if fits(candidate, times):
                yield candidate
            if judged < neighbours:
                judged += 1
            else:
                window.popleft()
                times.popleft()
    tail = list(times)
    for index in range(judged, len(window)):  # the last ones: fewer after, still at most `neighbours` before
        if fits(window[index], tail[max(index - neighbours, 0):]):
            yield window[index]


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


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "line"
    return f"{where}: {first['msg']}"


def _key(exc: ValidationError) -> str:
    """The counter key of a bad line: few and stable, unlike the messages."""
    types = {item["type"] for item in exc.errors()}
    if IMPOSSIBLE_RSSI in types:
        return IMPOSSIBLE_RSSI
    if types & {"json_invalid", "json_type"}:
        return "not_json"
    return "invalid_record"


class ReplayFileError(InputError):
    """A replay file with nothing to replay (unreadable, empty, or not one good record): exit 2."""


class RecordReader(Generic[RecordT]):
    """Stream records of one model out of a JSON Lines file.

    Iterate it for the good records; ``report`` counts good and bad lines.
    Blank lines are skipped without counting. At most ``keep_bad`` bad lines
    are kept with their reasons (all are counted, by key, in ``bad_by_key``:
    ``line_too_long``, ``not_json``, ``impossible_rssi``, ``invalid_record``),
    so a file of garbage cannot exhaust memory.
    """

    def __init__(
        self, source: Path | IO[bytes], model: type[RecordT], *, keep_bad: int = 1000
    ) -> None:
        self._source = source
        self._model = model
        self._keep_bad = keep_bad
        self.report = ReadReport()
        self.bad_by_key: Counter[str] = Counter()
        self._bad_total = 0
        self._throttle = Throttle()

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
        for number, raw in enumerate(_lines(handle), start=1):
            if raw is None:
                self._bad(number, LINE_TOO_LONG, f"line longer than {MAX_LINE_BYTES} bytes")
                continue
            if not raw.strip():
                continue
            try:
                record = self._model.model_validate_json(raw)
            except ValidationError as exc:
                self._bad(number, _key(exc), _reason(exc))
                continue
            self.report.good += 1
            yield record
        if self._bad_total:
            log.warning("replay file read with bad lines", extra={
                "file": str(self._source) if isinstance(self._source, Path) else "stream",
                "good": self.report.good, "bad": dict(self.bad_by_key)})

    def nothing_to_replay(self, what: str) -> ReplayFileError:
        """The error for a file read to its end without one good record: the file and its first bad line."""
        where = self._source if isinstance(self._source, Path) else "stream"
        if not self.report.bad:
            return ReplayFileError(f"{where}: no {what} in the file (it is empty)")
        first = self.report.bad[0]
        return ReplayFileError(f"{where}: no {what} in the file; line {first.line}: {first.reason} "
                               f"(bad lines: {self._bad_total})")

    def _bad(self, number: int, key: str, reason: str) -> None:
        self._bad_total += 1
        self.bad_by_key[key] += 1
        if len(self.report.bad) < self._keep_bad:
            self.report.bad.append(BadLine(number, reason))
        held = self._throttle.allow(key, time.monotonic())
        if held is not None:
            log.warning("replay line dropped", extra={"line": number, "reason": reason,
                                                      "similar_since_last": held})


def _lines(handle: IO[bytes]) -> Iterator[bytes | None]:
    """The file's lines, or None for a line longer than ``MAX_LINE_BYTES``, read without holding it."""
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
            yield raw
            continue
        while raw and not raw.endswith(b"\n"):  # skip the rest of the line, a buffer at a time
            raw = handle.readline(MAX_LINE_BYTES)
        yield None


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
