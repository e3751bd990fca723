"""``santi firmware``: ESPresense node settings from the site config, and beacon tag profiles."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from agent.cli import cli
from agent.config import load_site, room_slug
from agent.firmware import (
    EddystoneUidTag,
    FirmwareError,
    IBeaconTag,
    node_configs,
    parse_tag,
)
from agent.localbroker import Broker
from tests.conftest import EXAMPLE_SITE, ROOT
from tests.helpers.node_broker import installed_node_broker

TAGS = ROOT / "firmware_configs" / "tags"
COMMITTED = ROOT / "firmware_configs" / "espresense" / "fishmonger-01"


def site_with(tmp_path: Path, *replacements: tuple[str, str]) -> Path:
    text = EXAMPLE_SITE.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


CALIBRATED = (
    'node_name = "fish"\nx = 2.0\ny = 19.7\nz = 2.6',
    'node_name = "fish"\nx = 2.0\ny = 19.7\nz = 2.6\nrssi_at_1m = -65.4\npath_loss_exponent = 2.7',
)


def test_render_writes_one_settings_file_per_node_with_its_values(tmp_path: Path) -> None:
    site = site_with(tmp_path, CALIBRATED)
    out = tmp_path / "nodes"
    result = CliRunner().invoke(cli, ["firmware", "render", str(site), "--out", str(out), "--broker", "10.0.0.5:1884"])
    assert result.exit_code == 0, result.output
    rooms = sorted(path.stem for path in out.glob("*.json"))
    assert rooms == ["aisle1", "centre", "checkout", "entrance", "fish", "greens"]
    assert sorted(path.stem for path in out.glob("*.sh")) == rooms
    fish = json.loads((out / "fish.json").read_text())
    assert fish["santi"]["receiver"] == "node-fish"
    assert fish["settings"]["absorption"] == "2.70"
    assert fish["settings"]["rx_adj_rssi"] == "-6"  # reads 6 dB weak: -65.4 - (-59) rounded
    assert fish["network"]["mqtt_host"] == "10.0.0.5"
    assert fish["network"]["mqtt_port"] == 1884
    entrance = json.loads((out / "entrance.json").read_text())
    assert entrance["settings"]["absorption"] == "2.00"
    assert entrance["settings"]["rx_adj_rssi"] == "0"
    assert entrance["settings"]["max_distance"] == "55.0"  # 1.5 diagonals of the 30 x 20 m store
    assert entrance["settings"]["skip_ms"] == "1000"
    include = entrance["settings"]["include"].split()
    assert include[0] == "iBeacon:5a4e7469-0000-4000-8000-00000000f15c-"
    assert "eddy:5a4e54490000000000c1-" in include
    assert [m["topic"] for m in entrance["mqtt"]][:2] == ["espresense/rooms/entrance/absorption/set",
                                                          "espresense/rooms/entrance/rx_adj_rssi/set"]


@pytest.fixture
def node_broker(tmp_path: Path) -> Iterator[Broker]:
    """The store's node broker as installed: logins required, the installer's ACL for the example's nodes."""
    broker = installed_node_broker(tmp_path / "node-broker", load_site(EXAMPLE_SITE),
                                   {"node-fish": "fish pw", "santi-locator": "locator pw"})
    broker.start()
    try:
        yield broker
    finally:
        broker.stop(kill=True)


def test_the_script_logs_in_as_its_node_and_sets_retained_settings(tmp_path: Path, node_broker: Broker) -> None:
    site = load_site(site_with(tmp_path, CALIBRATED))
    node = next(n for n in node_configs(site, "unused.example", 1) if n.room == "fish")
    script = tmp_path / "fish.sh"
    script.write_text(node.to_script(site.store.id))
    password_file = tmp_path / "node-fish.password"
    password_file.write_text("fish pw", encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "SANTI_BROKER": node_broker.host, "SANTI_BROKER_PORT": str(node_broker.port)}
    refused = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30, check=False, env=env)
    assert refused.returncode != 0  # no password file at the installed path here: the broker says no
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30, check=False,
                          env={**env, "MQTT_PASS_FILE": str(password_file)})
    assert done.returncode == 0, done.stderr
    assert "fish pw" not in done.stdout + done.stderr
    received: dict[str, str] = {}
    all_in = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-firmware-reader")
    client.username_pw_set("santi-locator", "locator pw")

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        assert message.retain
        received[message.topic] = message.payload.decode()
        if len(received) == len(node.settings):
            all_in.set()

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe("espresense/rooms/fish/+/set", qos=1)
    client.connect(node_broker.host, node_broker.port)
    client.loop_start()
    try:
        assert all_in.wait(10), received
    finally:
        client.disconnect()
        client.loop_stop()
    assert received == dict(node.messages())


