"""``santi hq``: the reference HQ subscriber and the customer profiles it builds."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from types import FrameType
from typing import BinaryIO

import click
from rich.console import Console

from agent.cli.broker_arg import parse_broker
from agent.cli.errors import CliError
from agent.config import ConfigError
from agent.events import utc_from_epoch
from agent.messages import PURPOSES
from agent.text import Table, plural
from hq.backends import open_store
from hq.consent import ConsentRecord, parse_import, purposes_text
from hq.consent import state as consent_state
from hq.exportfile import import_export
from hq.footfall import COUNT_TYPES, read_day, render_png, table_rows
from hq.render import print_profile
from hq.rules import load_rules
from hq.runner import ActivationRunner
from hq.store import DEAD_LETTER_BYTES, DEAD_LETTER_ROWS, AgentGaps, HqStoreError, Store
from hq.subscriber import BrokerError, BrokerUnreachable, HqSubscriber, Stats
from hq.views import loyalty_profile, visitor_profile

DEFAULT_DB = "sqlite:///santi-hq.sqlite"

db_option = click.option(
    "--db", "db_url", envvar="SANTI_HQ_DB", default=DEFAULT_DB, show_default=True,
    help="sqlite:///path.db or postgresql://user@host/db[?schema=name] (env SANTI_HQ_DB).",
)


@contextmanager
def _store(db_url: str, *, create: bool = False) -> Iterator[Store]:
    """The database ``--db`` names; only commands that store something create it."""
    store = open_store(db_url, create=create)
    try:
        yield store
    finally:
        store.close()


@click.group()
def hq() -> None:
    """HQ: subscribe to every store's events and keep one profile per customer."""


@hq.command("run")
@click.option("--broker", default="127.0.0.1:1883", show_default=True, metavar="HOST:PORT",
              help="The broker the stores publish to (TLS with --ca-file).")
@click.option("--group", default="hq", show_default=True, help="Shared-subscription group of the HQ instances.")
@db_option
@click.option("--client-id", default=None,
              help="Stable MQTT client id: the broker keeps this instance's messages while it is down. "
                   "Give each instance its own. Default santi-hq-GROUP-HOSTNAME.")
@click.option("--session-expiry", "session_expiry_s", default=86_400, show_default=True, type=click.IntRange(0),
              help="Seconds the broker keeps the session of a stopped instance.")
@click.option("--username", default=None, help="Broker user name.")
@click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="File holding the broker password.")
@click.option("--password-env", default=None, help="Environment variable holding the broker password.")
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="CA certificate for TLS (implies TLS).")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10_000),
              help="Events per committed transaction, at most.")
@click.option("--flush-ms", default=50.0, show_default=True, type=click.FloatRange(1.0),
              help="Commit a partial batch after this long.")
