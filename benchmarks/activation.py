"""Activation: store -> HQ -> store latency, and HQ's ingest rate with 50 rules on and off.

Two figures, each through a private mosquitto and the real subscriber and runner:

- ``latency``: from publishing a ``sector.entered`` of a consenting, linked
  customer to that customer's staff card arriving at a store-side subscriber,
  while other traffic flows at --traffic events/s. Target: p99 <= 250 ms.
- ``rate``: events/s one HQ stores, with 50 rules evaluated (``on``) and
  without a runner (``off``), over a database that already holds
  --customers customers (consent and a linked past visit each). The events
  are queued on the broker for the subscriber's persistent session first,
  then the clock runs until the last one is committed, as in benchmarks/hq.py.
  On and off alternate within one run on copies of one database. Targets:
  on >= 5,000 events/s, and on >= 0.7x off.

    .venv/bin/python benchmarks/activation.py                   # SQLite, both figures
    .venv/bin/python benchmarks/activation.py --db postgresql --json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.events import Event, IdentityLinked, SectorEntered, VisitStarted, topic_for, uuid7  # noqa: E402
from agent.localbroker import Broker  # noqa: E402
from agent.messages import StaffCard  # noqa: E402
from benchmarks.hq import Database, queue_events  # noqa: E402 - fresh SQLite files or PostgreSQL schemas
from hq.backends import open_store  # noqa: E402
from hq.consent import ConsentRecord  # noqa: E402
from hq.ingest import decode  # noqa: E402
from hq.rules import parse_rules  # noqa: E402
from hq.runner import ActivationRunner, activation_id  # noqa: E402
from hq.store import Store  # noqa: E402
from hq.subscriber import HqSubscriber  # noqa: E402
from hq.synthetic import synthetic_stream  # noqa: E402

P99_TARGET_MS = 250.0
RATE_TARGET = 5_000.0
RATIO_TARGET = 0.7
HISTORY = datetime(2026, 1, 5, tzinfo=UTC)
NOW = datetime(2026, 2, 2, tzinfo=UTC)
FIRST_ID = 100_000
"""Loyalty ids L100000...: the ones hq.synthetic gives its card holders, so its stream hits the stored customers."""

LATENCY_RULE = """
timezone = "UTC"
[[rule]]
id = "greet"
text = "Greet the customer"
[rule.trigger]
event = "sector.entered"
[rule.limits]
once_per_visit = false
[[rule.action]]
kind = "staff"
"""


def fifty_rules(daily_cap: int) -> str:
    """50 rules over every trigger and condition kind; ``daily_cap`` firings per customer and day at most."""
    triggers = ["sector.entered", "identity.linked", "card.tapped", "visit.started"]
    conditions = ["visits_in_days = {{ days = 30, min = {k} }}", "days_since_previous_visit = {{ min = {k} }}",
                  "first_visit = false", "card_taps = {{ min = {k} }}", "average_visit_s = {{ min = {s} }}"]
    parts = ['timezone = "Europe/Madrid"', f"max_per_customer_per_day = {daily_cap}"]
    for n in range(50):
        condition = conditions[n % len(conditions)].format(k=n % 4, s=60 * (n % 5))
        parts.append(f'[[rule]]\nid = "r{n}"\ntext = "Rule {n}"\nfacts = ["visits_in_days", "dwell_share"]\n'
                     f'[rule.trigger]\nevent = "{triggers[n % len(triggers)]}"\n[rule.when]\n{condition}\n'
                     f"[rule.limits]\nonce_per_visit = true\ncooldown_days = {n % 3}\n"
                     f'[[rule.action]]\nkind = "{"staff" if n % 2 else "mqtt"}"')
    return "\n".join(parts)


def populate(store: Store, customers: int) -> None:
    """Consent for every customer and one linked past visit each: the profiles HQ holds."""
    rng = random.Random(5)
    ts = HISTORY - timedelta(days=20)
    records = [ConsentRecord(loyalty_id=f"L{FIRST_ID + c}", purpose=p, granted=True, ts=ts, source="bench")
               for c in range(customers) for p in ("profiling", "personalisation")]
    for i in range(0, len(records), 20_000):
        store.add_consent(records[i:i + 20_000], 0.0)
    seq = 0
    batch: list[Event] = []
    for c in range(customers):
        at = ts + timedelta(seconds=c)
        base = {"store_id": "store-1", "agent_id": "agent-hist", "subject": f"h{c}", "visit_id": f"h{c}"}
        for model, extra in ((VisitStarted, {"tech": "ble"}),
                             (IdentityLinked, {"loyalty_id": f"L{FIRST_ID + c}", "method": "card_tap",
                                               "confidence": 0.9})):
            seq += 1
            batch.append(model.model_validate({**base, **extra, "seq": seq, "ts": at,
                                               "event_id": uuid7(int(at.timestamp() * 1000), rng.randbytes(10))}))
        if len(batch) >= 2_000:
            store.ingest([decode(topic_for(e), e.to_json().encode()) for e in batch], time.time(), want_events=False)
            batch = []
    if batch:
        store.ingest([decode(topic_for(e), e.to_json().encode()) for e in batch], time.time(), want_events=False)


def drain_rate(broker: Broker, url: str, events: list[Event], rules_text: str | None, workdir: Path,
               batch: int) -> tuple[float, int]:
    """(events/s, firings) for one HQ draining ``events`` from its persistent session."""
    client_id = group = f"act-bench-{uuid.uuid4().hex[:8]}"
    store = open_store(url)
    holder: list[HqSubscriber] = []
    runner = None
    if rules_text is not None:
        path = workdir / "rules.toml"
        runner = ActivationRunner(store, parse_rules(rules_text, path),
                                  lambda topic, body: holder[0].publish(topic, body),  # noqa: PLW0108
                                  instance=client_id)

    def make() -> HqSubscriber:
        return HqSubscriber(broker.host, broker.port, store, group, client_id=client_id, session_expiry_s=600,
                            batch_size=batch, on_batch=None if runner is None else runner.on_batch)

    first = make()
    first.start()
    if not first.wait_connected(10):
        raise SystemExit("subscriber did not connect")
    first.stop()
    queue_events(broker, events)
    sub = make()
    holder.append(sub)
    start = time.perf_counter()
    sub.start()
    try:
        while sub.stats().received < len(events):
            if time.perf_counter() - start > 600:
                raise SystemExit(f"only {sub.stats().received} of {len(events)} events arrived")
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
    finally:
        sub.stop()
        if runner is not None:
            runner.stop()
        store.close()
    return len(events) / elapsed, 0 if runner is None else runner.stats.fired


def bench_rate(broker: Broker, db: Database, args: argparse.Namespace, workdir: Path, log: Callable[[str], None]
               ) -> dict[str, object]:
    base = db.fresh()
    store = open_store(base)
    started = time.perf_counter()
    populate(store, args.customers)
    store.close()
    log(f"  populated {args.customers} customers in {time.perf_counter() - started:.0f} s")
    events = synthetic_stream(args.events, shoppers=args.customers, card_holders=0.5, start=HISTORY)
    rules = fifty_rules(args.daily_cap)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    fired: list[int] = []
    for run in range(args.repeat):
        for mode in ("on", "off"):
            url = copy_database(db, base, workdir)
            rate, count = drain_rate(broker, url, events, rules if mode == "on" else None, workdir, args.batch)
            rates[mode].append(rate)
            if mode == "on":
                fired.append(count)
            log(f"  rate run {run + 1} activation {mode:<3}: {rate:8.0f} events/s" + (
                f", {count} firings" if mode == "on" else ""))
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    ratios = [a / b for a, b in zip(rates["on"], rates["off"], strict=True)]
    return {"customers": args.customers, "events": args.events, "rules": 50, "batch": args.batch,
            "daily_cap": args.daily_cap,
            "on_runs": [round(r) for r in rates["on"]], "off_runs": [round(r) for r in rates["off"]],
            "firings": fired, "median_on_events_per_s": round(on), "median_off_events_per_s": round(off),
            "same_run_ratios": [round(r, 2) for r in ratios], "median_ratio": round(statistics.median(ratios), 2),
            "rate_target": RATE_TARGET, "ratio_target": RATIO_TARGET}


def copy_database(db: Database, base: str, workdir: Path) -> str:
    """A copy of the populated database (SQLite: the file; PostgreSQL: the schema's tables, analysed)."""
    if db.server is None:
        source = Path(base[len("sqlite:///"):])
        target = workdir / f"copy-{uuid.uuid4().hex[:8]}.sqlite"
        shutil.copyfile(source, target)
        return f"sqlite:///{target}"
    import psycopg  # noqa: PLC0415

    url = db.fresh()
    open_store(url).close()
    source_schema = base.rsplit("schema=", 1)[1]
    target_schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(db.server, autocommit=True) as conn:
        for table in ("meta", "events", "agent_epochs", "finished_seqs", "consent"):
            conn.execute(f'DELETE FROM "{target_schema}"."{table}"')
            conn.execute(f'INSERT INTO "{target_schema}"."{table}" SELECT * FROM "{source_schema}"."{table}"')
            # Statistics, as autovacuum gathers within a minute of a bulk load on a running HQ: without
            # them the planner guesses a tenth of the table for an IN list and scans it.
            conn.execute(f'ANALYZE "{target_schema}"."{table}"')
    return url


def bench_latency(broker: Broker, db: Database, args: argparse.Namespace, workdir: Path,
                  log: Callable[[str], None]) -> dict[str, object]:
    url = db.fresh()
    store = open_store(url)
    customers = 200
    store.add_consent([ConsentRecord(loyalty_id=f"C{c}", purpose=p, granted=True, ts=HISTORY, source="bench")
                       for c in range(customers) for p in ("profiling", "personalisation")], 0.0)
    holder: list[HqSubscriber] = []
    runner = ActivationRunner(store, parse_rules(LATENCY_RULE, workdir / "latency.toml"),
                              lambda topic, body: holder[0].publish(topic, body),  # noqa: PLW0108
                              instance="latency")
    sub = HqSubscriber(broker.host, broker.port, store, f"lat-{uuid.uuid4().hex[:6]}", on_batch=runner.on_batch)
    holder.append(sub)
    sub.start()
    arrived: dict[str, float] = {}
    listener = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)

    def on_card(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        arrived.setdefault(StaffCard.model_validate_json(message.payload).card_id, time.perf_counter())

    listener.on_message = on_card
    listener.connect(broker.host, broker.port)
    listener.subscribe("santi/v1/lat/hq/staff", qos=1)
    listener.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    pub.max_inflight_messages_set(1000)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    stop = threading.Event()
    try:
        if not sub.wait_connected(10):
            raise SystemExit("subscriber did not connect")
        seq = 0
        rng = random.Random(9)

        def event(model: type[Event], **fields: object) -> Event:
            nonlocal seq
            seq += 1
            now = datetime.now(UTC)
            return model.model_validate({"store_id": "lat", "agent_id": "a1", "seq": seq, "ts": now,
                                         "event_id": uuid7(int(now.timestamp() * 1000), rng.randbytes(10)),
                                         **fields})

        for c in range(customers):
            base = {"subject": f"p{c}", "visit_id": f"v{c}"}
            for e in (event(VisitStarted, **base, tech="ble"),
                      event(IdentityLinked, **base, loyalty_id=f"C{c}", method="card_tap", confidence=0.9)):
                pub.publish(topic_for(e), e.to_json(), qos=1)
        deadline = time.monotonic() + 30
        while sub.stats().stored < 2 * customers and time.monotonic() < deadline:
            time.sleep(0.01)
        traffic = synthetic_stream(int(args.traffic * (args.probes / args.probe_rate + 5)), start=HISTORY)

        def other_traffic() -> None:
            start = time.perf_counter()
            for i, e in enumerate(traffic):
                if stop.is_set():
                    return
                wait = start + i / args.traffic - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                pub.publish(topic_for(e), e.to_json(), qos=1)

        background = threading.Thread(target=other_traffic, daemon=True)
        background.start()
        time.sleep(2.0)  # the traffic is flowing before the first probe
        sent: dict[str, float] = {}
        for n in range(args.probes):
            c = n % customers
            probe = event(SectorEntered, subject=f"p{c}", visit_id=f"v{c}", sector_id="fish", probability=0.9)
            sent[activation_id("greet", str(probe.event_id))] = time.perf_counter()
            pub.publish(topic_for(probe), probe.to_json(), qos=1)
            time.sleep(1.0 / args.probe_rate)
        deadline = time.monotonic() + 10
        while len(arrived.keys() & sent.keys()) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        background.join(5)
    finally:
        pub.disconnect()
        pub.loop_stop()
        listener.disconnect()
        listener.loop_stop()
        sub.stop()
        runner.stop()
        store.close()
    latencies = sorted((arrived[k] - t) * 1000 for k, t in sent.items() if k in arrived)
    lost = len(sent) - len(latencies)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("inf")
    log(f"  latency: {len(latencies)} cards, median {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms,"
        f" {lost} missing")
    return {"probes": args.probes, "cards": len(latencies), "missing": lost, "traffic_events_per_s": args.traffic,
            "median_ms": round(statistics.median(latencies), 1), "p99_ms": round(p99, 1),
            "max_ms": round(latencies[-1], 1), "p99_target_ms": P99_TARGET_MS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--only", choices=["latency", "rate"], default=None)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--daily-cap", type=int, default=5,
                        help="The rules file's max_per_customer_per_day: how many firings a visit may bring.")
    parser.add_argument("--traffic", type=float, default=1_000.0, help="Other events/s during the latency probes.")
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--probe-rate", type=float, default=20.0, help="Probes per second.")
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = parser.parse_args()

    def log(line: str) -> None:
        if not args.json:
            print(line, file=sys.stderr)

    results: dict[str, object] = {"db": args.db}
    with tempfile.TemporaryDirectory(prefix="santi-activation-bench-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir)
        broker.start()
        db = Database(args.db, workdir)
        try:
            if args.only in (None, "latency"):
                results["latency"] = bench_latency(broker, db, args, workdir, log)
            if args.only in (None, "rate"):
                results["rate"] = bench_rate(broker, db, args, workdir, log)
        finally:
            db.cleanup()
            broker.stop(kill=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    if "latency" in results:
        lat = results["latency"]
        assert isinstance(lat, dict)
        print(f"store -> HQ -> store, {lat['traffic_events_per_s']:.0f} events/s of other traffic: "
              f"median {lat['median_ms']} ms, p99 {lat['p99_ms']} ms (target <= {P99_TARGET_MS:.0f})")
    if "rate" in results:
        rate = results["rate"]
        assert isinstance(rate, dict)
        print(f"HQ ingest ({args.db}), 50 rules, {rate['customers']} customers: on {rate['median_on_events_per_s']}"
              f" events/s, off {rate['median_off_events_per_s']} events/s, same-run ratio {rate['median_ratio']}"
              f" (targets >= {RATE_TARGET:.0f}/s and >= {RATIO_TARGET}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
