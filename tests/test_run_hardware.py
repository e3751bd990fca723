"""`santi run` on the store's own radios: ESPresense nodes over a real broker become presence events.

The Bluetooth adapter is the fake BlueZ's ``hci0`` on a private D-Bus, so the
test controls its state whatever radios this machine has: powered off, the
BLE source reports itself down (and keeps retrying) without stopping the
agent, while the nodes drive it; powered on, the source comes up.
"""

from __future__ import annotations

import json
import math
import queue
import signal
from pathlib import Path
from typing import Any

from agent.config import load_site
from agent.events import Event
from agent.localbroker import Broker, example_site_for
from tests.helpers.agent import StderrLines, santi_run
from tests.helpers.fake_bluez import FakeBluez
from tests.helpers.mqtt import events_in, publisher, subscribe
from tests.helpers.wait import wait_until

APP_UUID = "5a4e7469-0000-4000-8000-00000000f15c"


def _ble_source(state: Path, want: str) -> dict[str, Any] | None:
    """The BLE source's entry in the agent's status file once its state is ``want``, else None."""
    path = state / "status.json"
    if not path.exists():
        return None
    ble = json.loads(path.read_text(encoding="utf-8"))["sources"].get("ble")
    return ble if ble is not None and ble["state"] == want else None


def test_nodes_drive_the_agent_while_missing_hardware_is_reported(
    broker: Broker, tmp_path: Path, fake_bluez: FakeBluez
) -> None:
    fake_bluez.set_powered("hci0", False)
    site_path = example_site_for(tmp_path, broker.port, nodes_port=broker.port)
    site = load_site(site_path)
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscriber = subscribe(broker, got)
    state = tmp_path / "state"
    proc = santi_run(site_path, "--state-dir", str(state))  # its system bus is the fake BlueZ's
    stderr = StderrLines(proc)
    nodes = publisher(broker)
    shopper = (6.0, 16.0)
    receivers = [r for r in site.receivers if r.kind == "node"]
    published: list[Event] = []

    def at_the_fish_counter() -> bool:
        """One round of node readings of the shopper at the fish counter; True once the agent says 'fish'."""
        for rx in receivers:
            d = math.dist((rx.x, rx.y, rx.z), (*shopper, 1.2))
            rssi = -59.0 - 20.0 * math.log10(d)
            nodes.publish(f"espresense/devices/iBeacon:{APP_UUID}-7-42/{rx.node_name}",
                          json.dumps({"id": f"iBeacon:{APP_UUID}-7-42", "rssi": round(rssi, 1),
                                      "rssi@1m": -59, "distance": round(d, 2)}))
        return any(getattr(e, "sector_id", None) == "fish" for e in events_in(got, published)
                   if e.type == "sector.entered")

    try:
        down = wait_until(lambda: _ble_source(state, "down"), 20, "the BLE source reported down")
        assert "powered off" in down["last_error"]
        fake_bluez.set_powered("hci0", True)  # the source's retries pick it up while the nodes go on
        wait_until(at_the_fish_counter, 30, "the nodes' shopper entering 'fish'", interval=0.5)
        wait_until(lambda: _ble_source(state, "up"), 30, "the BLE source up once the adapter is on")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        nodes.loop_stop()
        nodes.disconnect()
        subscriber.loop_stop()
        subscriber.disconnect()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = stderr.text()
    assert proc.returncode == 0, log[-1500:]
    assert APP_UUID not in log
