"""The local BLE source: bleak scanning through BlueZ, turned into pseudonymised observations.

Each advertisement bleak reports is parsed (``adverts``), checked against the
site's allow-list, given an emitter id and handed to the sink at once; the raw
BLE address goes no further than this module (not into an observation, not
into a log line, not into ``last_error``).

bleak does not tell a running scanner that bluetoothd went away or that the
adapter was unplugged or powered off: the scanner just goes quiet. So each
scanning session also holds its own small D-Bus connection that watches for
exactly those three things; when one happens, or starting fails, the source
reports ``down`` with a one-line reason and retries with backoff until BlueZ
and the adapter are back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusFastError
from pydantic import ValidationError

from agent.backoff import RADIO_RETRY, BackoffPolicy
from agent.config import BleConfig, ConfigError
from agent.errors import SantiError
from agent.observations import AppBeacon, Observation, rssi_problem
from agent.privacy import Pseudonymizer
from agent.sources.adverts import (
    Advert,
    AdvertParseError,
    AllowList,
    AltBeacon,
    EddystoneUID,
    Emitter,
    IBeacon,
    app_loyalty_id,
    parse_manufacturer,
    parse_service_data,
)
from agent.sources.base import Sink, SourceStats

log = logging.getLogger(__name__)

BLUEZ = "org.bluez"
ADAPTER_INTERFACE = "org.bluez.Adapter1"
IBEACON_PREFIX = b"\x4c\x00\x02\x15"  # Apple company id (little-endian), type 0x02, length 0x15
ALTBEACON_CODE = b"\xbe\xac"
EDDYSTONE_UUID16 = b"\xaa\xfe"  # little-endian, as on the air

_RECOVERABLE = (BleakError, DBusFastError, OSError, EOFError, TimeoutError)
_PSEUDONYM_CACHE = 65536
NO_RSSI = (-127, 127)
"""What bleak and HCI report when the controller measured no RSSI (127 is HCI's "not available")."""
_ADDRESS_LIKE = re.compile(r"([0-9A-Fa-f]{2}[:_-]){5}[0-9A-Fa-f]{2}")


class BleUnavailable(SantiError):
    """BlueZ or the adapter is missing, off, or went away; the message is the line a technician reads."""


def passive_patterns(config: BleConfig) -> list[OrPattern]:
    """BlueZ advertisement-monitor patterns that let through what the allow-list could admit.

    Specific patterns (the loyalty UUIDs, the tag namespaces) keep the
    controller from waking us for every phone in the street. Tags' telemetry
    frames are let through too: they carry RSSI and are tied to the tag by
    its address (see ``BleSource``). With nothing configured the generic
    beacon patterns are used, so a technician still sees what is around
    (counted as not allowed).
    """
    manufacturer = AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA
    service16 = AdvertisementDataType.SERVICE_DATA_UUID16
    generic = [
        OrPattern(0, manufacturer, IBEACON_PREFIX),
        OrPattern(2, manufacturer, ALTBEACON_CODE),
        OrPattern(0, service16, EDDYSTONE_UUID16),
    ]
    if config.allow_all:
        flags = AdvertisementDataType.FLAGS
        # Most connectable and discoverable devices set one of these flag bytes.
        return [*generic, *(OrPattern(0, flags, bytes([value])) for value in (0x02, 0x06, 0x1A))]
    patterns: list[OrPattern] = []
    for text in config.ibeacon_uuids:
        raw = uuid.UUID(text).bytes
        patterns.append(OrPattern(0, manufacturer, IBEACON_PREFIX + raw))
        patterns.append(OrPattern(2, manufacturer, ALTBEACON_CODE + raw))
    for namespace in config.eddystone_namespaces:
        patterns.append(OrPattern(4, service16, bytes.fromhex(namespace)))
    if config.eddystone_namespaces:
        patterns.append(OrPattern(0, service16, EDDYSTONE_UUID16 + b"\x20"))
    return patterns or generic


def describe(exc: BaseException) -> str:
    """One line for ``last_error``: no traceback, no device address, advice where there is one."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        text = "BlueZ did not answer in time"
    elif isinstance(exc, OSError):
        text = f"cannot reach the system D-Bus: {text}"
    elif "passive scanning" in text:
        text += '; or set ble.scanning = "active"'
    return _ADDRESS_LIKE.sub("<address>", text)[:240]


class _BluezWatch:
    """One session's watch on BlueZ: ``lost`` resolves with a reason when BlueZ or the adapter goes away."""

    def __init__(self, bus: MessageBus, adapter: str) -> None:
        self._bus = bus
        self._adapter = adapter
        self._path = f"/org/bluez/{adapter}"
        self._closing = False
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._watcher = asyncio.ensure_future(self._watch_disconnect())

    @classmethod
    async def open(cls, adapter: str) -> _BluezWatch:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        watch = cls(bus, adapter)
        try:
            bus.add_message_handler(watch._on_message)
            for rule in (
                f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{BLUEZ}'",
                f"type='signal',sender='{BLUEZ}',member='InterfacesRemoved',arg0path='{watch._path}'",
                (f"type='signal',sender='{BLUEZ}',member='PropertiesChanged',path='{watch._path}',"
                 f"arg0='{ADAPTER_INTERFACE}'"),
            ):
                await watch._call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                  "AddMatch", "s", [rule])
            await watch._check()
        except BaseException:
            await watch.close()
            raise
        return watch

    async def _call(self, destination: str, path: str, interface: str, member: str,
                    signature: str, body: list[Any]) -> Message:
        reply = await self._bus.call(Message(destination=destination, path=path, interface=interface,
                                             member=member, signature=signature, body=body))
        if reply is None:
            raise BleUnavailable(f"no reply from {destination} to {member}")
        return reply

    async def _check(self) -> None:
        """Fail early, with advice, when BlueZ or the adapter is missing or off."""
        owner = await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                 "GetNameOwner", "s", [BLUEZ])
        if owner.message_type is MessageType.ERROR:
            raise BleUnavailable("BlueZ (org.bluez) is not on the system bus; is bluetoothd running?")
        reply = await self._call(BLUEZ, self._path, "org.freedesktop.DBus.Properties", "GetAll", "s",
                                 [ADAPTER_INTERFACE])
        if reply.message_type is MessageType.ERROR:
            raise BleUnavailable(f"adapter {self._adapter} not found; check ble.adapter (bluetoothctl list)")
        powered = reply.body[0].get("Powered")
        if powered is not None and not powered.value:
            raise BleUnavailable(f"adapter {self._adapter} is powered off (bluetoothctl power on; rfkill list)")

    def _lose(self, reason: str) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL:
            return
        if msg.member == "NameOwnerChanged" and msg.body[0] == BLUEZ and not msg.body[2]:
            self._lose("BlueZ (org.bluez) left the system bus; waiting for bluetoothd to return")
        elif msg.member == "InterfacesRemoved" and msg.body[0] == self._path and ADAPTER_INTERFACE in msg.body[1]:
            self._lose(f"adapter {self._adapter} was removed")
        elif (msg.member == "PropertiesChanged" and msg.path == self._path and msg.body[0] == ADAPTER_INTERFACE
              and "Powered" in msg.body[1] and not msg.body[1]["Powered"].value):
            self._lose(f"adapter {self._adapter} was powered off")

    async def _watch_disconnect(self) -> None:
        with contextlib.suppress(*_RECOVERABLE):
            await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        if not self._closing:
            self._lose("lost the connection to the system D-Bus")

    async def close(self) -> None:
        self._closing = True
        self._bus.disconnect()
        with contextlib.suppress(*_RECOVERABLE):
            await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        self._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watcher


