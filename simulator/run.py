"""The simulation loop: plans, phones, radio, and the three files it writes.

``observations.jsonl`` is what the store's receivers would have reported
(replay format, pseudonymised emitter ids, in time order), ``taps.jsonl`` the
card taps at the NFC readers, and ``truth.jsonl`` what really happened,
including the raw identifiers. Same seed, same site, same settings: the
same bytes.

Phones: a shopper with the loyalty app advertises an iBeacon from a stable
BLE address at its own rate; some phones without it advertise from a
rotating address; most phones send Wi-Fi probe bursts as `simulator.anonymous`
describes (a model's elements, a MAC per burst or per few minutes, the
sequence number running on), and every probe line carries those linking
keys in ``probe``. Fixed devices and passers-by on the pavement are heard
too when the run asks for them. BLE is heard by receivers of kind ble and
node, probes by kind wifi only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from agent.config import SiteConfig
from agent.observations import CardTap
from agent.privacy import Pseudonymizer
from agent.probe_keys import probe_keys
from agent.replayfile import RecordWriter
from agent.site_arrays import site_arrays
from simulator.anonymous import (
    MODELS,
    CrowdConfig,
    address,
    fixture_paths,
    passer_paths,
    pick_model,
    probe_bursts,
    rotating_ble,
)
from simulator.channel import Channel, ChannelConfig, store_seed, turns
from simulator.shoppers import MobilityConfig, ShopperPlan, plan_shoppers, survey_plan
from simulator.shoppers import Path as Walk
from simulator.store import Store
from simulator.truth import (
    EmitterTruth,
    FixtureTruth,
    PasserTruth,
    PlannedTruth,
    PositionTruth,
    RunTruth,
    ShopperTruth,
    TapTruth,
    VisitTruth,
)

FloatArray = NDArray[np.float64]
Progress = Callable[[float, float], None]

SIM_SECRET = b"santi-simulator-fixed-secret-not-for-stores"
"""The simulated store's secret: fixed, so pseudonyms are reproducible across runs."""

DEFAULT_START_TS = 1741078800.0
"""2025-03-04 09:00:00 UTC: opening time of the simulated morning."""

IBEACON_MEASURED_POWER = -59.0
TICK_S = 1.0
TRUTH_HZ = 1.0
BLE, WIFI = 0, 1


