"""MQTT clients for tests: a collector of everything under santi/v1/, a plain publisher."""

from __future__ import annotations

import queue
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.events import Event, parse_event
from agent.localbroker import Broker


def subscribe(broker: Broker, got: queue.Queue[tuple[str, bytes]]) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, msg: got.put((msg.topic, msg.payload))
    subscribed = threading.Event()
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe("santi/v1/#", qos=1)
    assert subscribed.wait(5), "no SUBACK from the test broker"
    return client


def publisher(broker: Broker) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def events_in(got: queue.Queue[tuple[str, bytes]], into: list[Event]) -> list[Event]:
    """Parse the events waiting in ``got`` onto the end of ``into`` (other topics skipped); returns ``into``."""
    while not got.empty():
        topic, payload = got.get()
        if "/events/" in topic:
            into.append(parse_event(payload))
    return into
