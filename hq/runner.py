"""The activation runner inside ``santi hq run --rules FILE``: evaluate, record once, deliver.

Inside each batch's ingest transaction (``Store.ingest_then``, before its
acknowledgements) the subscriber hands over the batch's events, redelivered
ones included. For each trigger event of a customer known by loyalty id, the
runner builds the profile at the event's time, asks the pure evaluator
(hq/activation.py), and records each firing with its deliveries as
``pending``: the batch's events and its firings commit together, one commit
per batch. The firing's unique key (rule, triggering event) decides who
delivers: an insert that finds the row already there (a redelivery, a
restart, another HQ of the group) delivers nothing. Delivery starts only
once that commit is done, so a batch rolled back and retried sends nothing
twice; a crash before the commit brings the unacknowledged batch back, to be
evaluated then.

Who the customer is:

* ``identity.linked``, ``visit.started``, ``sector.entered``: the loyalty id
  an identity.linked joined the visit to, while the customer consents to
  profiling (without it the visit is an anonymous visitor's);
* ``card.tapped`` of a known card: the card's loyalty id.

Delivery: ``staff`` and ``mqtt`` are QoS 1 publishes on the subscriber's
connection, marked delivered once the broker acknowledged them; ``webhook``
goes to :class:`hq.webhook.WebhookSender`'s threads. Ingest never waits for
either. Every open delivery is held under a lease that its HQ renews; one
left by a killed HQ is claimed by another once the lease runs out and sent
again (at least once: a staff card's ``card_id`` and a webhook's CloudEvents
``id`` let the receiver drop a second copy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from agent.backoff import BackoffPolicy
from agent.events import (
    CardTapped,
    Event,
    IdentityLinked,
    SectorEntered,
    VisitStarted,
    utc_from_epoch,
)
from agent.messages import StaffCard, staff_topic
from hq.activation import Firing, PastFiring, Trigger, evaluate
from hq.profile import Profile, Visit, VisitKey, build_profile, visits_from_events
from hq.rules import MqttAction, Rules, RulesError, StaffAction, WebhookAction, load_rules
from hq.store import DeliveryRow, FiringRow, HqStoreError, Store
from hq.webhook import Delivery, DeliveryState, WebhookSender, cloudevent

log = logging.getLogger(__name__)

ACTIVATIONS_PREFIX = "santi/v1/hq/activations/"
LEASE_S = 30.0
"""An open delivery whose HQ has not renewed it for this long is taken over by another."""
SWEEP_S = 5.0
MARK_S = 1.0
"""How often what the broker acknowledged is recorded: one transaction for all of it (a commit is a
disk flush taken under the store's lock, which ingest waits for; the lease is what bounds a resend)."""

TriggerEvent = VisitStarted | SectorEntered | IdentityLinked | CardTapped
TRIGGER_CLASSES = (VisitStarted, SectorEntered, IdentityLinked, CardTapped)
"""TriggerEvent as a tuple: ``isinstance`` with a tuple is the faster test, once per event of a batch."""


class Published(Protocol):
    """What paho's ``publish`` returns: ``rc`` (0 once queued) and whether the broker acknowledged it."""

    @property
    def rc(self) -> int: ...

    def is_published(self) -> bool: ...


Publish = Callable[[str, str], Published]


def activation_topic(rule_id: str) -> str:
    """Where the ``mqtt`` action publishes a rule's firings."""
    return f"{ACTIVATIONS_PREFIX}{rule_id}"


def activation_id(rule_id: str, event_id: str) -> str:
    """The same on every HQ for one (rule, triggering event): the firing's identity."""
    return hashlib.sha256(f"{rule_id}\n{event_id}".encode()).hexdigest()[:32]


@dataclass
class _Customer:
    """One customer as a batch's evaluation reads it."""

    profiling: bool
    visits: list[Visit]
    taps: list[datetime]
    history: list[PastFiring]
    profile: Profile | None = None


@dataclass
class RunnerStats:
    fired: int = 0
    duplicates: int = 0
    """Firings another pass or another HQ had recorded already (not delivered again)."""
    delivered: int = 0
    dead: int = 0
    claimed: int = 0
    errors: int = 0
    reloads: int = 0
    reload_errors: int = 0


class ActivationRunner:
    """Evaluates rules for the events of each committed batch and delivers what fires."""

    def __init__(self, store: Store, rules: Rules | Path, publish: Publish, *, instance: str,
                 lease_s: float = LEASE_S, sweep_s: float = SWEEP_S, clock: Callable[[], float] = time.time,
                 webhook_policy: BackoffPolicy | None = None) -> None:
        self._store = store
        self._rules = rules if isinstance(rules, Rules) else load_rules(rules)
        self._publish = publish
        self.instance = instance
        self._lease_s = lease_s
        self._sweep_s = sweep_s
        self._clock = clock
        self._lock = threading.Lock()
        self._published: dict[tuple[str, int], Published] = {}
        self._webhooks: dict[int, tuple[str, int]] = {}
        self._held: set[tuple[str, int]] = set()
        self.stats = RunnerStats()
        self._sender = WebhookSender(self._on_webhook_state, policy=webhook_policy)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sweep_loop, name="hq-activation-sweep", daemon=True)
        self._thread.start()

    @property
    def rules(self) -> Rules:
        return self._rules

    def reload(self) -> bool:
        """Read the rules file again; a bad file is one logged line and the running rules stay."""
        try:
            fresh = load_rules(self._rules.path)
        except RulesError as exc:
            self.stats.reload_errors += 1
            log.error("rules not reloaded; the running rules stay", extra={"error": str(exc)})
            return False
        self._rules = fresh
        self.stats.reloads += 1
        log.info("rules reloaded", extra={"rules": len(fresh.rules), "path": str(fresh.path)})
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sweeping and the webhook threads; what is still open stays pending for the next claim."""
        self._stop.set()
        self._thread.join(timeout)
        self._sender.stop(timeout)
        self._mark_published()

    # --- evaluation (the subscriber's writer thread) --------------------
    def on_batch(self, events: Sequence[Event]) -> Callable[[], None]:
        """Evaluate and record a batch's trigger events; returns the step that delivers, to run once committed.

        Raises HqStoreError when the store fails. What the batch reads of a
        customer (consent, stored events, firings) is read once per batch: the
        batch's consent records were stored before its events, so a withdrawal
        still holds from the next event on. The firings are recorded in one
        transaction (the batch's own when called inside ``Store.ingest_then``).
        """
        rules = self._rules
        wanted = {r.trigger.event for r in rules.rules}
        triggers = [e for e in events if e.type in wanted and isinstance(e, TRIGGER_CLASSES)]
        if not triggers:
            return _nothing
        keys = [_visit_key(e) for e in triggers if not isinstance(e, CardTapped)]
        linked = self._store.linked_visits(keys) if keys else {}
        whose: list[tuple[TriggerEvent, str]] = []
        for event in sorted(triggers, key=lambda e: (e.ts, e.seq)):
            if isinstance(event, CardTapped):
                loyalty_id: str | None = event.card if event.known else None
            else:
                loyalty_id = linked.get(_visit_key(event))
            if loyalty_id is not None:
                whose.append((event, loyalty_id))
        customers = self._customers({lid for _, lid in whose})
        firings: list[Firing] = []
        for event, loyalty_id in whose:
            customer = customers[loyalty_id]
            if customer is None or (not isinstance(event, CardTapped) and not customer.profiling):
                continue
            fired = self._evaluate(rules, event, loyalty_id, customer)
            customer.history.extend(PastFiring(f.rule.id, f.trigger.ts, f.visit) for f in fired)
            firings.extend(fired)
        return self._record(firings)

    def _customers(self, loyalty_ids: set[str]) -> dict[str, _Customer | None]:
        """What the rules read of each customer, in one read; None without consent to personalisation."""
        out: dict[str, _Customer | None] = {}
        for loyalty_id, found in self._store.rule_inputs(loyalty_ids).items():
            if not found.consent["personalisation"]:
                out[loyalty_id] = None
                continue
            history = [PastFiring(rule_id, utc_from_epoch(float(ts)), None if visit is None else (sid, aid, visit))
                       for rule_id, ts, sid, aid, visit in found.history]
            out[loyalty_id] = _Customer(found.consent["profiling"], visits_from_events(found.events),
                                        [tap.ts for tap in found.taps], history)
        return out

    def _evaluate(self, rules: Rules, event: TriggerEvent, loyalty_id: str, customer: _Customer) -> list[Firing]:
        trigger = Trigger(
            event_id=str(event.event_id), type=event.type, store_id=event.store_id, agent_id=event.agent_id,
            visit_id=None if isinstance(event, CardTapped) else event.visit_id,
            sector_id=getattr(event, "sector_id", None), ts=event.ts, loyalty_id=loyalty_id)
        if customer.profile is None:
            # Built once per batch: the facts the rules read are taken at the trigger's time from
            # the visit list (hq/activation.py), so the profile's own "now" does not enter them.
            customer.profile = build_profile("loyalty", loyalty_id, customer.visits, customer.taps, event.ts)
        return evaluate(rules, trigger, customer.profile, customer.history, personalisation=True)

    def _record(self, firings: list[Firing]) -> Callable[[], None]:
        if not firings:
            return _nothing
        now = self._clock()
        fired_at = utc_from_epoch(now)
        rows: list[tuple[FiringRow, list[DeliveryRow]]] = []
        for firing in firings:
            t = firing.trigger
            aid = activation_id(firing.rule.id, t.event_id)
            row = FiringRow(aid, firing.rule.id, t.event_id, t.loyalty_id, t.store_id, t.agent_id, t.visit_id,
                            t.sector_id, t.ts.timestamp(), now, json.dumps(firing.facts, allow_nan=False))
            rows.append((row, [DeliveryRow(no, kind, target, body, self.instance, aid, firing.rule.id)
                               for no, (kind, target, body) in enumerate(self._bodies(firing, aid, fired_at))]))
        new = self._store.record_firings(rows)
        sent = [deliveries for (_, deliveries), fresh in zip(rows, new, strict=True) if fresh]

        def deliver() -> None:
            with self._lock:
                self.stats.fired += len(sent)
                self.stats.duplicates += len(rows) - len(sent)
                self._held.update((d.activation_id, d.action_no) for deliveries in sent for d in deliveries)
            for deliveries in sent:
                for delivery in deliveries:
                    self._send(delivery)

        return deliver

    def _bodies(self, firing: Firing, aid: str, fired_at: datetime) -> list[tuple[str, str, str]]:
        """(kind, target, body) per action: topics and URLs with the exact bytes to send."""
        t = firing.trigger
        data: dict[str, Any] = {}  # the mqtt and webhook actions' body, built for the first that needs it
        out: list[tuple[str, str, str]] = []
        for action in firing.rule.action:
            if not isinstance(action, StaffAction) and not data:
                data = {
                    "activation_id": aid, "rule_id": firing.rule.id, "text": firing.rule.text,
                    "loyalty_id": t.loyalty_id, "store_id": t.store_id, "visit_id": t.visit_id,
                    "sector_id": t.sector_id, "event_id": t.event_id, "event_type": t.type,
                    "event_ts": t.ts.isoformat().replace("+00:00", "Z"), "facts": firing.facts,
                }
            if isinstance(action, StaffAction):
                if t.visit_id is None:
                    out.append(("staff", staff_topic(t.store_id), ""))
                    continue
                card = StaffCard(card_id=aid, store_id=t.store_id, visit_id=t.visit_id, loyalty_id=t.loyalty_id,
                                 sector_id=t.sector_id, rule_id=firing.rule.id, text=firing.rule.text,
                                 facts=firing.facts, ts=fired_at)
                out.append(("staff", staff_topic(t.store_id), card.to_json()))
            elif isinstance(action, MqttAction):
                out.append(("mqtt", activation_topic(firing.rule.id), json.dumps(data, allow_nan=False)))
            elif isinstance(action, WebhookAction):
                out.append(("webhook", action.url, cloudevent(aid, firing.rule.id, fired_at, data).decode()))
        return out

    # --- delivery -------------------------------------------------------
    def _send(self, delivery: DeliveryRow) -> None:
        key = (delivery.activation_id, delivery.action_no)
        if not delivery.body:
            self._finish([(key, "dead", "a staff card needs a visit: the trigger named none", delivery.attempts)])
            return
        if delivery.kind in ("staff", "mqtt"):
            info = self._publish(delivery.target, delivery.body)
            with self._lock:
                self._published[key] = info
            return
        secret = self._secret(delivery)
        if secret is None:
            self._finish([(key, "dead", "the rules file no longer has this webhook", delivery.attempts)])
            return
        job = Delivery(delivery.activation_id, delivery.target, secret, delivery.body.encode(),
                       attempts=delivery.attempts)
        with self._lock:
            self._webhooks[id(job)] = key
        self._sender.submit(job)

    def _secret(self, delivery: DeliveryRow) -> bytes | None:
        rule = next((r for r in self._rules.rules if r.id == delivery.rule_id), None)
        if rule is None or delivery.action_no >= len(rule.action):
            return None
        action = rule.action[delivery.action_no]
        if not isinstance(action, WebhookAction) or action.url != delivery.target:
            return None
        try:
            return action.secret_file.read_bytes().strip()
        except OSError as exc:
            log.error("webhook secret unreadable", extra={"path": str(action.secret_file), "error": exc.strerror})
            return None

    def _on_webhook_state(self, job: Delivery, state: DeliveryState, detail: str | None) -> None:
        with self._lock:
            key = self._webhooks.get(id(job))
            if key is not None and state != "retrying":
                del self._webhooks[id(job)]
        if key is not None:
            self._finish([(key, state, detail, job.attempts)])

    def _finish(self, changes: list[tuple[tuple[str, int], str, str | None, int]]) -> None:
        try:
            self._store.set_deliveries([(aid, no, state, detail, attempts) for (aid, no), state, detail, attempts
                                        in changes], self._clock())
        except HqStoreError as exc:
            self.stats.errors += 1
            log.warning("delivery state not recorded; the delivery is claimed again later",
                        extra={"error": str(exc)})
            return
        with self._lock:
            for key, state, _, _ in changes:
                if state in ("delivered", "dead"):
                    self._held.discard(key)
                    if state == "delivered":
                        self.stats.delivered += 1
                    else:
                        self.stats.dead += 1

    def _mark_published(self) -> None:
        """Record what the broker acknowledged; let go of what paho could not send (not connected).

        A delivery let go of stays open in the database: its lease runs out and
        it is claimed again (by this HQ or another), so a broker outage loses no card.
        """
        with self._lock:
            outcome = {key: _outcome(info) for key, info in self._published.items()}
            for key, state in outcome.items():
                if state is not None:
                    del self._published[key]
                if state == "failed":
                    self._held.discard(key)
        done = [key for key, state in outcome.items() if state == "delivered"]
        if done:
            self._finish([(key, "delivered", None, 1) for key in done])

    def _claim(self) -> None:
        with self._lock:
            held = sorted(self._held)
        taken = self._store.claim_deliveries(self.instance, self._clock(), self._lease_s, held)
        for delivery in taken:
            key = (delivery.activation_id, delivery.action_no)
            with self._lock:
                if key in self._held:
                    continue
                self._held.add(key)
                self.stats.claimed += 1
            log.info("delivery claimed from a stopped HQ", extra={"activation_id": delivery.activation_id,
                                                                  "kind": delivery.kind})
            self._send(delivery)

    def _sweep_loop(self) -> None:
        next_claim = 0.0
        while not self._stop.wait(MARK_S):
            try:
                self._mark_published()
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + self._sweep_s
                    self._claim()
            except HqStoreError as exc:
                self.stats.errors += 1
                log.warning("activation sweep failed; retrying", extra={"error": str(exc)})


def _nothing() -> None:
    """The delivery step of a batch that fired nothing."""


def _outcome(info: Published) -> str | None:
    """``delivered``, ``failed`` (paho gave up on it), or None while the broker has not acknowledged it."""
    if info.rc != 0:
        return "failed"
    try:
        return "delivered" if info.is_published() else None
    except (RuntimeError, ValueError):  # paho raises when the publish failed after being queued
        return "failed"


def _visit_key(event: VisitStarted | SectorEntered | IdentityLinked) -> VisitKey:
    return (event.store_id, event.agent_id, event.visit_id)
