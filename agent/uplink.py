"""The uplink: publishes the outbox to the store's MQTT broker, in ``seq`` order, losing nothing.

One thread owns everything network: it connects, runs paho's network I/O
itself (``loop_read``/``loop_write``/``loop_misc`` around one ``select`` on
the broker socket and a wake-up socket), publishes rows with QoS 1 through a
bounded window and applies the acknowledgements. paho's callbacks therefore
run on this same thread and only record what happened; nothing is shared
with paho's internals across threads.

End-to-end acknowledgement (``[uplink] ack = "hq"``, the default). A PUBACK
proves only that the broker has the message: a broker restart can drop a
shared subscription, HQ may be away, and the broker's copy is then lost. So
a PUBACK only marks the row as sent; the row is deleted when HQ says it has
committed it. On every connect the uplink subscribes (same client, same TLS
and credentials) to its retained ack topic, ``santi/v1/<store>/<agent>/ack``,
where HQ publishes ``Ack(epoch, seq)``: every seq up to ``seq`` of the
outbox's epoch is stored (or dead-lettered) at HQ, and the outbox deletes
them. A row PUBACKed and still unacknowledged ``ack_timeout_s`` later is
published again, and again, until HQ acknowledges it; HQ drops repeats by
``event_id``. So, from the moment ``append`` returns, an event is lost only
to the outbox's bounds (counted, reported) or to the disk it is on; see
``agent.outbox`` for the precise promise. Anything on the ack topic that is
not a well-formed ``Ack`` for this agent is dropped, counted by reason and
logged once; it never stops the thread. ``ack = "broker"`` restores deletion
at PUBACK (no subscription): the agent warns at start, and ``santi status``
and ``santi doctor`` say so.

Each connection is a fresh paho client with a clean session: the outbox,
not the broker, is the session. After a reconnect the uplink publishes again
from the oldest row the broker has not PUBACKed, so an event whose PUBACK was
lost arrives twice (same ``event_id``, HQ drops it) and never out of order
among first sends. Keeping our own window (default 20, as measured fastest
for paho, and far below paho's 65,535 message ids, which wrap without a
collision check) bounds memory however long the backlog.

Failures are worded once, in ``agent.backoff``; the state says what the
technician sees: ``connecting``, ``online``, ``offline`` (retrying with
backoff) or ``auth_failed`` (waiting long: retrying cannot fix a password).
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.backoff import (
    BackoffPolicy,
    Failure,
    describe_connack,
    describe_exception,
    describe_lost,
    describe_puback,
)
from agent.config import ConfigError, UplinkConfig
from agent.events import Ack, ack_topic, status_topic
from agent.messages import staff_topic
from agent.mqttclient import BrokerConfig, TrackingContext, new_client, tls_context
from agent.outbox import Outbox, OutboxError, Row

log = logging.getLogger(__name__)

UplinkState = Literal["stopped", "connecting", "online", "offline", "auth_failed"]

_PREFETCH = 256
_ACK_BATCH = 256
_TICK_S = 1.0
_ACK_PATIENCE_S = 2.0
"""At stop, how long to wait for HQ's next ack before leaving the rest to the next start."""
_MAX_ACK_BYTES = 4096
"""An ``Ack`` is about 200 bytes; anything far larger on the ack topic is not one and is not parsed."""


@dataclass
class UplinkStats:
    """Counters for ``agent.status`` and the benchmarks."""

    connect_attempts: int = 0
    connections: int = 0
    published: int = 0
    acked: int = 0
    rejected: int = 0
    max_inflight: int = 0
    resent: int = 0
    """Rows published again because HQ had not acknowledged them ``ack_timeout_s`` after their PUBACK."""
    hq_acks: int = 0
    """Well-formed HQ acknowledgements received (a burst is applied as its highest seq per epoch)."""
    hq_acked_rows: int = 0
    acks_dropped: dict[str, int] = field(default_factory=dict)
    """Messages on the ack topic that were not a usable ``Ack``, by reason."""


