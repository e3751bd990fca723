"""``santi doctor``: can this store's broker login read other stores' topics?

Staff cards name loyalty customers, so a store must read only its own. The
HQ broker's ACL template (``deploy/mosquitto/santi-hq.acl``) gives a store's
user read access under its own ``santi/v1/<store_id>/`` only. Mosquitto
grants the SUBACK of a filter it will never deliver on (it filters each
message), so the check looks at what arrives instead: with the agent's own
login it subscribes to every store's status and staff topics, and publishes
one probe on the staff topic of a made-up store. The probe coming back, or
another store's retained status, means this login reads other stores.
Under the template the probe is refused and only the store's own status
arrives. A broker with no other store and a login that may read but not
write elsewhere cannot be told apart from a good one: the check says so.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any

from agent.checks import Check, ok, warn
from agent.config import ConfigError, SiteConfig
from agent.messages import staff_topic
from agent.mqttclient import BrokerConfig, new_client, tls_context

NAME = "broker acl"
PROBE_STORE = "santi-doctor-acl-probe"
"""A store id no site uses: its staff topic is where the probe goes."""
PROBE = b"santi doctor: ACL probe, not a staff card"
FIX = ("install deploy/mosquitto/santi-hq.acl on the HQ broker and give each store its own user named "
       "after its store id (see the file's header)")


def check_broker_acl(site: SiteConfig, *, timeout: float = 3.0, listen_s: float = 1.0) -> Check:
    """Warn when the agent's login receives anything from another store's topics within ``listen_s``."""
    uplink = site.uplink
    own = site.store.id
    cfg = BrokerConfig.of(uplink, f"{site.agent.id}-doctor-acl-{os.getpid()}", uplink.protocol)
    try:
        client = new_client(cfg, context=None if uplink.tls is None else tls_context(uplink.tls))
    except (ConfigError, OSError, ssl.SSLError) as exc:
        return warn(NAME, f"not checked: {exc}", "see the broker and broker tls checks")
    lock = threading.Lock()
    foreign: set[str] = set()
    connected, subscribed = threading.Event(), threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            connected.set()

    def on_subscribe(*_args: Any) -> None:
        subscribed.set()

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        parts = message.topic.split("/")
        if len(parts) > 2 and parts[2] != own:
            with lock:
                foreign.add(message.topic)

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect_timeout = timeout
    try:
        client.connect(uplink.host, uplink.port, keepalive=max(uplink.keepalive_s, 5))
    except (OSError, ssl.SSLError) as exc:
        return warn(NAME, f"not checked: {uplink.host}:{uplink.port}: {exc}", "see the broker check")
    client.loop_start()
    try:
        if not connected.wait(timeout):
            return warn(NAME, "not checked: the broker did not accept the connection", "see the broker check")
        client.subscribe([("santi/v1/+/+/status", 1), ("santi/v1/+/hq/staff", 1)])
        if not subscribed.wait(timeout):
            return warn(NAME, "not checked: no SUBACK from the broker", "see the broker check")
        client.publish(staff_topic(PROBE_STORE), PROBE, qos=1)
        threading.Event().wait(listen_s)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        seen = sorted(foreign)
    if seen:
        more = f" and {len(seen) - 2} more" if len(seen) > 2 else ""
        return warn(NAME, f"store {own}'s login can read other stores' topics: {', '.join(seen[:2])}{more}", FIX)
    return ok(NAME, f"store {own}'s login received nothing of other stores in {listen_s:g} s (its probe on "
                    f"{staff_topic(PROBE_STORE)} was not delivered, and no other store's retained status)")
