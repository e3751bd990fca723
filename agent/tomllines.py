"""Find the line of a key path in a TOML file, for one-line config errors.

``tomllib`` gives values, not positions. A technician fixing a config needs
the line, so this walks the text once and records where each table, array
element and key starts. It understands what site configs use: ``[table]``,
``[[array.of.tables]]``, ``key = value`` with dotted keys, and multi-line
arrays; for anything fancier it falls back to the nearest enclosing entry.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\.\"' ]+?)\s*=")

PathKey = tuple[str | int, ...]


def _split_key(text: str) -> list[str]:
    return [part.strip().strip("\"'") for part in text.split(".")]


def key_lines(text: str) -> dict[PathKey, int]:
    """Map each key path (names and array indexes) to its 1-based line."""
    lines: dict[PathKey, int] = {}
    counters: dict[tuple[str, ...], int] = {}
    table: PathKey = ()
    depth = 0  # bracket depth of a multi-line value being skipped
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0] if '"' not in raw and "'" not in raw else raw
        if depth > 0:
            depth += line.count("[") - line.count("]")
            continue
        header = _HEADER.match(line)
        if header and not _KEY.match(line):
            names = _split_key(header.group(2))
            if header.group(1) == "[[":
                key = tuple(names)
                index = counters.get(key, 0)
                counters[key] = index + 1
                lines.setdefault(key, number)
                table = (*names, index)
            else:
                table = tuple(names)
            lines.setdefault(table, number)
            continue
        match = _KEY.match(line)
        if match:
            path = (*table, *_split_key(match.group(1)))
            lines.setdefault(path, number)
            value = line[match.end():]
            depth = max(value.count("[") - value.count("]"), 0)
    return lines


def line_of(text: str, loc: Sequence[str | int]) -> int | None:
    """The line of ``loc``, or of its nearest ancestor that has one."""
    lines = key_lines(text)
    path = tuple(loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None
