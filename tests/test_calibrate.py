"""Calibration from a simulated technician's walk, and the layout-keeping rewrite of the config."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from agent.cli import cli
from agent.config import load_site, parse_site
from agent.observations import Observation
from agent.radiomap_file import StoredRadioMap, write_radio_map
from agent.replayfile import RecordReader
from agent.site_arrays import grid_filter, make_tracker, site_arrays
from agent.siteedit import drop_tracking_key, set_tracking_key
from positioning.gridfilter import GRID_MOTION_M, GRID_OFFSET_SIGMA_DB
from positioning.pathloss import Calibration
from positioning.radiomap import FieldCovariance, RadioMap
from positioning.sectors import WALK_TEST_HOLD_S, WALK_TEST_M
from simulator.calibrate import (
    MAP_METHODS,
    MAP_MIN_GAIN,
    MAP_SECTOR_SLACK,
    GridCalibration,
    MapVerdict,
    ReceiverFit,
    WalkSamples,
    calibration_samples,
    chosen_radio_map,
    fit_receivers,
    grid_is_better,
    grid_settings,
    held_out,
    judge_radio_map,
    rewrite_site_text,
    walk_radio_map,
    without_body,
)
from simulator.channel import ChannelConfig
from simulator.run import SURVEY_PHONES, SimConfig, simulate
from simulator.truth import read_truth

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml"
TRUE_A, TRUE_N = {"node-fish": -64.0, "node-centre": -55.0}, {"node-fish": 2.5, "node-centre": 1.8}


def _true_site(tmp_path: Path) -> Path:
    """The example store whose fish and centre nodes really behave differently from the config."""
    text = EXAMPLE.read_text()
    for rid, a in TRUE_A.items():
        text = text.replace(f'id = "{rid}"\n', f'id = "{rid}"\nrssi_at_1m = {a}\npath_loss_exponent = {TRUE_N[rid]}\n')
    path = tmp_path / "true.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("walk")
    site = load_site(_true_site(tmp))
    # Sensitivity out of reach: readings censored at -100 dBm would bias any fit that ignores them.
    channel = ChannelConfig(sigma_db=4.0, receiver_bias_db=0.0, device_offset_db=0.0, body_loss_db=0.0,
                            sensitivity_dbm=-130.0)
    simulate(site, SimConfig(shoppers=1, seed=5, channel=channel, phones=SURVEY_PHONES), tmp / "walk", survey=True)
    return tmp / "walk"


def test_fit_recovers_the_true_parameters_from_a_walk(walk: Path) -> None:
    site = load_site(EXAMPLE)  # the technician starts from the defaults
    truth = read_truth(walk / "truth.jsonl")
    samples = calibration_samples(site, RecordReader(walk / "observations.jsonl", Observation), truth)
    fits = {f.receiver_id: f for f in fit_receivers(site, samples)}
    assert all(f.calibration is not None for f in fits.values())
    for rid in ("node-fish", "node-centre", "node-entrance", "pi-ble"):
        cal = fits[rid].calibration
        assert cal is not None
        a, n = TRUE_A.get(rid, -59.0), TRUE_N.get(rid, 2.0)
        assert cal.rssi_at_1m == pytest.approx(a, abs=max(1.0, 4 * cal.rssi_at_1m_se))
        assert cal.path_loss_exponent == pytest.approx(n, abs=max(0.1, 4 * cal.path_loss_exponent_se))
        assert cal.sigma_db == pytest.approx(4.0, abs=0.5)
    wifi = fits["pi-wifi"].calibration
    assert wifi is not None
    assert wifi.rssi_at_1m == pytest.approx(-40.0, abs=3.0)


@pytest.fixture(scope="module")
def bodied_walk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The walk of `walk`, the technician's body taking up to 6 dB from the receivers behind them (eq. (48))."""
    tmp = tmp_path_factory.mktemp("bodied")
    channel = ChannelConfig(sigma_db=4.0, receiver_bias_db=0.0, device_offset_db=0.0, body_loss_db=6.0,
                            sensitivity_dbm=-130.0)
    simulate(load_site(_true_site(tmp)), SimConfig(shoppers=1, seed=5, channel=channel, phones=SURVEY_PHONES), tmp,
             survey=True)
    return tmp