@dataclass(frozen=True)
class PhoneConfig:
    """What shoppers carry: shares of shoppers, and BLE / Wi-Fi behaviour."""

    app_share: float = 0.6
    card_share: float = 0.5
    foreign_card_share: float = 0.03
    wifi_share: float = 0.9
    fixed_mac_share: float = 0.1
    ble_hz: tuple[float, float] = (2.0, 6.0)
    probe_interval_s: tuple[float, float] | None = None
    """A probing period range for every phone; None: each model's own (`simulator.anonymous.MODELS`)."""
    probe_burst: tuple[int, int] | None = None
    """Frames per burst for every phone; None: each model's own."""
    phone_height_sigma_m: float = 0.0

    def __post_init__(self) -> None:
        for name in ("app_share", "card_share", "foreign_card_share", "wifi_share", "fixed_mac_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.ble_hz[0] <= self.ble_hz[1] <= 50.0:
            raise ValueError(f"ble_hz must be a range within (0, 50] Hz, got {self.ble_hz}")


@dataclass(frozen=True)
class SimConfig:
    """One simulated run: `shoppers` arrive uniformly in the first `minutes`; it ends when the last leaves.

    `seed` draws the day (shoppers, phones, per-packet radio); `store_seed`
    the store's static radio (receiver biases, shadowing fields): None
    derives it from the site's store id, so every run of a site, survey
    walk or shoppers, happens in the same store.
    """

    shoppers: int = 50
    minutes: float = 10.0
    seed: int = 0
    store_seed: int | None = None
    start_ts: float = DEFAULT_START_TS
    mobility: MobilityConfig = field(default_factory=MobilityConfig)
    phones: PhoneConfig = field(default_factory=PhoneConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    crowd: CrowdConfig = field(default_factory=CrowdConfig)

    def __post_init__(self) -> None:
        if self.shoppers < 1:
            raise ValueError(f"need at least one shopper, got {self.shoppers}")
        if not self.minutes > 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")


@dataclass
class SimSummary:
    """Counts of what a run wrote, for the CLI."""

    shoppers: int = 0
    observations: int = 0
    taps: int = 0
    emitters: int = 0
    duration_s: float = 0.0
    out_dir: Path = Path()


@dataclass
class Phone:
    """Transmissions of one carrier's device(s): times, tech, sequence number (-1 off Wi-Fi), the raw id of each.

    ``raw_tx`` is each raw id's advertised TX power (the app's iBeacon) or
    None, ``model`` the Wi-Fi model number (`simulator.anonymous.MODELS`), -1 without Wi-Fi.
    """

    shopper: int
    ts: FloatArray
    tech: NDArray[np.int8]
    raw: list[str]
    raw_index: NDArray[np.intp]
    sequence: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    raw_tx: list[float | None] = field(default_factory=list)
    model: int = -1


def _card_uid(rng: np.random.Generator) -> str:
    """A 7-byte NFC-A UID, NXP's manufacturer byte first."""
    return ":".join(f"{o:02X}" for o in [0x04, *(int(v) for v in rng.integers(0, 256, 6))])


def phone_for(plan: ShopperPlan, has_app: bool, phones: PhoneConfig, rng: np.random.Generator,
              crowd: CrowdConfig | None = None) -> Phone:
    """The transmissions of one shopper's phone over the visit (times relative to the run start)."""
    assert plan.path is not None
    return device_for(plan.index, plan.path.start, plan.path.end, rng, crowd or CrowdConfig(), app=has_app,
                      ble_hz=phones.ble_hz, wifi_share=phones.wifi_share, fixed_mac_share=phones.fixed_mac_share,
                      period_s=phones.probe_interval_s, burst=phones.probe_burst)


def device_for(owner: int, start: float, end: float, rng: np.random.Generator, crowd: CrowdConfig, *, app: bool,
               ble_hz: tuple[float, float], wifi_share: float, fixed_mac_share: float,
               model: int | None = None, period_s: tuple[float, float] | None = None,
               burst: tuple[int, int] | None = None) -> Phone:
    """What one carrier (shopper, passer-by, fixed device) transmits over [start, end).

    The app's phone advertises an iBeacon from a stable address; another
    advertises from a rotating one with chance ``crowd.anon_ble_share``;
    with chance ``wifi_share`` it probes (``model`` given: a fixed device
    that always probes from its burnt-in MAC).
    """
    times: list[FloatArray] = []
    techs: list[NDArray[np.int8]] = []
    sequences: list[NDArray[np.int64]] = []
    raw: list[str] = []
    raw_tx: list[float | None] = []
    index: list[NDArray[np.intp]] = []

    def add(t: FloatArray, tech: int, which: NDArray[np.intp], seq: NDArray[np.int64] | None) -> None:
        times.append(t)
        techs.append(np.full(t.size, tech, dtype=np.int8))
        index.append(which + len(raw))
        sequences.append(np.full(t.size, -1, dtype=np.int64) if seq is None else seq)

    if app:
        hz = float(rng.uniform(*ble_hz))
        period = 1.0 / hz
        t = start + rng.uniform(0.0, period) + np.arange(0.0, end - start, period)
        t = t + rng.uniform(0.0, 0.01, t.size)  # advDelay of the BLE spec
        t = t[t < end]
        add(t, BLE, np.zeros(t.size, dtype=np.intp), None)
        raw.append(address(rng, 0xC0 | int(rng.integers(0, 64))))  # random static address
        raw_tx.append(IBEACON_MEASURED_POWER)
    elif model is None and crowd.anon_ble_share > 0.0 and rng.random() < crowd.anon_ble_share:
        t, which, addresses = rotating_ble(rng, start, end, crowd)
        add(t, BLE, which, None)
        raw.extend(addresses)
        raw_tx.extend([None] * len(addresses))
    chosen = -1
    if model is not None or rng.random() < wifi_share:
        fixed = model is not None or rng.random() < fixed_mac_share
        chosen = pick_model(rng) if model is None else model
        bursts = probe_bursts(rng, start, end, chosen, fixed, crowd, period_s, burst)
        add(bursts.ts, WIFI, bursts.mac_index, bursts.sequence)
        raw.extend(bursts.macs)
        raw_tx.extend([None] * len(bursts.macs))
    if not times:
        return Phone(owner, np.empty(0), np.empty(0, dtype=np.int8), raw, np.empty(0, dtype=np.intp))
    return Phone(owner, np.concatenate(times), np.concatenate(techs), raw, np.concatenate(index),
                 np.concatenate(sequences), raw_tx, chosen)


def _fmt(value: float) -> str:
    return repr(float(value))


def observation_line(ts: float, receiver: str, emitter: str, tech: str, rssi: float, tx: float | None,
                     probe: str | None = None) -> bytes:
    """One observation in exactly the JSON form ``Observation.model_dump_json`` gives (``probe`` as `_probe_json`)."""
    tx_text = "null" if tx is None else _fmt(tx)
    return (
        f'{{"ts":{_fmt(ts)},"receiver_id":"{receiver}","emitter_id":"{emitter}","tech":"{tech}",'
        f'"rssi_dbm":{_fmt(rssi)},"tx_power_dbm":{tx_text},"probe":{probe or "null"}}}\n'
    ).encode()


def _probe_json(sequence: int, signature: str, raw_mac: str) -> str:
    """A probe's linking keys as ``ProbeFields`` serialises them; randomised is the MAC's locally administered bit."""
    randomised = "true" if int(raw_mac[:2], 16) & 0x02 else "false"
    seq = "null" if sequence < 0 else str(sequence)
    return f'{{"sequence":{seq},"signature":"{signature}","randomised":{randomised}}}'


def _signature(cache: dict[tuple[int, int], str], model: int, period: int, ts: float, pseudo: Pseudonymizer) -> str:
    """The keyed element signature of a model in a salt period, as the Wi-Fi source computes it (agent.probe_keys)."""
    key = (model, period)
    if key not in cache:
        cache[key] = probe_keys(ts=ts, mac=bytes(6), rssi_dbm=-60.0, channel=None, sequence=None,
                                items=MODELS[model].elements, pseudonymizer=pseudo).signature
    return cache[key]


def _stretches(store: Store, plan: ShopperPlan, t0: float) -> Iterator[tuple[str, float, float]]:
    """Sector stretches (sector id, enter, exit; store time) of a path, from its position every 0.1 s."""
    assert plan.path is not None
    times = np.arange(plan.path.start, plan.path.end, 0.1)
    times = np.append(times, plan.path.end)
    labels = store.label(plan.path.at(times))
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [labels.size - 1]])
    for a, b in zip(starts, ends, strict=True):
        sector = int(labels[a])
        if sector < len(store.sector_ids):
            yield store.sector_ids[sector], t0 + float(times[a]), t0 + float(times[b])


