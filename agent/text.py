"""Words printed around numbers (CLI, systemd status) and the tables they sit in: one home for each."""

from __future__ import annotations

from typing import Any

import rich.table
from rich.console import OverflowMethod, RenderableType


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` and ``noun`` agreeing: "1 visit", "2 visits", "1,204 lines"; ``nouns`` for irregular plurals."""
    word = noun if count == 1 else (nouns if nouns is not None else f"{noun}s")
    return f"{count:,} {word}"


class Table(rich.table.Table):
    """A rich table that folds a long word (a path, an id) onto the next line instead of cutting it with "…".

    Every command's tables come from here, so at 80 columns they still show
    every character: a technician copies paths and ids from them.
    """

    def add_column(self, header: RenderableType = "", footer: RenderableType = "", *,
                   overflow: OverflowMethod = "fold", **kwargs: Any) -> None:
        super().add_column(header, footer, overflow=overflow, **kwargs)
