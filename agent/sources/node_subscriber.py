"""The nodes source: subscribes to the store's node broker and feeds the locator.

paho's network loop runs on a thread of this source; each message is parsed
there by ``NodeIngest`` (``agent.sources.node_ingest``) and its observations
cross into asyncio in one place, through a bounded queue that drops and
counts when full. The client is built at run time by ``agent.mqttclient``
from ``[nodes]`` (login, TLS), so a password file that cannot be read takes
this source down with the reason, and no other.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from agent.config import ConfigError
from agent.mqttclient import BrokerConfig, new_client
from agent.observations import Observation
from agent.sources.base import Sink
from agent.sources.node_ingest import NodeIngest

log = logging.getLogger(__name__)

DEFAULT_QUEUE = 20_000


class NodesSource:
    """Subscribes to the local broker and hands node observations to the sink.

    paho's network loop runs on a thread of this source; each message is
    parsed there and its observations cross into asyncio through ``_offer``
    (the only bridge): a bounded queue, drained on the loop after a
    ``call_soon_threadsafe`` wake-up; what does not fit is counted as
    ``queue_full``. paho reconnects by itself; the state follows it and is
    ``up`` only once the subscriptions are acknowledged.

    Should that thread (or the drain task) die anyway, the source is marked
    crashed: ``down`` in status, with the cause, and the service stops
    feeding the systemd watchdog so that the unit is restarted.
    """

    def __init__(
        self,
        ingest: NodeIngest,
        broker: BrokerConfig,
        *,
        keepalive_s: int = 30,
        queue_size: int = DEFAULT_QUEUE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ingest = ingest
        self.stats = ingest.stats
        self._broker = broker
        self._host = broker.host
        self._port = broker.port
        self._keepalive_s = keepalive_s
        self._clock = clock
        self._capacity = queue_size
        self._pending: deque[Observation] = deque()
        self._wakeup_scheduled = False
        self._ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._refused = False
        """The broker refused the last CONNECT: its reason stays the source's reason, not the close after it."""
        self._thread: threading.Thread | None = None

    def _new_client(self) -> mqtt.Client:
        """Built at run time: a password file that cannot be read takes this source down, no other."""
        client = new_client(self._broker)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._refused = reason.is_failure
        if reason.is_failure:
            self.stats.fail(f"local broker {self._host}:{self._port} refused the connection: {reason}"
                            + (" — check [nodes] username and its password" if reason.value in (0x86, 0x87) else ""))
            return
        client.subscribe([(topic, 0) for topic in self.ingest.topics])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if any(reason.is_failure for reason in reasons):
            self.stats.fail(f"local broker {self._host}:{self._port} refused the subscriptions: {reasons}")
            return
        self.stats.up()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not self._stopping and not self._refused:
            self.stats.fail(f"lost the local broker {self._host}:{self._port}: {reason}")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        observations = self.ingest.ingest(message.topic, bytes(message.payload), self._clock())
        if observations:
            self._offer(observations)

    def _offer(self, observations: list[Observation]) -> None:
        """The one bridge from paho's thread into asyncio: a bounded queue and a wake-up.

        paho's thread is the only producer, so the room check cannot be
        raced; the loop is woken once per burst, not once per message.
        """
        room = self._capacity - len(self._pending)
        if room < len(observations):
            for _ in range(len(observations) - max(room, 0)):
                self.stats.drop("queue_full")
            observations = observations[: max(room, 0)]
        self._pending.extend(observations)
        loop = self._loop
        if observations and not self._wakeup_scheduled and loop is not None and not loop.is_closed():
            self._wakeup_scheduled = True
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._wakeup_scheduled = False
        self._ready.set()

    async def _drain(self, sink: Sink) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._pending:
                sink(self._pending.popleft())
                self.stats.accepted += 1

    def _network(self, client: mqtt.Client) -> None:
        """paho's loop, on our thread so that its death is seen rather than silent."""
        try:
            client.loop_forever(retry_first_connection=True)
        except BaseException as exc:  # noqa: BLE001 -- whatever kills the thread, say so in status
            self.stats.crash(f"network thread died: {type(exc).__name__}: {str(exc)[:200]}")

    async def run(self, sink: Sink, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        try:
            client = self._new_client()
        except (ConfigError, OSError) as exc:
            self.stats.fail(f"node broker {self._host}:{self._port}: {str(exc).splitlines()[0]}")
            log.error(self.stats.last_error)
            await stop.wait()
            self.stats.state = "down"
            return
        client.connect_async(self._host, self._port, keepalive=self._keepalive_s)
        self._thread = threading.Thread(target=self._network, args=(client,), name=f"nodes-{self._host}:{self._port}",
                                        daemon=True)
        self._thread.start()
        drain = asyncio.create_task(self._drain(sink))
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({drain, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if drain.done() and not drain.cancelled() and drain.exception() is not None:
                self.stats.crash(f"drain task died: {drain.exception()!r}")
                await stop.wait()
        finally:
            self._stopping = True
            drain.cancel()
            stopped.cancel()
            client.disconnect()
            await asyncio.to_thread(self._thread.join, 5.0)
            self._loop = None
            self.stats.state = "down"
