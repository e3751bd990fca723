"""The simulator: deterministic, parseable, private, and faithful to its own settings."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import load_site
from agent.observations import CardTap, Observation
from agent.replayfile import read_records
from agent.site_arrays import site_arrays
from positioning.pathloss import rssi_at_distance, slant_distance
from simulator.anonymous import CrowdConfig
from simulator.channel import CHANNELS, Channel, ChannelConfig, store_seed, turns
from simulator.run import SimConfig, loyalty_id, observation_line, planned_truth, simulate
from simulator.shoppers import MobilityConfig
from simulator.store import Store
from simulator.truth import PositionTruth, TruthRecord, read_truth

SHORT = MobilityConfig(dwell_s=(10.0, 40.0), sectors_visited=(3, 4))
QUIET = ChannelConfig(receiver_bias_db=0.0, device_offset_db=0.0, body_loss_db=0.0, packet_loss=0.0)


@pytest.fixture(scope="module")
def site() -> object:
    return load_site(Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, site: object) -> Path:
    out = tmp_path_factory.mktemp("sim")
    simulate(site, SimConfig(shoppers=10, minutes=3, seed=7, mobility=SHORT), out)  # type: ignore[arg-type]
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, site: object, run_dir: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    simulate(site, SimConfig(shoppers=10, minutes=3, seed=7, mobility=SHORT), again)  # type: ignore[arg-type]
    simulate(site, SimConfig(shoppers=10, minutes=3, seed=8, mobility=SHORT), other)  # type: ignore[arg-type]
    for name in ("observations.jsonl", "taps.jsonl", "truth.jsonl"):
        assert (again / name).read_bytes() == (run_dir / name).read_bytes(), name
    assert (other / "observations.jsonl").read_bytes() != (run_dir / "observations.jsonl").read_bytes()


def test_a_shoppers_loyalty_id_is_the_same_on_every_simulated_day(tmp_path: Path, site: object,
                                                                  run_dir: Path) -> None:
    other = tmp_path / "other-day"
    simulate(site, SimConfig(shoppers=10, minutes=3, seed=8, mobility=SHORT), other)  # type: ignore[arg-type]
    store_id = site.store.id  # type: ignore[attr-defined]
    for day in (run_dir, other):
        truth = read_truth(day / "truth.jsonl")
        members = {s.shopper_id: s.loyalty_id for s in truth.shoppers.values() if s.loyalty_id is not None}
        assert members, "no loyalty member tapped a card"
        assert members == {sid: loyalty_id(store_id, int(sid[2:]) - 1) for sid in members}
        taps = [CardTap.model_validate_json(line) for line in (day / "taps.jsonl").read_text().splitlines()]
        assert {t.card for t in taps if t.known} <= {loyalty_id(store_id, i) for i in range(10)}
    assert loyalty_id(store_id, 0) == "L-91400001"
    assert loyalty_id(store_id, 41) == "L-91400042"
    assert loyalty_id("another-store", 0) != loyalty_id(store_id, 0)


def test_files_parse_with_the_replay_reader_with_zero_bad_lines(run_dir: Path) -> None:
    observations, report = read_records(run_dir / "observations.jsonl", Observation)
    assert report.bad_count == 0
    assert len(observations) > 10_000
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(observations))
    taps, tap_report = read_records(run_dir / "taps.jsonl", CardTap)
    assert tap_report.bad_count == 0
    truth = read_truth(run_dir / "truth.jsonl")
    assert truth.report.bad_count == 0
    assert truth.run is not None
    assert len(truth.shoppers) == 10
    for tap in taps:
        assert re.fullmatch(r"L-\d{8}", tap.card) if tap.known else re.fullmatch(r"[0-9a-f]{24}", tap.card)


def test_fast_writer_matches_the_model_serialisation() -> None:
    line = observation_line(1741078800.123456, "node-fish", "ab" * 12, "ble", -67.0, -59.0)
    assert Observation.model_validate_json(line).model_dump_json().encode() + b"\n" == line
    line = observation_line(1741078801.5, "pi-wifi", "cd" * 12, "wifi", -80.0, None)
    assert Observation.model_validate_json(line).model_dump_json().encode() + b"\n" == line


def test_raw_identifiers_are_only_in_truth(run_dir: Path) -> None:
    truth = read_truth(run_dir / "truth.jsonl")
    raw = {e.raw_id for e in truth.emitters.values()} | {t.card_uid for t in truth.taps}
    assert raw
    assert all(re.fullmatch(r"([0-9A-F]{2}:){5,6}[0-9A-F]{2}", r) for r in raw)
    payload = ((run_dir / "observations.jsonl").read_text() + (run_dir / "taps.jsonl").read_text()).upper()
    compact = payload.replace(":", "")
    leaked = [r for r in raw if r in payload or r.replace(":", "") in compact]
    assert leaked == []
    assert (run_dir / "truth.jsonl").read_text().count(next(iter(raw))) >= 1


def test_ble_is_heard_by_ble_and_nodes_probes_by_wifi_receivers_only(run_dir: Path, site: object) -> None:
    kinds = {r.id: r.kind for r in site.receivers}  # type: ignore[attr-defined]
    observations, _ = read_records(run_dir / "observations.jsonl", Observation)
    assert {o.tech for o in observations} == {"ble", "wifi"}
    for obs in observations:
        assert (kinds[obs.receiver_id] == "wifi") == (obs.tech == "wifi")
        assert obs.rssi_dbm == round(obs.rssi_dbm)
        assert obs.rssi_dbm >= -100.0


def test_wifi_macs_are_randomised_per_burst_and_locally_administered(run_dir: Path) -> None:
    truth = read_truth(run_dir / "truth.jsonl")
    wifi = [e for e in truth.emitters.values() if e.tech == "wifi"]
    per_shopper: dict[str, int] = {}
    for emitter in wifi:
        per_shopper[emitter.shopper_id] = per_shopper.get(emitter.shopper_id, 0) + 1
    assert max(per_shopper.values()) > 3  # a fresh MAC each burst
    randomised = [e for e in wifi if per_shopper[e.shopper_id] > 1]
    assert all(int(e.raw_id[:2], 16) & 0x02 for e in randomised)


def test_shoppers_enter_visit_three_or_four_sectors_and_leave_through_the_entrance(run_dir: Path) -> None:
    truth = read_truth(run_dir / "truth.jsonl")
    for shopper, visits in truth.visits.items():
        assert visits[0].sector == "entrance", shopper
        assert visits[-1].sector == "entrance", shopper
        # 3-4 shopping sectors chosen among the five that are neither entrance nor checkout.
        assert len({v.sector for v in visits} - {"entrance", "checkout"}) >= 3, shopper
        track = truth.tracks[shopper]
        step = np.hypot(*np.diff(track.xy, axis=0).T) / np.diff(track.ts)
        assert step.max() <= 1.4 + 1e-6  # walking pace cap, m/s
        assert truth.shoppers[shopper].enter_ts <= track.ts[0]
        assert track.ts[-1] <= truth.shoppers[shopper].leave_ts


def test_taps_happen_at_the_till_while_the_shopper_stands_there(run_dir: Path, site: object) -> None:
    truth = read_truth(run_dir / "truth.jsonl")
    reader = site.nfc_readers[0]  # type: ignore[attr-defined]
    assert truth.taps
    for tap in truth.taps:
        xy = truth.tracks[tap.shopper_id].at(np.array([tap.ts]))[0]
        assert np.hypot(xy[0] - reader.x, xy[1] - reader.y) < 1.0
        if tap.known:
            assert truth.shoppers[tap.shopper_id].loyalty_id == tap.loyalty_id


def test_truth_sector_is_the_polygon_under_the_position(run_dir: Path, site: object) -> None:
    store = Store.of(site)  # type: ignore[arg-type]
    lines = (run_dir / "truth.jsonl").read_text().splitlines()
    positions = [r for r in (TruthRecord.model_validate_json(line).root for line in lines) if isinstance(r, PositionTruth)]
    labels = store.label(np.array([[p.x, p.y] for p in positions]))
    names = [store.sector_ids[i] if i < len(store.sector_ids) else None for i in labels]
    assert [p.sector for p in positions] == names


def test_channel_without_impairments_is_the_path_loss_model_plus_sigma(site: object) -> None:
    arrays = site_arrays(site)  # type: ignore[arg-type]
    channel = Channel(arrays.xyz, arrays.rssi_at_1m, arrays.exponent, arrays.bbox,
                      replace(QUIET, sensitivity_dbm=-200.0), np.random.default_rng(3))
    xy = np.random.default_rng(4).uniform([0, 0], [30, 20], (4000, 2))
    rssi = channel.readings(xy, np.full(4000, 1.2), np.zeros(4000), np.zeros(4000), np.ones((4000, 8), bool))
    expected = rssi_at_distance(slant_distance(xy, arrays.xyz, 1.2), arrays.rssi_at_1m, arrays.exponent)
    residual = rssi - expected
    assert abs(residual.mean()) < 0.05
    assert residual.std() == pytest.approx(np.sqrt(16.0 + 1.0 / 12.0), rel=0.02)  # sigma plus rounding


def test_packet_loss_and_body_loss_and_bias(site: object) -> None:
    arrays = site_arrays(site)  # type: ignore[arg-type]
    config = ChannelConfig(sigma_db=0.0, receiver_bias_db=0.0, device_offset_db=0.0, body_loss_db=6.0,
                           packet_loss=0.25, sensitivity_dbm=-200.0)
    channel = Channel(arrays.xyz, arrays.rssi_at_1m, arrays.exponent, arrays.bbox, config, np.random.default_rng(5))
    n = 20000
    xy = np.tile([[15.0, 10.0]], (n, 1))
    towards_back = np.full(n, np.pi / 2)  # facing +y: the entrance node (15, 0.3) is right behind
    rssi = channel.readings(xy, np.full(n, 1.2), towards_back, np.zeros(n), np.ones((n, 8), bool))
    assert np.isnan(rssi).mean() == pytest.approx(0.25, abs=0.01)
    entrance = arrays.receiver_row["node-entrance"]
    clean = rssi_at_distance(slant_distance(xy[:1], arrays.xyz, 1.2), arrays.rssi_at_1m, arrays.exponent)[0]
    assert np.nanmean(rssi[:, entrance]) == pytest.approx(clean[entrance] - 6.0, abs=0.6)
    biased = Channel(arrays.xyz, arrays.rssi_at_1m, arrays.exponent, arrays.bbox,
                     ChannelConfig(receiver_bias_db=2.0), np.random.default_rng(6))
    assert biased.bias.std() > 0.5
    assert biased.bias.shape == (8,)


def test_spatially_correlated_shadowing_is_smooth_in_space(site: object) -> None:
    arrays = site_arrays(site)  # type: ignore[arg-type]
    config = ChannelConfig(correlation_m=3.0, spatial_fraction=1.0)
    channel = Channel(arrays.xyz, arrays.rssi_at_1m, arrays.exponent, arrays.bbox, config, np.random.default_rng(8))
    a = np.random.default_rng(9).uniform([2, 2], [28, 18], (3000, 2))
    near = channel.shadowing(a + 0.3) - 0
    here = channel.shadowing(a)
    far = channel.shadowing(a[::-1])
    assert np.corrcoef(here.ravel(), near.ravel())[0, 1] > 0.9
    assert abs(np.corrcoef(here.ravel(), far.ravel())[0, 1]) < 0.1
    assert here.std() == pytest.approx(4.0, rel=0.15)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4))
def test_any_seed_gives_complete_visits(seed: int, shoppers: int) -> None:
    site = load_site(Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml")
    from simulator.shoppers import plan_shoppers  # noqa: PLC0415

    store = Store.of(site)
    plans = plan_shoppers(store, SHORT, shoppers, 60.0, np.random.SeedSequence(seed))
    for plan in plans:
        assert plan.path is not None
        assert np.all(np.diff(plan.path.t) >= 0)
        ends = store.label(plan.path.xy[[0, -1]])
        assert list(ends) == [store.entrance, store.entrance]
        inside = store.label(plan.path.at(np.linspace(plan.path.start, plan.path.end, 400)))
        assert np.all(inside < len(store.sectors))  # never through a wall


@pytest.mark.parametrize("crowd", [CrowdConfig(), CrowdConfig(anon_ble_share=0.6, passers=20, fixtures=2)],
                         ids=["shoppers", "with-crowd"])
def test_planned_truth_is_what_simulate_records(tmp_path: Path, site: object, crowd: CrowdConfig) -> None:
    """The benchmark's truth without the radio: same shoppers, app phones' pseudonyms and sector entries."""
    config = SimConfig(shoppers=10, minutes=3, seed=7, mobility=SHORT, crowd=crowd)
    simulate(site, config, tmp_path)  # type: ignore[arg-type]
    planned = planned_truth(site, config)  # type: ignore[arg-type]
    truth = read_truth(tmp_path / "truth.jsonl")
    shoppers = sorted(truth.shoppers.values(), key=lambda s: s.shopper_id)
    assert [round(float(t), 3) for t in planned.enter] == [s.enter_ts for s in shoppers]
    assert [round(float(t), 3) for t in planned.leave] == [s.leave_ts for s in shoppers]
    owners = {emitter: truth.shopper_of(emitter) or "unheard" for emitter in planned.entries}
    assert sorted(owners.values()) == [s.shopper_id for s in shoppers if s.has_app]
    for emitter, entries in planned.entries.items():
        visits = truth.visits[owners[emitter]]
        assert [(round(t, 3), sector) for t, sector in entries] == [(v.enter_ts, v.sector) for v in visits]
    assert sum(map(len, planned.entries.values())) >= 3 * len(planned.entries) > 0


def test_truth_header_records_the_channel(run_dir: Path) -> None:
    header = json.loads((run_dir / "truth.jsonl").read_text().splitlines()[0])
    assert header["kind"] == "run"
    assert header["sigma_db"] == 4.0
    assert header["seed"] == 7
    assert set(header["receiver_bias_db"]) == {"pi-ble", "pi-wifi", "node-entrance", "node-checkout",
                                               "node-aisle1", "node-fish", "node-greens", "node-centre"}


def _residuals_by_shopper(site: object, out: Path) -> dict[str, FloatList]:
    """Each shopper's readings minus the path-loss model at the true position, dB."""
    arrays = site_arrays(site)  # type: ignore[arg-type]
    truth = read_truth(out / "truth.jsonl")
    observations, _ = read_records(out / "observations.jsonl", Observation)
    found: dict[str, FloatList] = {}
    for obs in observations:
        shopper = truth.shopper_of(obs.emitter_id)
        assert shopper is not None
        xy = truth.tracks[shopper].at(np.array([obs.ts]))
        row = arrays.receiver_row[obs.receiver_id]
        model = rssi_at_distance(slant_distance(xy, arrays.xyz[row:row + 1], 1.2), arrays.rssi_at_1m[row],
                                 arrays.exponent[row])[0, 0]
        found.setdefault(shopper, []).append(obs.rssi_dbm - model)
    return found


