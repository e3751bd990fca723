"""Activation webhooks against a real HTTP server on loopback: signed CloudEvents, retries, dead letters."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

from agent.backoff import BackoffPolicy
from hq.webhook import (
    CONTENT_TYPE,
    Delivery,
    DeliveryState,
    WebhookSender,
    cloudevent,
    signature,
    verify,
)
from tests.helpers.http import http_receiver
from tests.helpers.wait import wait_until

SECRET = b"s3cret-shared-with-the-crm"
FAST = BackoffPolicy(base_s=0.02, cap_s=0.1)


class States:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, DeliveryState, str | None]] = []

    def __call__(self, delivery: Delivery, state: DeliveryState, detail: str | None) -> None:
        with self.lock:
            self.seen.append((delivery.activation_id, state, detail))

    def final(self, activation_id: str) -> DeliveryState | None:
        with self.lock:
            mine = [s for a, s, _ in self.seen if a == activation_id and s != "retrying"]
        return mine[-1] if mine else None


def _body(activation_id: str = "act-1") -> bytes:
    return cloudevent(activation_id, "cod-regular", datetime(2026, 11, 2, 10, 0, tzinfo=UTC),
                      {"loyalty_id": "L1", "store_id": "fishmonger-01", "text": "fresh cod", "facts": {"visits_in_days": 4}})


def test_the_body_is_a_cloudevent_and_the_signature_checks() -> None:
    body = _body()
    event = json.loads(body)
    assert event["specversion"] == "1.0"
    assert event["id"] == "act-1"
    assert event["type"] == "dev.santi.activation.fired"
    assert event["time"] == "2026-11-02T10:00:00Z"
    assert event["data"]["facts"] == {"visits_in_days": 4}
    header = signature(SECRET, body, 1_800_000_000)
    assert verify(SECRET, body, header, 1_800_000_100)
    assert not verify(SECRET, body + b" ", header, 1_800_000_100)
    assert not verify(b"other", body, header, 1_800_000_100)
    assert not verify(SECRET, body, header, 1_800_000_000 + 301), "a stale signature is a replay"
    assert not verify(SECRET, body, "garbage", 1_800_000_000)


def test_a_receiver_that_fails_then_recovers_gets_the_event_once_signed() -> None:
    states = States()
    with http_receiver(answers=[503, 500]) as crm:
        sender = WebhookSender(states, policy=FAST)
        try:
            body = _body()
            assert sender.submit(Delivery("act-1", crm.url, SECRET, body, max_attempts=5))
            wait_until(lambda: states.final("act-1"), what="delivery")
        finally:
            sender.stop()
        assert states.final("act-1") == "delivered"
        assert [s for _, s, _ in states.seen] == ["retrying", "retrying", "delivered"]
        assert len(crm.received) == 3
        last = crm.received[-1]
        assert last.body == body
        assert last.headers["Content-Type"] == CONTENT_TYPE
        assert verify(SECRET, body, last.headers["Santi-Signature"], time.time())


def test_a_receiver_that_never_recovers_is_dead_lettered_after_the_bound() -> None:
    states = States()
    with http_receiver(answers=[500] * 10) as crm:
        sender = WebhookSender(states, policy=FAST)
        try:
            sender.submit(Delivery("act-2", crm.url, SECRET, _body("act-2"), max_attempts=3))
            wait_until(lambda: states.final("act-2"), what="dead letter")
        finally:
            sender.stop()
        assert states.final("act-2") == "dead"
        assert len(crm.received) == 3
        assert states.seen[-1][2] == "HTTP 500 Internal Server Error"


def test_a_refusal_is_not_retried() -> None:
    states = States()
    with http_receiver(answers=[400]) as crm:
        sender = WebhookSender(states, policy=FAST)
        try:
            sender.submit(Delivery("act-3", crm.url, SECRET, _body("act-3"), max_attempts=5))
            wait_until(lambda: states.final("act-3"), what="refusal")
        finally:
            sender.stop()
        assert states.final("act-3") == "dead"
        assert len(crm.received) == 1


def test_nothing_listening_is_retried_then_dead_lettered() -> None:
    states = States()
    with http_receiver() as crm:
        url = crm.url
    sender = WebhookSender(states, policy=FAST)
    try:
        sender.submit(Delivery("act-4", url, SECRET, _body("act-4"), max_attempts=2, timeout_s=1.0))
        wait_until(lambda: states.final("act-4"), what="dead letter")
    finally:
        sender.stop()
    assert states.final("act-4") == "dead"
    assert "ConnectionRefusedError" in str(states.seen[-1][2])


def test_submit_never_blocks_and_a_full_backlog_is_a_counted_dead_letter() -> None:
    states = States()
    with http_receiver() as crm:
        sender = WebhookSender(states, workers=1, policy=FAST, max_backlog=3)
        sender.stop()  # no worker takes anything: the backlog only fills
        started = time.monotonic()
        accepted = [sender.submit(Delivery(f"a{i}", crm.url, SECRET, b"{}")) for i in range(5)]
        assert time.monotonic() - started < 1.0
    assert accepted == [True, True, True, False, False]
    assert [states.final(f"a{i}") for i in range(5)] == [None, None, None, "dead", "dead"]
