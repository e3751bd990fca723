"""The uplink against a real mosquitto: order, outages, windows, auth, rejections, shutdown."""

from __future__ import annotations

import errno
import json
import os
import queue
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.backoff import BackoffPolicy, describe_connack, describe_exception, describe_lost
from agent.config import BufferConfig, UplinkConfig
from agent.events import Ack, ack_topic, status_topic
from agent.localbroker import Broker, free_port
from agent.outbox import Outbox
from agent.uplink import Uplink
from tests.helpers.hq_acks import ContiguousAcks
from tests.helpers.outbox_writer import AGENT, STORE, make_event

ROOT = Path(__file__).resolve().parent.parent
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


@pytest.fixture
def outbox(sqlite_path: Path) -> Iterator[Outbox]:
    with Outbox.open(sqlite_path, BufferConfig()) as box:
        yield box


def fill(outbox: Outbox, n: int, start: int = 0, seed: int = 3) -> None:
    rng = random.Random(seed + start)
    for offset in range(0, n, 1000):
        outbox.append_many([make_event(start + i, rng) for i in range(offset, min(n, offset + 1000))])


def assert_complete_in_order(received: list[dict[str, object]], n: int, first: int = 1) -> None:
    """All of first..n, first occurrences in seq order; a repeat is always the same event again."""
    by_id: dict[str, dict[str, object]] = {}
    first_seqs: list[int] = []
    for event in received:
        key = str(event["event_id"])
        if key in by_id:
            assert by_id[key] == event, "a duplicate must be the same event, not a new one"
            continue
        by_id[key] = event
        first_seqs.append(int(str(event["seq"])))
    assert first_seqs == list(range(first, n + 1))


def wait_depth(outbox: Outbox, depth: int, timeout: float) -> int:
    """Poll until the outbox holds ``depth`` rows (HQ's acks applied) or the timeout; returns the depth."""
    deadline = time.monotonic() + timeout
    while outbox.depth() != depth and time.monotonic() < deadline:
        time.sleep(0.02)
    return outbox.depth()


def make_uplink(broker_port: int, outbox: Outbox, **config: object) -> Uplink:
    settings = UplinkConfig.model_validate({"host": "127.0.0.1", "port": broker_port, **config})
    return Uplink(settings, outbox, store_id=STORE, agent_id=AGENT, policy=FAST, rng=random.Random(5),
                  connect_timeout_s=3.0)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_delivers_in_order_acks_and_says_online_then_offline(
    broker: Broker, outbox: Outbox, protocol: str
) -> None:
    sub = Subscriber(broker)
    fill(outbox, 1500)
    link = make_uplink(broker.port, outbox, protocol=protocol)
    try:
        link.start()
        assert link.wait_for("online", timeout=5), link.last_error
        assert_complete_in_order(sub.events(1500, timeout=20), 1500)
        fill(outbox, 10, start=1500)  # appended while online: the outbox wakes the uplink
        assert_complete_in_order(sub.events(10, timeout=10), 1510, first=1501)
        assert wait_depth(outbox, 0, timeout=5) == 0
        assert link.stats.acked == 1510
        assert link.last_error is None
    finally:
        assert link.stop(drain_deadline_s=3) == 0
        assert sub.status(b"offline", timeout=5)
        sub.close()
    assert link.state == "stopped"
    late = Subscriber(broker)  # the retained status is what a newcomer sees
    try:
        assert late.status(b"offline", timeout=5)
    finally:
        late.close()


def test_stream_survives_three_broker_restarts(broker: Broker, outbox: Outbox) -> None:
    """10,000 events while the broker is stopped and started three times: all arrive, in order."""
    sub = Subscriber(broker)
    time.sleep(1.2)  # let mosquitto autosave the subscriber's session
    link = make_uplink(broker.port, outbox)
    link.start()
    total = 10_000
    producer = threading.Thread(target=lambda: [
        (fill(outbox, 250, start=i), time.sleep(0.08)) for i in range(0, total, 250)
    ])
    producer.start()
    try:
        for _ in range(3):
            time.sleep(0.6)
            broker.stop()  # SIGTERM: mosquitto saves what it acknowledged
            time.sleep(0.4)
            broker.start()
        producer.join()
        received = sub.events(total, timeout=60)
        assert_complete_in_order(received, total)
        assert link.stats.connections >= 4
        assert wait_depth(outbox, 0, timeout=10) == 0
    finally:
        producer.join()
        link.stop(drain_deadline_s=2)
        sub.close()


