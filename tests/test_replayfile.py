"""The replay format: bad lines are reported by number and never stop the reader."""

from __future__ import annotations

import io
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.observations import CardTap, Observation
from agent.replayfile import RecordReader, read_records, write_records


def _obs(i: int) -> Observation:
    return Observation(ts=1_700_000_000 + i, receiver_id="rx1", emitter_id=f"e{i % 3}", tech="ble",
                       rssi_dbm=-60 - i % 20)


def test_write_then_read(tmp_path: Path) -> None:
    path = tmp_path / "observations.jsonl"
    records = [_obs(i) for i in range(100)]
    assert write_records(path, records) == 100
    back, report = read_records(path, Observation)
    assert back == records
    assert report.good == 100
    assert report.bad == []


def test_bad_lines_are_numbered_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "taps.jsonl"
    good = CardTap(ts=1.0, reader_id="till-1", card="L123").model_dump_json()
    path.write_text("\n".join([
        good,
        "{not json",
        "",
        json.dumps({"ts": 2.0, "reader_id": "till-1"}),
        good,
        json.dumps({"ts": "yesterday", "reader_id": "t", "card": "c"}),
        "\xff\xfe garbage",
        good,
    ]) + "\n")
    records, report = read_records(path, CardTap)
    assert len(records) == 3
    assert [bad.line for bad in report.bad] == [2, 4, 6, 7]
    assert "card" in report.bad[1].reason
    assert report.bad[2].reason.startswith("ts:")


def test_bad_lines_beyond_the_kept_ones_are_still_counted() -> None:
    data = b"garbage\n" * 50 + _obs(1).model_dump_json().encode() + b"\n"
    reader = RecordReader(io.BytesIO(data), Observation, keep_bad=5)
    assert len(list(reader)) == 1
    assert reader.bad_total == 50
    assert len(reader.report.bad) == 5


@settings(max_examples=150, derandomize=True)
@given(st.lists(st.one_of(st.binary(max_size=200), st.just(b"{}"), st.just(b'{"ts": 1}')), max_size=20),
       st.lists(st.integers(0, 1000), max_size=20))
def test_random_garbage_never_stops_the_reader(garbage: list[bytes], keep: list[int]) -> None:
    good_lines = [_obs(i).model_dump_json().encode() for i in keep]
    lines: list[bytes] = []
    expected_bad: list[int] = []
    for index in range(max(len(garbage), len(good_lines))):
        if index < len(garbage):
            chunk = garbage[index].replace(b"\n", b" ").replace(b"\r", b" ")
            lines.append(chunk)
            if chunk.strip():
                expected_bad.append(len(lines))
        if index < len(good_lines):
            lines.append(good_lines[index])
    reader = RecordReader(io.BytesIO(b"\n".join(lines) + b"\n"), Observation)
    records = list(reader)
    assert records == [_obs(i) for i in keep]
    assert [bad.line for bad in reader.report.bad] == expected_bad
