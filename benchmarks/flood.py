"""A street full of advertisers: the agent's memory before, during and after a flood of distinct iBeacons.

Anyone can advertise the loyalty app's iBeacon UUID with any major and
minor, and an ESPresense node reports each as a new device. The issue's
probe: 200,000 distinct ones over the node topic took ``santi run`` from 84
to 352 MB, kept after they expired, past the unit's ``MemoryMax=256M``.

Set-up, all real parts: a private mosquitto on a free loopback port;
``santi run --config SITE`` as its own process (the example store, its
``[nodes]`` pointed at that broker, ``[tracking] max_emitters`` as given);
a publisher sends ``--emitters`` ESPresense messages, one per distinct
``iBeacon:<app uuid>-<major>-<minor>``, spread over the six nodes, at
``--rate`` messages a second. RSS and VmHWM come from ``/proc/PID/status``:
before (agent up, idle), the peak during the flood, and after the tracks
and visits expired (``track_silence_s`` + ``visit_silence_s`` + a margin).
The agent's own ``status.json`` gives tracks, accepted and dropped by reason.

``per_track_bytes`` is measured in-process with tracemalloc: a ``Locator``
of the example store given 5,000 new emitters heard by three nodes each,
the memory it holds afterwards divided by the tracks.

    .venv/bin/python benchmarks/flood.py                          # 200,000 emitters, a table
    .venv/bin/python benchmarks/flood.py --emitters 50000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from agent.config import load_site  # noqa: E402
from agent.localbroker import Broker, example_site_for  # noqa: E402
from agent.locator import Locator  # noqa: E402
from agent.observations import Reading  # noqa: E402

APP_UUID = "5a4e7469-0000-4000-8000-00000000f15c"
ROOMS = ["entrance", "checkout", "aisle1", "fish", "greens", "centre"]
MEMORY_MAX_MB = 256.0


def rss(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM of a live process, MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line[:5]] = int(line.split()[1]) / 1024.0
    return values["VmRSS"], values["VmHWM"]


def status(state: Path) -> dict[str, Any]:
    try:
        data = json.loads((state / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def nodes_accepted(data: dict[str, Any]) -> int:
    nodes = data.get("sources", {}).get("nodes", {})
    return int(nodes.get("accepted", 0)) + sum(nodes.get("dropped", {}).values())


def per_track_bytes(emitters: int = 5000) -> float:
    """Memory a Locator holds per tracked emitter (tracker, sector filter, presence, maps), tracemalloc."""
    site = load_site(ROOT / "examples" / "fishmonger.toml")
    locator = Locator(site)
    t = 1_763_900_000.0
    readings = [Reading(t, f"node-{room}", f"{i:024x}", "ble", -70.0 - k)
                for i in range(emitters) for k, room in enumerate(ROOMS[:3])]
    locator.window(t, [])
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    for step in range(5):
        locator.window(t + step, readings if step == 0 else readings[: len(readings) // 2])
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (after - before) / max(len(locator.tracker), 1)


def site_file(workdir: Path, port: int, max_emitters: int | None) -> Path:
    path = example_site_for(workdir, port, nodes_port=port)
    text = path.read_text(encoding="utf-8")
    if max_emitters is not None:
        text = re.sub(r"\[tracking\]\n", f"[tracking]\nmax_emitters = {max_emitters}\n", text)
    path.write_text(text, encoding="utf-8")
    return path


def flood(broker: Broker, emitters: int, rate: float) -> float:
    """Publish one ESPresense sighting per distinct app iBeacon; returns the seconds it took."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    start = time.monotonic()
    try:
        for i in range(emitters):
            major, minor = 1 + i // 65536, i % 65536
            topic = f"espresense/devices/iBeacon:{APP_UUID}-{major}-{minor}/{ROOMS[i % len(ROOMS)]}"
            client.publish(topic, b'{"rssi": -72, "rssi@1m": -59}')
            if i % 500 == 499:
                ahead = start + (i + 1) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        client.disconnect()
        client.loop_stop()
    return time.monotonic() - start


def run(emitters: int, rate: float, max_emitters: int | None, settle_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="santi-flood-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir / "broker")
        broker.start()
        state = workdir / "state"
        site_path = site_file(workdir, broker.port, max_emitters)
        site = load_site(site_path)
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("santi")), "run", "--config", str(site_path), "--state-dir", str(state)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "NOTIFY_SOCKET": ""},
        )
        try:
            deadline = time.monotonic() + 60
            while status(state).get("sources", {}).get("nodes", {}).get("state") != "up":
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("santi run did not come up")
                time.sleep(0.5)
            time.sleep(5.0)
            before, _ = rss(proc.pid)
            peak_rss = before
            took = flood(broker, emitters, rate)
            deadline = time.monotonic() + 60
            tracks_max = 0
            while nodes_accepted(status(state)) < emitters and time.monotonic() < deadline:
                tracks_max = max(tracks_max, int(status(state).get("tracks", 0)))
                peak_rss = max(peak_rss, rss(proc.pid)[0])
                time.sleep(0.5)
            during = status(state)
            wait = site.tracking.track_silence_s + site.tracking.visit_silence_s + settle_s
            end = time.monotonic() + wait
            while time.monotonic() < end:
                tracks_max = max(tracks_max, int(status(state).get("tracks", 0)))
                peak_rss = max(peak_rss, rss(proc.pid)[0])
                time.sleep(1.0)
            after, hwm = rss(proc.pid)
            final = status(state)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            broker.stop()
    nodes = during.get("sources", {}).get("nodes", {})
    return {
        "emitters": emitters, "max_emitters": site.tracking.max_emitters, "flood_s": round(took, 1),
        "rss_before_mb": round(before, 1), "rss_peak_mb": round(max(peak_rss, hwm), 1),
        "rss_after_mb": round(after, 1), "memory_max_mb": MEMORY_MAX_MB,
        "tracks_max": tracks_max, "tracks_after": int(final.get("tracks", 0)),
        "visits_after": int(final.get("visits", 0)),
        "nodes_accepted": int(nodes.get("accepted", 0)), "nodes_dropped": nodes.get("dropped", {}),
        "locator_dropped": final.get("sources", {}).get("locator", {}).get("dropped", {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emitters", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=10_000.0, help="messages per second")
    parser.add_argument("--max-emitters", type=int, default=None, help="[tracking] max_emitters (default: the config's)")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds after tracks and visits expire")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = {"per_track_bytes": round(per_track_bytes())}
    figures |= run(args.emitters, args.rate, args.max_emitters, args.settle)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:>18}  {value}")
    return 0 if figures["rss_peak_mb"] < MEMORY_MAX_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