def parse_ack(payload: bytes, store_id: str, agent_id: str) -> Ack | str:
    """HQ's ``Ack`` for this agent, or the reason the payload is not one (it came off the network: any bytes)."""
    if not payload:
        return "empty"
    if len(payload) > _MAX_ACK_BYTES:
        return "too_large"
    try:
        ack = Ack.model_validate_json(payload)
    except Exception:  # noqa: BLE001 - hostile bytes may raise anything; a counted drop, never a dead thread
        return "invalid"
    if (ack.store_id, ack.agent_id) != (store_id, agent_id):
        return "other_agent"
    return ack


class _Session:
    """What paho's callbacks report during one connection (all on the uplink thread)."""

    def __init__(self) -> None:
        self.connack: tuple[ReasonCode, Properties | None] | None = None
        self.connected = False
        self.lost = False
        self.last_log_error: str | None = None
        self.pubacks: list[tuple[int, ReasonCode]] = []
        self.messages: list[tuple[str, bytes]] = []
        self.suback_failed: str | None = None
        self.tls: TrackingContext | None = None

    def close_leftovers(self) -> None:
        if self.tls is not None:
            self.tls.close_wrapped()

    def on_connect(self, _c: mqtt.Client, _u: Any, _f: mqtt.ConnectFlags, reason: ReasonCode,
                   properties: Properties | None) -> None:
        self.connack = (reason, properties)
        self.connected = not reason.is_failure

    def on_disconnect(self, _c: mqtt.Client, _u: Any, _f: mqtt.DisconnectFlags, _r: ReasonCode,
                      _p: Properties | None) -> None:
        self.connected = False
        self.lost = True

    def on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Properties | None) -> None:
        self.pubacks.append((mid, reason))

    def on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.append((message.topic, bytes(message.payload)))

    def on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode],
                     _p: Properties | None) -> None:
        failed = [str(reason) for reason in reasons if reason.is_failure]
        if failed:
            self.suback_failed = ", ".join(failed)

    def on_log(self, _c: mqtt.Client, _u: Any, level: int, message: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self.last_log_error = message


class Uplink:
    """Publishes an ``Outbox`` to a broker until stopped; see the module docstring."""

    def __init__(self, config: UplinkConfig, outbox: Outbox, *, store_id: str, agent_id: str,
                 policy: BackoffPolicy | None = None, rng: random.Random | None = None,
                 connect_timeout_s: float = 10.0, on_staff: Callable[[bytes], None] | None = None) -> None:
        self._config = config
        self._staff_topic = staff_topic(store_id)
        self._on_staff = on_staff
        """Called on the uplink's thread with each message on the store's staff topic (HQ's staff cards)."""
        self._outbox = outbox
        self._status_topic = status_topic(store_id, agent_id)
        self._ack_topic = ack_topic(store_id, agent_id)
        self._ids = (store_id, agent_id)
        outbox.ack_mode = config.ack
        if config.ack == "broker":
            log.warning('uplink ack = "broker": events leave the outbox at the broker\'s PUBACK, not when HQ has '
                        "stored them; a broker restart or an absent HQ subscriber can lose them for good")
        self._client_id = config.client_id or f"santi-{store_id}-{agent_id}"
        self._policy = policy or BackoffPolicy()
        self._rng = rng or random.Random()
        self._connect_timeout_s = connect_timeout_s
        self._state: UplinkState = "stopped"
        self._state_changed = threading.Condition()
        self.last_error: str | None = None
        """The last failure, one line a technician can act on; None once delivering again."""
        self.stats = UplinkStats()
        self._stopping = threading.Event()
        self._retry = threading.Event()
        self._drain_deadline = 0.0
        self._stop_requested = 0.0
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        outbox.watch(self.wake)

    # -- public ---------------------------------------------------------------

    @property
    def state(self) -> UplinkState:
        return self._state

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("uplink already started")
        self._thread = threading.Thread(target=self._run, name="santi-uplink", daemon=True)
        self._thread.start()

    def stop(self, drain_deadline_s: float = 5.0) -> int:
        """Publish what can be acknowledged within the deadline, then disconnect cleanly.

        Returns how many events stay in the outbox for the next start.
        """
        self._stop_requested = time.monotonic()
        self._drain_deadline = self._stop_requested + drain_deadline_s
        self._outbox.unwatch(self.wake)
        self._stopping.set()
        self._retry.set()
        self.wake()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(drain_deadline_s + self._connect_timeout_s + 5.0)
            if thread.is_alive():
                log.error("uplink thread did not stop in time; abandoning it")
                return self._outbox.depth()
        self._wake_r.close()
        self._wake_w.close()
        self._set_state("stopped")
        return self._outbox.depth()

    def retry_now(self) -> None:
        """Cut a reconnect wait short (a technician's ``santi buffer drain``); no effect while online."""
        self._retry.set()

    def wake(self) -> None:
        """Tell the uplink new rows are stored (called by the outbox after each commit)."""
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def ack_status(self) -> dict[str, Any]:
        """The acknowledgement's figures for the status file (``santi status``)."""
        view = self._outbox.ack_view()
        return {
            "ack_mode": self._config.ack, "epoch": view.epoch, "acked_seq": view.acked_seq,
            "sent_unacked": view.sent_unacked,
            "oldest_unacked_age_s": None if view.oldest_sent_at is None else max(time.time() - view.oldest_sent_at, 0.0),
            "resent": self.stats.resent, "acks_dropped": dict(self.stats.acks_dropped),
            "acks_ignored": dict(self._outbox.acks_ignored),
        }

    def wait_for(self, *states: UplinkState, timeout: float) -> bool:
        """Block until the state is one of ``states``; False on timeout."""
        with self._state_changed:
            return self._state_changed.wait_for(lambda: self._state in states, timeout)

    # -- thread ---------------------------------------------------------------

    def _set_state(self, state: UplinkState) -> None:
        with self._state_changed:
            if state != self._state:
                log.info("uplink state", extra={"state": state})
            self._state = state
            self._state_changed.notify_all()

    def _fail(self, failure: Failure) -> None:
        if failure.message != self.last_error:
            log.warning(failure.message, extra={"kind": failure.kind})
        self.last_error = failure.message
        self._set_state("auth_failed" if failure.kind == "auth" else "offline")

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._set_state("connecting")
            self.stats.connect_attempts += 1
            connections = self.stats.connections
            try:
                failure = self._session()
            except OutboxError as exc:
                failure = Failure("storage", str(exc))
            if failure is None:
                return
            if self.stats.connections > connections:
                failures = 0
            self._fail(failure)
            self._retry.wait(self._policy.delay(failures, failure.kind, self._rng))
            self._retry.clear()
            failures += 1

    def _new_client(self, session: _Session) -> mqtt.Client:
        tls = self._config.tls
        session.tls = None if tls is None else tls_context(tls)
        client = new_client(BrokerConfig.of(self._config, self._client_id, self._config.protocol),
                            context=session.tls)
        client.on_connect = session.on_connect
        client.on_disconnect = session.on_disconnect
        client.on_publish = session.on_publish
        client.on_message = session.on_message
        client.on_subscribe = session.on_subscribe
        client.on_log = session.on_log
        client.connect_timeout = self._connect_timeout_s
        client.max_inflight_messages_set(self._config.inflight + 1)
        client.will_set(self._status_topic, b"offline", qos=1, retain=True)
        return client

    def _describe(self, exc: BaseException) -> Failure:
        ca = None if self._config.tls is None else self._config.tls.ca_file
        return describe_exception(exc, self._config.host, self._config.port, ca, self._connect_timeout_s)

    def _session(self) -> Failure | None:
        """One connection from CONNECT to its end; None when it ended because we stopped."""
        session = _Session()
        try:
            client = self._new_client(session)
        except (ConfigError, OSError, ssl.SSLError) as exc:
            tls = self._config.tls
            what = "TLS files" if tls is not None and not isinstance(exc, ConfigError) else "credentials"
            return Failure("config", f"cannot load uplink {what}: {exc}".replace("\n", " "))
        try:
            if self._config.protocol == "5":
                client.connect(self._config.host, self._config.port, self._config.keepalive_s, clean_start=True)
            else:
                client.connect(self._config.host, self._config.port, self._config.keepalive_s)
        except (OSError, ValueError) as exc:
            session.close_leftovers()
            return self._describe(exc)
        try:
            return self._serve(client, session)
        finally:
            # Still open only after a failure: closing without DISCONNECT makes
            # the broker publish our will, so the status topic says offline.
            sock = client.socket()
            if sock is not None:
                sock.close()

    def _pump(self, client: mqtt.Client, timeout: float) -> None:
        """One round of network I/O, waiting at most ``timeout`` for the socket or a wake-up."""
        sock = client.socket()
        if sock is None:
            return
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        want = [sock] if client.want_write() else []
        readable, writable, _ = select.select([sock, self._wake_r], want, [], 0.0 if pending else timeout)
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
        if sock in readable or pending:
            client.loop_read()
        if sock in writable and client.socket() is not None:
            client.loop_write()
        if client.socket() is not None:
            client.loop_misc()

    def _lost(self, session: _Session) -> Failure:
        tls = self._config.tls
        return describe_lost(session.last_log_error, self._config.host, self._config.port,
                             accepted=session.connack is not None,
                             tls_without_cert=tls is not None and tls.cert_file is None)

    def _serve(self, client: mqtt.Client, session: _Session) -> Failure | None:
        deadline = time.monotonic() + self._connect_timeout_s
        while session.connack is None:
            if session.lost or client.socket() is None:
                return self._lost(session)
            if time.monotonic() > deadline:
                return Failure("network", f"broker {self._config.host}:{self._config.port} accepted TCP "
                                          f"but sent no CONNACK within {self._connect_timeout_s:g} s")
            self._pump(client, 0.2)
        reason, properties = session.connack
        if reason.is_failure:
            return describe_connack(int(reason.value), str(reason), self._config.host, self._config.port,
                                    self._config.username)
        window = self._config.inflight
        receive_max = getattr(properties, "ReceiveMaximum", None)
        if isinstance(receive_max, int) and receive_max > 0:
            window = min(window, receive_max)
        self.stats.connections += 1
        if self._config.ack == "hq":
            # Every connection is a clean session: subscribe again each time. The
            # retained ack arrives at once, so a restart deletes what HQ already has.
            client.subscribe(self._ack_topic, qos=1)
        if self._on_staff is not None:
            # HQ's staff cards for this store, over the same connection (its TLS and credentials).
            client.subscribe(self._staff_topic, qos=1)
        client.publish(self._status_topic, b"online", qos=1, retain=True)
        self.last_error = None
        self._set_state("online")
        return _Publisher(self, client, session, window).run()


class _Publisher:
    """The online part of a session: window, prefetch, acks."""

    def __init__(self, uplink: Uplink, client: mqtt.Client, session: _Session, window: int) -> None:
        self.uplink = uplink
        self.client = client
        self.session = session
        self.window = window
        self.inflight: dict[int, Row] = {}
        self.prefetched: deque[Row] = deque()
        self.cursor = 0
        self.exhausted = False
        self.to_ack: list[int] = []
        self.hq_acks = uplink._config.ack == "hq"
        self.next_resend = 0.0
        self.suback_reported = False
        self.last_progress = 0.0
        """When we last published or HQ last acknowledged (monotonic)."""

    def run(self) -> Failure | None:
        uplink = self.uplink
        try:
            while True:
                failure = self._take_pubacks()
                if failure is not None:
                    return failure
                self._take_acks()
                if self.session.lost or self.client.socket() is None:
                    return uplink._lost(self.session)
                stopping = uplink._stopping.is_set()
                if stopping and time.monotonic() >= uplink._drain_deadline:
                    self._goodbye()
                    return None
                # Fill before judging "all sent": rows stored just before stop() (the
                # final agent.status) are not in the window yet.
                self._fill()
                if stopping and self.exhausted and not self.inflight and not self._awaiting_hq():
                    self._goodbye()
                    return None
                idle = self.exhausted or len(self.inflight) >= self.window
                if self.to_ack and (idle or len(self.to_ack) >= _ACK_BATCH):
                    self._flush_acks()
                timeout = _TICK_S
                if uplink._stopping.is_set():
                    timeout = max(0.0, min(timeout, uplink._drain_deadline - time.monotonic()))
                self._pump_once(timeout if idle else 0.0)
        finally:
            self._flush_acks()

    def _pump_once(self, timeout: float) -> None:
        self.uplink._pump(self.client, timeout)

    def _fill(self) -> None:
        """Publish rows in seq order while the window has room."""
        self.exhausted = False
        outbox = self.uplink._outbox
        while len(self.inflight) < self.window:
            if not self.prefetched:
                # With HQ's acks, rows already PUBACKed wait for HQ (or for ``_resend_due``).
                rows = outbox.peek(self.cursor, _PREFETCH, unsent_only=self.hq_acks)
                if not rows:
                    self.exhausted = True
                    break
                self.prefetched.extend(rows)
                self.cursor = rows[-1].seq
            if not self._publish(self.prefetched.popleft()):
                return
        if self.exhausted and self.hq_acks:
            self._resend_due()

    def _awaiting_hq(self) -> bool:
        """While stopping: is HQ's ack for what was just sent worth waiting for (within the drain deadline)?

        Yes while rows wait for it and HQ acknowledged something (or the last
        publish was) less than ``_ACK_PATIENCE_S`` ago: an HQ that is away
        must not stretch every shutdown to the full deadline. What stays is
        deleted by the retained ack at the next start.
        """
        if not self.hq_acks:
            return False
        self._flush_acks()
        if time.monotonic() - max(self.last_progress, self.uplink._stop_requested) > _ACK_PATIENCE_S:
            return False
        return self.uplink._outbox.ack_view().sent_unacked > 0

    def _publish(self, row: Row) -> bool:
        info = self.client.publish(row.topic, row.payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.session.lost = True
            return False
        self.inflight[info.mid] = row
        self.last_progress = time.monotonic()
        stats = self.uplink.stats
        stats.published += 1
        stats.max_inflight = max(stats.max_inflight, len(self.inflight))
        return True

    def _resend_due(self) -> None:
        """Publish again the lowest rows HQ has not acknowledged ``ack_timeout_s`` after their PUBACK.

        HQ drops repeats by ``event_id``, so a re-send is safe; it is what
        recovers an event the broker acknowledged and then lost (a restart,
        no subscriber at the time). HQ acknowledges the highest *contiguous*
        seq, so the lowest unacknowledged rows are the ones that hold
        everything up: one window of them per round. The next round goes as
        soon as HQ's ack moves (``_take_acks``: it is filling the gap), else
        after another ``ack_timeout_s``: an HQ that is away gets a trickle,
        not the backlog over and over.
        """
        now = time.monotonic()
        room = self.window - len(self.inflight)
        if now < self.next_resend or room <= 0 or self.uplink._stopping.is_set():
            return
        outbox = self.uplink._outbox
        self._flush_acks()  # PUBACKs not yet recorded must not look overdue
        busy = {row.seq for row in self.inflight.values()}
        timeout = self.uplink._config.ack_timeout_s
        due = [row for row in outbox.due(time.time() - timeout, self.window + len(busy)) if row.seq not in busy]
        if not due:
            self.next_resend = now + _TICK_S
            return
        self.next_resend = now + timeout
        for row in due[:room]:
            if not self._publish(row):
                return
            self.uplink.stats.resent += 1

    def _take_acks(self) -> None:
        """Apply what arrived on the ack topic; garbage is counted and logged once per reason."""
        messages, self.session.messages = self.session.messages, []
        uplink = self.uplink
        if self.session.suback_failed is not None and not self.suback_reported:
            self.suback_reported = True
            log.error("the broker refused the subscription to HQ's acknowledgements; events will wait in the "
                      "outbox until it is allowed (check the broker's ACL)",
                      extra={"topic": uplink._ack_topic, "reason": self.session.suback_failed})
        highest: dict[str, int] = {}
        for topic, payload in messages:
            if topic == uplink._staff_topic:
                if uplink._on_staff is not None:
                    uplink._on_staff(payload)
                continue
            ack = parse_ack(payload, *uplink._ids)
            if isinstance(ack, str):
                dropped = uplink.stats.acks_dropped
                if ack not in dropped:
                    log.warning("unusable message on the ack topic dropped",
                                extra={"reason": ack, "bytes": len(payload), "topic": uplink._ack_topic})
                dropped[ack] = dropped.get(ack, 0) + 1
                continue
            uplink.stats.hq_acks += 1
            highest[ack.epoch] = max(highest.get(ack.epoch, 0), ack.seq)
        # Acks are cumulative: of a burst, the highest per epoch says it all (one transaction, not one each).
        for epoch, seq in highest.items():
            try:
                deleted = uplink._outbox.ack(epoch, seq)
            except OutboxError as exc:
                log.warning("cannot apply HQ's acknowledgement; the next one covers it", extra={"error": str(exc)})
                continue
            uplink.stats.hq_acked_rows += deleted
            self.last_progress = time.monotonic()
            if deleted:
                self.next_resend = 0.0  # HQ's contiguous ack moved: the next overdue window may go now

    def _take_pubacks(self) -> Failure | None:
        pubacks, self.session.pubacks = self.session.pubacks, []
        failure = None
        for mid, reason in pubacks:
            row = self.inflight.pop(mid, None)
            if row is None:
                continue
            if reason.is_failure:
                self.uplink.stats.rejected += 1
                failure = failure or describe_puback(int(reason.value), str(reason), row.seq, row.topic)
            else:
                self.to_ack.append(row.seq)
        return failure

    def _flush_acks(self) -> None:
        if not self.to_ack:
            return
        outbox = self.uplink._outbox
        try:
            if self.hq_acks:
                deleted = outbox.mark_sent(self.to_ack, time.time())
            else:
                deleted = outbox.ack_published(self.to_ack)
        except OutboxError as exc:
            log.warning("cannot record the broker's acknowledgements; the events will be sent again",
                        extra={"error": str(exc)})
            return
        self.uplink.stats.acked += len(self.to_ack)
        log.debug("acked", extra={"acked": len(self.to_ack), "rows": deleted})
        self.to_ack = []

    def _goodbye(self) -> None:
        """Say ``offline`` ourselves (a clean DISCONNECT suppresses the will), then disconnect."""
        self._flush_acks()
        info = self.client.publish(self.uplink._status_topic, b"offline", qos=1, retain=True)
        until = time.monotonic() + 1.0
        while not info.is_published() and time.monotonic() < until and self.client.socket() is not None:
            self.uplink._pump(self.client, 0.05)
        self.client.disconnect()
        until = time.monotonic() + 1.0
        while self.client.socket() is not None and time.monotonic() < until:
            self.uplink._pump(self.client, 0.05)
