"""``santi buffer``: what waits in the outbox, a way to carry it out by hand, and "send it now".

``drain`` never opens the outbox for writing while the agent runs (two
writers would each keep their own seq and byte counters): with a running
agent it sends SIGUSR1, which cuts the uplink's reconnect wait short, and
watches the depth fall; with no agent running it runs the agent's own
uplink on the file until it is empty or the time is up. With ``ack = "hq"``
an event leaves the outbox only when HQ acknowledges it, so the outcome
tells apart what HQ has acknowledged, what the broker took and still waits
for HQ's ack, and what was not sent at all, and says why the drain stopped.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.cli.config_cmd import DEFAULT_SITE, site_option
from agent.cli.errors import CliError
from agent.config import load_site
from agent.events import AgentStatus, utc_from_epoch, uuid7
from agent.outbox import (
    OUTBOX_FILE,
    Outbox,
    OutboxError,
    Waiting,
    export_rows,
    summarize,
    waiting_through,
    with_outbox_figures,
)
from agent.statusfile import read_status
from agent.text import Table, plural
from agent.uplink import Uplink

log = logging.getLogger(__name__)

EXIT_LEFT = 1
"""``drain`` ran out of time with events still waiting."""
POLL_S = 0.25


def _outbox_path(site_file: Path, state_dir: Path | None) -> Path:
    """The outbox of the agent ``--state-dir`` names, else of the one ``--config``'s [agent] state_dir names."""
    return (state_dir or load_site(site_file).agent.state_dir) / OUTBOX_FILE


state_dir_option = click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                                help="The agent's state directory (overrides the config's [agent] state_dir).")


@click.group()
def buffer() -> None:
    """The outbox: events stored on this device and not yet acknowledged by HQ (or the broker)."""


@buffer.command("status")
@site_option("site", positional=True)
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def status(site: Path, state_dir: Path | None, as_json: bool) -> None:
    """Show how many events wait in the agent's outbox, and what was evicted.

    Reads the file without changing it, so it is safe while the agent runs.

    \b
    Example:
      santi buffer status --config /etc/santi/site.toml
      santi buffer status --state-dir /var/lib/santi --json
    """
    summary = summarize(_outbox_path(site, state_dir))
    oldest = summary.stats.oldest_ts
    oldest_text = None if oldest is None else utc_from_epoch(oldest).isoformat()
    figures = {
        "path": str(summary.path),
        "depth": summary.stats.depth,
        "oldest_event": oldest_text,
        "last_seq": summary.last_seq,
        "stored_bytes": summary.stored_bytes,
        "file_bytes": summary.file_bytes,
        "evicted_total": summary.stats.evicted_total,
        "evicted_unreported": summary.stats.evicted_since_last,
    }
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    table = Table("", "", title=f"Outbox {summary.path}", show_header=False)
    table.add_row("events waiting", f"{summary.stats.depth:,}")
    table.add_row("oldest waiting event", oldest_text or "—")
    table.add_row("last seq assigned", f"{summary.last_seq:,}")
    table.add_row("stored / file size", f"{summary.stored_bytes / 1e6:,.1f} MB / {summary.file_bytes / 1e6:,.1f} MB")
    table.add_row("evicted by bounds (ever)", f"{summary.stats.evicted_total:,}")
    table.add_row("evicted, not yet reported", f"{summary.stats.evicted_since_last:,}")
    Console().print(table)


@buffer.command("export")
@site_option("site")
@state_dir_option
@click.argument("paths", nargs=-1, metavar="OUT", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True))
@click.option("--after-seq", type=int, default=0, show_default=True, help="Only events with a higher seq.")
def export(site: Path, state_dir: Path | None, paths: tuple[Path, ...], after_seq: int) -> None:
    """Write every waiting event to OUT as JSON Lines (the wire form), in seq order; '-' is stdout.

    For when the uplink stays down for days: HQ imports the file
    (santi hq import FILE) and deduplicates on event_id, so exporting does
    not remove anything and an event that also arrives live is stored once.

    \b
    Example:
      santi buffer export --config /etc/santi/site.toml /media/usb/pi-1-events.jsonl
    """
    if len(paths) == 2:  # the earlier spelling, SITE OUT
        if site not in (DEFAULT_SITE, paths[0]):
            raise CliError(f"two site configs given ({site} and {paths[0]}): give one, with --config")
        site, paths = paths[0], paths[1:]
    if len(paths) != 1:
        raise click.UsageError("give one OUT file ('-' for stdout)", ctx=click.get_current_context())
    outbox = _outbox_path(site, state_dir)
    with click.open_file(str(paths[0]), "w", encoding="utf-8") as out:
        count = _export(outbox, out, after_seq)
    click.echo(f"exported {plural(count, 'event')}", err=True)


def _export(outbox: Path, out: IO[str], after_seq: int) -> int:
    """Write the waiting rows' payloads to ``out``, one a line; how many."""
    count = 0
    for row in export_rows(outbox, after_seq):
        out.write(row.payload.decode("utf-8") + "\n")
        count += 1
    return count


def _running_agent(state_dir: Path) -> int | None:
    """The pid of the agent serving this state directory, if one is alive."""
    report = read_status(state_dir, time.time())
    if not report.running or report.pid is None:
        return None
    try:
        os.kill(report.pid, 0)
    except OSError:
        return None
    return report.pid


def _waiting(path: Path, through_seq: int) -> Waiting:
    return waiting_through(path, through_seq)


