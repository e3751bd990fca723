"""The nodes source under test: run it against a real broker with a test body in its loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.config import load_site
from agent.localbroker import Broker
from agent.mqttclient import BrokerConfig
from agent.privacy import Pseudonymizer
from agent.sources.base import Record
from agent.sources.node_ingest import NodeIngest
from agent.sources.node_subscriber import NodesSource
from tests.helpers.wait import wait_until

STORE = "fishmonger-01"


def run_with_source(broker: Broker, example_site: Path,
                    body: Callable[[NodesSource, list[Record]], Awaitable[None]],
                    queue_size: int = 1000, sink_delay_s: float = 0.0) -> NodesSource:
    site = load_site(example_site)
    ingest = NodeIngest(site.receivers, Pseudonymizer(b"k" * 32, STORE, 86_400.0), STORE)
    source = NodesSource(ingest, BrokerConfig(broker.host, broker.port), queue_size=queue_size)
    received: list[Record] = []

    def sink(record: Record) -> None:
        if sink_delay_s and not received:
            time.sleep(sink_delay_s)  # a stalled consumer, to fill the bridge queue
        received.append(record)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(sink, stop))
        try:
            await asyncio.to_thread(wait_until, lambda: source.stats.state == "up", 15.0, 'source.stats.state == "up"')
            await body(source, received)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    asyncio.run(main())
    return source