def _visits(store: Store, plan: ShopperPlan, shopper_id: str, t0: float) -> Iterator[VisitTruth]:
    for sector, enter, leave in _stretches(store, plan, t0):
        yield VisitTruth(shopper_id=shopper_id, sector=sector, enter_ts=round(enter, 3), exit_ts=round(leave, 3))


class Seeds(NamedTuple):
    """The run's independent random streams: children of `SimConfig.seed`, spawned in this order.

    The order is part of the output: a stream added at the end leaves every
    earlier one, and so the shoppers and their phones, as they were.
    """

    mobility: np.random.SeedSequence
    phone: np.random.SeedSequence
    channel: np.random.SeedSequence
    card: np.random.SeedSequence
    posture: np.random.SeedSequence
    crowd: np.random.SeedSequence

    @classmethod
    def of(cls, seed: int) -> Seeds:
        return cls(*np.random.SeedSequence(seed).spawn(len(cls._fields)))


@dataclass(frozen=True)
class Cast:
    """A run's shoppers and what they carry: plans, who has the app, their phones, the phones' heights (m)."""

    plans: list[ShopperPlan]
    has_app: NDArray[np.bool_]
    phones: list[Phone]
    heights: FloatArray


def cast(store: Store, config: SimConfig, seeds: Seeds, height: float, *, survey: bool = False) -> Cast:
    """Draw the shoppers and their phones, for `simulate` and for `planned_truth` alike.

    One home for the draws, so the planned truth a benchmark matches the
    agent's events against is the recording's by construction.
    """
    if survey:
        plans = [survey_plan(store)]
    else:
        plans = plan_shoppers(store, config.mobility, config.shoppers, config.minutes * 60.0, seeds.mobility)
    phone_rng = np.random.default_rng(seeds.phone)
    has_app = phone_rng.random(len(plans)) < config.phones.app_share
    phones = [phone_for(plan, bool(app), config.phones, phone_rng, config.crowd)
              for plan, app in zip(plans, has_app, strict=True)]
    heights = np.clip(height + config.phones.phone_height_sigma_m * phone_rng.normal(size=len(plans)), 0.2, 2.5)
    return Cast(plans, has_app, phones, heights)


