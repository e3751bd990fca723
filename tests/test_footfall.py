"""The counting stage: probe receptions of a replay in, occupancy and footfall counts out, naming no one."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import queue
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import ArrayLike
from rich.console import Console

from agent.cli.footfall_report import SHOWN_SAMPLES, print_beside_truth
from agent.config import ConfigError, FootfallConfig, load_site
from agent.events import Event, FootfallCounted, OccupancySampled
from agent.footfall import PENDING_ROWS, FootfallStage
from agent.localbroker import Broker, example_site_for
from agent.observations import Observation, ProbeFields
from agent.replayclock import ReplayClock
from agent.replayfile import read_records, write_records
from agent.service import Service
from agent.site_arrays import occupancy_outline, site_arrays
from agent.sources.replay import ReplaySource
from agent.statusfile import read_status
from positioning import occupancy
from positioning.occupancy import WALL_LOSS_DB
from positioning.pathloss import rssi_at_distance, slant_distance
from tests.helpers.footfall import END, HOUR, SIGNATURES, START, Recording, recording
from tests.helpers.hq_acks import AckingSubscriber


def replay_through_stage(site_path: Path, rec: Recording, tmp_path: Path,
                         config: FootfallConfig) -> tuple[FootfallStage, list[Event]]:
    """The recording written as a replay file and read back, fed to the stage, stepped every second of it."""
    path = tmp_path / "probes.jsonl"
    write_records(path, rec.observations)
    stage = FootfallStage(load_site(site_path), config)
    events: list[Event] = []
    t = START
    records, report = read_records(path, Observation)
    assert report.bad_count == 0
    for record in records:
        while t < record.ts:
            events.extend(stage.step(t, 0.0))
            t += 1.0
        stage.add(record)
    while t <= END:
        events.extend(stage.step(t, 0.0))
        t += 1.0
    return stage, events


@pytest.fixture
def site_path(tmp_path: Path) -> Path:
    return example_site_for(tmp_path, 1883)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_counts_from_a_short_replay_follow_the_truth(site_path: Path, tmp_path: Path, seed: int) -> None:
    rec = recording(seed)
    stage, events = replay_through_stage(site_path, rec, tmp_path, FootfallConfig())
    samples = [e for e in events if isinstance(e, OccupancySampled)]
    hours = [e for e in events if isinstance(e, FootfallCounted)]
    # One sample a minute from the first whole minute after the start; each hour once it has passed by the lead,
    # the first one from where the stage started.
    assert len(samples) == int((END - START) // 60)
    assert [(e.interval_start.timestamp(), e.interval_end.timestamp()) for e in hours] == [
        (START, HOUR), (HOUR, HOUR + 3600.0)]
    counted = [(e.count, rec.inside(e.interval_end.timestamp())) for e in samples
               if e.interval_end.timestamp() >= START + 1200.0]  # fixtures learnt by then (still for 15 min)
    errors = np.array([abs(c - truth) for c, truth in counted])
    mean_inside = np.mean([truth for _, truth in counted])
    assert mean_inside > 5.0
    assert errors.mean() <= 0.1 * mean_inside, (errors.mean(), mean_inside)
    truth = rec.entries(HOUR, HOUR + 3600.0)
    assert abs(hours[1].entries - truth) <= 0.15 * truth, (hours[1].entries, truth)
    assert stage.stats.last is not None
    assert stage.stats.last.stationary >= 1  # the PC
    assert stage.stats.dropped == {}


def test_no_device_identifier_leaves_in_the_events(site_path: Path, tmp_path: Path) -> None:
    rec = recording(4)
    _, events = replay_through_stage(site_path, rec, tmp_path, FootfallConfig())
    assert events
    keys = {o.emitter_id for o in rec.observations} | set(SIGNATURES)
    allowed = {"schema", "event_id", "seq", "store_id", "agent_id", "epoch", "ts", "subject", "type",
               "interval_start", "interval_end", "method", "sector_id", "count", "count_sd", "entries", "entries_sd"}
    for event in events:
        wire = event.to_json()
        assert not any(key in wire for key in keys)
        assert set(json.loads(wire)) <= allowed
        assert event.subject == event.agent_id == "pi-backoffice"


def test_a_full_window_evicts_the_oldest_and_an_unknown_receiver_is_a_counted_drop(site_path: Path) -> None:
    stage = FootfallStage(load_site(site_path), FootfallConfig(max_probes=5000))
    probe = ProbeFields(sequence=1, signature=SIGNATURES[0], randomised=True)
    for i in range(6000):  # more than PENDING_ROWS: some wait packed, some as tuples
        stage.add(Observation(ts=START + i, receiver_id="pi-wifi", emitter_id=f"{i:024x}", tech="wifi",
                              rssi_dbm=-60.0, probe=probe))
    stage.add(Observation(ts=START, receiver_id="nowhere", emitter_id="f" * 24, tech="wifi", rssi_dbm=-60.0))
    stage.add(Observation(ts=START, receiver_id="pi-wifi", emitter_id="e" * 24, tech="ble", rssi_dbm=-60.0))
    assert stage.stats.accepted == 6000
    assert stage.stats.dropped == {"unknown_receiver": 1}
    assert stage.status(0.0)["held"] == 6000  # at most PENDING_ROWS beyond the bound until the next fold
    stage.step(START + 6000.0, 0.0)
    stage.step(START + 6060.0, 0.0)  # the first sample folds them in: the oldest 1,000 go
    assert stage.stats.dropped == {"unknown_receiver": 1, "window_full": 1000}
    assert (stage.stats.held, stage.status(0.0)["held"]) == (5000, 5000)
    stage.step(START + 8300.0, 0.0)  # receptions older than the window (two hours) go too
    assert stage.stats.held == 5000 - 100
    flood = FootfallStage(load_site(site_path), FootfallConfig(max_probes=1000))
    for i in range(3 * PENDING_ROWS):
        flood.add(Observation(ts=START + i, receiver_id="pi-wifi", emitter_id=f"{i:024x}", tech="wifi",
                              rssi_dbm=-60.0, probe=probe))
    assert flood.status(0.0)["held"] <= 1000 + PENDING_ROWS  # folded as it came, the newest kept
    assert flood.stats.dropped["window_full"] >= 2 * PENDING_ROWS - 1000


def test_the_footfall_section_is_checked_like_the_others(tmp_path: Path) -> None:
    site = load_site(example_site_for(tmp_path, 1883, extra="[footfall]\ninterval_s = 30\nlead_s = 60\n"))
    assert site.footfall == FootfallConfig(interval_s=30.0, lead_s=60.0)
    bad = example_site_for(tmp_path, 1883, extra="[footfall]\nintervall_s = 30\n")
    with pytest.raises(ConfigError, match=r"site.toml:\d+: footfall.intervall_s: unknown key"):
        load_site(bad)
    bad.write_text(bad.read_text().replace("intervall_s = 30", "lead_s = 900\nwindow_s = 600"))
    with pytest.raises(ConfigError, match=r"lead_s .* must be shorter than window_s"):
        load_site(bad)
    assert load_site(example_site_for(tmp_path, 1883)).footfall is None


def test_the_running_agent_emits_the_counts_and_reports_the_stage(broker: Broker, tmp_path: Path) -> None:
    rec = recording(5)
    site_path = example_site_for(tmp_path, broker.port, extra="[footfall]\ninterval_s = 10\nlead_s = 0\n")
    obs_path, taps_path = tmp_path / "obs.jsonl", tmp_path / "taps.jsonl"
    first = [o for o in rec.observations if o.ts < START + 240.0]
    write_records(obs_path, first)
    write_records(taps_path, [])
    got: list[Event] = []
    speed = 60.0
    clock = ReplayClock(START, speed)
    hq = AckingSubscriber(broker.host, broker.port, queue.Queue())
    service = Service(load_site(site_path), [ReplaySource(obs_path, taps_path, speed=speed)],
                      state_dir=tmp_path / "state", clock=clock, stop_when_sources_finish=True, time_scale=speed,
                      on_events=got.extend)
    try:
        clock.start()
        assert asyncio.run(service.run()) == 0
    finally:
        hq.close()
    samples = [e for e in got if isinstance(e, OccupancySampled)]
    assert len(samples) >= 10  # every 10 s of 4 store minutes, less the start-up and windows a loaded machine skips
    assert all(e.seq >= 1 and e.subject == "pi-backoffice" for e in samples)
    # Counted at shutdown: the part of the hour the agent saw, ending where its last count stands.
    closing = [e for e in got if isinstance(e, FootfallCounted)]
    assert len(closing) == 1
    assert START <= closing[0].interval_start.timestamp() <= samples[0].interval_end.timestamp()
    state = json.loads((tmp_path / "state" / "status.json").read_text())
    assert state["footfall"]["estimates"] >= len(samples)
    assert state["footfall"]["held"] == service.footfall.stats.accepted == sum(  # type: ignore[union-attr]
        1 for o in first if o.tech == "wifi")
    assert state["sources"]["footfall"]["dropped"] == {}
    line = read_status(tmp_path / "state", time.time()).footfall
    assert line is not None
    assert line.held == state["footfall"]["held"]
    assert f"{line.held:,} of 250,000 probes held (reaching back " in line.text()
    assert " inside at " in line.text()


def test_the_demo_prints_the_counts_beside_the_truth(site_path: Path, tmp_path: Path) -> None:
    rec = recording(7)
    _, events = replay_through_stage(site_path, rec, tmp_path, FootfallConfig())

    def inside_at(times: ArrayLike) -> np.ndarray:
        return np.array([float(rec.inside(t)) for t in np.asarray(times, dtype=float)])

    def entries_in(edges: ArrayLike) -> np.ndarray:
        e = np.asarray(edges, dtype=float)
        return np.array([float(rec.entries(a, b)) for a, b in itertools.pairwise(e)])

    out = io.StringIO()
    print_beside_truth(Console(file=out, width=100), events, inside_at, entries_in, START)
    text = out.getvalue()
    samples = [e for e in events if isinstance(e, OccupancySampled)]
    error = np.mean([abs(e.count - rec.inside(e.interval_end.timestamp())) for e in samples])
    assert f"occupancy over {len(samples)} samples: mean absolute error {error:.1f} persons" in text
    hour = next(e for e in events if isinstance(e, FootfallCounted) and e.interval_start.timestamp() == HOUR)
    assert (f"entries 10-70 min: counted {hour.entries:.0f} ± {hour.entries_sd:.0f}, "
            f"truth {rec.entries(HOUR, HOUR + 3600.0)}") in text
    assert text.count("\n│") <= SHOWN_SAMPLES + 1
    assert all(e.count_sd == 0 for e in samples)  # FootfallConfig() is uncalibrated: no spread is known
    assert "± 0.0" not in text
    assert "no spread given: the count is uncalibrated" in text
    empty = io.StringIO()
    print_beside_truth(Console(file=empty), [], inside_at, entries_in, START)
    assert "no occupancy or footfall counts" in empty.getvalue()


def test_linking_in_blocks_of_one_pair_finds_the_same_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eq. (30)'s pairs are checked a block at a time to bound memory; the block size changes nothing."""
    rec = recording(8)
    rows = [(o.ts, hash(o.emitter_id), hash(o.probe.signature) if o.probe else -1,
             o.probe.sequence if o.probe and o.probe.sequence is not None else -1, o.rssi_dbm,
             bool(o.probe and o.probe.randomised)) for o in rec.observations]
    t, mac, sig, seq, z, rnd = (np.array(column) for column in zip(*rows, strict=True))
    whole = occupancy.group_devices(t, mac, sig, seq, z, rnd)
    monkeypatch.setattr(occupancy, "_PAIRS_PER_BLOCK", 1)
    assert np.array_equal(occupancy.group_devices(t, mac, sig, seq, z, rnd), whole)
    assert whole.max() + 1 < len({o.emitter_id for o in rec.observations})  # some MACs were linked


