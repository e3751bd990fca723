"""A hostile replay file (issue 15, item 10): raw MACs, clock jumps, huge lines, floods of bad lines.

``santi run --replay`` as a subprocess against a real mosquitto for the
whole path (nothing waited for, no raw MAC at the broker, every drop
counted by reason and shown by ``santi status``); the reader alone for
memory and log volume.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import subprocess
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import cli
from agent.localbroker import Broker, example_site_for
from agent.observations import Observation
from agent.replayfile import MAX_JUMP_S, MAX_LINE_BYTES, RecordReader, skip_time_jumps
from tests.helpers.agent import SANTI
from tests.helpers.mqtt import subscribe
from tests.helpers.recording import SHOPPER_A, T0, recording

RAW_MAC = "AA:BB:CC:DD:EE:FF"
YEAR_S = 365 * 86_400.0


def _line(ts: float, emitter: str = SHOPPER_A, receiver: str = "node-fish", rssi: float = -70.0) -> str:
    return json.dumps({"ts": ts, "receiver_id": receiver, "emitter_id": emitter, "tech": "ble", "rssi_dbm": rssi})


def _hostile_recording(tmp_path: Path) -> tuple[Path, Path]:
    obs_path, taps_path = recording(tmp_path)
    lines = obs_path.read_text(encoding="utf-8").splitlines()
    middle = len(lines) // 2
    hostile = (
        [_line(1.0)]  # a Pi without its RTC, before NTP
        + lines[:middle]
        + [_line(T0 + 20.0 + YEAR_S), _line(T0 - 30 * 86_400.0)]  # a year ahead, a month back
        + [_line(T0 + 20.0 + i * 0.1, emitter=RAW_MAC, rssi=-50.0) for i in range(10)]
        + [_line(T0 + 21.0, receiver="rx-ghost"), _line(T0 + 21.0, rssi=42.0), "{not json", "x" * 200_000]
        + lines[middle:]
    )
    obs_path.write_text("\n".join(hostile) + "\n", encoding="utf-8")
    return obs_path, taps_path


def test_santi_run_replays_a_hostile_file_without_waiting_or_leaking(broker: Broker, tmp_path: Path) -> None:
    site_path = example_site_for(tmp_path, broker.port)
    obs_path, taps_path = _hostile_recording(tmp_path)
    state = tmp_path / "state"
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscriber = subscribe(broker, got)
    try:
        proc = subprocess.run(
            [str(SANTI), "run", "--config", str(site_path), "--state-dir", str(state),
             "--replay", str(obs_path), "--taps", str(taps_path), "--speed", "20"],
            capture_output=True, text=True, timeout=90, env={**os.environ, "NOTIFY_SOCKET": ""}, check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        messages: list[bytes] = []
        while True:
            try:
                messages.append(got.get(timeout=2.0)[1])
            except queue.Empty:
                break
    finally:
        subscriber.disconnect()
        subscriber.loop_stop()
    events = [json.loads(payload) for payload in messages if payload.startswith(b"{")]
    assert any(event.get("type") == "visit.started" for event in events)
    assert not any(RAW_MAC.encode() in payload for payload in messages)
    assert all(event["ts"] >= "2025" for event in events if "ts" in event)  # nothing from 1970
    status = json.loads((state / "status.json").read_text())
    assert status["sources"]["replay"]["dropped"] == {
        "time_jump": 3, "not_pseudonymised": 10, "impossible_rssi": 1, "not_json": 1, "line_too_long": 1}
    assert status["sources"]["locator"]["dropped"] == {"unknown_receiver": 1}
    text = CliRunner().invoke(cli, ["status", "--state-dir", str(state)], env={"COLUMNS": "250"})
    assert "not_pseudonymised 10" in text.output
    assert "unknown_receiver 1" in text.output


def test_jumps_are_judged_by_their_neighbours_and_real_gaps_kept() -> None:
    base = 1_763_900_000.0
    times = [1.0] + [base + i for i in range(20)] + [base + 20 + YEAR_S] + [base + 21 + i for i in range(20)]
    times += [base + 7200 + i for i in range(20)]  # the store reopens two hours later: a gap, not a jump
    jumps: list[float] = []
    records = [Observation(ts=ts, receiver_id="r", emitter_id="a" * 24, tech="ble", rssi_dbm=-60.0) for ts in times]
    kept = [r.ts for r in skip_time_jumps(records, lambda record, _median: jumps.append(record.ts))]
    assert jumps == [1.0, base + 20 + YEAR_S]
    assert kept == [t for t in times if t not in jumps]


def test_a_100_mb_line_costs_one_buffer_not_the_line(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    good = _line(T0).encode()
    with path.open("wb") as handle:
        handle.write(good + b"\n")
        for _ in range(100):
            handle.write(b"y" * 1_000_000)
        handle.write(b"\n" + good + b"\n")
        for _ in range(10):
            handle.write(b"z" * 1_000_000)  # and one that never ends
    tracemalloc.start()
    try:
        reader = RecordReader(path, Observation)
        records = list(reader)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(records) == 2
    assert reader.bad_by_key == {"line_too_long": 2}
    assert peak < 4 * MAX_LINE_BYTES


def test_408k_bad_lines_log_a_handful_of_warnings(caplog: pytest.LogCaptureFixture) -> None:
    data = b"garbage\n" * 400_000 + b'{"ts": "x"}\n' * 8_000 + _line(T0).encode() + b"\n"
    with caplog.at_level(logging.WARNING, logger="agent.replayfile"):
        reader = RecordReader(io.BytesIO(data), Observation)
        assert len(list(reader)) == 1
    assert reader.bad_total == 408_000
    assert reader.bad_by_key == {"not_json": 400_000, "invalid_record": 8_000}
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 2 <= len(warnings) <= 5  # one per reason (per minute), then the summary
    assert warnings[-1].bad == {"not_json": 400_000, "invalid_record": 8_000}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=MAX_JUMP_S / 4), max_size=60),
       st.floats(min_value=0.0, max_value=1e9))
def test_a_file_whose_clock_runs_steadily_loses_nothing(steps: list[float], start: float) -> None:
    times = [start + sum(steps[: i + 1]) for i in range(len(steps))]
    records = [Observation(ts=ts, receiver_id="r", emitter_id="a" * 24, tech="ble", rssi_dbm=-60.0) for ts in times]
    jumps: list[float] = []
    assert list(skip_time_jumps(records, lambda record, _median: jumps.append(record.ts))) == records
    assert jumps == []


@pytest.mark.parametrize(("text", "reason"), [
    ("", "no observation in the file (it is empty)"),
    ('{"ts": 1}\nnot json\n', "no observation in the file; "),
])
def test_a_replay_with_nothing_to_replay_is_one_line_and_exit_2(tmp_path: Path, text: str, reason: str) -> None:
    replay = tmp_path / "o.jsonl"
    replay.write_text(text)
    site = example_site_for(tmp_path, 1)
    result = CliRunner().invoke(cli, ["run", "--config", str(site), "--replay", str(replay)])
    assert result.exit_code == 2, result.output
    last = result.stderr.splitlines()[-1]  # the lines before are the reader's logged drops
    assert last.startswith(f"santi: {replay}: {reason}")
    assert text == "" or last.endswith("line 1: receiver_id: Field required (bad lines: 2)")
