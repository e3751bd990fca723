"""``santi scan``: what the radios hear right now, and whether the site would locate it.

A technician's tool: it shows a beacon's parsed identity (iBeacon UUID,
major, minor; Eddystone namespace and instance) so a tag or the loyalty app
can be recognised on site, and only the last two octets of any other device's
address. Nothing is logged and nothing leaves the process; full addresses
live only in this process's memory, to tie a tag's telemetry frames to its
identity the way the agent does.

The radios are driven by the agent's own sources (``BleSource``,
``WifiMonitorSource``) with their recovery and one-line errors; only what is
done with each advertisement or probe request differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from agent.backoff import INTERACTIVE_RETRY
from agent.cli.config_cmd import DEFAULT_SITE
from agent.cli.errors import CliError
from agent.config import BleConfig, SiteConfig, load_site
from agent.observations import Observation
from agent.privacy import Pseudonymizer
from agent.sources.adverts import (
    Advert,
    AdvertParseError,
    AllowList,
    AltBeacon,
    EddystoneEID,
    EddystoneETLM,
    EddystoneTLM,
    EddystoneUID,
    EddystoneURL,
    IBeacon,
    Manufacturer,
    ServiceData,
    parse_manufacturer,
    parse_service_data,
    power_at_1m,
)
from agent.sources.base import Record, Sink, Source, SourceStats
from agent.sources.ble import BleSource
from agent.sources.wifi import (
    ProbeCounter,
    ProbeRequest,
    WifiMonitorSource,
)
from agent.text import Table, plural

EXIT_RADIO_FAILED = 1
TICK_S = 0.1
REFRESH_S = 0.5
COMPANIES = {0x004C: "Apple", 0x0006: "Microsoft", 0x0075: "Samsung", 0x00E0: "Google", 0x0059: "Nordic",
             0x0118: "Radius Networks", 0x015D: "Estimote", 0x0171: "Amazon"}
"""Bluetooth SIG company identifiers a technician meets every day."""

Clock = Callable[[], float]


def short_address(address: str | bytes) -> str:
    """The last two octets only (``…:11:01``): enough to pick a tag off a list, not to follow a phone."""
    text = address.hex(":") if isinstance(address, bytes) else address
    octets = text.upper().replace("-", ":").split(":")
    return "…:" + ":".join(octets[-2:])


def describe_frame(advert: Advert) -> tuple[str, str, str]:
    """(kind, identity, detail) of one parsed frame, as the scan table shows them."""
    if isinstance(advert, IBeacon):
        return "iBeacon", f"{advert.uuid} {advert.major}/{advert.minor}", ""
    if isinstance(advert, AltBeacon):
        return "AltBeacon", f"{advert.id1} {advert.id2}/{advert.id3}", ""
    if isinstance(advert, EddystoneUID):
        return "Eddystone-UID", f"{advert.namespace} {advert.instance}", ""
    if isinstance(advert, EddystoneURL):
        return "Eddystone-URL", advert.url, ""
    if isinstance(advert, EddystoneTLM):
        parts = [f"{advert.battery_mv} mV" if advert.battery_mv is not None else "",
                 f"{advert.temperature_c:.1f} °C" if advert.temperature_c is not None else "",
                 f"up {advert.uptime_s / 3600:.0f} h"]
        return "Eddystone-TLM", "", ", ".join(p for p in parts if p)
    if isinstance(advert, EddystoneETLM):
        return "Eddystone-eTLM", "", "encrypted telemetry"
    if isinstance(advert, EddystoneEID):
        return "Eddystone-EID", advert.eid.hex(), ""
    if isinstance(advert, Manufacturer):
        name = COMPANIES.get(advert.company_id, f"company 0x{advert.company_id:04X}")
        return name, "", ""
    assert isinstance(advert, ServiceData)
    short = advert.uuid[4:8] if advert.uuid.endswith("-0000-1000-8000-00805f9b34fb") else advert.uuid
    return f"service {short}", "", ""


_RANK = (IBeacon, AltBeacon, EddystoneUID, EddystoneURL, EddystoneEID, EddystoneTLM, EddystoneETLM,
         Manufacturer, ServiceData)


def _main_frame(frames: Sequence[Advert]) -> Advert | None:
    """The frame that names the device best: a beacon identity over telemetry over vendor data."""
    return min(frames, key=lambda f: next(i for i, kind in enumerate(_RANK) if isinstance(f, kind)), default=None)


@dataclass
class Heard:
    """One row of the scan: an emitter and what was heard of it."""

    kind: str
    identity: str
    address: str
    allowed: bool
    note: str
    first_seen: float
    last_seen: float = 0.0
    rssi_dbm: float = 0.0
    rssi_max: float = -200.0
    rssi_sum: float = 0.0
    count: int = 0
    power_at_1m_dbm: int | None = None
    detail: str = ""
    telemetry: str = ""
    corrupt: int = 0

    def hear(self, ts: float, rssi: float) -> None:
        self.last_seen = ts
        self.rssi_dbm = rssi
        self.rssi_max = max(self.rssi_max, rssi)
        self.rssi_sum += rssi
        self.count += 1

    def to_dict(self, now: float) -> dict[str, Any]:
        return {"kind": self.kind, "identity": self.identity, "address": self.address, "allowed": self.allowed,
                "note": self.note, "rssi_dbm": self.rssi_dbm, "rssi_max_dbm": self.rssi_max,
                "rssi_mean_dbm": round(self.rssi_sum / self.count, 1) if self.count else None, "count": self.count,
                "last_seen_s": round(max(now - self.last_seen, 0.0), 1), "power_at_1m_dbm": self.power_at_1m_dbm,
                "detail": self.detail, "telemetry": self.telemetry, "corrupt_frames": self.corrupt}


@dataclass
class ScanTable:
    """Everything heard, one row per emitter; pure, fed with timestamps by the radio callbacks."""

    allow: AllowList
    wifi_located: bool
    """The site has a Wi-Fi receiver, so probe requests are located."""
    rows: dict[tuple[str, str], Heard] = field(default_factory=dict)
    _identity_of: dict[str, tuple[str, str]] = field(default_factory=dict)

    def add_ble(self, ts: float, address: str, adv: AdvertisementData) -> None:
        if not -127 < adv.rssi <= 20:
            return
        frames: list[Advert] = []
        corrupt = 0
        sources: list[tuple[Callable[[Any, bytes], Advert], dict[Any, bytes]]] = [
            (parse_manufacturer, adv.manufacturer_data), (parse_service_data, adv.service_data)]
        for parse, items in sources:
            for key, data in items.items():
                try:
                    frames.append(parse(key, data))
                except AdvertParseError:
                    corrupt += 1
        emitter = self.allow.choose(frames, adv.tx_power)
        main = _main_frame(frames)
        kind, identity, detail = describe_frame(main) if main is not None else ("BLE device", "", "")
        named = isinstance(main, IBeacon | AltBeacon | EddystoneUID)
        key = ("ble", f"{kind}:{identity}") if named else self._identity_of.get(address, ("ble", address))
        if named:
            self._identity_of[address] = key
        row = self.rows.get(key)
        if row is None:
            allowed = emitter is not None
            if emitter is not None and emitter.identity is None:
                note = "allowed by address (ble.allow_all)"
            elif allowed:
                note = "allowed"
            else:
                note = _ignored_because(main)
            row = self.rows[key] = Heard(kind=kind, identity=identity, address="" if named else short_address(address),
                                         allowed=allowed, note=note, first_seen=ts)
        if named or row.kind == kind:
            row.detail = detail
        elif main is not None:
            row.telemetry = detail  # a known tag's telemetry frame: the row keeps the tag's identity
        power = next((p for p in map(power_at_1m, frames) if p is not None), None)
        if power is not None:
            row.power_at_1m_dbm = power
        row.corrupt += corrupt
        row.hear(ts, float(adv.rssi))

    def add_probe(self, probe: ProbeRequest) -> None:
        key = ("wifi", probe.mac.hex())
        row = self.rows.get(key)
        if row is None:
            note = "located (Wi-Fi receiver)" if self.wifi_located else "ignored: the site has no Wi-Fi receiver"
            row = self.rows[key] = Heard(kind="Wi-Fi probe", identity="random MAC" if probe.mac_randomised else
                                         "global MAC", address=short_address(probe.mac), allowed=self.wifi_located,
                                         note=note, first_seen=probe.ts)
        row.detail = ", ".join(p for p in (f"ch {probe.channel}" if probe.channel else "",
                                           "directed" if probe.ssid_present else "") if p)
        row.hear(probe.ts, probe.rssi_dbm)

    def sorted_rows(self) -> list[Heard]:
        """Strongest first: the nearest device is the one the technician is holding."""
        return sorted(self.rows.values(), key=lambda r: (-r.rssi_dbm, r.kind, r.identity, r.address))


def _ignored_because(frame: Advert | None) -> str:
    if isinstance(frame, IBeacon | AltBeacon):
        return "ignored: UUID not in ble.ibeacon_uuids"
    if isinstance(frame, EddystoneUID):
        return "ignored: namespace not in ble.eddystone_namespaces"
    return "ignored: no beacon identity"


class _ScanBle(BleSource):
    """The agent's BLE source, with every advertisement going to the scan table instead of the locator."""

    def __init__(self, config: BleConfig, table: ScanTable, clock: Clock) -> None:
        super().__init__(config, "scan", Pseudonymizer(os.urandom(32), "scan", 86400.0), clock=clock,
                         retry=INTERACTIVE_RETRY, start_timeout_s=10.0)
        self._table = table

    def detection_callback(self, sink: Sink) -> Callable[[BLEDevice, AdvertisementData], None]:
        table, clock = self._table, self._clock

        def on_advertisement(device: BLEDevice, adv: AdvertisementData) -> None:
            table.add_ble(clock(), device.address, adv)

        return on_advertisement


