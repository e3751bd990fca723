"""``santi demo``: a simulated store, the real agent, a real broker, and HQ with consent and activation.

Everything but the radios is the production code path: the simulator
writes a recording, the agent replays it through the locator into its
SQLite outbox, the uplink publishes to a mosquitto (a private one on a free
loopback port unless one is given), the reference HQ subscriber builds the
customer profiles of those who consented (a CRM consent export) and fires
the activation rules, and the staff cards come back through the broker to
the agent's staff board. What HQ stores and the cards the board receives
are printed in store-time order, and the run ends with HQ's figures beside
the simulator's ground truth and, per rule, the cards against the customers
who should have had one. A card for a customer without consent to
personalisation stops the demo with an error.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import secrets
import shutil
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

from agent.cli.footfall_report import print_beside_truth
from agent.config import ConsoleConfig, FootfallConfig, SiteConfig, UplinkConfig
from agent.errors import SantiError
from agent.events import Event, utc_from_epoch
from agent.localbroker import Broker, free_port
from agent.messages import StaffCard
from agent.replayclock import ReplayClock, first_timestamp
from agent.service import Service
from agent.sources.factory import replay_sources
from agent.staffboard import StaffBoard
from agent.text import Table, plural
from hq.activation import PastFiring, Trigger, evaluate
from hq.backends import open_store
from hq.consent import ConsentRecord, ConsentState
from hq.consent import state as consent_state
from hq.profile import Visit, build_profile
from hq.render import print_profile
from hq.rules import Rules
from hq.runner import ActivationRunner
from hq.store import Store
from hq.subscriber import HqSubscriber
from simulator.run import SimConfig, simulate
from simulator.truth import Truth, read_truth

HQ_DB = "hq.sqlite"
"""What a run in a temp folder keeps: the recording and the outbox are tens of MB."""
REORDER_MARGIN_S = 60.0
"""Store seconds beyond the agent's visit silence that a line waits for earlier events to arrive."""


class DemoFailed(SantiError):
    """The demo ran and a part of it failed (HQ, the agent, consent): a run-time failure, exit 1."""


@dataclass(frozen=True)
class ReceivedCard:
    """A staff card the agent's board received through the broker, at store time ``ts``."""

    card: StaffCard
    ts: float
    shown: bool
    """False when the board dropped it (its visit had ended, or another store's)."""


@dataclass
class DemoResult:
    """What HQ received, the cards that came back, and what really happened, for the summary and the tests."""

    events: list[Event] = field(default_factory=list)
    truth: Truth = field(default_factory=Truth)
    loyalty_ids: list[str] = field(default_factory=list)
    consent: dict[str, ConsentState] = field(default_factory=dict)
    """The imported consent, per loyalty id."""
    cards: list[ReceivedCard] = field(default_factory=list)
    fired: dict[str, set[str]] = field(default_factory=dict)
    """Loyalty ids per rule as HQ recorded the firings."""
    should_fire: dict[str, set[str]] = field(default_factory=dict)
    """Loyalty ids per rule that the rules give on the simulator's truth (consent applied)."""
    outbox_left: int = 0
    workdir: Path = Path()
    start_ts: float = 0.0
    """Store time of the recording's first observation: the demo's minute 0."""

    @property
    def consented(self) -> list[str]:
        """Loyalty customers who agreed to profiling and personalisation."""
        return sorted(lid for lid, s in self.consent.items() if s.allows("profiling") and s.allows("personalisation"))


