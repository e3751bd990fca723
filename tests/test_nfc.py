"""The NDEF loyalty format, and the NFC source's pure decisions."""

from __future__ import annotations

import errno

import ndef
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sources.ndef_loyalty import (
    LoyaltyFormat,
    MalformedNdef,
    encode_loyalty,
    loyalty_id,
    loyalty_id_from_records,
)
from agent.sources.nfc import describe_open_error

BRAND = LoyaltyFormat(uri_prefixes=("https://loyalty.example.com/card/",))


def message(*records: ndef.Record) -> bytes:
    return b"".join(ndef.message_encoder(list(records)))


def test_text_record_carries_the_id() -> None:
    assert loyalty_id(message(ndef.TextRecord("SANTI-LOYALTY:C-000123", "es")), BRAND) == "C-000123"
    assert loyalty_id(encode_loyalty("AB.12_x"), LoyaltyFormat()) == "AB.12_x"


def test_uri_record_carries_the_id() -> None:
    for uri in ("https://loyalty.example.com/card/C-000123",
                "https://loyalty.example.com/card/C-000123/",
                "https://loyalty.example.com/card/C-000123?utm=till#x"):
        assert loyalty_id(message(ndef.UriRecord(uri)), BRAND) == "C-000123"


def test_first_matching_record_wins_and_others_are_ignored() -> None:
    octets = message(ndef.UriRecord("https://shop.example.com"), ndef.TextRecord("hello"),
                     ndef.TextRecord("SANTI-LOYALTY:FIRST"), ndef.TextRecord("SANTI-LOYALTY:SECOND"))
    assert loyalty_id(octets, BRAND) == "FIRST"


def test_cards_that_are_not_ours() -> None:
    assert loyalty_id(b"", BRAND) is None
    assert loyalty_id(message(ndef.UriRecord("https://other.example.org/card/1")), BRAND) is None
    assert loyalty_id(message(ndef.TextRecord("LOYALTY:123")), BRAND) is None
    # a URI prefix only counts where configured
    assert loyalty_id(message(ndef.UriRecord("https://loyalty.example.com/card/1")), LoyaltyFormat()) is None
    assert loyalty_id_from_records([], BRAND) is None


@pytest.mark.parametrize("octets", [
    b"\xd1\x01\xff",                        # record longer than the message
    b"\x91\x01\x04T\x02enA",                # message never ends (no ME flag)
    b"\xd1\x01\x08U\x04loyal/\xff\xfe",     # URI that is not UTF-8
    bytes(range(30)),
])
def test_broken_messages_are_malformed(octets: bytes) -> None:
    with pytest.raises(MalformedNdef, match="does not decode"):
        loyalty_id(octets, BRAND)


@pytest.mark.parametrize("text", ["SANTI-LOYALTY:", "SANTI-LOYALTY:has space", "SANTI-LOYALTY:-lead",
                                  "SANTI-LOYALTY:" + "x" * 65, "SANTI-LOYALTY:ñ"])
def test_our_prefix_with_a_bad_id_is_malformed(text: str) -> None:
    with pytest.raises(MalformedNdef, match="invalid loyalty id"):
        loyalty_id(message(ndef.TextRecord(text)), BRAND)


def test_format_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="text prefix"):
        LoyaltyFormat(text_prefix="")
    with pytest.raises(ValueError, match="URI prefix"):
        LoyaltyFormat(uri_prefixes=("",))
    with pytest.raises(ValueError, match="not a loyalty id"):
        encode_loyalty("no spaces please")


@settings(derandomize=True, max_examples=400)
@given(st.binary(max_size=120))
def test_any_octets_give_an_id_none_or_malformed(octets: bytes) -> None:
    try:
        result = loyalty_id(octets, BRAND)
    except MalformedNdef:
        return
    assert result is None or 1 <= len(result) <= 64


@settings(derandomize=True, max_examples=200)
@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True))
def test_every_valid_id_round_trips(card_id: str) -> None:
    assert loyalty_id(encode_loyalty(card_id), BRAND) == card_id
    uri = message(ndef.UriRecord("https://loyalty.example.com/card/" + card_id))
    assert loyalty_id(uri, BRAND) == card_id


def test_open_errors_read_as_advice() -> None:
    assert describe_open_error("usb", OSError(errno.ENODEV, "No such device")) == "no NFC reader at usb (unplugged?)"
    assert "udev" in describe_open_error("usb", OSError(errno.EACCES, "Permission denied"))
    assert "busy" in describe_open_error("usb", OSError(errno.EBUSY, "Busy"))
    libusb = FileNotFoundError(2, "cannot find a suitable libusb-1.0: [...]")
    assert "apt-get install libusb-1.0-0" in describe_open_error("usb", libusb)
    assert describe_open_error("udp:x", ValueError("bad path")) == "reader udp:x: bad path"