FloatList = list[float]
STORE_PHONES_ONLY = replace(CHANNELS["store"], sigma_db=0.0, receiver_bias_db=0.0, body_loss_db=0.0, packet_loss=0.0,
                            sensitivity_dbm=-200.0)


def test_store_channel_draws_one_offset_per_phone_with_its_spread(tmp_path: Path, site: object) -> None:
    simulate(site, SimConfig(shoppers=40, minutes=2, seed=3, mobility=SHORT, channel=STORE_PHONES_ONLY),  # type: ignore[arg-type]
             tmp_path)
    truth = read_truth(tmp_path / "truth.jsonl")
    by_shopper = _residuals_by_shopper(site, tmp_path)
    offsets = []
    for residuals in by_shopper.values():
        r = np.array(residuals)
        # BLE and every probe MAC of one phone: one offset, rounded to whole dB (and truth interpolated at 1 Hz).
        assert np.percentile(np.abs(r - np.median(r)), 95) <= 1.0
        offsets.append(float(np.median(r)))
    assert len(offsets) >= 0.8 * len(truth.shoppers)  # a few carry no radio at all
    assert 2.5 < float(np.std(offsets)) < 5.5  # sigma 4 dB over 40 phones


def test_a_survey_walk_carries_a_reference_tag_without_offset(tmp_path: Path, site: object) -> None:
    from simulator.run import SURVEY_PHONES  # noqa: PLC0415

    simulate(site, SimConfig(shoppers=1, seed=3, channel=STORE_PHONES_ONLY, phones=SURVEY_PHONES),  # type: ignore[arg-type]
             tmp_path, survey=True)
    (residuals,) = _residuals_by_shopper(site, tmp_path).values()
    # Rounding, and truth interpolated at 1 Hz where the walk turns.
    assert np.percentile(np.abs(residuals), 99) <= 0.6