def test_the_walkers_body_is_estimated_and_taken_out_before_the_fit(walk: Path, bodied_walk: Path) -> None:
    site = load_site(EXAMPLE)
    samples = calibration_samples(site, RecordReader(bodied_walk / "observations.jsonl", Observation),
                                  read_truth(bodied_walk / "truth.jsonl"))
    walked, body_db = without_body(samples)
    # ~10,000 readings with 4 dB fading: B's standard error is ~0.15 dB.
    assert body_db == pytest.approx(6.0, abs=0.6)
    raw = {f.receiver_id: f.calibration for f in fit_receivers(site, samples)}
    clean = {f.receiver_id: f.calibration for f in fit_receivers(site, walked)}
    for rid, a in TRUE_A.items():
        before, after = raw[rid], clean[rid]
        assert before is not None
        assert after is not None
        # What follows the walk's direction is gone: the node's own slope and fading; the body's mean over the walk
        # stays in A, as shoppers carry one too.
        assert after.path_loss_exponent == pytest.approx(TRUE_N[rid], abs=max(0.05, 3 * after.path_loss_exponent_se))
        mean_loss = body_db * float(samples[rid].behind.mean())
        assert after.rssi_at_1m == pytest.approx(a - mean_loss, abs=max(0.5, 3 * after.rssi_at_1m_se))
        assert after.sigma_db == pytest.approx(4.0, abs=0.3)
        assert before.sigma_db > after.sigma_db + 0.3
    no_body = calibration_samples(site, RecordReader(walk / "observations.jsonl", Observation),
                                  read_truth(walk / "truth.jsonl"))
    assert without_body(no_body)[1] == pytest.approx(0.0, abs=0.5)


def test_the_walk_without_known_motion_leaves_the_readings_as_recorded() -> None:
    standing = WalkSamples(np.full(40, 3.0), np.full(40, -70.0), np.zeros((40, 2)), np.arange(40.0), np.zeros(40))
    walked, body_db = without_body({"node-fish": standing})
    assert body_db == 0.0
    assert np.array_equal(walked["node-fish"].rssi, standing.rssi)


def test_cli_calibrate_fit_says_what_the_walkers_body_took(tmp_path: Path, bodied_walk: Path) -> None:
    result = _fit(bodied_walk, tmp_path / "with.toml", "--without-walker-body")
    assert result.exit_code == 0, result.output
    said = re.search(r"walker's body: receivers behind the walker read up to ([0-9.]+) dB low; taken out",
                     result.stdout)
    assert said is not None
    assert float(said.group(1)) == pytest.approx(6.0, abs=0.6)
    kept = _fit(bodied_walk, tmp_path / "without.toml")
    assert kept.exit_code == 0, kept.output
    assert "dB low; left in the readings (--without-walker-body takes it out)" in kept.stdout
    fish = {p: next(r for r in load_site(tmp_path / p).receivers if r.id == "node-fish") for p in ("with.toml",
                                                                                                    "without.toml")}
    # Taken out, the fit finds the node's own slope; left in, a steeper one and the body read as noise.
    assert fish["with.toml"].path_loss_exponent == pytest.approx(TRUE_N["node-fish"], abs=0.05)
    assert fish["with.toml"].noise_sigma_db < fish["without.toml"].noise_sigma_db - 0.3


def _cal(a: float, n: float, s: float) -> Calibration:
    return Calibration(a, n, 0.1, 0.01, s, 500)


