"""`santi calibrate survey`: a technician's walk recorded through the agent's own sources, for `calibrate fit`.

The walk is real as far as the radios go: the Pi's adapter is bleak's BlueZ
backend against the fake `org.bluez`, the nodes publish ESPresense messages
to a real mosquitto. Only the walker is the test: at each mark (the
technician's Enter) the capture first lets the test walk the leg, and the
leg is done once the receivers have heard it (polled, not slept on).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.calibration_walk import Beacon, parse_beacon
from agent.cli import SantiGroup, cli
from agent.cli.survey_cmd import survey_command
from agent.config import SiteConfig, load_site
from agent.localbroker import Broker, example_site_for
from agent.observations import Observation
from agent.replayfile import RecordReader
from agent.survey import MIN_LEG_M, SurveyCapture, parse_route
from simulator.calibrate import SURVEY_TAG, calibration_samples, survey_files
from simulator.truth import TruthRecord, gather, read_truth
from tests.helpers.ble import ibeacon
from tests.helpers.fake_bluez import FakeBluez
from tests.helpers.mqtt import publisher
from tests.helpers.wait import wait_until

UUID = "5a4e7469-0000-4000-8000-00000000f15c"
TAG = f"{UUID}:1:7"
TAG_ADDRESS = "C4:7C:8D:6A:20:07"
SIBLING = "C4:7C:8D:6A:20:08"  # same UUID, another minor: never the tag
ROUTE = "15,2 15,10 25,10"
NODES = ("entrance", "centre", "greens")
PER_LEG = 12
"""Readings of the tag each of the Pi's adapter and the three nodes contributes to a leg."""


class WalkingCapture(SurveyCapture):
    """The real capture; before each mark after the first, the test's walker walks the leg that ends there."""

    def __init__(self, site: SiteConfig, beacon: Beacon, broker: Broker, fake: FakeBluez) -> None:
        super().__init__(site, beacon, start_timeout_s=20.0)
        self.fake, self.pub = fake, publisher(broker)
        self.legs = 0
        self.marked = 0

    def now(self) -> float:
        if self.marked:
            before = self.heard()
            for i in range(PER_LEG):
                self.fake.advertise(SIBLING, -45, manufacturer_data=ibeacon(UUID, 1, 8))
                self.fake.advertise(TAG_ADDRESS, -60 - i, manufacturer_data=ibeacon(UUID, 1, 7))
                for node in NODES:
                    self.pub.publish(f"espresense/devices/iBeacon:{UUID}-1-7/{node}", json.dumps({"rssi": -70 - i}))
                    self.pub.publish(f"espresense/devices/iBeacon:{UUID}-1-8/{node}", json.dumps({"rssi": -50}))
            wait_until(lambda: all(self.heard()[r] >= before[r] + PER_LEG
                                   for r in ("pi-ble", "node-entrance", "node-centre", "node-greens")),
                       what="every receiver hearing the leg")
            self.legs += 1
        self.marked += 1
        return super().now()

    def close(self) -> None:
        super().close()
        self.pub.loop_stop()
        self.pub.disconnect()


def _survey(tmp_path: Path, broker: Broker, fake: FakeBluez, route: str, keys: str,
            *options: str) -> tuple[Result, WalkingCapture, SiteConfig, Path]:
    """`santi calibrate survey` of the example store (nodes on `broker`) with `keys` typed at its prompts."""
    site_path = example_site_for(tmp_path, broker.port)
    made: list[WalkingCapture] = []

    def factory(s: SiteConfig, beacon: Beacon) -> SurveyCapture:
        made.append(WalkingCapture(s, beacon, broker, fake))
        return made[-1]

    out = tmp_path / "walk"
    result = CliRunner().invoke(SantiGroup(commands=[survey_command(factory)]),
                                ["survey", "--config", str(site_path), "--beacon", TAG, "--route", route,
                                 "--out", str(out), *options], input=keys)
    assert result.exit_code == 0, result.output
    return result, made[0], load_site(site_path), out


