"""Site config validation: each rule a technician can break gives one line naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.config import SERIAL_READER, ConfigError, load_site
from agent.mqttclient import BrokerConfig
from agent.tomllines import key_lines

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml"


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    text = EXAMPLE.read_text()
    assert old in text, old
    path = tmp_path / "site.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def _line_of(path: Path, needle: str) -> int:
    """The last line holding ``needle`` (a duplicate is blamed where it repeats), or the first with ``first:``."""
    first = needle.startswith("first:")
    needle = needle.removeprefix("first:")
    hits = [number for number, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    return hits[0] if first else hits[-1]


def test_example_is_valid() -> None:
    site = load_site(EXAMPLE)
    assert site.store.id == "fishmonger-01"
    assert 6 <= len(site.receivers) <= 8
    assert any(sector.entrance for sector in site.sectors)
    assert site.nfc_readers[0].sector == "checkout"


BROKEN = [
    # (rule, old text, new text, key path in the message, text on the blamed line, message fragment)
    ("toml syntax", 'name = "Pescados y Verduras Marta"', 'name = "Pescados', None, 'name = "Pescados', "TOML syntax"),
    ("type", "x = 15.0\ny = 0.3", 'x = "near the door"\ny = 0.3', "receivers[2].x", 'x = "near the door"', "valid number"),
    ("unknown key", "rssi_at_1m = -59.0\npath_loss_exponent = 2.0\n\n[[receivers]]\nid = \"pi-wifi\"",
     "rssi_at_1m = -59.0\npath_loss_exponnent = 2.0\n\n[[receivers]]\nid = \"pi-wifi\"",
     "receivers[0].path_loss_exponnent", "path_loss_exponnent", "unknown key"),
    ("duplicate id", 'id = "node-fish"', 'id = "node-aisle1"', "receivers[5].id", 'id = "node-aisle1"', "duplicate id"),
    ("polygon not simple", "polygon = [[0, 12], [11, 12], [11, 20], [0, 20]]",
     "polygon = [[0, 12], [11, 20], [11, 12], [0, 20]]", "sectors[5].polygon", "polygon = [[0, 12], [11, 20]",
     "not a simple polygon"),
    ("sector outside outline", "polygon = [[19, 12], [30, 12], [30, 20], [19, 20]]",
     "polygon = [[19, 12], [31, 12], [31, 20], [19, 20]]", "sectors[6].polygon", "[31, 12]", "outside the store outline"),
    ("sectors overlap", "polygon = [[19, 5], [30, 5], [30, 12], [19, 12]]",
     "polygon = [[19, 5], [30, 5], [30, 13], [19, 13]]", "sectors[6].polygon",
     "polygon = [[19, 12], [30, 12]", "overlaps sector 'aisle-3'"),
    ("receiver outside outline", "x = 29.7", "x = 35.0", "receivers[3].x", "x = 35.0", "outside the store outline"),
    ("unknown adjacent sector", 'adjacent = ["greengrocer"]', 'adjacent = ["greengrocers"]', "sectors[4].adjacent",
     'adjacent = ["greengrocers"]', "unknown sector 'greengrocers'"),
    ("named file missing", "[uplink]\n", '[uplink]\ntls.ca_file = "certs/ca.pem"\n', "uplink.tls.ca_file",
     "tls.ca_file", "does not exist"),
    ("radio map missing", "[tracking]\n", '[tracking]\nradio_map = "store.radiomap.npz"\n', "tracking.radio_map",
     "radio_map", "does not exist"),
    ("inline password", "[uplink]\n", '[uplink]\npassword = "hunter2"\n', "uplink.password",
     'password = "hunter2"', "password_file or password_env"),
    ("reader in unknown sector", 'sector = "checkout"', 'sector = "tills"', "nfc_readers[0].sector",
     'sector = "tills"', "unknown sector 'tills'"),
    ("bad nfc device", 'device = "usb"', 'device = "usb-stick"', "nfc_readers[0].device", 'device = "usb-stick"',
     "nfcpy device path"),
    ("no entrance", "entrance = true", "entrance = false", "sectors", "first:[[sectors]]", "no sector has entrance"),
    ("out of range", "path_loss_exponent = 2.2", "path_loss_exponent = 9", "receivers[1].path_loss_exponent",
     "path_loss_exponent = 9", "less than or equal to 6"),
    ("ack mode", "inflight = 20\n", 'inflight = 20\nack = "maybe"\n', "uplink.ack", 'ack = "maybe"',
     "'hq' or 'broker'"),
    ("ack timeout", "inflight = 20\n", "inflight = 20\nack_timeout_s = 0\n", "uplink.ack_timeout_s",
     "ack_timeout_s = 0", "greater than or equal to 1"),
    ("wifi receiver nothing feeds", 'interface = "wlan1mon"', "", "receivers[1].kind", 'kind = "wifi"',
     "[wifi] interface is not set"),
    ("reader outside its sector", 'x = 24.0\ny = 2.0\nsector = "checkout"', 'x = 15.0\ny = 2.0\nsector = "checkout"',
     "nfc_readers[0].x", "x = 15.0", "outside its sector 'checkout'"),
    ("tty reader the unit blocks", 'device = "usb"', 'device = "tty:serial0"', "nfc_readers[0].device",
     'device = "tty:serial0"', "DeviceAllow"),
    ("node name ESPresense renames", 'node_name = "fish"', 'node_name = "Fish Counter"', "receivers[5].node_name",
     'node_name = "Fish Counter"', "publishes room 'Fish Counter' as 'fish_counter'"),
    ("non-ASCII node name", 'node_name = "fish"', 'node_name = "pescadería"', "receivers[5].node_name",
     'node_name = "pescader', "as 'pescader_a'"),
    ("two nodes, one room", 'node_name = "fish"', 'node_name = "greens"', "receivers[6].node_name",
     'node_name = "greens"', "node 'greens' is also receiver 'node-fish'"),
]


@pytest.mark.parametrize(("rule", "old", "new", "key", "line_text", "fragment"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_config_gives_one_line(
    tmp_path: Path, rule: str, old: str, new: str, key: str | None, line_text: str, fragment: str
) -> None:
    path = _variant(tmp_path, old, new)
    with pytest.raises(ConfigError) as info:
        load_site(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{_line_of(path, line_text)}: "), message
    if key is not None:
        assert f": {key}: " in message, message
    assert fragment in message, message
    assert "Traceback" not in message


def _hearing_ble(tmp_path: Path, keep: int) -> Path:
    """The example with only its first ``keep`` receivers that hear BLE (pi-ble, then the nodes)."""
    text = EXAMPLE.read_text()
    blocks = text.split("[[receivers]]\n")
    head, receivers = blocks[0], blocks[1:]
    tail = receivers[-1][receivers[-1].index("[[sectors]]"):]
    receivers[-1] = receivers[-1][:receivers[-1].index("[[sectors]]")]
    hearing = [block for block in receivers if 'kind = "wifi"' not in block]
    wifi = [block for block in receivers if 'kind = "wifi"' in block]
    kept = hearing[:keep] + wifi
    path = tmp_path / "site.toml"
    path.write_text(head + "".join("[[receivers]]\n" + block for block in kept) + tail)
    return path


def test_a_single_receiver_hearing_ble_cannot_place_anyone(tmp_path: Path) -> None:
    path = _hearing_ble(tmp_path, 1)
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert result.stderr == (f"santi: {path}:{_line_of(path, 'first:[[receivers]]')}: receivers: only receiver 'pi-ble' "
                             "hears BLE: one distance cannot place a shopper in one of 7 sectors; add receivers "
                             '(kind = "node"), at least three\n')


def test_two_receivers_hearing_ble_is_a_warning_and_exit_0(tmp_path: Path) -> None:
    path = _hearing_ble(tmp_path, 2)
    result = CliRunner().invoke(cli, ["config", "check", "--quiet", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == (f"santi: warning: {path}:{_line_of(path, 'first:[[receivers]]')}: receivers: only "
                             "'pi-ble' and 'node-entrance' hear BLE: with two distances a position and its mirror "
                             "image across the line between them look alike; add a third receiver\n")
    three = CliRunner().invoke(cli, ["config", "check", "--quiet", str(_hearing_ble(tmp_path, 3))])
    assert (three.exit_code, three.output) == (0, "")


@pytest.mark.parametrize("device", ["tty:USB0", "tty:ACM1", "tty:AMA0:pn532", "tty:S0", "tty:USB"])
def test_serial_readers_the_unit_allows_are_accepted(tmp_path: Path, device: str) -> None:
    site = load_site(_variant(tmp_path, 'device = "usb"', f'device = "{device}"'))
    assert site.nfc_readers[0].device == device


def test_serial_reader_rule_matches_the_unit() -> None:
    """The config accepts a tty: reader exactly when santi-agent.service's DeviceAllow lets its device through."""
    unit = (EXAMPLE.parent.parent / "systemd" / "santi-agent.service").read_text()
    allowed = set(re.findall(r"^DeviceAllow=char-tty(\w+) rw$", unit, re.MULTILINE))
    assert allowed == {"USB", "ACM", "AMA", "S"}
    assert set(re.findall(r"\w+", SERIAL_READER.pattern.split("(", 2)[1].split(")")[0])) == allowed


