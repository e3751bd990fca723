"""A full disk, for real: a 3 MiB tmpfs holding the outbox, the status file, and a filler that takes the rest.

Needs root (``mount``); the tmpfs is unmounted in teardown whatever happens.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import re
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import BufferConfig
from agent.events import parse_event
from agent.localbroker import Broker, example_site_for
from agent.outbox import OUTBOX_FILE, Outbox, free_bytes, summarize
from tests.helpers.agent import SANTI, StderrLines, santi_run
from tests.helpers.hq_acks import AckingSubscriber
from tests.helpers.outbox_writer import events
from tests.helpers.recording import recording
from tests.helpers.wait import wait_until

RESERVE = 512 * 1024
SMALL = BufferConfig(reserve_bytes=RESERVE)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs mounted for this test only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write a filler file until the filesystem says ENOSPC; returns it (unlink it to give the space back)."""
    filler = folder / "filler"
    chunk = b"\0" * 4096
    code = 0
    with filler.open("wb", buffering=0) as out:
        while not code:
            try:
                out.write(chunk)
            except OSError as exc:
                code = exc.errno or -1
    assert code == errno.ENOSPC
    assert free_bytes(folder) < 4096
    return filler


def keep_full(folder: Path, stop: threading.Event) -> None:
    """Take every byte that becomes free on ``folder`` until ``stop`` (a log that keeps growing)."""
    chunk = b"\0" * 1024
    with (folder / "hog").open("ab", buffering=0) as out:
        while not stop.is_set():
            try:
                out.write(chunk)
            except OSError:
                stop.wait(0.005)


def fill_outbox(path: Path, bounds: BufferConfig = SMALL) -> int:
    """Append 100-event batches until the reserve starts evicting; returns how many were appended."""
    appended = 0
    with Outbox.open(path, bounds) as outbox:
        while outbox.evicted_total == 0:
            # The example site's own ids: an outbox holds its agent's events, and HQ acknowledges them there.
            batch = [e.model_copy(update={"store_id": "fishmonger-01", "agent_id": "pi-backoffice"})
                     for e in events(100, start=appended)]
            outbox.append_many(batch)
            appended += 100
    return appended


def site_on(tmp_path: Path, port: int, state: Path) -> Path:
    """The example site with its state on ``state`` and a 512 KiB reserve (the default is for real disks)."""
    site = example_site_for(tmp_path, port)
    text = site.read_text(encoding="utf-8")
    text = text.replace(f'state_dir = "{tmp_path / "state"}"', f'state_dir = "{state}"')
    site.write_text(text.replace("max_age_days = 14\n", f"max_age_days = 14\nreserve_bytes = {RESERVE}\n"),
                    encoding="utf-8")
    return site


def test_outbox_keeps_the_reserve_free_by_evicting_oldest_first(tmpfs: Path) -> None:
    path = tmpfs / "state" / OUTBOX_FILE
    appended = 0
    with Outbox.open(path, SMALL) as outbox:
        for _ in range(80):  # ~3.2 MB of events: more than the whole filesystem
            outbox.append_many(events(100, start=appended))
            appended += 100
            assert free_bytes(tmpfs) > RESERVE // 2
        rows = outbox.peek(0, 100_000)
        assert outbox.evicted_total > 0
        assert outbox.depth() + outbox.evicted_total == appended
        assert [r.seq for r in rows] == list(range(outbox.evicted_total + 1, appended + 1))
        assert outbox.take_evicted_since_last() == outbox.evicted_total
    assert path.with_name(OUTBOX_FILE + ".spare").stat().st_size == RESERVE // 4


def test_acks_on_a_full_disk_delete_and_make_room(tmpfs: Path) -> None:
    """Another program took the last byte: a big ack still deletes (spare released, chunked), then appends fit."""
    path = tmpfs / "state" / OUTBOX_FILE
    fill_outbox(path)
    fill(tmpfs)
    with Outbox.open(path, SMALL) as outbox:
        rows = outbox.peek(0, 3000)
        depth = outbox.depth()
        assert outbox.ack(outbox.epoch, rows[-1].seq) == 3000
        assert outbox.depth() == depth - 3000
        stored = outbox.append_many(events(100, start=100_000))
        assert outbox.peek(stored[0].seq - 1, 1)[0].seq == stored[0].seq
    with Outbox.open(path, SMALL) as reopened:
        assert reopened.depth() == depth - 3000 + 100