def test_a_recorded_walk_is_what_calibrate_fit_reads(tmp_path: Path, broker: Broker, fake_bluez: FakeBluez) -> None:
    result, capture, site, out = _survey(tmp_path, broker, fake_bluez, ROUTE, "\n?\n\n\n")
    site_path = tmp_path / "site.toml"  # where example_site_for wrote it
    assert capture.legs == 2
    assert "Stand at point 1 (15, 2)" in result.stderr
    assert "Walk steadily to point 3 (25, 10)" in result.stderr
    assert "the tag has not been heard yet" in result.stderr  # the "?" before the first leg was walked
    assert "next: santi calibrate fit" in result.stdout

    truth = read_truth(out / "truth.jsonl")
    assert truth.report.bad_count == 0
    track = truth.tracks["walker"]
    assert track.xy.tolist() == [[15.0, 2.0], [15.0, 10.0], [25.0, 10.0]]
    assert np.all(np.diff(track.ts) > 0)
    observations = list(RecordReader(out / "observations.jsonl", Observation))
    assert {o.emitter_id for o in observations} == {SURVEY_TAG}
    assert all(track.ts[0] <= o.ts <= track.ts[-1] for o in observations)
    per_receiver = {r: sum(1 for o in observations if o.receiver_id == r) for r in
                    ("pi-ble", "node-entrance", "node-centre", "node-greens")}
    assert per_receiver == dict.fromkeys(per_receiver, 2 * PER_LEG)  # the sibling never, the tag every time
    assert {o.receiver_id for o in observations} == set(per_receiver)

    samples = calibration_samples(site, observations, truth)
    for receiver_id in per_receiver:
        xy = samples[receiver_id].xy
        assert xy.shape == (2 * PER_LEG, 2)
        on_first_leg = np.isclose(xy[:, 0], 15.0) & (xy[:, 1] >= 2.0) & (xy[:, 1] <= 10.0)
        on_second_leg = np.isclose(xy[:, 1], 10.0) & (xy[:, 0] >= 15.0) & (xy[:, 0] <= 25.0)
        assert np.all(on_first_leg | on_second_leg)
    fitted = CliRunner().invoke(cli, ["calibrate", "fit", "--site", str(site_path), "--observations",
                                      str(out / "observations.jsonl"), "--truth", str(out / "truth.jsonl"),
                                      "--out", str(tmp_path / "calibrated.toml"), "--min-samples", str(3 * PER_LEG),
                                      "--no-radio-map", "--no-fingerprint"])
    # fit reads every reading the survey wrote, receiver by receiver, and two legs of them are too few for a
    # path-loss fit. (Whether a fit with fewer asked for takes them depends on where in its leg each burst fell, which
    # is the machine's timing, not the survey's.)
    assert fitted.exit_code == 2, fitted.output
    for receiver_id, n in per_receiver.items():
        assert f"{receiver_id}: only {n} readings (need {3 * PER_LEG})" in fitted.stderr
    assert "node-fish: only 0 readings" in fitted.stderr


