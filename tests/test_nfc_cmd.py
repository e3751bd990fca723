"""``santi nfc test`` with nfcpy's ``udp:`` reader and real card emulators in other processes.

The command polls the agent's default technologies (A, B, FeliCa); over udp
each silent one costs the driver a 1 s timeout, so a card is noticed within
about 3 s of being presented.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import ndef
import pytest
from click.testing import CliRunner, Result

from agent.cli import cli
from agent.localbroker import example_site_for, free_port
from agent.privacy import Pseudonymizer
from agent.sources.ndef_loyalty import encode_loyalty
from tests.helpers.nfc_emulators import EmulatedCard

UID = bytes.fromhex("04a1b2c3d4e5f6")       # NTAG213, NXP manufacturer byte first
IDM = bytes.fromhex("03fe0011223344aa")     # FeliCa IDm
BROKEN = bytes.fromhex("d1010f5402656e") + b"SANTI"  # the record claims 15 bytes; 7 follow
SECRET = b"s" * 32
STORE = "fishmonger-01"


def site_with_reader(tmp_path: Path, device: str) -> Path:
    """The example store, its till reader on ``device``, and a store secret already made by the agent."""
    path = example_site_for(tmp_path, free_port())
    path.write_text(path.read_text(encoding="utf-8").replace('device = "usb"', f'device = "{device}"'),
                    encoding="utf-8")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "store.secret").write_bytes(SECRET)
    return path


def santi(*args: str) -> Result:
    return CliRunner().invoke(cli, ["nfc", "test", *args])


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def assert_no_raw_uid(text: str, uid: bytes) -> None:
    spellings = (uid.hex(), uid.hex().upper(), uid.hex(":"), uid.hex(":").upper(), uid[-4:].hex())
    assert not any(spelling in text for spelling in spellings), text


def test_our_loyalty_card(tmp_path: Path) -> None:
    port = free_port()
    site = site_with_reader(tmp_path, f"udp:127.0.0.1:{port}")
    with EmulatedCard("type2", port, UID, encode_loyalty("C-000123"), hold=1.0):
        result = santi(str(site), "--json", "--timeout", "20")
    assert result.exit_code == 0, result.output
    [card] = json_lines(result)
    assert card["tag"] == {"type": "Type2Tag", "product": "NXP NTAG213", "uid": "…:E5:F6", "uid_bytes": 7}
    assert card["ndef"]["records"] == [{"type": "urn:nfc:wkt:T", "value": "SANTI-LOYALTY:C-000123",
                                        "language": "en"}]
    assert (card["ours"], card["loyalty_id"], card["problems"], card["sent"]) == (True, "C-000123", [], True)
    event = card["event"]
    assert (event["type"], event["card"], event["known"], event["linked"]) == ("card.tapped", "C-000123", True, False)
    assert (event["store_id"], event["reader_id"], event["schema"]) == (STORE, "till-1", "santi.presence/1")
    assert card["topic"] == f"santi/v1/{STORE}/pi-backoffice/events/card.tapped"
    assert_no_raw_uid(result.output, UID)


def test_a_card_that_is_not_ours_goes_out_as_the_agents_pseudonym(tmp_path: Path) -> None:
    port = free_port()
    site = site_with_reader(tmp_path, "usb")
    octets = b"".join(ndef.message_encoder([ndef.UriRecord("https://coffee.example.org/stamp/9")]))
    with EmulatedCard("type2", port, UID, octets, hold=1.0):
        result = santi(str(site), "--device", f"udp:127.0.0.1:{port}", "--json", "--timeout", "20")
    assert result.exit_code == 0, result.output
    [card] = json_lines(result)
    assert card["device"] == f"udp:127.0.0.1:{port}"
    assert card["ndef"]["records"] == [{"type": "urn:nfc:wkt:U", "value": "https://coffee.example.org/stamp/9"}]
    assert (card["ours"], card["loyalty_id"], card["secret"]) == (False, None, "store")
    event = card["event"]
    ts = datetime.fromisoformat(event["ts"]).timestamp()
    assert event["card"] == event["subject"] == Pseudonymizer(SECRET, STORE, 86_400.0).pseudonym("card", UID, ts)
    assert not event["known"]
    assert_no_raw_uid(result.output, UID)


def test_a_broken_ndef_message_is_shown_and_tapped_by_uid(tmp_path: Path) -> None:
    port = free_port()
    site = site_with_reader(tmp_path, f"udp:127.0.0.1:{port}")
    with EmulatedCard("type3", port, IDM, BROKEN, hold=1.0):
        result = santi(str(site), "--timeout", "20")
    assert result.exit_code == 0, result.output
    table = result.stdout
    assert "FeliCa" in table
    assert "…:44:AA (8 bytes)" in table
    assert "12 bytes, no record decodes" in table
    assert "malformed NDEF message" in table
    assert "does not decode" in table
    assert re.search(r'"card": "[0-9a-f]{24}"', table)
    assert '"known": false' in table
    assert "malformed NDEF" in result.stderr  # the agent's own warning, as it would log it
    assert_no_raw_uid(result.output, IDM)


def test_the_same_card_back_at_once_is_not_a_new_tap(tmp_path: Path) -> None:
    port = free_port()
    site = site_with_reader(tmp_path, f"udp:127.0.0.1:{port}")
    with EmulatedCard("type2", port, UID, encode_loyalty("C-7"), taps=2, hold=0.6, gap=0.2):
        result = santi(str(site), "--json", "--count", "2", "--timeout", "20")
    assert result.exit_code == 0, result.output
    first, second = json_lines(result)
    assert (first["card"], first["sent"], first["event"]["card"]) == (1, True, "C-7")
    assert (second["card"], second["sent"], second["problems"], second["event"]) == (2, False, ["debounced"], None)
    assert second["loyalty_id"] == "C-7"


def test_no_card_within_the_timeout_exits_1(tmp_path: Path) -> None:
    site = site_with_reader(tmp_path, f"udp:127.0.0.1:{free_port()}")
    started = time.monotonic()
    result = santi(str(site), "--timeout", "1.5", "--json")
    elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr == "santi: no card presented on reader till-1 within 1.5 s\n"
    assert 1.5 <= elapsed < 8.0


TILL_2 = '\n[[nfc_readers]]\nid = "till-2"\ndevice = "usb"\nx = 26.0\ny = 2.0\nsector = "checkout"\n'


@pytest.mark.parametrize(("edit", "args", "message"), [
    (None, ["--reader", "till-9"], "site.toml: no NFC reader 'till-9' (nfc_readers: till-1)"),
    (TILL_2, [], "site.toml has 2 NFC readers; choose one with --reader (till-1, till-2)"),
    ("", [], "site.toml: no [[nfc_readers]] in this site; add one with its device (e.g. usb)"),
    (None, ["--device", "bluetooth"], ("--device 'bluetooth': expected an nfcpy device path such as usb, "
                                      "usb:001:004, tty:USB0:pn532 or udp:127.0.0.1:54321")),
    (None, ["--device", "tty:S99:pn532"], "no NFC reader at tty:S99:pn532 (unplugged?)"),
])
def test_bad_reader_choices_are_one_line_and_exit_2(tmp_path: Path, edit: str | None, args: list[str],
                                                    message: str) -> None:
    site = site_with_reader(tmp_path, "udp:127.0.0.1:9")
    text = site.read_text(encoding="utf-8")
    if edit == "":
        text = re.sub(r"\[\[nfc_readers\]\]\n(?:[^\[\n].*\n)*", "", text)
    elif edit is not None:
        text += edit
    site.write_text(text, encoding="utf-8")
    result = santi(str(site), *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"santi: {message}".replace("site.toml", str(site), 1)]
    assert result.stdout == ""
