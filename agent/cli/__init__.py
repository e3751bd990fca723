"""``santi``: the command line of the agent, the simulator and HQ.

A thin layer over library calls. Every command has help with an example;
every failure is one line on stderr and a non-zero exit code (2 for bad
input such as a broken config, 1 for a failure at run time): commands let a
`SantiError` rise, and `LazyGroup.invoke` translates it, once, for all of them.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

import click

from agent import logs
from agent.errors import SantiError

COMMANDS = {
    "buffer": "agent.cli.buffer_cmd:buffer",
    "calibrate": "agent.cli.calibrate_cmd:calibrate",
    "config": "agent.cli.config_cmd:config",
    "demo": "agent.cli.demo_cmd:demo",
    "doctor": "agent.cli.doctor_cmd:doctor",
    "firmware": "agent.cli.firmware_cmd:firmware",
    "hq": "agent.cli.hq_cmd:hq",
    "locate": "agent.cli.sim_cmd:locate_cmd",
    "map": "agent.cli.map_cmd:map_",
    "nfc": "agent.cli.nfc_cmd:nfc",
    "node": "agent.cli.node_cmd:node",
    "run": "agent.cli.run_cmd:run",
    "scan": "agent.cli.scan_cmd:scan",
    "sim": "agent.cli.sim_cmd:sim",
    "staff": "agent.cli.staff_cmd:staff",
    "status": "agent.cli.status_cmd:status",
}
"""Command name -> ``module:attribute``. ``calibrate`` comes from calibrate_cmd, which
adds ``receiver`` and ``survey`` (survey_cmd) to sim_cmd's group beside ``fit``."""


class SantiGroup(click.Group):
    """The one place a `SantiError` becomes what a technician sees: ``santi: <one line>`` on stderr, its exit code.

    Commands raise and let errors rise; nothing below translates them by hand.
    """

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SantiError as exc:
            click.echo(f"santi: {exc.one_line()}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:
            _usage_error(exc)

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            _usage_error(exc)


def _usage_error(exc: click.UsageError) -> NoReturn:
    """A mistyped command line as one line, like every other failure: what is wrong and where the help is.

    Click's own form is three lines (usage, a hint, the error); the README promises one.
    """
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    click.echo(f"santi: {' '.join(exc.format_message().split())}{where}", err=True)
    raise click.exceptions.Exit(exc.exit_code)


class LazyGroup(SantiGroup):
    """Imports a command's module only when that command runs (or help lists it).

    ``santi run`` on a Pi should not carry the simulator, the plots or
    SciPy's optimisers it never calls: importing every command costs ~40 MB
    of resident memory, a third of the agent's budget.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute = target.split(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command


def _version() -> str:
    try:
        return version("santi")
    except PackageNotFoundError:
        return "0+unknown"


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(_version(), "--version", prog_name="santi", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Santi: the in-store edge agent.

    \b
    Example:
      santi config check --config examples/fishmonger.toml
    """
    logs.setup(verbose)


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="santi", standalone_mode=True))
