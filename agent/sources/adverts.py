"""Pure parsers for BLE advertisement payloads, and the allow-list decision.

Everything here is a function of bytes and config: no radio, no clock, no
logging. A malformed payload raises ``AdvertParseError`` whose ``reason`` is a
short fixed token (``ibeacon_length``, ``eddystone_frame``, ...) the source
counts its drops by; no other exception escapes a parser, whatever the bytes.

Power figures are normalised to "expected RSSI at 1 m" (what the tracker's
path-loss model wants): iBeacon measured power and AltBeacon reference RSSI
already are; Eddystone frames and the TX Power Level AD field give power at
0 m, which loses about 41 dB over the first metre (Eddystone spec).
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass

from agent.config import BleConfig
from agent.errors import InputError

APPLE = 0x004C
BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"
EDDYSTONE_UUID = "0000feaa" + BASE_UUID_SUFFIX
LOSS_0M_TO_1M_DB = 41
PLAUSIBLE_POWER_AT_1M_DBM = (-100, 0)

AD_FLAGS = 0x01
AD_TX_POWER = 0x0A
AD_SERVICE_DATA_16 = 0x16
AD_SERVICE_DATA_32 = 0x20
AD_SERVICE_DATA_128 = 0x21
AD_MANUFACTURER = 0xFF

_URL_SCHEMES = ("http://www.", "https://www.", "http://", "https://")
_URL_EXPANSIONS = (
    ".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/",
    ".com", ".org", ".edu", ".net", ".info", ".biz", ".gov",
)


class AdvertParseError(InputError):
    """A payload that is not what its header claims; ``reason`` is a stable token to count by."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class IBeacon:
    """Apple iBeacon: the loyalty app's phone identity survives BLE address rotation."""

    uuid: str
    major: int
    minor: int
    measured_power_dbm: int  # RSSI at 1 m as programmed; may be nonsense (see plausible_power)

    @property
    def identity(self) -> str:
        return f"ibeacon:{self.uuid}:{self.major}:{self.minor}"


@dataclass(frozen=True, slots=True)
class AltBeacon:
    """Radius Networks' open beacon format; ``id1`` is a UUID like an iBeacon's."""

    company_id: int
    id1: str
    id2: int
    id3: int
    reference_rssi_dbm: int  # at 1 m
    reserved: int

    @property
    def identity(self) -> str:
        return f"altbeacon:{self.id1}:{self.id2}:{self.id3}"


@dataclass(frozen=True, slots=True)
class Manufacturer:
    """Manufacturer-specific data we do not decode further (Apple continuity, Microsoft CDP, ...)."""

    company_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class EddystoneUID:
    namespace: str  # 20 hex digits
    instance: str  # 12 hex digits
    tx_power_0m_dbm: int

    @property
    def identity(self) -> str:
        return f"eddystone:{self.namespace}:{self.instance}"


@dataclass(frozen=True, slots=True)
class EddystoneURL:
    url: str
    tx_power_0m_dbm: int


@dataclass(frozen=True, slots=True)
class EddystoneTLM:
    """Unencrypted telemetry (version 0); ``None`` where the tag says "not supported"."""

    battery_mv: int | None
    temperature_c: float | None
    adv_count: int
    uptime_s: float


@dataclass(frozen=True, slots=True)
class EddystoneETLM:
    """Encrypted telemetry (version 1): opaque without the tag's identity key."""

    etlm: bytes
    salt: int
    mic: int


@dataclass(frozen=True, slots=True)
class EddystoneEID:
    eid: bytes
    tx_power_0m_dbm: int


@dataclass(frozen=True, slots=True)
class ServiceData:
    """Service data for a UUID we do not decode."""

    uuid: str
    data: bytes


@dataclass(frozen=True, slots=True)
class AdStructure:
    """One length-type-value element of a raw advertising payload."""

    ad_type: int
    data: bytes


