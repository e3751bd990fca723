"""Activation webhooks: a CloudEvents 1.0 JSON POST, signed, retried with backoff, never blocking ingest.

The CRM or marketing platform gets one HTTP POST per firing, in CloudEvents'
structured JSON mode (``Content-Type: application/cloudevents+json``), with

    Santi-Signature: t=<unix seconds>,sha256=<hex HMAC-SHA256(secret, "<t>.<body>")>

so the receiver can check both that Santi sent it and that it is fresh
(reject a ``t`` more than a few minutes old to stop replays). The event's
``id`` is the activation id: a receiver that sees it twice (a retry after a
lost response) can drop the second.

Delivery runs on a few worker threads with a due-time heap: ``submit`` only
enqueues, so HQ's ingest never waits for a slow CRM. A 2xx is delivered; a
4xx other than 408 and 429 is the receiver refusing the event, dead-lettered
at once; anything else (5xx, timeouts, refused connections) is retried with
the agent's exponential backoff until ``max_attempts``, then dead-lettered.
Every change of state goes to ``on_state``, which the runner records.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from agent.backoff import BackoffPolicy

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/cloudevents+json"
EVENT_TYPE = "dev.santi.activation.fired"
MAX_BACKLOG = 10_000
"""Deliveries waiting at once; beyond it a new one is dead-lettered (counted, logged), never blocking."""

DeliveryState = Literal["delivered", "retrying", "dead"]
OnState = Callable[["Delivery", DeliveryState, str | None], None]


@dataclass
class Delivery:
    """One firing to POST to one URL."""

    activation_id: str
    url: str
    secret: bytes
    body: bytes
    timeout_s: float = 5.0
    max_attempts: int = 8
    attempts: int = field(default=0)


def cloudevent(activation_id: str, rule_id: str, fired_at: datetime, data: dict[str, Any]) -> bytes:
    """The CloudEvents 1.0 structured-mode JSON of one firing."""
    event = {
        "specversion": "1.0",
        "id": activation_id,
        "source": f"urn:santi:hq:rule:{rule_id}",
        "type": EVENT_TYPE,
        "subject": str(data.get("loyalty_id", "")),
        "time": fired_at.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }
    return json.dumps(event, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


def signature(secret: bytes, body: bytes, unix_s: int) -> str:
    """The ``Santi-Signature`` header value for ``body`` sent at ``unix_s``."""
    mac = hmac.new(secret, f"{unix_s}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={unix_s},sha256={mac}"


def verify(secret: bytes, body: bytes, header: str, now_s: float, tolerance_s: float = 300.0) -> bool:
    """What a receiver does: the signature matches and is at most ``tolerance_s`` old."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        unix_s = int(parts["t"])
        given = parts["sha256"]
    except (KeyError, ValueError):
        return False
    expected = signature(secret, body, unix_s).split("sha256=", 1)[1]
    return hmac.compare_digest(expected, given) and abs(now_s - unix_s) <= tolerance_s


class WebhookSender:
    """Worker threads that POST deliveries and retry them; ``submit`` never blocks."""

    def __init__(self, on_state: OnState, *, workers: int = 4, policy: BackoffPolicy | None = None,
                 rng: random.Random | None = None, max_backlog: int = MAX_BACKLOG) -> None:
        self._on_state = on_state
        self._policy = policy or BackoffPolicy(base_s=1.0, cap_s=300.0)
        self._rng = rng or random.Random()
        self._max_backlog = max_backlog
        self._heap: list[tuple[float, int, Delivery]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._in_flight = 0
        self._threads = [threading.Thread(target=self._work, name=f"santi-webhook-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, delivery: Delivery) -> bool:
        """Queue a delivery now; False (and dead-lettered) when the backlog is full."""
        with self._cond:
            if len(self._heap) >= self._max_backlog:
                full = True
            else:
                full = False
                heapq.heappush(self._heap, (time.monotonic(), next(self._order), delivery))
                self._cond.notify()
        if full:
            log.warning("webhook backlog full, dead-lettered", extra={"activation_id": delivery.activation_id})
            self._on_state(delivery, "dead", f"backlog of {self._max_backlog} deliveries full")
            return False
        return True

    def pending(self) -> int:
        """Deliveries waiting or being sent."""
        with self._cond:
            return len(self._heap) + self._in_flight

    def stop(self, timeout: float = 5.0) -> int:
        """Stop the workers; returns how many deliveries were still waiting (they stay 'retrying')."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            return len(self._heap)

    def _next(self) -> Delivery | None:
        with self._cond:
            while not self._stopping:
                if self._heap:
                    due = self._heap[0][0]
                    wait = due - time.monotonic()
                    if wait <= 0:
                        self._in_flight += 1
                        return heapq.heappop(self._heap)[2]
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _work(self) -> None:
        while (delivery := self._next()) is not None:
            try:
                self._attempt(delivery)
            finally:
                with self._cond:
                    self._in_flight -= 1

    def _attempt(self, delivery: Delivery) -> None:
        delivery.attempts += 1
        outcome, detail = _post(delivery)
        if outcome == "delivered":
            self._on_state(delivery, "delivered", None)
            return
        if outcome == "refused" or delivery.attempts >= delivery.max_attempts:
            log.warning("webhook dead-lettered", extra={"activation_id": delivery.activation_id,
                                                        "attempts": delivery.attempts, "error": detail})
            self._on_state(delivery, "dead", detail)
            return
        self._on_state(delivery, "retrying", detail)
        wait = self._policy.delay(delivery.attempts - 1, "network", self._rng)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + wait, next(self._order), delivery))
            self._cond.notify()


def _post(delivery: Delivery) -> tuple[Literal["delivered", "retry", "refused"], str | None]:
    request = urllib.request.Request(  # noqa: S310 (the URL's scheme is checked by the rules file)
        delivery.url,
        data=delivery.body,
        method="POST",
        headers={
            "Content-Type": CONTENT_TYPE,
            "Santi-Signature": signature(delivery.secret, delivery.body, int(time.time())),
            "User-Agent": "santi-hq",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=delivery.timeout_s) as response:  # noqa: S310
            response.read(65536)
            return "delivered", None
    except urllib.error.HTTPError as exc:
        detail = f"HTTP {exc.code} {exc.reason}"
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            return "refused", detail
        return "retry", detail
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return "retry", f"{type(reason).__name__}: {reason}"[:300]