class _Printer:
    """Prints what HQ stores and the cards the board receives, one line each, in store-time order.

    Lines come from two threads (HQ's writer, the agent's loop) and an event
    is back-dated by up to the agent's visit silence (a visit ends when its
    phone was last heard), so a line waits until nothing earlier can still
    come: ``lag_s`` behind the newest store time seen. A line about a visit
    is never before that visit's start. A sector entry can be decided
    minutes after the crossing it is dated at (the hysteresis waits for
    clear evidence): one that comes after its time was printed is shown
    now, with its own time beside it.
    """

    def __init__(self, console: Console, start_ts: float, quiet: bool, lag_s: float) -> None:
        self._console = console
        self._start = start_ts
        self._quiet = quiet
        self._lag = lag_s
        self._lock = threading.Lock()
        self._pending: list[tuple[float, int, int, str, str | None]] = []
        self._order = itertools.count()
        self._newest = start_ts
        self._started: dict[str, float] = {}
        self._printed = start_ts
        self.events: list[Event] = []
        self.cards: list[ReceivedCard] = []

    def __call__(self, event: Event) -> None:
        """An event HQ stored (HQ's writer thread)."""
        ts = event.ts.timestamp()
        visit = getattr(event, "visit_id", None)
        with self._lock:
            self.events.append(event)
            if event.type == "visit.started" and visit is not None:
                self._started.setdefault(visit, ts)
            if not self._quiet and event.type not in ("sector.exited", "agent.status"):
                rank = 0 if event.type == "visit.started" else 1
                heapq.heappush(self._pending, (ts, rank, next(self._order), _line(event), visit))
            self._flush(ts)

    def card(self, card: StaffCard, now: float, sector: str | None, shown: bool) -> None:
        """A card the agent's staff board received (the agent's loop) at store time ``now``; where the customer is."""
        with self._lock:
            self.cards.append(ReceivedCard(card, now, shown))
            facts = ", ".join(f"{k} {v}" for k, v in card.facts.items())
            dropped = "" if shown else " [dim](its visit had ended: not shown)[/]"
            text = (f"[bold magenta]staff card[/] {card.loyalty_id} at {sector or 'the store'}: "
                    f"{card.text} [dim]({card.rule_id}{'; ' + facts if facts else ''})[/]{dropped}")
            heapq.heappush(self._pending, (now, 2, next(self._order), text, card.visit_id))
            self._flush(now)

    def finish(self) -> None:
        """Print what is still held (the run is over: nothing earlier can come)."""
        with self._lock:
            self._flush(float("inf"))

    def count(self) -> int:
        with self._lock:
            return len(self.events) + len(self.cards)

    def _flush(self, ts: float) -> None:
        self._newest = max(self._newest, ts)
        until = self._newest - self._lag
        while self._pending and self._pending[0][0] <= until:
            at, rank, order, text, visit = heapq.heappop(self._pending)
            begun = None if visit is None else self._started.get(visit)
            if begun is not None and begun > at:
                # Back-dated before its visit's start (the sector decided before the visit): shown from the start.
                heapq.heappush(self._pending, (begun, rank, order, text, visit))
                continue
            if at < self._printed:
                text = f"{text} [dim](at {self._minute(at)} min, decided late)[/]"
                at = self._printed
            self._printed = at
            self._console.print(f"[dim]{self._minute(at)} min[/] {text}", highlight=False)

    def _minute(self, ts: float) -> str:
        return f"{(ts - self._start) / 60.0:5.1f}"


def _line(event: Event) -> str:
    who = event.subject[:10]
    return {
        "visit.started": lambda: f"[green]visit started[/] {who}",
        "sector.entered": lambda: f"{who} → {getattr(event, 'sector_id', '')}",
        "visit.ended": lambda: f"[yellow]visit ended[/] {who} after {getattr(event, 'duration_s', 0) / 60:.1f} min",
        "identity.linked": lambda: (f"[bold cyan]{who} is loyalty {getattr(event, 'loyalty_id', '')}[/] "
                                    f"({getattr(event, 'method', '')}, confidence {getattr(event, 'confidence', 0):.2f})"),
        "card.tapped": lambda: f"card tapped at {getattr(event, 'reader_id', '')}: {getattr(event, 'card', '')}",
        "occupancy.sampled": lambda: (f"[blue]inside now[/] {getattr(event, 'count', 0):.1f} "
                                      f"± {getattr(event, 'count_sd', 0):.1f} (anonymous count, app or not)"),
        "footfall.counted": lambda: (f"[bold blue]entries[/] {getattr(event, 'entries', 0):.0f} "
                                     f"± {getattr(event, 'entries_sd', 0):.0f} since "
                                     f"{getattr(event, 'interval_start', event.ts):%H:%M} UTC"),
    }[event.type]()


