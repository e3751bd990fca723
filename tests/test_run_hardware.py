"""`santi run` on the store's own radios: ESPresense nodes over a real broker become presence events.

This machine has no Bluetooth adapter and no NFC reader: those sources must
report themselves down (and keep retrying) without stopping the agent.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from agent.config import load_site
from agent.events import parse_event
from agent.localbroker import Broker, example_site_for
from tests.test_service import _subscribe

SANTI = Path(sys.executable).parent / "santi"
APP_UUID = "5a4e7469-0000-4000-8000-00000000f15c"


def _wait_status(path: Path, check: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            data = json.loads(path.read_text())
            if check in json.dumps(data):
                return data  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"status never showed {check!r}")


def test_nodes_drive_the_agent_while_missing_hardware_is_reported(broker: Broker, tmp_path: Path) -> None:
    extra = f"\n[nodes]\nhost = \"127.0.0.1\"\nport = {broker.port}\n"
    site_path = example_site_for(tmp_path, broker.port, extra=extra)
    site = load_site(site_path)
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscriber = _subscribe(broker, got)
    state = tmp_path / "state"
    proc = subprocess.Popen([str(SANTI), "run", "--config", str(site_path), "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NOTIFY_SOCKET": ""})
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()
    try:
        status = _wait_status(state / "status.json", '"up"', 20)
        sources = status["sources"]
        assert isinstance(sources, dict)
        assert sources["ble"]["state"] == "down"
        assert sources["ble"]["last_error"]
        shopper = (6.0, 16.0)
        nodes = [r for r in site.receivers if r.kind == "node"]
        for _ in range(12):
            for rx in nodes:
                d = math.dist((rx.x, rx.y, rx.z), (*shopper, 1.2))
                rssi = -59.0 - 20.0 * math.log10(d)
                publisher.publish(f"espresense/devices/iBeacon:{APP_UUID}-7-42/{rx.node_name}",
                                  json.dumps({"id": f"iBeacon:{APP_UUID}-7-42", "rssi": round(rssi, 1),
                                              "rssi@1m": -59, "distance": round(d, 2)}))
            time.sleep(0.5)
        deadline = time.monotonic() + 15
        entered: list[str] = []
        while time.monotonic() < deadline and "fish" not in entered:
            try:
                topic, payload = got.get(timeout=1)
            except queue.Empty:
                continue
            if topic.endswith("/sector.entered"):
                entered.append(getattr(parse_event(payload), "sector_id", ""))
        assert "fish" in entered
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr[-1500:]
        assert APP_UUID not in stderr
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        subscriber.loop_stop()
        subscriber.disconnect()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