def test_broker_sigkilled_while_events_wait_in_the_outbox(broker: Broker, outbox: Outbox) -> None:
    """What was never PUBACKed is never lost, however the broker dies.

    (What mosquitto PUBACKed and had not yet saved dies with a SIGKILL: the
    agent cannot know, HQ sees the seq gap; see agent/outbox.py.)
    """
    sub = Subscriber(broker)
    time.sleep(1.2)
    link = make_uplink(broker.port, outbox)
    link.start()
    try:
        assert link.wait_for("online", timeout=5)
        broker.stop(kill=True)
        deadline = time.monotonic() + 5
        while "connection refused" not in (link.last_error or "") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "connection refused" in (link.last_error or "")
        fill(outbox, 500)
        time.sleep(0.5)
        assert outbox.depth() == 500
        broker.start()
        assert link.wait_for("online", timeout=10), link.last_error
        assert_complete_in_order(sub.events(500, timeout=20), 500)
    finally:
        link.stop(drain_deadline_s=2)
        sub.close()


def test_inflight_window_is_bounded(broker: Broker, outbox: Outbox) -> None:
    sub = Subscriber(broker)
    fill(outbox, 3000)
    link = make_uplink(broker.port, outbox, inflight=5)
    link.start()
    try:
        assert_complete_in_order(sub.events(3000, timeout=30), 3000)
        assert link.stats.max_inflight == 5
    finally:
        link.stop(drain_deadline_s=2)
        sub.close()


def test_refused_connection_backs_off_without_spinning_then_recovers(
    tmp_path: Path, outbox: Outbox
) -> None:
    port = free_port()
    fill(outbox, 100)
    link = make_uplink(port, outbox, ack="broker")  # about the broker connection: no HQ here
    cpu = time.process_time()
    link.start()
    try:
        time.sleep(3.0)
        assert link.state == "offline"
        message = link.last_error or ""
        assert message == (f"cannot reach broker 127.0.0.1:{port}: connection refused — "
                           f"is mosquitto running and listening there?")
        # Delays 0.1-0.2, 0.2-0.4, 0.4-0.8, then 0.5-1.0 s: a handful of attempts, not a storm.
        assert 3 <= link.stats.connect_attempts <= 8
        assert time.process_time() - cpu < 0.5
        later = Broker(tmp_path / "late", port=port)
        later.workdir.mkdir()
        later.start()
        try:
            assert link.wait_for("online", timeout=5)
            assert wait_depth(outbox, 0, timeout=10) == 0
        finally:
            link.stop(drain_deadline_s=1)
            later.stop()
    finally:
        link.stop(drain_deadline_s=0)


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Broker]:
    workdir = tmp_path / "auth"
    workdir.mkdir()
    passwords = workdir / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "santi", "right"], check=True)
    broker = Broker(workdir, extra_config=f"allow_anonymous false\npassword_file {passwords}\n")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop(kill=True)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_bad_password_is_one_line_and_no_reconnect_storm(
    auth_broker: Broker, outbox: Outbox, tmp_path: Path, protocol: str
) -> None:
    secret = tmp_path / "password"
    secret.write_text("wrong\n")
    link = make_uplink(auth_broker.port, outbox, protocol=protocol, username="santi", password_file=secret)
    link.start()
    try:
        assert link.wait_for("auth_failed", timeout=5)
        time.sleep(1.5)
        assert link.stats.connect_attempts == 1
        message = link.last_error or ""
        assert message.startswith(f"broker 127.0.0.1:{auth_broker.port} refused the login: not authorized")
        assert "wrong" not in message
    finally:
        link.stop(drain_deadline_s=0)


def test_password_from_environment_logs_in(
    auth_broker: Broker, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANTI_TEST_MQTT_PASSWORD", "right")
    fill(outbox, 10)
    link = make_uplink(auth_broker.port, outbox, username="santi", password_env="SANTI_TEST_MQTT_PASSWORD",
                       ack="broker")  # about the login: no HQ here
    link.start()
    try:
        assert link.wait_for("online", timeout=5), link.last_error
    finally:
        assert link.stop(drain_deadline_s=3) == 0


def test_rejected_puback_keeps_the_event_and_says_why(tmp_path: Path, outbox: Outbox) -> None:
    workdir = tmp_path / "acl"
    workdir.mkdir()
    acl = workdir / "acl"
    acl.write_text("topic readwrite santi/v1/+/+/status\n")  # events are not allowed
    broker = Broker(workdir, extra_config=f"acl_file {acl}\n")
    broker.start()
    fill(outbox, 30)
    # mosquitto 2.0 drops the connection after a denied PUBLISH; with more
    # than one message in flight its close is a TCP reset that can swallow
    # the PUBACK (the rows are kept either way), so send one at a time here.
    link = make_uplink(broker.port, outbox, inflight=1)
    link.start()
    try:
        assert link.wait_for("offline", timeout=5)
        message = link.last_error or ""
        assert message.startswith("broker rejected event seq 1 on santi/v1/fishmonger/pi-1/events/"
                                  "sector.entered: Not authorized (0x87)")
        assert outbox.depth() == 30
        assert link.stats.rejected >= 1
    finally:
        link.stop(drain_deadline_s=0)
        broker.stop(kill=True)
    assert outbox.depth() == 30


def test_last_will_says_offline_when_the_agent_is_killed(broker: Broker, tmp_path: Path) -> None:
    sub = Subscriber(broker)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.outbox_writer", "uplink", str(tmp_path / "o.sqlite"),
         broker.host, str(broker.port)],
        cwd=ROOT, stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"online\n"
        assert sub.status(b"online", timeout=5)
        os.kill(child.pid, signal.SIGKILL)
        assert sub.status(b"offline", timeout=5)
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
        sub.close()


