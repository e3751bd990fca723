"""The nodes source against a real mosquitto: delivery, garbage, unknown nodes, outages."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.localbroker import Broker
from agent.observations import Observation
from agent.privacy import Pseudonymizer
from agent.sources.base import Record
from agent.sources.node_ingest import encode_batch, santi_topic
from agent.sources.node_subscriber import NodesSource
from tests.helpers.mqtt import publisher
from tests.helpers.nodes import STORE, run_with_source
from tests.helpers.wait import wait_until


def test_espresense_and_santi_messages_arrive(broker: Broker, example_site: Path) -> None:
    pseudo = Pseudonymizer(b"k" * 32, STORE, 86_400.0)

    async def body(source: NodesSource, received: list[Record]) -> None:
        pub = publisher(broker)
        try:
            now = time.time()
            pub.publish("espresense/devices/iBeacon:2686f39c-bada-4658-854a-a62e7e5e8b8d-1-0/fish",
                        json.dumps({"rssi@1m": -65, "rssi": -71, "distance": 2.1}))
            pub.publish("espresense/devices/abc/fish", b"{garbage")
            pub.publish("espresense/devices/abc/garage", json.dumps({"rssi": -60}))
            batch = [Observation(ts=now, receiver_id="x", emitter_id=pseudo.pseudonym("ble", "aa", now),
                                 tech="ble", rssi_dbm=-55.0)]
            pub.publish(santi_topic(STORE, "greens"), encode_batch(batch))
            await asyncio.to_thread(wait_until, lambda: len(received) == 2 and sum(source.stats.dropped.values()) == 2, 15.0, 'len(received) == 2 and sum(source.stats.dropped.values()) == 2')
        finally:
            pub.loop_stop()
            pub.disconnect()
        assert {(r.receiver_id, r.rssi_dbm) for r in received if isinstance(r, Observation)} == {
            ("node-fish", -71.0), ("node-greens", -55.0)}
        assert dict(source.stats.dropped) == {"not_json": 1, "unknown_node": 1}
        assert source.ingest.unknown_nodes == {"garage": 1}

    source = run_with_source(broker, example_site, body)
    assert source.stats.accepted == 2
    assert source.stats.state == "down"


def test_broker_outage_is_survived(broker: Broker, example_site: Path) -> None:
    async def body(source: NodesSource, received: list[Record]) -> None:
        broker.stop(kill=True)
        await asyncio.to_thread(wait_until, lambda: source.stats.state == "down", 15.0, 'source.stats.state == "down"')
        assert source.stats.last_error is not None
        assert "lost the local broker" in source.stats.last_error
        broker.start()
        await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 40.0, 'source.stats.state == "up"')
        pub = publisher(broker)
        try:
            pub.publish("espresense/devices/abc/checkout", json.dumps({"rssi": -66}))
            await asyncio.to_thread(wait_until, lambda: len(received) == 1, 15.0, 'len(received) == 1')
        finally:
            pub.loop_stop()
            pub.disconnect()

    run_with_source(broker, example_site, body)


def test_full_bridge_queue_drops_and_counts(broker: Broker, example_site: Path) -> None:
    sent = 60

    async def body(source: NodesSource, received: list[Record]) -> None:
        pub = publisher(broker)
        try:
            # the consumer stalls on the first record while the rest arrive
            for index in range(sent):
                pub.publish(f"espresense/devices/d{index}/fish", json.dumps({"rssi": -60}))
            await asyncio.to_thread(wait_until, lambda: len(received) + source.stats.dropped["queue_full"] == sent, 15.0, 'len(received) + source.stats.dropped["queue_full"] == sent')
        finally:
            pub.loop_stop()
            pub.disconnect()

    source = run_with_source(broker, example_site, body, queue_size=5, sink_delay_s=1.5)
    assert source.stats.dropped["queue_full"] > 0
    assert source.stats.accepted + source.stats.dropped["queue_full"] == sent


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_payloads_from_any_protocol_version(broker: Broker, example_site: Path,
                                            protocol: MQTTProtocolVersion) -> None:
    async def body(source: NodesSource, received: list[Record]) -> None:
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        try:
            pub.publish("espresense/devices/abc/aisle1", json.dumps({"rssi": "-62"}))
            await asyncio.to_thread(wait_until, lambda: len(received) == 1, 15.0, 'len(received) == 1')
        finally:
            pub.loop_stop()
            pub.disconnect()
        assert isinstance(received[0], Observation)
        assert received[0].receiver_id == "node-aisle1"

    run_with_source(broker, example_site, body)
