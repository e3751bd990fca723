"""The site config: one TOML file that describes a store to its agent.

Validated with pydantic, then checked for what a technician gets wrong on a
ladder: sectors drawn across each other, a receiver placed outside the walls,
a certificate path with a typo. Any problem becomes ONE line naming the file,
the line, the key and what is wrong (``ConfigError``), never a traceback.

Secrets are never values in this file: the MQTT password and the store
secret come from a file or an environment variable, read when needed.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from shapely.geometry import Point, Polygon

from agent.errors import InputError
from agent.events import AckMode
from agent.fingerprint_file import FingerprintFileError, read_fingerprint
from agent.radiomap_file import RadioMapFileError, read_radio_map
from agent.tomllines import format_loc, located, read_text, syntax_error
from positioning.fingerprint import Fingerprint
from positioning.occupancy import WALL_LOSS_DB, EstimateConfig
from positioning.sectors import SECTOR_HOLD_S, SECTOR_THRESHOLD, SECTOR_WALK_M
from positioning.tracker import STILL_AND_GRID, TrackerConfig

Loc = tuple[str | int, ...]
XY = tuple[float, float]

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class ConfigError(InputError):
    """A config problem, already worded as the one line a person reads."""


def room_slug(name: str) -> str:
    """The room id ESPresense derives from its room name (lib/utils/string_utils.cpp ``slugify``).

    Every byte that is not an ASCII letter, digit or ``_`` starts a run that
    becomes one ``_``; the result is lower-cased and stripped of ``_`` at both
    ends. Topics use it, so a ``node_name`` must already be its own slug.
    """
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).lower().strip("_")


SERIAL_READER = re.compile(r"tty:(S|ACM|AMA|USB)\d*(:\w+)?")
"""The serial NFC readers the agent's unit lets through (DeviceAllow char-ttyS, -ttyACM, -ttyAMA, -ttyUSB)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreConfig(_Model):
    id: Id
    name: str = Field(min_length=1, max_length=200)
    outline: list[tuple[Finite, Finite]] = Field(min_length=3, description="Walls, metres.")


class AgentConfig(_Model):
    id: Id
    role: Literal["locator", "node", "both"] = "locator"
    state_dir: Path = Field(default=Path("/var/lib/santi"), description="Outbox and secrets live here.")
    status_interval_s: float = Field(default=60.0, gt=0.0)


class ReceiverConfig(_Model):
    id: Id
    kind: Literal["ble", "wifi", "node"]
    x: Finite
    y: Finite
    z: Finite = Field(default=2.5, ge=0.0, le=20.0)
    rssi_at_1m: float = Field(default=-59.0, ge=-110.0, le=10.0)
    path_loss_exponent: float = Field(default=2.0, ge=1.0, le=6.0)
    noise_sigma_db: float = Field(default=4.0, gt=0.0, le=20.0)
    node_name: str | None = Field(
        default=None, description="Name the remote node publishes under (ESPresense room), if kind = node."
    )


class SectorConfig(_Model):
    id: Id
    name: str = Field(min_length=1, max_length=200)
    polygon: list[tuple[Finite, Finite]] = Field(min_length=3)
    adjacent: list[Id] = Field(default_factory=list)
    entrance: bool = Field(default=False, description="Shoppers enter and leave the store through it.")


class NfcReaderConfig(_Model):
    id: Id
    device: str = Field(description="nfcpy device path: usb, usb:BUS:DEV, tty:..., udp:HOST:PORT.")
    x: Finite
    y: Finite
    sector: Id

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"(usb(:[0-9a-fA-F:]+)?|tty:\S+|udp(:[\w.\-]+(:\d{1,5})?)?)", value):
            raise ValueError("must be an nfcpy device path such as 'usb', 'usb:001:004' or 'udp:127.0.0.1:54321'")
        return value


class TlsConfig(_Model):
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


