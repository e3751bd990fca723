"""Node messages in, observations out: the sans-I/O half of the store's receiver nodes.

Two kinds of node publish RSSI on the store's local broker:

* ESPresense firmware on ESP32s: ``espresense/devices/<device id>/<room>``
  with a JSON object per sighting (``rssi``, ``rssi@1m``, ``distance``, ...).
  Real nodes send numbers as strings now and then and carry mis-calibrated
  reference powers; both are tolerated and counted as quirks.
* Santi itself in node role: ``santi/v1/<store>/nodes/<node id>/observations``
  with a JSON array (or JSON lines) of ``Observation``s whose emitter ids are
  already pseudonymised with the store's shared secret (``encode_batch``
  writes that form, ``agent.node_publisher`` sends it).

A node's name (the ESPresense room, the Santi node id) is looked up among the
site's receivers of ``kind = "node"`` by ``node_name``; an unknown node is
counted per name and logged once, never guessed at. ESPresense device ids are
pseudonymised here, at once: an iBeacon id follows the BLE source's identity
rule (``ibeacon:<uuid>:<major>:<minor>``) so that the same phone gets the same
emitter id from the Pi's own radio and from every node. Given the site's
``[ble]`` settings, nodes obey the same allow-list as the local radio: unless
``allow_all``, only iBeacons of the configured UUIDs are admitted (other
ESPresense ids are dropped as ``not_allowed``).

Anyone who can publish on that broker is untrusted, so a message is hostile
until parsed: its size is capped before parsing, and whatever parsing or
validation raises (``RecursionError`` from ``[[[...]]]``, ``OverflowError``
from a 400-digit number, bad UTF-8, wrong types, NaN) becomes a drop
counted by reason, never an exception.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError

from agent.config import BleConfig, ReceiverConfig
from agent.errors import SantiError
from agent.observations import (
    NOT_PSEUDONYMISED,
    Observation,
    drop_reason,
    is_pseudonym,
    rssi_problem,
)
from agent.privacy import Pseudonymizer
from agent.ratelimit import Throttle
from agent.sources.base import SourceStats

log = logging.getLogger(__name__)

ESPRESENSE_PREFIX = "espresense"
MAX_PAYLOAD_BYTES = 256 * 1024
"""A Santi node batch: 500 observations of ~150 bytes each fit three times over."""
MAX_ESPRESENSE_BYTES = 4096
"""An ESPresense sighting is a flat object of ~300 bytes; anything far bigger is not one."""
MAX_NAMES_TRACKED = 1024
"""Distinct unknown node names remembered; garbage topics cannot exhaust memory."""

ID_CACHE_SIZE = 8192

_IBEACON = re.compile(
    r"^ibeacon:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-(\d{1,5})-(\d{1,5})$",
    re.IGNORECASE,
)
_PARSE_ERRORS = (UnicodeDecodeError, ValueError, RecursionError, OverflowError, TypeError)
"""What ``json.loads`` and number conversion raise on hostile input (nesting, huge numbers, bad UTF-8)."""


class Dropped(SantiError):
    """An input that cannot become an observation; ``reason`` is the counter's key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def santi_topic(store_id: str, node_id: str) -> str:
    """Where a Santi node publishes its observation batches."""
    return f"santi/v1/{store_id}/nodes/{node_id}/observations"


def espresense_identity(device_id: str) -> str:
    """The raw identity an ESPresense device id stands for, before pseudonymising.

    iBeacon ids (``iBeacon:<uuid>-<major>-<minor>``) become the BLE source's
    ``ibeacon:<uuid lowercase>:<major>:<minor>``; every other id (a MAC, or a
    fingerprint such as ``apple:1005:9-26``) is used as it is.
    """
    match = _IBEACON.match(device_id)
    if match is not None:
        uuid, major, minor = match.group(1).lower(), int(match.group(2)), int(match.group(3))
        if major <= 0xFFFF and minor <= 0xFFFF:
            return f"ibeacon:{uuid}:{major}:{minor}"
    return device_id


