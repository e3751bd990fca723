"""The store console under load: 1,000 tracked emitters, with and without 20 viewers.

Issue targets: with 1,000 tracked emitters and 20 connected viewers, the
agent's CPU rises by at most 10 % of one core over the same run without
viewers; a viewer sees a position at most 1.5 s after its window closed.

Set-up, all real parts. A recording of ``--emitters`` phones standing still
at random places in ``examples/fishmonger.toml``, each heard once a second
by every BLE and node receiver (noise 2 dB), ``WARM_S + MEASURE_S`` store
seconds long. ``santi run --replay --speed 1`` runs as its own process
with a ``[console]`` on a free loopback port, publishing to a private
mosquitto, over the same recording, alternately with no viewer and with
``--viewers`` Server-Sent Event clients (``--repeats`` pairs) (in this process, on asyncio
streams) logged in with the technician token. Each viewer reads every
message in full and notes its arrival time and the window time ``t`` at its
head.

CPU: utime + stime of the agent process (every thread, ``/proc/PID/stat``)
between store seconds ``WARM_S`` and ``WARM_S + MEASURE_S`` of the replay,
divided by the wall time between the two samples. The rise is the
difference between the medians of the two kinds of run, as a share of one core.

Latency: the agent's store clock maps to wall time through its
``status.json`` (``updated``, the store time, against the file's mtime; the
median over the run). A message for window ``t`` arriving at wall ``w`` is
late by ``w - wall(t)``: the locator's step, the snapshot, its JSON and the
write to the socket. Quoted over every message of every viewer in the
measurement interval.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks/agent.py would otherwise shadow the agent package

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from agent.config import load_site  # noqa: E402
from agent.localbroker import Broker, free_port  # noqa: E402

EXAMPLE = ROOT / "examples" / "fishmonger.toml"
WARM_S = 25.0
"""Store seconds before measuring: every track born, the viewers connected."""
MEASURE_S = 40.0
SAMPLE_EVERY_S = 0.5
CLK_TCK = os.sysconf("SC_CLK_TCK")
TOKEN = "benchmark-technician-token"
CPU_RISE_TARGET = 0.10
LATENCY_TARGET_S = 1.5
HEAD = re.compile(rb'^\{"t":([0-9.]+),')

err = Console(stderr=True)


def recording(path: Path, emitters: int, seconds: float, seed: int) -> float:
    """Write the replay (JSON Lines, one reading per receiver per emitter per second); returns its t0."""
    site = load_site(EXAMPLE)
    rng = np.random.default_rng(seed)
    outline = np.asarray(site.store.outline, dtype=float)
    lo, hi = outline.min(axis=0) + 1.0, outline.max(axis=0) - 1.0
    xy = rng.uniform(lo, hi, size=(emitters, 2))
    receivers = [r for r in site.receivers if r.kind != "wifi"]
    ids = [f"bench{i:05d}" for i in range(emitters)]
    t0 = 1_763_900_000.0
    with path.open("w", encoding="utf-8") as out:
        for step in range(int(seconds)):
            lines = []
            for rx in receivers:
                d = np.sqrt((xy[:, 0] - rx.x) ** 2 + (xy[:, 1] - rx.y) ** 2 + (rx.z - 1.2) ** 2)
                rssi = rx.rssi_at_1m - 10 * rx.path_loss_exponent * np.log10(d) + rng.normal(0, 2.0, emitters)
                ts = t0 + step + rng.uniform(0.0, 0.99, emitters)
                lines.extend(zip(ts.tolist(), [rx.id] * emitters, ids, rssi.round(1).tolist(), strict=True))
            lines.sort()
            out.writelines(f'{{"ts":{ts},"receiver_id":"{rx}","emitter_id":"{e}","tech":"ble","rssi_dbm":{r}}}\n'
                           for ts, rx, e, r in lines)
    return t0


def site_file(workdir: Path, broker_port: int, console_port: int) -> Path:
    token = workdir / "technician.token"
    token.write_text(TOKEN, encoding="utf-8")
    token.chmod(0o600)
    staff = workdir / "staff.token"
    staff.write_text("benchmark-staff-token", encoding="utf-8")
    staff.chmod(0o600)
    text = EXAMPLE.read_text(encoding="utf-8")
    text = re.sub(r'(\[uplink\]\nhost = )"[^"]*"\nport = \d+', f'\\1"127.0.0.1"\nport = {broker_port}', text)
    text += (f'\n[console]\nlisten = "127.0.0.1:{console_port}"\n'
             f'technician_token_file = "{token}"\nstaff_token_file = "{staff}"\n')
    path = workdir / "site.toml"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class Viewer:
    """One SSE client: (arrival wall time, window t, bytes) per message."""

    received: list[tuple[float, float, int]] = field(default_factory=list)


async def _session_cookie(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /api/session HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                 "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    head = (await reader.read()).decode(errors="replace")
    writer.close()
    match = re.search(r"Set-Cookie: (santi_session=[^;]+)", head)
    if match is None:
        raise RuntimeError(f"no session cookie from the console: {head[:200]!r}")
    return match.group(1)


async def _view(port: int, cookie: str, viewer: Viewer, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=16 * 1024 * 1024)
    writer.write(f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n".encode())
    await writer.drain()
    try:
        while not stop.is_set():
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"data: "):
                wall = time.time()
                match = HEAD.match(line[6:])
                if match:
                    viewer.received.append((wall, float(match.group(1)), len(line)))
    finally:
        writer.close()


async def _viewers(port: int, count: int, viewers: list[Viewer], stop: asyncio.Event) -> None:
    cookie = await _session_cookie(port)
    tasks = []
    for _ in range(count):
        viewer = Viewer()
        viewers.append(viewer)
        tasks.append(asyncio.create_task(_view(port, cookie, viewer, stop)))
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Run:
    cpu_share: float = float("nan")
    offsets: list[float] = field(default_factory=list)
    """Wall minus store-seconds-since-t0, from each status.json seen (the agent's clock origin)."""
    viewers: list[Viewer] = field(default_factory=list)
    tracks: int = 0


def run_agent(workdir: Path, observations: Path, t0: float, viewers: int) -> Run:
    """``santi run`` over the recording at 1×, with ``viewers`` SSE clients from WARM_S / 2 on."""
    broker = Broker(workdir / "broker")
    broker.start()
    port = free_port()
    site = site_file(workdir, broker.port, port)
    state = workdir / "state"
    shutil.rmtree(state, ignore_errors=True)
    result = Run()
    command = [str(Path(sys.executable).with_name("santi")), "run", "--config", str(site), "--state-dir", str(state),
               "--replay", str(observations), "--speed", "1"]
    log = (workdir / "agent.log").open("wb")
    agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    view_task: asyncio.Task[None] | None = None
    samples: list[tuple[float, float, float]] = []  # wall, store seconds since t0, cpu
    try:
        deadline = time.monotonic() + WARM_S + MEASURE_S + 120.0
        while agent.poll() is None and time.monotonic() < deadline:
            loop.run_until_complete(asyncio.sleep(SAMPLE_EVERY_S))
            with contextlib.suppress(OSError, ValueError):
                path = state / "status.json"
                status = json.loads(path.read_text(encoding="utf-8"))
                offset = path.stat().st_mtime - (status["updated"] - t0)
                if not result.offsets or result.offsets[-1] != offset:
                    result.offsets.append(offset)
                result.tracks = max(result.tracks, int(status.get("tracks", 0)))
            if not result.offsets:
                continue
            store_s = time.time() - statistics.median(result.offsets)
            samples.append((time.time(), store_s, cpu_seconds(agent.pid)))
            if viewers and view_task is None and store_s >= WARM_S / 2:
                view_task = loop.create_task(_viewers(port, viewers, result.viewers, stop))
            if store_s >= WARM_S + MEASURE_S:
                break
    finally:
        stop.set()
        if view_task is not None:
            loop.run_until_complete(view_task)
        loop.close()
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
        log.close()
        broker.stop()
    inside = [s for s in samples if WARM_S <= s[1] <= WARM_S + MEASURE_S]
    if len(inside) >= 2:
        result.cpu_share = (inside[-1][2] - inside[0][2]) / (inside[-1][0] - inside[0][0])
    return result


def latency(runs: list[Run], t0: float) -> dict[str, float]:
    late = [wall - (statistics.median(run.offsets) + (t - t0)) for run in runs for viewer in run.viewers
            for wall, t, _ in viewer.received if WARM_S <= t - t0 <= WARM_S + MEASURE_S]
    if not late:
        return {"messages": 0}
    values = np.asarray(late)
    sizes = [size for run in runs for viewer in run.viewers for *_, size in viewer.received]
    return {"messages": len(late), "p50_s": float(np.percentile(values, 50)),
            "p99_s": float(np.percentile(values, 99)), "max_s": float(values.max()),
            "message_kb_median": statistics.median(sizes) / 1024.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emitters", type=int, default=1000)
    parser.add_argument("--viewers", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs; CPU figures are their medians")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the recording and logs here")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with contextlib.ExitStack() as cleanup:
        work = args.workdir or Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="santi-bench-console-")))
        work.mkdir(parents=True, exist_ok=True)
        observations = work / "observations.jsonl"
        with err.status(f"recording {args.emitters} emitters …"):
            t0 = recording(observations, args.emitters, WARM_S + MEASURE_S + 5.0, args.seed)
        quiet_runs, watched_runs = [], []
        for repeat in range(args.repeats):  # alternated, so a noisy neighbour hits both sides alike
            for name, viewers, runs in (("quiet", 0, quiet_runs), ("watched", args.viewers, watched_runs)):
                folder = work / f"{name}-{repeat}"
                folder.mkdir(exist_ok=True)
                with err.status(f"run {repeat + 1}/{args.repeats}: agent with {viewers} viewers …"):
                    runs.append(run_agent(folder, observations, t0, viewers))
    without = statistics.median(r.cpu_share for r in quiet_runs)
    with_viewers = statistics.median(r.cpu_share for r in watched_runs)
    seen = latency(watched_runs, t0)
    figures: dict[str, Any] = {
        "emitters": args.emitters, "viewers": args.viewers, "measure_s": MEASURE_S, "repeats": args.repeats,
        "tracks_max": {"without": max(r.tracks for r in quiet_runs), "with": max(r.tracks for r in watched_runs)},
        "cpu_share_without": without, "cpu_share_with": with_viewers,
        "cpu_shares": {"without": [r.cpu_share for r in quiet_runs], "with": [r.cpu_share for r in watched_runs]},
        "cpu_rise": with_viewers - without, "cpu_rise_target": CPU_RISE_TARGET,
        "viewers_connected": min(sum(1 for v in r.viewers if v.received) for r in watched_runs),
        "latency": seen, "latency_target_s": LATENCY_TARGET_S,
    }
    figures["met"] = {"cpu": figures["cpu_rise"] <= CPU_RISE_TARGET,
                      "latency": seen.get("max_s", float("inf")) <= LATENCY_TARGET_S}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    table = Table(title=f"Console: {args.emitters} emitters, {args.viewers} viewers")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_row("agent CPU without viewers (share of a core, median)", f"{without:.3f}", "")
    table.add_row("agent CPU with viewers (median)", f"{with_viewers:.3f}", "")
    table.add_row("rise", f"{figures['cpu_rise']:+.3f}", f"≤ {CPU_RISE_TARGET}")
    table.add_row("window → viewer, p50 / p99 / max (s)",
                  f"{seen.get('p50_s', float('nan')):.3f} / {seen.get('p99_s', float('nan')):.3f} / "
                  f"{seen.get('max_s', float('nan')):.3f}", f"≤ {LATENCY_TARGET_S}")
    table.add_row("messages timed, median size (KB)",
                  f"{seen.get('messages', 0)}, {seen.get('message_kb_median', float('nan')):.0f}", "")
    table.add_row("tracks (max, without / with)",
                  f"{figures['tracks_max']['without']} / {figures['tracks_max']['with']}", f"{args.emitters}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