Eddystone = EddystoneUID | EddystoneURL | EddystoneTLM | EddystoneETLM | EddystoneEID
Advert = IBeacon | AltBeacon | Manufacturer | Eddystone | ServiceData


def _int8(value: int) -> int:
    return value - 256 if value > 127 else value


def _uuid_text(raw: bytes) -> str:
    """8-4-4-4-12 lower-case hex of 16 bytes (``str(uuid.UUID(bytes=raw))``, without its cost per advert)."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def normalise_uuid(text: str) -> str:
    """The 128-bit lower-case form of a 16-, 32- or 128-bit service UUID."""
    value = text.strip().lower()
    if len(value) in (4, 8) and all(ch in "0123456789abcdef" for ch in value):
        return value.rjust(8, "0") + BASE_UUID_SUFFIX
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise AdvertParseError("uuid", f"{text[:40]!r} is not a service UUID") from None


def parse_manufacturer(company_id: int, data: bytes) -> IBeacon | AltBeacon | Manufacturer:
    """Decode manufacturer-specific data (AD type 0xFF, company id already split off)."""
    if not 0 <= company_id <= 0xFFFF:
        raise AdvertParseError("company_id", f"{company_id} is not a 16-bit company identifier")
    if company_id == APPLE and data[:2] == b"\x02\x15":
        if len(data) != 23:
            raise AdvertParseError("ibeacon_length", f"iBeacon payload is {len(data)} bytes, expected 23")
        return IBeacon(
            uuid=_uuid_text(data[2:18]),
            major=int.from_bytes(data[18:20], "big"),
            minor=int.from_bytes(data[20:22], "big"),
            measured_power_dbm=_int8(data[22]),
        )
    if data[:2] == b"\xbe\xac":
        if len(data) != 24:
            raise AdvertParseError("altbeacon_length", f"AltBeacon payload is {len(data)} bytes, expected 24")
        return AltBeacon(
            company_id=company_id,
            id1=_uuid_text(data[2:18]),
            id2=int.from_bytes(data[18:20], "big"),
            id3=int.from_bytes(data[20:22], "big"),
            reference_rssi_dbm=_int8(data[22]),
            reserved=data[23],
        )
    return Manufacturer(company_id=company_id, data=bytes(data))


def _eddystone_url(data: bytes) -> EddystoneURL:
    if len(data) < 3:
        raise AdvertParseError("eddystone_url_length", f"URL frame is {len(data)} bytes, expected at least 3")
    if len(data) > 20:
        raise AdvertParseError("eddystone_url_length", f"URL frame is {len(data)} bytes, at most 20 allowed")
    scheme = data[2]
    if scheme >= len(_URL_SCHEMES):
        raise AdvertParseError("eddystone_url_scheme", f"URL scheme prefix 0x{scheme:02x} is not defined")
    parts = [_URL_SCHEMES[scheme]]
    for byte in data[3:]:
        if byte < len(_URL_EXPANSIONS):
            parts.append(_URL_EXPANSIONS[byte])
        elif 0x21 <= byte <= 0x7E:
            parts.append(chr(byte))
        else:
            raise AdvertParseError("eddystone_url_char", f"URL byte 0x{byte:02x} is reserved")
    return EddystoneURL(url="".join(parts), tx_power_0m_dbm=_int8(data[1]))


def _eddystone_tlm(data: bytes) -> EddystoneTLM | EddystoneETLM:
    if len(data) < 2:
        raise AdvertParseError("eddystone_tlm_length", "TLM frame has no version byte")
    version = data[1]
    if version == 0x01:
        if len(data) != 18:
            raise AdvertParseError("eddystone_tlm_length", f"encrypted TLM frame is {len(data)} bytes, expected 18")
        return EddystoneETLM(etlm=bytes(data[2:14]), salt=int.from_bytes(data[14:16], "big"),
                             mic=int.from_bytes(data[16:18], "big"))
    if version != 0x00:
        raise AdvertParseError("eddystone_tlm_version", f"TLM version 0x{version:02x} is not defined")
    if len(data) != 14:
        raise AdvertParseError("eddystone_tlm_length", f"TLM frame is {len(data)} bytes, expected 14")
    battery = int.from_bytes(data[2:4], "big")
    raw_temp = int.from_bytes(data[4:6], "big", signed=True)
    return EddystoneTLM(
        battery_mv=battery or None,
        temperature_c=None if raw_temp == -0x8000 else raw_temp / 256.0,
        adv_count=int.from_bytes(data[6:10], "big"),
        uptime_s=int.from_bytes(data[10:14], "big") / 10.0,
    )


def parse_eddystone(data: bytes) -> Eddystone:
    """Decode the service data of UUID 0xFEAA (frame type byte first)."""
    if not data:
        raise AdvertParseError("eddystone_empty", "Eddystone service data is empty")
    frame = data[0]
    if frame == 0x00:
        # The spec's 20 bytes end in 2 reserved bytes that real tags (Estimote) leave out.
        if not 18 <= len(data) <= 20:
            raise AdvertParseError("eddystone_uid_length", f"UID frame is {len(data)} bytes, expected 18 to 20")
        return EddystoneUID(namespace=data[2:12].hex(), instance=data[12:18].hex(),
                            tx_power_0m_dbm=_int8(data[1]))
    if frame == 0x10:
        return _eddystone_url(data)
    if frame == 0x20:
        return _eddystone_tlm(data)
    if frame == 0x30:
        if len(data) != 10:
            raise AdvertParseError("eddystone_eid_length", f"EID frame is {len(data)} bytes, expected 10")
        return EddystoneEID(eid=bytes(data[2:10]), tx_power_0m_dbm=_int8(data[1]))
    raise AdvertParseError("eddystone_frame", f"Eddystone frame type 0x{frame:02x} is not defined")


def parse_service_data(uuid: str, data: bytes) -> Eddystone | ServiceData:
    """Decode service data; ``uuid`` may be 16-, 32- or 128-bit text, as bleak or a log spells it."""
    full = normalise_uuid(uuid)
    if full == EDDYSTONE_UUID:
        return parse_eddystone(data)
    return ServiceData(uuid=full, data=bytes(data))


def split_ad(payload: bytes) -> list[AdStructure]:
    """Split a raw advertising payload (AdvData / scan response) into its AD structures.

    A zero length byte ends the payload (controllers pad to 31 bytes with zeros).
    """
    structures: list[AdStructure] = []
    index = 0
    while index < len(payload):
        length = payload[index]
        if length == 0:
            break
        end = index + 1 + length
        if end > len(payload):
            raise AdvertParseError("ad_truncated", f"AD structure at byte {index} claims {length} bytes, "
                                                   f"{len(payload) - index - 1} left")
        structures.append(AdStructure(ad_type=payload[index + 1], data=bytes(payload[index + 2:end])))
        index = end
    return structures


def parse_ad(payload: bytes) -> list[Advert]:
    """The manufacturer and service data of a raw advertising payload, decoded."""
    adverts: list[Advert] = []
    for item in split_ad(payload):
        if item.ad_type == AD_MANUFACTURER:
            if len(item.data) < 2:
                raise AdvertParseError("manufacturer_length", "manufacturer data shorter than its company id")
            adverts.append(parse_manufacturer(int.from_bytes(item.data[:2], "little"), item.data[2:]))
        elif item.ad_type in (AD_SERVICE_DATA_16, AD_SERVICE_DATA_32, AD_SERVICE_DATA_128):
            width = {AD_SERVICE_DATA_16: 2, AD_SERVICE_DATA_32: 4, AD_SERVICE_DATA_128: 16}[item.ad_type]
            if len(item.data) < width:
                raise AdvertParseError("service_data_length", "service data shorter than its UUID")
            raw_uuid = item.data[:width][::-1]
            text = raw_uuid.hex() if width < 16 else _uuid_text(raw_uuid)
            adverts.append(parse_service_data(text, item.data[width:]))
    return adverts


def plausible_power(dbm: int) -> int | None:
    """A power at 1 m the tracker can use, or ``None`` for a wrongly programmed beacon (e.g. +30 dBm)."""
    low, high = PLAUSIBLE_POWER_AT_1M_DBM
    return dbm if low <= dbm <= high else None


def power_at_1m(advert: Advert) -> int | None:
    """The advert's own idea of its RSSI at 1 m, if it carries one that makes sense."""
    if isinstance(advert, IBeacon):
        return plausible_power(advert.measured_power_dbm)
    if isinstance(advert, AltBeacon):
        return plausible_power(advert.reference_rssi_dbm)
    if isinstance(advert, EddystoneUID | EddystoneURL | EddystoneEID):
        return plausible_power(advert.tx_power_0m_dbm - LOSS_0M_TO_1M_DB)
    return None


