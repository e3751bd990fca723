"""``santi map``: a PNG of the store showing where position fixes will be poor."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import click
from rich.console import Console

from agent.cli.config_cmd import site_option
from agent.cli.errors import CliError
from agent.config import load_site
from agent.sitemap import MapError, error_map, render_png, summarise
from agent.text import Table


@click.command("map")
@site_option("site", positional=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="PNG to write [default: <store id>-map.png in the current directory].")
@click.option("--cell", type=click.FloatRange(0.05, 2.0), default=0.25, show_default=True,
              help="Grid spacing, metres.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary figures as JSON (the PNG is still written).")
@click.option("--no-png", is_flag=True, help="Only compute the figures; write no PNG.")
def map_(site: Path, out: Path | None, cell: float, as_json: bool, no_png: bool) -> None:
    """Draw the store's floor with the expected position error (Cramér-Rao bound) as a heatmap.

    Uses the BLE-hearing receivers (kind ble and node) with their calibration,
    noise and heights, and the tag at [tracking] emitter_height_m. A bright
    patch is where one snapshot of readings cannot pin a position down: far
    from every receiver, where the receivers that hear it stand in a line,
    or right under a receiver mounted high (its reading hardly changes as the
    tag moves beneath it, so it says nothing about where). Moving or adding
    a receiver is what darkens it.

    \b
    Example:
      santi map --config examples/fishmonger.toml --out fishmonger-map.png
      santi map --config examples/fishmonger.toml --json --no-png
    """
    config = load_site(site)
    err = Console(stderr=True)
    try:
        with err.status("computing the error map…"):
            emap = error_map(config, cell)
    except MapError as exc:
        raise CliError(f"{site}: {exc}") from None
    summary = summarise(emap)
    target: Path | None = None
    if not no_png:
        if importlib.util.find_spec("matplotlib") is None:
            raise CliError("santi map needs matplotlib for the PNG: pip install 'santi[plot]' (or use --no-png)")
        target = out if out is not None else Path(f"{config.store.id}-map.png")
        try:
            with err.status(f"drawing {target}…"):
                render_png(config, emap, target)
        except OSError as exc:
            raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps({**summary, "png": str(target) if target else None}, indent=2))
        return
    table = Table("figure", "value", title=f"{config.store.name}: expected position error (CRLB)")

    def metres(value: float | None) -> str:
        return "no fix" if value is None else f"{value:.2f} m"

    worst = summary["worst_spot"]
    table.add_row("median over the floor", metres(summary["median_m"]))
    table.add_row("90th percentile", metres(summary["p90_m"]))
    table.add_row("worst", f"{metres(summary['max_m'])} at ({worst['x']:g}, {worst['y']:g})")
    table.add_row("floor with no fix", f"{summary['no_fix_share']:.1%}")
    table.add_row("BLE receivers", ", ".join(summary["receivers"]))
    console = Console()
    console.print(table)
    if target is not None:
        console.print(f"map written to {target}")
