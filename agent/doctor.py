"""``santi doctor``'s checks: is this box ready to run the agent for its site?

Each check looks at one thing a technician can fix on site (the Bluetooth
adapter, an NFC reader, the monitor interface, the broker, the clock, the
disk, permissions, the config) and returns a `Check`: a status, what it saw,
and — whenever the status is not ``ok`` — the fix, worded as the command or
edit to make. Checks never raise for a broken box (that is what they report);
every wait has a short timeout so a dead broker or a hung adapter cannot
stall the command. Where a check reads the system (sysfs, /proc, D-Bus), the
place it reads is an argument, so tests can point it elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import nfc
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusFastError
from nfc.clf.device import usb_device_map

from agent.checks import Check, Status, fail, ok, warn
from agent.config import ConfigError, NfcReaderConfig, SiteConfig, load_site
from agent.doctor_acl import check_broker_acl
from agent.doctor_broker import check_broker, check_node_broker, check_tls
from agent.text import plural

ARPHRD_IEEE80211_RADIOTAP = 803
"""Link type of an interface in monitor mode that delivers radiotap headers."""
IFF_UP = 0x1
CAP_NET_RAW = 13
SQLITE_HEADROOM = 1.2
"""Free space wanted per buffered byte: the WAL and a checkpoint need room beside the outbox."""
EARLIEST_SANE_UNIX = 1_704_067_200.0
"""2024-01-01: a clock before this is a Pi without an RTC that never reached NTP."""


# -- config ------------------------------------------------------------------------------------


def check_config(path: Path) -> tuple[Check, SiteConfig | None]:
    try:
        site = load_site(path)
    except ConfigError as exc:
        return fail("config", str(exc), f"edit {path} at the line named, then `santi config check --config {path}`"), None
    detail = (f"{path}: store {site.store.id}, agent {site.agent.id} ({site.agent.role}), "
              f"{plural(len(site.receivers), 'receiver')}, {plural(len(site.sectors), 'sector')}")
    return ok("config", detail), site


# -- Bluetooth (BlueZ over the system D-Bus) ------------------------------------------------------


async def _bluez_powered(adapter: str, bus_address: str | None, timeout: float) -> tuple[str, Any]:
    """('ok', powered) or (D-Bus error name, message) for org.bluez.Adapter1.Powered."""
    bus = MessageBus(bus_address=bus_address) if bus_address else MessageBus(bus_type=BusType.SYSTEM)
    await asyncio.wait_for(bus.connect(), timeout)
    try:
        reply = await asyncio.wait_for(bus.call(Message(
            destination="org.bluez", path=f"/org/bluez/{adapter}",
            interface="org.freedesktop.DBus.Properties", member="Get",
            signature="ss", body=["org.bluez.Adapter1", "Powered"],
        )), timeout)
    finally:
        bus.disconnect()
    if reply is None:
        return "no reply", None
    if reply.message_type == MessageType.ERROR:
        text = reply.body[0] if reply.body else ""
        return str(reply.error_name), text
    return "ok", reply.body[0].value


def check_bluetooth(site: SiteConfig, *, bus_address: str | None = None, sys_root: Path = Path("/sys"),
                    timeout: float = 2.0) -> Check:
    """The local adapter as bleak will use it: BlueZ on the system bus, adapter present and powered."""
    name = "bluetooth"
    local = [rx.id for rx in site.receivers if rx.kind == "ble"]
    if not local:
        return ok(name, "no local BLE receiver configured (kind = \"ble\"); nothing to check")
    adapter = site.ble.adapter
    in_sysfs = (sys_root / "class" / "bluetooth" / adapter).exists()
    hardware_fix = (f"plug in a Bluetooth adapter or enable the built-in one (`rfkill unblock bluetooth`); "
                    f"`btmgmt info` must list {adapter}")
    try:
        outcome, value = asyncio.run(_bluez_powered(adapter, bus_address, timeout))
    except (OSError, TimeoutError, EOFError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (
            getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
        seen = f"kernel has {adapter}" if in_sysfs else f"no {adapter} in {sys_root}/class/bluetooth either"
        return fail(name, f"system D-Bus unreachable ({reason}); {seen}",
                    "start D-Bus and BlueZ: `systemctl enable --now dbus bluetooth`"
                    + ("" if in_sysfs else f"; then {hardware_fix}"))
    except DBusFastError as exc:
        return fail(name, f"system D-Bus refused us: {type(exc).__name__}: {exc}",
                    "run as a user allowed by the system bus policy (`santi` in group bluetooth)")
    if outcome == "ok":
        if value:
            return ok(name, f"BlueZ adapter {adapter} present and powered (used by {', '.join(local)})")
        return fail(name, f"BlueZ adapter {adapter} is powered off",
                    "`bluetoothctl power on` (and `rfkill unblock bluetooth` if it is soft-blocked)")
    if outcome.endswith(("ServiceUnknown", "NameHasNoOwner")):
        return fail(name, "BlueZ (org.bluez) is not running on the system bus",
                    "`systemctl enable --now bluetooth` (apt install bluez if it is missing)")
    if outcome.endswith(("UnknownObject", "UnknownInterface", "InvalidArgs", "UnknownMethod")):
        return fail(name, f"BlueZ has no adapter {adapter}"
                    + ("" if in_sysfs else f" and the kernel sees none ({sys_root}/class/bluetooth)"),
                    hardware_fix + "; or set [ble] adapter to one `bluetoothctl list` shows")
    if outcome.endswith("AccessDenied"):
        return fail(name, f"BlueZ denied access to {adapter}: {value}",
                    "add the agent's user to group bluetooth (the systemd unit does: SupplementaryGroups=bluetooth)")
    return fail(name, f"BlueZ answered {outcome}: {value}", "`journalctl -u bluetooth` for the cause")


# -- NFC (nfcpy) -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsbDevice:
    bus: int
    dev: int
    vendor: int
    product: int
    sysfs: Path


def usb_devices(sys_root: Path = Path("/sys")) -> list[UsbDevice]:
    """USB devices the kernel lists, with their vendor and product ids."""
    found: list[UsbDevice] = []
    base = sys_root / "bus" / "usb" / "devices"
    if not base.is_dir():
        return found
    for entry in sorted(base.iterdir()):
        try:
            ids = [(entry / key).read_text().strip() for key in ("busnum", "devnum", "idVendor", "idProduct")]
            found.append(UsbDevice(int(ids[0]), int(ids[1]), int(ids[2], 16), int(ids[3], 16), entry))
        except (OSError, ValueError):
            continue
    return found


def _supported_usb() -> dict[tuple[int, int], str]:
    return dict(usb_device_map)


def _usb_matches(device: str, usb: UsbDevice) -> bool:
    """nfcpy's usb path forms: usb, usb:VVVV[:PPPP] (hex ids), usb:BBB:DDD (decimal bus and device)."""
    parts = device.split(":")[1:]
    if not parts:
        return True
    if re.fullmatch(r"\d{3}", parts[0]):
        return usb.bus == int(parts[0]) and (len(parts) < 2 or usb.dev == int(parts[1]))
    return usb.vendor == int(parts[0], 16) and (len(parts) < 2 or not parts[1] or usb.product == int(parts[1], 16))


