"""The uplink against a real mosquitto: order, outages, windows, auth, rejections, shutdown."""

from __future__ import annotations

import errno
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.backoff import BackoffPolicy, describe_connack, describe_exception, describe_lost
from agent.localbroker import Broker, free_port
from agent.outbox import Outbox
from tests.helpers.outbox_writer import fill
from tests.helpers.uplink import Subscriber, make_uplink
from tests.helpers.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent


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
        wait_until(lambda: outbox.depth() == 0, 5, "0 rows left in the outbox")
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
    sub.saved_by(broker)
    link = make_uplink(broker.port, outbox)
    link.start()
    total = 10_000
    producer = threading.Thread(target=lambda: [
        (fill(outbox, 250, start=i), time.sleep(0.08)) for i in range(0, total, 250)
    ])
    producer.start()
    try:
        for _ in range(3):
            acked = link.stats.hq_acked_rows
            wait_until(lambda acked=acked: link.state == "online" and link.stats.hq_acked_rows > acked, 20,
                       "HQ acknowledging events again since the last restart")
            broker.stop()  # SIGTERM: mosquitto saves what it acknowledged
            wait_until(lambda: link.state != "online", 5, "the uplink noticing the broker gone")
            broker.start()
        producer.join()
        received = sub.events(total, timeout=60)
        assert_complete_in_order(received, total)
        assert link.stats.connections >= 4
        wait_until(lambda: outbox.depth() == 0, 30, "0 rows left in the outbox")
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
    sub.saved_by(broker)
    link = make_uplink(broker.port, outbox)
    link.start()
    try:
        assert link.wait_for("online", timeout=5)
        broker.stop(kill=True)
        wait_until(lambda: "connection refused" in (link.last_error or ""), 5, "the refused connection noticed")
        attempts = link.stats.connect_attempts
        fill(outbox, 500)
        wait_until(lambda: link.stats.connect_attempts > attempts and link.state == "offline", 5,
                   "a connection attempt refused after the events were stored")
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
            wait_until(lambda: outbox.depth() == 0, 10, "0 rows left in the outbox")
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
