"""A technician's survey walk in a real store: the reference tag's readings at every receiver, and where it was.

`santi calibrate fit` learns the store from a walk whose positions are
known: each receiver's model, the radio map, the sectors' fingerprints and
which tracker to run. In simulation `santi sim --survey` makes that walk;
in a store the technician makes it. They carry the reference tag at chest
height along a route of points marked on the floor (taped crosses at
measured coordinates) and press Enter as they reach each one, walking at a
steady pace between them; the tag's position in between is taken as on
the straight line, at the time's share of the leg. Meanwhile the agent's
own sources listen: the Pi's Bluetooth adapter (`BleSource`) and the
store's nodes on their broker (`NodesSource`), admitting only the tag's
iBeacon UUID or Eddystone namespace, and the readings of the tag's exact
identity are kept. Nodes report iBeacon tags by their id; an Eddystone tag
is heard by the Pi's own radio only.
"""

from __future__ import annotations

import re
import time
from collections import Counter

from shapely.geometry import Point, Polygon

from agent.backoff import INTERACTIVE_RETRY
from agent.calibration_walk import Beacon, Clock, TagListener, WalkCaptureError
from agent.config import SiteConfig
from agent.mqttclient import BrokerConfig
from agent.observations import Observation
from agent.sources.ble import BleSource
from agent.sources.node_ingest import NodeIngest
from agent.sources.node_subscriber import NodesSource

_POINT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*$")
MIN_LEG_M = 0.5
"""Consecutive points of a route closer than this are one point: a leg needs a walk to time."""


def parse_route(text: str, site: SiteConfig) -> tuple[tuple[float, float], ...]:
    """``X,Y X,Y ...`` (or separated by ``;``), store metres: at least two points, each inside the store's outline,
    consecutive ones at least MIN_LEG_M apart. ValueError with one line saying what is wrong."""
    parts = text.replace(";", " ").split()
    points: list[tuple[float, float]] = []
    for part in parts:
        match = _POINT.match(part)
        if match is None:
            raise ValueError(f"{part!r} is not a point: give X,Y in store metres, points separated by spaces "
                             "(e.g. '2,2 2,18 28,18')")
        points.append((float(match[1]), float(match[2])))
    if len(points) < 2:
        raise ValueError("a route needs at least two points: the walk between them is what is timed")
    outline = Polygon(site.store.outline)
    for k, (x, y) in enumerate(points, start=1):
        if not outline.covers(Point(x, y)):
            raise ValueError(f"point {k} ({x:g}, {y:g}) is outside the store's outline")
    for k in range(1, len(points)):
        (x0, y0), (x1, y1) = points[k - 1], points[k]
        if ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 < MIN_LEG_M:
            raise ValueError(f"points {k} and {k + 1} are less than {MIN_LEG_M:g} m apart: one point, not a leg")
    return tuple(points)


class SurveyCapture(TagListener):
    """The tag's readings at the Pi's adapter and at the nodes, through the agent's own sources; what it keeps is
    (time, receiver, RSSI) of the tag alone."""

    def __init__(self, site: SiteConfig, beacon: Beacon, *, clock: Clock = time.time,
                 start_timeout_s: float = 15.0) -> None:
        super().__init__(beacon, "survey", clock=clock, start_timeout_s=start_timeout_s)
        admitting = beacon.ble_config(site.ble.adapter)
        local = [r for r in site.receivers if r.kind == "ble"]
        if local:
            self.listen(BleSource(admitting, local[0].id, self.pseudonymizer, clock=clock, retry=INTERACTIVE_RETRY),
                        "Bluetooth", "no answer from BlueZ")
        if site.nodes is not None and any(r.kind == "node" for r in site.receivers):
            ingest = NodeIngest(site.receivers, self.pseudonymizer, site.store.id, ble=admitting)
            broker = BrokerConfig.of(site.nodes, f"santi-{site.store.id}-{site.agent.id}-survey")
            self.listen(NodesSource(ingest, broker, clock=clock), "the nodes' broker", "no answer from the broker")
        if not self._sources:
            raise WalkCaptureError("the site has no Bluetooth receiver: a survey needs a kind = \"ble\" receiver "
                                   "or node receivers with a [nodes] broker")

    def heard(self) -> Counter[str]:
        """Readings of the tag so far, per receiver id."""
        with self._lock:
            return Counter(r.receiver_id for r in self._readings)

    def readings(self) -> list[Observation]:
        """Every reading of the tag so far, in arrival order."""
        with self._lock:
            return list(self._readings)