def test_the_store_is_the_sites_whatever_the_days_seed(tmp_path: Path, site: object) -> None:
    store = CHANNELS["store"]
    headers = {}
    for name, seed, static in (("a", 1, None), ("b", 2, None), ("c", 1, 99)):
        simulate(site, SimConfig(shoppers=1, minutes=0.2, seed=seed, store_seed=static, mobility=SHORT,  # type: ignore[arg-type]
                                 channel=store), tmp_path / name)
        headers[name] = read_truth(tmp_path / name / "truth.jsonl").run
    a, b, c = headers["a"], headers["b"], headers["c"]
    assert a is not None
    assert b is not None
    assert c is not None
    assert a.receiver_bias_db == b.receiver_bias_db != c.receiver_bias_db
    assert a.settings["store_seed"] == b.settings["store_seed"] == store_seed(site.store.id)  # type: ignore[attr-defined]
    assert c.settings["store_seed"] == 99
    arrays = site_arrays(site)  # type: ignore[arg-type]
    fields = [Channel(arrays.xyz, arrays.rssi_at_1m, arrays.exponent, arrays.bbox, store, np.random.default_rng(day),
                      np.random.default_rng(7)).fields for day in (1, 2)]
    assert fields[0] is not None
    assert fields[1] is not None
    assert np.array_equal(fields[0], fields[1])


