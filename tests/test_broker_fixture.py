"""The mosquitto fixture itself: a real broker, stopped and restarted on the same port."""

from __future__ import annotations

import queue

import paho.mqtt.client as mqtt
import pytest

from agent.localbroker import Broker


def _roundtrip(broker: Broker, payload: bytes) -> bytes:
    got: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, msg: got.put(msg.payload)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.subscribe("t/#", qos=1)
        client.publish("t/x", payload, qos=1).wait_for_publish(5)
        return got.get(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_broker_stop_start_keeps_port(broker: Broker) -> None:
    port = broker.port
    assert _roundtrip(broker, b"one") == b"one"
    broker.stop(kill=True)
    assert not broker.running
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    with pytest.raises(ConnectionRefusedError):
        client.connect(broker.host, port)
    broker.start()
    assert broker.port == port
    assert _roundtrip(broker, b"two") == b"two"
    broker.restart()
    assert _roundtrip(broker, b"three") == b"three"
