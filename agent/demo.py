"""``santi demo``: a simulated store, the real agent, a real broker and the HQ subscriber.

Everything but the radios is the production code path: the simulator
writes a recording, the agent replays it through the locator into its
SQLite outbox, the uplink publishes to a mosquitto (a private one on a free
loopback port unless one is given), and the reference HQ subscriber builds
the customer profiles from what arrives. What HQ sees is printed live, and
the run ends with HQ's figures beside the simulator's ground truth.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import statistics
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from agent.config import ConsoleConfig, SiteConfig, UplinkConfig
from agent.events import Event
from agent.localbroker import Broker, free_port
from agent.messages import PURPOSES
from agent.replayclock import ReplayClock, first_timestamp
from agent.service import Service
from agent.sources.factory import replay_sources
from hq.consent import ConsentRecord
from hq.render import print_profile
from hq.subscriber import HqSubscriber
from simulator.run import SimConfig, simulate
from simulator.truth import Truth, read_truth


@dataclass
class DemoResult:
    """What HQ received and what really happened, for the summary and the tests."""

    events: list[Event] = field(default_factory=list)
    truth: Truth = field(default_factory=Truth)
    loyalty_ids: list[str] = field(default_factory=list)
    consented: list[str] = field(default_factory=list)
    """Loyalty customers who agreed to profiling and personalisation in the demo."""
    outbox_left: int = 0
    workdir: Path = Path()


class _Printer:
    """Prints what HQ stores, one line an event, from the subscriber's writer thread."""

    def __init__(self, console: Console, start_ts: float, quiet: bool) -> None:
        self._console = console
        self._start = start_ts
        self._quiet = quiet
        self._lock = threading.Lock()
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)
        if self._quiet or event.type in ("sector.exited", "agent.status"):
            return
        minute = (event.ts.timestamp() - self._start) / 60.0
        who = event.subject[:10]
        detail = {
            "visit.started": lambda: f"[green]visit started[/] {who}",
            "sector.entered": lambda: f"{who} → {getattr(event, 'sector_id', '')}",
            "visit.ended": lambda: f"[yellow]visit ended[/] {who} after {getattr(event, 'duration_s', 0) / 60:.1f} min",
            "identity.linked": lambda: (f"[bold cyan]{who} is loyalty {getattr(event, 'loyalty_id', '')}[/] "
                                        f"({getattr(event, 'method', '')}, confidence {getattr(event, 'confidence', 0):.2f})"),
            "card.tapped": lambda: f"card tapped at {getattr(event, 'reader_id', '')}: {getattr(event, 'card', '')}",
        }[event.type]()
        self._console.print(f"[dim]{minute:5.1f} min[/] {detail}", highlight=False)


