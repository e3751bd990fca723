"""The demo's anonymous counts beside the simulator's truth: people inside, and entries.

HQ's counts (``occupancy.sampled``, ``footfall.counted``) are about everyone
whose phone probes, app or not; the truth is every simulated shopper. Passed
the truth as two functions (``simulator.truth.Truth.people_inside`` and
``entries``), so this module needs nothing of the simulator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from rich.console import Console

from agent.events import Event, FootfallCounted, OccupancySampled
from agent.text import Table

TruthAt = Callable[[ArrayLike], NDArray[np.float64]]
SHOWN_SAMPLES = 8
"""Occupancy rows printed at most, evenly spread; the error line covers every sample."""


def print_beside_truth(console: Console, events: Sequence[Event], inside_at: TruthAt, entries_in: TruthAt,
                       start_ts: float) -> None:
    """Occupancy samples and footfall counts HQ stored, each beside the truth; minutes from ``start_ts``."""
    samples = sorted((e for e in events if isinstance(e, OccupancySampled) and e.sector_id is None),
                     key=lambda e: e.interval_end)
    counted = sorted((e for e in events if isinstance(e, FootfallCounted)), key=lambda e: e.interval_start)
    if not samples and not counted:
        console.print("no occupancy or footfall counts (the site config has no [footfall] section)")
        return
    if samples:
        at = np.array([e.interval_end.timestamp() for e in samples])
        truth = inside_at(at)
        table = Table("minute", "inside (counted)", "inside (truth)",
                      title="People inside, counted from anonymous probes, app or not", title_justify="left")
        shown = np.unique(np.linspace(0, len(samples) - 1, min(SHOWN_SAMPLES, len(samples))).round().astype(int))
        for index in shown:
            event = samples[index]
            table.add_row(f"{(at[index] - start_ts) / 60:.1f}", _spread(event.count, event.count_sd, ".1f"),
                          f"{truth[index]:.0f}")
        console.print(table)
        if not any(e.count_sd for e in samples):
            console.print("no spread given: the count is uncalibrated ([footfall] people_per_device, "
                          "people_offset and residual_sd not fitted for this store)")
        error = np.abs(np.array([e.count for e in samples]) - truth)
        console.print(f"occupancy over {len(samples)} samples: mean absolute error {error.mean():.1f} persons, "
                      f"mean inside {truth.mean():.1f}")
    for event in counted:
        start, end = event.interval_start.timestamp(), event.interval_end.timestamp()
        real = float(entries_in(np.array([start, end]))[0])
        console.print(f"entries {(start - start_ts) / 60:.0f}-{(end - start_ts) / 60:.0f} min: "
                      f"counted {_spread(event.entries, event.entries_sd, '.0f')}, truth {real:.0f}")


def _spread(value: float, sd: float, form: str) -> str:
    """``value ± sd``, or the value alone when no spread is known (an sd of 0 would claim certainty)."""
    return f"{value:{form}} ± {sd:{form}}" if sd else f"{value:{form}}"