def test_rewrite_keeps_comments_and_layout_and_adds_missing_keys() -> None:
    site = load_site(EXAMPLE)
    text = EXAMPLE.read_text()
    fits = [ReceiverFit("pi-ble", 500, _cal(-61.23, 2.345, 3.21)),
            ReceiverFit("node-fish", 500, _cal(-57.0, 1.9, 4.4)),
            ReceiverFit("node-centre", 5, None, "only 5 readings")]
    new = rewrite_site_text(text, fits)
    old_lines, new_lines = text.splitlines(), new.splitlines()
    assert [line for line in old_lines if line.startswith("#")] == [line for line in new_lines if line.startswith("#")]
    assert len(new_lines) == len(old_lines) + 4  # pi-ble lacks noise_sigma_db; node-fish lacks all three
    checked = parse_site(new, EXAMPLE)
    by_id = {r.id: r for r in checked.receivers}
    assert (by_id["pi-ble"].rssi_at_1m, by_id["pi-ble"].path_loss_exponent, by_id["pi-ble"].noise_sigma_db) == (-61.2, 2.35, 3.2)
    assert (by_id["node-fish"].rssi_at_1m, by_id["node-fish"].path_loss_exponent) == (-57.0, 1.9)
    assert by_id["node-centre"] == site.receivers[[r.id for r in site.receivers].index("node-centre")]
    assert by_id["pi-wifi"].noise_sigma_db == 5.0


def test_rewrite_keeps_a_trailing_comment_on_a_rewritten_line() -> None:
    text = EXAMPLE.read_text().replace("rssi_at_1m = -59.0\n", "rssi_at_1m = -59.0  # from the datasheet\n", 1)
    new = rewrite_site_text(text, [ReceiverFit("pi-ble", 500, _cal(-62.0, 2.1, 4.0))])
    assert "rssi_at_1m = -62.0  # from the datasheet\n" in new


def test_cli_calibrate_fit_end_to_end(tmp_path: Path, walk: Path) -> None:
    out = tmp_path / "calibrated.toml"
    runner = CliRunner()
    args = ["calibrate", "fit", "--site", str(EXAMPLE), "--observations", str(walk / "observations.jsonl"),
            "--truth", str(walk / "truth.jsonl"), "--out", str(out)]
    result = runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    fits = {f["receiver_id"]: f for f in json.loads(result.stdout)}
    assert fits["node-fish"]["rssi_at_1m"] == pytest.approx(-64.0, abs=1.0)
    site = load_site(out)
    fish = next(r for r in site.receivers if r.id == "node-fish")
    assert fish.path_loss_exponent == pytest.approx(2.5, abs=0.1)
    assert re.search(r"# Santi site config", out.read_text())
    result = runner.invoke(cli, args)
    assert result.exit_code == 0
    assert "Calibration" in result.stdout


def test_cli_calibrate_fit_refuses_a_walk_with_no_known_positions(tmp_path: Path, walk: Path) -> None:
    empty = tmp_path / "truth.jsonl"
    empty.write_text("")
    result = CliRunner().invoke(cli, ["calibrate", "fit", "--site", str(EXAMPLE), "--observations",
                                      str(walk / "observations.jsonl"), "--truth", str(empty),
                                      "--out", str(tmp_path / "o.toml")])
    assert result.exit_code == 2
    assert "no known positions" in result.stderr
    assert not (tmp_path / "o.toml").exists()


def test_too_few_readings_leave_a_receiver_alone() -> None:
    site = load_site(EXAMPLE)
    fits = fit_receivers(site, {})
    assert all(f.calibration is None and "only 0 readings" in (f.reason or "") for f in fits)


