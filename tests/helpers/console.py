"""The store console under test: a real agent replaying one shopper, its console on loopback."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import paho.mqtt.publish as publish

from agent.config import load_site
from agent.localbroker import Broker, example_site_for, free_port
from agent.messages import StaffCard, staff_topic
from agent.observations import Observation
from agent.replayclock import ReplayClock
from agent.replayfile import write_records
from agent.service import Service
from agent.sources.replay import ReplaySource
from tests.helpers.wait import wait_until

T0 = 1_763_900_000.0

TECH_TOKEN = "tech-0123456789abcdef"

STAFF_TOKEN = "staff-0123456789abcdef"

SILENCED = "node-fish"
"""The receiver the recording silences after ``SILENCED_AFTER_S``."""

SILENCED_AFTER_S = 20.0

FISH = (5.0, 16.0)
"""Where the shopper stands, in the 'fish' sector of the example store."""

SHOPPER = "f15a0000000000000000c0de"
"""The shopper's phone, pseudonymised as the agent's sources do (24 hex digits)."""

T = TypeVar("T")


def token_file(path: Path, token: str, mode: int = 0o600) -> Path:
    path.write_text(token + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


def console_site(tmp_path: Path, port: int, listen_port: int, *, visit_silence_s: float = 20.0) -> Path:
    """The example store with a console on ``listen_port`` and short silences, so a visit ends quickly."""
    tech = token_file(tmp_path / "technician.token", TECH_TOKEN)
    staff = token_file(tmp_path / "staff.token", STAFF_TOKEN)
    path = example_site_for(tmp_path, port, extra=(
        f'\n[console]\nlisten = "127.0.0.1:{listen_port}"\n'
        f'technician_token_file = "{tech}"\nstaff_token_file = "{staff}"\n'))
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"visit_silence_s = \d+", f"visit_silence_s = {visit_silence_s:g}", text)
    text = re.sub(r"track_silence_s = \d+", "track_silence_s = 10", text)
    path.write_text(text, encoding="utf-8")
    return path


def recording(tmp_path: Path, seconds: float = 150.0) -> Path:
    """One shopper walks in and stands at the fish counter; ``SILENCED`` goes quiet after 20 s.

    Noise-free path loss from every BLE and node receiver, one reading each a second.
    """
    site = load_site(example_site_for(tmp_path, 1))
    rng = np.random.default_rng(5)
    observations: list[Observation] = []
    for step in range(int(seconds)):
        t = T0 + step
        xy = (15.0, 2.0) if step < 6 else FISH
        for rx in site.receivers:
            if rx.kind == "wifi" or (rx.id == SILENCED and step >= SILENCED_AFTER_S):
                continue
            d = float(np.sqrt((rx.x - xy[0]) ** 2 + (rx.y - xy[1]) ** 2 + (rx.z - 1.2) ** 2))
            rssi = rx.rssi_at_1m - 10 * rx.path_loss_exponent * np.log10(d) + rng.normal(0.0, 1.0)
            observations.append(Observation(ts=t, receiver_id=rx.id, emitter_id=SHOPPER, tech="ble",
                                            rssi_dbm=float(rssi)))
    path = tmp_path / "observations.jsonl"
    write_records(path, observations)
    return path


@dataclass
class RunningAgent:
    """A real service (outbox, uplink, console) in its own thread and loop."""

    service: Service
    loop: asyncio.AbstractEventLoop
    port: int

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the agent's loop (where the console's state lives) and return its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except Exception as exc:  # noqa: BLE001 (handed back to the test thread)
                future.set_exception(exc)
        self.loop.call_soon_threadsafe(run)
        return future.result(timeout=10.0)

    def visit_id(self) -> str | None:
        return self.call(lambda: next((v.visit_id for v in self.service.locator.presence.visits.values()), None))

    def add_card(self, visit_id: str, text: str) -> None:
        """HQ's part: a staff card published on the store's staff topic, as the activation runner does."""
        store_id = self.service.site.store.id
        card = StaffCard(card_id="a-1", store_id=store_id, visit_id=visit_id, loyalty_id="L-000777",
                         sector_id="fish", rule_id="fish-lover", text=text, facts={"visits_90d": 7},
                         ts=datetime.now(tz=UTC))
        uplink = self.service.site.uplink
        publish.single(staff_topic(store_id), card.to_json(), qos=1, hostname=uplink.host, port=uplink.port)


@contextmanager
def running_agent(tmp_path: Path, broker: Broker, speed: float = 10.0) -> Iterator[RunningAgent]:
    """The agent replaying ``recording`` at ``speed`` with its console listening; stopped on exit."""
    port = free_port()
    site = load_site(console_site(tmp_path, broker.port, port))
    replay = recording(tmp_path)
    clock = ReplayClock(T0, speed)
    service = Service(site, [ReplaySource(replay, None, speed=speed)], state_dir=tmp_path / "state",
                      clock=clock, time_scale=speed)
    loop = asyncio.new_event_loop()
    code: list[int] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        code.append(loop.run_until_complete(service.run()))
        loop.close()

    thread = threading.Thread(target=main, name="agent", daemon=True)
    clock.start()
    thread.start()
    agent = RunningAgent(service, loop, port)
    wait_until(lambda: service.console is not None and service.console.feed.ticks > 0, 20.0,
               "the console's first window")
    try:
        yield agent
    finally:
        loop.call_soon_threadsafe(service.stop.set)
        thread.join(30.0)
        assert code == [0], f"the agent exited with {code}"
