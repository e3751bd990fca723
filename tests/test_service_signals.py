"""`santi run` as systemd runs it: SIGHUP with a broken config, SIGTERM in the middle of a burst."""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from agent.events import parse_event
from agent.localbroker import Broker, example_site_for
from tests.test_service import _recording, _subscribe

SANTI = Path(sys.executable).parent / "santi"


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sighup_with_broken_config_keeps_running_and_sigterm_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    site_path = example_site_for(tmp_path, broker.port)
    obs_path, taps_path = _recording(tmp_path)
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscriber = _subscribe(broker, got)
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [str(SANTI), "-v", "run", "--config", str(site_path), "--state-dir", str(state),
         "--replay", str(obs_path), "--taps", str(taps_path), "--speed", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "NOTIFY_SOCKET": ""},
    )
    try:
        _wait_for(state / "status.json", 20)
        good = site_path.read_text()
        site_path.write_text(good.replace("x = 29.7", "x = 35.0"))
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert proc.poll() is None, "a broken config on SIGHUP must not stop the agent"
        site_path.write_text(good)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-2000:]
    refused = [line for line in stderr.splitlines() if "reload refused" in line]
    assert len(refused) == 1
    assert "receivers[3].x" in refused[0]
    assert "outside the store outline" in refused[0]
    time.sleep(1.0)
    subscriber.disconnect()
    subscriber.loop_stop()
    published = []
    while not got.empty():
        topic, payload = got.get()
        if "/events/" in topic:
            published.append(parse_event(payload))
    with sqlite3.connect(state / "outbox.sqlite") as db:
        left = [row[0] for row in db.execute("SELECT seq FROM outbox ORDER BY seq")]
        last_seq = db.execute("SELECT last_seq FROM state").fetchone()[0]
    seqs = sorted({e.seq for e in published} | set(left))
    assert seqs == list(range(1, last_seq + 1)), "every stored event is either delivered or still in the outbox"
    final = [e for e in published if e.type == "agent.status"]
    assert final
    assert final[-1].state == "draining" or left
    started = {e.subject for e in published if e.type == "visit.started"}
    ended = {e.subject for e in published if e.type == "visit.ended"}
    assert started
    assert started == ended or left, "SIGTERM closes every open visit"