def test_the_route_is_checked_against_the_store() -> None:
    site = load_site(Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml")
    assert parse_route("2,2 2,18;28.5,18", site) == ((2.0, 2.0), (2.0, 18.0), (28.5, 18.0))
    for text, said in (("2,2", "at least two points"), ("2,2 40,2", "point 2 (40, 2) is outside"),
                       ("2,2 2.2,2.2", "less than 0.5 m apart"), ("2,2 x,3", "'x,3' is not a point")):
        with pytest.raises(ValueError, match=re.escape(said)):
            parse_route(text, site)


def test_survey_files_keep_the_walked_span_and_interpolate_the_legs() -> None:
    """Readings outside the first and last marks are not the walk's; a reading halfway through a leg in time is
    halfway along it in space."""
    site = load_site(Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml")
    marks = [(100.0, 15.0, 2.0), (110.0, 15.0, 10.0), (130.0, 25.0, 10.0)]

    def reading(ts: float) -> Observation:
        return Observation(ts=ts, receiver_id="node-centre", emitter_id="e", tech="ble", rssi_dbm=-70.0)

    kept, records = survey_files(site, "site.toml", marks, [reading(t) for t in (99.0, 105.0, 120.0, 131.0)], 1.3,
                                 parse_beacon(TAG).text)
    assert [o.ts for o in kept] == [105.0, 120.0]
    truth = gather(TruthRecord(r) for r in records)
    samples = calibration_samples(site, kept, truth)["node-centre"]
    assert samples.xy.tolist() == [[15.0, 6.0], [20.0, 10.0]]
    receiver = next(r for r in site.receivers if r.id == "node-centre")
    assert samples.distance[0] == pytest.approx(math.dist((15.0, 6.0, 1.3), (receiver.x, receiver.y, receiver.z)))
    with pytest.raises(ValueError, match="not heard between"):
        survey_files(site, "site.toml", marks, [reading(99.0)], 1.3, TAG)
    with pytest.raises(ValueError, match="two points at least"):
        survey_files(site, "site.toml", marks[:1], [reading(100.0)], 1.3, TAG)


def test_a_route_outside_the_store_is_a_one_line_usage_error(tmp_path: Path) -> None:
    site_path = example_site_for(tmp_path, 1)
    result = CliRunner().invoke(SantiGroup(commands=[survey_command()]),
                                ["survey", "--config", str(site_path), "--beacon", TAG, "--route", "2,2 31,2",
                                 "--out", str(tmp_path / "walk")])
    assert result.exit_code == 2
    assert "point 2 (31, 2) is outside the store's outline" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "walk").exists()


def test_with_stops_what_is_heard_while_standing_is_at_the_point(tmp_path: Path, broker: Broker,
                                                                 fake_bluez: FakeBluez) -> None:
    """--stops: a second Enter as the walker leaves each point; the readings between the two are at the point."""
    result, capture, site, out = _survey(tmp_path, broker, fake_bluez, "15,2 15,10", "\n\n\n\n", "--stops")
    assert "Stand still at point 1; press Enter as you leave it" in result.stderr
    assert "Stand still at point 2; press Enter to finish" in result.stderr
    assert capture.legs == 3  # standing at 1, walking to 2, standing at 2
    track = read_truth(out / "truth.jsonl").tracks["walker"]
    assert track.xy.tolist() == [[15.0, 2.0], [15.0, 2.0], [15.0, 10.0], [15.0, 10.0]]
    observations = list(RecordReader(out / "observations.jsonl", Observation))
    xy = calibration_samples(site, observations, read_truth(out / "truth.jsonl"))["pi-ble"].xy
    assert len(xy) == 3 * PER_LEG
    assert int(np.sum(np.all(xy == [15.0, 2.0], axis=1))) == PER_LEG
    assert int(np.sum(np.all(xy == [15.0, 10.0], axis=1))) == PER_LEG
    assert np.all(np.isclose(xy[:, 0], 15.0) & (xy[:, 1] >= 2.0) & (xy[:, 1] <= 10.0))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 200)), min_size=2, max_size=8))
def test_a_route_of_points_in_the_store_reads_back_exactly(points: list[tuple[int, int]]) -> None:
    site = load_site(Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml")
    xy = [(x / 10.0, y / 10.0) for x, y in points]  # the example store is 30 x 20 m
    text = " ".join(f"{x:g},{y:g}" for x, y in xy)
    legs = [math.dist(a, b) for a, b in itertools.pairwise(xy)]
    if min(legs) < MIN_LEG_M:
        with pytest.raises(ValueError, match="one point, not a leg"):
            parse_route(text, site)
    else:
        assert parse_route(text, site) == tuple(xy)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_route_text_is_a_route_or_a_one_line_value_error(text: str) -> None:
    site = load_site(Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml")
    said = ""
    try:
        route = parse_route(text, site)
    except ValueError as exc:
        said = str(exc)
        assert said
    else:
        assert len(route) >= 2
    assert "\n" not in said or "\n" in text  # one line of its own; only the text it quotes may hold a newline