@click.option("--report-s", default=10.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds between progress lines.")
@click.option("--max-seconds", default=None, type=click.FloatRange(0.0),
              help="Stop after this long (for scripts); default: until SIGINT/SIGTERM.")
@click.option("--connect-timeout", "connect_timeout_s", default=10.0, show_default=True,
              type=click.FloatRange(0.1), help="Seconds to wait for the broker at start before giving up.")
@click.option("--dead-letter-rows", default=DEAD_LETTER_ROWS, show_default=True, type=click.IntRange(1),
              help="Dead letters kept at most; the oldest are evicted (and counted) beyond.")
@click.option("--dead-letter-mb", default=DEAD_LETTER_BYTES // 2**20, show_default=True, type=click.IntRange(1),
              help="MiB of dead-letter payloads kept at most; the oldest are evicted beyond.")
@click.option("--rules", "rules_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Activation rules file (TOML); SIGHUP reads it again. Default: no activation.")
@click.option("--lease-s", default=30.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds after which another HQ takes over an open delivery this one stopped renewing.")
def run(broker: str, group: str, db_url: str, client_id: str | None, session_expiry_s: int,
        username: str | None, password_file: Path | None, password_env: str | None, ca_file: Path | None,
        batch_size: int, flush_ms: float, report_s: float, max_seconds: float | None,
        connect_timeout_s: float, dead_letter_rows: int, dead_letter_mb: int, rules_path: Path | None,
        lease_s: float) -> None:
    """Subscribe to every store's events, store them and acknowledge them, until SIGINT or SIGTERM.

    Prints one line per --report-s seconds: events received, newly stored,
    duplicates, dead letters, acknowledgements, the ingest rate and missing
    seqs. Exits non-zero with the reason when the broker cannot be reached or
    refuses us at start, or when the writer fails.

    With --rules, trigger events of customers who consent fire the rules
    (see README, "Consent and activation"); each firing is recorded once
    across restarts and the HQs of the group, and SIGHUP reloads the file
    (a bad file is logged and the running rules stay).

    \b
    Example:
      santi hq run --broker 127.0.0.1:1883 --group hq --db sqlite:///hq.db --rules rules.toml
    """
    address = parse_broker(broker)
    host, port = address.host, address.port
    if address.tls and ca_file is None:
        raise CliError("mqtts:// needs --ca-file (the CA that signed the broker's certificate)")
    rules = load_rules(rules_path) if rules_path is not None else None
    store = open_store(db_url, dead_letter_rows=dead_letter_rows, dead_letter_bytes=dead_letter_mb * 2**20)
    instance = client_id or f"santi-hq-{group}-{os.uname().nodename}"
    # The lambda binds the subscriber made below: the runner publishes on its connection.
    runner = None if rules is None else ActivationRunner(
        store, rules, lambda topic, body: sub.publish(topic, body),  # noqa: PLW0108
        instance=f"{instance}-{os.getpid()}",
        lease_s=lease_s, sweep_s=min(5.0, lease_s / 3))
    try:
        sub = HqSubscriber(host, port, store, group, client_id=instance,
                           session_expiry_s=session_expiry_s, username=username,
                           password_file=password_file, password_env=password_env, tls_ca=ca_file,
                           batch_size=batch_size, flush_ms=flush_ms,
                           on_batch=None if runner is None else runner.on_batch)
        sub.start()
    except (HqStoreError, ValueError, BrokerError, ConfigError, OSError) as exc:
        if runner is not None:
            runner.stop()
        store.close()
        if isinstance(exc, BrokerError):
            raise  # its own exit code: 1 when no broker answered, 2 when it refused what we gave
        raise CliError(str(exc)) from None
    if not sub.wait_connected(connect_timeout_s):
        sub.stop()
        if runner is not None:
            runner.stop()
        store.close()
        problem = sub.broker_problem()
        if sub.refused is not None and problem is not None:
            raise BrokerError(problem)
        raise BrokerUnreachable(f"no subscription on {host}:{port} within {connect_timeout_s:g} s"
                                + (f" ({problem})" if problem else ""))
    stop = threading.Event()

    def _signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def _reload(signum: int, frame: FrameType | None) -> None:
        if runner is not None:
            threading.Thread(target=runner.reload, name="hq-rules-reload", daemon=True).start()

    previous = {s: signal.signal(s, _signal) for s in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, _reload)
    click.echo(f"santi hq: {sub.topic} on {host}:{port} -> {db_url.rsplit('@', maxsplit=1)[-1]}", err=True)
    started = time.monotonic()
    last = sub.stats()
    last_t = started
    try:
        while not stop.wait(report_s):
            now = time.monotonic()
            current = sub.stats()
            fired = "" if runner is None else (
                f" fired={runner.stats.fired} delivered={runner.stats.delivered} dead={runner.stats.dead}"
                f" claimed={runner.stats.claimed}")
            click.echo(_progress(current, last, now - last_t, _safe_gaps(sub)) + fired)
            last, last_t = current, now
            if current.failure is not None or (max_seconds is not None and now - started >= max_seconds):
                break
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        at_end = sub.stats()
        sub.stop()
        if runner is not None:
            runner.stop()
        store.close()
    final = sub.stats()
    click.echo(f"stopped: received={final.received} stored={final.stored} duplicates={final.duplicates} "
               f"dead_letters={final.dead_letters} suppressed={final.suppressed} acks={final.acks}"
               + ("" if runner is None else f" fired={runner.stats.fired}"))
    if final.failure is not None:
        raise CliError(final.failure)
    if not at_end.connected and not stop.is_set():
        # The run's time is up while the broker is gone: that is a failed run, not a quiet one.
        raise BrokerUnreachable(at_end.broker_problem or f"not connected to the broker at {host}:{port}")


def _safe_gaps(sub: HqSubscriber) -> list[AgentGaps] | None:
    try:
        return sub.gaps()
    except HqStoreError:
        return None


def _progress(current: Stats, last: Stats, dt: float, gaps: list[AgentGaps] | None) -> str:
    rate = (current.received - last.received) / dt if dt > 0 else 0.0
    missing = "?" if gaps is None else str(sum(g.missing for g in gaps))
    state = "FAILED" if current.failure else "connected" if current.connected else "DISCONNECTED"
    twins = sorted({f"{g.store_id}/{g.agent_id}" for g in gaps or [] if g.interleaved})
    return (f"{time.strftime('%H:%M:%S')} {state} received={current.received} stored={current.stored} "
            f"duplicates={current.duplicates} dead_letters={current.dead_letters} "
            f"conflicts={current.conflicts} suppressed={current.suppressed} acks={current.acks} "
            f"rate={rate:.0f}/s queued={current.queued} missing_seqs={missing}"
            + (f" TWO-LIVE-EPOCHS={','.join(twins)}" if twins else "")
            + (f" ({current.failure})" if current.failure else "")
            + (f" ({current.broker_problem})" if not current.connected and current.broker_problem else ""))


@hq.command("profile")
@click.argument("loyalty_id")
@db_option
@click.option("--visitor", is_flag=True, help="LOYALTY_ID is a pseudonymous visitor id (subject) instead.")
@click.option("--now", "now_text", default=None, help="Compute 'last 30 days' as of this RFC 3339 time.")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
def profile(loyalty_id: str, db_url: str, visitor: bool, now_text: str | None, as_json: bool) -> None:
    """Show what HQ knows of one customer: visits, regularity, time spent, sectors, stores.

    \b
    Example:
      santi hq profile L100042 --db sqlite:///hq.db
    """
    now = _parse_now(now_text)
    with _store(db_url) as store:
        found = (visitor_profile if visitor else loyalty_profile)(store, loyalty_id, now)
    if as_json:
        click.echo(json.dumps(_finite(found.to_dict()), indent=2, allow_nan=False))
        return
    if found.visits == 0 and found.card_taps == 0:
        raise CliError(f"no visits for {'visitor' if visitor else 'loyalty id'} {loyalty_id}")
    print_profile(found)


def _finite(value: object) -> object:
    """JSON has no Infinity or NaN: a non-finite figure (from rows older than the bounds) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _parse_now(text: str | None) -> float:
    if text is None:
        return time.time()
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--now {text!r} is not an RFC 3339 time like 2026-03-01T12:00:00Z") from None
    if value.tzinfo is None:
        raise CliError(f"--now {text!r} has no time zone; add Z for UTC")
    return value.timestamp()


@hq.command("erase")
@click.argument("loyalty_id")
@db_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def erase(loyalty_id: str, db_url: str, yes: bool) -> None:
    """Right to erasure: delete every row about one customer and keep replays from restoring it.

    Deletes the loyalty id's links and card taps, its linked visits, the
    visits of the same pseudonymous devices, the dead letters naming any
    of them, its consent records and its activation history; records SHA-256 tombstones so that a later replay of those
    events is dropped. SQLite: deleted rows are zeroed (secure_delete) and the
    WAL is checkpointed and truncated. PostgreSQL: the tables are rewritten
    (VACUUM FULL); copies remain in WAL segments until recycled (run
    CHECKPOINT, then SELECT pg_switch_wal(), and expire WAL archives and backups).

    \b
    Example:
      santi hq erase L100042 --db sqlite:///hq.db --yes
    """
    if not yes:
        click.confirm(f"Erase everything about {loyalty_id}? This cannot be undone", abort=True)
    with _store(db_url) as store:
        done = store.erase(loyalty_id)
    click.echo(f"erased {loyalty_id}: {plural(done.events_deleted, 'event')} in {plural(done.visits, 'visit')} of "
               f"{plural(done.subjects, 'pseudonymous visitor')}, {plural(done.dead_letters_deleted, 'dead letter')}, "
               f"{plural(done.consent_deleted, 'consent record')}, {plural(done.activations_deleted, 'activation')}; "
               "tombstones recorded")


@hq.command("gaps")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def gaps(db_url: str, as_json: bool) -> None:
    """Per agent and outbox epoch: missing seqs, what HQ acknowledged, and warnings.

    Missing seqs include those past the highest one received, up to the last
    seq the agent's status reported. A new epoch is an outbox that started
    again from seq 1. Flags: reused seqs (an agent without epochs reset its
    outbox) and two live epochs (two devices with one agent id; the older is
    not acknowledged).

    \b
    Example:
      santi hq gaps --db sqlite:///hq.db
    """
    with _store(db_url) as store:
        report = store.gaps()
    if as_json:
        click.echo(json.dumps([{"store_id": g.store_id, "agent_id": g.agent_id, "epoch": g.epoch,
                                "max_seq": g.max_seq, "acked": g.acked, "agent_last_seq": g.agent_last_seq,
                                "missing": g.missing, "ranges": g.ranges, "evicted_total": g.evicted_total,
                                "reused_seqs": g.reused_seqs, "interleaved": g.interleaved}
                               for g in report], indent=2))
        return
    Console().print(_gaps_table(report))


def _gaps_table(report: list[AgentGaps]) -> Table:
    """What ``santi hq gaps`` shows, for these agent epochs."""
    table = Table("store", "agent", "epoch", "max seq", "acked", "missing", "evicted by agent", "missing ranges",
                  "flags", title="Sequence gaps", title_justify="left")
    for g in report:
        shown = ", ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in g.ranges[:5])
        more = f" (+{len(g.ranges) - 5} more)" if len(g.ranges) > 5 else ""
        flags = [f"{g.reused_seqs} reused seqs"] * bool(g.reused_seqs) + [
            f"TWO LIVE EPOCHS ({g.interleaved} events after a newer epoch began)"] * bool(g.interleaved)
        table.add_row(g.store_id, g.agent_id, g.epoch or "(none)", str(g.max_seq), str(g.acked), str(g.missing),
                      str(g.evicted_total), shown + more or "-", "; ".join(flags) or "-")
    return table


@hq.command("import")
@click.argument("file", type=click.File("rb"))
@db_option
def import_(file: BinaryIO, db_url: str) -> None:
    """Store the events of FILE, written by `santi buffer export`, as if they had come over MQTT.

    Deduplicated on event_id: events HQ already has (received live, or from
    an earlier import of the same file) are counted, not stored twice. A line
    HQ cannot use is dead-lettered (topic import:FILE:LINE) and named here.
    Ends with the seq gaps of the agents in the file, as `santi hq gaps`
    reports them. Exit 0 when every line was usable, 1 when some were
    dead-lettered.

    \b
    Example:
      santi hq import /media/usb/pi-1-events.jsonl --db sqlite:///hq.db
    """
    name = Path(file.name).name
    with _store(db_url, create=True) as store:
        done = import_export(store, file, name, time.time())
        report = [g for g in store.gaps() if (g.store_id, g.agent_id, g.epoch) in done.epochs]
    result = done.ingest
    click.echo(f"{name}: {plural(done.lines, 'line')}, {result.stored} stored, {result.duplicates} already stored, "
               f"{result.suppressed} suppressed (erased or without consent), {result.dead_letters} dead-lettered")
    for number, reason in done.bad_lines[:5]:
        click.echo(f"  line {number}: {reason}")
    if len(done.bad_lines) > 5:
        click.echo(f"  ... {plural(len(done.bad_lines) - 5, 'more bad line')} (santi hq dead-letters)")
    if report:
        Console().print(_gaps_table(report))
    if done.bad_lines:
        raise click.exceptions.Exit(1)


@hq.command("footfall")
@db_option
@click.option("--store", "store_id", default=None,
              help="Store id, as in its site config (default: the only store that sent counts).")
@click.option("--day", "day_text", default=None, help="UTC day, YYYY-MM-DD (default: today, UTC).")
@click.option("--png", "png", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also draw the day (people inside, entries per hour) to this PNG; needs matplotlib.")
@click.option("--json", "as_json", is_flag=True, help="Print the day as JSON, every sample included.")
def footfall(db_url: str, store_id: str | None, day_text: str | None, png: Path | None, as_json: bool) -> None:
    """A store's day of anonymous counts: people who came in per hour, and how many were inside.

    From the agents' footfall.counted and occupancy.sampled events (the
    [footfall] section of a site config turns them on); an hour counted in
    parts shows how many minutes the parts covered.

    \b
    Example:
      santi hq footfall --db sqlite:///hq.db --store fishmonger-01 --day 2026-12-05 --png day.png
    """
    try:
        day = date.fromisoformat(day_text) if day_text is not None else datetime.now(UTC).date()
    except ValueError:
        raise CliError(f"--day {day_text!r} is not a day like 2026-12-05") from None
    if png is not None and importlib.util.find_spec("matplotlib") is None:
        raise CliError("santi hq footfall --png needs matplotlib: pip install 'santi[plot]'")
    with _store(db_url) as store:
        if store_id is None:
            stores = store.stores_with(COUNT_TYPES)
            if len(stores) != 1:
                raise CliError("no store has sent counts yet" if not stores else
                               f"counts from {len(stores)} stores; name one with --store: {', '.join(stores)}")
            store_id = stores[0]
        report = read_day(store, store_id, day)
    if png is not None:
        try:
            render_png(report, png)
        except OSError as exc:
            raise CliError(f"cannot write {png}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    table = Table("hour", "entries", "covered", "inside (mean)", "max", "samples",
                  title=f"{store_id}, {day.isoformat()} (UTC)", title_justify="left")
    for row in table_rows(report):
        table.add_row(*row)
    console = Console(width=80)
    console.print(table)
    if not report.samples and all(h.entries is None for h in report.hours):
        console.print("no counts stored for this day")
    else:
        console.print(f"entries over the day: {report.entries:.0f} ± {report.entries_sd:.0f}")
    if png is not None:
        console.print(f"wrote {png}")


@hq.command("dead-letters")
@db_option
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1), help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON, payloads included.")
def dead_letters(db_url: str, limit: int, as_json: bool) -> None:
    """Payloads HQ could not use, newest first, with the reason.

    \b
    Example:
      santi hq dead-letters --db sqlite:///hq.db --limit 5
    """
    with _store(db_url) as store:
        found = store.dead_letters(limit)
        counts = store.counts()
    if as_json:
        click.echo(json.dumps([d.__dict__ for d in found], indent=2))
        return
    title = (f"Dead letters: {counts['dead_letters']} kept ({counts['dead_letter_bytes']} bytes), "
             f"{counts['dead_letters_evicted']} evicted by the caps")
    table = Table("received", "topic", "bytes", "reason", title=title, title_justify="left")
    for d in found:
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.received_at)), d.topic, str(d.size),
                      d.reason)
    Console().print(table)


_YES_NO = click.Choice(["yes", "no"])


@hq.group("consent")
def consent() -> None:
    """Consent per customer and purpose: profiling (build a profile), personalisation (address them)."""


@consent.command("set")
@click.argument("loyalty_id")
@click.option("--profiling", type=_YES_NO, default=None, help="May HQ join presence to this loyalty id?")
@click.option("--personalisation", type=_YES_NO, default=None, help="May activation rules address the customer?")
@click.option("--source", default="cli", show_default=True, help="Where the record comes from.")
@click.option("--ts", "ts_text", default=None, help="When the customer decided (RFC 3339); default now.")
@db_option
def consent_set(loyalty_id: str, profiling: str | None, personalisation: str | None, source: str,
                ts_text: str | None, db_url: str) -> None:
    """Record what a customer granted or withdrew; a withdrawal holds from the next event on.

    Withdrawing profiling deletes the links that joined the customer's visits
    to the loyalty id (the visits stay as an anonymous visitor's).

    \b
    Example:
      santi hq consent set L100042 --profiling yes --personalisation no --source store-tablet
    """
    given = {"profiling": profiling, "personalisation": personalisation}
    if all(v is None for v in given.values()):
        raise CliError("give --profiling and/or --personalisation (yes or no)")
    when = utc_from_epoch(_parse_now(ts_text))
    try:
        records = [ConsentRecord(loyalty_id=loyalty_id, purpose=purpose, granted=value == "yes", ts=when,
                                 source=source) for purpose, value in given.items() if value is not None]
    except ValueError as exc:
        raise CliError(f"bad consent record: {str(exc).splitlines()[-1].strip()}") from None
    with _store(db_url, create=True) as store:
        change = store.add_consent(records, time.time())
        now = store.consent_state(loyalty_id)
    click.echo(f"{loyalty_id}: {purposes_text(now.granted)}"
               + (f" ({change.unlinked} links deleted)" if change.unlinked else "")
               + (" (not stored: this customer was erased)" if change.erased else ""))


@consent.command("show")
@click.argument("loyalty_id")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON, every record included.")
def consent_show(loyalty_id: str, db_url: str, as_json: bool) -> None:
    """What holds for one customer now, and the record that decided each purpose.

    \b
    Example:
      santi hq consent show L100042
    """
    with _store(db_url) as store:
        records = store.consent_records(loyalty_id)
    now = consent_state(loyalty_id, records)
    if as_json:
        click.echo(json.dumps({"loyalty_id": loyalty_id,
                               "granted": {p: now.allows(p) for p in PURPOSES},
                               "records": [json.loads(r.model_dump_json()) for r in records]}, indent=2))
        return
    click.echo(f"{loyalty_id}: {purposes_text(now.granted)}")
    for purpose in PURPOSES:
        record = now.decided_by.get(purpose)
        click.echo(f"  {purpose}: " + ("no record (refused)" if record is None else
                                      f"{'granted' if record.granted else 'refused'} at "
                                      f"{record.ts.isoformat().replace('+00:00', 'Z')} by {record.source}"))


@consent.command("import")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--source", default="import", show_default=True, help="Source of records that name none.")
@db_option
def consent_import(path: Path, source: str, db_url: str) -> None:
    """Import a CSV (loyalty_id,purpose,granted,ts[,source]) or JSON Lines export: all or nothing.

    A bad line is one error naming the file and line, and nothing is stored.

    \b
    Example:
      santi hq consent import examples/consent.csv
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    records = parse_import(text, path, source=source)
    with _store(db_url, create=True) as store:
        change = store.add_consent(records, time.time())
    customers = len({r.loyalty_id for r in records})
    click.echo(f"imported {path}: {plural(len(records), 'record')} of {plural(customers, 'customer')}, "
               f"{change.stored} new"
               + (f", {change.unlinked} links deleted" if change.unlinked else "")
               + (f", {change.erased} of erased customers skipped" if change.erased else ""))


@hq.command("activations")
@db_option
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1), help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def activations(db_url: str, limit: int, as_json: bool) -> None:
    """Rules that fired, newest first: customer, triggering event and each action's delivery state.

    \b
    Example:
      santi hq activations --limit 20
    """
    with _store(db_url) as store:
        found = store.activations(limit)
    if as_json:
        click.echo(json.dumps([a.__dict__ for a in found], indent=2))
        return
    table = Table("fired", "rule", "loyalty id", "store", "sector", "event", "deliveries",
                  title=f"Activations ({len(found)} newest)", title_justify="left")
    for a in found:
        states = ", ".join(f"{d['kind']} {d['state']}" + (f" ({d['detail']})" if d["detail"] else "")
                           for d in a.deliveries)
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a.fired_at)), a.rule_id, a.loyalty_id,
                      a.store_id, a.sector_id or "-", a.event_id, states or "-")
    Console().print(table)