@pytest.fixture(scope="module")
def walled_walk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A walk through a store whose shadowing stays put (correlated over 3 m): what a radio map is for."""
    tmp = tmp_path_factory.mktemp("walled")
    channel = ChannelConfig(sigma_db=4.0, correlation_m=3.0, receiver_bias_db=0.0, device_offset_db=0.0,
                            body_loss_db=0.0, sensitivity_dbm=-130.0)
    simulate(load_site(EXAMPLE), SimConfig(shoppers=1, seed=5, channel=channel, phones=SURVEY_PHONES), tmp,
             survey=True)
    return tmp


def _fit(walk: Path, out: Path, *extra: str, site: Path = EXAMPLE) -> Result:
    return CliRunner().invoke(cli, ["calibrate", "fit", "--site", str(site), "--observations",
                                    str(walk / "observations.jsonl"), "--truth", str(walk / "truth.jsonl"),
                                    "--out", str(out), *extra])


def test_a_walk_through_lasting_shadows_writes_a_radio_map_the_site_loads(tmp_path: Path, walled_walk: Path) -> None:
    site = load_site(EXAMPLE)
    truth = read_truth(walled_walk / "truth.jsonl")
    samples = calibration_samples(site, RecordReader(walled_walk / "observations.jsonl", Observation), truth)
    stored, ratio = chosen_radio_map(site, samples, fit_receivers(site, samples))
    assert ratio < 0.8
    assert stored is not None
    verdict = judge_radio_map(site, samples, fit_receivers(site, samples))
    assert verdict.windows > 100
    assert verdict.median_m[1] <= 0.95 * verdict.median_m[0]  # positions on held-out walk segments improve
    assert verdict.sectors[1] >= verdict.sectors[0]
    out = tmp_path / "calibrated.toml"
    result = _fit(walled_walk, out)
    assert result.exit_code == 0, result.output
    assert "radio map -> " in result.stdout
    assert "on held-out walk segments, median error" in result.stdout
    checked = load_site(out)
    assert checked.tracking.radio_map == tmp_path / "calibrated.radiomap.npz"
    arrays = site_arrays(checked)
    assert arrays.radio_map is not None
    assert np.max(np.abs(arrays.radio_map.values)) > 2.0


def test_a_walk_with_noise_only_writes_no_map_and_drops_an_old_one(tmp_path: Path, walk: Path) -> None:
    site = load_site(EXAMPLE)
    truth = read_truth(walk / "truth.jsonl")
    samples = calibration_samples(site, RecordReader(walk / "observations.jsonl", Observation), truth)
    fits = fit_receivers(site, samples)
    stored, ratio = chosen_radio_map(site, samples, fits)
    assert ratio > 0.95
    assert stored is None
    # The technician starts from a config that names the map of an earlier walk.
    write_radio_map(tmp_path / "old.radiomap.npz", walk_radio_map(site, samples, fits))
    source = tmp_path / "site.toml"
    source.write_text(EXAMPLE.read_text().replace("[tracking]\n", '[tracking]\nradio_map = "old.radiomap.npz"\n'))
    assert load_site(source).tracking.radio_map == tmp_path / "old.radiomap.npz"
    out = tmp_path / "calibrated.toml"
    result = _fit(walk, out, site=source)
    assert result.exit_code == 0, result.output
    assert "radio map: not written" in result.stdout
    assert load_site(out).tracking.radio_map is None
    assert not (tmp_path / "calibrated.radiomap.npz").exists()


@pytest.mark.parametrize(("located", "kept"), [
    (((3.0, 2.0), (0.80, 0.85)), True),
    (((3.0, 2.0), (0.71, 0.54)), False),  # readings predicted better, sectors worse: the x0.79 map
    (((3.0, 2.95), (0.80, 0.80)), False),  # positions barely better
])
def test_a_map_is_kept_only_if_held_out_positions_and_sectors_say_so(
    monkeypatch: pytest.MonkeyPatch, walled_walk: Path, located: tuple[tuple[float, float], tuple[float, float]],
    kept: bool,
) -> None:
    import simulator.calibrate as calibrate  # noqa: PLC0415

    (plain_m, map_m), (plain_s, map_s) = located
    monkeypatch.setattr(calibrate, "_held_out_tracks",
                        lambda *args: (plain_m, plain_s, 500) if args[3] is None else (map_m, map_s, 500))
    site = load_site(EXAMPLE)
    samples = calibration_samples(site, RecordReader(walled_walk / "observations.jsonl", Observation),
                                  read_truth(walled_walk / "truth.jsonl"))
    verdict = judge_radio_map(site, samples, fit_receivers(site, samples), bandwidth_m=1.0)
    assert verdict.ratio < 0.8  # the squared-error check alone would keep every one of them
    assert (verdict.stored is not None) == kept


SHORT_WALK_S = 240.0
"""The first minutes of `walled_walk`: eight held-out blocks, and few enough bins for kriging to be quick."""


@pytest.fixture(scope="module")
def short_walled_walk(walled_walk: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`walled_walk` cut after SHORT_WALK_S: its observations, and its truth whole (only the walked span is used)."""
    tmp = tmp_path_factory.mktemp("short")
    lines = (walled_walk / "observations.jsonl").read_text().splitlines(keepends=True)
    start = json.loads(lines[0])["ts"]
    (tmp / "observations.jsonl").write_text("".join(ln for ln in lines if json.loads(ln)["ts"] < start + SHORT_WALK_S))
    (tmp / "truth.jsonl").write_text((walled_walk / "truth.jsonl").read_text())
    return tmp


