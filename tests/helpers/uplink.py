"""The uplink under test: a fast backoff, the uplink itself, and HQ's stand-in with a persistent session."""

from __future__ import annotations

import json
import os
import queue
import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.backoff import BackoffPolicy
from agent.config import UplinkConfig
from agent.events import Ack, ack_topic, status_topic
from agent.localbroker import Broker
from agent.outbox import Outbox
from agent.uplink import Uplink
from tests.helpers.hq_acks import ContiguousAcks
from tests.helpers.outbox_writer import AGENT, STORE
from tests.helpers.wait import wait_until

FAST = BackoffPolicy(base_s=0.2, cap_s=1.0, long_s=600.0)

STATUS = status_topic(STORE, AGENT)


class Subscriber:
    """A QoS 1 HQ stand-in with a persistent MQTT 5 session, so the broker queues while it is away.

    With ``acks`` (the default) it also plays HQ's acknowledgement: the
    highest contiguous seq received, retained on the agent's ack topic.
    """

    def __init__(self, broker: Broker, *, tls_ca: Path | None = None, acks: bool = True) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.acks = ContiguousAcks() if acks else None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hq-{os.getpid()}-{id(self)}",
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(1, 1)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca))
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe("santi/#", qos=1)
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        self.messages.put((message.topic, message.payload, message.retain))
        if self.acks is None or "/events/" not in message.topic:
            return
        moved = self.acks.saw(message.payload)
        if moved is not None:
            ack = Ack(store_id=STORE, agent_id=AGENT, epoch=moved[0], seq=moved[1], ts=datetime.now(UTC))
            client.publish(ack_topic(STORE, AGENT), ack.to_json(), qos=1, retain=True)

    def saved_by(self, broker: Broker) -> None:
        """Wait until mosquitto has written this subscriber's session to disk, so it survives the broker's death."""
        assert self.subscribed.wait(5), "no SUBACK from the test broker"
        subscribed_at = time.time_ns()
        store = broker.workdir / "data" / "mosquitto.db"
        wait_until(lambda: store.exists() and store.stat().st_mtime_ns > subscribed_at, 5,
                   "mosquitto's autosave after the subscription")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def events(self, want: int, timeout: float) -> list[dict[str, object]]:
        """Event payloads received (duplicates included) until ``want`` distinct ids or the timeout."""
        got: list[dict[str, object]] = []
        ids: set[str] = set()
        deadline = time.monotonic() + timeout
        while len(ids) < want and time.monotonic() < deadline:
            try:
                topic, payload, _ = self.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            if "/events/" in topic:
                event = json.loads(payload)
                got.append(event)
                ids.add(str(event["event_id"]))
        return got

    def status(self, value: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                topic, payload, _ = self.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            if topic == STATUS and payload == value:
                return True
        return False


def make_uplink(broker_port: int, outbox: Outbox, **config: object) -> Uplink:
    settings = UplinkConfig.model_validate({"host": "127.0.0.1", "port": broker_port, **config})
    return Uplink(settings, outbox, store_id=STORE, agent_id=AGENT, policy=FAST, rng=random.Random(5),
                  connect_timeout_s=3.0)