def test_render_points_nodes_at_the_node_broker_with_their_own_login(tmp_path: Path) -> None:
    site = site_with(tmp_path, ('[uplink]\nhost = "127.0.0.1"', '[uplink]\nhost = "hq.example.com"\nusername = "hq-store-a"'),
                     ('[nodes]\n', '[nodes]\n# the Pi on the store LAN\n'),
                     ('host = "127.0.0.1"\nport = 1883\n\n[buffer]', 'host = "192.168.1.20"\nport = 1884\n\n[buffer]'))
    out = tmp_path / "nodes"
    result = CliRunner().invoke(cli, ["firmware", "render", str(site), "--out", str(out)])
    assert result.exit_code == 0, result.output
    fish = json.loads((out / "fish.json").read_text())
    assert {key: fish["network"][key] for key in ("mqtt_host", "mqtt_port", "mqtt_user", "mqtt_password_file")} == {
        "mqtt_host": "192.168.1.20", "mqtt_port": 1884, "mqtt_user": "node-fish",
        "mqtt_password_file": "/etc/santi/node-broker/node-fish.password"}
    written = "".join(path.read_text() for path in out.iterdir())
    assert "hq.example.com" not in written
    assert "hq-store-a" not in written
    moved = CliRunner().invoke(cli, ["firmware", "render", str(site), "--out", str(out), "--broker", "10.0.0.9"])
    assert moved.exit_code == 0, moved.output
    assert json.loads((out / "fish.json").read_text())["network"]["mqtt_port"] == 1884  # [nodes] port


def test_render_refuses_a_site_without_a_node_broker(tmp_path: Path) -> None:
    text = EXAMPLE_SITE.read_text()
    text = re.sub(r"\[nodes\]\n(#[^\n]*\n)*(\w+ = [^\n]*\n)+", "", text)
    site = tmp_path / "site.toml"
    site.write_text(text.replace('kind = "node"', 'kind = "ble"'))  # a node receiver without [nodes] is refused earlier
    result = CliRunner().invoke(cli, ["firmware", "render", str(site), "--out", str(tmp_path / "o"),
                                      "--broker", "10.0.0.9"])
    assert result.exit_code == 2
    assert result.stderr == (f"santi: {site}: no [nodes] section — the nodes publish to the store's broker: add [nodes] "
                             f"host and port (and pass --broker with the address nodes use for this box)\n")


def test_the_committed_fishmonger_example_matches_a_fresh_render(tmp_path: Path) -> None:
    out = tmp_path / "fresh"
    result = CliRunner().invoke(cli, ["firmware", "render", str(EXAMPLE_SITE), "--out", str(out),
                                      "--broker", "santi-pi.local"])
    assert result.exit_code == 0, result.output
    fresh = {path.name: path.read_text() for path in out.iterdir()}
    committed = {path.name: path.read_text() for path in COMMITTED.iterdir()}
    assert fresh == committed, "regenerate it: see firmware_configs/README.md"


