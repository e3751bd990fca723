"""What links the probe requests of one phone, without its MAC leaving the adapter.

Phones that randomise their Wi-Fi MAC still give themselves away to a
counter, which is all the occupancy stage (`positioning.occupancy`) needs:

- the 802.11 sequence number (12 bits) runs on across a MAC change on many
  phones, so a new address that starts where an old one stopped is likely
  the same phone;
- the information elements a probe request carries, in their order and with
  their capability contents (supported rates, HT/VHT/HE capabilities,
  extended capabilities, vendor OUIs), are fixed by the phone's chipset and
  OS version, and differ between models;
- a globally administered (burnt-in) MAC names one device for good, and a
  randomised one names it for as long as the phone keeps it.

This module turns those into a ``ProbeKeys`` record of numbers and keyed
pseudonyms only: the MAC and the element signature pass through the store's
salted HMAC (`agent.privacy`), so they can be compared within a salt period
and with nothing else. The SSID a phone names, the DS channel element and
the contents of vendor elements (a WPS UUID names one device) are left out
of the signature: the first two change from frame to frame, and none of them
is needed to tell phone models apart.

The Wi-Fi source calls `probe_keys` with what it has already parsed from the
frame (see the function's docstring); it is pure and takes no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from agent.privacy import Pseudonymizer

SEQUENCE_MODULUS = 4096
"""802.11 sequence numbers are 12 bits and wrap."""

IE_SSID = 0
IE_DS_PARAMETER = 3
IE_VENDOR = 221
VENDOR_PREFIX = 4
"""OUI (3 octets) and vendor type (1): which vendor element, not its contents."""

_CONTENT_KEPT = frozenset({1, 45, 50, 59, 70, 107, 127, 191, 255})
"""Elements whose contents are a model's fixed capabilities: supported and extended rates
(1, 50), HT (45) and VHT (191) capabilities, supported operating classes (59), RM enabled
capabilities (70), interworking (107), extended capabilities (127), extensions such as HE
capabilities (255)."""
_SIGNATURE_DOMAIN = b"ie-signature|"
"""Prefix that keeps a signature's pseudonym apart from a MAC's under the same salt."""


@dataclass(frozen=True, slots=True)
class ProbeKeys:
    """One probe request as the occupancy stage sees it: numbers and keyed pseudonyms only.

    ``mac_key`` is the same pseudonym the Wi-Fi source gives the observation
    (``pseudonym("wifi", mac)``); for a randomised MAC it links the bursts
    of one phone only while the phone keeps that address.
    """

    ts: float
    rssi_dbm: float
    channel: int | None
    sequence: int | None
    """802.11 sequence number 0..4095, or None when the frame had no sequence control."""
    randomised: bool
    """Locally administered MAC (the phone made it up)."""
    mac_key: str
    signature: str
    """Keyed pseudonym of the element signature: equal for phones of one model and OS."""


def elements(body: bytes) -> Iterator[tuple[int, bytes]]:
    """Every information element of a management frame body, in order, repeats included.

    A truncated last element ends the walk: a frame cut short keeps the
    signature of what arrived whole.
    """
    offset = 0
    while offset + 2 <= len(body):
        length = body[offset + 1]
        end = offset + 2 + length
        if end > len(body):
            return
        yield body[offset], body[offset + 2: end]
        offset = end


def signature(items: Iterable[tuple[int, bytes]]) -> bytes:
    """The stable part of a probe request's elements, as bytes to be keyed.

    Each element contributes its id and, where its contents are a fixed
    capability of the model, a length-prefixed copy of them; a vendor
    element contributes its OUI and type only. The SSID and DS parameter
    elements are skipped.
    """
    parts: list[bytes] = []
    for element, data in items:
        if element in (IE_SSID, IE_DS_PARAMETER):
            continue
        kept = data[:VENDOR_PREFIX] if element == IE_VENDOR else data if element in _CONTENT_KEPT else b""
        parts.append(bytes([element, len(kept)]) + kept)
    return b"".join(parts)


def probe_keys(*, ts: float, mac: bytes, rssi_dbm: float, channel: int | None,
               sequence: int | None, items: Iterable[tuple[int, bytes]],
               pseudonymizer: Pseudonymizer) -> ProbeKeys:
    """The linking keys of one probe request; the raw MAC and elements stay here.

    ``mac`` is the 6-octet source address, ``sequence`` the 12-bit sequence
    number (the high 12 bits of the little-endian sequence-control field,
    dpkt's ``mgmt.sequence_number``), ``items`` the frame's elements
    (`elements` of the body after the 24-octet management header, or dpkt's
    ``[(ie.id, ie.data) for ie in dot11.ies]``).
    """
    if len(mac) != 6:
        raise ValueError(f"a MAC has 6 octets, not {len(mac)}")
    if sequence is not None and not 0 <= sequence < SEQUENCE_MODULUS:
        raise ValueError(f"sequence number {sequence} is outside 0..4095")
    return ProbeKeys(
        ts=ts, rssi_dbm=rssi_dbm, channel=channel, sequence=sequence,
        randomised=bool(mac[0] & 0x02),
        mac_key=pseudonymizer.pseudonym("wifi", mac, ts),
        signature=pseudonymizer.pseudonym("wifi", _SIGNATURE_DOMAIN + signature(items), ts))
