"""The simulation loop: plans, phones, radio, and the three files it writes.

``observations.jsonl`` is what the store's receivers would have reported
(replay format, pseudonymised emitter ids, in time order), ``taps.jsonl`` the
card taps at the NFC readers, and ``truth.jsonl`` what really happened,
including the raw identifiers. Same seed, same site, same settings: the
same bytes.

Phones: a shopper with the loyalty app advertises an iBeacon from a stable
BLE address at its own rate; most phones also send Wi-Fi probe bursts,
nearly all from a fresh random MAC each burst. BLE is heard by receivers of
kind ble and node, probes by kind wifi only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from agent.config import SiteConfig
from agent.observations import CardTap
from agent.privacy import Pseudonymizer
from agent.replayfile import RecordWriter
from agent.site_arrays import site_arrays
from simulator.channel import Channel, ChannelConfig, store_seed, turns
from simulator.shoppers import MobilityConfig, ShopperPlan, plan_shoppers, survey_plan
from simulator.store import Store
from simulator.truth import (
    EmitterTruth,
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
    probe_interval_s: tuple[float, float] = (20.0, 90.0)
    probe_burst: tuple[int, int] = (2, 4)
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
    """Transmissions of one shopper's phone: times, tech, and the raw id of each."""

    shopper: int
    ts: FloatArray
    tech: NDArray[np.int8]
    raw: list[str]
    raw_index: NDArray[np.intp]


def _address(rng: np.random.Generator, first: int) -> str:
    octets = [first, *(int(v) for v in rng.integers(0, 256, 5))]
    return ":".join(f"{o:02X}" for o in octets)


def _card_uid(rng: np.random.Generator) -> str:
    """A 7-byte NFC-A UID, NXP's manufacturer byte first."""
    return ":".join(f"{o:02X}" for o in [0x04, *(int(v) for v in rng.integers(0, 256, 6))])


def _random_mac(rng: np.random.Generator) -> str:
    """A locally administered unicast MAC, as phones randomise them."""
    return _address(rng, (int(rng.integers(0, 64)) << 2) | 0x02)


def phone_for(plan: ShopperPlan, has_app: bool, phones: PhoneConfig, rng: np.random.Generator) -> Phone:
    """The transmissions of one shopper's phone over the visit (times relative to the run start)."""
    assert plan.path is not None
    start, end = plan.path.start, plan.path.end
    times: list[FloatArray] = []
    techs: list[NDArray[np.int8]] = []
    raw: list[str] = []
    index: list[NDArray[np.intp]] = []
    if has_app:
        hz = float(rng.uniform(*phones.ble_hz))
        period = 1.0 / hz
        t = start + rng.uniform(0.0, period) + np.arange(0.0, end - start, period)
        t = t + rng.uniform(0.0, 0.01, t.size)  # advDelay of the BLE spec
        t = t[t < end]
        raw.append(_address(rng, 0xC0 | int(rng.integers(0, 64))))  # random static address
        times.append(t)
        techs.append(np.full(t.size, BLE, dtype=np.int8))
        index.append(np.zeros(t.size, dtype=np.intp))
    if rng.random() < phones.wifi_share:
        fixed = _address(rng, int(rng.integers(0, 64)) << 2) if rng.random() < phones.fixed_mac_share else None
        at = start + rng.uniform(0.0, phones.probe_interval_s[1])
        while at < end:
            frames = int(rng.integers(phones.probe_burst[0], phones.probe_burst[1] + 1))
            burst = at + np.sort(rng.uniform(0.0, 0.05, frames))
            mac = fixed if fixed is not None else _random_mac(rng)
            if mac not in raw:
                raw.append(mac)
            times.append(burst[burst < end])
            techs.append(np.full(times[-1].size, WIFI, dtype=np.int8))
            index.append(np.full(times[-1].size, raw.index(mac), dtype=np.intp))
            at += rng.uniform(*phones.probe_interval_s)
    if not times:
        return Phone(plan.index, np.empty(0), np.empty(0, dtype=np.int8), raw, np.empty(0, dtype=np.intp))
    return Phone(plan.index, np.concatenate(times), np.concatenate(techs), raw, np.concatenate(index))


def _fmt(value: float) -> str:
    return repr(float(value))


def observation_line(ts: float, receiver: str, emitter: str, tech: str, rssi: float, tx: float | None) -> bytes:
    """One observation in exactly the JSON form ``Observation.model_dump_json`` gives."""
    tx_text = "null" if tx is None else _fmt(tx)
    return (
        f'{{"ts":{_fmt(ts)},"receiver_id":"{receiver}","emitter_id":"{emitter}","tech":"{tech}",'
        f'"rssi_dbm":{_fmt(rssi)},"tx_power_dbm":{tx_text},"probe":null}}\n'
    ).encode()


def _visits(store: Store, plan: ShopperPlan, shopper_id: str, t0: float) -> Iterator[VisitTruth]:
    """Sector stretches of a path, from its position every 0.1 s."""
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
            yield VisitTruth(shopper_id=shopper_id, sector=store.sector_ids[sector],
                             enter_ts=round(t0 + times[a], 3), exit_ts=round(t0 + times[b], 3))


