"""``santi node``: the node role — scan locally, forward RSSI to the locator's broker."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from agent.cli.broker_arg import parse_broker
from agent.cli.errors import CliError
from agent.config import ConfigError, SiteConfig, load_site
from agent.mqttclient import BrokerConfig
from agent.node_publisher import NodePublisher
from agent.privacy import Pseudonymizer, load_secret
from agent.sources.base import Source
from agent.sources.ble import BleSource
from agent.sources.replay import ReplaySource
from agent.sources.wifi import WifiMonitorSource
from agent.text import Table


def _broker(value: str | None, site: SiteConfig, client_id: str) -> BrokerConfig:
    """The [nodes] broker and its login; ``--broker`` only moves it to another host and port."""
    if site.nodes is None:
        raise CliError(f"{site.path}: no [nodes] section — add [nodes] host = \"<the locator's address>\" "
                       f"(and its username/password_file) so this node knows where to publish")
    broker = BrokerConfig.of(site.nodes, client_id)
    if value is None:
        return broker
    address = parse_broker(value, default_port=broker.port)
    if address.tls and broker.tls is None:
        raise CliError(f"--broker {value}: TLS to the node broker is set by nodes.tls.ca_file, not by the address")
    return dataclasses.replace(broker, host=address.host, port=address.port)


def _receiver(site: SiteConfig, kind: str) -> str:
    for receiver in site.receivers:
        if receiver.kind == kind:
            return receiver.id
    raise CliError(f"{site.path}: no receiver of kind {kind!r} for --source {kind}")


def _pseudonymizer(site: SiteConfig) -> Pseudonymizer:
    """The locator's pseudonyms: a secret of the node's own would give every phone another id here."""
    if site.privacy.secret_file is None and site.privacy.secret_env is None:
        raise CliError(f"{site.path}: santi node needs the store's secret — copy the locator's secret file here "
                       f"(owner santi, mode 0600) and set [privacy] secret_file to it (or secret_env)")
    secret = load_secret(site.privacy, site.agent.state_dir)  # configured: nothing is generated there
    return Pseudonymizer(secret, site.store.id, site.privacy.salt_rotation_hours * 3600.0)


def _sources(specs: tuple[str, ...], site: SiteConfig, speed: float) -> list[Source]:
    sources: list[Source] = []
    for spec in specs:
        if spec.startswith("replay:"):
            path = Path(spec.removeprefix("replay:"))
            if not path.is_file():
                raise CliError(f"--source {spec}: no such file")
            sources.append(ReplaySource(path, speed=speed, retime=True))
        elif spec == "ble":
            sources.append(BleSource(site.ble, _receiver(site, "ble"), _pseudonymizer(site)))
        elif spec == "wifi":
            if site.wifi.interface is None:
                raise CliError(f"{site.path}: --source wifi needs wifi.interface (a monitor-mode interface)")
            sources.append(WifiMonitorSource(site.wifi.interface, _receiver(site, "wifi"),
                                             _pseudonymizer(site)))
        else:
            raise CliError(f"--source {spec!r}: expected ble, wifi or replay:FILE")
    return sources


async def _forward(sources: list[Source], publisher: NodePublisher, connect_timeout_s: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    publishing = asyncio.create_task(publisher.run(stop))
    try:
        if not await publisher.wait_connected(connect_timeout_s):
            raise CliError(publisher.stats.last_error or f"cannot reach the locator's broker at "
                           f"{publisher.broker} within {connect_timeout_s:g} s")
        running = [asyncio.create_task(source.run(publisher.add, stop)) for source in sources]
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        finished: asyncio.Future[Any] = asyncio.gather(*running)
        # a replay ends by itself; live radios run until a signal
        await asyncio.wait({stopping, finished}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        await finished
        stopping.cancel()
    finally:
        stop.set()
        await publishing
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)


def _summary(sources: list[Source], publisher: NodePublisher) -> Table:
    table = Table(title=f"santi node → {publisher.topic}")
    for column in ("part", "state", "accepted", "dropped", "last error"):
        table.add_column(column)
    for stats in [source.stats for source in sources] + [publisher.stats]:
        dropped = ", ".join(f"{reason} {count}" for reason, count in sorted(stats.dropped.items())) or "0"
        table.add_row(stats.name, stats.state, str(stats.accepted), dropped, stats.last_error or "")
    table.caption = f"{publisher.published} observations published in {publisher.batches} batches"
    return table


@click.command("node")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Site config (TOML) of the store this node serves.")
@click.option("--source", "specs", multiple=True, default=("ble",), show_default=True,
              help="What to scan: ble, wifi, or replay:FILE (observations.jsonl); repeatable.")
@click.option("--broker", metavar="HOST:PORT",
              help="The locator's MQTT broker [default: nodes.host:nodes.port; a bare HOST keeps nodes.port].")
@click.option("--node-id", help="Name this node publishes under; the locator's receivers[].node_name "
                                "[default: agent.id].")
@click.option("--interval", type=click.FloatRange(min=0.05, max=10.0), default=0.5, show_default=True,
              help="Seconds between batches.")
@click.option("--speed", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Replay speed for replay:FILE (recorded seconds per real second).")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=15.0, show_default=True,
              help="Seconds to wait for the locator's broker before giving up.")
def node(config_path: Path, specs: tuple[str, ...], broker: str | None, node_id: str | None,
         interval: float, speed: float, connect_timeout: float) -> None:
    """Run as a remote receiver: scan here, forward RSSI to the store's locator.

    Observations are pseudonymised here with the store secret, which must be
    the locator's (same privacy.secret_file), so a phone has one id at every
    receiver. They go out in batches on santi/v1/<store>/nodes/<node id>/observations.

    \b
    Example:
      santi node --config /etc/santi/site.toml --broker 192.168.1.10:1883
      santi node --config examples/fishmonger.toml --node-id greens \\
                 --source replay:out/observations.jsonl --broker 127.0.0.1:1883
    """
    site = load_site(config_path)
    name = node_id or site.agent.id
    target = _broker(broker, site, f"santi-node-{name}")
    sources = _sources(specs, site, speed)
    try:
        publisher = NodePublisher(site.store.id, name, target, interval_s=interval)
    except (ConfigError, OSError) as exc:
        raise CliError(f"node broker {target.where}: {exc}") from None
    asyncio.run(_forward(sources, publisher, connect_timeout_s=connect_timeout))
    Console(stderr=True).print(_summary(sources, publisher))