class _DemoBoard(StaffBoard):
    """The agent's staff board, telling the printer of each card it receives."""

    def __init__(self, store_id: str, printer: _Printer) -> None:
        super().__init__(store_id)
        self._printer = printer

    def add(self, card: StaffCard, now: float) -> bool:
        shown = super().add(card, now)
        sector = next((held.sector_id for held in self.cards() if held.card.card_id == card.card_id), card.sector_id)
        self._printer.card(card, now, sector, shown)
        return shown


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
    rules: Rules,
    consent: Sequence[ConsentRecord],
    quiet: bool = False,
) -> DemoResult:
    """Simulate, run the agent and HQ with ``rules`` and ``consent``, and return what came of it beside the truth.

    Without ``workdir`` the run happens in a temp folder of which only HQ's
    database is kept. Raises DemoFailed when a part of it failed or a card
    reached a customer without consent to personalisation.
    """
    work = workdir or Path(tempfile.mkdtemp(prefix="santi-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(site, shoppers=shoppers, minutes=minutes, seed=seed, speed=speed, broker=broker, work=work,
                    console=console, rules=rules, consent=consent, quiet=quiet)
    finally:
        if workdir is None:
            _keep_only_hq(work)


def _run(site: SiteConfig, *, shoppers: int, minutes: float, seed: int, speed: float,
         broker: tuple[str, int] | None, work: Path, console: Console, rules: Rules,
         consent: Sequence[ConsentRecord], quiet: bool) -> DemoResult:
    sim_dir = work / "sim"
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"simulating {plural(shoppers, 'shopper')} for {minutes:g} minutes", total=1.0)

        def tick(done: float, total: float) -> None:
            progress.update(task, completed=done / max(total, 1e-9))

        summary = simulate(site, SimConfig(shoppers=shoppers, minutes=minutes, seed=seed), sim_dir, tick)
    console.print(f"simulated {plural(summary.shoppers, 'shopper')}: {plural(summary.observations, 'observation')}, "
                  f"{plural(summary.taps, 'card tap')}, {summary.duration_s / 60:.1f} store minutes → {sim_dir}")

    private: Broker | None = None
    if broker is None:
        private = Broker(work / "broker")
        private.start()
        host, port = private.host, private.port
        console.print(f"started a private mosquitto on {host}:{port}")
    else:
        host, port = broker
    # The anonymous count is on in the demo, with the site's [footfall] or its defaults.
    site = site.model_copy(update={"uplink": UplinkConfig(host=host, port=port),
                                   "console": _console(work, console, speed),
                                   "footfall": site.footfall or FootfallConfig()})
    first = first_timestamp(sim_dir / "observations.jsonl")
    printer = _Printer(console, first, quiet, site.tracking.visit_silence_s + REORDER_MARGIN_S)
    result = DemoResult(workdir=work, start_ts=first)
    store = open_store(f"sqlite:///{work / HQ_DB}")
    runner: ActivationRunner | None = None
    try:
        result.consent = _import_consent(store, consent)
        runner = ActivationRunner(store, rules, lambda topic, body: subscriber.publish(topic, body),  # noqa: PLW0108
                                  instance=f"santi-demo-hq-{port}")
        subscriber = HqSubscriber(host, port, store, "santi-demo-hq", on_event=printer, on_batch=runner.on_batch,
                                  client_id=f"santi-demo-hq-{port}")
        with subscriber:
            if not subscriber.wait_connected(10.0):
                raise DemoFailed(f"the HQ subscriber could not connect to {host}:{port}")
            states = result.consent.values()
            console.print(
                f"consent imported for {len(result.consent)} loyalty customers: "
                f"{sum(s.allows('profiling') and s.allows('personalisation') for s in states)} to profiling and "
                f"personalisation, {sum(s.allows('profiling') and not s.allows('personalisation') for s in states)}"
                " to profiling only, the rest to neither (anonymous visitors at HQ, no cards); "
                f"rules: {', '.join(r.id for r in rules.rules)}")
            console.print(f"agent replaying the store at {speed:g}× into its outbox; HQ subscribed. "
                          "What HQ stores and the staff cards the agent receives:")
            result.outbox_left = _run_agent(site, sim_dir, work / "agent", speed, _DemoBoard(site.store.id, printer))
            _wait_quiet(printer.count, 2.0)
            printer.finish()
            result.events = list(printer.events)
            result.cards = list(printer.cards)
            result.loyalty_ids = sorted({getattr(e, "loyalty_id", "") for e in result.events
                                         if e.type == "identity.linked"})
            result.truth = read_truth(sim_dir / "truth.jsonl")
            result.fired = _fired(store)
            result.should_fire = activation_truth(rules, result.truth, result.consent, site)
            _report(console, result, subscriber, rules)
    finally:
        if runner is not None:
            runner.stop()
        store.close()
        if private is not None:
            private.stop()
    _check_consent(result)
    return result


