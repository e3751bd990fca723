"""The agent under load, end to end: ``santi run`` fed by a replay of a crowded store at 1×.

Issue targets, in ``examples/fishmonger.toml``: at 500 concurrent shoppers,
observation to ``sector.entered`` on the broker with p99 under 2 s plus the
configured hysteresis (``tracking.hysteresis_s``) and CPU of ``santi run``
under 25 % of one core; at 1,000 tracked emitters, resident memory under 120 MB.

Set-up, all real parts. The simulator writes what the receivers hear while
N shoppers walk the store, all arriving within the first ``RAMP_S`` seconds
so that N are inside until the first ones leave minutes later; only the
first minutes are simulated (the run is cut off at a whole tick through
``simulate``'s progress callback). A private mosquitto listens on a free
loopback port. ``santi run --config SITE --replay OBS --speed 1`` runs as
its own process, its site file pointing at that broker, and exits by itself
when the recording ends. A subscriber notes the wall time each event
arrives.

Latency. The replay hands out an observation stamped t at wall time
R + (t - t0): t0 is the recording's first stamp and R the moment the replay
starts, which is when the agent tells systemd READY=1 (the benchmark listens
on ``NOTIFY_SOCKET``; the replay task starts at the next turn of the loop).
A subscriber notes the wall time each event arrives. The load run's agent
runs with ``-vv``, whose ``sector decided`` line gives each entry's
timeline on the agent's clock: crossed (the event's ts), qualified (the
window in which the estimate first met the sector filter's threshold and
margin: the hold starts) and decided (the window that completed the hold).
The target's figure, for every app phone's ``sector.entered`` decided in
the measurement window, is

    latency = arrival on the broker - R - (first observation of the phone in the qualifying window - t0)

from the observation that put the shopper in the new sector, as far as the
agent can tell, to the event on the broker: the configured hysteresis, any
window in which the phone went unheard (the hold then waits for the next),
the wait for the window to close, locator, outbox and uplink. Its two parts
are shown beside it: the hold, and decided -> broker.

Against ground truth, a second figure adds how long the positioning takes
to put the estimate in the new sector. ``simulator.run.planned_truth``
draws the shoppers as the simulation does, which gives each app phone's
pseudonym and the times its carrier stepped into each sector. Each
``sector.entered`` of an app phone is matched to that carrier's true entry
into that sector nearest the time the agent dates the entry to (within
``MATCH_S``, not after the event arrived, each true entry at most once;
entries with no such match are counted as false), and timed from the first
observation of the phone at or after the true entry. It is not the target's
figure: with the spatial margin, a shopper who stops a metre past a border is
never clearly in the new sector, and even a perfect tracker leaves a tail.
Only true entries in the measurement window count, which starts once
everybody has arrived and ends ``TAIL_S`` before the recording does. Wi-Fi
visitors' entries are only counted: a probe burst every 20-90 s cannot
confirm a crossing before the next burst. Beside it: how late the agent
dates the crossing against the truth (the tracker's lag), the time from
that dated crossing to the broker, and the pipeline from the end of a
window to the broker (``agent.status`` events, stored at a window's end).
Store time maps to wall time on the agent's clock through its
``status.json``: ``updated`` against the file's mtime.

CPU: utime + stime of the agent process (every thread, ``/proc/PID/stat``)
over the measurement window, divided by its wall time; the median of 10 s
slices beside it. Memory: VmHWM (peak resident set) and VmRSS from
``/proc/PID/status``. The memory run replays shoppers that each carry one
app phone and no Wi-Fi, so tracked emitters = shoppers; its figure is the
peak RSS of a run that reached and held that many tracks (the agent's own
count in ``status.json``).

What the replay adds: ``santi run --replay`` parses each observation from
JSON Lines and paces it with an ``asyncio.sleep``, where radios deliver
records through callbacks. That cost is in the CPU figure, as is ``-vv``'s
logging (a line per sector entry and per uplink acknowledgement).

The counting stage (``[footfall]``, issue 19): the same recording replayed
twice more at 1×, without and with the stage, alternately twice (off, on,
on, off), each run's CPU over the same window; the added CPU is the ratio
of the medians of the same run. A replay of minutes holds minutes of
probes, while a store's agent holds ``window_s`` (2 h) of them and the
estimate's cost grows with what it holds (up to ``max_probes``), so a
steady-state figure beside it: the simulator's crowd (shoppers without the
app, passers-by 3 times the shoppers, fixed devices) at about the same
number inside for ``STEADY_BUSY_MIN`` minutes, read into
``agent.footfall.FootfallStage`` as the service hands it receptions, and
one estimate timed over the newest 100,000, 250,000 and 500,000 of them
(median of 3, process CPU), with how far back they reach. It is not scored
against the truth (benchmarks/footfall.py does that). And the loop's stall
(``--footfall stall``): an in-process service whose stage holds a full
window of that crowd, replaying what came next at 1×, with a 5 ms heartbeat
in its event loop, same run with the stage off, estimating in the loop (as
before 2026-12-05) and in a worker thread; how late the heartbeat wakes.

    .venv/bin/python benchmarks/agent.py                       # a table, about 5 minutes
    .venv/bin/python benchmarks/agent.py --minutes 10 --json   # a longer window, JSON
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from agent.config import SiteConfig, load_site  # noqa: E402
from agent.errors import SantiError  # noqa: E402
from agent.events import Event  # noqa: E402
from agent.footfall import FootfallStage  # noqa: E402
from agent.localbroker import Broker, example_site_for  # noqa: E402
from agent.observations import Observation  # noqa: E402
from agent.replayclock import ReplayClock  # noqa: E402
from agent.replayfile import RecordReader, write_records  # noqa: E402
from agent.service import Service  # noqa: E402
from agent.sources.replay import ReplaySource  # noqa: E402
from positioning.occupancy import estimate_occupancy  # noqa: E402
from simulator.anonymous import CrowdConfig  # noqa: E402
from simulator.run import PhoneConfig, SimConfig, planned_truth, simulate  # noqa: E402
from simulator.truth import PlannedTruth  # noqa: E402

RAMP_S = 30.0
"""Every shopper arrives within this many seconds of the start."""

WARMUP_S = 45.0
"""Store seconds before the measurement window: the ramp, then tracks and visits settle."""

TAIL_S = 45.0
"""Recording after the window, so late decisions on entries near its end still reach the broker.

