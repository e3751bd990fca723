"""The file ``santi buffer export`` writes, taken in by HQ as if it had come over MQTT.

An export is JSON Lines of the wire form: each line the payload the uplink
would have published. Its topic is the one the event names (``topic_for``),
so each line goes through the same ``decode`` and ``Store.ingest`` as live
traffic: stored once by ``event_id`` (an export that overlaps what already
arrived, or the same file imported twice, adds nothing), seq accounting and
gaps as for messages, and a line HQ cannot use becomes a dead letter whose
topic names the file and line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from agent.events import parse_event, topic_for
from hq.ingest import MAX_EVENT_BYTES, Accepted, Rejected, decode
from hq.store import IngestResult, Store

BATCH = 500
"""Lines per ingest transaction: as ``santi hq run``'s default batch."""


@dataclass
class ImportResult:
    """What one import did, for its report."""

    lines: int = 0
    ingest: IngestResult = field(default_factory=IngestResult)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    """(line number, reason) of every line dead-lettered."""
    epochs: set[tuple[str, str, str]] = field(default_factory=set)
    """(store_id, agent_id, epoch) the file's events belong to: whose gaps to report."""


def _line_items(lines: Iterable[bytes], name: str) -> Iterator[tuple[int, Accepted | Rejected]]:
    for number, raw in enumerate(lines, start=1):
        payload = raw.rstrip(b"\r\n")
        if not payload.strip():
            continue
        yield number, decode(_topic(payload, f"import:{name}:{number}"), payload)


def _topic(payload: bytes, fallback: str) -> str:
    """The topic the event names, which live traffic would have come on; ``fallback`` if it names none."""
    if len(payload) > MAX_EVENT_BYTES:
        return fallback
    try:
        return topic_for(parse_event(payload))
    except Exception:  # noqa: BLE001 - decode words the reason, as for a live message
        return fallback


def import_export(store: Store, source: BinaryIO, name: str, received_at: float) -> ImportResult:
    """Ingest every line of ``source`` (an export named ``name`` in reports) in batches."""
    result = ImportResult()
    batch: list[Accepted | Rejected] = []

    def flush() -> None:
        result.ingest.add(store.ingest(batch, received_at, want_events=False))
        batch.clear()

    for number, item in _line_items(source, name):
        result.lines = number
        if isinstance(item, Rejected):
            result.bad_lines.append((number, item.reason))
        else:
            result.epochs.add(item.origin[:3])
        batch.append(item)
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    return result
