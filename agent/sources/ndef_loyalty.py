"""The loyalty id a card carries in its NDEF message: the format, and reading it.

A Santi loyalty card (or sticker, or phone pass) holds an NDEF message with
one of these records; the first one that matches wins:

* a Text record (NFC Forum well-known type ``T``, any language) whose text
  is ``<text prefix><ID>``, by default ``SANTI-LOYALTY:<ID>``;
* a URI record (well-known type ``U``) ``<uri prefix><ID>``, for a brand that
  already prints cards pointing at its web site, e.g. with the prefix
  ``https://loyalty.example.com/card/`` the URI
  ``https://loyalty.example.com/card/C-000123`` carries ``C-000123``
  (a trailing ``/``, ``?...`` or ``#...`` after the id is ignored).

``<ID>`` is 1 to 64 characters of ``A-Z a-z 0-9 . _ -``, starting with a
letter or digit. It is what HQ receives, as is: the customer presented it.

A card with no matching record is not ours (``None``: the reader then uses
the pseudonymised UID). A message that does not decode, or a record that
has our prefix but a bad id, is ``MalformedNdef``: counted and logged by the
caller, never a crash. Pure functions: bytes in, an id out.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import ndef

from agent.errors import InputError

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_TEXT_PREFIX = "SANTI-LOYALTY:"


class MalformedNdef(InputError):
    """The card's NDEF message is broken, or claims to be ours with a bad id."""


@dataclass(frozen=True)
class LoyaltyFormat:
    """Which records carry a loyalty id; set per deployment (the brand's URI)."""

    text_prefix: str | None = DEFAULT_TEXT_PREFIX
    uri_prefixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.text_prefix == "":
            raise ValueError("the text prefix may not be empty (use None to disable text records)")
        if any(not prefix for prefix in self.uri_prefixes):
            raise ValueError("a URI prefix may not be empty")


def _checked(candidate: str, where: str) -> str:
    if not ID_PATTERN.match(candidate):
        shown = candidate[:40] + ("..." if len(candidate) > 40 else "")
        raise MalformedNdef(f"{where} carries an invalid loyalty id {shown!r}")
    return candidate


def loyalty_id_from_records(records: Iterable[Any], fmt: LoyaltyFormat) -> str | None:
    """The loyalty id in decoded ndeflib records, ``None`` if none is ours."""
    for record in records:
        if isinstance(record, ndef.TextRecord) and fmt.text_prefix is not None:
            text = str(record.text)
            if text.startswith(fmt.text_prefix):
                return _checked(text[len(fmt.text_prefix):].strip(), "text record")
        elif isinstance(record, ndef.UriRecord):
            uri = str(record.iri)
            for prefix in fmt.uri_prefixes:
                if uri.startswith(prefix):
                    rest = re.split(r"[/?#]", uri[len(prefix):], maxsplit=1)[0]
                    return _checked(rest, "URI record")
    return None


def loyalty_id(octets: bytes, fmt: LoyaltyFormat) -> str | None:
    """The loyalty id in an NDEF message, ``None`` if the card is not ours.

    Raises ``MalformedNdef`` when the message does not decode strictly.
    """
    try:
        records = list(ndef.message_decoder(octets, errors="strict"))
    except (ndef.DecodeError, ValueError, IndexError, struct.error) as exc:
        raise MalformedNdef(f"NDEF message does not decode: {exc}") from None
    return loyalty_id_from_records(records, fmt)


def encode_loyalty(card_id: str, fmt: LoyaltyFormat = LoyaltyFormat()) -> bytes:
    """The NDEF message to write on a new card (a Text record), for tools and tests."""
    if fmt.text_prefix is None:
        raise ValueError("this format has no text prefix to write")
    if not ID_PATTERN.match(card_id):
        raise ValueError(f"{card_id!r} is not a loyalty id (1-64 of A-Z a-z 0-9 . _ -)")
    return b"".join(ndef.message_encoder([ndef.TextRecord(fmt.text_prefix + card_id, "en")]))