A true entry late in the window whose event would take longer than this is
cut off (the agent exits with the recording), so the top percentiles are a
floor when ``max_s`` nears it."""

MEMORY_HOLD_S = 30.0
"""How long the memory run keeps its emitters after the ramp."""

MATCH_S = 20.0
"""Largest gap between a true entry and the time the agent dates it to, for a match."""

TIMELINE_MATCH_S = 0.002
"""Largest gap between an event's ts and the crossing in its ``sector decided`` line (ms rounding)."""

SAMPLE_EVERY_S = 0.5
CPU_SLICE_S = 10.0
LATENCY_BUDGET_S = 2.0
CPU_TARGET = 0.25
RSS_TARGET_MB = 120.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
FOOTFALL_TARGET = 0.10
"""The counting stage adds at most this to the agent's CPU (issue 19)."""
FOOTFALL_SECTION = "[footfall]\n"
STEADY_BUSY_MIN = 45.0
"""Simulated minutes of arrivals at the full crowd: its probes pass 500,000 receptions well before 2 h
(a 2 h simulation of 500 inside wrote over 1 GB of probes and took 8 GB of memory to simulate)."""
MEAN_STAY_MIN = 8.5
"""Arrivals to simulate per minute for each person wanted inside (Little's law with the simulated crowd's
effective stay; measured: 545 arrivals over 150 min kept a median of 31 inside once the window was full)."""

err = Console(stderr=True)


# -- the recording and its truth ---------------------------------------------------------


class _Enough(SantiError):
    """Raised from ``simulate``'s progress callback once the prefix we need is written."""


def simulate_prefix(site: SiteConfig, config: SimConfig, out_dir: Path, seconds: float) -> Path:
    """observations.jsonl of the run's first ``seconds`` (rounded up to the simulator's 30 s progress step).

    ``simulate`` reports progress before writing a tick, so stopping there
    leaves a file that ends cleanly after a whole tick.
    """

    def enough(done: float, _total: float) -> None:
        if done >= seconds:
            raise _Enough

    with contextlib.suppress(_Enough):
        simulate(site, config, out_dir, enough)
    return out_dir / "observations.jsonl"


def observation_times(path: Path, emitters: set[str]) -> dict[str, list[float]]:
    """Stamps of every observation of the given emitters, in file (= time) order."""
    times: dict[str, list[float]] = {emitter: [] for emitter in emitters}
    with path.open("rb") as handle:
        for line in handle:
            record = json.loads(line)
            stamps = times.get(record["emitter_id"])
            if stamps is not None:
                stamps.append(float(record["ts"]))
    return times


def first_ts(path: Path) -> float:
    with path.open("rb") as handle:
        return float(json.loads(handle.readline())["ts"])


# -- watching the agent ----------------------------------------------------------------


@dataclass
class Sample:
    """One look at the agent: wall time, CPU seconds so far, RSS, and its status file."""

    wall: float
    cpu_s: float
    rss_mb: float
    hwm_mb: float
    status: dict[str, Any] | None
    status_mtime: float | None