def _number(value: Any) -> float:
    """A finite float from a JSON number or a numeric string (real nodes send both)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    try:
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str) and len(value) <= 32:
            number = float(value.strip())
        else:
            raise ValueError(f"{type(value).__name__} is not a number")
    except OverflowError:  # an int of hundreds of digits
        raise ValueError("too large") from None
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number

class NodeIngest:
    """Turns node messages into observations; counts every drop and quirk.

    ``stats.dropped`` holds drops by reason; ``quirks`` counts oddities that
    were tolerated (string numbers, an implausible ``rssi@1m`` that was
    ignored); ``unknown_nodes`` counts messages per unconfigured node name.
    ``ingest`` never raises: an exception nobody foresaw is counted as
    ``internal_error`` and logged (rate-limited) with its type.
    """

    def __init__(
        self,
        receivers: Sequence[ReceiverConfig],
        pseudonymizer: Pseudonymizer,
        store_id: str,
        *,
        stats: SourceStats | None = None,
        ble: BleConfig | None = None,
        max_age_s: float = 60.0,
        max_ahead_s: float = 5.0,
    ) -> None:
        self._nodes = {
            receiver.node_name.lower(): receiver.id
            for receiver in receivers
            if receiver.kind == "node" and receiver.node_name is not None
        }
        self._pseudonymizer = pseudonymizer
        self._allow_all = ble is None or ble.allow_all
        self._beacon_uuids = frozenset(ble.ibeacon_uuids) if ble is not None else frozenset()
        self._santi_prefix = f"santi/v1/{store_id}/nodes/"
        self._max_age_s = max_age_s
        self._max_ahead_s = max_ahead_s
        self.stats = stats or SourceStats("nodes")
        self.quirks: Counter[str] = Counter()
        self.unknown_nodes: Counter[str] = Counter()
        self._emitters: dict[tuple[str, int], str] = {}
        self._throttle = Throttle()

    @property
    def topics(self) -> list[str]:
        """The subscriptions that feed this ingest."""
        return [f"{ESPRESENSE_PREFIX}/devices/+/+", f"{self._santi_prefix}+/observations"]

    def ingest(self, topic: str, payload: bytes, now: float) -> list[Observation]:
        """The observations in one message (possibly none); drops are counted, never raised."""
        try:
            if len(payload) > MAX_PAYLOAD_BYTES:
                raise Dropped("too_large")
            if topic.startswith(self._santi_prefix):
                return self._santi(topic, payload, now)
            if topic.startswith(ESPRESENSE_PREFIX + "/devices/"):
                if len(payload) > MAX_ESPRESENSE_BYTES:
                    raise Dropped("too_large")
                return [self._espresense(topic, payload, now)]
            raise Dropped("unexpected_topic")
        except Dropped as drop:
            self.stats.drop(drop.reason, topic=topic[:200])
        except Exception as exc:  # noqa: BLE001 -- a hostile payload must cost one message, never the source
            self.stats.drop("internal_error", topic=topic[:200])
            held = self._throttle.allow(type(exc).__name__, time.monotonic())
            if held is not None:
                log.warning("node message dropped: unexpected error while parsing it",  # no topic: it may hold a MAC
                            extra={"format": topic.split("/", 1)[0][:20], "error": type(exc).__name__,
                                   "similar_since_last": held})
        return []

    def _receiver(self, name: str) -> str:
        receiver = self._nodes.get(name.lower())
        if receiver is None:
            if name in self.unknown_nodes or len(self.unknown_nodes) < MAX_NAMES_TRACKED:
                if name not in self.unknown_nodes:
                    log.warning("message from an unknown node ignored; add a receiver with this node_name",
                                extra={"node": name[:100]})
                self.unknown_nodes[name] += 1
            raise Dropped("unknown_node")
        return receiver

    def _espresense(self, topic: str, payload: bytes, now: float) -> Observation:
        parts = topic.split("/")
        if len(parts) != 4 or not parts[2] or not parts[3]:
            raise Dropped("bad_topic")
        device_id, room = parts[2], parts[3]
        receiver = self._receiver(room)
        if not self._allow_all and not self._admits(device_id):
            raise Dropped("not_allowed")
        data = _loads(payload)
        if not isinstance(data, dict):
            raise Dropped("not_an_object")
        raw_rssi = data.get("rssi")
        if raw_rssi is None:
            raise Dropped("no_rssi")
        try:
            rssi = _number(raw_rssi)
        except ValueError:
            raise Dropped("bad_rssi") from None
        if isinstance(raw_rssi, str):
            self.quirks["string_number"] += 1
        problem = rssi_problem(rssi)
        if problem is not None:
            raise Dropped(problem)
        tx_power = self._reference_power(data.get("rssi@1m"))
        emitter = self._emitter(device_id, now)
        return Observation(ts=now, receiver_id=receiver, emitter_id=emitter, tech="ble",
                           rssi_dbm=rssi, tx_power_dbm=tx_power)

    def _admits(self, device_id: str) -> bool:
        """The BLE source's rule: without ``allow_all``, only the loyalty app's iBeacon UUIDs."""
        identity = espresense_identity(device_id)
        return identity.startswith("ibeacon:") and identity.split(":")[1] in self._beacon_uuids

    def _emitter(self, device_id: str, now: float) -> str:
        """Pseudonym of a device id, cached per salt period: every node reports the same phones."""
        key = (device_id, self._pseudonymizer.period(now))
        emitter = self._emitters.get(key)
        if emitter is None:
            if len(self._emitters) >= ID_CACHE_SIZE:
                self._emitters.clear()
            emitter = self._pseudonymizer.pseudonym("ble", espresense_identity(device_id), now)
            self._emitters[key] = emitter
        return emitter

    def _reference_power(self, raw: Any) -> float | None:
        """``rssi@1m`` if plausible; a positive or absurd value (sign bugs, wrong programming) is ignored."""
        if raw is None:
            return None
        try:
            value = _number(raw)
        except ValueError:
            self.quirks["bad_rssi_at_1m"] += 1
            return None
        if isinstance(raw, str):
            self.quirks["string_number"] += 1
        if not -100.0 <= value < 0.0:
            self.quirks["implausible_rssi_at_1m"] += 1
            return None
        return value

    def _santi(self, topic: str, payload: bytes, now: float) -> list[Observation]:
        rest = topic[len(self._santi_prefix):]
        node_id, _, tail = rest.partition("/")
        if not node_id or tail != "observations":
            raise Dropped("bad_topic")
        receiver = self._receiver(node_id)
        items = self._santi_items(payload)
        out: list[Observation] = []
        for item in items:
            try:
                observation = Observation.model_validate(item)
            except ValidationError as exc:
                self.stats.drop(drop_reason(exc, "bad_observation"), node=node_id)
                continue
            if not is_pseudonym(observation.emitter_id):
                self.stats.drop(NOT_PSEUDONYMISED, node=node_id)
                continue
            if observation.ts < now - self._max_age_s:
                self.stats.drop("stale", node=node_id)
                continue
            if observation.ts > now + self._max_ahead_s:
                self.stats.drop("clock_ahead", node=node_id)
                continue
            out.append(observation.model_copy(update={"receiver_id": receiver}))
        return out

    @staticmethod
    def _santi_items(payload: bytes) -> list[Any]:
        stripped = payload.lstrip()
        if stripped.startswith(b"["):
            items = _loads(stripped)
            if not isinstance(items, list):
                raise Dropped("not_a_batch")
            return items
        return [_loads(line) for line in payload.splitlines() if line.strip()]


def _loads(payload: bytes) -> Any:
    """JSON from a payload, or a drop: ``too_deep`` for hostile nesting, ``not_json`` for the rest."""
    try:
        return json.loads(payload)
    except RecursionError:
        raise Dropped("too_deep") from None
    except _PARSE_ERRORS:
        raise Dropped("not_json") from None


def encode_batch(observations: Iterable[Observation]) -> bytes:
    """The wire form of a Santi node batch: one JSON array."""
    return b"[" + b",".join(item.model_dump_json().encode() for item in observations) + b"]"