def _open_with_timeout(device: str, timeout: float) -> tuple[bool | None, str]:
    """Try nfcpy's open in a worker thread: (opened, description); None on timeout."""
    result: list[tuple[bool, str]] = []

    def attempt() -> None:
        clf = nfc.ContactlessFrontend()
        try:
            opened = bool(clf.open(device))
            result.append((opened, str(clf) if opened else "nfcpy found no reader there"))
        except (OSError, ValueError, ImportError) as exc:
            result.append((False, f"{type(exc).__name__}: {exc}"))
        finally:
            clf.close()

    worker = threading.Thread(target=attempt, name="doctor-nfc-open", daemon=True)
    worker.start()
    worker.join(timeout)
    if not result:
        return None, f"opening {device} did not finish within {timeout:g} s"
    return result[0]


def check_nfc(reader: NfcReaderConfig, *, sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev"),
              timeout: float = 3.0) -> Check:
    name = f"nfc {reader.id}"
    device = reader.device
    if device.startswith("udp"):
        opened, detail = _open_with_timeout(device, timeout)
        if opened:
            return warn(name, f"{device} is nfcpy's UDP simulator ({detail}), not a reader",
                        "fine for tests and demos; in a store set device = \"usb\" (or usb:BUS:DEV)")
        return fail(name, f"cannot open {device}: {detail}", "use a free local port: device = \"udp:127.0.0.1:PORT\"")
    if device.startswith("tty"):
        path = dev_root / f"tty{device.split(':')[1]}" if not device.split(":")[1].startswith("/") \
            else Path(device.split(":")[1])
        if not path.exists():
            return fail(name, f"serial port {path} does not exist",
                        "plug the reader in and check `ls /dev/ttyUSB* /dev/ttyACM* /dev/ttyAMA*`")
        if not os.access(path, os.R_OK | os.W_OK):
            return fail(name, f"no read/write access to {path}", "add the agent's user to group dialout")
        opened, detail = _open_with_timeout(device, timeout)
        if opened:
            return ok(name, detail)
        return fail(name, f"no nfcpy-supported reader answered on {path}: {detail}",
                    "check the reader's serial wiring and that it is a PN532/PN533 module nfcpy supports")
    supported = _supported_usb()
    models = ", ".join(sorted({f"{v:04x}:{p:04x} ({chip})" for (v, p), chip in supported.items()}))
    if not (sys_root / "bus" / "usb").is_dir():
        return fail(name, f"no USB bus visible ({sys_root}/bus/usb missing), so no USB reader",
                    "run doctor on the store box itself (not a container), with the reader plugged in")
    matches = [usb for usb in usb_devices(sys_root)
               if (usb.vendor, usb.product) in supported and _usb_matches(device, usb)]
    if not matches:
        return fail(name, f"no nfcpy-supported reader matches {device!r} on USB",
                    f"plug the reader in and check `lsusb`; nfcpy supports {models}")
    usb = matches[0]
    node = dev_root / "bus" / "usb" / f"{usb.bus:03d}" / f"{usb.dev:03d}"
    ident = f"{usb.vendor:04x}:{usb.product:04x} ({supported[(usb.vendor, usb.product)]}) at usb:{usb.bus:03d}:{usb.dev:03d}"
    if not os.access(node, os.R_OK | os.W_OK):
        return fail(name, f"{ident}: no read/write access to {node}",
                    f'add a udev rule: SUBSYSTEM=="usb", ATTRS{{idVendor}}=="{usb.vendor:04x}", '
                    f'ATTRS{{idProduct}}=="{usb.product:04x}", GROUP="plugdev", and the agent user to plugdev')
    for interface in usb.sysfs.parent.glob(f"{usb.sysfs.name}:*"):
        driver = interface / "driver"
        if driver.exists() and driver.resolve().name.startswith(("pn533", "port100")):
            return fail(name, f"{ident}: the kernel driver {driver.resolve().name} has claimed it",
                        f"`echo blacklist {driver.resolve().name} | sudo tee /etc/modprobe.d/santi-nfc.conf` and replug")
    if ctypes.util.find_library("usb-1.0") is None:
        return fail(name, f"{ident} found, but libusb-1.0 is not installed", "apt install libusb-1.0-0")
    opened, detail = _open_with_timeout(f"usb:{usb.bus:03d}:{usb.dev:03d}", timeout)
    if opened:
        return ok(name, detail)
    return fail(name, f"{ident} found but nfcpy could not open it: {detail}",
                "replug the reader; if another process holds it, stop that process")