def test_store_channel_shadowing_and_bias_have_the_stated_spread(site: object) -> None:
    arrays = site_arrays(site)  # type: ignore[arg-type]
    store = CHANNELS["store"]
    biases, spreads = [], []
    for seed in range(20):
        channel = Channel(arrays.xyz, arrays.rssi_at_1m, arrays.exponent, arrays.bbox, store,
                          np.random.default_rng(seed), np.random.default_rng(1000 + seed))
        biases.append(channel.bias)
        spreads.append(channel.shadowing(np.random.default_rng(seed).uniform([2, 2], [28, 18], (2000, 2))).std())
    assert float(np.std(biases)) == pytest.approx(2.0, rel=0.15)
    assert float(np.mean(spreads)) == pytest.approx(5.0, rel=0.1)


def test_a_still_shopper_turns_and_a_walking_one_faces_the_way(site: object) -> None:
    from simulator.run import turned  # noqa: PLC0415
    from simulator.shoppers import PathBuilder  # noqa: PLC0415

    builder = PathBuilder(0.0, np.array([1.0, 1.0]), 1.0, 0.0)
    builder.walk([np.array([1.0, 5.0])])  # 4 s walking north
    builder.dwell(600.0, facing=0.0)  # then faces east at a shelf
    path = builder.path()
    t = np.arange(0.0, 604.0, 0.5)
    still = path.still_at(t)
    assert not still[t < 4.0].any()
    assert still[t >= 4.0].all()
    turning = turns(np.random.default_rng(2), path.start, path.end, 10.0, np.pi / 3)
    facing = path.facing_at(t) + turned(turning, still, t)
    assert np.allclose(facing[t < 4.0], np.pi / 2)
    at_shelf = facing[t >= 4.0]
    assert 30 <= np.count_nonzero(np.diff(at_shelf)) <= 90  # about one turn every 10 s over 600 s
    assert float(np.std(at_shelf)) == pytest.approx(np.pi / 3, rel=0.3)


def test_santi_sim_takes_a_channel_by_name_flags_override_it_and_the_store_seed(tmp_path: Path) -> None:
    from click.testing import CliRunner  # noqa: PLC0415

    from agent.cli import cli  # noqa: PLC0415

    example = Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml"
    result = CliRunner().invoke(cli, ["sim", "--site", str(example), "--shoppers", "1", "--minutes", "0.2",
                                      "--channel", "store", "--body-loss", "2", "--store-seed", "5",
                                      "--out", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    header = read_truth(tmp_path / "truth.jsonl").run
    assert header is not None
    channel = header.settings["channel"]
    assert channel["device_offset_db"] == 4.0
    assert channel["correlation_m"] == 3.0
    assert channel["body_loss_db"] == 2.0
    assert header.settings["store_seed"] == 5
    bad = CliRunner().invoke(cli, ["sim", "--site", str(example), "--channel", "shop", "--out", str(tmp_path)])
    assert bad.exit_code == 2
    assert "'shop' is not one of" in bad.output
