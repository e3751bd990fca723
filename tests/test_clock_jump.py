"""Wall-clock jumps through a real ``santi run``: the wall clock is injected (SANTI_TEST_WALL_CLOCK), the machine's is not touched.

Forward from 1970 (a Pi without RTC until NTP answers) and back by an hour
(an operator, a bad NTP server): windows keep coming, the watchdog keeps
being fed, durations come from the monotonic clock, nothing is evicted as
too old, and the jump is logged once.
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.config import BufferConfig
from agent.events import AgentStatus, Event, VisitEnded
from agent.localbroker import Broker, example_site_for
from agent.outbox import OUTBOX_FILE, Outbox
from agent.presence import Located, Presence
from agent.replayclock import TEST_WALL_CLOCK_ENV, SteadyClock
from tests.helpers.agent import SANTI
from tests.helpers.mqtt import events_in, subscribe
from tests.helpers.outbox_writer import FakeClock, events
from tests.helpers.recording import T0, recording
from tests.helpers.wait import wait_until

SPEED = 4.0
JUMP_AFTER_S = 20.0
"""Store seconds into the recording (about 5 s of real time at SPEED) when the wall clock jumps."""
RECORDING_S = 120.0
"""Longer than any visit in ``recording``: a duration beyond it was invented."""


def _run(broker: Broker, tmp_path: Path, wall_clock: str) -> tuple[int, str, list[Event], list[float]]:
    """One replay through ``santi run`` with an injected wall clock; returns code, stderr, events, watchdog pings."""
    site = example_site_for(tmp_path, broker.port)
    obs_path, taps_path = recording(tmp_path)
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscriber = subscribe(broker, got)
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    pings: list[float] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                message = notify.recv(4096)
            except TimeoutError:
                continue
            if b"WATCHDOG=1" in message.split(b"\n"):
                pings.append(time.monotonic())

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000",
           TEST_WALL_CLOCK_ENV: wall_clock}
    env.pop("WATCHDOG_PID", None)
    published: list[Event] = []
    try:
        result = subprocess.run(
            [str(SANTI), "-v", "run", "--config", str(site), "--replay", str(obs_path), "--taps", str(taps_path),
             "--speed", str(SPEED)],
            capture_output=True, text=True, timeout=90, env=env, check=False,
        )
        if result.returncode == 0:  # its last event, the draining status, is the last to reach the subscriber
            wait_until(lambda: any(isinstance(e, AgentStatus) and e.state == "draining"
                                   for e in events_in(got, published)), 10, "the agent's draining status")
    finally:
        done.set()
        listener.join(timeout=5)
        notify.close()
        subscriber.disconnect()
        subscriber.loop_stop()
    return result.returncode, result.stderr, events_in(got, published), pings


def _jumps(stderr: str) -> list[float]:
    return [float(m) for m in re.findall(r'msg="wall clock jumped[^"]*" jump_s=(-?[\d.]+)', stderr)]


def test_forward_jump_from_1970_invents_no_duration_and_evicts_nothing(broker: Broker, tmp_path: Path) -> None:
    before = -(T0 - 86_400.0)  # the wall clock says 2 January 1970 until NTP answers
    code, stderr, published, _ = _run(broker, tmp_path, f"{before},{JUMP_AFTER_S},0")
    assert code == 0, stderr[-3000:]
    jumps = _jumps(stderr)
    assert len(jumps) == 1, "a jump is logged once"
    assert abs(jumps[0] + before) < 5.0
    ended = [e for e in published if isinstance(e, VisitEnded)]
    assert len(ended) == 2
    assert all(0.0 <= e.duration_s <= RECORDING_S for e in ended), [e.duration_s for e in ended]
    assert all(0.0 <= dwell <= RECORDING_S for e in ended for dwell in e.dwell_s.values())
    years = {e.ts.year for e in published}
    assert years == {1970, datetime.fromtimestamp(T0, tz=UTC).year}, "timestamps follow the wall clock"
    assert all(e.ts.year > 1970 for e in ended), "a visit ending after the jump is dated by the corrected clock"
    statuses = [e for e in published if isinstance(e, AgentStatus)]
    assert statuses[-1].state == "draining"
    assert all(s.evicted_total == 0 for s in statuses), "nothing stored before the jump was evicted as too old"
    seqs = sorted(e.seq for e in published)
    assert seqs == list(range(1, len(seqs) + 1))


def test_backward_jump_keeps_windows_events_and_watchdog_going(broker: Broker, tmp_path: Path) -> None:
    code, stderr, published, pings = _run(broker, tmp_path, f"0,{JUMP_AFTER_S},-3600")
    assert code == 0, stderr[-3000:]
    jumps = _jumps(stderr)
    assert len(jumps) == 1
    assert abs(jumps[0] + 3600.0) < 5.0
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 10
    assert max(gaps) < 3.0, f"the watchdog went unfed for {max(gaps):.1f} s"
    ended = [e for e in published if isinstance(e, VisitEnded)]
    assert len(ended) == 2, "the window loop went on after the jump: both visits ended"
    assert all(0.0 <= e.duration_s <= RECORDING_S for e in ended)
    late = [e for e in published if e.ts.timestamp() < T0 - 3000]
    assert late, "events after the jump are dated by the wall clock, an hour back"
    assert [e for e in published if isinstance(e, AgentStatus)][-1].state == "draining"


def test_rows_stamped_by_an_unset_clock_are_not_too_old(tmp_path: Path) -> None:
    """Stored in 1970, read after NTP set the clock: age unknown, kept; a row really 40 days old still goes."""
    clock = FakeClock(86_400.0)
    path = tmp_path / OUTBOX_FILE
    with Outbox.open(path, BufferConfig(max_age_days=14.0), clock) as outbox:
        outbox.append_many(events(5))
    clock.now = T0 - 40 * 86_400.0
    with Outbox.open(path, BufferConfig(max_age_days=14.0), clock) as outbox:
        outbox.append_many(events(3, start=5))
        assert outbox.enforce(T0) == 3
        assert [r.seq for r in outbox.peek(0, 100)] == [1, 2, 3, 4, 5]
        assert outbox.evicted_total == 3


class _Clocks:
    """A wall and a monotonic clock a test moves by hand."""

    def __init__(self) -> None:
        self.wall = T0
        self.mono = 5.0


def test_steady_clock_follows_the_monotonic_clock_and_logs_each_jump_once(caplog: pytest.LogCaptureFixture) -> None:
    clocks = _Clocks()
    steady = SteadyClock(lambda: clocks.wall, lambda: clocks.mono)
    clocks.wall += 10.3  # NTP slewing and a normal second hand: no jump
    clocks.mono += 10.0
    assert steady() == T0 + 10.0
    assert steady.wall_offset() == pytest.approx(0.3)
    clocks.wall -= 3600.0
    for _ in range(3):
        assert steady.wall_offset() == pytest.approx(0.3 - 3600.0)
    clocks.mono += 1.0
    clocks.wall += 1.0
    assert steady() == T0 + 11.0, "steady time never goes back"
    jumps = [r for r in caplog.records if r.getMessage().startswith("wall clock jumped")]
    assert len(jumps) == 1
    assert jumps[0].levelname == "WARNING"
    assert jumps[0].__dict__["jump_s"] == pytest.approx(-3600.0)
    assert steady.jumps == 1


def test_presence_durations_ignore_the_wall_offset_timestamps_follow_it() -> None:
    presence = Presence("s", "a", entrances=["entrance"], visit_silence_s=60.0)
    presence.wall_offset = -(T0 - 86_400.0)  # the wall clock says 2 January 1970
    started = presence.update(T0, [Located("e", "ble", "fish", 0.9)])
    presence.wall_offset = 0.0  # NTP answered
    ended = presence.close_all(T0 + 300.0)
    visit_end = next(e for e in ended if isinstance(e, VisitEnded))
    assert started[0].ts.year == 1970
    assert visit_end.ts.timestamp() == pytest.approx(T0 + 300.0)
    assert visit_end.duration_s == pytest.approx(300.0)
    assert visit_end.dwell_s == {"fish": 300.0}