def proc_sample(pid: int) -> tuple[float, float, float]:
    """CPU seconds (user + system, every thread), VmRSS and VmHWM in MB of a live process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of proc(5)
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024.0
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024.0
    return cpu, rss, hwm


def read_status(path: Path) -> tuple[dict[str, Any] | None, float | None]:
    try:
        mtime = path.stat().st_mtime_ns / 1e9
        return json.loads(path.read_text(encoding="utf-8")), mtime
    except (OSError, ValueError):
        return None, None


@dataclass
class Received:
    wall: float
    payload: bytes


class Subscriber:
    """Every event on the broker with the wall time it arrived (noted first thing in the callback)."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_args: subscribed.set()
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        self._client.subscribe("santi/v1/+/+/events/#", qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("no SUBACK from the benchmark's broker")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        wall = time.time()
        with self._lock:
            self.messages.append(Received(wall, bytes(msg.payload)))

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class ReadyListener:
    """systemd's side of the notify protocol, enough to note when the agent says READY=1."""

    def __init__(self) -> None:
        self.address = f"@santi-bench-{os.getpid()}-{time.monotonic_ns()}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + self.address[1:])
        self.ready_wall: float | None = None
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                message = self._socket.recv(4096)
                if b"READY=1" in message.split(b"\n") and self.ready_wall is None:
                    self.ready_wall = time.time()

    def close(self) -> None:
        self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()


def santi_command() -> list[str]:
    script = Path(sys.executable).with_name("santi")
    if not script.is_file():
        raise SystemExit(f"no santi console script beside {sys.executable}: pip install -e . first")
    return [str(script)]


@dataclass
class AgentRun:
    ready_wall: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    messages: list[Received] = field(default_factory=list)
    decisions: dict[tuple[str, str], list[tuple[float, float, float]]] = field(default_factory=dict)
    """(subject, sector) -> [(crossed, qualified, decided)], from the agent's ``sector decided`` debug lines."""


def logfmt(line: str) -> dict[str, str]:
    """One ``key=value ...`` line of ``agent.logs`` (values double-quoted when they hold spaces)."""
    return dict(part.split("=", 1) for part in shlex.split(line) if "=" in part)


def sector_decisions(log_path: Path) -> dict[tuple[str, str], list[tuple[float, float, float]]]:
    decisions: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if 'msg="sector decided"' in line:
            f = logfmt(line)
            decisions.setdefault((f["subject"], f["sector"]), []).append(
                (float(f["crossed"]), float(f["qualified"]), float(f["decided"])))
    return decisions


def timeline_of(run: AgentRun, event: dict[str, Any]) -> tuple[float, float] | None:
    """(qualified, decided) of a sector.entered event: its log line, matched on the crossing time.

    The event carries the crossing to the millisecond, truncated; the log line rounds it.
    """
    dated = _epoch(event["ts"])
    for crossed, qualified, decided in run.decisions.get((event["subject"], event["sector_id"]), []):
        if abs(crossed - dated) <= TIMELINE_MATCH_S:
            return qualified, decided
    return None


def run_agent(site_path: Path, observations: Path, workdir: Path, broker: Broker, label: str,
              store_seconds: float, *, debug: bool = False) -> AgentRun:
    """``santi run`` over the recording at 1× until it ends by itself; samples every ``SAMPLE_EVERY_S``.

    ``debug`` runs it with ``-vv``, whose ``sector decided`` lines time each entry's hold.
    """
    state = workdir / "state"
    shutil.rmtree(state, ignore_errors=True)  # a kept --workdir must not hand an old outbox to this run
    log_path = workdir / "agent.log"
    subscriber = Subscriber(broker)
    ready = ReadyListener()
    result = AgentRun()
    command = [*santi_command(), *(["-vv"] if debug else []), "run", "--config", str(site_path), "--state-dir", str(state),
               "--replay", str(observations), "--speed", "1"]
    env = {**os.environ, "NOTIFY_SOCKET": ready.address}
    env.pop("WATCHDOG_USEC", None)
    try:
        with log_path.open("wb") as log, Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=err, transient=True,
        ) as progress:
            task = progress.add_task(label, total=store_seconds, info="starting")
            agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            try:
                deadline = time.monotonic() + store_seconds + 120.0
                while agent.poll() is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the agent did not finish the recording; see {log_path}")
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        cpu, rss, hwm = proc_sample(agent.pid)
                        status, mtime = read_status(state / "status.json")
                        result.samples.append(Sample(time.time(), cpu, rss, hwm, status, mtime))
                        tracks = status.get("tracks", "?") if status else "?"
                        done = 0.0 if ready.ready_wall is None else time.time() - ready.ready_wall
                        progress.update(task, completed=min(done, store_seconds),
                                        info=f"tracks {tracks}  RSS {rss:.0f} MB  events {subscriber.count()}")
                    time.sleep(SAMPLE_EVERY_S)
            finally:
                if agent.poll() is None:
                    agent.send_signal(signal.SIGTERM)
                    try:
                        agent.wait(20)
                    except subprocess.TimeoutExpired:
                        agent.kill()
                        agent.wait()
        time.sleep(1.0)  # the last events are still on their way from the broker
    finally:
        subscriber.close()
        ready.close()
    if agent.returncode != 0:
        raise RuntimeError(f"santi run exited {agent.returncode}:\n{log_path.read_text(errors='replace')[-2000:]}")
    if ready.ready_wall is None:
        raise RuntimeError("the agent never said READY=1")
    result.ready_wall = ready.ready_wall
    result.messages = subscriber.messages
    result.decisions = sector_decisions(log_path)
    return result


# -- figures -------------------------------------------------------------------------


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentiles(values: list[float], prefix: str) -> dict[str, float]:
    if not values:
        return {f"{prefix}p50_s": float("nan"), f"{prefix}p95_s": float("nan"), f"{prefix}p99_s": float("nan")}
    p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99])
    return {f"{prefix}p50_s": float(p50), f"{prefix}p95_s": float(p95), f"{prefix}p99_s": float(p99)}