# -- Wi-Fi monitor interface ------------------------------------------------------------------------


def monitor_interfaces(sys_root: Path = Path("/sys")) -> list[str]:
    base = sys_root / "class" / "net"
    if not base.is_dir():
        return []
    return sorted(entry.name for entry in base.iterdir()
                  if _read(entry / "type") == str(ARPHRD_IEEE80211_RADIOTAP))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def check_wifi(site: SiteConfig, *, sys_root: Path = Path("/sys")) -> Check:
    name = "wifi monitor"
    local = [rx.id for rx in site.receivers if rx.kind == "wifi"]
    interface = site.wifi.interface
    if not local and interface is None:
        return ok(name, "no Wi-Fi receiver configured; nothing to check")
    candidates = monitor_interfaces(sys_root)
    make = ("`iw dev wlan1 interface add wlan1mon type monitor && ip link set wlan1mon up` "
            "(wlan1: a second adapter that supports monitor mode)")
    if interface is None:
        hint = f"set [wifi] interface = \"{candidates[0]}\"" if candidates else f"create one with {make}, then set [wifi] interface"
        return fail(name, f"receiver {', '.join(local)} is kind wifi but [wifi] interface is not set", hint)
    link_type = _read(sys_root / "class" / "net" / interface / "type")
    if link_type is None:
        others = f" (monitor interfaces present: {', '.join(candidates)})" if candidates else ""
        return fail(name, f"no network interface {interface}{others}", f"create it: {make}")
    if link_type != str(ARPHRD_IEEE80211_RADIOTAP):
        return fail(name, f"{interface} is not in monitor mode (link type {link_type}, want {ARPHRD_IEEE80211_RADIOTAP})",
                    f"`ip link set {interface} down && iw dev {interface} set type monitor && ip link set {interface} up`")
    flags = _read(sys_root / "class" / "net" / interface / "flags")
    if flags is None or not int(flags, 16) & IFF_UP:
        return fail(name, f"{interface} is in monitor mode but down", f"`ip link set {interface} up`")
    return ok(name, f"{interface} is up in monitor mode (radiotap)")