def _pseudonymizer(site: SiteConfig) -> Pseudonymizer:
    return Pseudonymizer(SIM_SECRET, site.store.id, site.privacy.salt_rotation_hours * 3600.0)


def planned_truth(site: SiteConfig, config: SimConfig) -> PlannedTruth:
    """What `simulate` would record of the shoppers (truth.jsonl), without simulating the radio.

    Each app phone is keyed by the pseudonym of its BLE address at the
    shopper's arrival, as the recording names it then; its entries are the
    enter times of the sector visits truth.jsonl holds, unrounded.
    """
    store = Store.of(site)
    shoppers = cast(store, config, Seeds.of(config.seed), site.tracking.emitter_height_m)
    pseudo = _pseudonymizer(site)
    t0 = config.start_ts
    entries: dict[str, list[tuple[float, str]]] = {}
    spans = np.array([span(plan) for plan in shoppers.plans]).reshape(-1, 2)
    for plan, app, phone in zip(shoppers.plans, shoppers.has_app, shoppers.phones, strict=True):
        if app:
            emitter = pseudo.pseudonym("ble", phone.raw[0], t0 + span(plan)[0])
            entries[emitter] = [(enter, sector) for sector, enter, _ in _stretches(store, plan, t0)]
    return PlannedTruth(entries, t0 + spans[:, 0], t0 + spans[:, 1])


SURVEY_PHONES = PhoneConfig(app_share=1.0, card_share=0.0, foreign_card_share=0.0, wifi_share=1.0,
                            fixed_mac_share=1.0, ble_hz=(10.0, 10.0), probe_interval_s=(3.0, 6.0),
                            probe_burst=(2, 4))
"""The technician's phone on a calibration walk: fast BLE, frequent probes from one fixed MAC."""


