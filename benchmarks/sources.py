"""Source ingestion speed: observations per second from a source's input path into a bounded queue.

Each case builds realistic raw inputs once, then times the source's own
callback path (parse -> allow-list -> pseudonymise -> Observation -> queue)
over them, on one core, several times; the median is reported, by wall clock and by
CPU time (the latter is steadier on a shared machine). The queue is
the bounded ``asyncio.Queue`` the service hands sources, drained as a
consumer would, so queueing costs are in the figure.

    .venv/bin/python benchmarks/sources.py            # a table
    .venv/bin/python benchmarks/sources.py --json     # one JSON object
    .venv/bin/python benchmarks/sources.py --case ble --repeats 7 --inputs 100000

Add a source by appending a ``Case`` to ``CASES``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from agent.config import BleConfig
from agent.privacy import Pseudonymizer
from agent.sources.base import Record
from agent.sources.ble import BleSource

QUEUE_SIZE = 10_000
DRAIN_EVERY = 1_000


@dataclass(frozen=True)
class Run:
    """One timed pass: inputs fed, observations that reached the queue, wall and CPU seconds."""

    inputs: int
    accepted: int
    seconds: float
    cpu_seconds: float


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    target_obs_per_s: float
    run: Callable[[int, int], Run]  # (inputs, seed) -> one timed pass


def _bounded_queue() -> tuple[asyncio.Queue[Record], Callable[[], None]]:
    q: asyncio.Queue[Record] = asyncio.Queue(maxsize=QUEUE_SIZE)

    def drain() -> None:
        while not q.empty():
            q.get_nowait()

    return q, drain


def _ble_inputs(count: int, seed: int) -> list[tuple[BLEDevice, AdvertisementData]]:
    """A store's air: loyalty-app phones (rotating addresses), Eddystone tags (UID and TLM), strangers."""
    rng = random.Random(seed)
    app = uuid.UUID("fda50693-a4e2-4fb1-afcf-c6eb07647825").bytes

    def address() -> str:
        return ":".join(f"{rng.randrange(256):02X}" for _ in range(6))

    phones = [(address(), rng.randrange(1, 9), rng.randrange(65536)) for _ in range(300)]
    tags = [(address(), bytes(rng.randrange(256) for _ in range(6))) for _ in range(60)]
    strangers = [address() for _ in range(400)]
    inputs = []
    for _ in range(count):
        rssi = rng.randrange(-100, -40)
        draw = rng.random()
        if draw < 0.70:
            addr, major, minor = rng.choice(phones)
            payload = b"\x02\x15" + app + major.to_bytes(2, "big") + minor.to_bytes(2, "big") + b"\xc5"
            adv = AdvertisementData(None, {0x004C: payload}, {}, [], None, rssi, ())
        elif draw < 0.85:
            addr, instance = rng.choice(tags)
            frame = (b"\x00\xee" + bytes.fromhex("edd1ebeac04e5defa017") + instance if rng.random() < 0.5
                     else bytes.fromhex("20000bb8178000000064") + rng.randrange(1 << 32).to_bytes(4, "big"))
            adv = AdvertisementData(None, {}, {"0000feaa-0000-1000-8000-00805f9b34fb": frame}, [], None, rssi, ())
        else:
            addr = rng.choice(strangers)
            adv = AdvertisementData(None, {0x004C: bytes([0x10, 0x05, 0x03, rng.randrange(256), 0x1C])},
                                    {}, [], 12, rssi, ())
        inputs.append((BLEDevice(addr, None, {"path": "/org/bluez/hci0"}), adv))
    return inputs


def run_ble(count: int, seed: int) -> Run:
    config = BleConfig(scanning="passive", ibeacon_uuids=["fda50693-a4e2-4fb1-afcf-c6eb07647825"],
                       eddystone_namespaces=["edd1ebeac04e5defa017"])
    source = BleSource(config, "rx-pi", Pseudonymizer(b"benchmark-secret-0123456789abcdef", "store", 86400.0))
    inputs = _ble_inputs(count, seed)
    q, drain = _bounded_queue()
    callback = source.detection_callback(q.put_nowait)
    start, cpu_start = time.perf_counter(), time.process_time()
    for index, (device, adv) in enumerate(inputs):
        callback(device, adv)
        if index % DRAIN_EVERY == 0:
            drain()
    drain()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if source.stats.dropped["queue_full"]:
        raise RuntimeError("queue overflowed: the benchmark's consumer is too slow, figures would lie")
    return Run(inputs=count, accepted=source.stats.accepted, seconds=seconds, cpu_seconds=cpu_seconds)


CASES: list[Case] = [
    Case("ble", "bleak callback: 70% app iBeacons, 15% Eddystone tags, 15% strangers (dropped)", 20_000, run_ble),
]


def measure(case: Case, inputs: int, repeats: int) -> dict[str, object]:
    case.run(min(inputs, 2_000), 0)  # warm-up: imports, caches
    runs = [case.run(inputs, seed) for seed in range(1, repeats + 1)]
    obs_rates = [r.accepted / r.seconds for r in runs]
    input_rates = [r.inputs / r.seconds for r in runs]
    median_obs = statistics.median(obs_rates)
    return {
        "case": case.name,
        "description": case.description,
        "inputs_per_run": inputs,
        "repeats": repeats,
        "obs_per_s_median": round(median_obs),
        "obs_per_s_runs": [round(rate) for rate in obs_rates],
        "obs_per_cpu_s_median": round(statistics.median(r.accepted / r.cpu_seconds for r in runs)),
        "inputs_per_s_median": round(statistics.median(input_rates)),
        "accepted_fraction": round(statistics.median(r.accepted / r.inputs for r in runs), 4),
        "target_obs_per_s": case.target_obs_per_s,
        "target_ratio": round(median_obs / case.target_obs_per_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--case", action="append", choices=[c.name for c in CASES],
                        help="run only this case (repeatable); default all")
    parser.add_argument("--inputs", type=int, default=50_000, help="raw inputs per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case; the median is reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    chosen = [c for c in CASES if not args.case or c.name in args.case]
    results = [measure(case, args.inputs, args.repeats) for case in chosen]
    if args.json:
        print(json.dumps({"benchmark": "sources", "python": platform.python_version(),
                          "machine": platform.machine(), "results": results}, indent=2))
        return 0
    print(f"{'case':<8} {'obs/s (median)':>15} {'obs/CPU-s':>10} {'inputs/s':>10} {'accepted':>9} "
          f"{'target':>8} {'ratio':>6}")
    for r in results:
        print(f"{r['case']:<8} {r['obs_per_s_median']:>15,} {r['obs_per_cpu_s_median']:>10,} "
              f"{r['inputs_per_s_median']:>10,} "
              f"{r['accepted_fraction']:>9.0%} {r['target_obs_per_s']:>8,.0f} {r['target_ratio']:>5}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
