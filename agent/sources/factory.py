"""The one place that picks the sources a site config asks for."""

from __future__ import annotations

from pathlib import Path

from agent.config import SiteConfig
from agent.privacy import Pseudonymizer
from agent.sources.base import Source
from agent.sources.ble import BleSource
from agent.sources.replay import ReplaySource


def hardware_sources(site: SiteConfig, pseudonymizer: Pseudonymizer) -> list[Source]:
    """Sources for the radios and readers the site config describes."""
    sources: list[Source] = []
    local_ble = [r for r in site.receivers if r.kind == "ble"]
    if local_ble:
        sources.append(BleSource(site.ble, local_ble[0].id, pseudonymizer))
    return sources


def replay_sources(observations: Path, taps: Path | None, speed: float) -> list[Source]:
    """A recorded session instead of radios (the demo, engineers replaying RSSI)."""
    return [ReplaySource(observations, taps, speed=speed)]