def simulate(
    site: SiteConfig, config: SimConfig, out_dir: Path, progress: Progress | None = None, *, survey: bool = False
) -> SimSummary:
    """Run the simulation and write observations.jsonl, taps.jsonl and truth.jsonl into `out_dir`.

    With `survey`, one technician walks the calibration route of
    `shoppers.survey_plan` instead of shoppers shopping (use SURVEY_PHONES).
    """
    store = Store.of(site)
    arrays = site_arrays(site)
    seeds = Seeds.of(config.seed)
    static_seed = store_seed(site.store.id) if config.store_seed is None else config.store_seed
    height = site.tracking.emitter_height_m
    shoppers = cast(store, config, seeds, height, survey=survey)
    plans, has_app, heights = shoppers.plans, shoppers.has_app, shoppers.heights
    phones = list(shoppers.phones)
    pseudo = _pseudonymizer(site)
    t0 = config.start_ts
    card_rng = np.random.default_rng(seeds.card)
    channel = Channel(arrays.xyz, arrays.rssi_at_1m, arrays.exponent, arrays.bbox, config.channel,
                      np.random.default_rng(seeds.channel), np.random.default_rng(static_seed))

    walks: list[Walk] = [plan.path for plan in plans if plan.path is not None]
    extras = _crowd(store, config, len(plans), max(walk.end for walk in walks), seeds.crowd)
    phones += extras.phones
    walks += extras.walks
    end = max(walk.end for walk in walks)
    heights = np.r_[heights, np.full(len(extras.walks), height)]
    loss = np.r_[np.zeros(len(plans)), extras.loss_db]

    # Stack every transmission of every device, in time order.
    raw_ids: list[str] = []
    raw_techs: list[int] = []
    raw_owner: list[int] = []
    raw_tx: list[float | None] = []
    raw_model: list[int] = []
    parts = []
    for phone in phones:
        base = len(raw_ids)
        raw_ids.extend(phone.raw)
        raw_tx.extend(phone.raw_tx or [IBEACON_MEASURED_POWER] * len(phone.raw))
        for k, _ in enumerate(phone.raw):
            first = phone.tech[phone.raw_index == k]
            raw_techs.append(int(first[0]) if first.size else BLE)
            raw_owner.append(phone.shopper)
            raw_model.append(phone.model if raw_techs[-1] == WIFI else -1)
        sequence = phone.sequence if phone.sequence.size == phone.ts.size else np.full(phone.ts.size, -1)
        parts.append((phone.ts, phone.tech, phone.raw_index + base, np.full(phone.ts.size, phone.shopper), sequence))
    ts = np.concatenate([p[0] for p in parts])
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    tech = np.concatenate([p[1] for p in parts])[order]
    raw_of = np.concatenate([p[2] for p in parts])[order]
    owner = np.concatenate([p[3] for p in parts]).astype(np.intp)[order]
    sequence_of = np.concatenate([p[4] for p in parts]).astype(np.int64)[order]
    # One offset per device (BLE and every probe MAC alike); the technician's reference tag is the one
    # the receivers' models are stated for, so it has none.
    offsets = np.zeros(len(walks)) if survey else channel.device_offsets(len(walks))
    posture_rng = np.random.default_rng(seeds.posture)
    turning = [turns(posture_rng, *span(plan), config.channel.turn_interval_s, config.channel.turn_sigma_rad)
               for plan in plans] + [(np.empty(0), np.empty(0))] * len(extras.walks)
    listens = np.array([[kind in ("ble", "node"), kind == "wifi"] for kind in arrays.kinds]).T  # (2, m)

    out_dir.mkdir(parents=True, exist_ok=True)
    seen: dict[str, tuple[int, float, float]] = {}  # emitter -> (raw index, first, last)
    names: dict[tuple[int, int], str] = {}
    signatures: dict[tuple[int, int], str] = {}
    written = 0
    with (out_dir / "observations.jsonl").open("wb") as handle:
        # Fixed devices are on before opening (time 0); everything else starts at it.
        begin = min(0.0, math.floor(float(ts[0]))) if ts.size else 0.0
        bounds = np.searchsorted(ts, np.arange(begin, end + TICK_S, TICK_S))
        for tick, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            if progress is not None and tick % 30 == 0:
                progress(max(begin + tick * TICK_S, 0.0), end)
            if lo == hi:
                continue
            t, who, raw = ts[lo:hi], owner[lo:hi], raw_of[lo:hi]
            xy = np.empty((hi - lo, 2))
            facing = np.empty(hi - lo)
            for carrier in np.unique(who):
                rows = who == carrier
                walk = walks[carrier]
                xy[rows] = walk.at(t[rows])
                facing[rows] = walk.facing_at(t[rows]) + turned(turning[carrier], walk.still_at(t[rows]), t[rows])
            rssi = channel.readings(xy, heights[who], facing, offsets[who], listens[tech[lo:hi]], loss[who])
            lines: list[bytes] = []
            for j in np.flatnonzero(~np.all(np.isnan(rssi), axis=1)):
                stamp = round(t0 + float(t[j]), 6)
                name = "ble" if tech[lo + j] == BLE else "wifi"
                key = (int(raw[j]), pseudo.period(stamp))
                emitter = names.get(key)
                if emitter is None:
                    emitter = names[key] = pseudo.pseudonym("ble" if name == "ble" else "wifi", raw_ids[key[0]], stamp)
                first = seen.get(emitter)
                seen[emitter] = (key[0], stamp if first is None else first[1], stamp)
                tx = raw_tx[key[0]] if name == "ble" else None
                probe = None
                if name == "wifi":
                    probe = _probe_json(int(sequence_of[lo + j]), _signature(signatures, raw_model[key[0]], key[1],
                                                                             stamp, pseudo), raw_ids[key[0]])
                for r in np.flatnonzero(~np.isnan(rssi[j])):
                    lines.append(observation_line(stamp, arrays.receiver_ids[r], emitter, name, float(rssi[j, r]), tx,
                                                  probe))
            handle.writelines(lines)
            written += len(lines)
    emitters = {
        emitter: EmitterTruth(
            emitter_id=emitter, tech="ble" if raw_techs[index] == BLE else "wifi", raw_id=raw_ids[index],
            shopper_id=extras.owner_id(raw_owner[index], len(plans)), first_ts=first, last_ts=last)
        for emitter, (index, first, last) in seen.items()
    }
    if progress is not None:
        progress(end, end)

    taps = _taps(site, plans, config, card_rng, pseudo, t0)
    with RecordWriter(out_dir / "taps.jsonl") as writer:
        writer.write_all(tap for tap, _ in taps)
    header = RunTruth(
        store_id=site.store.id, site=str(site.path.resolve()) if site.path else "", seed=config.seed, start_ts=t0, end_ts=round(t0 + end, 3),
        shoppers=len(plans), emitter_height_m=height, sigma_db=config.channel.sigma_db,
        receiver_bias_db={rid: round(float(b), 4) for rid, b in zip(arrays.receiver_ids, channel.bias, strict=True)},
        settings={**asdict(config), "store_seed": static_seed},
    )
    with RecordWriter(out_dir / "truth.jsonl") as writer:
        writer.write(header)
        loyalty = {truth.shopper_id: truth.loyalty_id for _, truth in taps if truth.known}
        for plan, app in zip(plans, has_app, strict=True):
            assert plan.path is not None
            sid = _shopper_id(plan.index)
            writer.write(ShopperTruth(shopper_id=sid, enter_ts=round(t0 + plan.path.start, 3),
                                      leave_ts=round(t0 + plan.path.end, 3), has_app=bool(app),
                                      loyalty_id=loyalty.get(sid)))
        writer.write_all(emitters[key] for key in sorted(emitters))
        for plan in plans:
            writer.write_all(_positions(store, plan, t0, float(heights[plan.index])))
        for plan in plans:
            writer.write_all(_visits(store, plan, _shopper_id(plan.index), t0))
        writer.write_all(truth for _, truth in taps)
        writer.write_all(extras.truth(t0, len(plans)))
    return SimSummary(len(plans), written, len(taps), len(emitters), end, out_dir)


