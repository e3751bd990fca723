"""The one place that picks the sources a site config asks for."""

from __future__ import annotations

from pathlib import Path

from agent.config import SiteConfig
from agent.mqttclient import BrokerConfig
from agent.privacy import Pseudonymizer
from agent.sources.base import Source
from agent.sources.ble import BleSource
from agent.sources.ndef_loyalty import LoyaltyFormat
from agent.sources.nfc import NfcSource
from agent.sources.node_ingest import NodeIngest
from agent.sources.node_subscriber import NodesSource
from agent.sources.replay import ReplaySource
from agent.sources.wifi import WifiMonitorSource


def hardware_sources(site: SiteConfig, pseudonymizer: Pseudonymizer) -> list[Source]:
    """Sources for the radios, nodes and readers the site config describes."""
    sources: list[Source] = []
    local_ble = [r for r in site.receivers if r.kind == "ble"]
    if local_ble:
        sources.append(BleSource(site.ble, local_ble[0].id, pseudonymizer))
    local_wifi = [r for r in site.receivers if r.kind == "wifi"]
    if local_wifi and site.wifi.interface is not None:
        sources.append(WifiMonitorSource(site.wifi.interface, local_wifi[0].id, pseudonymizer))
    # No [nodes] section, no subscription (config check refuses node receivers without one).
    if site.nodes is not None and any(r.kind == "node" for r in site.receivers):
        ingest = NodeIngest(site.receivers, pseudonymizer, site.store.id, ble=site.ble)
        broker = BrokerConfig.of(site.nodes, f"santi-{site.store.id}-{site.agent.id}-nodes")
        sources.append(NodesSource(ingest, broker))
    loyalty = LoyaltyFormat(site.nfc.text_prefix, tuple(site.nfc.uri_prefixes))
    sources.extend(NfcSource(reader, pseudonymizer, loyalty=loyalty) for reader in site.nfc_readers)
    return sources


def replay_sources(observations: Path, taps: Path | None, speed: float) -> list[Source]:
    """A recorded session instead of radios (the demo, engineers replaying RSSI)."""
    return [ReplaySource(observations, taps, speed=speed)]
