"""Consent and activation inside HQ, through a real mosquitto, SQLite or PostgreSQL, and a real HTTP server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from agent.backoff import BackoffPolicy
from agent.cli import cli
from agent.events import CardTapped, Event, IdentityLinked, SectorEntered, VisitStarted, uuid7
from agent.localbroker import Broker
from agent.messages import ConsentUpdate, StaffCard, consent_topic, staff_topic
from hq.backends import open_store
from hq.ingest import Accepted
from hq.runner import ActivationRunner, activation_id
from hq.store import DeliveryRow, FiringRow, HqStoreError, Store
from hq.subscriber import HqSubscriber
from hq.synthetic import synthetic_stream
from hq.webhook import verify
from tests.conftest import ROOT
from tests.helpers.consent import SYNTHETIC_IDS, grant
from tests.helpers.hq import START, decoded, pg_schema_url, publish, wire
from tests.helpers.http import http_receiver
from tests.helpers.wait import wait_until

STORE, AGENT = "s1", "a1"
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

RULES = """
timezone = "UTC"

[[rule]]
id = "greet"
text = "Say hello"
facts = ["visits_in_days"]

[rule.trigger]
event = "sector.entered"

[rule.limits]
once_per_visit = false

[[rule.action]]
kind = "staff"

[[rule.action]]
kind = "mqtt"
"""


def rules_file(tmp_path: Path, text: str = RULES) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    return path


class Seq:
    """Events of one agent, numbered as its outbox would."""

    def __init__(self) -> None:
        self.seq = 0
        self.at = T0

    def __call__(self, model: type[Event], **fields: object) -> Event:
        self.seq += 1
        self.at += timedelta(seconds=30)
        return model.model_validate({"event_id": uuid7(int(self.at.timestamp() * 1000)), "ts": self.at,
                                     "store_id": STORE, "agent_id": AGENT, "seq": self.seq, **fields})


def visit(seq: Seq, visit_id: str, loyalty_id: str, subject: str = "p1") -> list[Event]:
    """A visit that a card tap links, then one sector entered."""
    return [seq(VisitStarted, subject=subject, visit_id=visit_id, tech="ble"),
            seq(IdentityLinked, subject=subject, visit_id=visit_id, loyalty_id=loyalty_id, method="card_tap",
                confidence=0.9, reader_id="till"),
            seq(SectorEntered, subject=subject, visit_id=visit_id, sector_id="fish", probability=0.9)]


def enter(seq: Seq, visit_id: str, sector: str = "deli", subject: str = "p1") -> Event:
    return seq(SectorEntered, subject=subject, visit_id=visit_id, sector_id=sector, probability=0.9)


@dataclass
class Listener:
    """A store-side subscriber: what arrives on the staff and activation topics."""

    cards: list[StaffCard] = field(default_factory=list)
    activations: list[dict[str, object]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def card_ids(self) -> list[str]:
        with self.lock:
            return [c.card_id for c in self.cards]


@contextmanager
def listening(broker: Broker, staff_filter: str = staff_topic(STORE)) -> Iterator[Listener]:
    got = Listener()
    ready = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with got.lock:
            if message.topic.endswith("/hq/staff"):
                got.cards.append(StaffCard.model_validate_json(message.payload))
            else:
                got.activations.append(json.loads(message.payload))

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_message = on_message
    client.on_subscribe = lambda *args: ready.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe([(staff_filter, 1), ("santi/v1/hq/activations/#", 1)])
    assert ready.wait(10)
    try:
        yield got
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass
class Hq:
    sub: HqSubscriber
    runner: ActivationRunner
    store: Store


@contextmanager
def hq(broker: Broker, db: Store | str, rules: Path, **runner_args: object) -> Iterator[Hq]:
    """A subscriber with a runner on ``db`` (a URL this opens and closes, or a fixture's store)."""
    store = open_store(db) if isinstance(db, str) else db
    holder: list[HqSubscriber] = []
    runner = ActivationRunner(store, rules, lambda topic, body: holder[0].publish(topic, body),  # noqa: PLW0108
                              instance="hq-test", **runner_args)  # type: ignore[arg-type]
    sub = HqSubscriber(broker.host, broker.port, store, "hq", on_batch=runner.on_batch, flush_ms=10)
    holder.append(sub)
    sub.start()
    try:
        assert sub.wait_connected(10)
        yield Hq(sub, runner, store)
    finally:
        sub.stop()
        runner.stop()
        if isinstance(db, str):
            store.close()


def ciam(broker: Broker, loyalty_id: str, at: datetime, **purposes: bool) -> None:
    """What a CIAM does: one retained consent message per customer."""
    update = ConsentUpdate(loyalty_id=loyalty_id, purposes=purposes, ts=at, source="ciam")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(consent_topic(loyalty_id), update.to_json(), qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_consent_withdrawal_mid_visit_holds_from_the_next_event(broker: Broker, store: Store, tmp_path: Path) -> None:
    seq = Seq()
    with listening(broker) as store_side, hq(broker, store, rules_file(tmp_path)) as central:
        ciam(broker, "L1", T0, profiling=True, personalisation=True)
        wait_until(lambda: central.store.allows("L1", "personalisation"), what="the CIAM's consent at HQ")
        first = visit(seq, "v1", "L1")
        publish(broker, wire(first))
        card = wait_until(lambda: store_side.cards, what="the staff card")[0]
        assert (card.loyalty_id, card.visit_id, card.sector_id, card.rule_id) == ("L1", "v1", "fish", "greet")
        assert card.card_id == activation_id("greet", str(first[2].event_id))
        assert central.sub.profile("L1").visits == 1

        ciam(broker, "L1", T0 + timedelta(minutes=5), profiling=False)
        wait_until(lambda: not central.store.allows("L1", "profiling"), what="the withdrawal at HQ")
        later = enter(seq, "v1")
        publish(broker, wire([later]))
        wait_until(lambda: central.sub.stats().stored == 4, what="the next event stored")
        assert central.sub.profile("L1").visits == 0, "the visit is no longer joined to the loyalty id"
        assert central.store.linked_visits([(STORE, AGENT, "v1")]) == {}, "the link is deleted"
        assert central.sub.visitor("p1").visits == 1, "the visit stays, as an anonymous visitor's"
        assert central.sub.stats().unlinked == 1
        assert [a.event_id for a in central.store.activations()] == [str(first[2].event_id)]
        assert store_side.card_ids() == [card.card_id]
        # A new link while profiling is withdrawn is never stored either.
        publish(broker, wire(visit(seq, "v2", "L1")))
        wait_until(lambda: central.sub.stats().unlinked == 2, what="the second link refused")
        assert central.sub.profile("L1").visits == 0
        assert len(central.store.activations()) == 1


def test_no_card_without_personalisation(broker: Broker, store: Store, tmp_path: Path) -> None:
    seq = Seq()  # N1 and N2: customers the store fixture grants nothing
    with listening(broker) as store_side, hq(broker, store, rules_file(tmp_path)) as central:
        grant(central.store, ["N1", "N2"], ["profiling"])
        grant(central.store, ["N2"], ["personalisation"])
        publish(broker, wire([*visit(seq, "v1", "N1", "p1"), *visit(seq, "v2", "N2", "p2")]))
        wait_until(lambda: store_side.cards and store_side.activations, what="L2's card and activation")
        wait_until(lambda: central.sub.stats().stored == 6, what="every event")
        assert central.sub.profile("N1").visits == 1, "profiling alone builds the profile"
        assert [c.loyalty_id for c in store_side.cards] == ["N2"]
        assert [a.loyalty_id for a in central.store.activations()] == ["N2"]
        wait_until(lambda: all(d["state"] == "delivered" for d in central.store.activations()[0].deliveries),
                   what="both deliveries delivered")
        assert [d["kind"] for d in central.store.activations()[0].deliveries] == ["staff", "mqtt"]


def test_a_card_names_a_sector_with_the_longest_id_an_event_may_carry(broker: Broker, store: Store,
                                                                     tmp_path: Path) -> None:
    # A staff card once allowed 64 characters where events allow 128: the card failed to build inside the
    # runner and the batch's firings were lost.
    seq = Seq()
    sector = "s" + "e" * 127
    with listening(broker) as store_side, hq(broker, store, rules_file(tmp_path)) as central:
        grant(central.store, ["N3"], ["profiling", "personalisation"])
        publish(broker, wire([*visit(seq, "v3", "N3", "p3")[:2], enter(seq, "v3", sector, "p3")]))
        wait_until(lambda: store_side.cards, what="N3's card")
        assert [(c.loyalty_id, c.sector_id) for c in store_side.cards] == [("N3", sector)]
        assert [a.loyalty_id for a in central.store.activations()] == ["N3"]


def test_the_same_event_never_fires_twice(broker: Broker, store: Store, tmp_path: Path) -> None:
    """Redelivery, a replayed batch, a second runner on the same database: one firing per (rule, event)."""
    seq = Seq()
    events = visit(seq, "v1", "L1")
    with listening(broker) as store_side, hq(broker, store, rules_file(tmp_path)) as central:
        grant(central.store, ["L1"])
        publish(broker, wire(events))
        wait_until(lambda: store_side.cards, what="the card")
        publish(broker, wire(events))  # redelivered: the subscriber evaluates duplicates again
        wait_until(lambda: central.sub.stats().duplicates == 3, what="the replay")
        other = ActivationRunner(central.store, rules_file(tmp_path), central.sub.publish, instance="other")
        try:
            other.on_batch(events)()
        finally:
            other.stop()
        assert other.stats.fired == 0
        assert other.stats.duplicates == 1
        assert central.runner.stats.fired == 1
        assert central.runner.stats.duplicates == 1
        assert len(central.store.activations()) == 1
        assert len(store_side.card_ids()) == 1


def test_a_hostile_rules_file_at_reload_keeps_the_old_rules(broker: Broker, tmp_path: Path) -> None:
    path = rules_file(tmp_path)
    seq = Seq()
    with listening(broker) as store_side, hq(broker, f"sqlite:///{tmp_path}/hq.sqlite", path) as central:
        grant(central.store, ["L1"])
        before = central.runner.rules
        for hostile in ("[[rule]\nid = ", RULES.replace('"sector.entered"', '"sector.teleported"'),
                        RULES + '\n[[rule]]\nid = "x"\ntext = "t"\n[rule.trigger]\nevent = "card.tapped"\n'
                                '[rule.when]\nshoe_size = { min = 1 }\n', "\x00" * 10_000):
            path.write_text(hostile, encoding="utf-8")
            assert central.runner.reload() is False
            assert central.runner.rules is before
        assert central.runner.stats.reload_errors == 4
        publish(broker, wire(visit(seq, "v1", "L1")))
        assert wait_until(lambda: store_side.cards, what="a card under the old rules")[0].rule_id == "greet"
        path.write_text(RULES.replace('id = "greet"', 'id = "greet2"'), encoding="utf-8")
        assert central.runner.reload() is True
        publish(broker, wire([enter(seq, "v1")]))
        wait_until(lambda: len(store_side.cards) == 2, what="a card under the new rules")
        assert [c.rule_id for c in store_side.cards] == ["greet", "greet2"]


def test_sighup_reloads_the_rules_of_santi_hq_run_and_a_bad_file_keeps_them(broker: Broker,
                                                                            tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/hq.sqlite"
    setup = open_store(db)
    grant(setup, ["L1"])
    setup.close()
    path = rules_file(tmp_path)
    log = tmp_path / "hq.log"
    command = [sys.executable, "-c", "from agent.cli import main; main()", "-v", "hq", "run", "--broker",
               f"mqtt://{broker.host}:{broker.port}", "--db", db, "--rules", str(path), "--report-s", "0.2"]
    seq = Seq()
    with listening(broker) as store_side, log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: " connected " in log.read_text(), timeout=30, what="santi hq run")
            path.write_text(RULES.replace('event = "sector.entered"', 'event = "sector.left"'), encoding="utf-8")
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "rules not reloaded" in log.read_text(), what="the reload refused")
            [line] = [x for x in log.read_text().splitlines() if "rules not reloaded" in x]
            assert f"{path}:" in line
            assert "sector.left" in line
            publish(broker, wire(visit(seq, "v1", "L1")))
            assert wait_until(lambda: store_side.cards, what="a card under the old rules")[0].rule_id == "greet"
            path.write_text(RULES.replace('id = "greet"', 'id = "greet2"'), encoding="utf-8")
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "rules reloaded" in log.read_text(), what="the reload")
            publish(broker, wire([enter(seq, "v1")]))
            wait_until(lambda: len(store_side.cards) == 2, what="a card under the new rules")
            assert [c.rule_id for c in store_side.cards] == ["greet", "greet2"]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, log.read_text()