@dataclass
class _Crowd:
    """The carriers beyond the shoppers: passers-by then fixed devices, owners numbered after the shoppers."""

    walks: list[Walk]
    phones: list[Phone]
    loss_db: FloatArray
    passers: int
    models: list[int]

    def owner_id(self, owner: int, shoppers: int) -> str:
        """The truth id of a carrier: S-00001 (shopper), P-00001 (passer-by), F-01 (fixed device)."""
        if owner < shoppers:
            return _shopper_id(owner)
        if owner < shoppers + self.passers:
            return f"P-{owner - shoppers + 1:05d}"
        return f"F-{owner - shoppers - self.passers + 1:02d}"

    def truth(self, t0: float, shoppers: int) -> Iterator[PasserTruth | FixtureTruth]:
        for k, (walk, phone) in enumerate(zip(self.walks, self.phones, strict=True)):
            if k < self.passers:
                yield PasserTruth(passer_id=self.owner_id(shoppers + k, shoppers), start_ts=round(t0 + walk.start, 3),
                                  end_ts=round(t0 + walk.end, 3), transmits=bool(phone.ts.size))
            else:
                x, y = walk.xy[0]
                yield FixtureTruth(fixture_id=self.owner_id(shoppers + k, shoppers),
                                   model=MODELS[self.models[k - self.passers]].name,
                                   x=round(float(x), 3), y=round(float(y), 3), on_ts=round(t0 + walk.start, 3))


