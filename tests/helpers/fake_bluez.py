"""A fake ``org.bluez`` on a private system-type D-Bus bus, for driving the real bleak BlueZ backend.

What is real: the ``dbus-daemon`` (a private one, socket in a short /tmp
path, killed with its parent through ``PR_SET_PDEATHSIG``), the D-Bus wire
protocol, and bleak's own BlueZ backend talking to it. What is fake: the
service that owns ``org.bluez``. It serves the part of the BlueZ API a
scanner uses, with BlueZ's semantics where a scanner can tell:

- ``org.bluez.Adapter1`` at ``/org/bluez/<name>`` (``StartDiscovery``,
  ``StopDiscovery``, ``SetDiscoveryFilter``; ``Powered``, ``Discovering``,
  ``Roles``); starting discovery on a powered-off adapter fails with
  ``org.bluez.Error.NotReady``; sessions belong to the calling client and end
  when it leaves the bus.
- ``org.bluez.AdvertisementMonitorManager1`` on the adapter: ``RegisterMonitor``
  reads the monitor's ``Patterns`` back from the client and activates it, like
  bluetoothd; in passive mode only advertisements matching an or-pattern are
  heard.
- ``org.bluez.Device1`` objects created on the first advertisement heard
  (``InterfacesAdded``) and updated by later ones (``PropertiesChanged``, with
  BlueZ's merging of manufacturer and service data).
- The service can vanish (bluetoothd crashed: its name leaves the bus, no
  signals) and appear again (a fresh bluetoothd: adapters re-registered, no
  discovery running, devices forgotten); adapters can be unplugged and
  powered off.

The service runs on its own thread and event loop, so a test's event loop, or
a CLI run in-process by ``CliRunner``, can talk to it while it serves. Its
methods are plain blocking calls that return once the D-Bus traffic is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from agent.localbroker import die_with_parent

T = TypeVar("T")

BLUEZ = "org.bluez"
ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
MONITOR_MANAGER = "org.bluez.AdvertisementMonitorManager1"
MONITOR = "org.bluez.AdvertisementMonitor1"
PROPERTIES = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


class BusDaemon:
    """A private ``dbus-daemon`` with a system-type config, at a fixed short socket path."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="sb", dir="/tmp"))
        self.socket = self._dir / "bus"
        self._config = self._dir / "bus.conf"
        self._config.write_text(_CONFIG.format(socket=self.socket), encoding="utf-8")
        self._proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> None:
        if self.socket.exists():
            self.socket.unlink()
        proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={self._config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=die_with_parent,  # noqa: PLW1509
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line:
            proc.wait(timeout=5)
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"dbus-daemon did not start: {stderr.strip()}")
        self._proc = proc
        self.address = line.split(",")[0]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass
class _Monitor:
    sender: str
    path: str
    patterns: list[tuple[int, int, bytes]] | None = None  # None until read back from the client


@dataclass
class _Adapter:
    name: str
    address: str
    powered: bool = True
    sessions: set[str] = field(default_factory=set)  # unique names of clients discovering
    filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    monitors: list[_Monitor] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"/org/bluez/{self.name}"


def _device_path(adapter: _Adapter, address: str) -> str:
    return f"{adapter.path}/dev_{address.upper().replace(':', '_')}"


def _ad_structures(props: dict[str, Variant]) -> list[tuple[int, bytes]]:
    """The advertising payload a device's properties stand for, as (AD type, data) pairs."""
    out: list[tuple[int, bytes]] = []
    if "AdvertisingFlags" in props:
        out.append((0x01, bytes(props["AdvertisingFlags"].value)))
    if "Name" in props:
        out.append((0x09, props["Name"].value.encode()))
    if "TxPower" in props:
        out.append((0x0A, (props["TxPower"].value & 0xFF).to_bytes(1, "little")))
    for company, value in props.get("ManufacturerData", Variant("a{qv}", {})).value.items():
        out.append((0xFF, company.to_bytes(2, "little") + bytes(value.value)))
    for uuid, value in props.get("ServiceData", Variant("a{sv}", {})).value.items():
        if uuid.endswith(BASE_UUID_SUFFIX) and uuid.startswith("0000"):
            out.append((0x16, bytes.fromhex(uuid[4:8])[::-1] + bytes(value.value)))
        else:
            out.append((0x21, bytes.fromhex(uuid.replace("-", ""))[::-1] + bytes(value.value)))
    return out