def test_santi_hq_run_refuses_a_bad_rules_file_in_one_line(tmp_path: Path) -> None:
    path = rules_file(tmp_path, RULES.replace("once_per_visit = false", "once_per_visit = 3"))
    result = CliRunner().invoke(cli, ["hq", "run", "--db", f"sqlite:///{tmp_path}/hq.sqlite", "--rules", str(path)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"santi: {path}:13: rule[0].limits.once_per_visit")


def test_hostile_consent_messages_are_dead_lettered_or_dropped(broker: Broker, tmp_path: Path) -> None:
    good = ConsentUpdate(loyalty_id="L9", purposes={"profiling": True}, ts=T0, source="ciam")
    hostile: list[tuple[str, bytes | str]] = [
        (consent_topic("L9"), b"\xff\xfe not json"),
        (consent_topic("L9"), "[" * 5000),
        (consent_topic("L9"), b"{" + b" " * 10_000 + b"}"),
        (consent_topic("L8"), good.to_json()),  # the topic names another customer
        (consent_topic("L9"), json.dumps({**json.loads(good.to_json()), "purposes": {"profiling": "maybe"}})),
        (consent_topic("L9"), json.dumps({**json.loads(good.to_json()), "purposes": {"marketing": True}})),
        (consent_topic("L9"), b""),  # a retained message cleared: withdraws nothing
        (consent_topic("L9"), good.to_json()),
    ]
    with hq(broker, f"sqlite:///{tmp_path}/hq.sqlite", rules_file(tmp_path)) as central:
        publish(broker, hostile)
        wait_until(lambda: central.sub.stats().received >= len(hostile), what="every consent message")
        stats = central.sub.stats()
        assert (stats.consent_records, stats.consent_rejected, stats.dead_letters) == (1, 7, 6)
        assert stats.healthy
        assert central.store.allows("L9", "profiling")
        assert not central.store.allows("L8", "profiling")
        reasons = sorted(d.reason.split(":")[0] for d in central.store.dead_letters())
        assert reasons == ["consent"] * 6


def test_webhook_retried_until_the_receiver_recovers_and_the_state_is_recorded(broker: Broker,
                                                                                 tmp_path: Path) -> None:
    secret = tmp_path / "hook.secret"
    secret.write_text("s3cret\n", encoding="utf-8")
    seq = Seq()
    with http_receiver(answers=[503, 500]) as receiver:
        text = RULES.replace('kind = "mqtt"', f'kind = "webhook"\nurl = "{receiver.url}"\nsecret_file = "{secret}"')
        with hq(broker, f"sqlite:///{tmp_path}/hq.sqlite", rules_file(tmp_path, text),
                webhook_policy=BackoffPolicy(base_s=0.05, cap_s=0.1)) as central:
            grant(central.store, ["L1"])
            publish(broker, wire(visit(seq, "v1", "L1")))
            hook = wait_until(lambda: [d for a in central.store.activations() for d in a.deliveries
                                       if d["kind"] == "webhook" and d["state"] == "delivered"],
                              what="the webhook delivered")[0]
            assert hook["attempts"] == 3
            assert len(receiver.received) == 3
            last = receiver.received[-1]
            assert verify(b"s3cret", last.body, last.headers["Santi-Signature"], datetime.now(UTC).timestamp())
            assert json.loads(last.body)["data"]["loyalty_id"] == "L1"


def test_a_delivery_left_by_a_killed_hq_is_claimed_and_sent(broker: Broker, store: Store, tmp_path: Path) -> None:
    with listening(broker) as store_side, hq(broker, store, rules_file(tmp_path), lease_s=0.5, sweep_s=0.1) as central:
        aid = activation_id("greet", "e-1")
        card = StaffCard(card_id=aid, store_id=STORE, visit_id="v1", loyalty_id="L1", rule_id="greet", text="Hi",
                         ts=T0)
        row = FiringRow(aid, "greet", "e-1", "L1", STORE, AGENT, "v1", "fish", T0.timestamp(), 0.0, "{}")
        assert central.store.record_firing(row, [DeliveryRow(0, "staff", staff_topic(STORE), card.to_json(),
                                                             "killed-hq")])
        wait_until(lambda: store_side.cards, what="the claimed card")
        assert store_side.cards[0] == card
        wait_until(lambda: central.store.activations()[0].deliveries[0]["state"] == "delivered",
                   what="the delivery recorded")
        assert central.runner.stats.claimed == 1


def test_erase_removes_consent_and_activations_from_every_sqlite_file(broker: Broker, tmp_path: Path) -> None:
    secret_id = "LOYAL-51f0c3"
    seq = Seq()
    with listening(broker) as store_side, hq(broker, f"sqlite:///{tmp_path}/hq.sqlite", rules_file(tmp_path)) as central:
        grant(central.store, [secret_id])
        publish(broker, wire(visit(seq, "v1", secret_id)))
        wait_until(lambda: store_side.cards, what="the card")
        wait_until(lambda: central.store.activations()[0].deliveries[0]["state"] == "delivered", what="delivered")
        files = [p for p in tmp_path.iterdir() if p.name.startswith("hq.sqlite")]
        assert any(secret_id.encode() in p.read_bytes() for p in files)
        done = central.store.erase(secret_id)
        assert (done.consent_deleted, done.activations_deleted) == (2, 1)
        assert central.store.consent_records(secret_id) == []
        assert central.store.activations() == []
        found = [p.name for p in tmp_path.iterdir() if p.name.startswith("hq.sqlite")
                 and secret_id.encode() in p.read_bytes()]
        assert found == []


def test_consent_cli_set_show_import_all_or_nothing(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/hq.sqlite"
    runner = CliRunner()

    def santi(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, ["hq", *args, "--db", db])
        return result.exit_code, result.output

    assert santi("consent", "set", "L1", "--profiling", "yes", "--personalisation", "no",
                 "--ts", "2026-03-01T10:00:00Z") == (0, "L1: profiling yes, personalisation no\n")
    code, out = santi("consent", "show", "L1")
    assert code == 0
    assert "profiling: granted at 2026-03-01T10:00:00Z by cli" in out
    assert "personalisation: refused at 2026-03-01T10:00:00Z by cli" in out
    assert santi("consent", "set", "L1")[0] == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("loyalty_id,purpose,granted,ts\nL2,profiling,yes,2026-03-01T10:00:00Z\n"
                   "L3,profiling,perhaps,2026-03-01T10:00:00Z\n", encoding="utf-8")
    code, out = santi("consent", "import", str(bad))
    assert (code, out.count("\n")) == (2, 1)
    assert f"{bad}:3: granted" in out
    assert json.loads(santi("consent", "show", "L2", "--json")[1])["records"] == [], "nothing of a bad file"
    example = Path(__file__).resolve().parent.parent / "examples" / "consent.csv"
    code, out = santi("consent", "import", str(example))
    assert code == 0, out
    shown = json.loads(santi("consent", "show", "L-91400001", "--json")[1])
    assert shown["granted"] == {"profiling": True, "personalisation": True}


def test_activations_cli_lists_firings_with_their_delivery_state(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/hq.sqlite"
    store = open_store(db)
    aid = activation_id("greet", "e-1")
    row = FiringRow(aid, "greet", "e-1", "L1", STORE, AGENT, "v1", "fish", T0.timestamp(), T0.timestamp(),
                    '{"visits_in_days": 3}')
    assert store.record_firing(row, [DeliveryRow(0, "staff", staff_topic(STORE), "{}", "hq"),
                                     DeliveryRow(1, "webhook", "http://127.0.0.1:9/x", "{}", "hq")])
    assert not store.record_firing(row, [])
    store.set_deliveries([(aid, 0, "delivered", None, 1), (aid, 1, "dead", "HTTP 410 Gone", 1)], 1.0)
    store.set_deliveries([(aid, 0, "retrying", "late", 2)], 2.0)  # a final state stays
    store.close()
    result = CliRunner().invoke(cli, ["hq", "activations", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    [listed] = json.loads(result.output)
    assert (listed["rule_id"], listed["loyalty_id"], listed["event_id"], listed["facts"]) == (
        "greet", "L1", "e-1", {"visits_in_days": 3})
    assert [(d["kind"], d["state"], d["detail"]) for d in listed["deliveries"]] == [
        ("staff", "delivered", None), ("webhook", "dead", "HTTP 410 Gone")]
    table = CliRunner().invoke(cli, ["hq", "activations", "--db", db], env={"COLUMNS": "200"})
    assert "webhook dead (HTTP 410 Gone)" in table.output


GROUP_RULES = """
timezone = "UTC"

[[rule]]
id = "linked"
text = "A loyalty customer just tapped their card"
trigger = { event = "identity.linked" }
limits = { once_per_visit = false }
action = [{ kind = "staff" }]

[[rule]]
id = "tap"
text = "Card tapped"
trigger = { event = "card.tapped" }
limits = { once_per_visit = false }
action = [{ kind = "mqtt" }]
"""


def test_three_hq_processes_one_killed_fire_every_activation_once(broker: Broker, pg_server: str,
                                                                  tmp_path: Path) -> None:
    """Three ``santi hq run`` in one group on PostgreSQL, one killed with kill -9 mid-stream and restarted."""
    schema_url = pg_schema_url(pg_server)
    url = next(schema_url)
    try:
        consenting = set(SYNTHETIC_IDS[::2])
        central = open_store(url)
        grant(central, SYNTHETIC_IDS, ["profiling"])
        grant(central, sorted(consenting), ["personalisation"])
        rules = rules_file(tmp_path, GROUP_RULES)
        events = synthetic_stream(4_000, start=START)

        def launch(n: int) -> subprocess.Popen[bytes]:
            log = tmp_path / f"hq{n}.log"
            command = [sys.executable, "-c", "from agent.cli import main; main()", "hq", "run", "--broker",
                       f"mqtt://{broker.host}:{broker.port}", "--db", url, "--client-id", f"hq-group-{n}",
                       "--rules", str(rules), "--lease-s", "2", "--report-s", "0.2", "--batch-size", "100"]
            with log.open("ab") as out:
                proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                        stdout=out, stderr=subprocess.STDOUT)
            wait_until(lambda: " connected " in log.read_text(), timeout=30, what=f"HQ {n}")
            return proc

        def expected() -> set[tuple[str, str]]:
            want = set()
            for e in events:
                if isinstance(e, IdentityLinked) and e.loyalty_id in consenting:
                    want.add(("linked", str(e.event_id)))
                elif isinstance(e, CardTapped) and e.card in consenting:
                    want.add(("tap", str(e.event_id)))
            return want

        with listening(broker, staff_filter="santi/v1/+/hq/staff") as store_side:
            procs = [launch(n) for n in range(3)]
            try:
                publish(broker, wire(events[:2_000]))
                wait_until(lambda: central.counts()["events"] >= 600, timeout=60, what="some events stored")
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait(10)
                publish(broker, wire(events[2_000:]))
                procs[0] = launch(0)
                wait_until(lambda: central.counts()["events"] == len(events), timeout=120, what="every event")
                want = expected()
                wait_until(lambda: len(central.activations(10_000)) == len(want), timeout=60, what="every firing")
                wait_until(lambda: all(d["state"] == "delivered" for a in central.activations(10_000)
                                       for d in a.deliveries), timeout=60, what="every delivery")
            finally:
                for proc in procs:
                    proc.send_signal(signal.SIGTERM)
                for proc in procs:
                    proc.wait(30)
            fired = central.activations(10_000)
            assert {(a.rule_id, a.event_id) for a in fired} == want
            assert len(fired) == len(want), "no (rule, event) recorded twice"
            assert {a.loyalty_id for a in fired} <= consenting
            links = sum(1 for rule, _ in want if rule == "linked")
            assert {c.card_id for c in store_side.cards} == {a.activation_id for a in fired if a.rule_id == "linked"}
            assert len({c.card_id for c in store_side.cards}) == links
            assert {a["activation_id"] for a in store_side.activations} == {
                a.activation_id for a in fired if a.rule_id == "tap"}
            assert central.counts()["events"] == len(events)
            assert all(g.missing == 0 for g in central.gaps())
        central.close()
    finally:
        next(schema_url, None)


def test_rule_inputs_of_a_batch_are_the_per_customer_reads(store: Store) -> None:
    """One batched read per customer set gives exactly what consent, loyalty_events and activations give."""
    grant(store, ["L2"], ["profiling"])
    grant(store, ["L2"], ["personalisation"], granted=False)
    grant(store, ["L3"], at=T0 - timedelta(days=9))
    grant(store, ["L3"], ["profiling"], granted=False, at=T0 - timedelta(days=1))  # withdrawn: unlinked
    grant(store, ["L5"], ["personalisation"], at=T0)
    grant(store, ["L5"], ["personalisation"], granted=False, at=T0)  # same time: the one stored last decides
    seq = Seq()
    events = [*visit(seq, "v1", "L1"), *visit(seq, "v2", "L1", subject="p2"), *visit(seq, "v3", "L2"),
              *visit(seq, "v4", "L3"), seq(VisitStarted, subject="p9", visit_id="v5", tech="ble"),
              seq(CardTapped, subject="c1", reader_id="till", card="L1", known=True, linked=True),
              seq(CardTapped, subject="c2", reader_id="till", card="L2", known=True, linked=False),
              seq(IdentityLinked, subject="p2", visit_id="v2", loyalty_id="L2", method="card_tap", confidence=0.8)]
    store.ingest(decoded(events), T0.timestamp(), want_events=False)
    for n, (lid, event) in enumerate((("L1", events[2]), ("L1", events[5]), ("L2", events[8]))):
        fired = FiringRow(activation_id(f"r{n}", str(event.event_id)), f"r{n}", str(event.event_id), lid, STORE,
                          AGENT, event.visit_id, "fish", event.ts.timestamp(), 1.0 + n, "{}")  # type: ignore[attr-defined]
        assert store.record_firings([(fired, [DeliveryRow(0, "staff", staff_topic(STORE), "{}", "hq")])]) == [True]
    ids = ["L1", "L2", "L3", "L4", "L5"]
    batch = store.rule_inputs(ids)
    assert sorted(batch) == ids
    views = store.activations(limit=100)
    for lid in ids:
        got = batch[lid]
        assert got.consent == {p: store.consent_state(lid).allows(p) for p in ("profiling", "personalisation")}, lid
        linked, taps = store.loyalty_events(lid)
        assert sorted(str(e.event_id) for e in got.events) == sorted(str(e.event_id) for e in linked), lid
        assert [e.event_id for e in got.taps] == [e.event_id for e in taps], lid
        assert [(r, ts, s, v) for r, ts, s, _, v in got.history] == sorted(
            (v.rule_id, v.ts, v.store_id, v.visit_id) for v in views if v.loyalty_id == lid), lid
    assert batch["L1"].consent == {"profiling": True, "personalisation": True}
    assert len(batch["L1"].events) == 7  # v1, and v2 with its second link (to L2)
    assert [len(batch[lid].history) for lid in ids] == [2, 1, 0, 0, 0]
    assert batch["L2"].consent == {"profiling": True, "personalisation": False}
    assert batch["L3"].events == []
    assert batch["L5"].consent["personalisation"] is False
    keys = [(STORE, AGENT, v) for v in ("v1", "v2", "v3", "v4", "v5")]
    assert store.linked_visits(keys) == {keys[0]: "L1", keys[1]: "L2", keys[2]: "L2"}  # v2: the newest link wins
    assert store.rule_inputs([]) == {}


def test_rule_inputs_take_the_batch_events_parsed_at_ingest(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``ingest_then`` was given is read back without parsing; a conflicting copy never stands in for
    what is stored; the memo keeps the newest RECENT_PARSED events."""
    monkeypatch.setattr("hq.store.RECENT_PARSED", 4)
    seq = Seq()
    first = visit(seq, "v1", "L1")
    items = decoded(first)
    store.ingest_then(items, T0.timestamp(), lambda: None, want_events=False)
    read = store.rule_inputs(["L1"])["L1"].events
    assert sorted(map(id, read)) == sorted(id(i.event) for i in items if isinstance(i, Accepted))  # not parsed again
    linked, _ = store.loyalty_events("L1")  # parsed from the stored payloads
    assert sorted(read, key=lambda e: e.seq) == sorted(linked, key=lambda e: e.seq)
    forged = first[2].model_copy(update={"sector_id": "deli"})  # same event_id, other content: a conflict
    result, _ = store.ingest_then(decoded([forged]), T0.timestamp(), lambda: None, want_events=False)
    assert result.conflicts == 1
    again = {e.event_id: e for e in store.rule_inputs(["L1"])["L1"].events}
    assert again[first[2].event_id].sector_id == "fish"  # type: ignore[attr-defined]
    later = visit(seq, "v2", "L1")
    store.ingest_then(decoded(later), T0.timestamp(), lambda: None, want_events=False)
    assert len(store._recent) == 4  # bounded: the oldest went first
    events = store.rule_inputs(["L1"])["L1"].events
    assert sorted(e.seq for e in events) == [e.seq for e in first + later]


def test_many_firings_in_one_call_go_in_once(store: Store) -> None:
    """More firings and deliveries than one statement holds: each recorded once, those seen before not new."""
    def firing(n: int) -> tuple[FiringRow, list[DeliveryRow]]:
        aid = activation_id("greet", f"e-{n}")
        return (FiringRow(aid, "greet", f"e-{n}", "L1", STORE, AGENT, "v1", "fish", float(n), 1.0, "{}"),
                [DeliveryRow(0, "staff", staff_topic(STORE), "{}", "hq"), DeliveryRow(1, "mqtt", "t", "{}", "hq")])

    assert store.record_firings([firing(n) for n in range(0, 300, 2)]) == [True] * 150
    again = store.record_firings([firing(n) for n in range(300)])
    assert again == [n % 2 == 1 for n in range(300)]
    views = store.activations(limit=1000)
    assert len(views) == 300
    assert all(len(v.deliveries) == 2 and {d["state"] for d in v.deliveries} == {"pending"} for v in views)


def test_visit_reads_keep_agents_and_stores_apart(store: Store) -> None:
    """One visit id at two agents of a store and at another store: each link and each visit's events stay its own."""
    grant(store, ["L2", "L3"])
    seq = Seq()
    placed = [("s1", "a1", "L1"), ("s1", "a2", "L2"), ("s2", "a1", "L3")]
    events = [e.model_copy(update={"store_id": store_id, "agent_id": agent_id})
              for store_id, agent_id, lid in placed for e in visit(seq, "v1", lid)]
    store.ingest(decoded(events), T0.timestamp(), want_events=False)
    keys = [(store_id, agent_id, "v1") for store_id, agent_id, _ in placed]
    assert store.linked_visits([*keys, ("s2", "a2", "v1"), keys[0]]) == {
        key: lid for key, (_, _, lid) in zip(keys, placed, strict=True)}
    batch = store.rule_inputs(["L1", "L2", "L3"])
    for key, (_, _, lid) in zip(keys, placed, strict=True):
        assert [(e.store_id, e.agent_id, e.visit_id) for e in batch[lid].events] == [key] * 3, lid
    assert store.linked_visits([]) == {}


def test_delivery_states_and_leases_are_updated_together(store: Store) -> None:
    """One call's changes: the first final state holds; a lease is renewed only by the HQ holding it."""
    ids = [activation_id("greet", f"e-{n}") for n in range(3)]
    for n, aid in enumerate(ids):
        row = FiringRow(aid, "greet", f"e-{n}", "L1", STORE, AGENT, "v1", "fish", 1.0, 1.0, "{}")
        assert store.record_firing(row, [DeliveryRow(0, "staff", staff_topic(STORE), "{}", "hq-a"),
                                         DeliveryRow(1, "mqtt", "t", "{}", "hq-a")])
    store.set_deliveries([(ids[0], 0, "retrying", "refused", 1), (ids[0], 0, "delivered", None, 2),
                          (ids[0], 0, "retrying", "late", 3), (ids[0], 1, "retrying", "refused", 1),
                          (ids[0], 1, "retrying", "timeout", 2), (ids[1], 0, "dead", "HTTP 410 Gone", 1)], 5.0)
    store.set_deliveries([(ids[1], 0, "retrying", "late", 2)], 6.0)  # a final state stays
    states = {v.activation_id: [(d["state"], d["detail"]) for d in v.deliveries] for v in store.activations(10)}
    assert states[ids[0]] == [("delivered", None), ("retrying", "timeout")]
    assert states[ids[1]] == [("dead", "HTTP 410 Gone"), ("pending", None)]
    assert states[ids[2]] == [("pending", None), ("pending", None)]
    def claim(me: str, now: float, held: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return sorted((d.activation_id, d.action_no) for d in store.claim_deliveries(me, now, 30.0, held))

    open_ = sorted([(ids[0], 1), (ids[1], 1), (ids[2], 0), (ids[2], 1)])
    assert claim("hq-a", 90.0, [(ids[2], 0)]) == [k for k in open_ if k != (ids[2], 0)]  # renewed, not stale
    assert claim("hq-b", 95.0, [(ids[2], 0)]) == []  # not hq-b's to renew: its lease stays at 90
    assert claim("hq-b", 125.0, []) == open_


def test_one_batch_stores_only_the_links_of_customers_consenting_to_profiling(store: Store) -> None:
    """A batch's links are checked together: the newest record decides, at a tie the one stored last."""
    grant(store, ["L2"], ["profiling"], at=T0 - timedelta(days=2))
    grant(store, ["L2"], ["profiling"], granted=False, at=T0 - timedelta(days=1))
    grant(store, ["L3"], ["profiling"], at=T0 - timedelta(days=1))
    grant(store, ["L3"], ["profiling"], granted=False, at=T0 - timedelta(days=1))
    grant(store, ["L5"], ["profiling"], granted=False, at=T0 - timedelta(days=2))
    grant(store, ["L5"], ["profiling"], at=T0 - timedelta(days=1))
    seq = Seq()
    events = [e for n, lid in enumerate(["L1", "L2", "L3", "L4", "L5"]) for e in visit(seq, f"v{n}", lid, f"p{n}")]
    result = store.ingest(decoded(events), T0.timestamp(), want_events=False)
    assert (result.stored, result.unlinked) == (len(events) - 3, 3)
    keys = [(STORE, AGENT, f"v{n}") for n in range(5)]
    assert store.linked_visits(keys) == {keys[0]: "L1", keys[4]: "L5"}


def test_record_firings_tells_each_firing_new_once_across_statements(store: Store) -> None:
    """More firings than one INSERT holds, one of them twice: each is new once, and never again."""
    rows = [FiringRow(activation_id("r", f"e-{n}"), "r", f"e-{n}", "L1", STORE, AGENT, f"v{n}", None,
                      T0.timestamp() + n, T0.timestamp(), "{}") for n in range(200)]
    calls = [(row, [DeliveryRow(0, "staff", staff_topic(STORE), "{}", "hq")]) for row in rows]
    assert store.record_firings([*calls[:150], calls[3]]) == [True] * 150 + [False]
    assert store.record_firings(calls) == [False] * 150 + [True] * 50
    assert len(store.activations(limit=1000)) == 200
    assert all(len(view.deliveries) == 1 for view in store.activations(limit=1000))


@dataclass
class Sent:
    """What a publish the broker acknowledged at once returns."""

    rc: int = 0

    def is_published(self) -> bool:
        return True


def test_a_batch_and_its_firings_commit_together_and_deliver_after(store: Store, tmp_path: Path) -> None:
    """One transaction: a batch that fails after its firings were recorded leaves neither, and sends nothing."""
    grant(store, ["L1"])
    sent: list[str] = []

    def publish(topic: str, body: str) -> Sent:
        sent.append(topic)
        return Sent()

    runner = ActivationRunner(store, rules_file(tmp_path), publish, instance="one")
    events = visit(Seq(), "v1", "L1")

    def fails_after_recording() -> None:
        runner.on_batch(events)
        assert len(store.activations()) == 1, "the firing is visible inside the batch's transaction"
        raise HqStoreError("connection lost before the commit")

    try:
        with pytest.raises(HqStoreError, match="connection lost"):
            store.ingest_then(decoded(events), T0.timestamp(), fails_after_recording)
        assert store.counts()["events"] == 0
        assert store.activations() == []
        assert sent == []
        result, deliver = store.ingest_then(decoded(events), T0.timestamp(), lambda: runner.on_batch(events))
        assert (result.stored, sent) == (3, [])
        assert [a.event_id for a in store.activations()] == [str(events[2].event_id)]
        deliver()
        assert sent == [staff_topic(STORE), "santi/v1/hq/activations/greet"]
        result, deliver = store.ingest_then(decoded(events), T0.timestamp(), lambda: runner.on_batch(events))
        deliver()
        assert (result.stored, result.duplicates, len(sent)) == (0, 3, 2)
        assert (runner.stats.fired, runner.stats.duplicates) == (1, 1)
    finally:
        runner.stop()
