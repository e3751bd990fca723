"""``santi calibrate receiver`` through the real bleak BlueZ backend, with a beacon moved by the test.

The reference beacon advertises on the fake BlueZ with RSSI drawn from the
path-loss model of known parameters at the distance of the current step;
the step changes when the command starts measuring, as when a technician
presses Enter. The fit must recover the parameters and the config must
change in exactly that receiver's three lines.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.calibration_walk import (
    Beacon,
    BleCapture,
    Capture,
    CaptureFactory,
    Progress,
    Step,
    WalkError,
    fit_walk,
    parse_beacon,
    parse_distances,
    replace_site_file,
)
from agent.cli import SantiGroup, cli
from agent.cli.calibrate_cmd import receiver_command
from agent.config import ConfigError, load_site
from agent.localbroker import example_site_for
from tests.helpers.ble import ibeacon
from tests.helpers.fake_bluez import FakeBluez

UUID = "5a4e7469-0000-4000-8000-00000000f15c"
BEACON = f"{UUID}:100:7"
A_TRUE, N_TRUE, SIGMA_TRUE = -63.5, 2.6, 2.0
REFERENCE = "C4:7C:8D:6A:10:01"
SIBLING = "C4:7C:8D:6A:10:02"  # same UUID and major, another minor: must not be mistaken for the reference


class Air:
    """The reference beacon advertising at the current distance, and a sibling beacon close by."""

    def __init__(self, fake: FakeBluez, seed: int = 7) -> None:
        self.fake = fake
        self.distance: float | None = None
        self._rng = np.random.default_rng(seed)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(0.01):
            self.fake.advertise(SIBLING, -40, manufacturer_data=ibeacon(UUID, 100, 8))
            if self.distance is not None:
                rssi = A_TRUE - 10 * N_TRUE * math.log10(self.distance) + self._rng.normal(0.0, SIGMA_TRUE)
                self.fake.advertise(REFERENCE, round(rssi), manufacturer_data=ibeacon(UUID, 100, 7))

    def __enter__(self) -> Air:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)


class MovedBeaconCapture(BleCapture):
    """The real BLE capture; measuring a step first moves the test's beacon to that distance."""

    def __init__(self, air: Air, beacon: Beacon, adapter: str) -> None:
        super().__init__(beacon, adapter)
        self.air = air
        self.steps: list[float] = []

    def measure(self, distance_m: float, seconds: float, settle_s: float, progress: Progress) -> list[float]:
        self.air.distance = distance_m
        self.steps.append(distance_m)
        return super().measure(distance_m, seconds, settle_s, progress)


@pytest.fixture
def air(fake_bluez: FakeBluez) -> Iterator[Air]:
    with Air(fake_bluez) as moving:
        yield moving


def _factory(air: Air, made: list[MovedBeaconCapture]) -> CaptureFactory:
    def make(beacon: Beacon, adapter: str) -> Capture:
        capture = MovedBeaconCapture(air, beacon, adapter)
        made.append(capture)
        return capture
    return make


