"""Poison on the node topics (issue 15, item 3): hostile payloads cost one message each, never the source.

Through a real mosquitto: the messages of the probe (100 KB of ``[[[...]]]``,
a 405-byte ``{"rssi": 1000...0}``), then valid ones that must all arrive;
a network thread that dies anyway puts the source down and starves the
watchdog. Hypothesis drives ``NodeIngest`` with arbitrary bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import load_site
from agent.localbroker import Broker, example_site_for
from agent.mqttclient import BrokerConfig
from agent.observations import Observation
from agent.privacy import Pseudonymizer
from agent.service import Service
from agent.sources.base import Record
from agent.sources.nfc import NfcSource
from agent.sources.node_ingest import NodeIngest, encode_batch, santi_topic
from agent.sources.node_subscriber import NodesSource
from tests.helpers.mqtt import publisher
from tests.helpers.nodes import STORE, run_with_source
from tests.helpers.wait import wait_until

PSEUDO = Pseudonymizer(b"k" * 32, STORE, 86_400.0)
BEACON = "espresense/devices/iBeacon:2686f39c-bada-4658-854a-a62e7e5e8b8d-1-{}/fish"
NESTED = b"[" * 50_000 + b"]" * 50_000
HUGE_RSSI = b'{"rssi": 1' + b"0" * 394 + b"}"


def test_poison_messages_then_valid_ones_all_accepted(broker: Broker, example_site: Path) -> None:
    assert len(NESTED) == 100_000
    assert len(HUGE_RSSI) == 405

    async def body(source: NodesSource, received: list[Record]) -> None:
        pub = publisher(broker)
        try:
            pub.publish(santi_topic(STORE, "greens"), NESTED)
            pub.publish(santi_topic(STORE, "greens"), b"\n".join([b"[" * 3000 + b"]" * 3000, b'{"ts": 1e999}']))
            pub.publish(BEACON.format(0), HUGE_RSSI)
            pub.publish(BEACON.format(0), NESTED[:4000])
            pub.publish(BEACON.format(0), b'{"rssi": -6' + b"0" * 5000 + b"}")
            pub.publish(BEACON.format(0), b'{"rssi": "\xff\xfe"}')
            pub.publish(BEACON.format(0), b'{"rssi": NaN}')
            pub.publish(BEACON.format(0), b'{"rssi": 42}')
            pub.publish(BEACON.format(0), b'{"rssi": [-60]}')
            for i in range(10):
                pub.publish(BEACON.format(i), json.dumps({"rssi": -70 - i}))
            now = time.time()
            batch = [Observation(ts=now, receiver_id="x", emitter_id=PSEUDO.pseudonym("ble", f"p{i}", now),
                                 tech="ble", rssi_dbm=-60.0 - i) for i in range(10)]
            pub.publish(santi_topic(STORE, "greens"), encode_batch(batch))
            await asyncio.to_thread(wait_until, lambda: len(received) >= 20, 15.0, 'len(received) >= 20')
            await asyncio.sleep(0.2)
        finally:
            pub.disconnect()
            pub.loop_stop()
        assert len(received) == 20
        assert source.stats.accepted == 20

    source = run_with_source(broker, example_site, body)
    assert dict(source.stats.dropped) == {"too_deep": 3, "not_json": 1, "too_large": 1, "bad_rssi": 3,
                                          "impossible_rssi": 1}
    assert not source.stats.crashed


class ThreadKiller(BaseException):
    """What no handler should catch: stands for whatever could still kill paho's thread."""


def _watchdog_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    path = tmp_path / "notify"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # pings every 0.5 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    return server