def test_a_kriged_map_is_judged_by_the_same_held_out_checks(short_walled_walk: Path) -> None:
    site = load_site(EXAMPLE)
    samples = calibration_samples(site, RecordReader(short_walled_walk / "observations.jsonl", Observation),
                                  read_truth(short_walled_walk / "truth.jsonl"))
    fits = fit_receivers(site, samples)
    verdict = judge_radio_map(site, samples, fits, method="kriged")
    assert verdict.method == "kriged"
    assert np.isnan(verdict.bandwidth_m)  # one candidate, no smoothing distance
    assert verdict.covariance is not None
    # The walk's shadowing: 16 dB², 70 % of it lasting (11.2 dB²), over 3 m; a few minutes of walk see it roughly.
    assert 1.0 < verdict.covariance.length_m < 6.0
    assert verdict.covariance.signal_db2 > verdict.covariance.nugget_db2
    assert verdict.windows > 50
    assert verdict.ratio < 0.9  # it predicts held-out readings: the shadows stay put
    assert (verdict.stored is not None) == verdict.better
    with pytest.raises(ValueError, match="no smoothing distance"):
        judge_radio_map(site, samples, fits, method="kriged", bandwidth_m=1.0)
    with pytest.raises(ValueError, match="map method must be one of"):
        judge_radio_map(site, samples, fits, method="spline")
    assert MAP_METHODS[0] == "kernel"  # the default stays the map the tracker's own update follows safely


def test_cli_calibrate_fit_kriges_the_map_when_asked(tmp_path: Path, short_walled_walk: Path) -> None:
    result = _fit(short_walled_walk, tmp_path / "kriged.toml", "--map-method", "kriged", "--no-fingerprint")
    assert result.exit_code == 0, result.output
    said = re.search(r"radio map(?: -> \S+|: not written) \(?kriged \(nugget [0-9.]+ dB², signal [0-9.]+ dB², "
                     r"length [0-9.]+ m\): on held-out walk segments", result.stdout)
    assert said is not None, result.stdout
    assert " m smoothing" not in result.stdout
    written = (tmp_path / "kriged.radiomap.npz").exists()
    assert written == ("radio map -> " in result.stdout)
    assert (load_site(tmp_path / "kriged.toml").tracking.radio_map is not None) == written


def test_cli_calibrate_fit_refuses_a_bandwidth_for_a_kriged_map(tmp_path: Path, short_walled_walk: Path) -> None:
    result = _fit(short_walled_walk, tmp_path / "o.toml", "--map-method", "kriged", "--map-bandwidth", "2")
    assert result.exit_code != 0
    assert "--map-bandwidth" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.toml").exists()


