"""The simulated crowd: phones without the app, fixed devices and passers-by, and the truth they are scored by."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import Point

from agent.config import load_site
from agent.observations import Observation
from agent.replayfile import read_records
from simulator.anonymous import MODELS, CrowdConfig, passer_paths
from simulator.channel import CHANNELS
from simulator.run import PhoneConfig, SimConfig, simulate
from simulator.shoppers import MobilityConfig
from simulator.store import Store
from simulator.truth import Truth, read_truth

SITE = Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml"
CROWD = CrowdConfig(anon_ble_share=0.6, passers=120, passer_probe_share=0.8, fixtures=3)
CONFIG = SimConfig(shoppers=40, minutes=20, seed=11, channel=CHANNELS["store"], phones=PhoneConfig(app_share=0.5),
                   mobility=MobilityConfig(dwell_s=(30.0, 240.0)), crowd=CROWD)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth, list[Observation]]:
    out = tmp_path_factory.mktemp("crowd")
    simulate(load_site(SITE), CONFIG, out)
    observations, report = read_records(out / "observations.jsonl", Observation)
    assert report.bad_count == 0
    return out, read_truth(out / "truth.jsonl"), observations


def test_truth_counts_people_inside_and_entries_consistently(run: tuple[Path, Truth, list[Observation]]) -> None:
    _, truth, _ = run
    assert truth.run is not None
    assert truth.report.bad_count == 0
    assert (len(truth.shoppers), len(truth.passers), len(truth.fixtures)) == (40, 120, 3)
    at = np.arange(truth.run.start_ts, truth.run.end_ts, 7.0)
    brute = np.array([sum(s.enter_ts <= x < s.leave_ts for s in truth.shoppers.values()) for x in at], dtype=float)
    assert np.array_equal(truth.people_inside(at), brute)
    edges = np.arange(truth.run.start_ts, truth.run.end_ts + 600.0, 600.0)
    assert truth.entries(edges).sum() == 40
    # Every recorded position of a shopper falls while the truth counts them inside.
    for sid, track in truth.tracks.items():
        shopper = truth.shoppers[sid]
        assert shopper.enter_ts <= track.ts[0]
        assert track.ts[-1] <= shopper.leave_ts
    assert truth.people_inside([truth.run.start_ts - 1.0, truth.run.end_ts + 1.0]).tolist() == [0.0, 0.0]


def test_wifi_probes_carry_their_keys_and_ble_does_not(run: tuple[Path, Truth, list[Observation]]) -> None:
    _, truth, observations = run
    assert all((o.probe is not None) == (o.tech == "wifi") for o in observations)
    signatures = {o.probe.signature for o in observations if o.probe is not None}
    # Eight phone models and the fixed devices' three, of which a 40-shopper day meets most.
    assert 5 <= len(signatures) <= len(MODELS)
    for o in observations:
        if o.probe is not None:
            raw = truth.emitters[o.emitter_id].raw_id
            assert o.probe.randomised == bool(int(raw[:2], 16) & 0x02)


def _phones(truth: Truth, observations: list[Observation]) -> dict[str, list[tuple[float, str, int]]]:
    """Each owner's probe frames heard: (ts, emitter, sequence), in time order, once per frame."""
    frames: dict[str, set[tuple[float, str, int]]] = defaultdict(set)
    for o in observations:
        if o.probe is not None and o.probe.sequence is not None:
            frames[truth.emitters[o.emitter_id].shopper_id].add((o.ts, o.emitter_id, o.probe.sequence))
    return {owner: sorted(items) for owner, items in frames.items()}


def test_macs_rotate_per_burst_or_every_few_minutes_and_the_sequence_runs_on(
        run: tuple[Path, Truth, list[Observation]]) -> None:
    _, truth, observations = run
    phones = {o: f for o, f in _phones(truth, observations).items() if o.startswith("S-")}
    per_burst = rotating = 0
    changes, steps = 0, []
    for frames in phones.values():
        macs = [e for _, e, _ in frames]
        distinct = len(dict.fromkeys(macs))
        bursts = 1 + sum(b[0] - a[0] > 5.0 for a, b in itertools.pairwise(frames))
        if distinct >= 3 and distinct >= bursts - 1:
            per_burst += 1
        elif 1 < distinct < bursts:
            rotating += 1
        for a, b in itertools.pairwise(frames):
            if a[1] != b[1]:
                changes += 1
                steps.append((b[2] - a[2]) % 4096)
    assert per_burst >= 3
    assert rotating >= 3
    # Across a MAC change the sequence number runs on: a few frames unheard, never a fresh draw.
    assert changes > 50
    assert np.percentile(steps, 95) <= 30


