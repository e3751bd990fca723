"""``santi demo``: the example store, end to end, with no hardware."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from agent.cli.broker_arg import parse_broker
from agent.cli.config_cmd import site_option
from agent.cli.demo import run_demo
from agent.cli.errors import CliError
from agent.config import load_site
from hq.consent import ConsentRecord, parse_import
from hq.rules import load_rules

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_SITE = EXAMPLES / "fishmonger.toml"
EXAMPLE_RULES = EXAMPLES / "rules.toml"
EXAMPLE_CONSENT = EXAMPLES / "consent.csv"


def _host_port(text: str) -> tuple[str, int]:
    address = parse_broker(text)
    return address.host, address.port


def _consent(path: Path) -> list[ConsentRecord]:
    """The CRM export, through the parser ``santi hq consent import`` uses."""
    try:
        return parse_import(path.read_text(encoding="utf-8"), path, source="crm-export")
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise CliError(str(exc)) from None


@click.command()
@site_option("site", default=EXAMPLE_SITE, help_text="Site config of the store to simulate")
@click.option("--shoppers", type=click.IntRange(1, 2000), default=40, show_default=True,
              help="Shoppers who come in during the run.")
@click.option("--minutes", type=click.FloatRange(1.0, 600.0), default=10.0, show_default=True,
              help="Shoppers arrive during this many store minutes.")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same store day.")
@click.option("--speed", type=click.FloatRange(1.0, 1000.0), default=60.0, show_default=True,
              help="Store seconds per real second.")
@click.option("--broker", default=None, metavar="HOST:PORT",
              help="Use this broker instead of starting a private mosquitto on loopback.")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Keep the recording, outbox and HQ database here (default: a temp folder).")
@click.option("--rules", "rules_path", type=click.Path(path_type=Path, dir_okay=False), default=EXAMPLE_RULES,
              show_default=True, help="Activation rules HQ fires (TOML, as santi hq run --rules).")
@click.option("--consent", "consent_path", type=click.Path(path_type=Path, dir_okay=False),
              default=EXAMPLE_CONSENT, show_default=True,
              help="Consent export from the CRM (CSV or JSON Lines, as santi hq consent import).")
@click.option("--quiet", is_flag=True, help="Only the staff cards and the summary, not every event HQ receives.")
def demo(site: Path, shoppers: int, minutes: float, seed: int, speed: float, broker: str | None,
         workdir: Path | None, rules_path: Path, consent_path: Path, quiet: bool) -> None:
    """Run Santi on a simulated store and show what HQ sees and the staff cards that come back.

    Simulates shoppers in the store, replays what the receivers would hear
    through the real agent (locator, outbox, MQTT uplink) to a broker, and
    builds HQ's customer profiles from what arrives, for the customers the
    consent export lets it; the rules fire staff cards back to the agent.
    Without --workdir only HQ's database is kept.

    \b
    Example:
      santi demo
      santi demo --shoppers 200 --minutes 30 --speed 120 --quiet
    """
    config = load_site(site)
    rules, consent = load_rules(rules_path), _consent(consent_path)
    run_demo(config, shoppers=shoppers, minutes=minutes, seed=seed, speed=speed,
             broker=None if broker is None else _host_port(broker),
             workdir=workdir, console=Console(), rules=rules, consent=consent, quiet=quiet)
