"""Words printed around numbers (CLI, systemd status): one home, so "1 shoppers" cannot come back."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` and ``noun`` agreeing: "1 visit", "2 visits", "1,204 lines"; ``nouns`` for irregular plurals."""
    word = noun if count == 1 else (nouns if nouns is not None else f"{noun}s")
    return f"{count:,} {word}"