def test_guided_capture_recovers_the_model_and_rewrites_only_that_receiver(air: Air, tmp_path: Path) -> None:
    site = example_site_for(tmp_path, 1)
    before = site.read_text()
    made: list[MovedBeaconCapture] = []
    command = receiver_command(_factory(air, made))
    result = CliRunner().invoke(SantiGroup(commands=[command]), ["receiver", "pi-ble", "--config", str(site), "--beacon", BEACON, "--seconds", "1.2",
                                          "--settle", "0.3", "--yes", "--json"], input="\n" * 4)
    assert result.exit_code == 0, result.output
    assert made[0].steps == [1.0, 2.0, 4.0, 8.0]
    assert "reloadtheagenttouseit(systemctlreloadsanti-agent)" in "".join(result.stderr.split())
    assert result.stderr.count("Place the reference beacon at") == 4
    assert "Place the reference beacon at 4 m from pi-ble and press Enter" in result.stderr
    report = json.loads(result.stdout)
    fit = report["fit"]
    assert [s["distance_m"] for s in report["steps"]] == [1.0, 2.0, 4.0, 8.0]
    assert min(s["readings"] for s in report["steps"]) >= 10
    assert abs(fit["rssi_at_1m"] - A_TRUE) < max(1.0, 4 * fit["rssi_at_1m_se"])
    assert abs(fit["path_loss_exponent"] - N_TRUE) < max(0.15, 4 * fit["path_loss_exponent_se"])
    assert 1.2 < fit["noise_sigma_db"] < 3.0  # sigma 2 dB plus RSSI rounded to whole dB
    medians = [s["median_dbm"] for s in report["steps"]]
    assert medians == sorted(medians, reverse=True)  # the sibling at -40 dBm never got in

    new = report["new"]
    assert report["written"]
    assert report["old"] == {"rssi_at_1m": -59.0, "path_loss_exponent": 2.0, "noise_sigma_db": 4.0}
    after = site.read_text()
    expected = before.replace(
        'id = "pi-ble"\nkind = "ble"\nx = 15.0\ny = 19.0\nz = 2.4\nrssi_at_1m = -59.0\npath_loss_exponent = 2.0\n',
        f'id = "pi-ble"\nkind = "ble"\nx = 15.0\ny = 19.0\nz = 2.4\nrssi_at_1m = {new["rssi_at_1m"]!r}\n'
        f'path_loss_exponent = {new["path_loss_exponent"]!r}\nnoise_sigma_db = {new["noise_sigma_db"]!r}\n')
    assert after == expected != before
    assert (tmp_path / "site.toml.bak").read_text() == before
    changed = [line for line in report["diff"].splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert len(changed) == 5  # two old lines out, three new in
    receiver = next(r for r in load_site(site).receivers if r.id == "pi-ble")
    assert (receiver.rssi_at_1m, receiver.path_loss_exponent, receiver.noise_sigma_db) == (
        new["rssi_at_1m"], new["path_loss_exponent"], new["noise_sigma_db"])


def test_help_names_the_agents_unit() -> None:
    """The reload hint names the unit the installer enables, which reloads on SIGHUP."""
    result = CliRunner().invoke(cli, ["calibrate", "receiver", "--help"])
    assert result.exit_code == 0
    assert "(systemctlreloadsanti-agent)" in "".join(result.output.split())  # textwrap may break at the hyphen
    unit = Path(__file__).resolve().parent.parent / "systemd" / "santi-agent.service"
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit.read_text().splitlines()


def test_a_refused_confirmation_leaves_the_file_untouched(air: Air, tmp_path: Path) -> None:
    site = example_site_for(tmp_path, 1)
    before = site.read_bytes()
    made: list[MovedBeaconCapture] = []
    command = receiver_command(_factory(air, made))
    result = CliRunner().invoke(SantiGroup(commands=[command]), ["receiver", "pi-ble", "--config", str(site), "--beacon", BEACON, "--distances", "1,3,9",
                                          "--seconds", "0.8", "--settle", "0.2"], input="\n\n\nn\n")
    assert result.exit_code == 1, result.output
    assert "Write the new values to" in result.stderr
    assert result.stderr.splitlines()[-1] == f"santi: not written; {site} unchanged"
    assert "+rssi_at_1m = " in result.stdout  # the diff was shown before the question
    assert site.read_bytes() == before
    assert not (tmp_path / "site.toml.bak").exists()


def test_too_few_readings_ask_to_measure_again(air: Air, tmp_path: Path) -> None:
    site = example_site_for(tmp_path, 1)
    made: list[MovedBeaconCapture] = []
    command = receiver_command(_factory(air, made))
    silent = f"{UUID}:100:9"  # nobody advertises this one
    result = CliRunner().invoke(SantiGroup(commands=[command]), ["receiver", "pi-ble", "--config", str(site), "--beacon", silent, "--seconds", "0.5",
                                          "--settle", "0"], input="\ny\n\nn\n")
    assert result.exit_code == 1
    assert made[0].steps == [1.0, 1.0]
    assert result.stderr.count("only 0 readings") == 2
    assert result.stderr.splitlines()[-1] == "santi: not enough readings at 1 m; nothing written"


def test_no_bluetooth_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/tmp/santi-no-such-bus")
    site = example_site_for(tmp_path, 1)
    command = receiver_command(lambda beacon, adapter: BleCapture(beacon, adapter, start_timeout_s=1.0))
    result = CliRunner().invoke(SantiGroup(commands=[command]), ["receiver", "pi-ble", "--config", str(site), "--beacon", BEACON])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith(
        "santi: Bluetooth did not start: cannot reach the system D-Bus")


@pytest.mark.parametrize(("args", "message"), [
    (["nope", "--beacon", BEACON], "no receiver 'nope'"),
    (["node-fish", "--beacon", BEACON], "kind 'node'"),
    (["pi-ble", "--beacon", "not-a-beacon"], "is not a beacon identity"),
    (["pi-ble", "--beacon", BEACON, "--distances", "1,1.5"], "at least 2 times"),
])
def test_bad_input_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    site = example_site_for(tmp_path, 1)
    result = CliRunner().invoke(cli, ["calibrate", "receiver", *args, "--config", str(site)])
    assert result.exit_code == 2
    assert message in result.stderr


def test_fit_walk_needs_two_distances_and_a_plausible_result() -> None:
    with pytest.raises(WalkError, match="fewer than two distances"):
        fit_walk([Step(1.0, (-60.0,) * 20), Step(2.0, ())])
    with pytest.raises(WalkError, match="out of range"):
        fit_walk([Step(1.0, (-60.0, -61.0, -59.0)), Step(8.0, (-61.0, -60.0, -59.5))])  # exponent ~0
    rng = np.random.default_rng(3)
    steps = [Step(d, tuple(A_TRUE - 10 * N_TRUE * math.log10(d) + rng.normal(0, SIGMA_TRUE, 200)))
             for d in (1.0, 2.0, 4.0, 8.0)]
    cal = fit_walk(steps)
    assert abs(cal.rssi_at_1m - A_TRUE) < 4 * cal.rssi_at_1m_se
    assert abs(cal.path_loss_exponent - N_TRUE) < 4 * cal.path_loss_exponent_se


def test_replace_site_file_validates_first_and_notices_edits(tmp_path: Path) -> None:
    site = example_site_for(tmp_path, 1)
    before = site.read_text()
    with pytest.raises(ConfigError, match="path_loss_exponent"):
        replace_site_file(site, before, before.replace("path_loss_exponent = 2.0", "path_loss_exponent = 9.0", 1))
    with pytest.raises(ValueError, match="changed while calibrating"):
        replace_site_file(site, before.replace("Marta", "Maria"), before)
    assert site.read_text() == before
    assert list(tmp_path.glob("*.tmp")) == []
    assert not (tmp_path / "site.toml.bak").exists()
    site.chmod(0o640)
    _, backup = replace_site_file(site, before, before.replace("rssi_at_1m = -59.0", "rssi_at_1m = -61.0", 1))
    assert backup.read_text() == before
    assert site.stat().st_mode & 0o777 == 0o640


@settings(max_examples=200, derandomize=True)
@given(st.uuids(), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.booleans())
def test_parse_beacon_ibeacon(uuid: object, major: int, minor: int, upper: bool) -> None:
    text = f"{uuid}:{major}:{minor}"
    beacon = parse_beacon(text.upper() if upper else text)
    assert beacon.identities == {f"ibeacon:{uuid}:{major}:{minor}", f"altbeacon:{uuid}:{major}:{minor}"}
    assert beacon.ble_config("hci0").ibeacon_uuids == [str(uuid)]


@settings(max_examples=200, derandomize=True)
@given(st.binary(min_size=10, max_size=10), st.binary(min_size=6, max_size=6))
def test_parse_beacon_eddystone(namespace: bytes, instance: bytes) -> None:
    beacon = parse_beacon(f"eddystone:{namespace.hex()}:{instance.hex()}")
    assert beacon.identities == {f"eddystone:{namespace.hex()}:{instance.hex()}"}
    assert beacon.ble_config("hci0").eddystone_namespaces == [namespace.hex()]


@pytest.mark.parametrize("text", ["", "x", "5a4e7469-0000-4000-8000-00000000f15c:70000:1",
                                  "5a4e7469-0000-4000-8000-00000000f15c:1", "5a4e54490000000000c1:00a1"])
def test_parse_beacon_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"beacon identity|0 to 65535"):
        parse_beacon(text)


@settings(max_examples=200, derandomize=True)
@given(st.lists(st.floats(0.1, 100.0), min_size=1, max_size=8))
def test_parse_distances_accepts_only_usable_walks(values: list[float]) -> None:
    text = ",".join(repr(v) for v in values)
    usable = len(values) >= 2 and len(set(values)) == len(values) and max(values) >= 2 * min(values)
    if usable:
        assert parse_distances(text) == tuple(values)
    else:
        with pytest.raises(ValueError):
            parse_distances(text)
