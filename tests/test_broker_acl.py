"""The HQ broker's ACL template on a real mosquitto: a store reads only its own staff cards and publishes only as itself."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import SiteConfig, load_site
from agent.doctor_acl import PROBE_STORE, check_broker_acl
from agent.events import ack_topic, status_topic
from agent.localbroker import Broker, example_site_for
from agent.messages import consent_topic, staff_topic
from tests.helpers.wait import wait_until

ACL = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "santi-hq.acl"
USERS = {"store-a": "pw-a", "store-b": "pw-b", "santi-hq": "pw-hq", "santi-ciam": "pw-ciam",
         "fishmonger-01": "pw-f"}
"""fishmonger-01: the example site's store, whose agent ``santi doctor`` checks."""


class Client:
    """A connected MQTT 5 client that records what it receives and its PUBACK reason codes."""

    def __init__(self, broker: Broker, user: str) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.acks: dict[int, ReasonCode] = {}
        self.subacks: list[list[ReasonCode]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-{user}", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, USERS[user])
        self.client.on_message = self._message
        self.client.on_publish = self._publish
        self.client.on_subscribe = self._subscribe
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        wait_until(self.client.is_connected, what=f"{user} connected")

    def _message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append((message.topic, message.payload))

    def _publish(self, _c: mqtt.Client, _u: object, mid: int, reason: ReasonCode, _p: object) -> None:
        with self.lock:
            self.acks[mid] = reason

    def _subscribe(self, _c: mqtt.Client, _u: object, _mid: int, reasons: list[ReasonCode], _p: object) -> None:
        with self.lock:
            self.subacks.append(list(reasons))

    def subscribe(self, topic: str) -> ReasonCode:
        count = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        wait_until(lambda: len(self.subacks) > count, what=f"SUBACK for {topic}")
        return self.subacks[-1][0]

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        return wait_until(lambda: self.acks.get(info.mid), what=f"PUBACK for {topic}")

    def topics(self) -> list[str]:
        with self.lock:
            return [t for t, _ in self.received]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _broker(tmp_path: Path, *, acl: bool) -> Iterator[Broker]:
    """Logins for USERS; the ACL template, or none (every login reads and writes everything)."""
    passwords = tmp_path / "passwd"
    passwords.touch()
    for user, password in USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True, capture_output=True)
    broker = Broker(tmp_path, extra_config=f"allow_anonymous false\npassword_file {passwords}"
                                           + (f"\nacl_file {ACL}" if acl else ""))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Broker]:
    yield from _broker(tmp_path, acl=True)


@pytest.fixture
def open_broker(tmp_path: Path) -> Iterator[Broker]:
    yield from _broker(tmp_path, acl=False)


def _agent_site(tmp_path: Path, broker: Broker) -> SiteConfig:
    """The example store's agent, logging in as its store id."""
    secret = tmp_path / "agent.password"
    secret.write_text(USERS["fishmonger-01"], encoding="utf-8")
    secret.chmod(0o600)
    path = example_site_for(tmp_path, broker.port)
    text = path.read_text(encoding="utf-8")
    text = text.replace(f"port = {broker.port}\n",
                        f'port = {broker.port}\nusername = "fishmonger-01"\npassword_file = "{secret}"\n', 1)
    path.write_text(text, encoding="utf-8")
    site = load_site(path)
    assert site.uplink.username == "fishmonger-01"
    return site


def _retained_status(broker: Broker, store: str) -> None:
    """Another store's agent online: its retained status, as every agent leaves on the broker."""
    other = Client(broker, store)
    try:
        info = other.client.publish(status_topic(store, "pi-1"), b'{"online": true}', qos=1, retain=True)
        assert wait_until(lambda: other.acks.get(info.mid), what="status PUBACK").value in (0, 0x10)  # 0x10: no subscriber yet
    finally:
        other.close()


def test_doctor_is_quiet_under_the_acl_template(tmp_path: Path, acl_broker: Broker) -> None:
    _retained_status(acl_broker, "store-b")
    _retained_status(acl_broker, "fishmonger-01")  # its own status is its to read
    check = check_broker_acl(_agent_site(tmp_path, acl_broker), timeout=3.0, listen_s=1.0)
    assert check.status == "ok", check
    assert "received nothing of other stores" in check.detail


