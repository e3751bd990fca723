"""The node broker as installed: a login required, an ACL per node; and no [nodes], no subscription.

A real Mosquitto with a password file and the ACL ``scripts/install-pi.sh``
generates (``agent.install_site``): the locator logs in with ``[nodes]
username`` and ``password_file``; a node may publish only its own room.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import ConfigError, SiteConfig, load_site
from agent.doctor_broker import check_node_broker
from agent.localbroker import Broker, example_site_for
from agent.mqttclient import BrokerConfig
from agent.privacy import Pseudonymizer
from agent.sources.base import Record
from agent.sources.factory import hardware_sources
from agent.sources.node_ingest import NodeIngest
from agent.sources.node_subscriber import NodesSource
from tests.helpers.node_broker import installed_node_broker
from tests.helpers.wait import wait_until

LOCATOR, LOCATOR_PW = "santi-locator", "locator pw 1"
FISH, FISH_PW = "node-fish", "fish pw 2"
DEVICE = "iBeacon:5a4e7469-0000-4000-8000-00000000f15c-1-2"


def _site_text(tmp_path: Path, port: int, nodes: str | None) -> Path:
    """The example store with its [nodes] section replaced by ``nodes`` (None: no section at all)."""
    path = example_site_for(tmp_path, port)
    text = path.read_text(encoding="utf-8")
    text, count = re.subn(r"\[nodes\]\n(#[^\n]*\n)*(\w+ = [^\n]*\n)+", "" if nodes is None else nodes, text)
    assert count == 1
    path.write_text(text, encoding="utf-8")
    return path


def _nodes(port: int, *, login: bool = True, password_file: Path | None = None) -> str:
    lines = ["[nodes]", 'host = "127.0.0.1"', f"port = {port}"]
    if login:
        lines += [f'username = "{LOCATOR}"', f'password_file = "{password_file}"']
    return "\n".join(lines) + "\n"


@pytest.fixture
def node_broker(tmp_path: Path) -> Iterator[Broker]:
    """Anonymous access off, the installer's ACL for the example store's nodes."""
    (tmp_path / "acl-site").mkdir()
    site = load_site(_site_text(tmp_path / "acl-site", 1883, _nodes(1883, login=False)))
    broker = installed_node_broker(tmp_path / "node-broker", site, {LOCATOR: LOCATOR_PW, FISH: FISH_PW})
    broker.start()
    try:
        yield broker
    finally:
        broker.stop(kill=True)


def _password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "locator.password"
    path.write_text(password + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def _source(site: SiteConfig) -> NodesSource:
    assert site.nodes is not None
    ingest = NodeIngest(site.receivers, Pseudonymizer(b"k" * 32, site.store.id, 86_400.0), site.store.id)
    return NodesSource(ingest, BrokerConfig.of(site.nodes, "test-locator"))


def _run(source: NodesSource, body: Callable[[list[Record]], Awaitable[None]]) -> None:
    received: list[Record] = []

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(received.append, stop))
        try:
            await body(received)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    asyncio.run(main())


def _node_client(broker: Broker, acks: dict[int, ReasonCode]) -> mqtt.Client:
    """node-fish over MQTT 5, so that the broker's ACL answers each QoS 1 publish with a reason."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fish-node", protocol=mqtt.MQTTv5)
    client.username_pw_set(FISH, FISH_PW)
    client.on_publish = lambda _c, _u, mid, reason, _p: acks.__setitem__(mid, reason)
    client.connect(broker.host, broker.port)
    client.loop_start()
    wait_until(client.is_connected, what="node-fish connected")
    return client


def test_locator_logs_in_and_a_node_publishes_only_its_own_room(tmp_path: Path, node_broker: Broker) -> None:
    site = load_site(_site_text(tmp_path, 1, _nodes(node_broker.port,
                                                    password_file=_password_file(tmp_path, LOCATOR_PW))))
    source = _source(site)

    async def body(received: list[Record]) -> None:
        await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 15.0, 'source.stats.state == "up"')
        acks: dict[int, ReasonCode] = {}
        node = _node_client(node_broker, acks)
        try:
            other_room = node.publish(f"espresense/devices/{DEVICE}/greens", json.dumps({"rssi": -60}), qos=1)
            own_room = node.publish(f"espresense/devices/{DEVICE}/fish", json.dumps({"rssi": -70}), qos=1)
            await asyncio.to_thread(wait_until, lambda: len(acks) == 2 and len(received) >= 1, 15.0, 'len(acks) == 2 and len(received) >= 1')
        finally:
            node.loop_stop()
            node.disconnect()
        assert acks[other_room.mid].value == 0x87  # not authorized: the ACL confines node-fish to its room
        assert acks[own_room.mid].is_failure is False
        assert [(r.receiver_id, r.rssi_dbm) for r in received] == [("node-fish", -70.0)]  # type: ignore[union-attr]

    _run(source, body)
    assert source.stats.accepted == 1


