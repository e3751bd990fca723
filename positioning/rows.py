"""Row bookkeeping of banks of stacked per-emitter arrays: ids to dense rows, and capacity.

The tracker and the sector filter keep one row per emitter in arrays that
batched math indexes directly; this module maps emitter ids to those rows
and grows the arrays. Both also time per-row intervals between windows,
with the slack below.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

IndexArray = NDArray[np.intp]

WINDOW_SLACK_S = 0.05
"""How much earlier than its length an interval measured between two window closes may count as complete (a
sector's hold, a still segment's next weighing on the grid).

Windows close on the agent's clock, each a few milliseconds late: without
slack, an interval measured between two closes comes out a hair short and
waits a whole window more (benchmarks/README.md, "Tuning evidence")."""


class IdRows:
    """Opaque emitter ids <-> dense row numbers of a bank of stacked arrays.

    Rows stay dense (0..len-1) so batched math can index them directly; when
    rows are dropped the survivors keep their order and are renumbered.
    """

    def __init__(self) -> None:
        self._row: dict[str, int] = {}
        self._ids: list[str] = []

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, emitter_id: object) -> bool:
        return emitter_id in self._row

    @property
    def ids(self) -> list[str]:
        """Emitter id of each row, in row order (a copy)."""
        return list(self._ids)

    def factorise(
        self, emitter_ids: Sequence[str] | NDArray[np.str_]
    ) -> tuple[list[str], IndexArray, IndexArray]:
        """Group a window's emitter ids: (unique ids, their rows or -1 if new, (N,) code per reading).

        A dict pass over the ids: hashing strings is bookkeeping, not math,
        and is faster than sorting them with np.unique.
        """
        codes: dict[str, int] = {}
        code = np.fromiter(
            (codes.setdefault(str(e), len(codes)) for e in emitter_ids), np.intp, len(emitter_ids)
        )
        unique = list(codes)
        rows = np.fromiter((self._row.get(e, -1) for e in unique), np.intp, len(unique))
        return unique, rows, code

    def add(self, ids: Sequence[str]) -> IndexArray:
        """Append new ids; returns their rows."""
        start = len(self._ids)
        self._ids.extend(ids)
        self._row.update((e, start + i) for i, e in enumerate(ids))
        return np.arange(start, len(self._ids), dtype=np.intp)

    def drop(self, dead: NDArray[np.bool_]) -> list[str]:
        """Remove the rows flagged in `dead` (len,); returns their ids."""
        gone = [e for e, d in zip(self._ids, dead.tolist(), strict=True) if d]
        self._ids = [e for e, d in zip(self._ids, dead.tolist(), strict=True) if not d]
        self._row = {e: i for i, e in enumerate(self._ids)}
        return gone


MIN_CAPACITY = 64
"""Rows a bank keeps allocated however few tracks are left."""


def grown(array: NDArray[np.float64], n: int) -> NDArray[np.float64]:
    """`array` with at least n rows, doubling its capacity when full."""
    if array.shape[0] >= n:
        return array
    bigger = np.empty((max(n, 2 * array.shape[0]), *array.shape[1:]), dtype=array.dtype)
    bigger[: array.shape[0]] = array
    return bigger
