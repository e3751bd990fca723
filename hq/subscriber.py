"""The HQ subscriber: MQTT 5 shared subscription → bounded queue → one writer thread.

paho's network thread only enqueues; the writer validates, commits a batch
(every ``batch_size`` messages or ``flush_ms``) and only then sends the
PUBACKs (``manual_ack=True``), so a crash at any instant loses nothing: an
unacked message is redelivered and the store ignores what it already has.

A PUBACK names a packet id that is only meaningful on the connection the
message came in on; after a reconnect the broker resends unacked messages,
so acks from an older connection are dropped rather than sent.

A PUBACK proves only that the broker had the message. What lets an agent
delete its copy is HQ's own acknowledgement: after each committed batch,
per agent, the highest contiguous seq of its epoch that HQ has finished with
(stored, or dead-lettered), published retained with QoS 1 on
``santi/v1/<store>/<agent>/ack``. The subscription is made again on every
connect: mosquitto 2.0.11 does not restore a persistent session's shared
subscription after it restarts.

Consent: every HQ also subscribes (not shared: retained messages are not
sent to shared subscriptions) to ``santi/v1/hq/consent/+``, where a CIAM
publishes one retained :class:`agent.messages.ConsentUpdate` per customer.
Records are stored before the events of the same batch; one received twice
is stored once. A payload that is not a valid update for the loyalty id its
topic names is dead-lettered with the reason; an empty one (a retained
message cleared) is counted and dropped: it withdraws nothing.

``on_batch`` (the activation runner) sees the accepted events of every
batch, redelivered ones included, inside the batch's ingest transaction
(what it records commits with the events) and before the batch is
acknowledged: a crash before the commit brings the batch back. The step it
returns (the deliveries) runs once the commit is done.

Nothing a payload contains stops the writer: the store dead-letters what it
cannot hold. A writer that dies anyway (a bug) marks the subscriber unhealthy
(``Stats.failure``), and ``santi hq run`` exits non-zero with the reason.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from agent.config import TlsConfig
from agent.errors import EXIT_BAD_INPUT, EXIT_FAILURE, SantiError
from agent.events import Ack, Event, ack_topic
from agent.messages import CONSENT_PREFIX, ConsentUpdate
from agent.mqttclient import BrokerConfig, new_client
from hq.backends import open_store
from hq.consent import ConsentRecord, records_of
from hq.ingest import Accepted, Rejected, _rejected, decode
from hq.profile import Profile
from hq.store import AgentGaps, HqStoreError, IngestResult, Store
from hq.views import loyalty_profile, visitor_profile

log = logging.getLogger(__name__)

EVENTS_FILTER = "santi/v1/+/+/events/#"
CONSENT_FILTER = f"{CONSENT_PREFIX}+"
MAX_CONSENT_BYTES = 4096
"""Largest consent message read: a valid one is well under 300 bytes."""
MAX_BACKOFF_S = 10.0
STOP_BUDGET_S = 4.0
"""stop() returns within this (plus the broker disconnect): systemd's SIGTERM must not wait on a retry."""


class BrokerError(SantiError):
    """The broker cannot be reached or refused us; the message says why, in one line.

    Exit 2 at the command line: the broker URL or credentials given are at fault.
    """

    exit_code = EXIT_BAD_INPUT


