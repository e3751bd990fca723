"""What a store hears of phones without the app, of its own fixed devices and of the street.

The occupancy count (`positioning.occupancy`) must work from what real
radios give away, so the simulator sends what phones really send:

- Wi-Fi probe bursts from one of a handful of phone models. Each model has
  its own information elements (the signature `agent.probe_keys` keys), a
  burst size and a probing period; a phone keeps its period (with jitter)
  all visit. Its MAC is randomised per burst or kept for 5-15 minutes (or,
  on a few, the burnt-in address), and its 802.11 sequence number runs on
  across the change, skipping the frames it sent on channels the receiver
  was not on.
- BLE advertisements from a resolvable private address that the phone
  replaces every ~15 minutes (Android and iOS alike).
- Fixed devices inside (PCs, a printer, the till): burnt-in MACs, probing
  all day, switched on before the store opens.
- Passers-by on the pavement outside the entrance, behind the shop front's
  wall loss; some probe, some advertise.

Everything here is drawn from the generators it is given, so a run stays
the same bytes for the same seed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from shapely.geometry import LineString, Point

from simulator.shoppers import Path, PathBuilder
from simulator.store import Store

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
SEQUENCE_MODULUS = 4096


@dataclass(frozen=True)
class Model:
    """A phone (or device) model as its probe requests show it.

    elements: the information elements of its probe requests (id, contents).
    burst: frames per burst the receiver's channel catches (low, high).
    period_s: its probing period, drawn per device (low, high).
    share: how common it is among shoppers' phones (0 for fixed devices).
    """

    name: str
    elements: tuple[tuple[int, bytes], ...]
    burst: tuple[int, int]
    period_s: tuple[float, float]
    share: float


def _elements(rates: bytes, ht: bytes, ext: bytes, vendor: bytes) -> tuple[tuple[int, bytes], ...]:
    """A probe request's elements: SSID (wildcard), rates, extended rates, HT, extended capabilities, vendor."""
    return ((0, b""), (1, rates), (50, b"\x0c\x12\x18\x60"), (3, b"\x06"), (45, ht), (127, ext), (221, vendor))


_RATES = b"\x02\x04\x0b\x16"
MODELS: tuple[Model, ...] = (
    Model("iphone-ios17", _elements(_RATES, b"\x2d\x40\x17\xff", b"\x04\x00\x0a\x02", b"\x00\x17\xf2\x0a\x00"),
          (2, 3), (25.0, 90.0), 0.22),
    Model("iphone-ios16", _elements(_RATES, b"\x2d\x40\x17\xfe", b"\x04\x00\x08\x02", b"\x00\x17\xf2\x0a\x00"),
          (2, 3), (25.0, 90.0), 0.12),
    Model("galaxy-s23", _elements(_RATES, b"\x6f\x01\x1b\xff", b"\x00\x00\x08\x00\x40", b"\x00\x16\x32\x80\x00"),
          (2, 4), (20.0, 60.0), 0.16),
    Model("galaxy-a54", _elements(_RATES, b"\x6f\x01\x1b\x00", b"\x00\x00\x08\x00", b"\x00\x16\x32\x80\x00"),
          (2, 4), (20.0, 70.0), 0.14),
    Model("pixel-8", _elements(_RATES, b"\xef\x01\x1b\xff", b"\x04\x00\x4a\x02\x01", b"\x00\x90\x4c\x04\x08"),
          (1, 3), (30.0, 90.0), 0.1),
    Model("xiaomi-13", _elements(_RATES, b"\xed\x01\x1b\xff", b"\x00\x00\x0a\x02", b"\x00\x10\x18\x02\x00"),
          (2, 4), (15.0, 60.0), 0.12),
    Model("redmi-note", _elements(_RATES, b"\xad\x01\x1b\x00", b"\x00\x00\x0a\x00", b"\x00\x10\x18\x02\x00"),
          (2, 3), (20.0, 80.0), 0.08),
    Model("moto-g", _elements(_RATES, b"\x2c\x01\x1b\x00", b"\x00\x00\x08", b"\x00\x50\xf2\x08\x00"),
          (1, 3), (30.0, 120.0), 0.06),
    Model("pc-intel-ax201", _elements(_RATES, b"\xef\x19\x1b\xff", b"\x04\x00\x0a\x82\x01", b"\x00\x50\xf2\x02\x01"),
          (1, 3), (60.0, 240.0), 0.0),
    Model("printer", _elements(_RATES, b"\x2c\x01\x03\x00", b"\x00", b"\x00\x50\xf2\x04\x10"),
          (1, 2), (60.0, 180.0), 0.0),
    Model("till-android-pos", _elements(_RATES, b"\x6e\x01\x1b\x00", b"\x00\x00\x08", b"\x00\x16\x32\x80\x00"),
          (2, 3), (30.0, 120.0), 0.0),
)
"""Every model, indexed by the model number a transmission carries: eight phone models with their
shares of shoppers' phones (they sum to 1), then a store's fixed devices (a PC, a printer, the till)."""
PHONE_MODELS = MODELS[:8]
FIXED_MODELS = MODELS[8:]