def test_ble_without_the_app_rotates_its_address_every_quarter_hour(
        run: tuple[Path, Truth, list[Observation]]) -> None:
    _, truth, _ = run
    anonymous = [e for e in truth.emitters.values()
                 if e.tech == "ble" and e.shopper_id.startswith("S-") and not truth.shoppers[e.shopper_id].has_app]
    assert len(anonymous) >= 5
    assert all(0x40 <= int(e.raw_id[:2], 16) <= 0x7F for e in anonymous)
    assert max(e.last_ts - e.first_ts for e in anonymous) <= CROWD.ble_rotation_s[1]
    owners = defaultdict(list)
    for e in anonymous:
        owners[e.shopper_id].append(e)
    long_stays = [sid for sid, s in truth.shoppers.items()
                  if not s.has_app and s.leave_ts - s.enter_ts > 2 * CROWD.ble_rotation_s[1] and sid in owners]
    assert all(len(owners[sid]) >= 2 for sid in long_stays)


def test_passers_by_stay_outside_behind_the_wall(run: tuple[Path, Truth, list[Observation]]) -> None:
    _, truth, observations = run
    store = Store.of(load_site(SITE))
    walks = passer_paths(store, np.random.default_rng(0), 50, 600.0, CROWD)
    samples = np.concatenate([w.at(np.linspace(w.start, w.end, 40)) for w in walks])
    assert not any(store.outline.contains(Point(x, y)) for x, y in samples)
    assert all(p.end_ts > p.start_ts for p in truth.passers.values())
    power: dict[str, list[float]] = {"P": [], "S": []}
    for o in observations:
        owner = truth.emitters[o.emitter_id].shopper_id
        if o.receiver_id == "pi-wifi" and owner[0] in power:
            power[owner[0]].append(o.rssi_dbm)
    assert power["P"]
    assert power["S"]
    # Farther than any shopper and behind the shop front: clearly weaker at the back receiver.
    assert np.median(power["P"]) < np.median(power["S"]) - 10.0
    assert truth.people_inside([p.start_ts for p in truth.passers.values()]).max() <= 40


def test_fixed_devices_probe_from_the_start_with_burnt_in_macs(run: tuple[Path, Truth, list[Observation]]) -> None:
    _, truth, _observations = run
    assert truth.run is not None
    fixed = [e for e in truth.emitters.values() if e.shopper_id.startswith("F-")]
    assert {e.shopper_id for e in fixed} == set(truth.fixtures)
    assert all(not int(e.raw_id[:2], 16) & 0x02 for e in fixed)
    first_shopper = min(s.enter_ts for s in truth.shoppers.values())
    # On half an hour before opening (the run's start), heard from then on.
    assert all(f.on_ts == truth.run.start_ts - CROWD.fixtures_on_s for f in truth.fixtures.values())
    assert min(e.first_ts for e in fixed) - (truth.run.start_ts - CROWD.fixtures_on_s) <= 240.0
    assert all(f.on_ts < first_shopper for f in truth.fixtures.values())
    assert all(e.last_ts >= truth.run.end_ts - 300.0 for e in fixed)
    assert all(store_inside(f.x, f.y) for f in truth.fixtures.values())


def store_inside(x: float, y: float) -> bool:
    return bool(Store.of(load_site(SITE)).outline.contains(Point(x, y)))


def test_same_seed_same_crowd(tmp_path: Path, run: tuple[Path, Truth, list[Observation]]) -> None:
    out, _, _ = run
    simulate(load_site(SITE), CONFIG, tmp_path)
    for name in ("observations.jsonl", "truth.jsonl"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_santi_sim_takes_the_crowd_options_and_refuses_them_on_a_survey(tmp_path: Path) -> None:
    from click.testing import CliRunner  # noqa: PLC0415

    from agent.cli import cli  # noqa: PLC0415

    result = CliRunner().invoke(cli, ["sim", "--config", str(SITE), "--shoppers", "4", "--minutes", "1",
                                      "--app-share", "0.25", "--anon-ble-share", "0.5", "--passers", "7",
                                      "--passer-probe-share", "0.4", "--fixtures", "2", "--out", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    truth = read_truth(tmp_path / "truth.jsonl")
    assert truth.run is not None
    assert truth.run.settings["phones"]["app_share"] == 0.25
    crowd = truth.run.settings["crowd"]
    assert (crowd["anon_ble_share"], crowd["passers"], crowd["passer_probe_share"], crowd["fixtures"]) == (0.5, 7, 0.4, 2)
    assert (len(truth.passers), len(truth.fixtures)) == (7, 2)
    bad = CliRunner().invoke(cli, ["sim", "--config", str(SITE), "--survey", "--passers", "3", "--out", str(tmp_path)])
    assert bad.exit_code != 0
    assert "--survey simulates one technician" in bad.output