def _pings(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            message = server.recv(4096)
        except BlockingIOError:
            return count
        count += message.split(b"\n").count(b"WATCHDOG=1")


def test_dead_network_thread_marks_the_source_down_and_starves_the_watchdog(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _watchdog_socket(tmp_path, monkeypatch)
    site = load_site(example_site_for(tmp_path, broker.port))
    ingest = NodeIngest(site.receivers, PSEUDO, STORE)
    source = NodesSource(ingest, BrokerConfig(broker.host, broker.port))
    service = Service(site, [source], state_dir=tmp_path / "state")
    status_file = tmp_path / "state" / "status.json"

    def kill(topic: str, payload: bytes, now: float) -> list[Observation]:
        raise ThreadKiller("forced")

    async def main() -> None:
        task = asyncio.create_task(service.run())
        try:
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 15.0, 'source.stats.state == "up"')
            await asyncio.to_thread(wait_until, lambda: _pings(server) > 0, 5.0, '_pings(server) > 0')
            monkeypatch.setattr(ingest, "ingest", kill)
            pub = publisher(broker)
            try:
                pub.publish(BEACON.format(1), json.dumps({"rssi": -60}))
                await asyncio.to_thread(wait_until, lambda: source.stats.crashed, 15.0, 'source.stats.crashed')
            finally:
                pub.disconnect()
                pub.loop_stop()
            assert source.stats.state == "down"
            assert source.stats.last_error is not None
            assert "ThreadKiller" in source.stats.last_error
            await asyncio.sleep(1.0)  # a ping already due may still go out
            _pings(server)
            await asyncio.sleep(2.0)  # four watchdog intervals
            assert _pings(server) == 0
            await asyncio.to_thread(wait_until, lambda: status_file.is_file()
                        and json.loads(status_file.read_text())["sources"]["nodes"]["state"] == "down", 10.0, 'status_file.is_file() and json.loads(status_file.read_text())["sources"]["nodes"]["state"] == "down"')
        finally:
            service.stop.set()
            await asyncio.wait_for(task, 20)

    try:
        asyncio.run(main())
    finally:
        server.close()


def _ingest() -> NodeIngest:
    site = load_site(Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml")
    return NodeIngest(site.receivers, PSEUDO, STORE)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=600) | st.sampled_from([NESTED, HUGE_RSSI, b'{"rssi": -60}', b"{}"]),
                max_size=20))
def test_arbitrary_bytes_on_espresense_never_raise_and_are_all_accounted(payloads: list[bytes]) -> None:
    ingest = _ingest()
    accepted = 0
    for i, payload in enumerate(payloads):
        accepted += len(ingest.ingest(BEACON.format(i), payload, 1_763_900_000.0))
    assert accepted + sum(ingest.stats.dropped.values()) == len(payloads)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=600) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20).map(lambda value: json.dumps(value).encode()), max_size=10))
def test_arbitrary_santi_batches_never_raise(payloads: list[bytes]) -> None:
    ingest = _ingest()
    for payload in payloads:
        observations = ingest.ingest(santi_topic(STORE, "greens"), payload, 1_763_900_000.0)
        assert all(isinstance(item, Observation) for item in observations)
    assert "internal_error" not in ingest.stats.dropped


def test_a_dead_nfc_reader_thread_marks_the_source_crashed() -> None:
    reader = load_site(Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml").nfc_readers[0]

    def open_frontend(path: str) -> NoReturn:
        raise ThreadKiller("forced")

    source = NfcSource(reader, PSEUDO, open_frontend=open_frontend)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(lambda _record: None, stop))
        try:
            await asyncio.to_thread(wait_until, lambda: source.stats.crashed, 5.0, 'source.stats.crashed')
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

    asyncio.run(main())
    assert source.stats.state == "down"
    assert source.stats.last_error is not None
    assert "ThreadKiller" in source.stats.last_error


def test_an_unforeseen_error_is_one_counted_drop_and_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ingest = _ingest()

    def broken(topic: str, payload: bytes, now: float) -> Observation:
        raise KeyError("a bug nobody foresaw")

    monkeypatch.setattr(ingest, "_espresense", broken)
    with caplog.at_level(logging.WARNING, logger="agent.sources.node_ingest"):
        for i in range(100):
            assert ingest.ingest(BEACON.format(i), b'{"rssi": -60}', 1_763_900_000.0) == []
    assert ingest.stats.dropped == {"internal_error": 100}
    assert len(caplog.records) == 1
    assert "2686f39c" not in caplog.text  # the topic (a device id) stays out of the log
