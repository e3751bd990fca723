"""``santi demo``: the example store, end to end, with no hardware."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli.config_cmd import check

EXAMPLE_SITE = Path(__file__).resolve().parents[2] / "examples" / "fishmonger.toml"


@click.command()
@click.option("--site", type=click.Path(path_type=Path, dir_okay=False), default=EXAMPLE_SITE,
              show_default=True, help="Site config of the store to run.")
@click.pass_context
def demo(ctx: click.Context, site: Path) -> None:
    """Run Santi on a simulated store and show what HQ sees.

    \b
    Example:
      santi demo
    """
    ctx.invoke(check, file=site, as_json=False, quiet=False)
