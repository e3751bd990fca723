"""``santi hq``: what a person sees, and one-line errors."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.events import topic_for
from agent.localbroker import Broker, free_port
from hq.backends import open_store
from hq.ingest import decode
from tests.helpers.consent import grant, grant_url
from tests.helpers.hq import fixed_stream, publish, wire
from tests.helpers.pki import make_pki, tls_broker

NOW = "2026-03-15T00:00:00Z"


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/hq.sqlite"
    store = open_store(url)
    grant(store, ["L1"])
    items = [decode(topic_for(e), e.to_json().encode()) for e in fixed_stream()]
    store.ingest([*items, decode("santi/v1/s1/a1/events/visit.started", b"{oops")], received_at=1.0)
    store.close()
    return url


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["hq", *args], input=input)
    return result.exit_code, result.output


def test_profile_table_a_person_reads(db: str) -> None:
    code, out = run("profile", "L1", "--db", db, "--now", NOW)
    assert code == 0, out
    for expected in ("loyalty L1", "visits", "2026-01-10 12:00 UTC", "2026-03-12 09:00 UTC", "6.6",
                     "12 min 30 s", "s1 (2), s2 (2)", "fish", "52%", "(open)"):
        assert expected in out, expected


def test_profile_json(db: str) -> None:
    code, out = run("profile", "L1", "--db", db, "--now", NOW, "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["visits"], data["visits_last_30d"], data["median_days_between"], data["average_visit_s"]) == (
        4, 3, 6.625, 750.0)
    assert data["first_visit"] == "2026-01-10T12:00:00Z"
    code, out = run("profile", "sb", "--visitor", "--db", db, "--json")
    assert json.loads(out)["visits"] == 1


def test_profile_errors_are_one_line(db: str, tmp_path: Path) -> None:
    assert run("profile", "nobody", "--db", db) == (2, "santi: no visits for loyalty id nobody\n")
    code, out = run("profile", "L1", "--db", db, "--now", "yesterday")
    assert (code, out.count("\n")) == (2, 1)
    code, out = run("profile", "L1", "--db", "mysql://x/y")
    assert (code, out.count("\n")) == (2, 1)
    assert "unsupported database URL" in out


def test_gaps_and_dead_letters(db: str) -> None:
    code, out = run("gaps", "--db", db, "--json")
    assert code == 0
    assert {(g["agent_id"], g["missing"]) for g in json.loads(out)} == {("a1", 0), ("a2", 0)}
    code, out = run("gaps", "--db", db)
    assert "Sequence gaps" in out
    code, out = run("dead-letters", "--db", db)
    assert code == 0
    assert "invalid event" in out
    (letter,) = json.loads(run("dead-letters", "--db", db, "--json")[1])
    assert letter["payload"] == "{oops"


def test_erase_asks_then_erases(db: str) -> None:
    code, out = run("erase", "L1", "--db", db, input="n\n")
    assert code == 1
    assert json.loads(run("profile", "L1", "--db", db, "--json")[1])["visits"] == 4
    code, out = run("erase", "L1", "--db", db, "--yes")
    assert code == 0
    assert out.startswith("erased L1: 18 events in 4 visits")
    assert "2 consent records, 0 activations" in out
    assert run("profile", "L1", "--db", db)[0] == 2
    assert json.loads(run("consent", "show", "L1", "--db", db, "--json")[1])["records"] == []


def test_run_bad_broker_url() -> None:
    code, out = run("run", "--broker", "http://x", "--db", "sqlite:///unused.db")
    assert (code, out) == (2, "santi: --broker 'http://x': give HOST:PORT, e.g. 127.0.0.1:1883\n")
    code, out = run("run", "--broker", "mqtts://x", "--db", "sqlite:///unused.db")
    assert code == 2
    assert "--ca-file" in out


def test_run_stores_and_reports(broker: Broker, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/run.sqlite"
    grant_url(url, ["L1"])
    events = fixed_stream()
    publisher = threading.Timer(0.5, publish, (broker, wire(events)))
    publisher.start()
    code, out = run("run", "--broker", f"mqtt://{broker.host}:{broker.port}", "--db", url,
                    "--client-id", "cli-test", "--report-s", "0.5", "--max-seconds", "3")
    publisher.join()
    assert code == 0, out
    assert "rate=" in out
    assert f"stopped: received={len(events)} stored={len(events)}" in out
    store = open_store(url)
    try:
        assert store.counts()["events"] == len(events)
    finally:
        store.close()


def test_run_against_an_unreachable_broker_exits_1_with_the_reason(tmp_path: Path) -> None:
    port = free_port()
    code, out = run("run", "--broker", f"mqtt://127.0.0.1:{port}", "--db", f"sqlite:///{tmp_path}/hq.sqlite",
                    "--connect-timeout", "2")
    assert (code, out) == (1, (f"santi: cannot connect to the broker at 127.0.0.1:{port}: [Errno 111] "
                              f"Connection refused\n"))


def test_run_that_loses_its_broker_says_why_and_exits_1(broker: Broker, tmp_path: Path) -> None:
    killer = threading.Timer(1.0, broker.stop, kwargs={"kill": True})
    killer.start()
    code, out = run("run", "--broker", f"mqtt://{broker.host}:{broker.port}", "--db",
                    f"sqlite:///{tmp_path}/hq.sqlite", "--report-s", "0.5", "--max-seconds", "3")
    killer.join()
    lines = out.splitlines()
    assert code == 1, out
    assert any(" DISCONNECTED received=0 " in line and f"(lost the broker {broker.host}:{broker.port}: " in line
               for line in lines), out
    assert lines[-1].startswith(f"santi: lost the broker {broker.host}:{broker.port}: ")
    assert "stopped: received=0" in lines[-2]


def test_run_with_the_wrong_ca_exits_2_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    broker = tls_broker(tmp_path, pki, cert=pki.server_cert)
    broker.start()
    try:
        code, out = run("run", "--broker", f"mqtts://127.0.0.1:{broker.port}", "--ca-file", str(pki.other_ca),
                        "--db", f"sqlite:///{tmp_path}/hq.sqlite", "--connect-timeout", "2")
    finally:
        broker.stop(kill=True)
    assert code == 2, out
    assert out.startswith(f"santi: cannot connect to the broker at 127.0.0.1:{broker.port}: [SSL: "
                          f"CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert out.count("\n") == 1