def effective_capabilities(status_text: str) -> int | None:
    match = re.search(r"^CapEff:\s*([0-9a-fA-F]+)\s*$", status_text, re.MULTILINE)
    return int(match.group(1), 16) if match else None


def check_raw_capability(site: SiteConfig, *, proc_status: Path = Path("/proc/self/status")) -> Check:
    name = "raw sockets"
    if site.wifi.interface is None and not any(rx.kind == "wifi" for rx in site.receivers):
        return ok(name, "not needed (no Wi-Fi capture configured)")
    caps = effective_capabilities(_read(proc_status) or "")
    if caps is not None and caps >> CAP_NET_RAW & 1:
        return ok(name, "CAP_NET_RAW held: monitor-mode capture can open its socket")
    return fail(name, "this process lacks CAP_NET_RAW, which Wi-Fi capture needs",
                "run the agent from its systemd unit (AmbientCapabilities=CAP_NET_RAW) or as root for this check")


# -- clock ----------------------------------------------------------------------------------------


def parse_timedatectl(text: str) -> bool | None:
    """`timedatectl show -p NTPSynchronized` -> True/False, None if the text is not that."""
    match = re.search(r"^NTPSynchronized=(yes|no)\s*$", text, re.MULTILINE)
    return None if match is None else match.group(1) == "yes"


def parse_chronyc_tracking(text: str) -> tuple[bool, float | None] | None:
    """`chronyc tracking` -> (synchronised, offset seconds), None if the text is not that."""
    leap = re.search(r"^Leap status\s*:\s*(.+?)\s*$", text, re.MULTILINE)
    if leap is None:
        return None
    offset = re.search(r"^System time\s*:\s*([0-9.]+) seconds (fast|slow)", text, re.MULTILINE)
    seconds = float(offset.group(1)) * (1 if offset.group(2) == "fast" else -1) if offset else None
    return leap.group(1) != "Not synchronised", seconds