@pytest.mark.parametrize(("before", "after"), [
    ("[tracking]\nwindow_s = 1.0\n", '[tracking]\nwindow_s = 1.0\nradio_map = "m.npz"\n'),
    ('[tracking]\nradio_map = "old.npz"  # walk of May\n', '[tracking]\nradio_map = "m.npz"  # walk of May\n'),
    ('[store]\nid = "x"', '[store]\nid = "x"\n\n[tracking]\nradio_map = "m.npz"\n'),
])
def test_set_radio_map_replaces_or_adds_the_key(before: str, after: str) -> None:
    assert set_tracking_key(before, "radio_map", "m.npz") == after


def test_drop_radio_map_removes_only_that_line() -> None:
    text = '[tracking]\nradio_map = "m.npz"\nwindow_s = 1.0\n'
    assert drop_tracking_key(text, "radio_map") == "[tracking]\nwindow_s = 1.0\n"
    assert drop_tracking_key("[tracking]\nwindow_s = 1.0\n", "radio_map") == "[tracking]\nwindow_s = 1.0\n"


def test_the_whole_walkers_body_comes_out_for_the_grid_filter(bodied_walk: Path) -> None:
    """keep_mean False: each reading gets back B b_j, so a receiver's A comes out as it reads an unobstructed phone
    (the true A), not A less the body's mean over the walk."""
    site = load_site(EXAMPLE)
    samples = calibration_samples(site, RecordReader(bodied_walk / "observations.jsonl", Observation),
                                  read_truth(bodied_walk / "truth.jsonl"))
    kept, body_db = without_body(samples)
    whole, same_body = without_body(samples, keep_mean=False)
    assert same_body == body_db
    for rid, s in samples.items():
        assert np.allclose(whole[rid].rssi - kept[rid].rssi, body_db * s.behind.mean())
    fits = {f.receiver_id: f.calibration for f in fit_receivers(site, whole)}
    for rid, a in TRUE_A.items():
        fit = fits[rid]
        assert fit is not None
        assert fit.rssi_at_1m == pytest.approx(a, abs=max(0.5, 3 * fit.rssi_at_1m_se))


def test_grid_settings_turn_the_grid_filter_on_only_with_a_kept_kriged_map() -> None:
    grid = GridCalibration(1.2, 7.75, 4.0)
    covariance = FieldCovariance(7.84, 19.0, 2.9)
    stored = StoredRadioMap(("a",), RadioMap(np.zeros(2), 1.0, np.zeros((1, 2, 2))), np.zeros(1, dtype=np.int64),
                            2.0, 0.4)
    kept = MapVerdict(stored, math.nan, 0.5, (3.0, 1.0), (0.7, 0.8), 100, "kriged", covariance)
    assert grid_settings(grid, kept) == {"grid_motion_m": 1.2, "grid_sigma_db": 2.8, "body_loss_db": 7.75,
                                         "phone_offset_db": 4.0, "sector_walk_m": WALK_TEST_M,
                                         "hysteresis_s": WALK_TEST_HOLD_S, "still_grid_s": None}
    assert grid_settings(grid, replace(kept, stored=None)) == {"grid_motion_m": None, "grid_sigma_db": None}
    assert grid_settings(grid, None) == {"grid_motion_m": None, "grid_sigma_db": None}
    assert grid_settings(None, kept) == {}
    config = grid.config(load_site(EXAMPLE), covariance)
    assert config.grid_motion_m == 1.2
    assert config.grid_sigma_db == pytest.approx(2.8)
    assert config.body_loss_db == 7.75
    assert config.offset_sigma_db == 4.0
    assert grid.config(load_site(EXAMPLE), None).grid_sigma_db == 0.0
    # A site that estimates no phone offsets gets the grid's; one that does keeps its own.
    example = load_site(EXAMPLE)
    assert example.tracking.phone_offset_db == 0.0
    assert GridCalibration.for_site(example, 7.75) == GridCalibration(GRID_MOTION_M, 7.75, GRID_OFFSET_SIGMA_DB)
    own = parse_site(EXAMPLE.read_text().replace("[tracking]\n", "[tracking]\nphone_offset_db = 2.5\n"), EXAMPLE)
    assert GridCalibration.for_site(own, 7.75).offset_sigma_db == 2.5
    # A site with no walk test gets the grid's, with its hold; one with a walk test keeps its own and its hold.
    assert example.tracking.sector_walk_m == 0.0
    assert example.tracking.hysteresis_s == 3.0
    walking = parse_site(EXAMPLE.read_text().replace("hysteresis_s = 3.0\n", "hysteresis_s = 5.0\nsector_walk_m = 6\n"),
                         EXAMPLE)
    own_walk = GridCalibration.for_site(walking, 7.75)
    assert (own_walk.walk_m, own_walk.hold_s) == (6.0, 5.0)