class BleSource:
    """Scans with the local adapter and hands an ``Observation`` per allowed advertisement to the sink.

    ``receiver_id`` is the site's local receiver of kind ``ble``; ``clock``
    stamps each advertisement (bleak's carry no time). The retry timings are
    arguments so tests can make recovery quick.

    Drops are counted by reason: ``not_allowed`` (an emitter the site does
    not locate), ``no_rssi``, ``impossible_rssi`` and ``bad_rssi`` (see
    ``agent.observations.rssi_problem``), ``corrupt_<parser reason>`` (one per bad frame,
    even when another frame of the same advertisement is used),
    ``bad_clock``, ``invalid_observation`` and ``queue_full``.
    """

    def __init__(
        self,
        config: BleConfig,
        receiver_id: str,
        pseudonymizer: Pseudonymizer,
        *,
        clock: Callable[[], float] = time.time,
        name: str = "ble",
        retry: BackoffPolicy = RADIO_RETRY,
        start_timeout_s: float = 15.0,
        tag_memory_s: float = 120.0,
        tag_memory_size: int = 4096,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_]+", config.adapter):
            raise ConfigError(f"ble.adapter: {config.adapter!r} is not an adapter name such as 'hci0'")
        self.stats = SourceStats(name=name)
        self._config = config
        self._receiver_id = receiver_id
        self._pseudonymizer = pseudonymizer
        self._clock = clock
        self._allow = AllowList.from_config(config)
        self._retry = retry
        self._start_timeout_s = start_timeout_s
        self._tag_memory_s = tag_memory_s
        self._tag_memory_size = tag_memory_size
        self._announced: set[str] = set()
        # raw address -> (emitter, last seen): ties a tag's telemetry frames to its UID frames
        self._tags: OrderedDict[str, tuple[Emitter, float]] = OrderedDict()
        self._pseudonyms: dict[str, str] = {}
        self._period: int | None = None
        args: BlueZScannerArgs = {"adapter": config.adapter}
        if config.scanning == "passive":
            args["or_patterns"] = list(passive_patterns(config))
        self._scanner_args = args
        # bleak's DEBUG lines print BlueZ device paths, which embed raw addresses.
        for noisy in ("bleak", "dbus_fast"):
            logger = logging.getLogger(noisy)
            if logger.getEffectiveLevel() < logging.INFO:
                logger.setLevel(logging.INFO)

    def detection_callback(self, sink: Sink) -> Callable[[BLEDevice, AdvertisementData], None]:
        """The function bleak calls per advertisement: parse, allow, pseudonymise, hand to ``sink``."""
        stats = self.stats
        allow = self._allow
        clock = self._clock
        pseudonym = self._pseudonym
        receiver = self._receiver_id

        def on_advertisement(device: BLEDevice, adv: AdvertisementData) -> None:
            rssi = adv.rssi
            if rssi in NO_RSSI:
                stats.drop("no_rssi")
                return
            problem = rssi_problem(float(rssi))
            if problem is not None:
                stats.drop(problem)
                return
            frames: list[Advert] = []
            for company, data in adv.manufacturer_data.items():
                try:
                    frames.append(parse_manufacturer(company, data))
                except AdvertParseError as exc:
                    stats.drop("corrupt_" + exc.reason)
            for service, data in adv.service_data.items():
                try:
                    frames.append(parse_service_data(service, data))
                except AdvertParseError as exc:
                    stats.drop("corrupt_" + exc.reason)
            ts = clock()
            if not 0.0 <= ts < 32503680000.0:  # also false for NaN
                stats.drop("bad_clock")
                return
            emitter = allow.choose(frames, adv.tx_power)
            if emitter is not None and emitter.identity is not None:
                self._remember_tag(device.address, emitter, ts)
            elif (remembered := self._recall_tag(device.address, frames, ts)) is not None:
                emitter = remembered
            if emitter is None:
                stats.drop("not_allowed")
                return
            power = emitter.power_at_1m_dbm
            try:
                observation = Observation(
                    ts=ts, receiver_id=receiver, tech="ble", rssi_dbm=float(rssi),
                    emitter_id=pseudonym(emitter.identity or device.address, ts),
                    tx_power_dbm=None if power is None else float(power),
                )
            except ValidationError:
                stats.drop("invalid_observation")
                return
            try:
                sink(observation)
            except (asyncio.QueueFull, queue.Full):
                stats.drop("queue_full")
                return
            stats.accepted += 1
            if observation.emitter_id not in self._announced:
                self._announce_app(sink, emitter.identity, observation)

        return on_advertisement

    def _announce_app(self, sink: Sink, identity: str | None, observation: Observation) -> None:
        """Tell the locator once per pseudonym that this emitter is the loyalty app of a known customer."""
        loyalty = app_loyalty_id(identity, self._config)
        if loyalty is None:
            return
        if len(self._announced) >= _PSEUDONYM_CACHE:
            self._announced.clear()
        try:
            sink(AppBeacon(ts=observation.ts, emitter_id=observation.emitter_id, loyalty_id=loyalty))
        except (asyncio.QueueFull, queue.Full):
            self.stats.drop("queue_full")
            return
        self._announced.add(observation.emitter_id)

    def _pseudonym(self, raw: str, ts: float) -> str:
        """``Pseudonymizer.pseudonym("ble", ...)``, cached within the salt period: phones repeat many times a second."""
        period = self._pseudonymizer.period(ts)
        if period != self._period or len(self._pseudonyms) >= _PSEUDONYM_CACHE:
            self._pseudonyms.clear()
            self._period = period
        value = self._pseudonyms.get(raw)
        if value is None:
            value = self._pseudonyms[raw] = self._pseudonymizer.pseudonym("ble", raw, ts)
        return value

    def _remember_tag(self, address: str, emitter: Emitter, ts: float) -> None:
        self._tags[address] = (emitter, ts)
        self._tags.move_to_end(address)
        if len(self._tags) > self._tag_memory_size:
            self._tags.popitem(last=False)

    def _recall_tag(self, address: str, frames: list[Advert], ts: float) -> Emitter | None:
        """The allowed identity this address showed recently, for frames that carry none of their own.

        BlueZ keeps one service-data value per UUID, so a tag alternating
        Eddystone UID and TLM frames shows up half the time as TLM only.
        """
        if any(isinstance(frame, IBeacon | AltBeacon | EddystoneUID) for frame in frames):
            return None
        remembered = self._tags.get(address)
        if remembered is None or not 0.0 <= ts - remembered[1] <= self._tag_memory_s:
            return None
        return remembered[0]

    async def run(self, sink: Sink, stop: asyncio.Event) -> None:
        """Scan until ``stop`` is set, through BlueZ restarts and adapters coming and going."""
        callback = self.detection_callback(sink)
        failures = 0
        try:
            while not stop.is_set():
                came_up: list[bool] = []
                try:
                    await self._session(callback, stop, came_up)
                except (BleUnavailable, *_RECOVERABLE) as exc:
                    failures = 0 if came_up else failures + 1
                    self.stats.fail(describe(exc))
                else:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._retry.wait_s(failures))
        finally:
            self.stats.state = "down"

    async def _session(self, callback: Callable[[BLEDevice, AdvertisementData], None],
                       stop: asyncio.Event, came_up: list[bool]) -> None:
        """One scanning session; returns on ``stop``, raises when BlueZ or the adapter fails."""
        watch = await _BluezWatch.open(self._config.adapter)
        try:
            scanner = BleakScanner(callback, None, self._config.scanning, bluez=self._scanner_args)
            async with asyncio.timeout(self._start_timeout_s):
                await scanner.start()
            try:
                came_up.append(True)
                self.stats.up()
                stopping = asyncio.ensure_future(stop.wait())
                waits: set[asyncio.Future[Any]] = {stopping, watch.lost}
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
            finally:
                await self._stop_scanner(scanner)
            if watch.lost.done() and not stop.is_set():
                raise BleUnavailable(watch.lost.result())
        finally:
            await watch.close()

    async def _stop_scanner(self, scanner: BleakScanner) -> None:
        """Stop scanning; when BlueZ is already gone there is nothing to stop and that is fine."""
        try:
            async with asyncio.timeout(self._start_timeout_s):
                await scanner.stop()
        except _RECOVERABLE as exc:
            log.debug("scanner stop failed", extra={"source": self.stats.name, "error": describe(exc)})