def _crowd(store: Store, config: SimConfig, shoppers: int, end: float, seed: np.random.SeedSequence) -> _Crowd:
    """Passers-by on the pavement over the arrival window, and fixed devices on from the start to ``end``."""
    crowd, phones = config.crowd, config.phones
    rng = np.random.default_rng(seed)
    passers = passer_paths(store, rng, crowd.passers, config.minutes * 60.0, crowd)
    fixed, models = fixture_paths(store, rng, crowd.fixtures, -crowd.fixtures_on_s, end)
    devices = [device_for(shoppers + k, walk.start, walk.end, rng, crowd, app=False, ble_hz=phones.ble_hz,
                          wifi_share=crowd.passer_probe_share, fixed_mac_share=phones.fixed_mac_share)
               for k, walk in enumerate(passers)]
    devices += [device_for(shoppers + len(passers) + k, walk.start, walk.end, rng, crowd, app=False,
                           ble_hz=phones.ble_hz, wifi_share=1.0, fixed_mac_share=1.0, model=model)
                for k, (walk, model) in enumerate(zip(fixed, models, strict=True))]
    loss = np.r_[np.full(len(passers), crowd.wall_loss_db), np.zeros(len(fixed))]
    return _Crowd(passers + fixed, devices, loss, len(passers), models)


def span(plan: ShopperPlan) -> tuple[float, float]:
    """When a shopper's walk starts and ends, s from the run's start."""
    assert plan.path is not None
    return plan.path.start, plan.path.end


def turned(turning: tuple[FloatArray, FloatArray], still: NDArray[np.bool_], t: FloatArray) -> FloatArray:
    """Heading offsets (n,) of a still shopper at times t (n,) from `channel.turns`; 0 while walking."""
    times, angles = turning
    k = np.searchsorted(times, t, side="right") - 1
    return np.where(still & (k >= 0), angles[np.maximum(k, 0)] if angles.size else 0.0, 0.0)


def _shopper_id(index: int) -> str:
    return f"S-{index + 1:05d}"


def loyalty_id(store_id: str, index: int) -> str:
    """The loyalty id of the store's shopper number ``index`` (0-based): "L-" + 3 digits of the store + 5.

    The same on every simulated day (seed) of the store, so a CRM consent
    export written once (examples/consent.csv) names the demo's customers
    whatever the day; the store part keeps two stores' customers apart.
    """
    return f"L-{store_seed(store_id) % 1000:03d}{index + 1:05d}"


def _positions(store: Store, plan: ShopperPlan, t0: float, z: float) -> Iterator[PositionTruth]:
    assert plan.path is not None
    first = math.ceil((t0 + plan.path.start) * TRUTH_HZ) / TRUTH_HZ
    stamps = np.arange(first, t0 + plan.path.end, 1.0 / TRUTH_HZ)
    xy = plan.path.at(stamps - t0)
    labels = store.label(xy)
    sid = _shopper_id(plan.index)
    for stamp, (x, y), label in zip(stamps, xy, labels, strict=True):
        sector = store.sector_ids[label] if label < len(store.sector_ids) else None
        yield PositionTruth(ts=float(stamp), shopper_id=sid, x=round(float(x), 3), y=round(float(y), 3),
                            z=round(z, 3), sector=sector)


def _taps(
    site: SiteConfig, plans: list[ShopperPlan], config: SimConfig, rng: np.random.Generator,
    pseudo: Pseudonymizer, t0: float,
) -> list[tuple[CardTap, TapTruth]]:
    """Card taps at the tills: loyalty members present their card; a few tap a card that is not ours."""
    taps: list[tuple[CardTap, TapTruth]] = []
    for plan in plans:
        member = rng.random() < config.phones.card_share
        foreign = rng.random() < config.phones.foreign_card_share
        uid = _card_uid(rng)
        if plan.till is None or not (member or foreign) or math.isnan(plan.tap_at):
            continue
        ts = round(t0 + plan.tap_at, 6)
        reader = site.nfc_readers[plan.till].id
        sid = _shopper_id(plan.index)
        if member:
            loyalty = loyalty_id(site.store.id, plan.index)
            taps.append((CardTap(ts=ts, reader_id=reader, card=loyalty, known=True),
                         TapTruth(ts=ts, shopper_id=sid, reader_id=reader, card_uid=uid, loyalty_id=loyalty, known=True)))
        else:
            card = pseudo.pseudonym("card", uid, ts)
            taps.append((CardTap(ts=ts, reader_id=reader, card=card, known=False),
                         TapTruth(ts=ts, shopper_id=sid, reader_id=reader, card_uid=uid, loyalty_id=None, known=False)))
    taps.sort(key=lambda pair: pair[0].ts)
    return taps