def agent_clock_origin(samples: list[Sample], t0: float) -> float:
    """Wall time of store time t0 on the agent's clock: its status file's mtime against ``updated``."""
    origins = [s.status_mtime - (float(s.status["updated"]) - t0) for s in samples
               if s.status is not None and s.status_mtime is not None and "updated" in s.status]
    if not origins:
        raise RuntimeError("the agent never wrote its status file")
    return statistics.median(origins)


def latency_figures(run: AgentRun, truth: PlannedTruth, observations: Path, t0: float,
                    since: float, until: float, window_s: float) -> dict[str, Any]:
    """Time each app phone's sector.entered from the observation that started its hold, and from the truth.

    The first: from the first observation of the window in which the estimate
    first qualified for the new sector (the agent's ``sector decided`` line)
    to the broker, for every entry decided in the measurement window. The
    second: matched to a true entry, from the first observation after it.
    """
    events = sorted((json.loads(m.payload) | {"_wall": m.wall} for m in run.messages), key=lambda e: e["seq"])
    entered = [e for e in events if e["type"] == "sector.entered"]
    subjects = {e["subject"] for e in entered}
    known = subjects & set(truth.entries)
    wifi = {e["visit_id"] for e in events if e["type"] == "visit.started" and e["tech"] == "wifi"}
    ble_subjects = {e["subject"] for e in entered if e["visit_id"] not in wifi}
    if ble_subjects and len(known) < 0.95 * len(ble_subjects):
        raise RuntimeError(f"only {len(known)} of {len(ble_subjects)} visitors are simulated app phones: "
                           "planned_truth() no longer names the app phones as the recording does")
    heard = observation_times(observations, known)
    k = agent_clock_origin(run.samples, t0)
    used: set[tuple[str, float]] = set()
    latency: list[float] = []
    tracking_lag: list[float] = []
    decision: list[float] = []
    false_entries = 0
    for event in entered:
        subject, sector, dated, wall = event["subject"], event["sector_id"], _epoch(event["ts"]), event["_wall"]
        if subject not in known:
            continue
        arrived = t0 + (wall - run.ready_wall)  # store time at which the event reached us
        candidates = [ts for ts, where in truth.entries[subject]
                      if where == sector and ts <= arrived and abs(ts - dated) <= MATCH_S
                      and (subject, ts) not in used]
        if not candidates:
            if since <= dated < until:
                false_entries += 1
            continue
        true_ts = min(candidates, key=lambda ts: abs(ts - dated))
        used.add((subject, true_ts))
        if not since <= true_ts < until:
            continue
        stamps = heard[subject]
        first = bisect.bisect_left(stamps, true_ts)
        if first == len(stamps):
            continue
        latency.append(wall - (run.ready_wall + stamps[first] - t0))
        tracking_lag.append(dated - true_ts)
        decision.append(wall - (k + dated - t0))
    held: list[float] = []
    hold: list[float] = []
    after: list[float] = []
    untimed = 0
    for event in entered:
        subject, wall = event["subject"], event["_wall"]
        if subject not in known:
            continue
        timeline = timeline_of(run, event)
        if timeline is None:
            untimed += 1
            continue
        if not since <= timeline[1] < until:
            continue
        qualified, decided = timeline
        stamps = heard[subject]
        first = bisect.bisect_right(stamps, qualified - window_s)
        if first == len(stamps):
            continue
        held.append(wall - (run.ready_wall + stamps[first] - t0))
        hold.append(decided - qualified)
        after.append(wall - (k + decided - t0))
    pipeline = [e["_wall"] - (k + _epoch(e["ts"]) - t0) for e in events
                if e["type"] == "agent.status" and since <= _epoch(e["ts"]) < until]
    return {
        "held_n": len(held), "untimed_entries": untimed, **percentiles(held, "held_"), "held_max_s": max(held, default=float("nan")),
        **percentiles(hold, "hold_"), **percentiles(after, "decided_"),
        "n": len(latency), **percentiles(latency, ""), "max_s": max(latency, default=float("nan")),
        "false_entries": false_entries,
        "wifi_entries": sum(1 for e in entered if e["visit_id"] in wifi and since <= _epoch(e["ts"]) < until),
        "tracking_lag_median_s": statistics.median(tracking_lag) if tracking_lag else float("nan"),
        **percentiles(decision, "decision_"),
        **percentiles(pipeline, "pipeline_"),
        "replay_after_agent_clock_s": run.ready_wall - k,
    }


