"""Remote-node ingestion speed: ESPresense payloads → Observations → a bounded queue.

Two figures, each the median of several rounds:

* ``ingest``: the path one MQTT message takes inside the agent — JSON parse,
  id pseudonymising (HMAC), ``Observation`` validation, put on a bounded
  asyncio queue — on one core, no broker. Target: ≥ 20,000 observations/s.
* ``broker``: end to end through a real mosquitto on loopback (publisher
  thread → broker → paho thread → asyncio bridge → sink), when mosquitto is
  installed. Publisher, broker and agent share the machine's cores.

Run: ``.venv/bin/python benchmarks/sources_nodes.py [--json] [--messages N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from agent.config import ReceiverConfig  # noqa: E402
from agent.localbroker import Broker, LocalBrokerError, mosquitto_path  # noqa: E402
from agent.mqttclient import BrokerConfig  # noqa: E402
from agent.observations import Observation  # noqa: E402
from agent.privacy import Pseudonymizer  # noqa: E402
from agent.sources.base import Record  # noqa: E402
from agent.sources.node_ingest import NodeIngest, encode_batch, santi_topic  # noqa: E402
from agent.sources.node_subscriber import NodesSource  # noqa: E402

TARGET_OBS_PER_S = 20_000
STORE = "bench-store"
ROOMS = [f"room{index}" for index in range(8)]


def receivers() -> list[ReceiverConfig]:
    return [ReceiverConfig(id=f"node-{room}", kind="node", node_name=room, x=float(i), y=1.0)
            for i, room in enumerate(ROOMS)]


def espresense_messages(count: int) -> list[tuple[str, bytes]]:
    """A mix like a real store: loyalty-app iBeacons, MAC ids, Apple fingerprints, some string numbers."""
    messages = []
    for index in range(count):
        room = ROOMS[index % len(ROOMS)]
        kind = index % 4
        if kind == 0:
            device = f"iBeacon:5a4e7469-0000-4000-8000-00000000f15c-{index % 300}-{index % 7}"
        elif kind == 1:
            device = f"{index % 4096:012x}"
        elif kind == 2:
            device = f"apple:1005:9-{index % 40}"
        else:
            device = f"msft:cdp:{index % 50:04x}"
        rssi: float | str = -50.0 - (index % 45) - 0.25
        if index % 10 == 0:
            rssi = str(rssi)
        payload = {"id": device, "rssi@1m": -59, "rssi": rssi, "raw": 2.1, "distance": 2.4,
                   "var": 0.3, "int": 1024}
        messages.append((f"espresense/devices/{device}/{room}", json.dumps(payload).encode()))
    return messages


def bench_ingest(messages: list[tuple[str, bytes]], rounds: int) -> dict[str, float]:
    rates = []
    for _ in range(rounds):
        ingest = NodeIngest(receivers(), Pseudonymizer(b"b" * 32, STORE, 86_400.0), STORE)
        queue: asyncio.Queue[Observation] = asyncio.Queue(maxsize=len(messages) + 1)
        now = time.time()
        started = time.perf_counter()
        for topic, payload in messages:
            for observation in ingest.ingest(topic, payload, now):
                queue.put_nowait(observation)
        elapsed = time.perf_counter() - started
        assert queue.qsize() == len(messages), ingest.stats.dropped
        rates.append(len(messages) / elapsed)
    return {"obs_per_s": statistics.median(rates), "us_per_obs": 1e6 / statistics.median(rates)}


def bench_santi_batches(count: int, rounds: int, batch: int = 50) -> dict[str, float]:
    pseudo = Pseudonymizer(b"b" * 32, STORE, 86_400.0)
    now = time.time()
    items = [Observation(ts=now, receiver_id="x", emitter_id=pseudo.pseudonym("ble", str(i % 500), now),
                         tech="ble", rssi_dbm=-60.0 - i % 30) for i in range(count)]
    payloads = [encode_batch(items[i:i + batch]) for i in range(0, count, batch)]
    topic = santi_topic(STORE, ROOMS[0])
    rates = []
    for _ in range(rounds):
        ingest = NodeIngest(receivers(), pseudo, STORE)
        started = time.perf_counter()
        total = sum(len(ingest.ingest(topic, payload, now)) for payload in payloads)
        rates.append(total / (time.perf_counter() - started))
    return {"obs_per_s": statistics.median(rates), "batch": batch}


def bench_broker(messages: list[tuple[str, bytes]]) -> dict[str, float] | None:
    try:
        mosquitto_path()
    except LocalBrokerError:
        return None
    with tempfile.TemporaryDirectory() as folder:
        broker = Broker(Path(folder))
        broker.start()
        try:
            return asyncio.run(_through_broker(broker.host, broker.port, messages))
        finally:
            broker.stop(kill=True)


async def _through_broker(host: str, port: int, messages: list[tuple[str, bytes]]) -> dict[str, float]:
    ingest = NodeIngest(receivers(), Pseudonymizer(b"b" * 32, STORE, 86_400.0), STORE)
    source = NodesSource(ingest, BrokerConfig(host, port), queue_size=len(messages) + 1)
    received: list[Record] = []
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(received.append, stop))
    while source.stats.state != "up":
        await asyncio.sleep(0.01)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    publisher.max_queued_messages_set(0)
    publisher.connect(host, port)
    publisher.loop_start()
    started = time.perf_counter()
    for topic, payload in messages:
        publisher.publish(topic, payload)
    published = time.perf_counter() - started
    deadline = time.monotonic() + 120.0
    while len(received) + sum(source.stats.dropped.values()) < len(messages) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    publisher.loop_stop()
    publisher.disconnect()
    stop.set()
    await task
    return {"obs_per_s": len(received) / elapsed, "publish_s": published, "received": len(received), "sent": len(messages),
            "dropped": sum(source.stats.dropped.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-broker", action="store_true", help="skip the end-to-end run")
    args = parser.parse_args()

    messages = espresense_messages(args.messages)
    result: dict[str, object] = {
        "messages": args.messages,
        "target_obs_per_s": TARGET_OBS_PER_S,
        "ingest": bench_ingest(messages, args.rounds),
        "santi_batches": bench_santi_batches(args.messages, args.rounds),
        "broker": None if args.no_broker else bench_broker(messages[: min(len(messages), 20_000)]),
    }
    ingest = result["ingest"]
    assert isinstance(ingest, dict)
    result["meets_target"] = ingest["obs_per_s"] >= TARGET_OBS_PER_S
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"ESPresense ingest (parse → pseudonymise → Observation → bounded queue), {args.messages} messages, "
          f"median of {args.rounds}:")
    print(f"  {ingest['obs_per_s']:,.0f} obs/s ({ingest['us_per_obs']:.1f} µs/obs); target ≥ {TARGET_OBS_PER_S:,} "
          f"→ {ingest['obs_per_s'] / TARGET_OBS_PER_S:.1f}× the target")
    santi = result["santi_batches"]
    assert isinstance(santi, dict)
    print(f"Santi node batches of {santi['batch']}: {santi['obs_per_s']:,.0f} obs/s")
    broker = result["broker"]
    if isinstance(broker, dict):
        print(f"End to end through mosquitto (QoS 0, loopback): {broker['obs_per_s']:,.0f} obs/s "
              f"({broker['received']}/{broker['sent']} received, {broker['dropped']} dropped)")
    else:
        print("End to end through mosquitto: skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
