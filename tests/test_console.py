"""The store console through real parts: the agent replays a store, the console serves it on loopback.

The browser tests (tests/test_console_browser.py) reuse ``running_agent`` and
the recording; these tests speak HTTP with the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import queue
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from agent.config import ConfigError, load_site
from agent.console.server import Sessions
from agent.console.snapshot import ellipses, health
from agent.localbroker import Broker, example_site_for
from agent.service import Service
from tests.helpers.console import (
    SHOPPER,
    SILENCED,
    SILENCED_AFTER_S,
    STAFF_TOKEN,
    TECH_TOKEN,
    console_site,
    running_agent,
    token_file,
)
from tests.helpers.hq_acks import AckingSubscriber
from tests.helpers.wait import wait_until


def request(port: int, path: str, *, token: str | None = None, method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10.0)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    connection.request(method, path, headers=sent)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), body


# -- config -----------------------------------------------------------------------------------


def test_console_is_off_without_its_section(tmp_path: Path) -> None:
    assert load_site(example_site_for(tmp_path, 1)).console is None


def test_an_agent_without_a_console_never_loads_its_libraries(tmp_path: Path) -> None:
    site = example_site_for(tmp_path, 1)
    code = ("import sys; from pathlib import Path; from agent.cli import main; from agent.config import load_site; "
            "from agent.service import Service; "
            f"Service(load_site(Path({str(site)!r})), [], state_dir=Path({str(tmp_path)!r})); "
            "print(sorted(m for m in ('aiohttp', 'prometheus_client', 'agent.console') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_console_defaults_to_loopback_8080(tmp_path: Path) -> None:
    tech = token_file(tmp_path / "t", TECH_TOKEN)
    staff = token_file(tmp_path / "s", STAFF_TOKEN)
    site = load_site(example_site_for(tmp_path, 1, extra=(
        f'\n[console]\ntechnician_token_file = "{tech}"\nstaff_token_file = "{staff}"\n')))
    assert site.console is not None
    assert site.console.address() == ("127.0.0.1", 8080)


@pytest.mark.parametrize(("problem", "expected"), [
    ("missing", "console.staff_token_file: file .* does not exist"),
    ("empty", "console.staff_token_file: .* is empty"),
    ("group", "console.staff_token_file: .* is readable by group or others; chmod 600 it"),
    ("listen", "console.listen: .*must be HOST:PORT"),
])
def test_console_config_errors_are_one_line(tmp_path: Path, problem: str, expected: str) -> None:
    tech = token_file(tmp_path / "t", TECH_TOKEN)
    staff = tmp_path / "s"
    if problem == "empty":
        token_file(staff, "")
    elif problem == "group":
        token_file(staff, STAFF_TOKEN, 0o640)
    elif problem == "listen":
        token_file(staff, STAFF_TOKEN)
    listen = 'listen = "8080"\n' if problem == "listen" else ""
    path = example_site_for(tmp_path, 1, extra=(
        f'\n[console]\n{listen}technician_token_file = "{tech}"\nstaff_token_file = "{staff}"\n'))
    with pytest.raises(ConfigError) as caught:
        load_site(path)
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(expected, message), message
    assert STAFF_TOKEN not in message


# -- pure parts -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.floats(0.01, 100.0), st.floats(0.01, 100.0), st.floats(-0.99, 0.99))
def test_ellipse_axes_match_the_eigen_decomposition(var_x: float, var_y: float, rho: float) -> None:
    b = rho * np.sqrt(var_x * var_y)
    cov = np.array([[[var_x, b], [b, var_y]]])
    major, minor, angle = ellipses(cov)
    values, vectors = np.linalg.eigh(cov[0])
    k = np.sqrt(5.991)
    assert major[0] == pytest.approx(k * np.sqrt(values[1]), rel=1e-6, abs=1e-9)
    assert minor[0] == pytest.approx(k * np.sqrt(max(values[0], 0.0)), rel=1e-5, abs=1e-6)
    if values[1] - values[0] > 1e-6 * values[1]:
        direction = np.array([np.cos(np.radians(angle[0])), np.sin(np.radians(angle[0]))])
        assert abs(float(direction @ vectors[:, 1])) == pytest.approx(1.0, abs=1e-6)


def test_receiver_health_follows_silence() -> None:
    assert health(None, 100.0) == "silent"
    assert health(90.0, 100.0) == "ok"
    assert health(70.0, 100.0) == "stale"
    assert health(30.0, 100.0) == "silent"


def test_a_session_is_bound_to_its_role_key_and_expiry() -> None:
    sessions = Sessions(b"k" * 32)
    value = sessions.issue("staff", 1000.0)
    assert sessions.role(value, 1000.0) == "staff"
    assert sessions.role(value.replace("staff", "technician", 1), 1000.0) is None
    assert Sessions(b"x" * 32).role(value, 1000.0) is None
    assert sessions.role(value, 1000.0 + 13 * 3600) is None
    assert sessions.role("garbage", 1000.0) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_no_forged_session_value_opens_a_view(value: str) -> None:
    sessions = Sessions(b"k" * 32)
    assert sessions.role(value, 1000.0) is None
    assert sessions.role(f"technician.9999999999.{value}", 1000.0) is None


# -- the running console ----------------------------------------------------------------------


def _sse_events(port: int, cookie: str, count: int) -> list[dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20.0)
    connection.request("GET", "/api/stream", headers={"Cookie": cookie})
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"
    events: list[dict[str, Any]] = []
    while len(events) < count:
        line = response.fp.readline()
        if line.startswith(b"data: "):
            events.append(json.loads(line[6:]))
    connection.close()
    return events


def test_every_data_path_needs_its_own_token(broker: Broker, tmp_path: Path) -> None:
    with running_agent(tmp_path, broker) as agent:
        port = agent.port
        for path, own, other in [("/api/snapshot", TECH_TOKEN, STAFF_TOKEN), ("/metrics", TECH_TOKEN, STAFF_TOKEN),
                                 ("/api/staff", STAFF_TOKEN, TECH_TOKEN)]:
            for token in (None, "wrong", other, own[:-1], own + "x", "tëchnïcian\x80"):
                status, headers, body = request(port, path, token=token)
                assert (status, body) == (401, b""), (path, token)
                assert headers["WWW-Authenticate"] == "Bearer"
            assert request(port, path, token=own)[0] == 200
        for path in ("/api/stream", "/api/layout"):
            assert request(port, path)[0] == 401
            for cookie in ("santi_session=technician.9999999999.00", "santi_session=technician.9999999999.\u00e9"):
                assert request(port, path, headers={"Cookie": cookie})[0] == 401
        assert request(port, "/api/session", method="POST", token="wrong")[0] == 401
        status, _, page = request(port, "/")
        assert status == 200
        assert b"/static/console.js" in page


def test_the_technician_stream_shows_the_shopper_and_the_silent_receiver(broker: Broker, tmp_path: Path) -> None:
    with running_agent(tmp_path, broker) as agent:
        status, headers, body = request(agent.port, "/api/session", method="POST", token=TECH_TOKEN)
        assert status == 200
        assert json.loads(body)["role"] == "technician"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"]
        assert "SameSite=Strict" in headers["Set-Cookie"]
        wait_until(lambda: agent.call(lambda: agent.service.locator.presence.visits.get(SHOPPER) is not None
                                      and agent.service.locator.presence.visits[SHOPPER].sector_id == "fish"),
                   30.0, "the shopper's visit in the fish sector")
        data = _sse_events(agent.port, cookie, 2)[-1]
        tracks = data["tracks"]
        assert tracks["id"] == [SHOPPER[:8]]
        assert tracks["sector"] == ["fish"]
        assert 0.0 <= tracks["x"][0] <= 11.0
        assert 12.0 <= tracks["y"][0] <= 20.0
        assert 0.0 < tracks["minor"][0] <= tracks["major"][0] < 10.0
        assert data["occupancy"]["fish"] == 1
        assert sum(data["occupancy"].values()) == 1

        def silent() -> dict[str, str] | None:
            _, _, body = request(agent.port, "/api/snapshot", token=TECH_TOKEN)
            states = {r["id"]: r["health"] for r in json.loads(body)["receivers"]}
            return states if states[SILENCED] == "silent" else None
        states = wait_until(silent, 30.0, f"{SILENCED} to turn silent")
        assert states["node-entrance"] == "ok"
        assert states["pi-wifi"] == "silent"  # the recording has no Wi-Fi at all


def test_metrics_in_prometheus_text_format(broker: Broker, tmp_path: Path) -> None:
    def scrape(port: int) -> tuple[dict[str, str], dict[tuple[str, tuple[tuple[str, str], ...]], float], set[str]]:
        status, headers, body = request(port, "/metrics", token=TECH_TOKEN)
        assert status == 200
        families = list(text_string_to_metric_families(body.decode()))
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
        return headers, samples, {f.name for f in families}

    silenced = ("santi_receiver_readings_total", (("receiver", SILENCED),))
    # HQ's part: a delivery is timed to HQ's acknowledgement.
    hq = AckingSubscriber(broker.host, broker.port, queue.Queue())
    with running_agent(tmp_path, broker) as agent, contextlib.closing(hq):
        wait_until(lambda: scrape(agent.port)[1].get(silenced) == SILENCED_AFTER_S
                   and scrape(agent.port)[1].get(("santi_publish_latency_seconds_count", ()), 0) > 0,
                   30.0, f"all {SILENCED_AFTER_S:g} readings of {SILENCED} and a delivery in /metrics")
        headers, samples, names = scrape(agent.port)
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        for name in ("santi_observations", "santi_receiver_readings", "santi_receiver_healthy", "santi_dropped",
                     "santi_sector_occupancy", "santi_events", "santi_tracks", "santi_outbox_depth",
                     "santi_outbox_oldest_age_seconds", "santi_uplink_connected", "santi_publish_latency_seconds"):
            assert name in names, name
        assert samples[("santi_tracks", ())] == 1.0
        assert samples[("santi_uplink_connected", ())] == 1.0
        assert samples[("santi_observations_total", (("source", "replay"),))] > samples[silenced]
        assert samples[("santi_events_total", (("type", "visit.started"),))] == 1.0
        assert samples[("santi_receiver_healthy", (("receiver", "pi-wifi"),))] == 0.0
        assert samples[("santi_publish_latency_seconds_bucket", (("le", "+Inf"),))] == \
            samples[("santi_publish_latency_seconds_count", ())]


def test_the_staff_stream_shows_a_card_until_its_visit_ends(broker: Broker, tmp_path: Path) -> None:
    with running_agent(tmp_path, broker, speed=20.0) as agent:
        visit = wait_until(agent.visit_id, 20.0, "the shopper's visit")
        agent.add_card(visit, "Fresh hake today: Marta loves it")

        def cards() -> list[dict[str, Any]]:
            status, _, body = request(agent.port, "/api/staff", token=STAFF_TOKEN)
            assert status == 200
            return list(json.loads(body)["cards"])
        shown = wait_until(cards, 10.0, "the card on the staff board")
        assert shown[0]["text"] == "Fresh hake today: Marta loves it"
        assert shown[0]["loyalty_id"] == "L-000777"
        wait_until(lambda: not cards() and agent.visit_id() is None, 40.0, "the card to go at visit.ended")
        assert agent.service.staff_board.cards() == []


def test_an_address_in_use_is_one_line_and_exit_1(broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        site = load_site(console_site(tmp_path, broker.port, port))
        service = Service(site, [], state_dir=tmp_path / "state")
        assert asyncio.run(service.run()) == 1
    messages = [r.__dict__.get("error", "") for r in caplog.records if r.message == "console unavailable"]
    assert messages == [f"console: cannot listen on 127.0.0.1:{port}: Address already in use"]