class BrokerSettings(_Model):
    """Where an MQTT broker is and how to log in: ``[uplink]`` and ``[nodes]`` share this shape.

    The password is never a value here, only where to read it
    (``agent.mqttclient`` reads it when a client is built).
    """

    section: ClassVar[str] = "uplink"
    """The config section, so that messages name the key a technician edits."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    tls: TlsConfig | None = None
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None

    def password_file_problem(self) -> str | None:
        """One line if ``password_file`` can be read by anyone but its owner, else None.

        Warned about, not refused: by the time the agent sees the mode the
        password is already exposed, and refusing would stop the store's
        uplink over something only an operator can fix. ``santi doctor``
        fails on it, with the command that fixes it.
        """
        if self.password_file is None:
            return None
        try:
            mode = self.password_file.stat().st_mode & 0o777
        except OSError:
            return None  # reading it says why, when the client is built
        if not mode & 0o077:
            return None
        return (f"{self.section}.password_file {self.password_file} is readable by other users (mode {mode:04o}) — "
                f"`chmod 600 {self.password_file}` and give it to the agent's user")


class UplinkConfig(BrokerSettings):
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    inflight: int = Field(default=20, ge=1, le=1000, description="QoS 1 messages awaiting PUBACK.")
    ack: AckMode = Field(
        default="hq",
        description=("When an event leaves the outbox: 'hq' once HQ acknowledges it as stored; 'broker' at the "
                     "broker's PUBACK (weaker: a broker restart or an absent HQ subscriber can lose events)."),
    )
    ack_timeout_s: float = Field(
        default=30.0, ge=1.0, le=86400.0, allow_inf_nan=False,
        description="Send an event again when HQ has not acknowledged it this long after the broker's PUBACK.",
    )


RESERVE_BYTES = 32 * 1024 * 1024
"""Default free space kept on the outbox's filesystem: room for logs, the OS and a WAL that deletes."""


class BufferConfig(_Model):
    max_rows: int = Field(default=1_000_000, ge=100)
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=64 * 1024)
    max_age_days: float = Field(default=30.0, gt=0.0)
    reserve_bytes: int = Field(
        default=RESERVE_BYTES, ge=0,
        description="Free space the outbox keeps on its filesystem: below it the oldest events are evicted.",
    )


class PrivacyConfig(_Model):
    secret_file: Path | None = Field(
        default=None, description="Store secret for keyed hashing; generated in state_dir if unset."
    )
    secret_env: str | None = None
    salt_rotation_hours: float = Field(default=24.0, gt=0.0, le=24.0 * 366)
    uplink_positions: bool = False