def window_samples(samples: list[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if start <= s.wall <= end]


def cpu_figures(samples: list[Sample]) -> dict[str, float]:
    """Mean share of one core over the samples' span, and the median and max of 10 s slices."""
    if len(samples) < 2:
        raise RuntimeError("too few samples in the measurement window")
    first, last = samples[0], samples[-1]
    mean = (last.cpu_s - first.cpu_s) / (last.wall - first.wall)
    slices = []
    anchor = first
    for sample in samples[1:]:
        if sample.wall - anchor.wall >= CPU_SLICE_S:
            slices.append((sample.cpu_s - anchor.cpu_s) / (sample.wall - anchor.wall))
            anchor = sample
    return {"cpu_core_share": mean, "cpu_slice_median": statistics.median(slices or [mean]),
            "cpu_slice_max": max(slices or [mean])}


def status_values(samples: list[Sample], key: str) -> list[int]:
    return [int(s.status[key]) for s in samples if s.status is not None and key in s.status]


# -- the two runs ----------------------------------------------------------------------


def footfall_pairs(workdir: Path, shoppers: int, minutes: float, seed: int) -> dict[str, Any]:
    """The load run's recording replayed without and with ``[footfall]`` (off, on, on, off): CPU in the window."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir / "broker")
    broker.start()
    measure_s = minutes * 60.0
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    estimates: list[dict[str, Any]] = []
    try:
        site = load_site(example_site_for(workdir, broker.port))
        config = SimConfig(shoppers=shoppers, minutes=RAMP_S / 60.0, seed=seed)
        with err.status(f"simulating {shoppers} shoppers …"):
            observations = simulate_prefix(site, config, workdir / "sim", WARMUP_S + measure_s + TAIL_S)
        t0 = first_ts(observations)
        since = config.start_ts + WARMUP_S
        for mode in ("off", "on", "on", "off"):
            site_path = example_site_for(workdir, broker.port, extra=FOOTFALL_SECTION if mode == "on" else "")
            run = run_agent(site_path, observations, workdir, broker, f"agent, {shoppers} shoppers, footfall {mode}",
                            WARMUP_S + measure_s + TAIL_S)
            in_window = window_samples(run.samples, run.ready_wall + since - t0,
                                       run.ready_wall + since + measure_s - t0)
            cpu[mode].append(cpu_figures(in_window)["cpu_core_share"])
            last = next((s.status for s in reversed(run.samples) if s.status and s.status.get("footfall")), None)
            if mode == "on" and last is not None:
                estimates.append(last["footfall"])
    finally:
        broker.stop()
    off, on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    return {"shoppers": shoppers, "measure_s": measure_s, "cpu_off": cpu["off"], "cpu_on": cpu["on"],
            "cpu_off_median": off, "cpu_on_median": on, "added": on / off - 1.0,
            "estimates": [e.get("estimates") for e in estimates], "held": [e.get("held") for e in estimates],
            "cpu_s_per_estimate": [e["cpu_s_total"] / e["estimates"] for e in estimates if e.get("estimates")]}


STEADY_READ = 700_000
"""Receptions of the crowd's recording read (its first; the crowd is still building up at the end of them)."""
STEADY_HELD = (100_000, 250_000, 500_000)
"""Receptions held by the stage when an estimate is timed: the new default max_probes and either side."""


def steady_recording(workdir: Path, inside: int, minutes: float, seed: int) -> tuple[SiteConfig, SimConfig, Path]:
    """The simulated crowd of about ``inside`` people (``minutes`` of arrivals, no app phones, passers-by three
    times the shoppers, 4 fixed devices), simulated once per workdir: its site (with ``[footfall]``), config and
    recording directory."""
    workdir.mkdir(parents=True, exist_ok=True)
    site = load_site(example_site_for(workdir, 1883, extra=FOOTFALL_SECTION))
    shoppers = round(inside * minutes / MEAN_STAY_MIN)
    config = SimConfig(shoppers=shoppers, minutes=minutes, seed=seed, phones=PhoneConfig(app_share=0.0),
                       crowd=CrowdConfig(passers=3 * shoppers, fixtures=4))
    recording = workdir / "steady"
    if not (recording / "observations.jsonl").is_file():  # a kept --workdir reuses its recording
        with err.status(f"simulating {shoppers} shoppers over {minutes:g} min, {3 * shoppers} passers-by …"):
            simulate(site, config, recording)
    return site, config, recording


def steady_state(workdir: Path, inside: int, minutes: float, seed: int) -> dict[str, Any]:
    """What one estimate costs once the stage is full: the newest N receptions of a simulated crowd of about
    ``inside`` people (``minutes`` of arrivals), held as the stage holds them, timed (median of 3, process CPU)."""
    site, config, recording = steady_recording(workdir, inside, minutes, seed)
    assert site.footfall is not None
    shoppers = config.shoppers
    stage = FootfallStage(site, site.footfall.model_copy(update={"max_probes": max(STEADY_HELD)}))
    last = config.start_ts
    with err.status("reading the recording as the stage holds it …"):
        for observation in RecordReader(recording / "observations.jsonl", Observation):
            if stage.stats.accepted >= STEADY_READ:
                break
            stage.add(observation)
            last = observation.ts
    stage.step(config.start_ts, 0.0)
    stage.step(last, 0.0)  # the first estimate folds in what it holds, the newest max_probes
    rows = stage.held_rows()
    figures = []
    for held in STEADY_HELD:
        part = rows[-held:]
        now = float(part["t"].max())
        spent = []
        for _ in range(3):
            before = time.process_time()
            estimate = estimate_occupancy(part["t"], part["mac"], part["sig"], part["seq"], part["rnd"], part["z"],
                                          part["rx"], now, config=stage.estimate_config)
            spent.append(time.process_time() - before)
        figures.append({"held": int(part.size), "reaches_back_min": (now - float(part["t"].min())) / 60.0,
                        "cpu_s_per_estimate": statistics.median(spent),
                        "core_share_at_one_a_minute": statistics.median(spent) / 60.0,
                        "devices": estimate.devices, "count": estimate.count})
    return {"inside_wanted": inside, "shoppers": shoppers, "passers": 3 * shoppers, "fixtures": 4,
            "minutes": minutes, "receptions": int(rows.size), "held": figures}


STALL_HELD = 250_000
"""Receptions the stage holds when the stall is measured: the ``max_probes`` default, a full window."""
STALL_REPLAY_S = 150.0
"""Store seconds of the crowd replayed at 1× after them: two estimates at one a minute."""
STALL_BEAT_S = 0.005
"""The heartbeat's period in the agent's loop."""


class InlineCounting(Service):
    """The service as it was before 2026-12-05: the counting stage estimates in the loop (the "before" figure)."""

    def _counts(self, t: float, offset: float) -> list[Event]:
        return [] if self.footfall is None else self.footfall.step(t, offset)


def loop_stall(workdir: Path, inside: int, seed: int) -> dict[str, Any]:
    """How long the agent's event loop stops while the counting stage estimates, same run: off, in the loop, in a
    worker thread.

    An in-process `Service` whose stage first holds ``STALL_HELD`` receptions of the steady crowd, replaying the
    next ``STALL_REPLAY_S`` of it at 1× (ingest, locator, outbox, uplink to a local broker); a task in its loop
    wakes every ``STALL_BEAT_S`` and notes how late each wake-up is. What waits that long: the records the sources
    hand in, the uplink's acknowledgements, the next window.
    """
    _, _, recording = steady_recording(workdir / "steady-crowd", inside, STEADY_BUSY_MIN, seed)
    held: list[Observation] = []
    after: list[Observation] = []
    with err.status(f"reading {STALL_HELD:,} receptions and the {STALL_REPLAY_S:g} s after them …"):
        for observation in RecordReader(recording / "observations.jsonl", Observation):
            if len(held) < STALL_HELD:
                if observation.tech == "wifi":
                    held.append(observation)
                continue
            if observation.ts >= held[-1].ts + STALL_REPLAY_S:
                break
            after.append(observation)
    replay = workdir / "stall"
    replay.mkdir(parents=True, exist_ok=True)
    write_records(replay / "observations.jsonl", after)
    write_records(replay / "taps.jsonl", [])
    broker = Broker(replay / "broker")
    broker.start()
    runs: dict[str, dict[str, Any]] = {}
    try:
        for mode in ("off", "loop", "thread"):
            site = load_site(example_site_for(replay, broker.port, extra="" if mode == "off" else FOOTFALL_SECTION))
            clock = ReplayClock(after[0].ts, 1.0)
            kind = InlineCounting if mode == "loop" else Service
            service = kind(site, [ReplaySource(replay / "observations.jsonl", replay / "taps.jsonl")],
                           state_dir=replay / f"state-{mode}", clock=clock, stop_when_sources_finish=True)
            if service.footfall is not None:
                for observation in held:
                    service.footfall.add(observation)
            late: list[float] = []

            async def beat(service: Service = service, late: list[float] = late) -> int:
                """Beats from the first window on (the service's start-up, alike in every mode, is not the stall)."""
                run = asyncio.create_task(service.run())
                while not run.done():
                    before = time.monotonic()
                    await asyncio.sleep(STALL_BEAT_S)
                    if service.stats.windows:
                        late.append(time.monotonic() - before - STALL_BEAT_S)
                return await run

            clock.start()
            with err.status(f"replaying {STALL_REPLAY_S:g} s at 1×, counting stage {mode} …"):
                asyncio.run(beat())
            stats = service.footfall.stats if service.footfall is not None else None
            lateness = np.asarray(late)
            runs[mode] = {
                "beats": int(lateness.size), "late_max_s": float(lateness.max()),
                "late_p99_s": float(np.quantile(lateness, 0.99)), "late_median_s": float(np.median(lateness)),
                "beats_over_100ms": int((lateness > 0.1).sum()), "late_over_100ms_s": float(lateness[lateness > 0.1].sum()),
                "windows": service.stats.windows,
                "estimates": None if stats is None else stats.estimates,
                "cpu_s_per_estimate": None if stats is None or not stats.estimates else
                stats.cpu_s_total / stats.estimates,
                "held": None if stats is None else stats.held}
    finally:
        broker.stop()
    return {"inside_wanted": inside, "held": STALL_HELD, "replay_s": STALL_REPLAY_S, "receptions": len(after),
            "runs": runs}


def load_run(workdir: Path, shoppers: int, minutes: float, seed: int) -> dict[str, Any]:
    """N shoppers at 1×: latency, CPU and RSS over the measurement window."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir / "broker")
    broker.start()
    measure_s = minutes * 60.0
    try:
        site_path = example_site_for(workdir, broker.port)
        site = load_site(site_path)
        config = SimConfig(shoppers=shoppers, minutes=RAMP_S / 60.0, seed=seed)
        with err.status(f"simulating {shoppers} shoppers …"):
            observations = simulate_prefix(site, config, workdir / "sim", WARMUP_S + measure_s + TAIL_S)
            truth = planned_truth(site, config)
        run = run_agent(site_path, observations, workdir, broker, f"agent, {shoppers} shoppers",
                        WARMUP_S + measure_s + TAIL_S, debug=True)
    finally:
        broker.stop()
    t0 = first_ts(observations)
    since = config.start_ts + WARMUP_S
    until = since + measure_s
    inside = truth.inside(np.arange(since, until, 1.0))
    in_window = window_samples(run.samples, run.ready_wall + since - t0, run.ready_wall + until - t0)
    with err.status("matching events to the shoppers' true paths …"):
        latency = latency_figures(run, truth, observations, t0, since, until, site.tracking.window_s)
    return {
        "shoppers": shoppers, "measure_s": measure_s,
        "concurrent_min": int(inside.min()), "concurrent_median": float(np.median(inside)),
        "hysteresis_s": site.tracking.hysteresis_s, "window_s": site.tracking.window_s,
        "latency": latency,
        **cpu_figures(in_window),
        "rss_median_mb": statistics.median(s.rss_mb for s in in_window),
        "rss_peak_mb": max(s.hwm_mb for s in in_window),
        "tracks_median": statistics.median(status_values(in_window, "tracks") or [0]),
        "queue_dropped": max(status_values(run.samples, "queue_dropped") or [0]),
        "events_received": len(run.messages),
    }


def memory_run(workdir: Path, emitters: int, seed: int) -> dict[str, Any]:
    """``emitters`` app phones (one BLE emitter each, no Wi-Fi) held for MEMORY_HOLD_S: peak RSS."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir / "broker")
    broker.start()
    try:
        site_path = example_site_for(workdir, broker.port)
        site = load_site(site_path)
        phones = PhoneConfig(app_share=1.0, wifi_share=0.0)
        config = SimConfig(shoppers=emitters, minutes=RAMP_S / 60.0, seed=seed, phones=phones)
        with err.status(f"simulating {emitters} app phones …"):
            observations = simulate_prefix(site, config, workdir / "sim", RAMP_S + MEMORY_HOLD_S)
        run = run_agent(site_path, observations, workdir, broker, f"agent, {emitters} emitters",
                        RAMP_S + MEMORY_HOLD_S)
    finally:
        broker.stop()
    held = [s for s in run.samples if s.status is not None and int(s.status.get("tracks", 0)) >= emitters]
    return {
        "emitters": emitters, "tracks_max": max(status_values(run.samples, "tracks") or [0]),
        "held_s": (held[-1].wall - held[0].wall) if held else 0.0,
        "rss_peak_mb": max(s.hwm_mb for s in run.samples),
        "rss_median_held_mb": statistics.median(s.rss_mb for s in held) if held else float("nan"),
        "rss_at_start_mb": next((s.rss_mb for s in run.samples if s.wall >= run.ready_wall), float("nan")),
        "queue_dropped": max(status_values(run.samples, "queue_dropped") or [0]),
    }


# -- report ------------------------------------------------------------------------------


def _met(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]missed[/]"


def table(figures: dict[str, Any]) -> Table:
    load, memory = figures["load"], figures.get("memory")
    lat = load["latency"]
    budget = LATENCY_BUDGET_S + load["hysteresis_s"]
    out = Table("figure", "measured", "target", "", title=(
        f"santi run at 1×: {load['shoppers']} shoppers (min {load['concurrent_min']} inside), "
        f"{load['measure_s'] / 60:g} min window"))
    out.add_row(f"observation → sector.entered p50 / p95 ({lat['held_n']} entries; "
                f"{lat['untimed_entries']} in the run without a log line)",
                f"{lat['held_p50_s']:.1f} / {lat['held_p95_s']:.1f} s", "", "")
    out.add_row("observation → sector.entered p99", f"{lat['held_p99_s']:.1f} s",
                f"< {LATENCY_BUDGET_S:g} s + {load['hysteresis_s']:g} s hysteresis",
                _met(lat["held_p99_s"] < budget))
    out.add_row("  the hold: qualified → decided p50 / p99",
                f"{lat['hold_p50_s']:.1f} / {lat['hold_p99_s']:.1f} s", "", "")
    out.add_row("  decided (window end) → broker p50 / p99",
                f"{lat['decided_p50_s'] * 1000:.0f} / {lat['decided_p99_s'] * 1000:.0f} ms", "", "")
    out.add_row(f"true crossing → sector.entered p50 / p95 / p99 ({lat['n']} entries)",
                f"{lat['p50_s']:.1f} / {lat['p95_s']:.1f} / {lat['p99_s']:.1f} s", "", "")
    out.add_row("  agent dates the crossing, after truth (median)", f"{lat['tracking_lag_median_s']:.1f} s", "", "")
    out.add_row("  dated crossing → broker p50 / p99",
                f"{lat['decision_p50_s']:.1f} / {lat['decision_p99_s']:.1f} s", "", "")
    out.add_row("  window end → broker p50 / p99",
                f"{lat['pipeline_p50_s'] * 1000:.0f} / {lat['pipeline_p99_s'] * 1000:.0f} ms", "", "")
    out.add_row("  false entries / Wi-Fi entries (not timed)", f"{lat['false_entries']} / {lat['wifi_entries']}",
                "", "")
    out.add_row("CPU, share of one core (median 10 s slice)",
                f"{load['cpu_core_share']:.1%} ({load['cpu_slice_median']:.1%})", f"< {CPU_TARGET:.0%}",
                _met(load["cpu_core_share"] < CPU_TARGET))
    out.add_row(f"RSS at {load['shoppers']} shoppers ({load['tracks_median']:.0f} tracks), median / peak",
                f"{load['rss_median_mb']:.0f} / {load['rss_peak_mb']:.0f} MB", "", "")
    if memory is not None:
        out.add_row(f"peak RSS, {memory['emitters']:,} tracked emitters (held {memory['held_s']:.0f} s)",
                    f"{memory['rss_peak_mb']:.0f} MB", f"< {RSS_TARGET_MB:g} MB",
                    _met(memory["rss_peak_mb"] < RSS_TARGET_MB and memory["held_s"] > 0))
        out.add_row("  RSS once ready, before any emitter", f"{memory['rss_at_start_mb']:.0f} MB", "", "")
    dropped = load["queue_dropped"] + (memory["queue_dropped"] if memory else 0)
    out.add_row("records dropped at the locator queue", f"{dropped}", "0", _met(dropped == 0))
    return out


def footfall_table(figures: dict[str, Any]) -> Table:
    footfall = figures.get("footfall")
    out = Table("figure", "measured", "target", "", title="the counting stage ([footfall])")
    if footfall is not None:
        out.add_row(f"CPU at {footfall['shoppers']} shoppers, footfall off / on (median of "
                    f"{len(footfall['cpu_on'])} runs each, {footfall['measure_s'] / 60:g} min window)",
                    f"{footfall['cpu_off_median']:.1%} / {footfall['cpu_on_median']:.1%}", "", "")
        out.add_row("added by the counting stage, same run", f"{footfall['added']:+.1%}",
                    f"≤ {FOOTFALL_TARGET:.0%}", _met(footfall["added"] <= FOOTFALL_TARGET))
    stall = figures.get("stall")
    if stall is not None:
        for mode, run in stall["runs"].items():
            per = ("" if run["cpu_s_per_estimate"] is None
                   else f", {run['estimates']} estimates of {run['cpu_s_per_estimate']:.2f} s CPU")
            out.add_row(f"loop stall, counting stage {mode} ({stall['held']:,} held{per})",
                        f"max {run['late_max_s'] * 1000:.0f} ms, p99 {run['late_p99_s'] * 1000:.0f} ms, "
                        f"{run['beats_over_100ms']} beats > 100 ms", "", "")
    for steady in figures.get("steady", []):
        for part in steady["held"]:
            out.add_row(f"{steady['inside_wanted']} inside: estimate over {part['held']:,} receptions "
                        f"({part['reaches_back_min']:.0f} min)",
                        f"{part['cpu_s_per_estimate']:.2f} s, {part['core_share_at_one_a_minute']:.1%} of a core",
                        "", "")
    return out


@contextlib.contextmanager
def workspace(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="santi-bench-agent-") as tmp:
        yield Path(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shoppers", type=int, default=500, help="concurrent shoppers for latency and CPU (500)")
    parser.add_argument("--emitters-for-memory", type=int, default=1000,
                        help="tracked emitters for the memory figure (1000; 0 skips that run)")
    parser.add_argument("--minutes", type=float, default=2.0,
                        help=f"measurement window after the {WARMUP_S:g} s warm-up, minutes at 1× (2)")
    parser.add_argument("--seed", type=int, default=1, help="simulator seed (1)")
    parser.add_argument("--workdir", type=Path, help="keep recordings, logs and outboxes here")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--footfall", choices=["on", "off", "only", "pairs", "steady", "stall"], default="on",
                        help="the counting stage's CPU (runs without and with it), its steady state and the loop's "
                             "stall while it estimates: after the other figures (on), not at all (off), alone "
                             "(only), one of the three alone")
    args = parser.parse_args()
    if args.shoppers < 1 or args.minutes <= 0 or args.emitters_for_memory < 0:
        parser.error("--shoppers must be >= 1, --minutes > 0 and --emitters-for-memory >= 0")

    with workspace(args.workdir) as work:
        figures: dict[str, Any] = {}
        if args.footfall in ("on", "off"):
            figures["load"] = load_run(work / "load", args.shoppers, args.minutes, args.seed)
            if args.emitters_for_memory:
                figures["memory"] = memory_run(work / "memory", args.emitters_for_memory, args.seed)
        if args.footfall in ("on", "only", "pairs"):
            figures["footfall"] = footfall_pairs(work / "footfall", args.shoppers, args.minutes, args.seed)
        if args.footfall in ("on", "only", "steady"):
            figures["steady"] = [steady_state(work / "steady-crowd", args.shoppers, STEADY_BUSY_MIN, args.seed)]
        if args.footfall in ("on", "only", "stall"):
            figures["stall"] = loop_stall(work, args.shoppers, args.seed)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    if "load" in figures:
        Console().print(table(figures))
    if "steady" in figures or "footfall" in figures or "stall" in figures:
        Console().print(footfall_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