def test_doctor_warns_when_the_store_can_read_another_stores_topics(tmp_path: Path, open_broker: Broker) -> None:
    _retained_status(open_broker, "store-b")
    check = check_broker_acl(_agent_site(tmp_path, open_broker), timeout=3.0, listen_s=1.0)
    assert check.status == "warn", check
    assert status_topic("store-b", "pi-1") in check.detail
    assert "santi-hq.acl" in check.fix
    assert "\n" not in check.detail


def test_doctor_warns_on_its_own_probe_when_no_other_store_is_there(tmp_path: Path, open_broker: Broker) -> None:
    check = check_broker_acl(_agent_site(tmp_path, open_broker), timeout=3.0, listen_s=1.0)
    assert check.status == "warn", check
    assert check.detail.endswith(staff_topic(PROBE_STORE))


def test_a_store_reads_only_its_own_staff_cards_and_publishes_only_as_itself(acl_broker: Broker) -> None:
    a, b, hq = Client(acl_broker, "store-a"), Client(acl_broker, "store-b"), Client(acl_broker, "santi-hq")
    try:
        assert hq.subscribe("$share/hq/santi/v1/+/+/events/#").value < 0x80
        a.subscribe(staff_topic("store-a"))
        a.subscribe(ack_topic("store-a", "pi-1"))
        refused = b.subscribe(staff_topic("store-a"))
        b.subscribe(ack_topic("store-a", "pi-1"))
        b.subscribe("santi/v1/+/hq/staff")
        b.subscribe(staff_topic("store-b"))

        assert hq.publish(staff_topic("store-a"), b'{"card": "for A"}').value == 0
        assert hq.publish(ack_topic("store-a", "pi-1"), b'{"seq": 1}').value == 0
        assert hq.publish(staff_topic("store-b"), b'{"card": "for B"}').value == 0
        wait_until(lambda: staff_topic("store-a") in a.topics() and staff_topic("store-b") in b.topics(), what="cards")
        assert ack_topic("store-a", "pi-1") in wait_until(a.topics, what="A's ack")

        # B's own card arrived after A's: had B been allowed A's card, it would be here by now.
        assert set(b.topics()) == {staff_topic("store-b")}
        # mosquitto 2.0 grants the SUBACK and filters on delivery: what matters is that nothing arrives.
        assert refused.value < 0x80

        # B may publish as itself, never as A; the HQ subscriber sees only B's own event.
        assert b.publish("santi/v1/store-b/pi-9/events/visit.started", b"{}").value == 0
        denied = b.publish("santi/v1/store-a/pi-1/events/visit.started", b"{}")
        assert denied.value == 0x87, denied  # Not authorized
        assert b.publish(staff_topic("store-a"), b'{"card": "forged"}').value == 0x87
        assert b.publish(ack_topic("store-a", "pi-1"), b'{"seq": 99}').value == 0x87
        wait_until(lambda: "santi/v1/store-b/pi-9/events/visit.started" in hq.topics(), what="B's event at HQ")
        assert b.publish("santi/v1/store-b/pi-9/events/visit.ended", b"{}").value == 0
        wait_until(lambda: "santi/v1/store-b/pi-9/events/visit.ended" in hq.topics(), what="B's second event")
        assert all(not t.startswith("santi/v1/store-a/") for t in hq.topics())
        assert a.topics().count(staff_topic("store-a")) == 1
    finally:
        for client in (a, b, hq):
            client.close()


def test_consent_is_written_by_the_ciam_and_read_by_hq_only(acl_broker: Broker) -> None:
    ciam, hq, a = Client(acl_broker, "santi-ciam"), Client(acl_broker, "santi-hq"), Client(acl_broker, "store-a")
    try:
        hq.subscribe("santi/v1/hq/consent/#")
        a.subscribe("santi/v1/hq/consent/#")
        assert a.publish(consent_topic("L1"), b"{}").value == 0x87
        assert ciam.publish(consent_topic("L1"), b'{"ok": 1}').value == 0
        wait_until(lambda: consent_topic("L1") in hq.topics(), what="consent at HQ")
        assert hq.topics() == [consent_topic("L1")]
        assert a.topics() == []
    finally:
        for client in (ciam, hq, a):
            client.close()