SURVEY_PHONES = PhoneConfig(app_share=1.0, card_share=0.0, foreign_card_share=0.0, wifi_share=1.0,
                            fixed_mac_share=1.0, ble_hz=(10.0, 10.0), probe_interval_s=(3.0, 6.0))
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
    mobility_seed, phone_seed, channel_seed, card_seed, posture_seed = np.random.SeedSequence(config.seed).spawn(5)
    static_seed = store_seed(site.store.id) if config.store_seed is None else config.store_seed
    if survey:
        plans = [survey_plan(store)]
    else:
        plans = plan_shoppers(store, config.mobility, config.shoppers, config.minutes * 60.0, mobility_seed)
    pseudo = Pseudonymizer(SIM_SECRET, site.store.id, site.privacy.salt_rotation_hours * 3600.0)
    t0 = config.start_ts
    phone_rng = np.random.default_rng(phone_seed)
    card_rng = np.random.default_rng(card_seed)
    channel = Channel(arrays.xyz, arrays.rssi_at_1m, arrays.exponent, arrays.bbox, config.channel,
                      np.random.default_rng(channel_seed), np.random.default_rng(static_seed))
    height = site.tracking.emitter_height_m

    has_app = phone_rng.random(len(plans)) < config.phones.app_share
    phones = [phone_for(plan, bool(app), config.phones, phone_rng) for plan, app in zip(plans, has_app, strict=True)]
    heights = np.clip(height + config.phones.phone_height_sigma_m * phone_rng.normal(size=len(plans)), 0.2, 2.5)

    # Stack every transmission of every phone, in time order.
    raw_ids: list[str] = []
    raw_techs: list[int] = []
    raw_owner: list[int] = []
    parts = []
    for phone in phones:
        base = len(raw_ids)
        raw_ids.extend(phone.raw)
        for k, _ in enumerate(phone.raw):
            first = phone.tech[phone.raw_index == k]
            raw_techs.append(int(first[0]) if first.size else BLE)
            raw_owner.append(phone.shopper)
        parts.append((phone.ts, phone.tech, phone.raw_index + base, np.full(phone.ts.size, phone.shopper)))
    ts = np.concatenate([p[0] for p in parts])
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    tech = np.concatenate([p[1] for p in parts])[order]
    raw_of = np.concatenate([p[2] for p in parts])[order]
    owner = np.concatenate([p[3] for p in parts]).astype(np.intp)[order]
    # One offset per phone (BLE and every probe MAC alike); the technician's reference tag is the one
    # the receivers' models are stated for, so it has none.
    offsets = np.zeros(len(plans)) if survey else channel.device_offsets(len(plans))
    posture_rng = np.random.default_rng(posture_seed)
    turning = [turns(posture_rng, *_span(plan), config.channel.turn_interval_s, config.channel.turn_sigma_rad)
               for plan in plans]
    listens = np.array([[kind in ("ble", "node"), kind == "wifi"] for kind in arrays.kinds]).T  # (2, m)

    out_dir.mkdir(parents=True, exist_ok=True)
    end = max(plan.path.end for plan in plans if plan.path is not None)
    seen: dict[str, tuple[int, float, float]] = {}  # emitter -> (raw index, first, last)
    names: dict[tuple[int, int], str] = {}
    written = 0
    with (out_dir / "observations.jsonl").open("wb") as handle:
        bounds = np.searchsorted(ts, np.arange(0.0, end + TICK_S, TICK_S))
        for tick, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            if progress is not None and tick % 30 == 0:
                progress(tick * TICK_S, end)
            if lo == hi:
                continue
            t, who, raw = ts[lo:hi], owner[lo:hi], raw_of[lo:hi]
            xy = np.empty((hi - lo, 2))
            facing = np.empty(hi - lo)
            for shopper in np.unique(who):
                rows = who == shopper
                path = plans[shopper].path
                assert path is not None
                xy[rows] = path.at(t[rows])
                facing[rows] = path.facing_at(t[rows]) + _turned(turning[shopper], path.still_at(t[rows]), t[rows])
            rssi = channel.readings(xy, heights[who], facing, offsets[who], listens[tech[lo:hi]])
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
                tx = IBEACON_MEASURED_POWER if name == "ble" else None
                for r in np.flatnonzero(~np.isnan(rssi[j])):
                    lines.append(observation_line(stamp, arrays.receiver_ids[r], emitter, name, float(rssi[j, r]), tx))
            handle.writelines(lines)
            written += len(lines)
    emitters = {
        emitter: EmitterTruth(
            emitter_id=emitter, tech="ble" if raw_techs[index] == BLE else "wifi", raw_id=raw_ids[index],
            shopper_id=_shopper_id(raw_owner[index]), first_ts=first, last_ts=last)
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
    return SimSummary(len(plans), written, len(taps), len(emitters), end, out_dir)


def _span(plan: ShopperPlan) -> tuple[float, float]:
    assert plan.path is not None
    return plan.path.start, plan.path.end


def _turned(turning: tuple[FloatArray, FloatArray], still: NDArray[np.bool_], t: FloatArray) -> FloatArray:
    """Heading offsets (n,) of a still shopper at times t (n,) from `channel.turns`; 0 while walking."""
    times, angles = turning
    k = np.searchsorted(times, t, side="right") - 1
    return np.where(still & (k >= 0), angles[np.maximum(k, 0)] if angles.size else 0.0, 0.0)


def _shopper_id(index: int) -> str:
    return f"S-{index + 1:05d}"


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
    loyalty_numbers = rng.permutation(1_000_000)[: len(plans)]
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
            loyalty = f"L-{int(loyalty_numbers[plan.index]):06d}"
            taps.append((CardTap(ts=ts, reader_id=reader, card=loyalty, known=True),
                         TapTruth(ts=ts, shopper_id=sid, reader_id=reader, card_uid=uid, loyalty_id=loyalty, known=True)))
        else:
            card = pseudo.pseudonym("card", uid, ts)
            taps.append((CardTap(ts=ts, reader_id=reader, card=card, known=False),
                         TapTruth(ts=ts, shopper_id=sid, reader_id=reader, card_uid=uid, loyalty_id=None, known=False)))
    taps.sort(key=lambda pair: pair[0].ts)
    return taps