@dataclass(frozen=True)
class CrowdConfig:
    """Who else the receivers hear besides the app's phones.

    rotating_mac_share: of phones that randomise their Wi-Fi MAC, those that
    keep an address for ``mac_lifetime_s`` rather than drawing one per burst.
    anon_ble_share: phones without the app that advertise over BLE anyway,
    from an address replaced every ``ble_rotation_s``, at ``anon_ble_hz``.
    passers: people walking past on the pavement during the arrival window;
    passer_probe_share of them probe over Wi-Fi (their BLE follows
    anon_ble_share). fixtures: fixed devices inside, switched on
    ``fixtures_on_s`` before the run's start (opening time).
    wall_loss_db: the shop front's loss between the pavement and the receivers.
    """

    rotating_mac_share: float = 0.5
    mac_lifetime_s: tuple[float, float] = (300.0, 900.0)
    seq_skip: tuple[int, int] = (0, 24)
    anon_ble_share: float = 0.0
    anon_ble_hz: tuple[float, float] = (0.5, 2.0)
    ble_rotation_s: tuple[float, float] = (780.0, 1020.0)
    passers: int = 0
    passer_probe_share: float = 0.7
    passer_speed_m_s: tuple[float, float] = (1.0, 1.6)
    pavement_m: tuple[float, float] = (1.5, 5.0)
    street_reach_m: float = 40.0
    fixtures: int = 0
    fixtures_on_s: float = 1800.0
    wall_loss_db: float = 8.0

    def __post_init__(self) -> None:
        for name in ("rotating_mac_share", "anon_ble_share", "passer_probe_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.passers < 0 or self.fixtures < 0:
            raise ValueError("passers and fixtures cannot be negative")
        for name in ("mac_lifetime_s", "anon_ble_hz", "ble_rotation_s", "passer_speed_m_s", "pavement_m"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be a range 0 < low <= high, got ({low}, {high})")
        if not 0 <= self.seq_skip[0] <= self.seq_skip[1]:
            raise ValueError(f"seq_skip must be a range 0 <= low <= high, got {self.seq_skip}")
        if not self.wall_loss_db >= 0.0 or not self.street_reach_m > 0.0 or not self.fixtures_on_s >= 0.0:
            raise ValueError("wall_loss_db and fixtures_on_s must be >= 0 and street_reach_m positive")


@dataclass
class Bursts:
    """A device's probe frames: times (n,), sequence numbers (n,) and the index (n,) of the MAC each came from."""

    ts: FloatArray
    sequence: IntArray
    mac_index: NDArray[np.intp]
    macs: list[str]


def address(rng: np.random.Generator, first: int) -> str:
    """A MAC-like address whose first octet is ``first`` and the rest random."""
    octets = [first, *(int(v) for v in rng.integers(0, 256, 5))]
    return ":".join(f"{o:02X}" for o in octets)


def random_mac(rng: np.random.Generator) -> str:
    """A locally administered unicast MAC, as phones randomise them."""
    return address(rng, (int(rng.integers(0, 64)) << 2) | 0x02)


def global_mac(rng: np.random.Generator) -> str:
    """A burnt-in (globally administered, unicast) MAC."""
    return address(rng, int(rng.integers(0, 64)) << 2)


def pick_model(rng: np.random.Generator) -> int:
    """A phone model number, by the models' shares."""
    shares = np.array([m.share for m in PHONE_MODELS])
    return int(rng.choice(len(PHONE_MODELS), p=shares / shares.sum()))


def probe_bursts(rng: np.random.Generator, start: float, end: float, model: int, fixed_mac: bool,
                 crowd: CrowdConfig, period_s: tuple[float, float] | None = None,
                 frames_per_burst: tuple[int, int] | None = None) -> Bursts:
    """A device's probe frames over [start, end): its own period with 20 % jitter, its MAC policy, its sequence.

    period_s and frames_per_burst override the model's probing period and burst size (a technician's phone probing fast).
    """
    spec = MODELS[model]
    period = float(rng.uniform(*(spec.period_s if period_s is None else period_s)))
    rotating = not fixed_mac and rng.random() < crowd.rotating_mac_share
    mac = global_mac(rng) if fixed_mac else random_mac(rng)
    macs = [mac]
    renew = start + float(rng.uniform(*crowd.mac_lifetime_s))
    seq = int(rng.integers(0, SEQUENCE_MODULUS))
    times: list[FloatArray] = []
    sequences: list[IntArray] = []
    owners: list[NDArray[np.intp]] = []
    low, high = spec.burst if frames_per_burst is None else frames_per_burst
    at = start + float(rng.uniform(0.0, period))
    first = True
    while at < end:
        frames = int(rng.integers(low, high + 1))
        if not fixed_mac and not first and (not rotating or at >= renew):
            macs.append(random_mac(rng))
            renew = at + float(rng.uniform(*crowd.mac_lifetime_s))
        first = False
        burst = at + np.sort(rng.uniform(0.0, 0.05, frames))
        kept = burst[burst < end]
        times.append(kept)
        sequences.append((seq + np.arange(kept.size)) % SEQUENCE_MODULUS)
        owners.append(np.full(kept.size, len(macs) - 1, dtype=np.intp))
        seq = (seq + frames + int(rng.integers(crowd.seq_skip[0], crowd.seq_skip[1] + 1))) % SEQUENCE_MODULUS
        at += period * float(rng.uniform(0.8, 1.2))
    if not times:
        return Bursts(np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.intp), macs)
    return Bursts(np.concatenate(times), np.concatenate(sequences).astype(np.int64), np.concatenate(owners), macs)


def rotating_ble(rng: np.random.Generator, start: float, end: float, crowd: CrowdConfig,
                 ) -> tuple[FloatArray, NDArray[np.intp], list[str]]:
    """BLE advertisements over [start, end): times (n,), the address index (n,) of each, the addresses.

    Resolvable private addresses (top bits 01), replaced every
    ``ble_rotation_s``; the first replacement falls anywhere in the first period.
    """
    hz = float(rng.uniform(*crowd.anon_ble_hz))
    period = 1.0 / hz
    t = start + rng.uniform(0.0, period) + np.arange(0.0, max(end - start, 0.0), period)
    t = t[t < end] + rng.uniform(0.0, 0.01, t[t < end].size)
    changes = [start + float(rng.uniform(0.0, crowd.ble_rotation_s[1]))]
    while changes[-1] < end:
        changes.append(changes[-1] + float(rng.uniform(*crowd.ble_rotation_s)))
    index = np.searchsorted(np.array(changes), t, side="right").astype(np.intp)
    addresses = [address(rng, 0x40 | int(rng.integers(0, 64))) for _ in range(len(changes) + 1)]
    return t, index, addresses


def street(store: Store) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Where the pavement is: the door's point on the outer wall, the wall's direction, and outward."""
    outline = store.outline
    door = Point(store.door)
    wall_point = outline.exterior.interpolate(outline.exterior.project(door))
    ring = list(outline.exterior.coords)
    segments = [LineString([a, b]) for a, b in itertools.pairwise(ring)]
    wall = min(segments, key=lambda s: s.distance(wall_point))
    (x0, y0), (x1, y1) = wall.coords
    along = np.array([x1 - x0, y1 - y0]) / math.hypot(x1 - x0, y1 - y0)
    normal = np.array([-along[1], along[0]])
    at = np.array([wall_point.x, wall_point.y])
    if outline.contains(Point(*(at + 0.5 * normal))):
        normal = -normal
    return at, along, normal


def passer_paths(store: Store, rng: np.random.Generator, count: int, within_s: float, crowd: CrowdConfig,
                 ) -> list[Path]:
    """Passers-by walking the pavement past the entrance, either way, arriving uniformly over ``within_s``."""
    at, along, normal = street(store)
    paths = []
    for _ in range(count):
        side = 1.0 if rng.random() < 0.5 else -1.0
        offset = normal * float(rng.uniform(*crowd.pavement_m))
        begin = at + offset - side * crowd.street_reach_m * along
        finish = at + offset + side * crowd.street_reach_m * along
        speed = float(rng.uniform(*crowd.passer_speed_m_s))
        builder = PathBuilder(float(rng.uniform(0.0, within_s)), begin, speed, 0.0)
        builder.walk([finish])
        paths.append(builder.path())
    return paths


def fixture_paths(store: Store, rng: np.random.Generator, count: int, start: float,
                  end: float) -> tuple[list[Path], list[int]]:
    """Fixed devices standing in random sectors from ``start`` to ``end``, and the model number of each.

    Models go PC, printer, till, PC, ...
    """
    paths, models = [], []
    kinds = len(FIXED_MODELS)
    for k in range(count):
        sector = int(rng.integers(0, len(store.sector_ids)))
        builder = PathBuilder(start, store.sample_point(rng, sector), 1.0, float(rng.uniform(-math.pi, math.pi)))
        builder.until(end)
        paths.append(builder.path())
        models.append(len(PHONE_MODELS) + k % kinds)
    return paths, models
