"""Guided calibration of one receiver: a reference beacon at measured distances, then a path-loss fit.

The technician puts a beacon at 1, 2, 4 and 8 m from the receiver's antenna
and the receiver listens for a few seconds at each; every reading is one
(distance, RSSI) pair for ``positioning.pathloss.fit_calibration``. Doubling
distances spread the readings evenly in log-distance, which is what the fit
regresses on. The first second after each "press Enter" is skipped: that is
the technician's hand and body still beside the beacon.

The pure part (parsing the beacon and distances, fitting, rewriting and
replacing the config) is separate from the capture, which is an interface
(``Capture``) so the command can be driven by any radio; ``BleCapture``
listens through the agent's own ``BleSource`` on a thread of its own, so the
prompts stay ordinary blocking prompts.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from agent.backoff import INTERACTIVE_RETRY
from agent.config import BleConfig, SiteConfig, parse_site
from agent.errors import SantiError
from agent.observations import Observation
from agent.privacy import Pseudonymizer
from agent.siteedit import fitted_values, set_receiver_values
from agent.sources.base import Record, Source
from agent.sources.ble import BleSource
from positioning.pathloss import MIN_DISTANCE_SPAN, Calibration, fit_calibration, rssi_at_distance

log = logging.getLogger(__name__)

DEFAULT_DISTANCES = (1.0, 2.0, 4.0, 8.0)
"""Doublings from 1 m: even steps in log-distance, and 8 m still fits in most shops."""

Clock = Callable[[], float]
Progress = Callable[[float, int], None]
"""Called while measuring with (seconds elapsed, readings so far)."""

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_IBEACON = re.compile(rf"^(?:(?:ibeacon|altbeacon):)?(?P<uuid>{_UUID}):(?P<major>\d{{1,5}}):(?P<minor>\d{{1,5}})$")
_EDDYSTONE = re.compile(r"^(?:eddystone:)?(?P<namespace>[0-9a-f]{20}):(?P<instance>[0-9a-f]{12})$")


class WalkCaptureError(SantiError):
    """The radio could not listen (adapter missing, BlueZ gone); the message is one line with advice."""


class WalkError(SantiError):
    """The captured readings cannot give a calibration; the message says what to do differently."""


@dataclass(frozen=True)
class Beacon:
    """The reference beacon, by the identity it advertises (as the agent names emitters)."""

    text: str
    identities: frozenset[str]
    uuid: str | None = None
    namespace: str | None = None

    def ble_config(self, adapter: str) -> BleConfig:
        """Active scanning that admits this beacon's UUID or namespace (and so, at most, its siblings)."""
        return BleConfig(adapter=adapter, scanning="active", ibeacon_uuids=[self.uuid] if self.uuid else [],
                         eddystone_namespaces=[self.namespace] if self.namespace else [])


def parse_beacon(text: str) -> Beacon:
    """``UUID:MAJOR:MINOR`` (iBeacon or AltBeacon) or ``NAMESPACE:INSTANCE`` (Eddystone-UID), hex case-free."""
    value = text.strip().lower()
    if match := _IBEACON.match(value):
        major, minor = int(match["major"]), int(match["minor"])
        if major > 0xFFFF or minor > 0xFFFF:
            raise ValueError(f"{text!r}: major and minor are 0 to 65535")
        tail = f"{match['uuid']}:{major}:{minor}"
        return Beacon(text=tail, identities=frozenset({f"ibeacon:{tail}", f"altbeacon:{tail}"}), uuid=match["uuid"])
    if match := _EDDYSTONE.match(value):
        tail = f"{match['namespace']}:{match['instance']}"
        return Beacon(text=tail, identities=frozenset({f"eddystone:{tail}"}), namespace=match["namespace"])
    raise ValueError(f"{text!r} is not a beacon identity: use UUID:MAJOR:MINOR (iBeacon) or "
                     f"NAMESPACE:INSTANCE (Eddystone-UID, 20 and 12 hex digits), as santi scan shows them")


