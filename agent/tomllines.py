"""Find the line of a key path in a TOML file, and word one-line errors with it.

``tomllib`` gives values, not positions. A technician fixing a config needs
the line, so this walks the text once and records where each table, array
element and key starts. It understands what site configs use: ``[table]``,
``[[array.of.tables]]``, ``key = value`` with dotted keys, and multi-line
arrays; for anything fancier it falls back to the nearest enclosing entry.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from pathlib import Path

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\.\"' ]+?)\s*=")

PathKey = tuple[str | int, ...]


def _split_key(text: str) -> list[str]:
    return [part.strip().strip("\"'") for part in text.split(".")]


def key_lines(text: str) -> dict[PathKey, int]:
    """Map each key path (names and array indexes) to its 1-based line.

    As in TOML, a header below an array of tables names its last element:
    after ``[[rule]]``, ``[rule.limits]`` is ``("rule", <last index>, "limits")``
    and ``[[rule.action]]`` an array inside that element.
    """
    lines: dict[PathKey, int] = {}
    arrays: dict[PathKey, int] = {}  # resolved path of an array of tables -> elements so far
    table: PathKey = ()
    depth = 0  # bracket depth of a multi-line value being skipped

    def resolve(names: Sequence[str]) -> PathKey:
        path: PathKey = ()
        for name in names:
            path = (*path, name)
            if path in arrays:
                path = (*path, arrays[path] - 1)
        return path

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0] if '"' not in raw and "'" not in raw else raw
        if depth > 0:
            depth += line.count("[") - line.count("]")
            continue
        header = _HEADER.match(line)
        if header and not _KEY.match(line):
            names = _split_key(header.group(2))
            if header.group(1) == "[[":
                key = (*resolve(names[:-1]), names[-1])
                index = arrays.get(key, 0)
                arrays[key] = index + 1
                lines.setdefault(key, number)
                table = (*key, index)
            else:
                table = resolve(names)
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


def format_loc(loc: Sequence[str | int]) -> str:
    """A key path as a person writes it: ``receivers[3].x``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def located(path: Path, text: str, loc: Sequence[str | int], message: str) -> str:
    """The one line for a problem at ``loc``: ``file:line: key: message``."""
    line = line_of(text, loc)
    where = f"{path}:{line}" if line is not None else str(path)
    return f"{where}: {format_loc(loc)}: {message}"


def syntax_error(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    """The one line for a file that is not TOML: ``file:line: TOML syntax: problem``."""
    match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
    message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
    where = f"{path}:{match.group(1)}" if match else str(path)
    return f"{where}: TOML syntax: {message}"


def read_text(path: Path, error: type[Exception]) -> str:
    """A config file's text, or ``error`` with one line: no such file, or why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read: {exc}") from None
