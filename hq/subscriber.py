"""The HQ subscriber: MQTT 5 shared subscription → bounded queue → one writer thread.

paho's network thread only enqueues; the writer validates, commits a batch
(every ``batch_size`` messages or ``flush_ms``) and only then sends the
PUBACKs (``manual_ack=True``), so a crash at any instant loses nothing: an
unacked message is redelivered and the store ignores what it already has.

A PUBACK names a packet id that is only meaningful on the connection the
message came in on; after a reconnect the broker resends unacked messages,
so acks from an older connection are dropped rather than sent.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import SecretStr

from agent.events import Event
from hq.ingest import Rejected, decode
from hq.profile import Profile
from hq.store import AgentGaps, Store, StoreError, open_store
from hq.views import loyalty_profile, visitor_profile

log = logging.getLogger(__name__)

EVENTS_FILTER = "santi/v1/+/+/events/#"
MAX_BACKOFF_S = 10.0


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int


_STOP = object()


@dataclass(frozen=True)
class Stats:
    """Counters since start; ``stored`` + ``duplicates`` + ``suppressed`` + ``dead_letters`` = committed."""

    received: int
    stored: int
    duplicates: int
    suppressed: int
    dead_letters: int
    batches: int
    store_errors: int
    queued: int
    connected: bool


class HqSubscriber:
    """One HQ consumer in a shared-subscription group; run several for more throughput.

    ``on_event`` is called from the writer thread with each event stored for
    the first time, after its batch is committed.
    """

    def __init__(
        self,
        broker_host: str = "127.0.0.1",
        port: int = 1883,
        db_url: str | Store = "sqlite:///santi-hq.sqlite",
        group: str = "hq",
        *,
        on_event: Callable[[Event], None] | None = None,
        client_id: str | None = None,
        session_expiry_s: int = 86_400,
        username: str | None = None,
        password: SecretStr | None = None,
        tls_ca: Path | None = None,
        keepalive_s: int = 30,
        batch_size: int = 500,
        flush_ms: float = 50.0,
        queue_size: int = 20_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if "/" in group or "+" in group or "#" in group or not group:
            raise ValueError(f"bad shared-subscription group {group!r}: no '/', '+' or '#'")
        self.broker_host = broker_host
        self.port = port
        self.group = group
        self.topic = f"$share/{group}/{EVENTS_FILTER}"
        self._owns_store = not isinstance(db_url, Store)
        self._db_url = str(db_url)
        self._store: Store | None = db_url if isinstance(db_url, Store) else None
        self._on_event = on_event
        self._batch_size = batch_size
        self._flush_s = flush_ms / 1000.0
        self._clock = clock
        self._queue: queue.Queue[_Message | object] = queue.Queue(maxsize=queue_size)
        self._generation = 0
        self._ack_lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("received", "stored", "duplicates", "suppressed", "dead_letters", "batches", "store_errors"), 0)
        self._count_lock = threading.Lock()
        self._connected = threading.Event()
        self._writer: threading.Thread | None = None
        persistent = client_id is not None
        self.client_id = client_id or f"santi-hq-{group}-{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                   protocol=mqtt.MQTTv5, manual_ack=True)
        if username is not None:
            self._client.username_pw_set(username, password.get_secret_value() if password else None)
        if tls_ca is not None:
            self._client.tls_set(ca_certs=str(tls_ca))
        self._client.reconnect_delay_set(1, 30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        self._connect_props.SessionExpiryInterval = session_expiry_s if persistent else 0
        # Enough unacked messages in flight to fill the next batch while one commits.
        self._connect_props.ReceiveMaximum = min(65_535, max(2 * batch_size, 100))
        self._persistent = persistent
        self._keepalive_s = keepalive_s

    # --- lifecycle -----------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the subscriber is not started")
        return self._store

    def start(self) -> None:
        """Open the store, start the writer, connect (and keep reconnecting) in the background."""
        if self._store is None:
            self._store = open_store(self._db_url)
        self._writer = threading.Thread(target=self._write_loop, name="hq-writer", daemon=True)
        self._writer.start()
        self._client.connect_async(self.broker_host, self.port, self._keepalive_s,
                                   clean_start=not self._persistent, properties=self._connect_props)
        self._client.loop_start()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """True once subscribed on the broker."""
        return self._connected.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Disconnect, commit everything received, close the store if we opened it."""
        self._client.disconnect()
        self._client.loop_stop()
        with self._ack_lock:
            self._generation += 1
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join(timeout)
            self._writer = None
        if self._owns_store and self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> HqSubscriber:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- queries -------------------------------------------------------
    def stats(self) -> Stats:
        with self._count_lock:
            counts = dict(self._counts)
        return Stats(**counts, queued=self._queue.qsize(), connected=self._connected.is_set())

    def profile(self, loyalty_id: str, now: float | None = None) -> Profile:
        return loyalty_profile(self.store, loyalty_id, self._clock() if now is None else now)

    def visitor(self, subject: str, now: float | None = None) -> Profile:
        return visitor_profile(self.store, subject, self._clock() if now is None else now)

    def gaps(self) -> list[AgentGaps]:
        return self.store.gaps()

    # --- paho callbacks (network thread) -------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            log.warning("broker refused connection", extra={"reason": str(reason), "broker": self.broker_host})
            return
        with self._ack_lock:
            self._generation += 1
        client.subscribe(self.topic, options=SubscribeOptions(qos=1))
        self._connected.set()
        log.info("subscribed", extra={"topic": self.topic, "session_present": flags.session_present})

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, properties: Properties | None) -> None:
        self._connected.clear()
        with self._ack_lock:
            self._generation += 1
        if reason.is_failure:
            log.warning("disconnected from broker; reconnecting", extra={"reason": str(reason)})

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Blocks when the writer is behind: TCP back-pressure instead of unbounded memory.
        self._queue.put(_Message(message.topic, bytes(message.payload), message.mid, message.qos, self._generation))

    # --- writer thread -------------------------------------------------
    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Message] = []
            item = self._queue.get()
            if item is _STOP:
                break
            batch.append(item)  # type: ignore[arg-type]
            deadline = time.monotonic() + self._flush_s
            while len(batch) < self._batch_size:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            self._commit(batch, final=stopping)

    def _commit(self, batch: list[_Message], *, final: bool) -> None:
        items = [decode(m.topic, m.payload) for m in batch]
        backoff = 0.5
        while True:
            try:
                result = self.store.ingest(items, self._clock(), want_events=self._on_event is not None)
                break
            except StoreError as exc:
                self._count("store_errors", 1)
                log.warning("batch not stored; retrying (not acked)", extra={"error": str(exc), "size": len(batch)})
                time.sleep(backoff)
                backoff = min(2 * backoff, MAX_BACKOFF_S)
                if final and backoff >= MAX_BACKOFF_S:
                    log.error("giving up on the last batch at shutdown; the broker will redeliver it",
                              extra={"size": len(batch)})
                    return
        with self._ack_lock:
            for m in batch:
                if m.qos > 0 and m.generation == self._generation:
                    self._client.ack(m.mid, m.qos)
        with self._count_lock:
            self._counts["received"] += len(batch)
            self._counts["stored"] += result.stored
            self._counts["duplicates"] += result.duplicates
            self._counts["suppressed"] += result.suppressed
            self._counts["dead_letters"] += result.dead_letters
            self._counts["batches"] += 1
        if result.dead_letters:
            first = next(i for i in items if isinstance(i, Rejected))
            log.warning("payloads dead-lettered", extra={"count": result.dead_letters, "topic": first.topic,
                                                         "reason": first.reason})
        if self._on_event is not None:
            for event in result.new:
                try:
                    self._on_event(event)
                except Exception:  # a consumer's callback must not stop ingestion
                    log.exception("on_event callback failed", extra={"event_id": str(event.event_id)})

    def _count(self, name: str, n: int) -> None:
        with self._count_lock:
            self._counts[name] += n
