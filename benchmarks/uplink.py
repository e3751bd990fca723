"""Outbox and uplink speed: durable appends, drain of a backlog, peak memory while draining.

Every figure is paired with a bare baseline measured in the same run on the
same machine, and the ratio is what to quote (the machine is shared and noisy):

- appends: ``Outbox.append``/``append_many`` against a bare ``executemany``
  into a table of the same shape with the same pragmas (WAL, synchronous=FULL,
  same batch size), both from pre-built rows and from the same Event objects
  (serialised with ``to_json`` in the loop, as any store of events must);
- drain: the uplink emptying an N-event outbox (default 1,000,000) against a
  bare paho loop (``loop_start``, QoS 1, 20 in flight) publishing the same
  topics and payloads to the same broker, a mosquitto started here on a free
  port; each runs in its own process so peak RSS is the drain's own.

Run: ``.venv/bin/python benchmarks/uplink.py [--events N] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from agent.config import BufferConfig, UplinkConfig  # noqa: E402
from agent.events import SectorEntered, topic_for, utc_from_epoch, uuid7  # noqa: E402
from agent.outbox import Outbox  # noqa: E402
from agent.uplink import Uplink  # noqa: E402

BATCH = 1000
BOUNDS = BufferConfig(max_rows=100_000_000, max_bytes=1 << 40)
err = Console(stderr=True)


def make_events(n: int, start: int = 0, seed: int = 1) -> list[SectorEntered]:
    rng = random.Random(seed + start)
    out = []
    for i in range(start, start + n):
        ts = 1_760_000_000.0 + i * 0.25
        out.append(SectorEntered(
            event_id=uuid7(int(ts * 1000), rng.randbytes(10)), store_id="fishmonger", agent_id="pi-1",
            ts=utc_from_epoch(ts), subject=f"{rng.getrandbits(64):016x}", visit_id=f"v{i // 7}",
            sector_id=rng.choice(["fish", "bakery", "tills", "entrance"]), probability=0.875,
        ))
    return out


# -- appends ------------------------------------------------------------------------


def _bare_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, topic TEXT NOT NULL, "
               "payload BLOB NOT NULL, ts REAL NOT NULL, stored_at REAL NOT NULL, size INTEGER NOT NULL)")
    return db


def _bare_insert(db: sqlite3.Connection, rows: list[tuple[object, ...]], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        db.execute("BEGIN")
        db.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?)", rows[i:i + batch])
        db.execute("COMMIT")
    return time.perf_counter() - started


def _bare_from_events(db: sqlite3.Connection, events: list[SectorEntered], batch: int) -> float:
    started = time.perf_counter()
    seq = itertools.count(1_000_000_000)
    for i in range(0, len(events), batch):
        rows = []
        for event in events[i:i + batch]:
            payload = event.to_json().encode()
            topic = topic_for(event)
            rows.append((next(seq), str(event.event_id), topic, payload, event.ts.timestamp(), time.time(),
                         len(payload) + len(topic)))
        db.execute("BEGIN")
        db.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
    return time.perf_counter() - started


def bench_appends(workdir: Path, n_batched: int, n_single: int) -> dict[str, float]:
    events = make_events(n_batched)
    rows = [(i + 1, str(e.event_id), topic_for(e), e.to_json().encode(), e.ts.timestamp(), 0.0, 300)
            for i, e in enumerate(events)]
    results: dict[str, float] = {}

    with Outbox.open(workdir / "single.sqlite", BOUNDS) as outbox:
        started = time.perf_counter()
        for event in events[:n_single]:
            outbox.append(event)
        results["outbox_single_per_s"] = n_single / (time.perf_counter() - started)
    with contextlib.closing(_bare_db(workdir / "bare-single.sqlite")) as db:
        results["bare_single_per_s"] = n_single / _bare_insert(db, rows[:n_single], 1)

    # Alternate the runs so drift on a shared machine hits both sides alike; keep the best of 3.
    ours, bare, bare_events = [], [], []
    for round_no in range(3):
        with Outbox.open(workdir / f"batched-{round_no}.sqlite", BOUNDS) as outbox:
            started = time.perf_counter()
            for i in range(0, n_batched, BATCH):
                outbox.append_many(events[i:i + BATCH])
            ours.append(n_batched / (time.perf_counter() - started))
        with contextlib.closing(_bare_db(workdir / f"bare-{round_no}.sqlite")) as db:
            bare.append(n_batched / _bare_insert(db, rows, BATCH))
        with contextlib.closing(_bare_db(workdir / f"bare-events-{round_no}.sqlite")) as db:
            bare_events.append(n_batched / _bare_from_events(db, events, BATCH))
    results["outbox_batched_per_s"] = max(ours)
    results["bare_rows_batched_per_s"] = max(bare)
    results["bare_events_batched_per_s"] = max(bare_events)
    return results


# -- drain ----------------------------------------------------------------------------


@contextlib.contextmanager
def mosquitto(workdir: Path) -> Iterator[int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n"
                    f"log_dest stderr\nlog_type error\nmax_queued_messages 0\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def fill(path: Path, n: int) -> None:
    with Outbox.open(path, BOUNDS) as outbox, Progress(console=err, transient=True) as progress:
        task = progress.add_task(f"filling an outbox with {n:,} events", total=n)
        for start in range(0, n, 10_000):
            count = min(10_000, n - start)
            for i in range(0, count, BATCH):
                outbox.append_many(make_events(min(BATCH, count - i), start + i))
            progress.advance(task, count)


def drain_child(path: Path, port: int) -> dict[str, float]:
    with Outbox.open(path, BOUNDS, check=False) as outbox:
        events = outbox.depth()
        link = Uplink(UplinkConfig(port=port, inflight=20), outbox, store_id="fishmonger", agent_id="pi-1")
        started = time.perf_counter()
        link.start()
        while outbox.depth() > 0:
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        link.stop(drain_deadline_s=5)
    return {"events": events, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def bare_child(path: Path, port: int, n: int) -> dict[str, float]:
    """paho as documented: loop_start, QoS 1, at most 20 unacknowledged, same topics and payloads."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        sample = db.execute("SELECT topic, payload FROM outbox ORDER BY seq LIMIT 1000").fetchall()
    window = threading.Semaphore(20)
    done = threading.Event()
    acked = itertools.count(1)

    def on_publish(*_: object) -> None:
        window.release()
        if next(acked) == n:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(20)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    for i in range(n):
        window.acquire()
        topic, payload = sample[i % len(sample)]
        client.publish(topic, payload, qos=1)
    done.wait()
    seconds = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return {"events": n, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process image's peak RSS (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(*args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def bench_drain(workdir: Path, n: int) -> dict[str, float]:
    path = workdir / "backlog.sqlite"
    fill(path, n)
    with mosquitto(workdir) as port:
        err.print(f"bare paho loop publishing {n:,} events …")
        bare = _child("--bare-child", str(path), str(port), str(n))
        err.print(f"uplink draining {n:,} events …")
        ours = _child("--drain-child", str(path), str(port))
    return {
        "drain_events": n,
        "uplink_drain_per_s": ours["events"] / ours["seconds"],
        "bare_paho_per_s": bare["events"] / bare["seconds"],
        "uplink_peak_rss_mb": ours["peak_rss_mb"],
        "bare_peak_rss_mb": bare["peak_rss_mb"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="backlog to drain (default 1,000,000)")
    parser.add_argument("--appends", type=int, default=100_000, help="events for the batched append test")
    parser.add_argument("--single", type=int, default=1_000, help="events for the one-at-a-time append test")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--drain-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--bare-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain_child:
        print(json.dumps(drain_child(Path(args.drain_child[0]), int(args.drain_child[1]))))
        return 0
    if args.bare_child:
        path, port, n = args.bare_child
        print(json.dumps(bare_child(Path(path), int(port), int(n))))
        return 0

    with tempfile.TemporaryDirectory(prefix="santi-bench-", dir=os.environ.get("SANTI_BENCH_DIR")) as tmp:
        workdir = Path(tmp)
        err.print(f"appends: {args.appends:,} batched ({BATCH} a batch), {args.single:,} one at a time …")
        figures = bench_appends(workdir, args.appends, args.single)
        figures |= bench_drain(workdir, args.events)
    figures["batched_vs_bare_rows"] = figures["outbox_batched_per_s"] / figures["bare_rows_batched_per_s"]
    figures["batched_vs_bare_events"] = figures["outbox_batched_per_s"] / figures["bare_events_batched_per_s"]
    figures["single_vs_bare"] = figures["outbox_single_per_s"] / figures["bare_single_per_s"]
    figures["drain_vs_bare"] = figures["uplink_drain_per_s"] / figures["bare_paho_per_s"]

    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    table = Table("measure", "santi", "bare baseline", "ratio", "target", title="Outbox and uplink")
    table.add_row("durable appends, one at a time (events/s)", f"{figures['outbox_single_per_s']:,.0f}",
                  f"{figures['bare_single_per_s']:,.0f}", f"{figures['single_vs_bare']:.2f}", "")
    table.add_row("durable appends, batched (events/s) vs rows", f"{figures['outbox_batched_per_s']:,.0f}",
                  f"{figures['bare_rows_batched_per_s']:,.0f}", f"{figures['batched_vs_bare_rows']:.2f}",
                  "≥ 0.50, ≥ 20,000/s")
    table.add_row("durable appends, batched (events/s) vs events", f"{figures['outbox_batched_per_s']:,.0f}",
                  f"{figures['bare_events_batched_per_s']:,.0f}", f"{figures['batched_vs_bare_events']:.2f}",
                  "≥ 0.50")
    table.add_row(f"drain of {figures['drain_events']:,.0f} events (events/s)",
                  f"{figures['uplink_drain_per_s']:,.0f}", f"{figures['bare_paho_per_s']:,.0f}",
                  f"{figures['drain_vs_bare']:.2f}", "≥ 0.80")
    table.add_row("peak RSS while draining (MB)", f"{figures['uplink_peak_rss_mb']:.0f}",
                  f"{figures['bare_peak_rss_mb']:.0f}", "", "< 150")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
