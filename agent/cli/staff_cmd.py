"""``santi staff``: the customers in the store now whose staff card HQ sent, where they are, and what to say."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from agent.cli.config_cmd import agent_state_dir, state_dir_options
from agent.staffboard import BoardView, read_board
from agent.statusfile import duration
from agent.text import Table


def _table(view: BoardView, now: float) -> Table:
    count = len(view.cards)
    title = f"Staff cards: {count} customer{'s' if count != 1 else ''} in the store"
    if view.updated is not None:
        title += f" (updated {duration(max(0.0, now - view.updated))} ago)"
    table = Table("customer", "where now", "since", "rule", "what to say", "facts", title=title,
                  title_justify="left", expand=True)
    for card in view.cards:
        facts = ", ".join(f"{k} {v}" for k, v in (card.get("facts") or {}).items())
        received = card.get("received_at")
        since = duration(max(0.0, now - received)) if isinstance(received, int | float) else "-"
        table.add_row(escape(str(card.get("loyalty_id"))), escape(str(card.get("current_sector_id") or "-")), since,
                      escape(str(card.get("rule_id"))), escape(str(card.get("text"))), escape(facts))
    if view.problem:
        table.caption = escape(view.problem)
    return table


@click.command("staff")
@state_dir_options
@click.option("--json", "as_json", is_flag=True, help="Print the cards once as JSON and exit.")
@click.option("--once", is_flag=True, help="Print the table once and exit instead of following it live.")
def staff(config: Path | None, state_dir: Path | None, as_json: bool, once: bool) -> None:
    """Show the staff cards of customers in the store now, live: who, where, and the word to say.

    HQ sends a card when an activation rule fires for a customer who agreed to
    be addressed; the card stays while their visit lasts. Reads the running
    agent's staff.json (readable by the service user only: it names loyalty
    customers). Ctrl-C ends the live view.

    \b
    Example:
      santi staff --config /etc/santi/site.toml
      santi staff --state-dir /var/lib/santi --json
    """
    state_dir = agent_state_dir(config, state_dir)
    if as_json:
        view = read_board(state_dir)
        click.echo(json.dumps({"updated": view.updated, "cards": list(view.cards), "problem": view.problem}, indent=2))
        return
    # Piped output is not cut at 80 columns: a log or a file wants the whole text.
    console = Console(width=None if sys.stdout.isatty() else 200)
    if once:
        console.print(_table(read_board(state_dir), time.time()))
        return
    try:
        with Live(_table(read_board(state_dir), time.time()), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(1.0)
                live.update(_table(read_board(state_dir), time.time()))
    except KeyboardInterrupt:
        return
