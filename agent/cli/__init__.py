"""``santi``: the command line of the agent, the simulator and HQ.

A thin layer over library calls. Every command has help with an example;
every failure is one line on stderr and a non-zero exit code (2 for bad
input such as a broken config).
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

import click

from agent import logs
from agent.cli import calibrate_cmd  # noqa: F401  (attaches `santi calibrate receiver` to the calibrate group)
from agent.cli.buffer_cmd import buffer
from agent.cli.config_cmd import config
from agent.cli.demo_cmd import demo
from agent.cli.doctor_cmd import doctor
from agent.cli.firmware_cmd import firmware
from agent.cli.hq_cmd import hq
from agent.cli.map_cmd import map_
from agent.cli.nfc_cmd import nfc
from agent.cli.node_cmd import node
from agent.cli.run_cmd import run
from agent.cli.scan_cmd import scan
from agent.cli.sim_cmd import calibrate, locate_cmd, sim
from agent.cli.status_cmd import status


def _version() -> str:
    try:
        return version("santi")
    except PackageNotFoundError:
        return "0+unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(_version(), "--version", prog_name="santi", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Santi: the in-store edge agent.

    \b
    Example:
      santi config check examples/fishmonger.toml
    """
    logs.setup(verbose)


cli.add_command(config)
cli.add_command(demo)
cli.add_command(sim)
cli.add_command(locate_cmd)
cli.add_command(calibrate)
cli.add_command(doctor)
cli.add_command(map_)
cli.add_command(run)
cli.add_command(firmware)
cli.add_command(hq)
cli.add_command(status)
cli.add_command(scan)
cli.add_command(nfc)
cli.add_command(buffer)
cli.add_command(node)


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(standalone_mode=True))
