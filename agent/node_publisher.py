"""Santi's node role: the sink that ``santi node`` sends its local observations through.

Not a source: it publishes what this box's radios hear onto the locator's
broker (``[nodes]``, with this node's login) as the batches that
``agent.sources.node_ingest`` reads on the other side.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt

from agent.mqttclient import BrokerConfig, new_client
from agent.observations import Observation
from agent.sources.base import Record, SourceStats
from agent.sources.node_ingest import encode_batch, santi_topic


class NodePublisher:
    """Santi's node role: batches local observations onto the locator's broker.

    ``add`` is the sink for the local sources. Every ``interval_s`` the
    buffer goes out as JSON arrays of at most ``batch_max`` observations on
    ``santi/v1/<store>/nodes/<node id>/observations`` (QoS 0: RSSI is
    perishable, and the locator drops stale batches anyway). While the broker
    is away nothing piles up beyond ``buffer_max``: the overflow is counted
    as ``buffer_full`` and the unsent batches as ``broker_down``.
    """

    def __init__(
        self,
        store_id: str,
        node_id: str,
        broker: BrokerConfig,
        *,
        interval_s: float = 0.5,
        batch_max: int = 500,
        buffer_max: int = 10_000,
        keepalive_s: int = 30,
    ) -> None:
        self.topic = santi_topic(store_id, node_id)
        self.broker = broker.where
        self.stats = SourceStats(f"node-publisher:{node_id}")
        self.published = 0
        self.batches = 0
        self._host = broker.host
        self._port = broker.port
        self._interval_s = interval_s
        self._batch_max = batch_max
        self._buffer: deque[Observation] = deque()
        self._buffer_max = buffer_max
        self._keepalive_s = keepalive_s
        self._client = new_client(broker)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._stopping = False

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.stats.fail(f"locator broker {self._host}:{self._port} refused the connection: {reason}")
        else:
            self.stats.up()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not self._stopping:
            self.stats.fail(f"lost the locator broker {self._host}:{self._port}: {reason}")

    def add(self, record: Record) -> None:
        """Sink for local sources; only observations are forwarded (taps and app sightings stay local)."""
        if not isinstance(record, Observation):
            self.stats.drop("not_an_observation")
            return
        if len(self._buffer) >= self._buffer_max:
            self.stats.drop("buffer_full")
            return
        self._buffer.append(record)
        self.stats.accepted += 1

    def flush(self) -> int:
        """Publish what is buffered now; returns how many observations went out."""
        sent = 0
        while self._buffer:
            count = min(self._batch_max, len(self._buffer))
            batch = [self._buffer.popleft() for _ in range(count)]
            if self.stats.state != "up":
                for _ in batch:
                    self.stats.drop("broker_down")
                continue
            info = self._client.publish(self.topic, encode_batch(batch), qos=0)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                for _ in batch:
                    self.stats.drop("broker_down")
                continue
            sent += count
            self.batches += 1
        self.published += sent
        return sent

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, then flush every ``interval_s`` until ``stop``; a last flush on the way out."""
        self._stopping = False
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive_s)
        self._client.loop_start()
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._interval_s)
                self.flush()
        finally:
            self.flush()
            self._stopping = True
            self._client.disconnect()
            await asyncio.to_thread(self._client.loop_stop)

    async def wait_connected(self, timeout_s: float) -> bool:
        """True once connected; lets a short run wait for the broker before it starts."""
        deadline = time.monotonic() + timeout_s
        while self.stats.state != "up" and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.stats.state == "up"
