"""The console in a real headless Chromium (Debian's ``chromium``, driven by Playwright; no browser download).

The agent replays one shopper who walks in and stands at the fish counter
while ``node-fish`` goes quiet; the page must show the dot inside the fish
sector, that receiver turning silent, and a staff card for the shopper's
visit until the visit ends. Screenshots go to the test's tmp_path; the
assertions read the page's content (and the SVG's own geometry), never pixels.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from agent.localbroker import Broker
from tests.helpers.console import (
    SHOPPER,
    SILENCED,
    STAFF_TOKEN,
    TECH_TOKEN,
    RunningAgent,
    running_agent,
)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed "
                                "(scripts/bootstrap.sh installs it)")


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium; Playwright gives each launch a fresh temporary --user-data-dir."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _open(browser: Browser, agent: RunningAgent, token: str) -> tuple[Page, list[str]]:
    """A page in its own context (its own cookie), with every console error and page error collected."""
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)
    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"http://127.0.0.1:{agent.port}/#token={token}")
    return page, errors


DOT_IN_FISH = """() => {
  const dot = document.querySelector('#tracks .track[data-sector="fish"] circle');
  const fish = document.querySelector('#sectors [data-sector="fish"] polygon');
  if (!dot || !fish) return false;
  const point = document.getElementById('map').createSVGPoint();
  point.x = dot.cx.baseVal.value; point.y = dot.cy.baseVal.value;
  return fish.isPointInFill(point);
}"""


def test_technician_and_staff_pages_follow_the_store(broker: Broker, browser: Browser, tmp_path: Path) -> None:
    with running_agent(tmp_path, broker, speed=10.0) as agent:
        page, errors = _open(browser, agent, TECH_TOKEN)
        page.wait_for_selector("#technician:not([hidden])")
        assert page.url.endswith("/"), "the token must leave the address bar"
        assert page.text_content("#role") == "technician view"
        assert page.locator("#staff").is_hidden()

        page.wait_for_function(DOT_IN_FISH, timeout=30_000)
        assert page.locator("#tracks .track").count() == 1
        assert page.get_attribute("#sectors [data-sector='fish']", "data-occupancy") == "1"
        assert page.get_attribute("#tracks .track", "data-emitter") == SHOPPER[:8]
        page.screenshot(path=str(tmp_path / "technician-shopper.png"))

        page.wait_for_selector(f"#receivers [data-receiver='{SILENCED}'][data-health='silent']", timeout=30_000)
        assert page.get_attribute("#receivers [data-receiver='node-entrance']", "data-health") == "ok"
        assert page.inner_text(f"#receivers-table tr[data-receiver='{SILENCED}'] td.silent") == "silent"
        assert page.inner_text("#uplink-state").startswith("online")
        page.screenshot(path=str(tmp_path / "technician-silent.png"))

        staff, staff_errors = _open(browser, agent, STAFF_TOKEN)
        staff.wait_for_selector("#staff:not([hidden])")
        assert staff.locator("#technician").is_hidden()
        assert staff.is_visible("#no-cards")
        visit = agent.visit_id()
        assert visit is not None
        agent.add_card(visit, "Fresh hake today: ask about the recipe")
        staff.wait_for_selector(".card[data-loyalty='L-000777']", timeout=10_000)
        assert staff.text_content(".card h3") == "L-000777"
        assert staff.text_content(".card .where") == "Fish counter"
        assert staff.text_content(".card .text") == "Fresh hake today: ask about the recipe"
        assert staff.text_content(".card .facts") == "visits_90d: 7"
        staff.screenshot(path=str(tmp_path / "staff-card.png"))
        staff.wait_for_selector(".card", state="detached", timeout=60_000)
        assert agent.visit_id() is None, "the card went before the visit ended"
        assert staff.is_visible("#no-cards")
        staff.screenshot(path=str(tmp_path / "staff-empty.png"))

        assert errors == []
        assert staff_errors == []
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "staff-card.png", "staff-empty.png", "technician-shopper.png", "technician-silent.png"]


def test_no_token_or_a_wrong_one_gets_401_in_the_browser(broker: Broker, browser: Browser, tmp_path: Path) -> None:
    with running_agent(tmp_path, broker) as agent:
        page, errors = _open(browser, agent, "not-the-token")
        page.wait_for_selector("#login:not([hidden])")
        assert page.inner_text("#login-error") == "That token was not accepted."
        base = f"http://127.0.0.1:{agent.port}"
        for path in ("/api/snapshot", "/api/staff", "/api/stream", "/api/layout", "/metrics"):
            response = page.request.get(base + path)
            assert (response.status, response.body()) == (401, b""), path
            response = page.request.get(base + path, headers={"Authorization": "Bearer wrong"})
            assert response.status == 401, path
        staff_on_tech = page.request.get(base + "/api/snapshot", headers={"Authorization": f"Bearer {STAFF_TOKEN}"})
        assert staff_on_tech.status == 401
        page.fill("#token", TECH_TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("#technician:not([hidden])")
        page.screenshot(path=str(tmp_path / "after-login.png"))
        # The browser's own 401 for the rejected session POST is the only console error expected.
        assert [e for e in errors if "401" not in e] == []