def test_render_refuses_a_broker_nodes_cannot_reach(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["firmware", "render", str(EXAMPLE_SITE), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("santi: nodes.host is 127.0.0.1, which a node cannot reach")
    assert result.stderr.count("\n") == 1


def test_render_names_the_key_of_a_node_name_espresense_would_rename(tmp_path: Path) -> None:
    site = site_with(tmp_path, ('node_name = "aisle1"', 'node_name = "Aisle 1"'))
    result = CliRunner().invoke(cli, ["firmware", "render", str(site), "--out", str(tmp_path / "o"), "--broker", "h"])
    assert result.exit_code == 2
    assert "receivers[4].node_name: ESPresense publishes room 'Aisle 1' as 'aisle_1'" in result.stderr


def test_render_rejects_an_exponent_espresense_cannot_take(tmp_path: Path) -> None:
    site = load_site(site_with(tmp_path, ('node_name = "centre"', 'node_name = "centre"\npath_loss_exponent = 5.5')))
    with pytest.raises(FirmwareError, match=r"^receivers\[7\]\.path_loss_exponent: 5\.5 is outside"):
        node_configs(site, "h", 1883)


def test_allow_all_clears_the_include_filter(tmp_path: Path) -> None:
    site = load_site(site_with(tmp_path, ('scanning = "passive"', 'scanning = "passive"\nallow_all = true')))
    node = node_configs(site, "h", 1883)[0]
    assert node.settings["include"] == ""
    assert "-n\n" in node.to_script(site.store.id)  # an empty payload, not the string ''


@pytest.mark.parametrize(("name", "slug"), [
    ("entrance", "entrance"), ("Fish Counter", "fish_counter"), ("aisle-1", "aisle_1"),
    ("  Caja #2 ", "caja_2"), ("living_room", "living_room"),
])
def test_room_slug_follows_espresense(name: str, slug: str) -> None:
    assert room_slug(name) == slug


@settings(derandomize=True, max_examples=300)
@given(st.text(max_size=40))
def test_room_slug_is_idempotent_and_topic_safe(name: str) -> None:
    slug = room_slug(name)
    assert room_slug(slug) == slug
    assert not set(slug) & set("/+#- \t")


# -- tag profiles -------------------------------------------------------------------------------------


def test_shipped_tag_profiles_are_valid_and_fit_the_example_store() -> None:
    result = CliRunner().invoke(cli, ["firmware", "check-tag", str(TAGS / "loyalty-app.toml"),
                                      str(TAGS / "cart-tag.toml"), "--site", str(EXAMPLE_SITE), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [item["espresense_id"] for item in report] == [
        "iBeacon:5a4e7469-0000-4000-8000-00000000f15c-1-0",
        "eddy:5a4e5449000000000000c1-000000000001",
    ]
    assert all(item["problems"] == [] for item in report)


def test_an_altbeacon_the_store_nodes_would_drop_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["firmware", "check-tag", str(TAGS / "basket-altbeacon.json"),
                                      "--site", str(EXAMPLE_SITE), "--json"])
    assert result.exit_code == 1
    assert "nodes would drop it: 'md:0118:26'" in json.loads(result.stdout)[0]["problems"][0]


def test_ibeacon_bytes_match_a_real_espresense_capture(shared_data: Path) -> None:
    log = (shared_data / "espresense-mqtt-samples" / "serial_log_lines_from_public_issues.txt").read_text()
    captured = re.search(r"MD: 004c(02152686f39c[0-9a-f]+)", log)
    assert captured is not None
    tag = IBeaconTag(kind="ibeacon", name="issue-289", uuid="2686f39c-bada-4658-854a-a62e7e5e8b8d", major=1,
                     minor=0, measured_power_dbm=-55, tx_power_dbm=0, interval_ms=100)
    assert tag.advertisement()["hex"] == "4c00" + captured.group(1)


def test_the_mis_programmed_button_from_a_real_issue_is_refused(tmp_path: Path) -> None:
    # ESPresense#475: a button advertising measured power +30 dBm, which receivers ignore.
    path = tmp_path / "button.toml"
    path.write_text('name = "button"\nkind = "ibeacon"\nuuid = "fda50693-a4e2-4fb1-afcf-c6eb07647825"\n'
                    "major = 100\nminor = 65535\ntx_power_dbm = 0\nmeasured_power_dbm = 30\ninterval_ms = 1000\n")
    result = CliRunner().invoke(cli, ["firmware", "check-tag", str(path)])
    assert result.exit_code == 2
    assert result.stderr == (f"santi: {path}:7: measured_power_dbm: Input should be less than or equal to -20\n")


@pytest.mark.parametrize(("body", "expected"), [
    ('kind = "ibeacon"\nuuid = "not-a-uuid"', r":3: uuid: Value error, 'not-a-uuid' is not a UUID"),
    ('kind = "ibeacon"\nuuid = "5a4e7469-0000-4000-8000-00000000f15c"\nmajor = 70000', r":4: major: Input should be less than or equal to 65535"),
    ('kind = "ibeacon"\nuuid = "5a4e7469-0000-4000-8000-00000000f15c"\nmajr = 1', r":4: majr: unknown key \(misspelt\?\)"),
    ('kind = "beacon"', r":2: kind: must be one of 'ibeacon', 'altbeacon', 'eddystone-uid'"),
    ('uuid = "5a4e7469-0000-4000-8000-00000000f15c"', r": kind: missing: say which frame"),
    ('kind = "eddystone-uid"\nnamespace = "5a4e5449"', r":3: namespace: String should match pattern"),
    ('kind = "ibeacon"\nuuid = [1', r": syntax: "),
])
def test_bad_tag_profiles_give_one_line_naming_the_key(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "tag.toml"
    complete = "major = 1\nminor = 2\ntx_power_dbm = 0\nmeasured_power_dbm = -59\ninterval_ms = 100\n"
    lines = {line.split(" = ")[0]: line for line in complete.splitlines()}
    for line in body.splitlines():
        lines.pop(line.split(" = ")[0], None)
    path.write_text('name = "t"\n' + body + "\n" + "\n".join(lines.values()) + "\n")
    with pytest.raises(FirmwareError) as caught:
        parse_tag(path.read_text(), path)
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(re.escape(str(path)) + expected, message), message


def test_json_profiles_are_validated_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "tag.json"
    path.write_text(json.dumps({"name": "t", "kind": "eddystone-uid", "namespace": "5a4e54490000000000c1",
                                "instance": "00000000000G", "tx_power_dbm": 0, "measured_power_dbm": -60,
                                "interval_ms": 100}))
    with pytest.raises(FirmwareError, match=r"tag\.json: instance: String should match pattern"):
        parse_tag(path.read_text(), path)


def _parse_ibeacon(frame: bytes) -> tuple[str, int, int, int]:
    """An independent reading of Apple's layout: 4c00 0215, UUID, major, minor (big-endian), power (int8)."""
    assert frame[:4] == bytes.fromhex("4c000215")
    assert len(frame) == 25
    return (str(uuidlib.UUID(bytes=frame[4:20])), int.from_bytes(frame[20:22], "big"),
            int.from_bytes(frame[22:24], "big"), int.from_bytes(frame[24:25], "big", signed=True))


@settings(derandomize=True, max_examples=200)
@given(st.uuids(), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(-100, -20))
def test_ibeacon_frame_round_trips(uuid: uuidlib.UUID, major: int, minor: int, power: int) -> None:
    tag = IBeaconTag(kind="ibeacon", name="t", uuid=str(uuid).upper(), major=major, minor=minor,
                     measured_power_dbm=power, tx_power_dbm=0, interval_ms=100)
    assert _parse_ibeacon(bytes.fromhex(tag.advertisement()["hex"])) == (str(uuid), major, minor, power)


@settings(derandomize=True, max_examples=100)
@given(st.binary(min_size=10, max_size=10), st.binary(min_size=6, max_size=6), st.integers(-100, -20))
def test_eddystone_frame_layout(namespace: bytes, instance: bytes, power: int) -> None:
    tag = EddystoneUidTag(kind="eddystone-uid", name="t", namespace=namespace.hex(), instance=instance.hex(),
                          measured_power_dbm=power, tx_power_dbm=0, interval_ms=100)
    frame = bytes.fromhex(tag.advertisement()["hex"])
    assert len(frame) == 20
    assert frame[0] == 0x00
    assert int.from_bytes(frame[1:2], "big", signed=True) == power + 41  # power at 0 m
    assert frame[2:12] == namespace
    assert frame[12:18] == instance
    # ESPresense v4 prints namespace byte 4 twice; the include filter holds that form.
    assert tag.espresense_id() == f"eddy:{namespace[:5].hex()}{namespace[4:].hex()}-{instance.hex()}"
