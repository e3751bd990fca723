"""``santi config``: check a site config and show what it describes."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from rich.console import Console

from agent.cli.errors import CliError
from agent.config import load_site, site_warnings
from agent.text import Table

DEFAULT_SITE = Path("/etc/santi/site.toml")

F = TypeVar("F", bound=Callable[..., Any])


SITE_FILE = click.Path(path_type=Path, dir_okay=False)


class _HiddenArgument(click.Argument):
    """A positional kept for old command lines: parsed, never shown in the usage line."""

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return []


def site_option(dest: str = "config", *, default: Path | None = DEFAULT_SITE, required: bool = False,
                positional: bool = False, help_text: str = "Site config (TOML)") -> Callable[[F], F]:
    """``--config FILE``: the one spelling of the site file, passed to the command as ``dest``.

    The spellings of earlier releases still work for one more, hidden from
    the help: ``--site FILE``, and, with ``positional``, the file as the
    command's first argument. Two different files in two spellings is an
    error, not a guess.
    """
    shown_default = f" [default: {default}]" if default is not None else ""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = [kwargs.pop(name) for name in ("site_config", "site_option_alias", "site_argument_alias")
                     if name in kwargs]
            paths = list(dict.fromkeys(path for path in given if path is not None))
            if len(paths) > 1:
                raise CliError(f"two site configs given ({paths[0]} and {paths[1]}): give one, with --config")
            path = paths[0] if paths else default
            if path is None and required:
                raise click.UsageError("Missing option '--config'.", ctx=click.get_current_context())
            kwargs[dest] = path
            return command(*args, **kwargs)

        decorated: Any = wrapper
        if positional:
            decorated = click.argument("site_argument_alias", required=False, type=SITE_FILE,
                                       cls=_HiddenArgument)(decorated)
        decorated = click.option("--site", "site_option_alias", type=SITE_FILE, default=None, hidden=True)(decorated)
        decorated = click.option("--config", "site_config", type=SITE_FILE, default=None, metavar="FILE",
                                 help=f"{help_text}{shown_default}.")(decorated)
        return cast(F, decorated)

    return decorate


def state_dir_options(command: F) -> F:
    """``--config`` / ``--state-dir``: which running agent a reading command looks at."""
    command = click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                           help="The agent's state directory (overrides --config).")(command)
    return click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False), default=None,
                        help=f"Site config; its [agent] state_dir is read (default {DEFAULT_SITE}).")(command)


def agent_state_dir(config: Path | None, state_dir: Path | None) -> Path:
    """The state folder those options name; exit 2 with one line when it does not exist."""
    if state_dir is None:
        state_dir = load_site(config or DEFAULT_SITE).agent.state_dir
    if not state_dir.is_dir():
        raise CliError(f"state directory {state_dir} does not exist (wrong --state-dir, or the agent never ran here)")
    return state_dir


@click.group()
def config() -> None:
    """Site configs: validate them before a store relies on them."""


@config.command("check")
@site_option("file", positional=True, help_text="Site config to check")
@click.option("--json", "as_json", is_flag=True, help="Print the validated config as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
def check(file: Path, as_json: bool, quiet: bool) -> None:
    """Validate the site config; exit 0 if it is good, 2 with a one-line error if not.

    A config the agent can run with but that works worse than it could (two
    receivers hearing BLE, say) is good: each such warning is one line on
    stderr, and the exit code stays 0.

    \b
    Example:
      santi config check --config examples/fishmonger.toml
    """
    site = load_site(file)
    for warning in site_warnings(site):
        click.echo(f"santi: warning: {warning}", err=True)
    if quiet:
        return
    if as_json:
        click.echo(json.dumps(site.model_dump(mode="json"), indent=2))
        return
    console = Console()
    console.print(f"[bold]{site.store.name}[/] ({site.store.id}), agent {site.agent.id}: config OK")
    receivers = Table("receiver", "kind", "x", "y", "z", "rssi@1m", "n", title="Receivers")
    for rx in site.receivers:
        receivers.add_row(rx.id, rx.kind, f"{rx.x:g}", f"{rx.y:g}", f"{rx.z:g}",
                          f"{rx.rssi_at_1m:g}", f"{rx.path_loss_exponent:g}")
    console.print(receivers)
    sectors = Table("sector", "name", "area m²", "adjacent", "entrance", title="Sectors")
    for sector, neighbours in zip(site.sectors, site.adjacency(), strict=True):
        xs = [p[0] for p in sector.polygon]
        ys = [p[1] for p in sector.polygon]
        area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))
        sectors.add_row(sector.id, sector.name, f"{area:.0f}", ", ".join(sorted(neighbours)),
                        "yes" if sector.entrance else "")
    console.print(sectors)
    if site.nfc_readers:
        readers = Table("reader", "device", "x", "y", "sector", title="NFC readers")
        for reader in site.nfc_readers:
            readers.add_row(reader.id, reader.device, f"{reader.x:g}", f"{reader.y:g}", reader.sector)
        console.print(readers)