@dataclass(frozen=True, slots=True)
class Emitter:
    """Who sent an advertisement: a stable beacon identity, or ``None`` to fall back on the BLE address."""

    identity: str | None
    power_at_1m_dbm: int | None


@dataclass(frozen=True, slots=True)
class AllowList:
    """Which emitters the site wants located: the loyalty app's beacon UUIDs and its tags' namespaces.

    AltBeacon ``id1`` is matched against the same UUID list as iBeacon: an app
    that advertises both formats uses one UUID for both.
    """

    beacon_uuids: frozenset[str]
    namespaces: frozenset[str]
    allow_all: bool

    @classmethod
    def from_config(cls, config: BleConfig) -> AllowList:
        return cls(beacon_uuids=frozenset(u.lower() for u in config.ibeacon_uuids),
                   namespaces=frozenset(n.lower() for n in config.eddystone_namespaces),
                   allow_all=config.allow_all)

    def admits(self, advert: Advert) -> bool:
        """True when this one frame names an emitter the site allows."""
        if isinstance(advert, IBeacon):
            return advert.uuid in self.beacon_uuids
        if isinstance(advert, AltBeacon):
            return advert.id1 in self.beacon_uuids
        if isinstance(advert, EddystoneUID):
            return advert.namespace in self.namespaces
        return False

    def choose(self, adverts: Sequence[Advert], tx_power_level_dbm: int | None) -> Emitter | None:
        """The emitter to report for one advertisement's frames, or ``None`` when the site does not want it.

        An allowed beacon identity wins (it is stable across address rotation);
        with ``allow_all`` any other advertisement is reported by address.
        """
        for advert in adverts:
            if isinstance(advert, IBeacon | AltBeacon | EddystoneUID) and self.admits(advert):
                return Emitter(identity=advert.identity, power_at_1m_dbm=power_at_1m(advert))
        if not self.allow_all:
            return None
        for advert in adverts:
            if isinstance(advert, IBeacon | AltBeacon | EddystoneUID):
                return Emitter(identity=advert.identity, power_at_1m_dbm=power_at_1m(advert))
        power = next((p for p in map(power_at_1m, adverts) if p is not None), None)
        if power is None and tx_power_level_dbm is not None:
            power = plausible_power(tx_power_level_dbm - LOSS_0M_TO_1M_DB)
        return Emitter(identity=None, power_at_1m_dbm=power)


def app_loyalty_id(identity: str | None, config: BleConfig) -> str | None:
    """The loyalty id the app encodes in an allowed iBeacon's major/minor, if the site uses that scheme.

    ``identity`` is ``ibeacon:<uuid>:<major>:<minor>`` as chosen by the
    allow-list; the id is ``<prefix><major·65536 + minor, 6+ digits>``.
    """
    if config.app_loyalty_prefix is None or identity is None or not identity.startswith("ibeacon:"):
        return None
    _, uuid, major, minor = identity.split(":")
    if uuid not in config.ibeacon_uuids:
        return None
    return f"{config.app_loyalty_prefix}{(int(major) << 16) | int(minor):06d}"
