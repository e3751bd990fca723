"""HQ ingest rate: events/s one subscriber stores into SQLite and into PostgreSQL.

Two figures per database, median of --repeat runs:

- ``store``: validate + commit in batches, no broker (the database's ceiling);
- ``mqtt``: the whole subscriber against a private mosquitto. The events are
  queued on the broker for the subscriber's persistent session first, then
  the subscriber connects and the clock runs until the last one is committed
  and acked, so the publisher does not compete for the CPU.

Target: >= 5,000 events/s per subscriber into each database.

    .venv/bin/python benchmarks/hq.py                 # both databases
    .venv/bin/python benchmarks/hq.py --db sqlite --events 20000 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.events import Event, IdentityLinked, topic_for  # noqa: E402
from agent.localbroker import Broker  # noqa: E402
from agent.messages import PURPOSES  # noqa: E402
from hq.backends import open_store  # noqa: E402
from hq.consent import ConsentRecord  # noqa: E402
from hq.ingest import decode  # noqa: E402
from hq.subscriber import HqSubscriber  # noqa: E402
from hq.synthetic import synthetic_stream  # noqa: E402

TARGET = 5_000.0
PG_SERVER = "postgresql://{user}@127.0.0.1:5432/test"


def pg_url() -> str | None:
    import psycopg  # noqa: PLC0415

    for user in ("postgres", "root"):
        url = PG_SERVER.format(user=user)
        try:
            with psycopg.connect(url, connect_timeout=3):
                return url
        except psycopg.Error:
            continue
    return None


class Database:
    """A fresh SQLite file or PostgreSQL schema per run, removed afterwards."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.server = pg_url() if kind == "postgresql" else None
        if kind == "postgresql" and self.server is None:
            raise SystemExit("no PostgreSQL at 127.0.0.1:5432 (database test, user postgres or root)")
        self.schemas: list[str] = []

    def fresh(self) -> str:
        name = f"hq_bench_{uuid.uuid4().hex[:10]}"
        if self.server is None:
            return f"sqlite:///{self.workdir / name}.sqlite"
        self.schemas.append(name)
        return f"{self.server}?schema={name}"

    def cleanup(self) -> None:
        if self.server is None:
            return
        import psycopg  # noqa: PLC0415

        with psycopg.connect(self.server, autocommit=True) as conn:
            for name in self.schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def grant_consent(url: str, events: list[Event]) -> None:
    """Every loyalty customer in ``events`` consents, so HQ stores every identity link (none is gated out)."""
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    ids = sorted({e.loyalty_id for e in events if isinstance(e, IdentityLinked)})
    store = open_store(url)
    try:
        store.add_consent([ConsentRecord(loyalty_id=lid, purpose=p, granted=True, ts=ts, source="bench")
                           for lid in ids for p in PURPOSES], 0.0)
    finally:
        store.close()


def bench_store(url: str, events: list[Event], batch: int) -> float:
    payloads = [(topic_for(e), e.to_json().encode()) for e in events]
    grant_consent(url, events)
    store = open_store(url)
    try:
        start = time.perf_counter()
        for i in range(0, len(payloads), batch):
            store.ingest([decode(t, p) for t, p in payloads[i:i + batch]], received_at=time.time())
        elapsed = time.perf_counter() - start
        assert store.counts()["events"] == len(events)
    finally:
        store.close()
    return len(events) / elapsed


def queue_events(broker: Broker, events: list[Event]) -> None:
    """Publish ``events`` at QoS 1 and wait for every PUBACK: they wait in a stopped subscriber's session."""
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    pub.max_inflight_messages_set(1000)
    pub.max_queued_messages_set(0)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    infos = [pub.publish(topic_for(e), e.to_json(), qos=1) for e in events]
    for info in infos:
        info.wait_for_publish(120)
    pub.disconnect()
    pub.loop_stop()


def bench_mqtt(url: str, events: list[Event], broker: Broker, batch: int) -> float:
    # A group of its own: a stopped persistent session keeps taking its share of a group.
    client_id = group = f"hq-bench-{uuid.uuid4().hex[:8]}"
    grant_consent(url, events)
    sub = HqSubscriber(broker.host, broker.port, url, group, client_id=client_id, session_expiry_s=600,
                       batch_size=batch)
    sub.start()
    if not sub.wait_connected(10):
        raise SystemExit("subscriber did not connect")
    time.sleep(0.2)
    sub.stop()
    queue_events(broker, events)
    sub = HqSubscriber(broker.host, broker.port, url, group, client_id=client_id, session_expiry_s=600,
                       batch_size=batch)
    start = time.perf_counter()
    sub.start()
    try:
        while sub.stats().received < len(events):
            if time.perf_counter() - start > 300:
                raise SystemExit(f"only {sub.stats().received} of {len(events)} events arrived")
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        assert sub.stats().stored == len(events)
    finally:
        sub.stop()
    return len(events) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    events = synthetic_stream(args.events, start=datetime(2026, 1, 5, tzinfo=UTC))
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="santi-hq-bench-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir)
        broker.start()
        try:
            for kind in kinds:
                db = Database(kind, workdir)
                try:
                    for mode in ("store", "mqtt"):
                        rates = []
                        for run in range(args.repeat):
                            url = db.fresh()
                            rate = (bench_store(url, events, args.batch) if mode == "store"
                                    else bench_mqtt(url, events, broker, args.batch))
                            rates.append(rate)
                            if not args.json:
                                print(f"  {kind:<10} {mode:<5} run {run + 1}: {rate:8.0f} events/s", file=sys.stderr)
                        median = statistics.median(rates)
                        results[f"{kind}.{mode}"] = {
                            "events": args.events, "batch": args.batch, "runs": [round(r) for r in rates],
                            "median_events_per_s": round(median), "target": TARGET,
                            "ratio_to_target": round(median / TARGET, 2),
                        }
                finally:
                    db.cleanup()
        finally:
            broker.stop(kill=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"HQ ingest, {args.events} events, batch {args.batch}, median of {args.repeat}:")
        for name, figures in results.items():
            print(f"  {name:<18} {figures['median_events_per_s']:>8} events/s"
                  f"  ({figures['ratio_to_target']}x the {TARGET:.0f}/s target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
