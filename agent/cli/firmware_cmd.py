"""``santi firmware``: settings for ESPresense nodes and beacon tags, from the site config."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from agent.cli.broker_arg import parse_broker
from agent.cli.config_cmd import site_option
from agent.cli.errors import CliError
from agent.config import SiteConfig, load_site
from agent.firmware import (
    ESPRESENSE_REF_RSSI,
    FirmwareError,
    load_tag,
    node_configs,
    tag_site_problems,
    write_node_files,
)
from agent.text import Table, plural

EXIT_NOT_ADMITTED = 1


def _broker(value: str | None, site: SiteConfig) -> tuple[str, int]:
    """The address ESP32 nodes use to reach the store's node broker, ``[nodes]`` (never the HQ uplink)."""
    nodes = site.nodes
    if nodes is None:
        raise CliError(f"{site.path}: no [nodes] section — the nodes publish to the store's broker: add [nodes] "
                       f"host and port (and pass --broker with the address nodes use for this box)")
    if value is None:
        if nodes.tls is not None:
            raise CliError("[nodes] uses TLS, which ESPresense cannot; pass --broker HOST:PORT of the "
                           "broker's plain LAN listener")
        try:
            loopback = nodes.host == "localhost" or ipaddress.ip_address(nodes.host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            raise CliError(f"nodes.host is {nodes.host}, which a node cannot reach; pass --broker with the address "
                           "nodes use for this box, e.g. --broker 192.168.1.20")
        return nodes.host, nodes.port
    address = parse_broker(value, default_port=nodes.port)
    if address.tls:
        raise CliError(f"--broker {value}: ESPresense cannot use TLS; give HOST:PORT of the broker's plain LAN listener")
    return address.host, address.port


@click.group()
def firmware() -> None:
    """Receiver nodes and beacon tags: render their settings, validate tag profiles."""


@firmware.command("render")
@site_option("site", positional=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Directory for one <room>.json and <room>.sh per node.")
@click.option("--broker", default=None, metavar="HOST:PORT",
              help="The node broker's address as the nodes see it [default: [nodes] host if not loopback; "
                   "port: [nodes] port].")
@click.option("--reference-rssi", type=click.IntRange(-100, -20), default=ESPRESENSE_REF_RSSI, show_default=True,
              help="RSSI at 1 m your tags advertise (iBeacon measured power).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def render(site: Path, out: Path, broker: str | None, reference_rssi: int, as_json: bool) -> None:
    """Write ESPresense settings for every node receiver of the site config into --out.

    Per node: <room>.json (settings, network page values, the MQTT messages)
    and <room>.sh (the same messages as retained mosquitto_pub calls, logged
    in as the node's broker user node-<room>; set SANTI_BROKER,
    SANTI_BROKER_PORT, MQTT_USER, MQTT_PASS or MQTT_PASS_FILE to override).
    Nodes talk to the store's broker ([nodes]), never to HQ's.

    \b
    Example:
      santi firmware render --config examples/fishmonger.toml --out nodes/ --broker 192.168.1.20
      sh nodes/entrance.sh
    """
    config = load_site(site)
    host, port = _broker(broker, config)
    try:
        nodes = node_configs(config, host, port, reference_rssi=reference_rssi)
    except FirmwareError as exc:
        raise CliError(f"{site}: {exc}") from None
    if not nodes:
        raise CliError(f"{site}: no receiver has kind = \"node\"; nothing to render")
    try:
        written = write_node_files(config, nodes, out)
    except OSError as exc:
        raise CliError(f"cannot write into {out}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps({"broker": f"{host}:{port}", "files": [str(path) for path in written],
                               "nodes": [{"receiver": n.receiver_id, "room": n.room, **n.settings} for n in nodes]},
                              indent=2))
        return
    table = Table("receiver", "room", "absorption", "rx_adj_rssi", "max_distance", "skip_ms",
                  title=f"ESPresense settings for {config.store.name} (broker {host}:{port})")
    for node in nodes:
        s = node.settings
        table.add_row(node.receiver_id, node.room, s["absorption"], s["rx_adj_rssi"], s["max_distance"], s["skip_ms"])
    console = Console()
    console.print(table)
    include = nodes[0].settings["include"]
    console.print(f"include filter: {escape(include) if include else '(none: site allows all beacons)'}")
    console.print(f"wrote {plural(len(written), 'file')} to {out}")


@firmware.command("check-tag")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@site_option("site", default=None, help_text="Also check that this store's nodes would report the tag")
@click.option("--json", "as_json", is_flag=True, help="Print each profile with its advertisement bytes as JSON.")
def check_tag(files: tuple[Path, ...], site: Path | None, as_json: bool) -> None:
    """Validate beacon tag profiles (TOML or JSON); show the bytes each tag must advertise.

    Exit 0 when all are valid (and fit --config), 2 for a bad profile, 1 when a
    valid tag would be dropped by the --config store's nodes or advertise too
    rarely for its tracking window.

    \b
    Example:
      santi firmware check-tag firmware_configs/tags/*.toml --config examples/fishmonger.toml
    """
    config = load_site(site) if site is not None else None
    report: list[dict[str, Any]] = []
    for path in files:
        tag = load_tag(path)
        problems = tag_site_problems(tag, config) if config is not None else []
        report.append({"file": str(path), "profile": tag.model_dump(mode="json"),
                       "advertisement": tag.advertisement(), "espresense_id": tag.espresense_id(),
                       "problems": problems})
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        table = Table("file", "kind", "ESPresense id", "advertisement (hex)", "problems", title="Tag profiles")
        for item in report:
            table.add_row(escape(item["file"]), item["profile"]["kind"], escape(item["espresense_id"]),
                          item["advertisement"]["hex"], escape("; ".join(item["problems"])) or "[green]ok[/]")
        Console().print(table)
    if any(item["problems"] for item in report):
        raise SystemExit(EXIT_NOT_ADMITTED)
