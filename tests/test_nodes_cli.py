"""``santi node``: a replayed scan forwarded to a real broker, read back by the locator's ingest."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from agent.cli import cli
from agent.config import load_site
from agent.localbroker import Broker, example_site_for, free_port
from agent.observations import Observation
from agent.privacy import GENERATED_SECRET, Pseudonymizer
from agent.replayfile import write_records
from agent.sources.node_ingest import NodeIngest, santi_topic
from tests.helpers.wait import wait_until

STORE = "fishmonger-01"


def test_node_forwards_a_replay_in_batches(broker: Broker, example_site: Path, tmp_path: Path) -> None:
    secret = tmp_path / "store.secret"
    secret.write_text("x" * 40, encoding="utf-8")
    site_text = example_site.read_text(encoding="utf-8").replace(
        "[privacy]\n", f'[privacy]\nsecret_file = "{secret}"\n')
    site_path = tmp_path / "site.toml"
    site_path.write_text(site_text, encoding="utf-8")
    pseudo = Pseudonymizer(b"x" * 40, STORE, 86_400.0)
    recorded = [Observation(ts=1000.0 + i * 0.05, receiver_id="pi2-ble", emitter_id=pseudo.pseudonym("ble", f"p{i % 3}", 0),
                            tech="ble", rssi_dbm=-60.0 - i) for i in range(30)]
    replay = tmp_path / "observations.jsonl"
    write_records(replay, recorded)

    messages: list[tuple[str, bytes, float]] = []
    subscribed = threading.Event()
    listener = mqtt.Client(CallbackAPIVersion.VERSION2)
    listener.on_message = lambda c, u, m: messages.append((m.topic, bytes(m.payload), time.time()))
    listener.on_subscribe = lambda *args: subscribed.set()
    listener.connect(broker.host, broker.port)
    listener.subscribe(f"santi/v1/{STORE}/nodes/+/observations")
    listener.loop_start()
    try:
        assert subscribed.wait(10)
        result = CliRunner().invoke(cli, [
            "node", "--config", str(site_path), "--node-id", "greens", "--source", f"replay:{replay}",
            "--broker", f"{broker.host}:{broker.port}", "--speed", "2", "--interval", "0.2"])
        assert result.exit_code == 0, result.output
        wait_until(lambda: sum(len(json.loads(m[1])) for m in messages) >= 30, 10, "30 observations at the broker")
    finally:
        listener.loop_stop()
        listener.disconnect()

    assert {topic for topic, _, _ in messages} == {santi_topic(STORE, "greens")}
    assert len(messages) > 1  # batched, not one message per observation nor one for all
    ingest = NodeIngest(load_site(site_path).receivers, pseudo, STORE)
    received = [o for topic, payload, at in messages for o in ingest.ingest(topic, payload, at)]
    assert [o.rssi_dbm for o in received] == [o.rssi_dbm for o in recorded]
    assert [o.emitter_id for o in received] == [o.emitter_id for o in recorded]
    assert {o.receiver_id for o in received} == {"node-greens"}
    assert sum(ingest.stats.dropped.values()) == 0  # retimed to now: not stale at the locator
    assert "30 observations published" in result.output


def test_node_without_a_broker_is_one_line(example_site: Path, tmp_path: Path) -> None:
    replay = tmp_path / "o.jsonl"
    write_records(replay, [Observation(ts=1.0, receiver_id="r", emitter_id="a" * 24, tech="ble", rssi_dbm=-50)])
    result = CliRunner().invoke(cli, ["node", "--config", str(example_site), "--source", f"replay:{replay}",
                                      "--broker", "nonsense:port"])
    assert result.exit_code == 2
    assert result.output == "santi: --broker 'nonsense:port': give HOST:PORT, e.g. 127.0.0.1:1883\n"
    result = CliRunner().invoke(cli, ["node", "--config", str(example_site), "--source", "radio"])
    assert result.exit_code == 2
    assert "expected ble, wifi or replay:FILE" in result.output


def test_node_reports_an_unreachable_broker(example_site: Path, tmp_path: Path) -> None:
    replay = tmp_path / "o.jsonl"
    write_records(replay, [Observation(ts=1.0, receiver_id="r", emitter_id="a" * 24, tech="ble", rssi_dbm=-50)])
    port = free_port()
    result = CliRunner().invoke(cli, ["node", "--config", str(example_site), "--source", f"replay:{replay}",
                                      "--broker", f"127.0.0.1:{port}", "--connect-timeout", "1"])
    assert result.exit_code == 2
    assert result.output == f"santi: cannot reach the locator's broker at 127.0.0.1:{port} within 1 s\n"


def test_node_moved_to_a_bare_host_keeps_the_nodes_port(example_site: Path, tmp_path: Path) -> None:
    replay = tmp_path / "o.jsonl"
    write_records(replay, [Observation(ts=1.0, receiver_id="r", emitter_id="a" * 24, tech="ble", rssi_dbm=-50)])
    port = free_port()
    nodes = '# password_file = "/etc/santi/node-broker/santi-locator.password"\nhost = "127.0.0.1"\nport = 1883'
    assert nodes in example_site.read_text()
    site = tmp_path / "site.toml"
    site.write_text(example_site.read_text().replace(nodes, nodes.replace("1883", str(port))))
    result = CliRunner().invoke(cli, ["node", "--config", str(site), "--source", f"replay:{replay}",
                                      "--broker", "localhost", "--connect-timeout", "0.5"])
    assert result.exit_code == 2
    assert result.output == f"santi: cannot reach the locator's broker at localhost:{port} within 0.5 s\n"


def test_node_refuses_to_scan_without_the_stores_secret(tmp_path: Path) -> None:
    site = example_site_for(tmp_path, free_port())
    result = CliRunner().invoke(cli, ["node", "--config", str(site), "--source", "ble",
                                      "--broker", f"127.0.0.1:{free_port()}", "--connect-timeout", "0.5"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        (f"santi: {site}: santi node needs the store's secret — copy the locator's secret file here (owner santi, "
        f"mode 0600) and set [privacy] secret_file to it (or secret_env)")]
    assert not (tmp_path / "state" / GENERATED_SECRET).exists()