def _watch(path: Path, through_seq: int, start: int, timeout: float, uplink_state: Callable[[], str | None],
           quiet: bool) -> tuple[Waiting, str]:
    """Show the events up to ``through_seq`` leaving until none is left or ``timeout``.

    Returns what is left and why the watch stopped. Only what waited when the
    command started counts: in a busy store new events keep arriving and the
    outbox may never be empty.
    """
    deadline = time.monotonic() + timeout
    left = Waiting(start, 0)
    with Progress(TextColumn("draining the outbox"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True, disable=quiet) as progress:
        task = progress.add_task("drain", total=start)
        while left.total > 0:
            if uplink_state() == "auth_failed":
                return left, "the broker refused the login"
            if time.monotonic() >= deadline:
                return left, f"time up after {timeout:g} s"
            time.sleep(POLL_S)
            left = _waiting(path, through_seq)
            progress.update(task, completed=start - left.total)
    return left, "all acknowledged"


def _why(left: Waiting, reason: str, ack_mode: str, error: str | None, storage: str | None = None) -> str:
    """The reason the drain stopped, with the likeliest cause of what is left."""
    if not left.total:
        return reason
    if storage:
        return f"{reason}: the outbox cannot delete what was sent: {storage}"
    if left.sent == left.total and ack_mode == "hq":
        return f"{reason}: the broker has them all, HQ has not acknowledged them (is `santi hq run` up?)"
    return f"{reason}: {error}" if error else reason


def _agent_outbox_error(state_dir: Path) -> str | None:
    """The running agent's last outbox write failure, from its status file (None if it has none or no file)."""
    try:
        data = json.loads((state_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("outbox_error") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _store_draining_status(outbox: Outbox, store_id: str, agent_id: str) -> None:
    """An ``agent.status`` first, so HQ learns the lowest seq this outbox still holds and acknowledges past
    what the bounds evicted (the agent, stopped, writes none)."""
    now = time.time()
    draft = AgentStatus(event_id=uuid7(int(now * 1000)), store_id=store_id, agent_id=agent_id,
                        ts=utc_from_epoch(now), subject=agent_id, state="draining", uptime_s=0.0, outbox_depth=0)
    try:
        outbox.append_status(with_outbox_figures(draft))
    except OutboxError as exc:
        log.warning("could not store a status before draining", extra={"error": str(exc)})


@buffer.command("drain")
@site_option("site", positional=True)
@state_dir_option
@click.option("--timeout", type=click.FloatRange(min=1.0), default=60.0, show_default=True,
              help="Seconds to keep sending before giving up.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def drain(site: Path, state_dir: Path | None, timeout: float, as_json: bool) -> None:
    """Send what waits in the agent's outbox to the broker now, showing progress.

    With the agent running, it is asked (SIGUSR1) to reconnect at once rather
    than at the end of its backoff wait; with no agent running, this command
    runs the agent's uplink itself. Exits 1 if events are still waiting when
    the time is up. The outcome says how many events HQ acknowledged, how
    many the broker took that still wait for HQ's acknowledgement, how many
    were not sent, and why the drain stopped (the time is up, the uplink's last
    error, an outbox that cannot delete on a full disk).

    \b
    Example:
      santi buffer drain --config /etc/santi/site.toml --timeout 120
    """
    config = load_site(site)
    state = state_dir or config.agent.state_dir
    path = state / OUTBOX_FILE
    summary = summarize(path)
    start, through_seq = summary.stats.depth, summary.last_seq
    pid = _running_agent(state)
    error: str | None = None
    storage: str | None = None
    left, reason = Waiting(0, 0), "nothing waiting"
    if start == 0:
        pass
    elif pid is not None:
        try:
            os.kill(pid, signal.SIGUSR1)
        except PermissionError:
            raise CliError(f"not allowed to signal the agent (pid {pid}): run as root or as the agent's user"
                           ) from None
        except ProcessLookupError:
            raise CliError(f"the agent (pid {pid}) exited; run the command again") from None

        def agent_uplink() -> str | None:
            return read_status(state, time.time()).uplink_state

        left, reason = _watch(path, through_seq, start, timeout, agent_uplink, as_json)
        if left.total:
            error = read_status(state, time.time()).uplink_error
            storage = _agent_outbox_error(state)
    else:
        outbox = Outbox.open(path, config.buffer)
        # The outcome line below carries the uplink's last error; its log line would say it twice.
        logging.getLogger("agent.uplink").setLevel(logging.ERROR)
        with outbox:
            if config.uplink.ack == "hq":
                _store_draining_status(outbox, config.store.id, config.agent.id)
            uplink = Uplink(config.uplink, outbox, store_id=config.store.id, agent_id=config.agent.id)
            uplink.start()
            try:
                left, reason = _watch(path, through_seq, start, timeout, lambda: uplink.state, as_json)
            finally:
                uplink.stop(drain_deadline_s=2.0)
                error = uplink.last_error
                storage = outbox.last_error
        left = _waiting(path, through_seq)  # stop() may have sent or recorded a few more
    acknowledged = start - left.total
    outcome = {
        "sent": acknowledged + left.sent, "acknowledged": acknowledged, "awaiting_ack": left.sent,
        "not_sent": left.total - left.sent, "left": left.total, "ack_mode": config.uplink.ack,
        "stopped": _why(left, reason, config.uplink.ack, None, storage), "agent_pid": pid,
        "uplink_error": error if left.total else None,
    }
    if as_json:
        click.echo(json.dumps(outcome))
    else:
        how = f" through the running agent (pid {pid})" if pid is not None else ""
        acked = "acknowledged by HQ" if config.uplink.ack == "hq" else "taken by the broker"
        click.echo(f"sent {plural(acknowledged + left.sent, 'event')}{how}: {acknowledged:,} {acked}, "
                   f"{left.sent:,} waiting for HQ's acknowledgement; {left.total - left.sent:,} not sent")
        click.echo(f"stopped: {_why(left, reason, config.uplink.ack, error, storage)}", err=bool(left.total))
    if left.total:
        raise SystemExit(EXIT_LEFT)