def _matches(patterns: list[tuple[int, int, bytes]], ads: list[tuple[int, bytes]]) -> bool:
    return any(
        ad_type == kind and data[start:start + len(content)] == content
        for start, kind, content in patterns
        for ad_type, data in ads
    )


class FakeBluez:
    """The fake BlueZ service; every public method is thread-safe and blocks until its traffic is sent."""

    def __init__(self, bus_address: str, daemon: BusDaemon | None = None) -> None:
        self.bus_address = bus_address
        self.daemon = daemon  # the bus itself, for tests that restart the whole system bus
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-bluez", daemon=True)
        self._bus: MessageBus | None = None
        self._adapters: dict[str, _Adapter] = {}
        self._devices: dict[str, dict[str, Variant]] = {}  # path -> Device1 properties
        self._tasks: set[asyncio.Task[None]] = set()

    # lifecycle -----------------------------------------------------------

    def start(self, adapters: tuple[str, ...] = ("hci0",)) -> None:
        """Serve ``org.bluez`` with these adapters, powered."""
        self._thread.start()
        for index, name in enumerate(adapters):
            self._adapters[name] = _Adapter(name, f"00:1A:7D:DA:71:{index + 0x10:02X}")
        self._call(self._appear())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._vanish())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def vanish(self) -> None:
        """bluetoothd dies: the ``org.bluez`` name leaves the bus with no other signal."""
        self._call(self._vanish())

    def appear(self) -> None:
        """A fresh bluetoothd: adapters registered again, no discovery, no devices."""
        self._call(self._appear())

    @property
    def running(self) -> bool:
        return self._bus is not None and self._bus.connected

    # adapters ------------------------------------------------------------

    def add_adapter(self, name: str, powered: bool = True) -> None:
        """Plug an adapter in (``InterfacesAdded``)."""
        def add() -> None:
            adapter = _Adapter(name, f"00:1A:7D:DA:72:{len(self._adapters) + 0x10:02X}", powered)
            self._adapters[name] = adapter
            self._announce_adapter(adapter)
        self._run(add)

    def remove_adapter(self, name: str) -> None:
        """Unplug an adapter: its devices, then itself, leave (``InterfacesRemoved``)."""
        def remove() -> None:
            adapter = self._adapters.pop(name)
            for path in [p for p in self._devices if p.startswith(adapter.path + "/")]:
                self._remove_device(path)
            self._signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas",
                         [adapter.path, [ADAPTER, MONITOR_MANAGER]])
        self._run(remove)

    def set_powered(self, name: str, powered: bool) -> None:
        def power() -> None:
            adapter = self._adapters[name]
            adapter.powered = powered
            changed = {"Powered": Variant("b", powered)}
            if not powered and (adapter.sessions or adapter.monitors):
                adapter.sessions.clear()
                adapter.monitors.clear()
                changed["Discovering"] = Variant("b", False)
            self._signal(adapter.path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [ADAPTER, changed, []])
        self._run(power)

    def discovering(self, name: str = "hci0") -> bool:
        return self._run(lambda: bool(self._adapters[name].sessions))

    def discovery_filter(self, name: str = "hci0") -> dict[str, Any]:
        """The filter the (last) discovering client set, unpacked."""
        def read() -> dict[str, Any]:
            filters = self._adapters[name].filters
            return next(iter(filters.values()), {}) if filters else {}
        return self._run(read)

    def monitor_patterns(self, name: str = "hci0") -> list[list[tuple[int, int, bytes]]]:
        """The or-patterns of every active monitor on the adapter (read back from the clients)."""
        return self._run(lambda: [m.patterns for m in self._adapters[name].monitors if m.patterns is not None])

    # devices -------------------------------------------------------------

    def advertise(
        self,
        address: str,
        rssi: int,
        *,
        adapter: str = "hci0",
        manufacturer_data: dict[int, bytes] | None = None,
        service_data: dict[str, bytes] | None = None,
        uuids: list[str] | None = None,
        tx_power: int | None = None,
        name: str | None = None,
        flags: int | None = None,
    ) -> bool:
        """One advertisement on the air; True when the adapter heard it (scanning, and matching in passive mode)."""
        def heard() -> bool:
            if not self.running or adapter not in self._adapters:
                return False
            owner = self._adapters[adapter]
            props: dict[str, Variant] = {"RSSI": Variant("n", rssi)}
            if manufacturer_data:
                props["ManufacturerData"] = Variant(
                    "a{qv}", {k: Variant("ay", v) for k, v in manufacturer_data.items()})
            if service_data:
                props["ServiceData"] = Variant(
                    "a{sv}", {_full_uuid(k): Variant("ay", v) for k, v in service_data.items()})
            if uuids:
                props["UUIDs"] = Variant("as", [_full_uuid(u) for u in uuids])
            if tx_power is not None:
                props["TxPower"] = Variant("n", tx_power)
            if name is not None:
                props["Name"] = Variant("s", name)
            if flags is not None:
                props["AdvertisingFlags"] = Variant("ay", bytes([flags]))
            if not owner.powered or not self._hears(owner, props):
                return False
            self._deliver(owner, address, props)
            return True
        return self._run(heard)

    def forget(self, address: str, adapter: str = "hci0") -> None:
        """BlueZ drops a stale device (``InterfacesRemoved``)."""
        self._run(lambda: self._remove_device(_device_path(self._adapters[adapter], address)))

    # plumbing ------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def _run(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()
        return self._call(wrapper())

    def _signal(self, path: str, interface: str, member: str, signature: str, body: list[Any]) -> None:
        if self._bus is not None and self._bus.connected:
            sent = self._bus.send(Message.new_signal(path, interface, member, signature, body))
            # A signal racing the bus going down fails to send; that is the point of some tests.
            sent.add_done_callback(lambda future: future.cancelled() or future.exception())

    async def _vanish(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        for task in list(self._tasks):
            task.cancel()

    async def _appear(self) -> None:
        await self._vanish()
        self._devices.clear()
        for adapter in self._adapters.values():
            adapter.sessions.clear()
            adapter.filters.clear()
            adapter.monitors.clear()
        bus = await MessageBus(bus_address=self.bus_address).connect()
        bus.add_message_handler(self._on_message)
        await bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
            member="AddMatch", signature="s",
            body=["type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"]))
        await bus.request_name(BLUEZ)
        self._bus = bus
        for adapter in self._adapters.values():
            self._announce_adapter(adapter)

    def _adapter_props(self, adapter: _Adapter) -> dict[str, dict[str, Variant]]:
        return {
            ADAPTER: {
                "Address": Variant("s", adapter.address),
                "AddressType": Variant("s", "public"),
                "Name": Variant("s", "santi-test"),
                "Alias": Variant("s", "santi-test"),
                "Powered": Variant("b", adapter.powered),
                "Discovering": Variant("b", bool(adapter.sessions)),
                "Roles": Variant("as", ["central", "peripheral"]),
                "UUIDs": Variant("as", []),
            },
            MONITOR_MANAGER: {
                "SupportedMonitorTypes": Variant("as", ["or_patterns"]),
                "SupportedFeatures": Variant("as", []),
            },
        }

    def _announce_adapter(self, adapter: _Adapter) -> None:
        self._signal("/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}",
                     [adapter.path, self._adapter_props(adapter)])

    def _objects(self) -> dict[str, dict[str, dict[str, Variant]]]:
        objects: dict[str, dict[str, dict[str, Variant]]] = {
            adapter.path: self._adapter_props(adapter) for adapter in self._adapters.values()
        }
        for path, props in self._devices.items():
            objects[path] = {DEVICE: dict(props)}
        return objects

    def _hears(self, adapter: _Adapter, props: dict[str, Variant]) -> bool:
        if adapter.sessions:
            return True
        ads = _ad_structures(props)
        return any(m.patterns is not None and _matches(m.patterns, ads) for m in adapter.monitors)

    def _deliver(self, adapter: _Adapter, address: str, new: dict[str, Variant]) -> None:
        path = _device_path(adapter, address)
        props = self._devices.get(path)
        if props is None:
            props = {
                "Address": Variant("s", address.upper()),
                "AddressType": Variant("s", "random"),
                "Alias": Variant("s", address.upper().replace(":", "-")),
                "Adapter": Variant("o", adapter.path),
                "Paired": Variant("b", False),
                "Bonded": Variant("b", False),
                "Trusted": Variant("b", False),
                "Blocked": Variant("b", False),
                "LegacyPairing": Variant("b", False),
                "Connected": Variant("b", False),
                "ServicesResolved": Variant("b", False),
                **new,
            }
            if "Name" in new:
                props["Alias"] = new["Name"]
            self._devices[path] = props
            self._signal("/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}", [path, {DEVICE: props}])
            return
        changed: dict[str, Variant] = {}
        for key, value in new.items():
            if key in ("ManufacturerData", "ServiceData") and key in props:
                # BlueZ keeps entries this advertisement did not carry.
                merged = Variant(value.signature, {**props[key].value, **value.value})
                if merged.value != props[key].value:
                    changed[key] = merged
            elif key == "RSSI" or key not in props or props[key].value != value.value:
                changed[key] = value
        props.update(changed)
        self._signal(path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [DEVICE, changed, []])

    def _remove_device(self, path: str) -> None:
        if self._devices.pop(path, None) is not None:
            self._signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, [DEVICE]])

    def _client_gone(self, name: str) -> None:
        for adapter in self._adapters.values():
            adapter.filters.pop(name, None)
            adapter.monitors = [m for m in adapter.monitors if m.sender != name]
            if name in adapter.sessions:
                adapter.sessions.discard(name)
                if not adapter.sessions:
                    self._signal(adapter.path, PROPERTIES, "PropertiesChanged", "sa{sv}as",
                                 [ADAPTER, {"Discovering": Variant("b", False)}, []])

    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type is MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.body[2] == "":
                self._client_gone(msg.body[0])
            return None
        if msg.message_type is not MessageType.METHOD_CALL or msg.path is None:
            return None
        if msg.interface == OBJECT_MANAGER and msg.member == "GetManagedObjects":
            return Message.new_method_return(msg, "a{oa{sa{sv}}}", [self._objects()])
        objects = self._objects()
        if msg.interface == PROPERTIES:
            return self._properties(msg, objects)
        adapter = next((a for a in self._adapters.values() if a.path == msg.path), None)
        if adapter is None:
            if msg.path in objects or msg.path in ("/", "/org", "/org/bluez"):
                return None
            return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownObject", f"no object {msg.path}")
        return self._adapter_call(adapter, msg)

    def _properties(self, msg: Message, objects: dict[str, dict[str, dict[str, Variant]]]) -> Message:
        interfaces = objects.get(msg.path or "")
        if interfaces is None:
            return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownObject", f"no object {msg.path}")
        props = interfaces.get(msg.body[0]) if msg.body else None
        if props is None:
            return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs", "no such interface")
        if msg.member == "GetAll":
            return Message.new_method_return(msg, "a{sv}", [props])
        if msg.member == "Get" and msg.body[1] in props:
            return Message.new_method_return(msg, "v", [props[msg.body[1]]])
        return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs", "no such property")

    def _adapter_call(self, adapter: _Adapter, msg: Message) -> Message | None:
        sender = msg.sender or ""
        member = (msg.interface, msg.member)
        if member == (ADAPTER, "SetDiscoveryFilter"):
            adapter.filters[sender] = {k: v.value for k, v in msg.body[0].items()}
            return Message.new_method_return(msg)
        if member == (ADAPTER, "StartDiscovery"):
            if not adapter.powered:
                return Message.new_error(msg, "org.bluez.Error.NotReady", "Resource Not Ready")
            if sender in adapter.sessions:
                return Message.new_error(msg, "org.bluez.Error.InProgress", "Operation already in progress")
            adapter.sessions.add(sender)
            if len(adapter.sessions) == 1:
                self._signal(adapter.path, PROPERTIES, "PropertiesChanged", "sa{sv}as",
                             [ADAPTER, {"Discovering": Variant("b", True)}, []])
            return Message.new_method_return(msg)
        if member == (ADAPTER, "StopDiscovery"):
            if not adapter.powered:
                return Message.new_error(msg, "org.bluez.Error.NotReady", "Resource Not Ready")
            if sender not in adapter.sessions:
                return Message.new_error(msg, "org.bluez.Error.Failed", "No discovery started")
            adapter.sessions.discard(sender)
            if not adapter.sessions:
                self._signal(adapter.path, PROPERTIES, "PropertiesChanged", "sa{sv}as",
                             [ADAPTER, {"Discovering": Variant("b", False)}, []])
            return Message.new_method_return(msg)
        if member == (MONITOR_MANAGER, "RegisterMonitor"):
            if any(m.sender == sender and m.path == msg.body[0] for m in adapter.monitors):
                return Message.new_error(msg, "org.bluez.Error.AlreadyExists", "Already Exists")
            monitor = _Monitor(sender, msg.body[0])
            adapter.monitors.append(monitor)
            task = self._loop.create_task(self._activate(monitor))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return Message.new_method_return(msg)
        if member == (MONITOR_MANAGER, "UnregisterMonitor"):
            before = len(adapter.monitors)
            adapter.monitors = [m for m in adapter.monitors if not (m.sender == sender and m.path == msg.body[0])]
            if len(adapter.monitors) == before:
                return Message.new_error(msg, "org.bluez.Error.DoesNotExist", "Does Not Exist")
            return Message.new_method_return(msg)
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod",
                                 f"unknown method {msg.interface}.{msg.member}")

    async def _activate(self, monitor: _Monitor) -> None:
        """Read the monitor's patterns back from its client, then ``Activate`` it, as bluetoothd does.

        The client exports the monitor only after ``RegisterMonitor`` returns, so the first reads may
        find nothing yet.
        """
        deadline = time.monotonic() + 5.0
        while self._bus is not None and time.monotonic() < deadline:
            reply = await self._bus.call(Message(
                destination=monitor.sender, path=monitor.path, interface=PROPERTIES, member="Get",
                signature="ss", body=[MONITOR, "Patterns"]))
            if reply is not None and reply.message_type is MessageType.METHOD_RETURN:
                monitor.patterns = [(int(s), int(t), bytes(c)) for s, t, c in reply.body[0].value]
                await self._bus.call(Message(destination=monitor.sender, path=monitor.path,
                                             interface=MONITOR, member="Activate"))
                return
            await asyncio.sleep(0.02)


def _full_uuid(uuid: str) -> str:
    value = uuid.lower()
    return value.rjust(8, "0") + BASE_UUID_SUFFIX if len(value) in (4, 8) else value


@contextlib.contextmanager
def serve_fake_bluez(adapters: tuple[str, ...] = ("hci0",)) -> Iterator[FakeBluez]:
    """A private bus with the fake BlueZ on it; the caller points ``DBUS_SYSTEM_BUS_ADDRESS`` at it."""
    daemon = BusDaemon()
    daemon.start()
    fake = FakeBluez(daemon.address, daemon)
    try:
        fake.start(adapters)
        yield fake
    finally:
        fake.close()
        daemon.close()


async def release_bleak() -> None:
    """Close bleak's per-loop BlueZ connection before the loop ends, so no socket outlives its test."""
    from bleak.backends.bluezdbus import manager  # noqa: PLC0415

    instance = manager._global_instances.pop(asyncio.get_running_loop(), None)
    bus = instance._bus if instance is not None else None
    if bus is not None:
        bus.disconnect()
        with contextlib.suppress(Exception):
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
    task = instance._bus_watcher_task if instance is not None else None
    if task is not None:
        with contextlib.suppress(Exception):
            await task