def test_agent_survives_the_disk_filling_up_under_it(broker: Broker, tmp_path: Path, tmpfs: Path) -> None:
    """Something else takes every free byte for a while: one-line errors, no crash, storing again after."""
    state = tmpfs / "state"
    site = site_on(tmp_path, broker.port, state)
    obs_path, taps_path = recording(tmp_path)
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscriber = AckingSubscriber(broker.host, broker.port, got)  # HQ's part: its acks free the rows
    agent = santi_run(site, "--replay", str(obs_path), "--taps", str(taps_path), "--speed", "6", verbose=True)
    lines = StderrLines(agent)
    stop = threading.Event()
    hog = threading.Thread(target=keep_full, args=(tmpfs, stop), daemon=True)
    try:
        wait_until((state / "status.json").exists, 20, "the agent's first status file")
        hog.start()
        lines.wait_for(lambda line: "status file" in line and "not written" in line, 30,
                       "the status file failing on the full disk")
        stop.set()
        hog.join(timeout=5)
        (tmpfs / "hog").unlink()
        agent.wait(timeout=60)
    finally:
        stop.set()
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        subscriber.close()
    stderr = lines.text()
    assert agent.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    failed = [line for line in stderr.splitlines() if "status file" in line and "not written" in line]
    assert len(failed) == 1, "one line per failure, not one per attempt"
    assert "No space left on device" in failed[0]
    published = {parse_event(payload).seq for topic, payload in list(got.queue) if "/events/" in topic}
    summary = summarize(state / OUTBOX_FILE)
    with sqlite3.connect(f"file:{state / OUTBOX_FILE}?mode=ro", uri=True) as db:
        left = {row[0] for row in db.execute("SELECT seq FROM outbox")}
    missing = set(range(1, summary.last_seq + 1)) - published - left
    assert len(missing) <= summary.stats.evicted_total, "a stored event is delivered, waiting, or counted evicted"
    lost = re.findall(r'msg="events not stored".* lost_total=(\d+)', stderr)
    if lost:  # the disk was full when a window's events came: said, counted, then storing again
        assert 'msg="outbox storing again"' in stderr
    final = json.loads((state / "status.json").read_text(encoding="utf-8"))
    assert final["uplink"]["state"] == "stopped", "the status file is written again once there is room"
    assert not list(state.glob("*.tmp")), "a failed status write leaves no half-written file behind"


def test_restart_on_a_full_disk_comes_up_sends_and_frees_space(
    broker: Broker, tmp_path: Path, tmpfs: Path
) -> None:
    state = tmpfs / "state"
    waiting = fill_outbox(state / OUTBOX_FILE)
    filler = fill(tmpfs)
    site = site_on(tmp_path, broker.port, state)
    obs_path, taps_path = recording(tmp_path)
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscriber = AckingSubscriber(broker.host, broker.port, got)  # HQ's part: its acks free the rows
    try:
        result = subprocess.run(
            [str(SANTI), "-v", "run", "--config", str(site), "--replay", str(obs_path), "--taps", str(taps_path),
             "--speed", "8"],
            capture_output=True, text=True, timeout=90, env={**os.environ, "NOTIFY_SOCKET": ""}, check=False,
        )
    finally:
        subscriber.close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary = summarize(state / OUTBOX_FILE)
    published = {parse_event(payload).seq for topic, payload in list(got.queue) if "/events/" in topic}
    with sqlite3.connect(f"file:{state / OUTBOX_FILE}?mode=ro", uri=True) as db:
        left = {row[0] for row in db.execute("SELECT seq FROM outbox")}
        free_pages = db.execute("PRAGMA freelist_count").fetchone()[0]
    evicted = summary.stats.evicted_total
    # Nothing the bounds did not evict went missing (a row may also be published, then evicted unacknowledged).
    assert set(range(evicted + 1, summary.last_seq + 1)) <= published | left
    assert summary.last_seq > waiting, "the restarted agent stored new events"
    assert summary.stats.depth == len(left) < 50, "what the broker acknowledged was deleted"
    assert free_pages * 4096 > RESERVE, "the deleted rows' pages are free for the next events"
    filler.unlink()


def test_drain_on_a_full_disk_sends_deletes_and_says_why_it_stopped(
    broker: Broker, tmp_path: Path, tmpfs: Path
) -> None:
    state = tmpfs / "state"
    fill_outbox(state / OUTBOX_FILE)
    fill(tmpfs)
    before = summarize(state / OUTBOX_FILE).stats.depth
    site = site_on(tmp_path, broker.port, state)
    hq = AckingSubscriber(broker.host, broker.port, queue.Queue())  # HQ's part: its acks free the rows
    try:
        result = subprocess.run([str(SANTI), "buffer", "drain", str(site), "--json", "--timeout", "30"],
                                capture_output=True, text=True, timeout=90, check=False)
    finally:
        hq.close()
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    outcome = json.loads(result.stdout)
    assert outcome["sent"] == before
    assert outcome["acknowledged"] == before
    assert outcome["left"] == 0
    assert outcome["stopped"] == "all acknowledged"
    assert summarize(state / OUTBOX_FILE).stats.depth == 0