def _greedy(a: np.ndarray, b: np.ndarray, dq: np.ndarray, dt: np.ndarray) -> list[tuple[int, int]]:
    """The one-to-one choice as a plain pass over the pairs in order: the reference."""
    used_a: set[int] = set()
    used_b: set[int] = set()
    chosen = []
    for i in np.lexsort((b, a, dt, dq)):
        if int(a[i]) not in used_a and int(b[i]) not in used_b:
            used_a.add(int(a[i]))
            used_b.add(int(b[i]))
            chosen.append((int(a[i]), int(b[i])))
    return chosen


@settings(max_examples=300, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(1, 4), st.integers(1, 3)),
                max_size=60, unique_by=lambda p: (p[0], p[1])))
def test_the_one_to_one_choice_in_rounds_is_the_greedy_pass(pairs: list[tuple[int, int, int, int]]) -> None:
    a, b, dq, dt = (np.array([p[k] for p in pairs], dtype=dtype)
                    for k, dtype in enumerate((np.intp, np.intp, np.int64, np.float64)))
    assert [tuple(link) for link in occupancy._one_to_one(a, b, dq, dt).tolist()] == _greedy(a, b, dq, dt)


def test_estimates_run_off_the_loop_and_shutdown_keeps_the_one_running(broker: Broker, tmp_path: Path) -> None:
    """A window of a crowd's receptions takes the estimate most of a second: the loop keeps stepping meanwhile,
    and a stop while an estimate runs still stores its count."""
    rec = recording(6)
    site_path = example_site_for(tmp_path, broker.port, extra="[footfall]\ninterval_s = 10\nlead_s = 0\n")
    obs_path, taps_path = tmp_path / "obs.jsonl", tmp_path / "taps.jsonl"
    write_records(obs_path, [o for o in rec.observations if o.ts < START + 240.0])
    write_records(taps_path, [])
    got: list[Event] = []
    speed = 60.0
    clock = ReplayClock(START, speed)
    service = Service(load_site(site_path), [ReplaySource(obs_path, taps_path, speed=speed)],
                      state_dir=tmp_path / "state", clock=clock, stop_when_sources_finish=True, time_scale=speed,
                      on_events=got.extend)
    stage = service.footfall
    assert stage is not None
    rng = np.random.default_rng(6)
    held = 100_000  # the hour before the replay: a crowd whose phones draw a new address every few bursts
    for ts, mac, sequence in zip(np.sort(rng.uniform(START - 3600.0, START, held)), rng.integers(0, held // 3, held),
                                 rng.integers(0, 4096, held), strict=True):
        stage.add(Observation(ts=float(ts), receiver_id="pi-wifi", emitter_id=f"{mac:024x}", tech="wifi",
                              rssi_dbm=float(rng.uniform(-90.0, -50.0)),
                              probe=ProbeFields(sequence=int(sequence), signature=SIGNATURES[mac % 3], randomised=True)))
    gaps: list[float] = []
    """Seconds between the heartbeat's wake-ups while an estimate ran."""
    windows_meanwhile: list[int] = []
    stopped_during: list[asyncio.Task[list[Event]]] = []

    async def heartbeat(run: asyncio.Task[int]) -> None:
        """Wakes every 5 ms; while an estimate runs, notes how long each wait really took and the windows stepped."""
        last, running, windows = time.monotonic(), None, 0
        while not run.done():
            await asyncio.sleep(0.005)
            now, task = time.monotonic(), service.counting
            if task is not None and task is running:
                gaps.append(now - last)
                windows_meanwhile[-1] = service.stats.windows - windows
            elif task is not None:
                running, windows = task, service.stats.windows
                windows_meanwhile.append(0)
                if len(windows_meanwhile) == 2:  # stop in the middle of the second estimate
                    stopped_during.append(task)
                    service.stop.set()
            last = now

    async def main() -> int:
        run = asyncio.create_task(service.run())
        await heartbeat(run)
        return await run

    clock.start()
    assert asyncio.run(main()) == 0
    assert stage.stats.cpu_s_last > 0.1, stage.stats.cpu_s_last  # each estimate is long enough to stall a loop
    assert len(windows_meanwhile) == 2
    assert windows_meanwhile[0] >= 2, windows_meanwhile  # the loop went on stepping windows meanwhile
    assert max(gaps) < 0.5 * stage.stats.cpu_s_last, (max(gaps), stage.stats.cpu_s_last)
    # The estimate running at the stop finished and its sample was stored; then the hour so far.
    (cut,) = stopped_during
    assert cut.done()
    assert not cut.cancelled()
    stored = {e.event_id for e in got}
    assert cut.result()
    assert all(e.event_id in stored for e in cut.result())
    samples = [e for e in got if isinstance(e, OccupancySampled)]
    hours = [e for e in got if isinstance(e, FootfallCounted)]
    assert len(samples) == 2
    assert len(hours) == 1
    assert len(samples) + len(hours) == stage.stats.estimates
    assert service.counting is None


WIFI_RECEIVERS = """
[[receivers]]
id = "wifi-front"
kind = "wifi"
x = 2.0
y = 1.0
z = 2.6
rssi_at_1m = -40.0
path_loss_exponent = 2.2

[[receivers]]
id = "wifi-back"
kind = "wifi"
x = 28.0
y = 18.0
z = 2.6
rssi_at_1m = -40.0
path_loss_exponent = 2.2
"""


def test_where_receivers_allow_the_stage_counts_per_sector_and_places_passers_outside(tmp_path: Path) -> None:
    """Three Wi-Fi receivers: phones standing in aisle 1 and the greengrocer's, a passer-by heard loud through the
    front; the sector samples split the store's count as the phones stand, and the passer is not in it."""
    site = load_site(example_site_for(tmp_path, 1883, extra="[footfall]\nlead_s = 0\n" + WIFI_RECEIVERS))
    assert site.footfall is not None
    stage = FootfallStage(site, site.footfall)
    arrays = site_arrays(site)
    rng = np.random.default_rng(3)
    spots = {"aisle-1": [(4.0, 6.0), (7.0, 9.0), (3.0, 3.0)], "greengrocer": [(26.0, 16.0)], "street": [(15.0, -3.0)]}
    wifi = [row for row, kind in enumerate(arrays.kinds) if kind == "wifi"]
    observations = []
    for n, (where, xy) in enumerate((w, p) for w, points in spots.items() for p in points):
        power = rssi_at_distance(slant_distance(np.array(xy), arrays.xyz[wifi], 1.2), arrays.rssi_at_1m[wifi],
                                 arrays.exponent[wifi]) - (WALL_LOSS_DB if where == "street" else 0.0)
        for t in np.arange(START, START + 600.0, 30.0):  # shorter than a fixture shows by (still_s)
            for row, level in zip(wifi, power, strict=True):
                observations.append(Observation(
                    ts=float(t), receiver_id=arrays.receiver_ids[row], emitter_id=f"{n:024x}", tech="wifi",
                    rssi_dbm=float(level + rng.normal(0.0, 1.0)),
                    probe=ProbeFields(sequence=int(t) % 4096, signature=SIGNATURES[0], randomised=False)))
    observations.sort(key=lambda o: o.ts)
    events: list[Event] = []
    t = START
    for observation in observations:
        while t < observation.ts:
            events.extend(stage.step(t, 0.0))
            t += 10.0
        stage.add(observation)
    events.extend(stage.step(START + 590.0, 0.0))
    store = [e for e in events if isinstance(e, OccupancySampled) and e.sector_id is None]
    sectors = [e for e in events if isinstance(e, OccupancySampled) and e.sector_id is not None]
    assert store
    assert store[-1].count == 4.0  # the four phones inside, not the passer-by
    last = {e.sector_id: e for e in sectors if e.interval_end == store[-1].interval_end}
    assert set(last) == {sector.id for sector in site.sectors}
    assert all(e.method == "probe_places" for e in last.values())
    assert sum(e.count for e in last.values()) == pytest.approx(store[-1].count)
    # Eq. (42): three phones placed in aisle 1, one at the greengrocer's, shrunk towards the floor areas.
    placed = np.array([3.0 if s.id == "aisle-1" else 1.0 if s.id == "greengrocer" else 0.0 for s in site.sectors])
    prior, area = stage.estimate_config.sector_prior_devices, occupancy_outline(site, WALL_LOSS_DB).area
    expected = 4.0 * (placed + prior * area) / (4.0 + prior)
    assert [last[s.id].count for s in site.sectors] == pytest.approx(expected.tolist())
    keys = {o.emitter_id for o in observations}
    assert not any(key in e.to_json() for e in events for key in keys)