def test_cli_calibrate_fit_for_the_grid_filter_writes_its_keys(tmp_path: Path,
                                                                               short_walled_walk: Path) -> None:
    """--grid-filter: the whole body out, a kriged map judged with the grid filter, kept, and the filter's keys
    written, the still grid the site had dropped; the config it writes builds a tracker with the grid filter."""
    out = tmp_path / "grid.toml"
    source = tmp_path / "still.toml"
    source.write_text(EXAMPLE.read_text().replace("[tracking]\n", "[tracking]\nstill_grid_s = 5.0\n"))
    result = _fit(short_walled_walk, out, "--grid-filter", "--no-fingerprint", site=source)
    assert result.exit_code == 0, result.output
    assert "kriged (nugget" in result.stdout
    site = load_site(out)
    # This walk's kriged map is kept (held-out median 2.54 -> 0.63 m); grid_settings' test covers a map not kept.
    assert "radio map -> " in result.stdout
    said = re.search(r"grid filter: on \(\[tracking\] grid_motion_m = ([0-9.]+), grid_sigma_db = ([0-9.]+), "
                     r"body_loss_db = ([0-9.]+), phone_offset_db = ([0-9.]+), sector_walk_m = ([0-9.]+), "
                     r"hysteresis_s = ([0-9.]+)\)", result.stdout)
    assert said is not None, result.stdout
    assert site.tracking.grid_motion_m == float(said.group(1)) == GRID_MOTION_M
    assert site.tracking.grid_sigma_db == float(said.group(2)) > 0.0
    assert site.tracking.body_loss_db == float(said.group(3))
    assert site.tracking.phone_offset_db == float(said.group(4)) == GRID_OFFSET_SIGMA_DB
    assert site.tracking.sector_walk_m == float(said.group(5)) == WALK_TEST_M
    assert site.tracking.hysteresis_s == float(said.group(6)) == WALK_TEST_HOLD_S
    assert site.tracking.still_grid_s == 0.0
    assert "still_grid_s" not in out.read_text()
    assert grid_filter(site_arrays(site), make_tracker(site, site_arrays(site)).config) is not None


@pytest.mark.parametrize("extra", [("--map-method", "kernel"), ("--map-bandwidth", "2"), ("--no-radio-map",),
                                   ("--without-walker-body",)])
