"""The locator: observations and taps of a window in, presence and identity events out."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from agent.events import CardTapped, IdentityLinked, SectorEntered, VisitEnded, VisitStarted
from agent.locator import Locator
from agent.observations import CardTap
from tests.helpers.recording import SITE, readings


def _walk(locator: Locator, stops: list[tuple[str, tuple[float, float], float]], t0: float,
          rng: np.random.Generator, taps: dict[float, CardTap] | None = None) -> tuple[list[object], float]:
    events: list[object] = []
    t = t0
    for emitter, xy, seconds in stops:
        for _ in range(int(seconds)):
            t += 1.0
            tap = [taps[t]] if taps and t in taps else []
            events += locator.window(t, readings(emitter, xy, t, rng), tap)
    return events, t


def test_shopper_is_located_in_the_fish_sector_and_leaves() -> None:
    rng = np.random.default_rng(7)
    locator = Locator(SITE)
    events, t = _walk(locator, [("a", (15.0, 2.0), 10), ("a", (5.0, 16.0), 30), ("a", (15.0, 2.0), 10)], 1000.0, rng)
    started = [e for e in events if isinstance(e, VisitStarted)]
    entered = [e.sector_id for e in events if isinstance(e, SectorEntered)]
    assert len(started) == 1
    assert "fish" in entered
    assert entered[0] == "entrance"
    more = []
    for step in range(200):
        more += locator.window(t + 1 + step, [])
    ended = [e for e in more if isinstance(e, VisitEnded)]
    assert len(ended) == 1
    assert ended[0].reason == "silence"
    assert ended[0].dwell_s.get("fish", 0) > 15


def test_lone_tap_links_and_unknown_reader_is_dropped() -> None:
    rng = np.random.default_rng(3)
    locator = Locator(SITE)
    taps = {1020.0: CardTap(ts=1020.0, reader_id="till-1", card="L-000123"),
            1021.0: CardTap(ts=1021.0, reader_id="till-9", card="L-000124")}
    events, _ = _walk(locator, [("b", (24.0, 2.5), 25)], 1000.0, rng, taps)
    links = [e for e in events if isinstance(e, IdentityLinked)]
    tapped = [e for e in events if isinstance(e, CardTapped)]
    assert len(links) == 1
    assert links[0].loyalty_id == "L-000123"
    assert links[0].confidence > 0.6
    assert len(tapped) == 1
    assert tapped[0].linked
    assert locator.stats.dropped["unknown_reader"] == 1


def test_far_shopper_is_not_linked_and_app_beacon_links_at_once() -> None:
    rng = np.random.default_rng(5)
    locator = Locator(SITE)
    locator.register_app_beacon("app-1", "L-000777")
    taps = {1020.0: CardTap(ts=1020.0, reader_id="till-1", card="L-000555")}
    events, _ = _walk(locator, [("app-1", (5.0, 16.0), 25)], 1000.0, rng, taps)
    links = [e for e in events if isinstance(e, IdentityLinked)]
    assert [(e.loyalty_id, e.method) for e in links] == [("L-000777", "app_beacon")]
    tapped = [e for e in events if isinstance(e, CardTapped)]
    assert len(tapped) == 1
    assert not tapped[0].linked
    assert tapped[0].subject == "L-000555"


def test_app_sighting_after_the_visit_started_links_it_once() -> None:
    rng = np.random.default_rng(9)
    locator = Locator(SITE)
    events, t = _walk(locator, [("app-2", (15.0, 2.0), 8)], 1000.0, rng)
    assert any(isinstance(e, VisitStarted) for e in events)
    locator.register_app_beacon("app-2", "L-000042")
    later, _ = _walk(locator, [("app-2", (5.0, 16.0), 10)], t, rng)
    links = [e for e in later if isinstance(e, IdentityLinked)]
    assert [(e.loyalty_id, e.method, e.confidence) for e in links] == [("L-000042", "app_beacon", 1.0)]


def test_each_entry_is_logged_at_debug_with_its_timeline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = np.random.default_rng(7)
    locator = Locator(SITE)
    subject = "3f2a9c0d41b7e85a6c19d2e0"  # sources hand the locator pseudonyms, never raw addresses
    with caplog.at_level(logging.DEBUG, logger="agent.locator"):
        events, _ = _walk(locator, [(subject, (15.0, 2.0), 10), (subject, (5.0, 16.0), 30)], 1000.0, rng)
    entered = [e for e in events if isinstance(e, SectorEntered)]
    decided = [r.__dict__ for r in caplog.records if r.getMessage() == "sector decided"]
    assert [(r["subject"], r["sector"]) for r in decided] == [(e.subject, e.sector_id) for e in entered]
    for record, event in zip(decided, entered, strict=True):
        assert record["crossed"] == round(event.ts.timestamp(), 3)
        assert record["crossed"] <= record["qualified"] <= record["decided"] - SITE.tracking.hysteresis_s
    assert [r["sector"] for r in decided] == ["entrance", "fish"]