def _run(command: list[str], timeout: float) -> tuple[int, str] | None:
    """Exit code and output of a command, or None if it is not installed or hangs."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.returncode, (done.stdout + done.stderr).strip()


def check_clock(*, now: float, run: Callable[[list[str], float], tuple[int, str] | None] = _run,
                timeout: float = 2.0) -> Check:
    name = "clock"
    fix = "enable time sync: `timedatectl set-ntp true` (systemd-timesyncd) or install chrony"
    if now < EARLIEST_SANE_UNIX:
        return fail(name, f"the clock reads {time.strftime('%Y-%m-%d', time.gmtime(now))}: never synchronised",
                    fix + "; events stamped now would carry that date")
    tried: list[str] = []
    result = run(["timedatectl", "show", "-p", "NTPSynchronized"], timeout)
    if result is not None:
        synced = parse_timedatectl(result[1]) if result[0] == 0 else None
        if synced is True:
            return ok(name, "synchronised (timedatectl: NTPSynchronized=yes)")
        if synced is False:
            return fail(name, "not synchronised (timedatectl: NTPSynchronized=no)", fix)
        tried.append(f"timedatectl: {result[1].splitlines()[0] if result[1] else f'exit {result[0]}'}")
    result = run(["chronyc", "tracking"], timeout)
    if result is not None:
        parsed = parse_chronyc_tracking(result[1]) if result[0] == 0 else None
        if parsed is not None:
            synced, offset = parsed
            off = f", offset {offset * 1000:+.1f} ms" if offset is not None else ""
            if synced:
                return ok(name, f"synchronised (chrony{off})")
            return fail(name, f"not synchronised (chrony: leap status not synchronised{off})",
                        "check `chronyc sources`: the NTP servers must be reachable")
        tried.append(f"chronyc: exit {result[0]}")
    result = run(["ntpstat"], timeout)
    if result is not None and result[0] in (0, 1):
        if result[0] == 0:
            return ok(name, "synchronised (ntpstat)")
        return fail(name, "not synchronised (ntpstat)", fix)
    return warn(name, "cannot tell whether the clock is synchronised"
                + (f" ({'; '.join(tried)})" if tried else " (no timedatectl, chronyc or ntpstat)"), fix)


# -- disk and state directory ----------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _tree_bytes(path: Path) -> int:
    if not path.is_dir():
        return 0
    total = 0
    for entry in path.rglob("*"):
        with contextlib.suppress(OSError):
            if entry.is_file():
                total += entry.stat().st_size
    return total


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_disk(state_dir: Path, max_bytes: int, reserve_bytes: int = 0) -> Check:
    """Room for a full outbox: what is free plus what Santi already holds, against buffer.max_bytes.

    The outbox keeps ``reserve_bytes`` free and evicts to do so, so the room
    it can use is what is free less the reserve.
    """
    name = "disk"
    anchor = _existing_ancestor(state_dir)
    usage = shutil.disk_usage(anchor)
    held = _tree_bytes(state_dir)
    room = usage.free + held - reserve_bytes
    detail = f"{_size(usage.free)} free at {anchor}, buffer up to {_size(max_bytes)}"
    if reserve_bytes:
        detail += f", {_size(reserve_bytes)} kept free"
    if room < max_bytes:
        return fail(name, detail, f"free space there or lower [buffer] max_bytes to {int(room / SQLITE_HEADROOM)}")
    if room < max_bytes * SQLITE_HEADROOM:
        return warn(name, detail + " (no headroom for the SQLite WAL)",
                    f"lower [buffer] max_bytes to {int(room / SQLITE_HEADROOM)} or free space")
    return ok(name, detail)


@contextlib.contextmanager
def _probe_file(directory: Path) -> Iterator[None]:
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".santi-doctor-"):
        yield


def check_state_dir(state_dir: Path) -> Check:
    name = "state dir"
    create = f"`sudo install -d -o santi -g santi -m 0700 {state_dir}` (the systemd unit's StateDirectory does it)"
    if state_dir.exists() and not state_dir.is_dir():
        return fail(name, f"{state_dir} exists but is not a directory", f"move it away, then {create}")
    if not state_dir.exists():
        parent = _existing_ancestor(state_dir)
        if os.access(parent, os.W_OK | os.X_OK):
            return warn(name, f"{state_dir} does not exist yet; the agent will create it under {parent}", create)
        return fail(name, f"{state_dir} does not exist and {parent} is not writable", create)
    try:
        with _probe_file(state_dir):
            pass
    except OSError as exc:
        return fail(name, f"cannot write in {state_dir}: {exc.strerror}",
                    f"`sudo chown -R santi:santi {state_dir}` (the agent's user must own it)")
    return ok(name, f"{state_dir} is writable")


def check_permissions(site: SiteConfig, state_dir: Path) -> Check:
    """Secrets and state readable by their owner only: the password file, the state folder and its files.

    Under systemd ``UMask=0077`` makes the agent's files private; a state folder
    first used from a shell, or a password file copied with ``cp``, is not.
    """
    name = "permissions"
    for broker in (site.uplink, site.nodes):
        problem = None if broker is None else broker.password_file_problem()
        if broker is not None and problem is not None:
            return fail(name, problem, f"`chmod 600 {broker.password_file}`")
    loose: list[str] = []
    if state_dir.is_dir():
        entries = [state_dir, *(entry for entry in state_dir.iterdir() if entry.is_file())]
        for entry in entries:
            with contextlib.suppress(OSError):
                mode = entry.stat().st_mode & 0o777
                if mode & 0o077:
                    loose.append(f"{entry.name or entry} {mode:04o}")
    if loose:
        return warn(name, f"readable by other users in {state_dir}: {', '.join(loose)}",
                    f"`chmod 700 {state_dir} && chmod 600 {state_dir}/*`")
    return ok(name, "password file and state are private to their owner")

def check_ack_mode(site: SiteConfig) -> Check:
    """Say loudly when the agent deletes events at the broker's PUBACK instead of HQ's acknowledgement."""
    name = "ack mode"
    if site.uplink.ack == "hq":
        return ok(name, f"events leave the outbox when HQ acknowledges them (re-sent after "
                        f"{site.uplink.ack_timeout_s:g} s without)")
    return warn(name, 'ack = "broker": events leave the outbox at the broker\'s PUBACK, not when HQ has stored them; '
                      "a broker restart or an absent HQ can lose them",
                'set [uplink] ack = "hq" (the default) once HQ acknowledges (`santi hq run` does)')


# -- all of it ------------------------------------------------------------------------------------


def run_checks(config: Path, *, state_dir: Path | None = None, now: float, timeout: float = 3.0,
               bus_address: str | None = None, sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev"),
               progress: Callable[[str], None] = lambda _name: None) -> list[Check]:
    """Every check in the order a technician fixes things; the config first since all depend on it."""
    progress("config")
    config_check, site = check_config(config)
    if site is None:
        return [config_check]
    directory = state_dir if state_dir is not None else site.agent.state_dir
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("state dir", lambda: check_state_dir(directory)),
        ("disk", lambda: check_disk(directory, site.buffer.max_bytes, site.buffer.reserve_bytes)),
        ("permissions", lambda: check_permissions(site, directory)),
        ("clock", lambda: check_clock(now=now, timeout=timeout)),
        ("bluetooth", lambda: check_bluetooth(site, bus_address=bus_address, sys_root=sys_root, timeout=timeout)),
        ("wifi", lambda: check_wifi(site, sys_root=sys_root)),
        ("raw sockets", lambda: check_raw_capability(site)),
        *[(f"nfc {reader.id}", partial(check_nfc, reader, sys_root=sys_root, dev_root=dev_root, timeout=timeout))
          for reader in site.nfc_readers],
        ("broker tls", lambda: check_tls(site.uplink, now=now, timeout=timeout)),
        ("broker", lambda: check_broker(site, timeout=timeout)),
        ("broker acl", lambda: check_broker_acl(site, timeout=timeout)),
        ("node broker", lambda: check_node_broker(site, timeout=timeout)),
        ("ack mode", lambda: check_ack_mode(site)),
    ]
    checks = [config_check]
    for label, step in steps:
        progress(label)
        checks.append(step())
    return checks


def worst(checks: list[Check]) -> Status:
    statuses = {check.status for check in checks}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"
