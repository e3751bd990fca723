"""`santi run` as systemd runs it: SIGHUP with a broken config, SIGTERM in the middle of a burst."""

from __future__ import annotations

import queue
import signal
import sqlite3
from pathlib import Path

from agent.events import Event
from agent.localbroker import Broker, example_site_for
from tests.helpers.agent import StderrLines, santi_run
from tests.helpers.mqtt import events_in, subscribe
from tests.helpers.recording import recording
from tests.helpers.wait import wait_until


def test_sighup_with_broken_config_keeps_running_and_sigterm_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    site_path = example_site_for(tmp_path, broker.port)
    obs_path, taps_path = recording(tmp_path)
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscriber = subscribe(broker, got)
    published: list[Event] = []
    state = tmp_path / "state"
    proc = santi_run(site_path, "--state-dir", str(state), "--replay", str(obs_path), "--taps", str(taps_path),
                     "--speed", "4", verbose=True)
    stderr = StderrLines(proc)
    try:
        wait_until((state / "status.json").exists, 20, "the agent's first status file")
        good = site_path.read_text()
        site_path.write_text(good.replace("x = 29.7", "x = 35.0"))
        proc.send_signal(signal.SIGHUP)
        stderr.wait_for(lambda line: "reload refused" in line, 10, "the broken config's reload refused")
        assert proc.poll() is None, "a broken config on SIGHUP must not stop the agent"
        site_path.write_text(good)
        wait_until(lambda: any(e.type == "visit.started" for e in events_in(got, published)), 20,
                   "a visit under way, to stop in the middle of")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = stderr.text()
    assert proc.returncode == 0, log[-2000:]
    refused = [line for line in log.splitlines() if "reload refused" in line]
    assert len(refused) == 1
    assert "receivers[3].x" in refused[0]
    assert "outside the store outline" in refused[0]
    with sqlite3.connect(state / "outbox.sqlite") as db:
        left = [row[0] for row in db.execute("SELECT seq FROM outbox ORDER BY seq")]
        last_seq = db.execute("SELECT last_seq FROM state").fetchone()[0]

    def delivered_or_kept() -> list[int]:
        return sorted({e.seq for e in events_in(got, published)} | set(left))

    # What the broker PUBACKed before the agent exited reaches the subscriber a moment later.
    wait_until(lambda: delivered_or_kept() == list(range(1, last_seq + 1)), 10, "every stored event delivered or kept")
    subscriber.disconnect()
    subscriber.loop_stop()
    final = [e for e in published if e.type == "agent.status"]
    assert final
    assert final[-1].state == "draining" or left
    started = {e.subject for e in published if e.type == "visit.started"}
    ended = {e.subject for e in published if e.type == "visit.ended"}
    assert started
    assert started == ended or left, "SIGTERM closes every open visit"