def parse_distances(text: str) -> tuple[float, ...]:
    """Comma-separated metres, e.g. ``1,2,4,8``: distinct, positive, and spanning at least a factor of 2."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{text!r}: distances are metres separated by commas, e.g. 1,2,4,8") from None
    if len(values) < 2:
        raise ValueError("give at least two distances: one cannot separate the 1 m RSSI from the exponent")
    if not all(0.1 <= v <= 100.0 for v in values):
        raise ValueError("distances must be between 0.1 and 100 m")
    if len(set(values)) != len(values):
        raise ValueError(f"{text!r}: each distance once (repeat a distance by answering the prompt again)")
    if max(values) < MIN_DISTANCE_SPAN * min(values):
        raise ValueError(f"the farthest distance must be at least {MIN_DISTANCE_SPAN:g} times the nearest, "
                         "or the path-loss exponent is guesswork")
    return values


@dataclass(frozen=True)
class Step:
    """The readings at one distance."""

    distance_m: float
    rssi_dbm: tuple[float, ...]

    @property
    def median_dbm(self) -> float:
        return float(np.median(self.rssi_dbm)) if self.rssi_dbm else float("nan")


def fit_walk(steps: list[Step]) -> Calibration:
    """Fit the receiver from every reading of the walk; ``WalkError`` when the readings cannot tell A and n apart."""
    heard = [s for s in steps if s.rssi_dbm]
    if len({s.distance_m for s in heard}) < 2:
        raise WalkError("the beacon was heard at fewer than two distances; check --beacon and that it advertises")
    d = np.concatenate([np.full(len(s.rssi_dbm), s.distance_m) for s in heard])
    z = np.concatenate([np.asarray(s.rssi_dbm, dtype=np.float64) for s in heard])
    try:
        cal = fit_calibration(d, z)
    except ValueError as exc:
        raise WalkError(str(exc)) from None
    if not (-110.0 <= cal.rssi_at_1m <= 10.0 and 1.0 <= cal.path_loss_exponent <= 6.0):
        raise WalkError(f"fit out of range (rssi_at_1m {cal.rssi_at_1m:.1f} dBm, exponent "
                        f"{cal.path_loss_exponent:.2f}): were the distances measured from this receiver? "
                        "Was something in the way at one of them?")
    return cal


def residual_db(step: Step, cal: Calibration) -> float:
    """Measured median minus the fitted model at the step's distance: a bad step stands out here."""
    model = float(rssi_at_distance(step.distance_m, cal.rssi_at_1m, cal.path_loss_exponent))
    return step.median_dbm - model


def proposed_text(text: str, receiver_id: str, cal: Calibration) -> str:
    """The config text with this receiver's three calibration lines replaced (or added); all else kept."""
    return set_receiver_values(text, {receiver_id: fitted_values(cal)})


def unified_diff(old: str, new: str, path: Path) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=f"{path} (now)", tofile=f"{path} (calibrated)"))