class BleConfig(_Model):
    adapter: str = "hci0"
    scanning: Literal["active", "passive"] = "passive"
    ibeacon_uuids: list[str] = Field(default_factory=list, description="Loyalty app beacon UUIDs.")
    eddystone_namespaces: list[str] = Field(default_factory=list, description="10-byte hex tag namespaces.")
    allow_all: bool = False
    app_loyalty_prefix: str | None = Field(
        default=None, min_length=1, max_length=16,
        description="The app encodes the loyalty number in iBeacon major/minor: id = prefix + 6+ digits.",
    )

    @field_validator("ibeacon_uuids")
    @classmethod
    def _uuids(cls, values: list[str]) -> list[str]:
        pattern = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
        for value in values:
            if not pattern.match(value):
                raise ValueError(f"{value!r} is not a UUID like 8-4-4-4-12 hex digits")
        return [value.lower() for value in values]

    @field_validator("eddystone_namespaces")
    @classmethod
    def _namespaces(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.fullmatch(r"[0-9a-fA-F]{20}", value):
                raise ValueError(f"{value!r} is not a 10-byte namespace (20 hex digits)")
        return [value.lower() for value in values]


class NodesConfig(BrokerSettings):
    """The store's local MQTT broker, where receiver nodes publish what they hear.

    Without this section nothing subscribes to a node broker: receivers of
    ``kind = "node"`` then need one (a config error says so).
    """

    section: ClassVar[str] = "nodes"


class NfcConfig(_Model):
    """Where a card's NDEF message carries the loyalty id (see README, 'Loyalty cards')."""

    text_prefix: str | None = Field(default="SANTI-LOYALTY:", min_length=1,
                                    description="Text record 'PREFIX<ID>'; null disables text records.")
    uri_prefixes: list[str] = Field(default_factory=list, description="URI records '<prefix><ID>'.")

    @field_validator("uri_prefixes")
    @classmethod
    def _prefixes(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value:
                raise ValueError("a URI prefix may not be empty")
        return values


class WifiConfig(_Model):
    interface: str | None = Field(default=None, description="Monitor-mode interface, e.g. wlan1mon.")


DEFAULT_MAX_EMITTERS = 20_000
"""Tracked emitters at most, by default: sized for the unit's ``MemoryMax=256M``.

Anyone in the street can advertise, so the number of emitters is not the
store's to choose. A track holds under 1 KB (tracker rows, sector filter,
maps), but a flood's windows birth thousands at once and their temporaries
count too: measured as RSS, about 2 KB a track. The idle agent takes
~80 MB, which leaves ~175 MB, room for some 85,000 tracks with nothing
else going on; a quarter of that keeps a flood far from the limit while
the outbox, the uplink and allocator slack take their share, and is still
20 times the emitters of a crowded store (1,000). Figures in
benchmarks/README.md (``benchmarks/flood.py``).
"""


_TRACKER = TrackerConfig()
"""The tracker's own defaults: the one home of the [tracking] keys that configure it."""


class TrackingConfig(_Model):
    window_s: float = Field(default=1.0, gt=0.0, le=10.0)
    track_silence_s: float = Field(default=_TRACKER.max_silence_s, gt=0.0)
    max_emitters: int = Field(
        default=DEFAULT_MAX_EMITTERS, ge=1, le=1_000_000,
        description="Emitters tracked at once; readings of new ones beyond it are dropped as emitter_cap.")
    visit_silence_s: float = Field(default=120.0, gt=0.0)
    emitter_height_m: float = Field(default=_TRACKER.emitter_z, ge=0.0, le=3.0)
    hysteresis_s: float = Field(default=SECTOR_HOLD_S, ge=0.0, le=60.0)
    sector_threshold: float = Field(default=SECTOR_THRESHOLD, gt=0.5, lt=1.0)
    sector_walk_m: float = Field(
        default=SECTOR_WALK_M, ge=0.0, le=20.0,
        description="How far a track's estimate must have moved from its recent position to change sector, m, "
                    "eq. (26) (0: no walk test; 4 where still shoppers' bodies drag their estimates about).")
    phone_offset_db: float = Field(
        default=_TRACKER.offset_sigma_db, ge=0.0, le=20.0,
        description="Spread of phones' TX offsets the tracker estimates per track, dB (0: phones read as the model).")
    body_loss_db: float = Field(
        default=_TRACKER.body_loss_db, ge=0.0, le=20.0,
        description="Loss a walking shopper's body puts towards receivers behind them, dB, eq. (20) (0: none).")
    body_hold_s: float = Field(
        default=_TRACKER.body_hold_s, ge=0.0, le=3600.0,
        description="How long a stopped shopper's facing is remembered from their walk, s, eq. (21) (0: not at all).")
    still_grid_s: float = Field(
        default=_TRACKER.still_grid_s, ge=0.0, le=600.0,
        description="How long a track must have been still before a grid of the store places it, s, eqs. (43)-(46) "
                    "(0: never; the filter alone).")
    grid_motion_m: float = Field(
        default=_TRACKER.grid_motion_m, ge=0.0, le=5.0,
        description="How far a shopper may move per sqrt(second) as the grid filter sees it, m, eq. (51) (0: no grid "
                    "filter; when on, every track's position is its posterior over the store's cells).")
    grid_sigma_db: float = Field(
        default=_TRACKER.grid_sigma_db, ge=0.0, le=20.0,
        description="Spread of one reading about the model and the radio map as the grid filter weighs it, dB "
                    "(0: each receiver's noise_sigma_db). Used only with grid_motion_m.")
    @model_validator(mode="after")
    def _grid_sigma_needs_the_grid(self) -> TrackingConfig:
        if self.grid_sigma_db > 0.0 and self.grid_motion_m <= 0.0:
            raise ValueError("grid_sigma_db is the grid filter's and grid_motion_m = 0 leaves the filter off: set "
                             "grid_motion_m or drop grid_sigma_db")
        if self.still_grid_s > 0.0 and self.grid_motion_m > 0.0:
            raise ValueError(STILL_AND_GRID)
        return self

    radio_map: Path | None = Field(
        default=None, description="Residual fields from a calibration walk (santi calibrate fit writes it).")
    fingerprint: Path | None = Field(
        default=None, description="Each sector's RSSI signature from a calibration walk, fused with the geometric "
                                  "sector probability (santi calibrate fit writes it).")


_ESTIMATE = EstimateConfig()
"""The estimator's own defaults: the one home of the [footfall] keys' defaults."""
_DEFAULT_THRESHOLD_DBM = float(_ESTIMATE.min_rssi_dbm[0] if isinstance(_ESTIMATE.min_rssi_dbm, tuple)
                               else _ESTIMATE.min_rssi_dbm)


class FootfallConfig(_Model):
    """The occupancy and footfall count (``agent/footfall.py``): on when the site config has a ``[footfall]`` section.

    ``people_per_device``, ``people_offset`` and ``residual_sd`` are alpha,
    beta and s of eq. (34) in ``positioning/occupancy.py``: people per
    counted device, fitted where the store's occupancy was logged by hand;
    ``people_per_entry`` is alpha_e of eq. (39), people per counted entry.
    """

    enabled: bool = Field(default=True, description="false keeps the section but counts nothing.")
    interval_s: float = Field(default=60.0, ge=10.0, le=3600.0,
                              description="Seconds between occupancy.sampled events.")
    window_s: float = Field(default=_ESTIMATE.window_s, ge=600.0, le=86_400.0,
                            description="Probe history an estimate looks at (W): fixtures show by staying for hours.")
    lead_s: float = Field(default=_ESTIMATE.lead_s, ge=0.0, le=1800.0,
                          description="How far behind now a count is taken (L), so a device's next probe can vouch.")
    max_probes: int = Field(default=250_000, ge=1_000, le=5_000_000,
                            description="Probe receptions held at most (41 bytes each, an estimate's temporaries "
                                        "~175); beyond it the oldest go, counted as window_full.")
    min_rssi_dbm: float = Field(default=_DEFAULT_THRESHOLD_DBM, ge=-130.0, le=0.0,
                                description="Weakest median power of a stay still inside (the street reads weaker).")
    people_per_device: float = Field(default=_ESTIMATE.people_per_device, gt=0.0, le=10.0, description="alpha of eq. (34).")
    people_offset: float = Field(default=_ESTIMATE.people_offset, ge=-1000.0, le=1000.0, description="beta of eq. (34), persons.")
    residual_sd: float = Field(default=_ESTIMATE.residual_sd, ge=0.0, le=1000.0, description="s of eq. (34), persons.")
    people_per_entry: float = Field(default=_ESTIMATE.people_per_entry, gt=0.0, le=10.0,
                                    description="alpha_e of eq. (39): people per counted entering stay.")
    wall_loss_db: float = Field(default=WALL_LOSS_DB, ge=0.0, le=60.0,
                                description="What the outer wall takes from the street, dB: eq. (41) places a "
                                            "device heard by two or more receivers inside or outside with it.")

    @model_validator(mode="after")
    def _lead_within_window(self) -> FootfallConfig:
        if self.lead_s >= self.window_s:
            raise ValueError(f"lead_s ({self.lead_s:g}) must be shorter than window_s ({self.window_s:g})")
        return self


class ConsoleConfig(_Model):
    """The store console (``agent/console``): off unless the site config has a ``[console]`` section."""

    listen: str = Field(default="127.0.0.1:8080", description="HOST:PORT the console's HTTP server binds.")
    technician_token_file: Path = Field(description="Bearer token of the technician view and /metrics (0600).")
    staff_token_file: Path = Field(description="Bearer token of the staff view (0600).")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, e.g. '127.0.0.1:8080'")
        return value

    def address(self) -> tuple[str, int]:
        """``listen`` as (host, port); an IPv6 host may be written in brackets."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def _token(path: Path) -> tuple[SecretStr | None, str | None]:
    """A console token from its file, or why it may not be used.

    The file must exist, hold a non-empty token, and be unreadable by group
    and others: a token anyone on the box can read protects nothing.
    """
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}"
    if mode & 0o077:
        return None, f"{path} is readable by group or others; chmod 600 it"
    if not token:
        return None, f"{path} is empty"
    return SecretStr(token), None


def read_token(path: Path, key: str) -> SecretStr:
    """The token in ``path`` (the ``console.<key>`` file), or ``ConfigError`` with one line."""
    token, problem = _token(path)
    if token is None:
        raise ConfigError(f"console.{key}: {problem}")
    return token


class SiteConfig(_Model):
    """A validated site config; ``path`` is where it was read from."""

    store: StoreConfig
    agent: AgentConfig
    receivers: list[ReceiverConfig] = Field(min_length=1)
    sectors: list[SectorConfig] = Field(min_length=1)
    nfc_readers: list[NfcReaderConfig] = Field(default_factory=list)
    uplink: UplinkConfig = Field(default_factory=UplinkConfig)
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    ble: BleConfig = Field(default_factory=BleConfig)
    wifi: WifiConfig = Field(default_factory=WifiConfig)
    nodes: NodesConfig | None = None
    nfc: NfcConfig = Field(default_factory=NfcConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    console: ConsoleConfig | None = None
    footfall: FootfallConfig | None = None
    path: Path | None = Field(default=None, exclude=True)

    def sector_index(self) -> dict[str, int]:
        return {sector.id: index for index, sector in enumerate(self.sectors)}

    def adjacency(self) -> list[set[str]]:
        """Symmetric adjacency per sector: declaring a border on one side is enough."""
        neighbours = [set(sector.adjacent) for sector in self.sectors]
        index = self.sector_index()
        for position, sector in enumerate(self.sectors):
            for other in sector.adjacent:
                neighbours[index[other]].add(sector.id)
            neighbours[position].discard(sector.id)
        return neighbours


def _problem(path: Path, text: str, loc: Loc, message: str) -> ConfigError:
    return ConfigError(located(path, text, loc, message))


def _polygon(points: Sequence[XY]) -> Polygon:
    return Polygon([(float(x), float(y)) for x, y in points])


def _geometry_problems(site: SiteConfig) -> list[tuple[Loc, str]]:
    """Cross-field checks pydantic cannot express, each with the key to blame."""
    problems: list[tuple[Loc, str]] = []
    outline = _polygon(site.store.outline)
    if not outline.is_valid or outline.area <= 0.0:
        problems.append((("store", "outline"), "is not a simple polygon (edges cross or it has no area)"))
        return problems
    walls = outline.buffer(1e-6)

    groups: list[tuple[str, list[str]]] = [
        ("receivers", [item.id for item in site.receivers]),
        ("sectors", [item.id for item in site.sectors]),
        ("nfc_readers", [item.id for item in site.nfc_readers]),
    ]
    for group, ids in groups:
        seen: dict[str, int] = {}
        for index, item_id in enumerate(ids):
            if item_id in seen:
                problems.append(((group, index, "id"), f"duplicate id {item_id!r} (also {group}[{seen[item_id]}])"))
            seen.setdefault(item_id, index)

    polygons: list[Polygon | None] = []
    for index, sector in enumerate(site.sectors):
        poly = _polygon(sector.polygon)
        loc: Loc = ("sectors", index, "polygon")
        if not poly.is_valid or poly.area <= 0.0:
            problems.append((loc, f"sector {sector.id!r} is not a simple polygon (edges cross or it has no area)"))
            polygons.append(None)
            continue
        if not walls.contains(poly):
            problems.append((loc, f"sector {sector.id!r} reaches outside the store outline"))
        polygons.append(poly)
    for j, poly_j in enumerate(polygons):
        for i in range(j):
            poly_i = polygons[i]
            if poly_i is None or poly_j is None:
                continue
            overlap = poly_i.intersection(poly_j).area
            if overlap > 1e-6:
                problems.append((
                    ("sectors", j, "polygon"),
                    f"sector {site.sectors[j].id!r} overlaps sector {site.sectors[i].id!r} by {overlap:.2f} m²",
                ))

    known = {sector.id for sector in site.sectors}
    for index, sector in enumerate(site.sectors):
        for other in sector.adjacent:
            if other not in known:
                problems.append((("sectors", index, "adjacent"), f"unknown sector {other!r}"))
    if not any(sector.entrance for sector in site.sectors):
        problems.append((("sectors",), "no sector has entrance = true; shoppers need a way in"))

    for index, receiver in enumerate(site.receivers):
        if not walls.covers(Point(receiver.x, receiver.y)):
            problems.append((
                ("receivers", index, "x"),
                f"receiver {receiver.id!r} at ({receiver.x:g}, {receiver.y:g}) is outside the store outline",
            ))
        if receiver.kind == "node" and receiver.node_name is None:
            problems.append((("receivers", index, "kind"), f"receiver {receiver.id!r} is a node but has no node_name"))
        if receiver.kind == "node" and site.nodes is None:
            fix = 'add [nodes] host = "127.0.0.1" (the store broker its node publishes to)'
            problems.append((("receivers", index, "kind"),
                             f"receiver {receiver.id!r} is a node but there is no [nodes] section — {fix}"))
    for index, reader in enumerate(site.nfc_readers):
        if reader.sector not in known:
            problems.append((("nfc_readers", index, "sector"), f"unknown sector {reader.sector!r}"))
        if not walls.covers(Point(reader.x, reader.y)):
            problems.append((("nfc_readers", index, "x"), f"reader {reader.id!r} is outside the store outline"))
        else:
            area = polygons[site.sector_index()[reader.sector]] if reader.sector in known else None
            if area is not None and not area.buffer(1e-6).covers(Point(reader.x, reader.y)):
                problems.append((("nfc_readers", index, "x"),
                                 (f"reader {reader.id!r} at ({reader.x:g}, {reader.y:g}) is outside its sector "
                                 f"{reader.sector!r}")))
        if reader.device.startswith("tty:") and not SERIAL_READER.fullmatch(reader.device):
            problems.append((("nfc_readers", index, "device"),
                             (f"{reader.device!r}: the agent's unit lets only tty:USB*, tty:ACM*, tty:AMA* and tty:S* "
                             "serial readers through (DeviceAllow); name the reader's device that way")))
    return problems + _receiver_problems(site)


def _receiver_problems(site: SiteConfig) -> list[tuple[Loc, str]]:
    """Receivers that no source would feed, or that cannot place anyone: the config names them, so they must work."""
    problems: list[tuple[Loc, str]] = []
    rooms: dict[str, str] = {}
    for index, receiver in enumerate(site.receivers):
        if receiver.kind == "wifi" and site.wifi.interface is None:
            problems.append((("receivers", index, "kind"),
                             (f'receiver {receiver.id!r} is kind = "wifi" but [wifi] interface is not set, so nothing '
                             'feeds it: set interface = "wlan1mon" (santi-wifi-monitor@wlan1 creates it)')))
        if receiver.node_name is None:
            continue
        room = room_slug(receiver.node_name)
        if room != receiver.node_name:
            problems.append((("receivers", index, "node_name"),
                             (f"ESPresense publishes room {receiver.node_name!r} as {room!r}; "
                             f"set node_name = {room!r} so Santi matches its messages")))
        elif room in rooms:
            problems.append((("receivers", index, "node_name"), f"node {room!r} is also receiver {rooms[room]!r}"))
        rooms.setdefault(room, receiver.id)
    hearing = [receiver.id for receiver in site.receivers if receiver.kind in ("ble", "node")]
    if len(hearing) == 1 and len(site.sectors) > 1:
        problems.append((("receivers",),
                         (f"only receiver {hearing[0]!r} hears BLE: one distance cannot place a shopper in one of "
                         f"{len(site.sectors)} sectors; add receivers (kind = \"node\"), at least three")))
    return problems


def site_warnings(site: SiteConfig) -> list[str]:
    """What a valid site can run with but does worse than it could, one line each (``santi config check``, startup)."""
    warnings: list[tuple[Loc, str]] = []
    hearing = [receiver.id for receiver in site.receivers if receiver.kind in ("ble", "node")]
    if len(hearing) == 2 and len(site.sectors) > 1:
        warnings.append((("receivers",),
                         (f"only {hearing[0]!r} and {hearing[1]!r} hear BLE: with two distances a position and its "
                         "mirror image across the line between them look alike; add a third receiver")))
    for kind, what in (("ble", "Bluetooth adapter ([ble] adapter)"), ("wifi", "monitor interface ([wifi] interface)")):
        local = [(index, receiver.id) for index, receiver in enumerate(site.receivers) if receiver.kind == kind]
        for index, receiver_id in local[1:]:
            warnings.append((("receivers", index, "kind"),
                             (f'receiver {receiver_id!r} is a second kind = "{kind}" receiver: the agent listens with '
                             f"one {what} and feeds {local[0][1]!r} only, so a replay alone feeds this one; "
                             'a remote receiver is kind = "node"')))
    if site.path is None:
        return [f"{format_loc(loc)}: {message}" for loc, message in warnings]
    text = read_text(site.path, ConfigError)
    return [located(site.path, text, loc, message) for loc, message in warnings]


def _named_files(site: SiteConfig) -> list[tuple[Loc, Path]]:
    files: list[tuple[Loc, Path]] = []
    for broker in (site.uplink, site.nodes):
        if broker is None:
            continue
        if broker.tls is not None:
            files.append(((broker.section, "tls", "ca_file"), broker.tls.ca_file))
            if broker.tls.cert_file is not None:
                files.append(((broker.section, "tls", "cert_file"), broker.tls.cert_file))
            if broker.tls.key_file is not None:
                files.append(((broker.section, "tls", "key_file"), broker.tls.key_file))
        if broker.password_file is not None:
            files.append(((broker.section, "password_file"), broker.password_file))
    if site.privacy.secret_file is not None:
        files.append((("privacy", "secret_file"), site.privacy.secret_file))
    if site.tracking.radio_map is not None:
        files.append((("tracking", "radio_map"), site.tracking.radio_map))
    if site.tracking.fingerprint is not None:
        files.append((("tracking", "fingerprint"), site.tracking.fingerprint))
    if site.console is not None:
        files.append((("console", "technician_token_file"), site.console.technician_token_file))
        files.append((("console", "staff_token_file"), site.console.staff_token_file))
    return files


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative paths in the file are relative to the file, not to the cwd."""
    keys = {
        ("agent", "state_dir"), ("privacy", "secret_file"),
        *((section, "password_file") for section in ("uplink", "nodes")),
        *((section, "tls", key) for section in ("uplink", "nodes") for key in ("ca_file", "cert_file", "key_file")),
        ("tracking", "radio_map"), ("tracking", "fingerprint"), ("console", "technician_token_file"),
        ("console", "staff_token_file"),
    }
    for key in keys:
        node: Any = data
        for part in key[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(key[-1]), str):
            value = Path(node[key[-1]]).expanduser()
            node[key[-1]] = str(value if value.is_absolute() else base / value)


def parse_site(text: str, path: Path) -> SiteConfig:
    """Validate the text of a site config; ``path`` names it in errors and anchors relative paths."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(syntax_error(path, exc)) from None
    for section in ("uplink", "nodes"):
        if isinstance(data.get(section), dict) and "password" in data[section]:
            raise _problem(path, text, (section, "password"),
                           "a password may not be written in the config; use password_file or password_env")
    _resolve_paths(data, path.parent)
    try:
        site = SiteConfig.model_validate({**data, "path": path})
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (misspelt?)"
        raise _problem(path, text, loc, message) from None
    problems = _geometry_problems(site)
    for loc, file in _named_files(site):
        if not file.is_file():
            problems.append((loc, f"file {file} does not exist"))
    if site.tracking.radio_map is not None and site.tracking.radio_map.is_file():
        try:
            read_radio_map(site.tracking.radio_map)
        except RadioMapFileError as exc:
            problems.append((("tracking", "radio_map"), str(exc)))
    if site.tracking.fingerprint is not None and site.tracking.fingerprint.is_file():
        try:
            site_fingerprint(site)
        except FingerprintFileError as exc:
            problems.append((("tracking", "fingerprint"), f"{exc}; remove the key to run without it"))
    if site.console is not None and not problems:
        for key in ("technician_token_file", "staff_token_file"):
            problem = _token(getattr(site.console, key))[1]
            if problem is not None:
                problems.append((("console", key), problem))
    if problems:
        loc, message = problems[0]
        raise _problem(path, text, loc, message)
    return site


def site_fingerprint(site: SiteConfig) -> Fingerprint | None:
    """The fingerprint ``[tracking] fingerprint`` names, in the site's sector and receiver order (None if unset).

    Raises `FingerprintFileError` (one line, naming the file) if it is unreadable or of other sectors.
    """
    path = site.tracking.fingerprint
    if path is None:
        return None
    return read_fingerprint(path).for_site(path, tuple(s.id for s in site.sectors), tuple(r.id for r in site.receivers))


def load_site(path: Path) -> SiteConfig:
    """Read and validate a site config file, or raise ``ConfigError`` with one line."""
    return parse_site(read_text(path, ConfigError), path)
