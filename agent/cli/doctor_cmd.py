"""``santi doctor``: is this box ready to run the agent? Each problem with its fix."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from agent.checks import Check
from agent.cli.config_cmd import DEFAULT_SITE
from agent.doctor import run_checks, worst
from agent.text import Table, plural

EXIT_FAILED = 1
STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def _table(checks: list[Check]) -> Table:
    table = Table("check", "", "detail", "fix", title="santi doctor", expand=False)
    for check in checks:
        table.add_row(escape(check.name), f"[{STYLE[check.status]}]{check.status}[/]", escape(check.detail),
                      escape(check.fix))
    return table


@click.command()
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_SITE,
              show_default=True, help="Site config of this store.")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Use this state directory instead of [agent] state_dir.")
@click.option("--timeout", type=click.FloatRange(0.1, 60.0), default=3.0, show_default=True,
              help="Seconds to wait for each device or the broker.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(config: Path, state_dir: Path | None, timeout: float, as_json: bool) -> None:
    """Check the adapters, broker, clock, disk, permissions and config; print a fix for each problem.

    Exit code 0 when nothing failed (warnings allowed), 1 when a check failed.

    \b
    Example:
      santi doctor --config /etc/santi/site.toml
      santi doctor --config examples/fishmonger.toml --state-dir /tmp/santi --json
    """
    err = Console(stderr=True)
    with err.status("checking…") as status:
        checks = run_checks(config, state_dir=state_dir, now=time.time(), timeout=timeout,
                            progress=lambda name: status.update(f"checking {name}…"))
    verdict = worst(checks)
    if as_json:
        click.echo(json.dumps({"status": verdict, "checks": [check.to_dict() for check in checks]}, indent=2))
    else:
        console = Console()
        console.print(_table(checks))
        failed = sum(check.status == "fail" for check in checks)
        warned = sum(check.status == "warn" for check in checks)
        console.print(f"[{STYLE[verdict]}]{failed} failed, {plural(warned, 'warning')}, "
                      f"{len(checks) - failed - warned} ok[/]")
    if verdict == "fail":
        raise SystemExit(EXIT_FAILED)