def test_cli_calibrate_fit_for_the_grid_filter_refuses_what_it_overrides(tmp_path: Path, short_walled_walk: Path,
                                                                         extra: tuple[str, ...]) -> None:
    result = _fit(short_walled_walk, tmp_path / "o.toml", "--grid-filter", *extra)
    assert result.exit_code != 0
    assert "--grid-filter" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_grid_filter_is_chosen_by_the_rule_a_map_is_kept_by() -> None:
    """grid_is_better compares the held-out figures each calibration leaves (with its map if kept, else without):
    median error down by MAP_MIN_GAIN or more, sectors not worse beyond MAP_SECTOR_SLACK, and only a grid whose map
    was kept (a grid calibration without one leaves the grid off)."""
    stored = StoredRadioMap(("a",), RadioMap(np.zeros(2), 1.0, np.zeros((1, 2, 2))), np.zeros(1, dtype=np.int64),
                            2.0, 0.4)
    plain = MapVerdict(stored, 2.0, 0.8, (3.91, 2.34), (0.507, 0.606), 600)
    grid = MapVerdict(stored, math.nan, 0.43, (3.58, 1.26), (0.711, 0.786), 600, "kriged")
    assert held_out(plain) == (2.34, 0.606)
    assert held_out(replace(plain, stored=None)) == (3.91, 0.507)
    assert grid_is_better(plain, grid)
    assert not grid_is_better(plain, replace(grid, stored=None))
    # The edge of the rule, both ways: 5 % closer is enough, 4 % is not; 1 point fewer in sectors is, 2 are not.
    at_edge = (1.0 - MAP_MIN_GAIN) * 2.34
    assert grid_is_better(plain, replace(grid, median_m=(3.0, at_edge), sectors=(0.6, 0.606 - MAP_SECTOR_SLACK)))
    assert not grid_is_better(plain, replace(grid, median_m=(3.0, 0.96 * 2.34)))
    assert not grid_is_better(plain, replace(grid, sectors=(0.6, 0.606 - 2 * MAP_SECTOR_SLACK)))
    # Against the plain calibration without its map, its own unmapped figures count.
    assert not grid_is_better(replace(plain, stored=None, median_m=(1.2, 2.34)), grid)
    # A walk too short to hold segments out keeps the filter.
    assert not grid_is_better(replace(plain, median_m=(math.nan, math.nan), sectors=(math.nan, math.nan)), grid)


def test_cli_calibrate_fit_chooses_the_tracker_by_the_held_out_walk(tmp_path: Path, short_walled_walk: Path) -> None:
    """With neither --grid-filter nor --no-grid-filter, both calibrations are judged and the one written is the
    one the held-out walk prefers, said with its figures; --no-grid-filter writes the filter's without judging
    the grid."""
    chosen = _fit(short_walled_walk, tmp_path / "chosen.toml", "--no-fingerprint")
    assert chosen.exit_code == 0, chosen.output
    said = re.search(r"tracker: the (grid filter|filter) \(on held-out walk segments, the filter ([0-9.]+) m median, "
                     r"([0-9.]+)% in the right sector; the grid filter ([0-9.]+) m, ([0-9.]+)%", chosen.stdout)
    assert said is not None, chosen.stdout
    plain_m, plain_s, grid_m, grid_s = (float(said.group(k)) for k in (2, 3, 4, 5))
    on = said.group(1) == "grid filter"
    assert on == (grid_m <= (1.0 - MAP_MIN_GAIN) * plain_m and grid_s >= 100 * (plain_s / 100 - MAP_SECTOR_SLACK))
    assert on  # this walk's lasting shadows: the grid filter with its kriged map tracks it far better
    site = load_site(tmp_path / "chosen.toml")
    assert site.tracking.grid_motion_m == GRID_MOTION_M
    forced = _fit(short_walled_walk, tmp_path / "grid.toml", "--no-fingerprint", "--grid-filter")
    assert (tmp_path / "chosen.toml").read_text().replace("chosen", "grid") == \
        (tmp_path / "grid.toml").read_text(), forced.output
    plain = _fit(short_walled_walk, tmp_path / "plain.toml", "--no-fingerprint", "--no-grid-filter")
    assert plain.exit_code == 0, plain.output
    assert "tracker:" not in plain.stdout
    assert load_site(tmp_path / "plain.toml").tracking.grid_motion_m == 0.0
    # An option only the filter's calibration has chooses the filter, without a word about the grid.
    kernel = _fit(short_walled_walk, tmp_path / "kernel.toml", "--no-fingerprint", "--map-method", "kernel")
    assert kernel.exit_code == 0, kernel.output
    assert "tracker:" not in kernel.stdout
    assert load_site(tmp_path / "kernel.toml").tracking.grid_motion_m == 0.0