class _ProbeRows(ProbeCounter):
    """Probe requests to the scan table, with the raw MAC kept in memory only."""

    def __init__(self, table: ScanTable, stats: SourceStats) -> None:
        super().__init__("scan", Pseudonymizer(os.urandom(32), "scan", 86400.0), stats)
        self._table = table

    def observe(self, frame: bytes, ts: float) -> Observation | None:
        probe = self.probe(frame, ts)
        if probe is None:
            return None
        self.stats.accepted += 1
        self._table.add_probe(probe)
        return None


def _render(table: ScanTable, now: float, sources: Sequence[Source], footer: str | None) -> Group | Table:
    grid = Table(title="santi scan", title_justify="left")
    grid.add_column("kind", no_wrap=True)
    grid.add_column("identity / address", overflow="fold", min_width=20)
    for name in ("RSSI", "max", "n", "seen", "1 m"):
        grid.add_column(name, justify="right", no_wrap=True)
    grid.add_column("site", no_wrap=True)
    grid.add_column("detail", overflow="fold")
    for row in table.sorted_rows():
        status = "[green]allowed[/]" if row.allowed else "[dim]ignored[/]"
        name = escape(row.identity or row.address) + (f" [dim]{escape(row.address)}[/]" if row.identity and
                                                      row.address else "")
        grid.add_row(escape(row.kind), name, f"{row.rssi_dbm:.0f}", f"{row.rssi_max:.0f}", str(row.count),
                     f"{max(now - row.last_seen, 0):.0f} s", "" if row.power_at_1m_dbm is None else
                     str(row.power_at_1m_dbm), status, escape("; ".join(d for d in (row.detail, row.telemetry) if d)))
    lines = [f"[{'green' if s.stats.state == 'up' else 'red'}]{s.stats.name} {s.stats.state}[/]"
             + (f": {escape(s.stats.last_error)}" if s.stats.last_error and s.stats.state != "up" else "")
             for s in sources]
    if footer is None:
        return grid
    return Group(grid, "  ".join(lines) + f"   {footer}")


