"""``/metrics``: the latest window's figures in the Prometheus text format.

A collector reads the console's latest :class:`~agent.console.snapshot.Snapshot`
at scrape time, so a scrape costs nothing between scrapes and every figure
of one scrape comes from the same window. Counters are the agent's own
running totals (they restart at 0 with the process, which Prometheus's
``rate()`` expects). The publish latency is a real histogram, observed once
per window for the events that left the outbox since the previous one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.console.snapshot import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
"""Seconds from the outbox to its acknowledgement: sub-second online, up to hours after an outage."""


class _SnapshotCollector(Collector):
    def __init__(self, latest: Callable[[], Snapshot | None]) -> None:
        self._latest = latest

    def collect(self) -> Iterable[Metric]:
        snap = self._latest()
        if snap is None:
            return
        observations = CounterMetricFamily("santi_observations", "Records accepted, by source.", labels=["source"])
        for name, count in snap.observations_by_source.items():
            observations.add_metric([name], count)
        readings = CounterMetricFamily("santi_receiver_readings", "Readings located, by receiver.",
                                       labels=["receiver"])
        healthy = GaugeMetricFamily("santi_receiver_healthy", "1 when the receiver was heard recently.",
                                    labels=["receiver"])
        for receiver in snap.receivers:
            readings.add_metric([receiver.id], receiver.readings)
            healthy.add_metric([receiver.id], 1.0 if receiver.health == "ok" else 0.0)
        dropped = CounterMetricFamily("santi_dropped", "Inputs dropped, by where and why.", labels=["where", "reason"])
        for source in snap.sources:
            for reason, count in source.dropped.items():
                dropped.add_metric([source.name, reason], count)
        for reason, count in snap.dropped.items():
            dropped.add_metric(["agent", reason], count)
        occupancy = GaugeMetricFamily("santi_sector_occupancy", "Open visits now in each sector.", labels=["sector"])
        for sector, count in snap.occupancy.items():
            occupancy.add_metric([sector], count)
        events = CounterMetricFamily("santi_events", "Events stored in the outbox, by type.", labels=["type"])
        for kind, count in snap.events_by_type.items():
            events.add_metric([kind], count)
        age = 0.0 if snap.oldest_unsent is None else max(snap.t - snap.oldest_unsent, 0.0)
        yield from (
            observations, readings, healthy, dropped, occupancy, events,
            GaugeMetricFamily("santi_tracks", "Emitters tracked now.", value=len(snap.emitters)),
            GaugeMetricFamily("santi_outbox_depth", "Events stored and not yet acknowledged.", value=snap.outbox_depth),
            GaugeMetricFamily("santi_outbox_oldest_age_seconds", "Age of the oldest unsent event (0: none).",
                              value=age),
            GaugeMetricFamily("santi_uplink_connected", "1 when the uplink is online.",
                              value=1.0 if snap.uplink_state == "online" else 0.0),
        )


class Metrics:
    """The console's registry: the snapshot collector and the publish latency histogram."""

    def __init__(self, latest: Callable[[], Snapshot | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SnapshotCollector(latest))
        self.latency = Histogram("santi_publish_latency_seconds",
                                 "Seconds from stored in the outbox to acknowledged and deleted.",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe_latencies(self, seconds: Iterable[float]) -> None:
        for value in seconds:
            self.latency.observe(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
