"""The emitter cap (issue 15, item 6): new emitters beyond ``max_emitters`` are dropped and counted, memory comes back.

The locator of the example store, fed a flood of distinct emitters; the
RSS figures of a real flood through mosquitto are ``benchmarks/flood.py``'s.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import DEFAULT_MAX_EMITTERS, load_site
from agent.localbroker import example_site_for
from agent.locator import Locator
from agent.observations import Reading
from positioning.rows import MIN_CAPACITY

T0 = 1_763_900_000.0
NODES = ["node-fish", "node-centre", "node-greens"]


def _flood(first: int, count: int, t: float) -> list[Reading]:
    return [Reading(t, node, f"{i:024x}", "ble", -70.0 - k) for i in range(first, first + count)
            for k, node in enumerate(NODES)]


def _locator(tmp_path: Path, max_emitters: int) -> Locator:
    path = example_site_for(tmp_path, 1883)
    text = path.read_text(encoding="utf-8").replace("[tracking]\n", f"[tracking]\nmax_emitters = {max_emitters}\n")
    path.write_text(text, encoding="utf-8")
    return Locator(load_site(path))


def test_the_default_cap_is_the_config_default(tmp_path: Path) -> None:
    assert load_site(example_site_for(tmp_path, 1883)).tracking.max_emitters == DEFAULT_MAX_EMITTERS


def test_new_emitters_beyond_the_cap_are_dropped_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    locator = _locator(tmp_path, 300)
    with caplog.at_level(logging.WARNING, logger="agent.locator"):
        locator.window(T0, _flood(0, 200, T0))
        locator.window(T0 + 1, _flood(0, 200, T0 + 1) + _flood(200, 500, T0 + 1))
        locator.window(T0 + 2, _flood(0, 200, T0 + 2) + _flood(1000, 500, T0 + 2))
    assert len(locator.tracker) == 300
    tracked = set(locator.tracker.snapshot().emitter_ids)
    assert {f"{i:024x}" for i in range(300)} == tracked  # the first come are kept, known ones always pass
    assert locator.stats.dropped == {"emitter_cap": 3 * (400 + 500)}
    assert locator.stats.observations == 3 * (200 + 300 + 200)
    warnings = [r for r in caplog.records if r.getMessage() == "readings dropped by the locator"]
    assert len(warnings) == 1  # the second window's drops are held back for a minute


def test_a_flood_that_expires_gives_the_tracker_memory_back(tmp_path: Path) -> None:
    locator = _locator(tmp_path, 20_000)
    for step in range(4):
        locator.window(T0 + step, _flood(step * 5000, 5000, T0 + step))
    assert len(locator.tracker) == 20_000
    flood = locator.tracker.nbytes
    assert flood > 20_000 * 300
    t = T0 + 4 + locator.site.tracking.track_silence_s + 1
    locator.window(t, [])
    assert len(locator.tracker) == 0
    locator.window(t + 1, _flood(10**6, 3, t + 1))
    assert len(locator.tracker) == 3
    # Twice MIN_CAPACITY rows are kept, each no larger than one of the flood's 20,000 or more: its megabytes are gone.
    assert locator.tracker.nbytes <= flood * 2 * MIN_CAPACITY / 20_000
    assert len(locator._tech) == 3
