"""The replay source: time order, pacing by an injected clock, drops counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.observations import CardTap, Observation
from agent.replayfile import write_records
from agent.sources.base import Record
from agent.sources.replay import ReplaySource, reorder


class FakeTime:
    """A clock that only moves when the source sleeps."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


EMITTER = "0123456789abcdef01234567"


def obs(ts: float, emitter: str = EMITTER) -> Observation:
    return Observation(ts=ts, receiver_id="r1", emitter_id=emitter, tech="ble", rssi_dbm=-60.0)


def tap(ts: float) -> CardTap:
    return CardTap(ts=ts, reader_id="till-1", card="L-1")


def play(source: ReplaySource, stop: asyncio.Event | None = None) -> list[Record]:
    out: list[Record] = []
    asyncio.run(source.run(out.append, stop or asyncio.Event()))
    return out


def test_merges_observations_and_taps_in_time_order(tmp_path: Path) -> None:
    write_records(tmp_path / "observations.jsonl", [obs(10.0), obs(11.0), obs(13.0)])
    write_records(tmp_path / "taps.jsonl", [tap(10.5), tap(12.0)])
    fake = FakeTime()
    source = ReplaySource(
        tmp_path / "observations.jsonl",
        tmp_path / "taps.jsonl",
        speed=0,
        clock=fake.clock,
        sleep=fake.sleep,
    )
    out = play(source)
    assert [record.ts for record in out] == [10.0, 10.5, 11.0, 12.0, 13.0]
    assert [type(record).__name__ for record in out] == [
        "Observation",
        "CardTap",
        "Observation",
        "CardTap",
        "Observation",
    ]
    assert source.stats.accepted == 5
    assert source.finished
    assert fake.now == 1_700_000_000.0  # speed 0 never waits


@pytest.mark.parametrize("speed", [1.0, 10.0])
def test_paces_at_speed(tmp_path: Path, speed: float) -> None:
    write_records(tmp_path / "o.jsonl", [obs(100.0), obs(101.0), obs(104.0)])
    fake = FakeTime()
    start = fake.now
    emitted: list[float] = []
    source = ReplaySource(tmp_path / "o.jsonl", speed=speed, clock=fake.clock, sleep=fake.sleep)
    asyncio.run(source.run(lambda record: emitted.append(fake.now - start), asyncio.Event()))
    assert emitted == pytest.approx([0.0, 1.0 / speed, 4.0 / speed])
    assert max(fake.slept) <= 0.5  # waits come in slices so stop stays responsive


def test_retime_moves_the_first_record_to_now(tmp_path: Path) -> None:
    write_records(tmp_path / "o.jsonl", [obs(100.0), obs(102.0)])
    fake = FakeTime()
    start = fake.now
    out = play(
        ReplaySource(
            tmp_path / "o.jsonl", speed=2.0, retime=True, clock=fake.clock, sleep=fake.sleep
        )
    )
    assert [record.ts for record in out] == pytest.approx([start, start + 1.0])


def test_small_disorder_is_repaired_large_is_dropped(tmp_path: Path) -> None:
    write_records(
        tmp_path / "o.jsonl", [obs(2.0), obs(1.0), obs(3.0), obs(4.0), obs(5.0), obs(0.5)]
    )
    fake = FakeTime()
    source = ReplaySource(
        tmp_path / "o.jsonl", speed=0, window=2, clock=fake.clock, sleep=fake.sleep
    )
    out = play(source)
    assert [record.ts for record in out] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert source.stats.dropped["out_of_order"] == 1


def test_bad_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    good = obs(1.0).model_dump_json()
    path.write_text(
        f'{good}\nnot json\n{{"ts": 2}}\n{obs(3.0).model_dump_json()}\n', encoding="utf-8"
    )
    fake = FakeTime()
    source = ReplaySource(path, speed=0, clock=fake.clock, sleep=fake.sleep)
    out = play(source)
    assert [record.ts for record in out] == [1.0, 3.0]
    assert source.stats.dropped == {"not_json": 1, "invalid_record": 1}


def test_stop_ends_a_paced_replay(tmp_path: Path) -> None:
    write_records(tmp_path / "o.jsonl", [obs(0.0), obs(500.0)])
    fake = FakeTime()
    stop = asyncio.Event()
    out: list[Record] = []

    def sink(record: Record) -> None:
        out.append(record)
        stop.set()

    source = ReplaySource(tmp_path / "o.jsonl", speed=1.0, clock=fake.clock, sleep=fake.sleep)
    asyncio.run(source.run(sink, stop))
    assert len(out) == 1
    assert not source.finished


def test_missing_file_is_a_clear_down_state(tmp_path: Path) -> None:
    source = ReplaySource(tmp_path / "absent.jsonl", speed=0)
    assert play(source) == []
    assert source.stats.state == "down"
    assert source.stats.last_error is not None
    assert "absent.jsonl" in source.stats.last_error


def test_bad_speed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="speed"):
        ReplaySource(tmp_path / "o.jsonl", speed=-1.0)


@settings(derandomize=True, max_examples=200)
@given(
    st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), max_size=60),
    st.integers(min_value=1, max_value=80),
)
def test_reorder_sorts_within_window(times: list[float], window: int) -> None:
    records = [obs(ts) for ts in times]
    out = list(reorder(records, window))
    assert sorted(record.ts for record in out) == sorted(times)
    if window >= len(times):
        assert [record.ts for record in out] == sorted(times)