def run_demo(
    site: SiteConfig,
    *,
    shoppers: int,
    minutes: float,
    seed: int,
    speed: float,
    broker: tuple[str, int] | None,
    workdir: Path | None,
    console: Console,
    quiet: bool = False,
) -> DemoResult:
    """Simulate, run the agent and HQ, and return what HQ received beside the truth."""
    work = workdir or Path(tempfile.mkdtemp(prefix="santi-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    sim_dir = work / "sim"
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"simulating {shoppers} shoppers for {minutes:g} minutes", total=1.0)

        def tick(done: float, total: float) -> None:
            progress.update(task, completed=done / max(total, 1e-9))

        summary = simulate(site, SimConfig(shoppers=shoppers, minutes=minutes, seed=seed), sim_dir, tick)
    console.print(f"simulated {summary.shoppers} shoppers: {summary.observations:,} observations, "
                  f"{summary.taps} card taps, {summary.duration_s / 60:.1f} store minutes → {sim_dir}")

    private: Broker | None = None
    if broker is None:
        private = Broker(work / "broker")
        private.start()
        host, port = private.host, private.port
        console.print(f"started a private mosquitto on {host}:{port}")
    else:
        host, port = broker
    site = site.model_copy(update={"uplink": UplinkConfig(host=host, port=port),
                                   "console": _console(work, console, speed)})
    first = first_timestamp(sim_dir / "observations.jsonl")
    printer = _Printer(console, first, quiet)
    result = DemoResult(workdir=work)
    try:
        subscriber = HqSubscriber(host, port, f"sqlite:///{work / 'hq.sqlite'}", "santi-demo-hq",
                                  on_event=printer, client_id=f"santi-demo-hq-{port}")
        with subscriber:
            if not subscriber.wait_connected(10.0):
                raise RuntimeError(f"the HQ subscriber could not connect to {host}:{port}")
            agreed = result.consented = _grant_demo_consent(subscriber, read_truth(sim_dir / "truth.jsonl"))
            console.print(f"consent: {len(agreed)} of the simulated loyalty customers agreed to profiling "
                          "and personalisation (every other one; the rest stay anonymous visitors at HQ)")
            console.print(f"agent replaying the store at {speed:g}× into its outbox; HQ subscribed. "
                          "What HQ sees:")
            result.outbox_left = _run_agent(site, sim_dir, work / "agent", speed)
            _wait_quiet(lambda: len(printer.events), 2.0)
            result.loyalty_ids = sorted({getattr(e, "loyalty_id", "") for e in printer.events
                                         if e.type == "identity.linked"})
            result.events = list(printer.events)
            result.truth = read_truth(sim_dir / "truth.jsonl")
            _summary(console, result, subscriber)
    finally:
        if private is not None:
            private.stop()
    return result


CONSOLE_PORT = 8080


def _console(work: Path, console: Console, speed: float) -> ConsoleConfig:
    """The demo's store console: fresh tokens in the workdir (0600), on :8080 or a free port if taken."""
    tokens = {}
    for role in ("technician", "staff"):
        token = secrets.token_urlsafe(24)
        path = work / f"console-{role}.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(token)
        tokens[role] = (path, token)
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", CONSOLE_PORT))
            port = CONSOLE_PORT
        except OSError:
            port = free_port()
    url = f"http://127.0.0.1:{port}/"
    console.print(f"store console (while the agent runs): [bold]{url}#token={tokens['technician'][1]}[/] "
                  f"(technician); staff view: {url}#token={tokens['staff'][1]}", highlight=False)
    if speed > 10:
        console.print("[dim]at this speed the store day is over in seconds: --speed 5 leaves time to watch[/]")
    return ConsoleConfig(listen=f"127.0.0.1:{port}", technician_token_file=tokens["technician"][0],
                         staff_token_file=tokens["staff"][0])


def _run_agent(site: SiteConfig, sim_dir: Path, state_dir: Path, speed: float) -> int:
    observations, taps = sim_dir / "observations.jsonl", sim_dir / "taps.jsonl"
    clock = ReplayClock(first_timestamp(observations), speed)
    service = Service(site, replay_sources(observations, taps, speed), state_dir=state_dir, clock=clock,
                      time_scale=speed, stop_when_sources_finish=True, drain_deadline_s=20.0)
    clock.start()
    code = asyncio.run(service.run())
    if code:
        raise RuntimeError(f"the agent stopped with exit code {code}; see its log above")
    return service.outbox_left


def _wait_quiet(count: Callable[[], int], quiet_s: float) -> None:
    """Let the last deliveries land: wait until nothing new arrived for ``quiet_s``."""
    last, stable = count(), 0.0
    while stable < quiet_s:
        threading.Event().wait(0.2)
        now = count()
        stable = stable + 0.2 if now == last else 0.0
        last = now


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _grant_demo_consent(subscriber: HqSubscriber, truth: Truth) -> list[str]:
    """Every other simulated loyalty customer consents (source "demo"): HQ joins only their visits."""
    loyalty_ids = sorted({s.loyalty_id for s in truth.shoppers.values() if s.loyalty_id})
    agreed = loyalty_ids[::2]
    now = datetime.now(tz=UTC)
    records = [ConsentRecord(loyalty_id=lid, purpose=purpose, granted=True, ts=now, source="demo")
               for lid in agreed for purpose in PURPOSES]
    subscriber.store.add_consent(records, now.timestamp())
    return agreed


def _summary(console: Console, result: DemoResult, subscriber: HqSubscriber) -> None:
    events, truth = result.events, result.truth
    kinds = Counter(e.type for e in events)
    app_shoppers = [s for s in truth.shoppers.values() if s.has_app]
    ended = [e for e in events if e.type == "visit.ended"]
    durations = [float(getattr(e, "duration_s", 0.0)) for e in ended if getattr(e, "duration_s", 0.0) > 0]
    truth_durations = [s.leave_ts - s.enter_ts for s in app_shoppers]
    table = Table(title="What HQ received, beside the simulator's ground truth")
    table.add_column("figure")
    table.add_column("HQ", justify="right")
    table.add_column("truth", justify="right")
    table.add_row("events stored", f"{len(events):,}", "")
    table.add_row("visits (shoppers with the app)", str(kinds["visit.started"]), str(len(app_shoppers)))
    table.add_row("median visit, minutes", f"{_median(durations) / 60:.1f}", f"{_median(truth_durations) / 60:.1f}")
    table.add_row("card taps", str(kinds["card.tapped"]), str(len(truth.taps)))
    # Only a tapper whose phone the agent hears has a visit to link the card to, and HQ keeps
    # the link only with the customer's consent to profiling.
    card_links = sum(1 for e in events if e.type == "identity.linked" and getattr(e, "method", "") == "card_tap")
    linkable = sum(1 for tap in truth.taps if tap.shopper_id in truth.shoppers
                   and truth.shoppers[tap.shopper_id].has_app and tap.loyalty_id in result.consented)
    table.add_row("card taps linked to a visit (truth: by app users who consented)", str(card_links),
                  str(linkable))
    gaps = subscriber.gaps()
    table.add_row("seq gaps at HQ", str(sum(g.missing for g in gaps)), "0")
    table.add_row("events left in the agent's outbox", str(result.outbox_left), "0")
    console.print(table)
    dwell: Counter[str] = Counter()
    for event in ended:
        for sector, seconds in getattr(event, "dwell_s", {}).items():
            dwell[sector] += seconds
    sectors = Table(title="Where shoppers spent their time (HQ)")
    sectors.add_column("sector")
    sectors.add_column("shopper-minutes", justify="right")
    for sector, seconds in dwell.most_common():
        sectors.add_row(sector, f"{seconds / 60:.1f}")
    console.print(sectors)
    linked = [lid for lid in result.loyalty_ids if lid in result.consented]
    if linked:
        loyalty = linked[0]
        print_profile(subscriber.profile(loyalty, now=events[-1].ts.timestamp()), console)
        console.print(f"See any profile again with: santi hq profile {loyalty} "
                      f"--db sqlite:///{result.workdir / 'hq.sqlite'}", highlight=False)
