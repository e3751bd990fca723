"""One home per default: the sector filter's and the tracker's defaults are read from one place each."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import fields

from agent.config import FootfallConfig, TrackingConfig
from positioning.ekf import update
from positioning.occupancy import WALL_LOSS_DB, Outline
from positioning.sectors import (
    SECTOR_HOLD_S,
    SECTOR_MARGIN_M,
    SECTOR_SETTLE_S,
    SECTOR_STILL_HOLD_S,
    SECTOR_THRESHOLD,
    SECTOR_WALK_M,
    SectorTracker,
    hmm_step,
)
from positioning.tracker import TrackerConfig


def _defaults(function: Callable[..., object]) -> dict[str, object]:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()}


def test_the_sector_filter_and_the_site_config_take_the_sector_defaults_from_one_place() -> None:
    tracker = _defaults(SectorTracker)
    assert tuple(tracker[name] for name in ("threshold", "hold_s", "margin_m", "walk_m", "settle_s", "still_hold_s")) == (
        SECTOR_THRESHOLD, SECTOR_HOLD_S, SECTOR_MARGIN_M, SECTOR_WALK_M, SECTOR_SETTLE_S, SECTOR_STILL_HOLD_S)
    config = TrackingConfig()
    assert (config.sector_threshold, config.hysteresis_s, config.sector_walk_m) == (
        SECTOR_THRESHOLD, SECTOR_HOLD_S, SECTOR_WALK_M)
    step = _defaults(hmm_step)
    assert all(step[name] is inspect.Parameter.empty
               for name in ("threshold", "hold_s", "margin_m", "walk_m", "settle_s", "still_hold_s"))


def test_update_and_the_site_config_take_the_tracker_defaults_from_its_config() -> None:
    own = {f.name: f.default for f in fields(TrackerConfig)}
    given = _defaults(update)
    for name in ("emitter_z", "gate", "weak_k", "iterations", "reading_correlation"):
        assert given[name] == own[name], name
    assert given["body"] == (own["body_loss_db"], own["body_walk_speed"])
    config = TrackingConfig()
    assert (config.emitter_height_m, config.track_silence_s, config.phone_offset_db, config.body_loss_db,
            config.body_hold_s) == (
        own["emitter_z"], own["max_silence_s"], own["offset_sigma_db"], own["body_loss_db"], own["body_hold_s"])


def test_the_counting_stage_and_its_grid_take_the_wall_loss_from_one_place() -> None:
    assert FootfallConfig().wall_loss_db == _defaults(Outline.of)["wall_loss_db"] == WALL_LOSS_DB
