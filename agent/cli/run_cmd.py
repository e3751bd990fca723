"""``santi run``: the agent daemon (what systemd starts)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from agent import logs
from agent.config import load_site
from agent.privacy import Pseudonymizer, load_secret
from agent.replayclock import ReplayClock, first_timestamp
from agent.service import Service
from agent.sources.factory import hardware_sources, replay_sources

log = logging.getLogger(__name__)


@click.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Site config (TOML).")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Outbox, secret and status file; overrides agent.state_dir.")
@click.option("--replay", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Replay an observations.jsonl instead of listening to radios.")
@click.option("--taps", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Card taps to replay with --replay.")
@click.option("--speed", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Replay speed (store seconds per real second).")
def run(config_path: Path, state_dir: Path | None, replay: Path | None, taps: Path | None, speed: float) -> None:
    """Run the agent until SIGTERM; SIGHUP reloads the site config.

    Exits 0 after a clean drain, 1 on a fatal runtime error, 2 on bad input.

    \b
    Example:
      santi run --config /etc/santi/site.toml
      santi run --config examples/fishmonger.toml --state-dir /tmp/santi \\
                --replay out/observations.jsonl --taps out/taps.jsonl --speed 10
    """
    logs.daemon()
    site = load_site(config_path)
    state = state_dir or site.agent.state_dir
    if replay is None:
        secret = load_secret(site.privacy, state)
        pseudonymizer = Pseudonymizer(secret, site.store.id, site.privacy.salt_rotation_hours * 3600.0)
        service = Service(site, hardware_sources(site, pseudonymizer), state_dir=state)
    else:
        clock = ReplayClock(first_timestamp(replay), speed)
        service = Service(site, replay_sources(replay, taps, speed), state_dir=state, clock=clock,
                          time_scale=speed, stop_when_sources_finish=True)
    code = asyncio.run(service.run())
    if code:
        raise click.exceptions.Exit(code)