@contextlib.contextmanager
def _source_warnings_quiet() -> Iterator[None]:
    """The table and the closing line say when a radio is down; without -v its log line would say it twice."""
    base = logging.getLogger("agent.sources.base")
    previous = base.level
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        base.setLevel(logging.ERROR)
    try:
        yield
    finally:
        base.setLevel(previous)


def _all_failed(sources: Sequence[Source], came_up: set[str]) -> bool:
    """Every radio has failed and none ever came up: an open-ended scan has nothing left to wait for."""
    return not came_up and all(s.stats.state != "up" and s.stats.last_error is not None for s in sources)


async def _scan(sources: Sequence[Source], seconds: float | None, on_tick: Callable[[float], None]) -> set[str]:
    """Run the sources for ``seconds`` (or until Ctrl-C, or until every radio failed); returns those that came up."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, stop.set)

    def ignore(_: Record) -> None:
        return None

    tasks = [asyncio.create_task(source.run(ignore, stop)) for source in sources]
    came_up: set[str] = set()
    start = time.monotonic()
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - start
            came_up.update(s.stats.name for s in sources if s.stats.state == "up")
            on_tick(elapsed)
            if seconds is not None and elapsed >= seconds:
                break
            if seconds is None and _all_failed(sources, came_up):
                break  # Bluetooth off, no such interface: say so now rather than wait for Ctrl-C
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_S)
    finally:
        stop.set()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
        await asyncio.gather(*tasks, return_exceptions=True)
    return came_up


def build_sources(site: SiteConfig, table: ScanTable, *, ble: bool, adapter: str | None, passive: bool,
                  wifi: str | None, clock: Clock) -> list[Source]:
    sources: list[Source] = []
    if ble:
        config = site.ble.model_copy(update={"scanning": "passive" if passive else "active",
                                             **({"adapter": adapter} if adapter else {})})
        sources.append(_ScanBle(config, table, clock))
    if wifi is not None:
        monitor = WifiMonitorSource(wifi, "scan", Pseudonymizer(os.urandom(32), "scan", 86400.0), clock=clock,
                                    retry=INTERACTIVE_RETRY)
        monitor.probes = _ProbeRows(table, monitor.stats)
        sources.append(monitor)
    return sources


@click.command("scan")
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_SITE,
              show_default=True, help="Site config: its allow-list says what is located, and which adapter to use.")
@click.option("--seconds", type=click.FloatRange(min=0.5), default=None,
              help="Stop after this long (default: until Ctrl-C).")
@click.option("--adapter", default=None, help="Bluetooth adapter (default: ble.adapter of the site).")
@click.option("--passive", is_flag=True,
              help="Scan passively with the agent's filters: see exactly what the agent hears (default: active, "
                   "everything around).")
@click.option("--ble/--no-ble", "use_ble", default=True, show_default=True, help="Listen to Bluetooth LE.")
@click.option("--wifi", "wifi", default=None, metavar="IFACE",
              help="Also list Wi-Fi probe requests heard on this monitor-mode interface.")
@click.option("--json", "as_json", is_flag=True, help="Print the final table as JSON (no live table).")
def scan(config: Path, seconds: float | None, adapter: str | None, passive: bool, use_ble: bool, wifi: str | None,
         as_json: bool) -> None:
    """List the BLE emitters (and Wi-Fi probes) heard now: kind, identity, RSSI, allowed or ignored.

    Strongest first. Beacons show their identity (iBeacon UUID major/minor,
    Eddystone namespace instance); other devices only the last two octets of
    their address. Nothing is logged or sent anywhere.

    Exit code 0 after a scan, 1 when a requested radio never came up (its
    error is printed, in one line); without --seconds the scan ends as soon
    as every radio has failed. 2 on bad input.

    \b
    Example:
      santi scan --config /etc/santi/site.toml
      santi scan --config examples/fishmonger.toml --seconds 10 --json
      santi scan --wifi wlan1mon --seconds 30
    """
    site = load_site(config)
    if not use_ble and wifi is None:
        raise CliError("nothing to scan: --no-ble needs --wifi IFACE")
    table = ScanTable(allow=AllowList.from_config(site.ble),
                      wifi_located=any(r.kind == "wifi" for r in site.receivers))
    sources = build_sources(site, table, ble=use_ble, adapter=adapter, passive=passive, wifi=wifi, clock=time.time)
    err = Console(stderr=True)
    console = Console()
    with _source_warnings_quiet():
        if as_json or not console.is_terminal:
            came_up = _scan_quietly(sources, seconds, err)
        else:
            came_up = _scan_live(table, sources, seconds, console)
    now = time.time()
    if as_json:
        click.echo(json.dumps({
            "seconds": seconds,
            "sources": {s.stats.name: {"state": "up" if s.stats.name in came_up else "down",
                                       "last_error": s.stats.last_error} for s in sources},
            "emitters": [row.to_dict(now) for row in table.sorted_rows()],
        }, indent=2))
    else:
        if not console.is_terminal:
            console.print(_render(table, now, sources, None))
        allowed = sum(row.allowed for row in table.rows.values())
        console.print(f"{plural(len(table.rows), 'emitter')} heard: {allowed} allowed, {len(table.rows) - allowed} ignored")
    failed = [s for s in sources if s.stats.name not in came_up]
    if failed:
        reasons = "; ".join(f"{s.stats.name} never came up: {s.stats.last_error or 'no reason given'}" for s in failed)
        err.print(f"santi: {escape(reasons)}", highlight=False, soft_wrap=True)
        raise SystemExit(EXIT_RADIO_FAILED)


def _scan_live(table: ScanTable, sources: Sequence[Source], seconds: float | None, console: Console) -> set[str]:
    """A terminal: the table refreshes in place twice a second, with the time left below it."""
    with Live(_render(table, time.time(), sources, "starting…"), console=console, auto_refresh=False) as live:
        last = [-REFRESH_S]

        def tick(elapsed: float) -> None:
            if elapsed - last[0] >= REFRESH_S:
                last[0] = elapsed
                footer = "Ctrl-C to stop" if seconds is None else f"{max(seconds - elapsed, 0.0):.0f} s left"
                live.update(_render(table, time.time(), sources, footer), refresh=True)

        came_up = asyncio.run(_scan(sources, seconds, tick))
        live.update(_render(table, time.time(), sources, None), refresh=True)
    return came_up


def _scan_quietly(sources: Sequence[Source], seconds: float | None, err: Console) -> set[str]:
    """JSON or a pipe: the table goes to stdout at the end; progress (time left) goes to stderr."""
    with Progress(TextColumn("scanning"), BarColumn(), TimeRemainingColumn(), console=err, transient=True,
                  disable=not err.is_terminal) as bar:
        task = bar.add_task("scan", total=seconds)
        return asyncio.run(_scan(sources, seconds, lambda elapsed: bar.update(task, completed=elapsed)))