@pytest.mark.parametrize("login", [False, True], ids=["no-login", "wrong-password"])
def test_a_refused_login_is_the_sources_reason(tmp_path: Path, node_broker: Broker, login: bool) -> None:
    nodes = _nodes(node_broker.port, login=login, password_file=_password_file(tmp_path, "not it"))
    source = _source(load_site(_site_text(tmp_path, 1, nodes)))

    async def body(received: list[Record]) -> None:
        await asyncio.to_thread(wait_until, lambda: source.stats.last_error is not None, 15.0, 'source.stats.last_error is not None')

    _run(source, body)
    assert source.stats.last_error == (f"local broker 127.0.0.1:{node_broker.port} refused the connection: "
                                       f"Not authorized — check [nodes] username and its password")
    assert source.stats.state == "down"


def test_an_unreadable_password_file_takes_down_this_source_only(tmp_path: Path, node_broker: Broker,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    password_file = _password_file(tmp_path, LOCATOR_PW)
    site = load_site(_site_text(tmp_path, 1, _nodes(node_broker.port, password_file=password_file)))
    password_file.unlink()  # gone after config check: the agent still starts
    sources = hardware_sources(site, Pseudonymizer(b"k" * 32, site.store.id, 86_400.0))
    nodes = [source for source in sources if isinstance(source, NodesSource)]
    assert len(nodes) == 1
    assert len(sources) > 1
    caplog.set_level(logging.ERROR)

    async def body(received: list[Record]) -> None:
        await asyncio.to_thread(wait_until, lambda: nodes[0].stats.last_error is not None, 15.0, 'nodes[0].stats.last_error is not None')

    _run(nodes[0], body)
    expected = (f"node broker 127.0.0.1:{node_broker.port}: nodes.password_file {password_file}: cannot read it "
                f"(No such file or directory) — check the path and that the agent's user may read it")
    assert nodes[0].stats.last_error == expected
    assert expected in caplog.messages
    assert LOCATOR_PW not in caplog.text


def test_no_nodes_section_means_no_subscription(tmp_path: Path) -> None:
    text = _site_text(tmp_path, 1, None).read_text(encoding="utf-8")
    without_nodes = re.sub(r'kind = "node"\nnode_name = "\w+"', 'kind = "ble"', text)
    path = tmp_path / "no-nodes.toml"
    path.write_text(without_nodes, encoding="utf-8")
    site = load_site(path)
    assert site.nodes is None
    sources = hardware_sources(site, Pseudonymizer(b"k" * 32, site.store.id, 86_400.0))
    assert sources
    assert not [source for source in sources if isinstance(source, NodesSource)]


def test_a_node_receiver_without_nodes_section_is_a_config_error(tmp_path: Path) -> None:
    path = _site_text(tmp_path, 1, None)
    with pytest.raises(ConfigError) as problem:
        load_site(path)
    message = str(problem.value)
    assert "\n" not in message
    assert re.fullmatch(
        rf"{re.escape(str(path))}:\d+: receivers\[\d+\]\.kind: receiver 'node-\w+' is a node but there is no "
        r'\[nodes\] section — add \[nodes\] host = "127\.0\.0\.1" \(the store broker its node publishes to\)',
        message), message


@pytest.mark.parametrize(("login", "password", "works"), [(True, LOCATOR_PW, True), (True, "not it", False),
                                                           (False, "", False)],
                         ids=["right-login", "wrong-password", "no-login"])
def test_doctor_judges_the_node_broker_as_the_nodes_source_fares(tmp_path: Path, node_broker: Broker, login: bool,
                                                               password: str, works: bool) -> None:
    nodes = _nodes(node_broker.port, login=login, password_file=_password_file(tmp_path, password))
    site = load_site(_site_text(tmp_path, 1, nodes))
    check = check_node_broker(site, timeout=3.0)
    source = _source(site)

    async def body(received: list[Record]) -> None:
        await asyncio.to_thread(wait_until, lambda: source.stats.state == "up" or source.stats.last_error is not None,
                                15.0, "the nodes source up or failed")

    _run(source, body)
    assert (check.status == "ok") is works, check
    assert (source.stats.last_error is None) is works, source.stats.last_error
    assert LOCATOR_PW not in check.detail + check.fix