def _keep_only_hq(work: Path) -> None:
    """Remove the recording, outbox, broker and tokens of a temp run; HQ's database stays."""
    for child in work.iterdir():
        if child.name.startswith(HQ_DB):
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


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


def _run_agent(site: SiteConfig, sim_dir: Path, state_dir: Path, speed: float, board: StaffBoard) -> int:
    observations, taps = sim_dir / "observations.jsonl", sim_dir / "taps.jsonl"
    clock = ReplayClock(first_timestamp(observations), speed)
    service = Service(site, replay_sources(observations, taps, speed), state_dir=state_dir, clock=clock,
                      time_scale=speed, stop_when_sources_finish=True, drain_deadline_s=20.0, staff_board=board)
    clock.start()
    code = asyncio.run(service.run())
    if code:
        raise DemoFailed(f"the agent stopped with exit code {code}; see its log above")
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


def _import_consent(store: Store, records: Sequence[ConsentRecord]) -> dict[str, ConsentState]:
    """Store the CRM export's records at HQ before any event arrives; the state per loyalty id."""
    store.add_consent(records, datetime.now(tz=UTC).timestamp())
    by_customer: dict[str, list[ConsentRecord]] = {}
    for record in records:
        by_customer.setdefault(record.loyalty_id, []).append(record)
    return {lid: consent_state(lid, mine) for lid, mine in by_customer.items()}


def _fired(store: Store) -> dict[str, set[str]]:
    fired: dict[str, set[str]] = {}
    for view in store.activations(limit=1_000_000):
        fired.setdefault(view.rule_id, set()).add(view.loyalty_id)
    return fired


def activation_truth(rules: Rules, truth: Truth, consent: dict[str, ConsentState], site: SiteConfig
                     ) -> dict[str, set[str]]:
    """Per rule, the loyalty customers it should reach: the rules evaluated on the simulator's truth.

    A customer is known from their card tap on (the agent links the tap to
    the phone it hears, so only shoppers with the app), and only with consent
    to profiling (HQ keeps no link otherwise) and personalisation. The
    triggers are the link and the tap at the tap's time and each entry into
    a sector after it; the profile at a trigger is the true visit up to then.
    """
    wanted: dict[str, set[str]] = {rule.id: set() for rule in rules.rules}
    for tap in sorted(truth.taps, key=lambda t: t.ts):
        shopper = truth.shoppers.get(tap.shopper_id)
        state = consent.get(tap.loyalty_id or "")
        if (shopper is None or not shopper.has_app or tap.loyalty_id is None or state is None
                or not (state.allows("profiling") and state.allows("personalisation"))):
            continue
        sectors = truth.visits.get(tap.shopper_id, [])
        entries = sorted((v.enter_ts, v.sector) for v in sectors if v.enter_ts > tap.ts)
        moments: list[tuple[str, float, str | None]] = [("identity.linked", tap.ts, None),
                                                         ("card.tapped", tap.ts, None)]
        moments.extend(("sector.entered", ts, sector) for ts, sector in entries)
        history: list[PastFiring] = []
        for kind, ts, sector in moments:
            at = utc_from_epoch(ts)
            dwell: dict[str, float] = {}
            for v in sectors:
                dwell[v.sector] = dwell.get(v.sector, 0.0) + max(0.0, min(v.exit_ts, ts) - v.enter_ts)
            visit = Visit(site.store.id, site.agent.id, tap.shopper_id, tap.shopper_id, utc_from_epoch(shopper.enter_ts),
                          None, ts - shopper.enter_ts, dwell, closed=False)
            profile = build_profile("loyalty", tap.loyalty_id, [visit], [utc_from_epoch(tap.ts)], at)
            trigger = Trigger(event_id=f"truth-{tap.shopper_id}-{kind}-{ts}", type=kind, store_id=site.store.id,
                              agent_id=site.agent.id, visit_id=None if kind == "card.tapped" else tap.shopper_id,
                              sector_id=sector, ts=at, loyalty_id=tap.loyalty_id)
            for firing in evaluate(rules, trigger, profile, history, personalisation=True):
                history.append(PastFiring(firing.rule.id, at, firing.visit))
                wanted[firing.rule.id].add(tap.loyalty_id)
    return wanted


