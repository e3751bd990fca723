"""``santi status``: is the agent alive, is the uplink up, how much is waiting — at a glance."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import rich.table
from rich.console import Console, Group
from rich.markup import escape

from agent.cli.config_cmd import agent_state_dir, state_dir_options
from agent.statusfile import STALE_AFTER_S, StatusReport, duration, read_status, utc_text
from agent.text import Table, plural

EXIT_DEGRADED = 1
EXIT_NOT_RUNNING = 3
STATE_STYLE = {"online": "bold green", "degraded": "bold yellow", "stale": "bold red", "stopped": "bold red",
               "not running": "bold red"}
UPLINK_STYLE = {"online": "green", "connecting": "yellow", "offline": "red", "auth_failed": "bold red",
                "stopped": "red"}
SOURCE_STYLE = {"up": "green", "degraded": "yellow", "down": "red"}


def _summary(report: StatusReport, now: float) -> rich.table.Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    state = f"[{STATE_STYLE[report.state]}]{report.state}[/]  {escape(report.reason)}"
    if report.running and report.uptime_s is not None:
        state += f"  (up {duration(report.uptime_s)})"
    grid.add_row("agent", state)
    age = "none" if report.file_age_s is None else f"{duration(report.file_age_s)} old"
    grid.add_row("status file", f"{escape(str(report.state_dir / 'status.json'))} ({age})")
    if report.uplink_state is not None:
        uplink = f"[{UPLINK_STYLE.get(report.uplink_state, 'white')}]{report.uplink_state}[/]"
        if report.uplink_error:
            uplink += f"  last error: {escape(report.uplink_error)}"
        grid.add_row("uplink", uplink)
    if report.outbox is not None:
        box = report.outbox
        text = f"{box.depth} event{'s' if box.depth != 1 else ''} waiting"
        if box.oldest_ts is not None:
            text += f", oldest unsent {utc_text(box.oldest_ts)} ({duration(now - box.oldest_ts)} ago)"
        if box.evicted_total:
            text += f", [bold red]{box.evicted_total} evicted by bounds[/]"
        grid.add_row("outbox", text)
    elif report.outbox_error:
        grid.add_row("outbox", escape(report.outbox_error))
    acknowledgement = _acknowledgement(report, now)
    if acknowledgement is not None:
        grid.add_row("acknowledgement", acknowledgement)
    if report.tracks is not None:
        grid.add_row("tracking", f"{plural(report.tracks, 'emitter')}, {plural(report.visits or 0, 'open visit')}")
    if report.footfall is not None:
        grid.add_row("footfall", escape(report.footfall.text()))
    if report.queue_dropped:
        grid.add_row("locator queue", f"[bold red]{plural(report.queue_dropped, 'record')} dropped (queue full)[/]")
    return grid


BROKER_ACK_WARNING = ('[bold yellow]ack = "broker": events leave the outbox at the broker\'s PUBACK, not when HQ '
                      "has stored them; a broker restart or an absent HQ can lose them[/]")


def _acknowledgement(report: StatusReport, now: float) -> str | None:
    """HQ's acknowledgement in one line: how far HQ has confirmed, what the broker took that HQ has not."""
    mode = None if report.ack is None else report.ack.mode
    if mode == "broker":
        return BROKER_ACK_WARNING
    box = report.outbox
    if box is None or box.epoch is None:
        return None
    text = f"HQ acknowledged through seq {box.acked_seq} (epoch {escape(box.epoch)})"
    if box.sent_unacked:
        text += f", {box.sent_unacked} sent and waiting for HQ's ack"
        if box.oldest_sent_at is not None:
            age = now - box.oldest_sent_at
            style = "bold red" if age > 300 else "yellow"
            text += f" ([{style}]oldest {duration(age)}[/])"
    if report.ack is not None and report.ack.resent:
        text += f", {report.ack.resent} re-sent"
    if report.ack is not None and report.ack.dropped:
        text += f", [bold red]{report.ack.dropped} unusable acks dropped[/]"
    return text


def _sources(report: StatusReport) -> Table:
    table = Table("source", "state", "accepted", "rate /s", "dropped", "last error", title="Sources",
                  title_justify="left")
    for source in report.sources:
        rate = "-" if source.rate_per_s is None else f"{source.rate_per_s:.1f}" + (" avg" if source.rate_is_mean else "")
        table.add_row(escape(source.name), f"[{SOURCE_STYLE.get(source.state, 'white')}]{source.state}[/]",
                      str(source.accepted), rate, _drops(source.dropped, source.dropped_by_reason), escape(source.last_error or ""))
    return table


def _drops(total: int, by_reason: tuple[tuple[str, int], ...]) -> str:
    """The total, then each reason with its count (``12: not_json 10, too_deep 2``): a total alone says nothing to act on."""
    if not by_reason:
        return str(total)
    return f"{total}: " + escape(", ".join(f"{reason} {count}" for reason, count in by_reason))


def _events(report: StatusReport) -> Table | None:
    events = report.recent_events
    title = "Last events"
    if not events and report.outbox is not None and report.outbox.newest:
        events, title = report.outbox.newest, "Newest unsent events (outbox)"
    if not events:
        return None
    table = Table("seq", "type", "time (UTC)", "subject", "detail", title=title, title_justify="left")
    for event in events:
        table.add_row(str(event.seq), event.type, utc_text(event.ts) if event.ts else "-",
                      escape(event.subject[:16]), escape(event.detail))
    return table


@click.command("status")
@state_dir_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(config: Path | None, state_dir: Path | None, as_json: bool) -> None:
    """Show the running agent: health, uplink, outbox depth, HQ's acknowledgement, per-source rates, newest events.

    Read from the agent's status file (refreshed every 5 s) and its outbox,
    without disturbing either. A status file older than 15 s means the agent
    is not running (or is hung).

    Exit code 0 when the agent runs healthy, 1 when it runs degraded (a source
    down, the uplink offline), 3 when it is not running, stopped or stale,
    2 on bad input.

    \b
    Example:
      santi status --config /etc/santi/site.toml
      santi status --state-dir /tmp/santi --json
    """
    state_dir = agent_state_dir(config, state_dir)
    now = time.time()
    report = read_status(state_dir, now, stale_after_s=STALE_AFTER_S)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        console = Console()
        title = "santi status"
        if report.store_id:
            title += f" — {report.store_id} / {report.agent_id}"
        console.print(f"[bold]{escape(title)}[/]")
        parts: list[rich.table.Table] = [_summary(report, now)]
        if report.sources:
            parts.append(_sources(report))
        events = _events(report)
        if events is not None:
            parts.append(events)
        console.print(Group(*parts))
    if not report.running:
        raise SystemExit(EXIT_NOT_RUNNING)
    if report.state == "degraded":
        raise SystemExit(EXIT_DEGRADED)
