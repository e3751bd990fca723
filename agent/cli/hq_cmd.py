"""``santi hq``: the reference HQ subscriber and the customer profiles it builds."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import click
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from agent.cli.errors import CliError
from hq.render import print_profile
from hq.store import DEAD_LETTER_BYTES, DEAD_LETTER_ROWS, AgentGaps, Store, StoreError, open_store
from hq.subscriber import BrokerError, HqSubscriber, Stats
from hq.views import loyalty_profile, visitor_profile

DEFAULT_DB = "sqlite:///santi-hq.sqlite"

db_option = click.option(
    "--db", "db_url", envvar="SANTI_HQ_DB", default=DEFAULT_DB, show_default=True,
    help="sqlite:///path.db or postgresql://user@host/db[?schema=name] (env SANTI_HQ_DB).",
)


@contextmanager
def _store(db_url: str) -> Iterator[Store]:
    try:
        store = open_store(db_url)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    try:
        yield store
    except StoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()


def parse_broker(url: str) -> tuple[str, int, bool]:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` → (host, port, tls)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise CliError(f"bad broker URL {url!r}: use mqtt://host:1883 or mqtts://host:8883")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise CliError(f"bad broker URL {url!r}: the port is not a number 1-65535") from None
    return parts.hostname, port, tls


def _password(password_file: Path | None, password_env: str | None) -> SecretStr | None:
    if password_file is not None:
        try:
            return SecretStr(password_file.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise CliError(f"cannot read --password-file {password_file}: {exc.strerror}") from None
    if password_env is not None:
        value = os.environ.get(password_env)
        if value is None:
            raise CliError(f"--password-env: environment variable {password_env} is not set")
        return SecretStr(value)
    return None


@click.group()
def hq() -> None:
    """HQ: subscribe to every store's events and keep one profile per customer."""


@hq.command("run")
@click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True,
              help="Broker URL, mqtt://host:port or mqtts://host:port (TLS).")
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
def run(broker: str, group: str, db_url: str, client_id: str | None, session_expiry_s: int,
        username: str | None, password_file: Path | None, password_env: str | None, ca_file: Path | None,
        batch_size: int, flush_ms: float, report_s: float, max_seconds: float | None,
        connect_timeout_s: float, dead_letter_rows: int, dead_letter_mb: int) -> None:
    """Subscribe to every store's events, store them and acknowledge them, until SIGINT or SIGTERM.

    Prints one line per --report-s seconds: events received, newly stored,
    duplicates, dead letters, acknowledgements, the ingest rate and missing
    seqs. Exits non-zero with the reason when the broker cannot be reached or
    refuses us at start, or when the writer fails.

    \b
    Example:
      santi hq run --broker mqtt://127.0.0.1:1883 --group hq --db sqlite:///hq.db
    """
    host, port, tls = parse_broker(broker)
    if tls and ca_file is None:
        raise CliError("mqtts:// needs --ca-file (the CA that signed the broker's certificate)")
    try:
        store = open_store(db_url, dead_letter_rows=dead_letter_rows, dead_letter_bytes=dead_letter_mb * 2**20)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    try:
        sub = HqSubscriber(host, port, store, group,
                           client_id=client_id or f"santi-hq-{group}-{os.uname().nodename}",
                           session_expiry_s=session_expiry_s, username=username,
                           password=_password(password_file, password_env), tls_ca=ca_file,
                           batch_size=batch_size, flush_ms=flush_ms)
        sub.start()
    except (StoreError, ValueError, BrokerError) as exc:
        store.close()
        raise CliError(str(exc)) from None
    if not sub.wait_connected(connect_timeout_s):
        sub.stop()
        store.close()
        raise CliError(f"broker {host}:{port} refused HQ: {sub.refused}" if sub.refused else
                       f"no subscription on {host}:{port} within {connect_timeout_s:g} s")
    stop = threading.Event()

    def _signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, _signal) for s in (signal.SIGINT, signal.SIGTERM)}
    click.echo(f"santi hq: {sub.topic} on {host}:{port} -> {db_url.rsplit('@', maxsplit=1)[-1]}", err=True)
    started = time.monotonic()
    last = sub.stats()
    last_t = started
    try:
        while not stop.wait(report_s):
            now = time.monotonic()
            current = sub.stats()
            click.echo(_progress(current, last, now - last_t, _safe_gaps(sub)))
            last, last_t = current, now
            if current.failure is not None or (max_seconds is not None and now - started >= max_seconds):
                break
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sub.stop()
        store.close()
    final = sub.stats()
    click.echo(f"stopped: received={final.received} stored={final.stored} duplicates={final.duplicates} "
               f"dead_letters={final.dead_letters} suppressed={final.suppressed} acks={final.acks}")
    if final.failure is not None:
        raise CliError(final.failure)


def _safe_gaps(sub: HqSubscriber) -> list[AgentGaps] | None:
    try:
        return sub.gaps()
    except StoreError:
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
            + (f" ({current.failure})" if current.failure else ""))


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
    visits of the same pseudonymous devices and the dead letters naming any
    of them; records SHA-256 tombstones so that a later replay of those
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
    click.echo(f"erased {loyalty_id}: {done.events_deleted} events in {done.visits} visits of "
               f"{done.subjects} pseudonymous visitors, {done.dead_letters_deleted} dead letters; "
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
    table = Table("store", "agent", "epoch", "max seq", "acked", "missing", "evicted by agent", "missing ranges",
                  "flags", title="Sequence gaps", title_justify="left")
    for g in report:
        shown = ", ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in g.ranges[:5])
        more = f" (+{len(g.ranges) - 5} more)" if len(g.ranges) > 5 else ""
        flags = [f"{g.reused_seqs} reused seqs"] * bool(g.reused_seqs) + [
            f"TWO LIVE EPOCHS ({g.interleaved} events after a newer epoch began)"] * bool(g.interleaved)
        table.add_row(g.store_id, g.agent_id, g.epoch or "(none)", str(g.max_seq), str(g.acked), str(g.missing),
                      str(g.evicted_total), shown + more or "-", "; ".join(flags) or "-")
    Console().print(table)


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
