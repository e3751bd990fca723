"""``kill -9`` the writing process at random moments: nothing it was told was stored is lost.

A child (tests/helpers/outbox_writer.py) appends and acknowledges as fast as it can and
prints every ``seq``/``event_id`` once ``append`` returned, and every acked
``seq`` once ``ack`` returned. The parent SIGKILLs it, reopens the file and
checks: every printed event is there (unless printed as acked), nothing acked
came back, ``seq`` has no gap, and the next run never reuses a ``seq``.

A SIGKILL leaves the WAL in the OS page cache, so this test alone cannot
tell ``synchronous=FULL`` from ``NORMAL`` (it passes with both); the power-cut
promise is why appends use FULL (see agent/outbox.py).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.config import BufferConfig
from agent.outbox import Outbox

ROOT = Path(__file__).resolve().parent.parent


Report = tuple[list[tuple[int, str]], set[int], set[int]]


def _crash_round(path: Path, seed: int, rng: random.Random) -> Report:
    """Run the writer until it printed a random number of lines, SIGKILL it, return what it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.outbox_writer", "write", str(path), str(seed)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    target = rng.randint(1, 600)
    lines: list[bytes] = []
    try:
        while len(lines) < target:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"writer died: {proc.stderr.read().decode() if proc.stderr else ''}")
            lines.append(line)
        time.sleep(rng.uniform(0.0, 0.005))
        os.kill(proc.pid, signal.SIGKILL)
        lines.extend(proc.stdout.readlines())
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    stored: list[tuple[int, str]] = []
    acked: set[int] = set()
    acking: set[int] = set()
    for raw in lines:
        if not raw.endswith(b"\n"):
            continue  # cut mid-line by the kill: not a complete report
        kind, *fields = raw.decode().split()
        if kind == "stored":
            stored.append((int(fields[0]), fields[1]))
        else:
            (acked if kind == "acked" else acking).update(int(f) for f in fields)
    return stored, acked, acking


def _crash_loop(tmp_path: Path, rounds: int, seed: int) -> None:
    print(f"crash loop seed={seed} rounds={rounds}")
    rng = random.Random(seed)
    path = tmp_path / "outbox.sqlite"
    told_stored: dict[int, str] = {}
    told_acked: set[int] = set()
    last_seq = 0
    for round_no in range(rounds):
        stored, acked, acking = _crash_round(path, seed * 1000 + round_no, rng)
        assert stored, "the writer reported nothing before it was killed"
        assert stored[0][0] == last_seq + 1, "a restart must continue seq right after the last one"
        for seq, event_id in stored:
            assert seq not in told_stored, f"seq {seq} assigned twice"
            told_stored[seq] = event_id
        told_acked |= acked
        maybe_acked = acking - acked  # killed between ack() and its report: either state is right
        with Outbox.open(path, BufferConfig()) as outbox:
            assert outbox.recovered is None
            rows = {row.seq: row.event_id for row in outbox.peek(0, 10_000_000)}
            last_seq = outbox.last_seq
            assert outbox.depth() == len(rows)
        missing = [s for s, e in told_stored.items()
                   if s not in told_acked and s not in maybe_acked and rows.get(s) != e]
        assert not missing, f"round {round_no}: acknowledged events lost: {missing[:10]}"
        assert not told_acked & rows.keys(), "an acknowledged (deleted) row came back"
        assert last_seq >= max(told_stored)
        told_acked |= maybe_acked - rows.keys()
        seqs = sorted(rows)
        # Acks take the oldest rows, so what is left must be one unbroken run up to last_seq.
        assert seqs == list(range(seqs[0], last_seq + 1)) if seqs else True


def test_kill_9_during_appends_loses_nothing_acknowledged(tmp_path: Path) -> None:
    _crash_loop(tmp_path, rounds=3, seed=7)


@pytest.mark.slow
def test_kill_9_many_times(tmp_path: Path) -> None:
    _crash_loop(tmp_path, rounds=25, seed=11)
