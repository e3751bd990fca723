"""Playing HQ's part of the end-to-end acknowledgement in tests (the real HQ side lives in ``hq/``).

``ContiguousAcks`` does what HQ promises: per epoch, the highest seq up to
which every event has arrived. ``publish_ack`` puts one ``Ack`` on an agent's
ack topic with a plain paho client, retained and QoS 1, as HQ does.
"""

from __future__ import annotations

import json
import queue
import threading
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import paho.mqtt.publish as publish

from agent.events import Ack, ack_topic


class ContiguousAcks:
    """Per epoch, the highest contiguous seq seen so far (what HQ may acknowledge)."""

    def __init__(self) -> None:
        self.top: dict[str, int] = {}
        self._ahead: dict[str, set[int]] = {}

    def saw(self, payload: bytes) -> tuple[str, int] | None:
        """Record one event's payload; returns ``(epoch, seq)`` when the contiguous top moved."""
        event = json.loads(payload)
        epoch, seq = str(event["epoch"]), int(event["seq"])
        ahead = self._ahead.setdefault(epoch, set())
        ahead.add(seq)
        top = before = self.top.get(epoch, 0)
        # As HQ does: seqs below the agent's first held one will never come (acknowledged or evicted).
        top = max(top, int(event.get("first_held_seq") or 0) - 1)
        while top + 1 in ahead:
            top += 1
            ahead.discard(top)
        ahead.difference_update({s for s in ahead if s <= top})
        self.top[epoch] = top
        return (epoch, top) if top != before else None


def ack_payload(store_id: str, agent_id: str, epoch: str, seq: int) -> str:
    return Ack(store_id=store_id, agent_id=agent_id, epoch=epoch, seq=seq, ts=datetime.now(UTC)).to_json()


def publish_ack(host: str, port: int, store_id: str, agent_id: str, epoch: str, seq: int) -> None:
    """Acknowledge ``seq`` of ``epoch`` as HQ would: retained, QoS 1, on the agent's ack topic."""
    publish.single(ack_topic(store_id, agent_id), ack_payload(store_id, agent_id, epoch, seq), qos=1,
                   retain=True, hostname=host, port=port)


def publish_raw(host: str, port: int, store_id: str, agent_id: str, payload: bytes, *, retain: bool = False) -> None:
    """Anything at all on the agent's ack topic (garbage tests)."""
    publish.single(ack_topic(store_id, agent_id), payload, qos=1, retain=retain, hostname=host, port=port)


class AckingSubscriber:
    """A plain subscriber to ``santi/v1/#`` that acknowledges every agent's events as HQ would.

    Messages go to ``got`` as ``(topic, payload)``; acks are published from
    paho's network thread, retained, per agent (read off the event's topic).
    """

    def __init__(self, host: str, port: int, got: queue.Queue[tuple[str, bytes]]) -> None:
        self.got = got
        self.acks: dict[tuple[str, str], ContiguousAcks] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe("santi/v1/#", qos=1)
        if not subscribed.wait(5):
            raise TimeoutError("no SUBACK from the test broker")

    def _on_message(self, client: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        self.got.put((message.topic, bytes(message.payload)))
        parts = message.topic.split("/")
        if len(parts) < 6 or parts[4] != "events":
            return
        store_id, agent_id = parts[2], parts[3]
        moved = self.acks.setdefault((store_id, agent_id), ContiguousAcks()).saw(message.payload)
        if moved is not None:
            client.publish(ack_topic(store_id, agent_id), ack_payload(store_id, agent_id, *moved), qos=1,
                           retain=True)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