def replace_site_file(path: Path, old_text: str, new_text: str) -> tuple[SiteConfig, Path]:
    """Validate ``new_text`` as the site config at ``path``, keep ``path.bak``, and swap the file in atomically.

    Raises ``ConfigError`` (nothing written) if the new text does not
    validate, and ``ValueError`` if the file changed since it was read.
    """
    checked = parse_site(new_text, path)
    if path.read_text(encoding="utf-8") != old_text:
        raise ValueError(f"{path} changed while calibrating; nothing written, run the calibration again")
    backup = path.with_name(path.name + ".bak")
    shutil.copy2(path, backup)
    tmp = path.with_name(f".{path.name}.calibrate.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(new_text)
            handle.flush()
            os.fsync(handle.fileno())
        shutil.copymode(path, tmp)
        stat = path.stat()
        with contextlib.suppress(PermissionError):
            os.chown(tmp, stat.st_uid, stat.st_gid)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return checked, backup


class Capture(Protocol):
    """A radio listening for the reference beacon for the whole walk."""

    def start(self) -> None:
        """Start listening; ``WalkCaptureError`` if the radio cannot."""

    def measure(self, distance_m: float, seconds: float, settle_s: float, progress: Progress) -> list[float]:
        """RSSI readings of the beacon heard during ``seconds``, after ``settle_s`` of ignored readings."""

    def close(self) -> None:
        """Stop listening and release the radio."""


class TagListener:
    """Sources on a thread and event loop of their own, keeping every reading of one tag's exact identity.

    The sources admit only the tag's UUID or namespace and name emitters by
    a throwaway key (`pseudonymizer`), so readings are matched to the exact
    identity by its pseudonym and nothing identifying leaves this object.
    Subclasses add their sources (`listen`) before `start`.
    """

    def __init__(self, beacon: Beacon, key: str, *, clock: Clock = time.time, start_timeout_s: float = 15.0) -> None:
        self.beacon = beacon
        self._clock = clock
        self._start_timeout_s = start_timeout_s
        self._key = key
        self.pseudonymizer = Pseudonymizer(os.urandom(32), key, 86400.0)
        self._names: dict[int, frozenset[str]] = {}
        self._sources: list[tuple[Source, str, str]] = []
        self._lock = threading.Lock()
        self._readings: list[Observation] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    def listen(self, source: Source, what: str, silent: str) -> None:
        """Run `source` too; `what` names it in errors ("Bluetooth"), `silent` is the error when it gives none."""
        self._sources.append((source, what, silent))

    def _is_tag(self, observation: Observation) -> bool:
        period = self.pseudonymizer.period(observation.ts)
        names = self._names.get(period)
        if names is None:
            names = frozenset(self.pseudonymizer.pseudonym("ble", i, observation.ts) for i in self.beacon.identities)
            self._names = {period: names}
        return observation.emitter_id in names

    def _sink(self, record: Record) -> None:
        if isinstance(record, Observation) and self._is_tag(record):
            with self._lock:
                self._readings.append(record)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await asyncio.gather(*(source.run(self._sink, self._stop) for source, _, _ in self._sources))

    def start(self) -> None:
        """Start every source; WalkCaptureError (one line, the source's own error) if one does not come up."""
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name=self._key, daemon=True)
        self._thread.start()
        self._ready.wait(5.0)
        deadline = time.monotonic() + self._start_timeout_s
        while down := [(source, what, silent) for source, what, silent in self._sources if source.stats.state != "up"]:
            if time.monotonic() > deadline:
                self.close()
                source, what, silent = down[0]
                raise WalkCaptureError(f"{what} did not start: {source.stats.last_error or silent}")
            time.sleep(0.05)

    def now(self) -> float:
        """The time on the clock the readings are stamped with: a mark and a reading compare."""
        return self._clock()

    def close(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already finished
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None


class BleCapture(TagListener):
    """The beacon's RSSI at one distance after another, through the agent's ``BleSource`` on this machine's adapter."""

    def __init__(self, beacon: Beacon, adapter: str, *, clock: Clock = time.time,
                 sleep: Callable[[float], None] = time.sleep, start_timeout_s: float = 15.0) -> None:
        super().__init__(beacon, "calibration", clock=clock, start_timeout_s=start_timeout_s)
        self._sleep = sleep
        self.source = BleSource(beacon.ble_config(adapter), "calibration", self.pseudonymizer, clock=clock,
                                retry=INTERACTIVE_RETRY)
        self.listen(self.source, "Bluetooth", "no answer from BlueZ")

    def measure(self, distance_m: float, seconds: float, settle_s: float, progress: Progress) -> list[float]:
        self._sleep(settle_s)
        start = self._clock()
        elapsed = 0.0
        while elapsed < seconds:
            if self.source.stats.state != "up":
                raise WalkCaptureError(f"Bluetooth went away while measuring: {self.source.stats.last_error}")
            with self._lock:
                count = sum(1 for r in self._readings if r.ts >= start)
            progress(elapsed, count)
            self._sleep(min(0.1, seconds - elapsed))
            elapsed = self._clock() - start
        end = self._clock()
        with self._lock:
            taken = [r.rssi_dbm for r in self._readings if start <= r.ts <= end]
            self._readings = [r for r in self._readings if r.ts > end]
        progress(seconds, len(taken))
        log.info("calibration step captured", extra={"distance_m": distance_m, "readings": len(taken)})
        return taken


CaptureFactory = Callable[[Beacon, str], Capture]
"""Makes the capture for a beacon and an adapter name; the command takes one, so tests can pick theirs."""


def ble_capture(beacon: Beacon, adapter: str) -> Capture:
    """The production capture: this machine's Bluetooth adapter."""
    return BleCapture(beacon, adapter)