def test_stop_drains_until_the_deadline_and_keeps_the_rest(broker: Broker, outbox: Outbox) -> None:
    fill(outbox, 20_000)
    link = make_uplink(broker.port, outbox, inflight=1, ack="broker")  # the deadline of stop(), no HQ here
    link.start()
    assert link.wait_for("online", timeout=5)
    started = time.monotonic()
    left = link.stop(drain_deadline_s=0.3)
    assert time.monotonic() - started < 2.0
    assert 0 < left < 20_000
    assert left == outbox.depth() == 20_000 - link.stats.acked
    assert [r.seq for r in outbox.peek(0, 1)] == [link.stats.acked + 1]


def test_stop_while_offline_is_quick(outbox: Outbox) -> None:
    fill(outbox, 5)
    link = make_uplink(free_port(), outbox)
    link.start()
    assert link.wait_for("offline", timeout=5)
    started = time.monotonic()
    assert link.stop(drain_deadline_s=5) == 5
    assert time.monotonic() - started < 1.0


# -- the pure parts: backoff and the wording of failures -------------------------


def test_backoff_grows_with_jitter_is_capped_and_waits_long_on_auth() -> None:
    policy = BackoffPolicy(base_s=1.0, cap_s=60.0, long_s=600.0)
    rng = random.Random(42)
    for attempt in range(12):
        ceiling = min(60.0, 2.0 ** attempt)
        delays = [policy.delay(attempt, "network", rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jitter really spreads the stores
    assert all(300.0 <= policy.delay(0, "auth", rng) <= 600.0 for _ in range(100))
    assert policy.delay(10_000, "network", rng) <= 60.0


def test_failures_read_as_one_line_with_advice() -> None:
    ca = Path("/etc/santi/ca.pem")

    def says(exc: BaseException) -> str:
        failure = describe_exception(exc, "10.0.0.5", 8883, ca, 10.0)
        assert "\n" not in failure.message
        return failure.message

    assert says(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")) == (
        "cannot reach broker 10.0.0.5:8883: connection refused — is mosquitto running and listening there?")
    assert says(socket.gaierror(socket.EAI_NONAME, "Name or service not known")).startswith(
        "cannot resolve broker host '10.0.0.5': Name or service not known")
    assert "no answer within 10 s" in says(TimeoutError("timed out"))
    assert "check the store's network link" in says(OSError(errno.EHOSTUNREACH, "No route to host"))
    wrong_ca = ssl.SSLCertVerificationError(1, "certificate verify failed")
    wrong_ca.verify_code, wrong_ca.verify_message = 20, "unable to get local issuer certificate"
    assert says(wrong_ca) == ("TLS: certificate verify failed for broker 10.0.0.5:8883: wrong CA file "
                              "/etc/santi/ca.pem? (unable to get local issuer certificate)")
    expired = ssl.SSLCertVerificationError(1, "certificate verify failed")
    expired.verify_code, expired.verify_message = 10, "certificate has expired"
    assert "has expired" in says(expired)
    assert describe_exception(expired, "h", 1, ca, 1.0).kind == "tls"
    required = describe_lost("failed to receive on socket: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 "
                             "alert certificate required (_ssl.c:2580)", "h", 8883, accepted=False)
    assert required.kind == "auth"
    assert "requires a client certificate" in required.message
    bad_login = describe_connack(0x86, "Bad user name or password", "h", 1883, "santi")
    assert bad_login.kind == "auth"
    assert "bad username or password for user 'santi'" in bad_login.message
    assert describe_connack(0x84, "Unsupported protocol version", "h", 1883, None).kind == "config"
    assert describe_connack(0x89, "Server busy", "h", 1883, None).kind == "network"