class BrokerUnreachable(BrokerError):
    """No broker answered (refused TCP, no such host, no CONNACK, lost and not back): exit 1, a run-time failure."""

    exit_code = EXIT_FAILURE


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int



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
    conflicts: int = 0
    acks: int = 0
    consent_records: int = 0
    """Consent records new to HQ (from the CIAM topic)."""
    consent_rejected: int = 0
    """Consent messages dead-lettered (invalid) or dropped (empty: a retained message cleared)."""
    unlinked: int = 0
    """Links not stored or deleted because the customer does not consent to profiling."""
    activation_errors: int = 0
    failure: str | None = None
    """Why the writer stopped, if it did: nothing more is stored (HQ is unhealthy)."""
    broker_problem: str | None = None
    """While not subscribed: why (the broker's refusal, or how the connection ended)."""

    @property
    def healthy(self) -> bool:
        return self.failure is None


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
        on_batch: Callable[[list[Event]], Callable[[], None]] | None = None,
        consent: bool = True,
        client_id: str | None = None,
        session_expiry_s: int = 86_400,
        username: str | None = None,
        password_file: Path | None = None,
        password_env: str | None = None,
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
        self._on_batch = on_batch
        self._consent = consent
        self._batch_size = batch_size
        self._flush_s = flush_ms / 1000.0
        self._clock = clock
        self._queue: queue.Queue[_Message] = queue.Queue(maxsize=queue_size)
        self._generation = 0
        self._ack_lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("received", "stored", "duplicates", "suppressed", "dead_letters", "batches", "store_errors",
             "conflicts", "acks", "consent_records", "consent_rejected", "unlinked", "activation_errors"), 0)
        self._count_lock = threading.Lock()
        self._connected = threading.Event()
        self._closing = threading.Event()
        """Set first at stop(): the writer stops retrying, the network thread stops waiting for room."""
        self._stopping = threading.Event()
        """Set once the network thread has ended: the writer drains the queue, then exits."""
        self._failure: str | None = None
        self.refused: str | None = None
        """The broker's reason when it refused the last connection attempt."""
        self.lost: str | None = None
        """How the last connection ended, when it did (paho's reason)."""
        self._writer: threading.Thread | None = None
        persistent = client_id is not None
        self.client_id = client_id or f"santi-hq-{group}-{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        # Options named as on `santi hq run`'s command line (section ""), for its error lines.
        login = BrokerConfig(broker_host, port, self.client_id, username, password_file, password_env,
                             None if tls_ca is None else TlsConfig(ca_file=tls_ca), section="")
        self._client = new_client(login, manual_ack=True)
        self._client.reconnect_delay_set(1, 5)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
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
        """Open the store, start the writer, connect, then keep reconnecting in the background.

        Raises BrokerUnreachable when the first connection fails (unreachable
        broker), BrokerError when its TLS handshake fails, HqStoreError when the database cannot be opened.
        """
        if self._store is None:
            self._store = open_store(self._db_url)
        try:
            self._client.connect(self.broker_host, self.port, self._keepalive_s,
                                 clean_start=not self._persistent, properties=self._connect_props)
        except (OSError, ValueError) as exc:
            if self._owns_store:
                self._store.close()
                self._store = None
            # A TLS handshake that fails is the CA or certificate given: exit 2; no answer at all: exit 1.
            error = BrokerError if isinstance(exc, ssl.SSLError) else BrokerUnreachable
            raise error(f"cannot connect to the broker at {self.broker_host}:{self.port}: "
                        f"{_one_line(exc)}") from None
        self._writer = threading.Thread(target=self._write_loop, name="hq-writer", daemon=True)
        self._writer.start()
        self._client.loop_start()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """True once subscribed on the broker."""
        return self._connected.wait(timeout)

    def broker_problem(self) -> str | None:
        """Why we are not subscribed, as far as the broker or the socket said (None: nothing said yet)."""
        if self.refused is not None:
            return f"broker {self.broker_host}:{self.port} refused HQ: {self.refused}"
        if self.lost is not None:
            return f"lost the broker {self.broker_host}:{self.port}: {self.lost}"
        return None

    def stop(self, timeout: float = STOP_BUDGET_S) -> None:
        """Disconnect, commit what was received within ``timeout``, close the store if we opened it.

        What is not committed by then is not acknowledged either: the broker
        (a persistent session) or the agent (no HQ ack) sends it again.
        """
        self._closing.set()
        self._client.disconnect()
        self._client.loop_stop()  # the network thread's last messages are queued if there is room
        self._stopping.set()
        with self._ack_lock:
            self._generation += 1
        if self._writer is not None:
            self._writer.join(timeout)
            if self._writer.is_alive():
                log.warning("writer still busy at shutdown; its batch will be redelivered")
            self._writer = None
        if self._owns_store and self._store is not None:
            self._store.close()  # after a commit in flight: close() takes the store's lock
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
        connected = self._connected.is_set()
        return Stats(**counts, queued=self._queue.qsize(), connected=connected, failure=self._failure,
                     broker_problem=None if connected else self.broker_problem())

    def profile(self, loyalty_id: str, now: float | None = None) -> Profile:
        return loyalty_profile(self.store, loyalty_id, self._clock() if now is None else now)

    def visitor(self, subject: str, now: float | None = None) -> Profile:
        return visitor_profile(self.store, subject, self._clock() if now is None else now)

    def gaps(self) -> list[AgentGaps]:
        return self.store.gaps()

    def publish(self, topic: str, payload: str) -> mqtt.MQTTMessageInfo:
        """QoS 1 on HQ's own connection (activations); paho resends it after a reconnect."""
        return self._client.publish(topic, payload, qos=1)

    # --- paho callbacks (network thread) -------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            log.warning("broker refused connection", extra={"reason": str(reason), "broker": self.broker_host})
            return
        self.refused = None
        self.lost = None
        with self._ack_lock:
            self._generation += 1
        # Every connect, session or not: a restarted mosquitto 2.0.11 forgets shared subscriptions.
        topics = [(self.topic, SubscribeOptions(qos=1))]
        if self._consent:
            topics.append((CONSENT_FILTER, SubscribeOptions(qos=1)))
        client.subscribe(topics)
        log.info("connected; subscribing", extra={"topic": self.topic, "session_present": flags.session_present})

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      properties: Properties | None) -> None:
        if any(r.is_failure for r in reasons):
            self.refused = f"subscription to {self.topic} refused: {reasons[0]}"
            log.error("subscription refused", extra={"topic": self.topic, "reason": str(reasons[0])})
            return
        self._connected.set()
        log.info("subscribed", extra={"topic": self.topic})

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, properties: Properties | None) -> None:
        self._connected.clear()
        with self._ack_lock:
            self._generation += 1
        if reason.is_failure:
            self.lost = str(reason)
            log.warning("disconnected from broker; reconnecting", extra={"reason": str(reason)})

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Blocks when the writer is behind: TCP back-pressure instead of unbounded memory. Never
        # for ever: a message dropped at shutdown or after a writer failure is not acked, so it comes back.
        item = _Message(message.topic, bytes(message.payload), message.mid, message.qos, self._generation)
        while self._failure is None:
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._closing.is_set():
                    return

    # --- writer thread -------------------------------------------------
    def _write_loop(self) -> None:
        try:
            self._batches()
        except Exception as exc:  # reported as the subscriber's failure, not lost in a thread
            self._failure = f"the writer stopped: {type(exc).__name__}: {_one_line(exc)}"
            log.exception("HQ writer failed; nothing more is stored", extra={"error": self._failure})

    def _batches(self) -> None:
        deadline: float | None = None
        while True:
            if self._stopping.is_set() and deadline is None:
                deadline = time.monotonic() + STOP_BUDGET_S * 0.75
            if deadline is not None and (self._queue.empty() or time.monotonic() > deadline):
                return
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            flush_at = time.monotonic() + self._flush_s
            while len(batch) < self._batch_size:
                remaining = flush_at - time.monotonic()
                try:
                    batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)

    def _commit(self, batch: list[_Message]) -> None:
        items: list[Accepted | Rejected] = []
        records: list[ConsentRecord] = []
        cleared = 0
        for m in batch:
            if m.topic.startswith(CONSENT_PREFIX):
                found = parse_consent_message(m.topic, m.payload)
                if found is None:
                    cleared += 1
                elif isinstance(found, Rejected):
                    items.append(found)
                else:
                    records.extend(found)
            else:
                items.append(decode(m.topic, m.payload))
        rejected_consent = cleared + sum(1 for i in items if isinstance(i, Rejected) and i.topic.startswith(CONSENT_PREFIX))
        accepted = [i.event for i in items if isinstance(i, Accepted)]
        backoff = 0.5
        while True:
            try:
                change = self.store.add_consent(records, self._clock()) if records else None
                want_events = self._on_event is not None
                if self._on_batch is None:
                    result, deliver = self.store.ingest(items, self._clock(), want_events=want_events), None
                else:
                    result, deliver = self.store.ingest_then(items, self._clock(),
                                                             lambda: self._run_batch(accepted),
                                                             want_events=want_events)
                break
            except HqStoreError as exc:
                self._count("store_errors", 1)
                log.warning("batch not stored; retrying (not acked)", extra={"error": str(exc), "size": len(batch)})
                if self._closing.wait(backoff):
                    log.error("batch not stored at shutdown; the broker or the agent will send it again",
                              extra={"size": len(batch)})
                    return
                backoff = min(2 * backoff, MAX_BACKOFF_S)
        if deliver is not None:
            deliver()
        with self._ack_lock:
            for m in batch:
                if m.qos > 0 and m.generation == self._generation:
                    self._client.ack(m.mid, m.qos)
        self._acknowledge(result)
        with self._count_lock:
            self._counts["received"] += len(batch)
            self._counts["stored"] += result.stored
            self._counts["duplicates"] += result.duplicates
            self._counts["suppressed"] += result.suppressed
            self._counts["dead_letters"] += result.dead_letters
            self._counts["conflicts"] += result.conflicts
            self._counts["batches"] += 1
            self._counts["consent_rejected"] += rejected_consent
            self._counts["unlinked"] += result.unlinked + (change.unlinked if change is not None else 0)
            self._counts["consent_records"] += change.stored if change is not None else 0
        if result.dead_letters:
            first = next((i for i in items if isinstance(i, Rejected)), None)
            log.warning("payloads dead-lettered", extra={
                "count": result.dead_letters, "topic": None if first is None else first.topic,
                "reason": None if first is None else first.reason})
        if self._on_event is not None:
            for event in result.new:
                try:
                    self._on_event(event)
                except Exception:  # a consumer's callback must not stop ingestion
                    log.exception("on_event callback failed", extra={"event_id": str(event.event_id)})

    def _run_batch(self, events: list[Event]) -> Callable[[], None] | None:
        """The activation runner; a store failure retries the whole batch (nothing is acked meanwhile)."""
        assert self._on_batch is not None
        try:
            return self._on_batch(events)
        except HqStoreError:
            raise
        except Exception:  # a bug in a rule's evaluation must not stop ingestion
            self._count("activation_errors", 1)
            log.exception("activation runner failed on a batch; its events are stored and acknowledged")
            return None

    def _acknowledge(self, result: IngestResult) -> None:
        """Tell each agent what HQ has committed: retained, so an agent that reconnects reads it."""
        now = datetime.fromtimestamp(self._clock(), tz=UTC)
        for (store_id, agent_id, epoch), seq in sorted(result.acks.items()):
            ack = Ack(store_id=store_id, agent_id=agent_id, epoch=epoch, seq=seq, ts=now)
            self._client.publish(ack_topic(store_id, agent_id), ack.to_json(), qos=1, retain=True)
        self._count("acks", len(result.acks))

    def _count(self, name: str, n: int) -> None:
        with self._count_lock:
            self._counts[name] += n


def parse_consent_message(topic: str, payload: bytes) -> list[ConsentRecord] | Rejected | None:
    """The records of one CIAM message, a dead letter with the reason, or None when it is empty."""
    if not payload:
        log.info("consent message cleared; nothing withdrawn", extra={"topic": topic[:200]})
        return None
    if len(payload) > MAX_CONSENT_BYTES:
        return _rejected(topic, payload, f"consent: larger than {MAX_CONSENT_BYTES} bytes")
    try:
        update = ConsentUpdate.model_validate_json(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        return _rejected(topic, payload, f"consent: {where}: {error['msg']}"[:300])
    except Exception as exc:  # noqa: BLE001 - whatever a hostile payload raises is a reason
        return _rejected(topic, payload, f"consent: undecodable payload: {type(exc).__name__}")
    if topic[len(CONSENT_PREFIX):] != update.loyalty_id:
        return _rejected(topic, payload, "consent: the topic names another loyalty id than the payload")
    return records_of(update)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