def _check_consent(result: DemoResult) -> None:
    """A staff card for a customer without consent to personalisation is a failure of the demo."""
    unwanted = sorted({c.card.loyalty_id for c in result.cards
                       if not (s := result.consent.get(c.card.loyalty_id)) or not s.allows("personalisation")})
    if unwanted:
        raise DemoFailed(f"staff cards reached {len(unwanted)} customers without consent to personalisation: "
                           f"{', '.join(unwanted)}")


def _report(console: Console, result: DemoResult, subscriber: HqSubscriber, rules: Rules) -> None:
    """The end of the demo, in this order: HQ against truth, then the activations, then one profile.

    Between the summary and the activations: the anonymous counts of everyone, app or not, beside the truth.
    """
    _summary(console, result, subscriber)
    print_beside_truth(console, result.events, result.truth.people_inside, result.truth.entries, result.start_ts)
    _activations(console, result, rules)
    _profile(console, result, subscriber)


def _activations(console: Console, result: DemoResult, rules: Rules) -> None:
    table = Table(title="Activations: staff cards the agent received, against the customers who should get one")
    for name in ("rule", "truth", "cards received", "both", "fired at HQ"):
        table.add_column(name, justify="left" if name == "rule" else "right")
    received: dict[str, set[str]] = {}
    for held in result.cards:
        received.setdefault(held.card.rule_id, set()).add(held.card.loyalty_id)
    for rule in rules.rules:
        truth, cards = result.should_fire.get(rule.id, set()), received.get(rule.id, set())
        table.add_row(rule.id, str(len(truth)), str(len(cards)), str(len(truth & cards)),
                      str(len(result.fired.get(rule.id, set()))))
    console.print(table)
    holders = {t.loyalty_id for t in result.truth.taps if t.loyalty_id is not None}
    refused = sorted(lid for lid in holders
                     if not ((s := result.consent.get(lid)) is not None and s.allows("personalisation")))
    to_them = sum(1 for c in result.cards if c.card.loyalty_id in refused)
    console.print(f"cards to the {plural(len(refused), 'card holder')} without consent to personalisation: {to_them}"
                  " (a card truth lacks: the agent linked the tap to the wrong phone or the dwell differs;"
                  " truth a card lacks: the tap was not linked, or the card came after the visit ended)")


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
    profiling = {lid for lid, s in result.consent.items() if s.allows("profiling")}
    linkable = sum(1 for tap in truth.taps if tap.shopper_id in truth.shoppers
                   and truth.shoppers[tap.shopper_id].has_app and tap.loyalty_id in profiling)
    table.add_row("card taps linked to a visit (truth: by app users who consent to profiling)", str(card_links),
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


def _profile(console: Console, result: DemoResult, subscriber: HqSubscriber) -> None:
    events = result.events
    linked = [lid for lid in result.loyalty_ids if lid in result.consented]
    if linked:
        loyalty = linked[0]
        print_profile(subscriber.profile(loyalty, now=events[-1].ts.timestamp()), console)
        console.print(f"See any profile again with: santi hq profile {loyalty} "
                      f"--db sqlite:///{result.workdir / 'hq.sqlite'}", highlight=False)