def test_cli_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(cli, ["config", "check", str(EXAMPLE)])
    assert good.exit_code == 0, good.output
    assert "config OK" in good.output
    bad = _variant(tmp_path, "x = 29.7", "x = 35.0")
    result = runner.invoke(cli, ["config", "check", str(bad)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert re.match(rf"santi: {re.escape(str(bad))}:\d+: receivers\[3\]\.x: ", lines[0])
    missing = runner.invoke(cli, ["config", "check", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2
    assert "no such file" in missing.output


def test_relative_files_resolve_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("x")
    (tmp_path / "broker.pass").write_text("s3cret\n")
    path = _variant(tmp_path, "[uplink]\n",
                    '[uplink]\ntls.ca_file = "certs/ca.pem"\nusername = "store"\npassword_file = "broker.pass"\n')
    site = load_site(path)
    assert site.uplink.tls is not None
    assert site.uplink.tls.ca_file == tmp_path / "certs" / "ca.pem"
    secret = BrokerConfig.of(site.uplink, "test").password()
    assert secret is not None
    assert secret.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(site) + str(secret)


def test_key_lines_tracks_arrays_of_tables() -> None:
    text = "[store]\nid = 'a'\n[[sectors]]\nid = 'x'\npolygon = [\n  [0, 0],\n]\n[[sectors]]\nid = 'y'\n"
    lines = key_lines(text)
    assert lines[("store", "id")] == 2
    assert lines[("sectors", 0, "polygon")] == 5
    assert lines[("sectors", 1, "id")] == 9


def test_a_second_local_receiver_of_a_kind_is_a_warning(tmp_path: Path) -> None:
    """The agent has one Bluetooth adapter: a second kind = "ble" receiver is fed only by a replay (exit 0, stated)."""
    path = _variant(tmp_path, 'id = "node-centre"\nkind = "node"\nnode_name = "centre"', 'id = "pi-ble-2"\nkind = "ble"')
    result = CliRunner().invoke(cli, ["config", "check", "--quiet", "--config", str(path)])
    assert result.exit_code == 0
    line = _line_of(path, 'id = "pi-ble-2"') + 1
    assert result.stderr == (f"santi: warning: {path}:{line}: receivers[7].kind: "
                             "receiver 'pi-ble-2' is a second kind = \"ble\" receiver: the agent listens with one "
                             "Bluetooth adapter ([ble] adapter) and feeds 'pi-ble' only, so a replay alone feeds this "
                             'one; a remote receiver is kind = "node"\n')
