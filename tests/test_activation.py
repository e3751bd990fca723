"""The pure activation evaluator: facts, conditions, consent, and limits that no sequence of events can exceed."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from hq.activation import Firing, PastFiring, Trigger, evaluate, facts
from hq.profile import Profile, Visit, build_profile
from hq.rules import Rules, parse_rules

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "examples" / "fishmonger.toml"
STORE, AGENT = "fishmonger-01", "pi-backoffice"
T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)  # a Monday, 11:00 in Madrid


def _rules(body: str, header: str = "") -> Rules:
    text = f'timezone = "Europe/Madrid"\n{header}\n[stores.{STORE}]\nsite = "{SITE}"\n{body}'
    return parse_rules(text, ROOT / "examples" / "inline-rules.toml")


def _rule(rule_id: str = "r", event: str = "sector.entered", when: str = "", limits: str = "",
          facts_: str = "[]", sectors: str = '["fish"]') -> str:
    return (f'[[rule]]\nid = "{rule_id}"\ntext = "say hello"\nfacts = {facts_}\n'
            f'[rule.trigger]\nevent = "{event}"\nsectors = {sectors}\n'
            f"[rule.when]\n{when}\n[rule.limits]\n{limits}\n[[rule.action]]\nkind = \"staff\"\n")


def _visit(visit_id: str, start: datetime, minutes: float = 10.0, dwell: dict[str, float] | None = None) -> Visit:
    return Visit(STORE, AGENT, visit_id, subject="s", started=start, ended=start + timedelta(minutes=minutes),
                 duration_s=minutes * 60.0, dwell_s=dwell or {"fish": 300.0, "aisle-1": 300.0}, closed=True)


def _profile(visits: list[Visit], now: datetime, taps: int = 0) -> Profile:
    return build_profile("loyalty", "L1", visits, [now] * taps, now)


def _trigger(visit_id: str, ts: datetime, event_id: str = "e1", sector: str | None = "fish",
             event: str = "sector.entered") -> Trigger:
    return Trigger(event_id, event, STORE, AGENT, visit_id, sector, ts, "L1")


def test_facts_of_a_regular_coming_back_after_three_weeks() -> None:
    history = [_visit(f"v{i}", T0 - timedelta(days=21 + 7 * i)) for i in range(4)]
    now = T0 + timedelta(minutes=3)
    current = _visit("now", T0, minutes=3, dwell={"fish": 120.0})
    profile = _profile([*history, current], now, taps=2)
    rules = _rules(_rule(when="visits_in_days = { days = 60, min = 3 }"))
    got = facts(profile, _trigger("now", now), rules.rules[0].when,
                ["visits_in_days", "days_since_previous_visit", "first_visit", "dwell_share", "average_visit_s", "card_taps"])
    # Visits started within (now - 60 d, now]: the current one and those 21, 28, 35, 42 days back.
    assert got["visits_in_days"] == 5
    assert got["days_since_previous_visit"] == 21.0
    assert got["first_visit"] is False
    assert got["dwell_share"] == round((4 * 300.0 + 120.0) / (8 * 300.0 + 120.0), 3)
    assert got["dwell_share_sector"] == "fish"
    assert got["average_visit_s"] == round((4 * 600.0 + 180.0) / 5, 1)
    assert got["card_taps"] == 2


def test_a_first_visit_has_no_previous_visit() -> None:
    profile = _profile([_visit("now", T0)], T0)
    rules = _rules(_rule(when="first_visit = true\ndays_since_previous_visit = { min = 1 }"))
    got = facts(profile, _trigger("now", T0), rules.rules[0].when, [])
    assert got["first_visit"] is True
    assert got["days_since_previous_visit"] is None
    # An unknown fact never satisfies a bound: the rule does not fire.
    assert evaluate(rules, _trigger("now", T0), profile, [], personalisation=True) == []


def test_a_rule_fires_only_when_every_condition_holds_and_with_consent() -> None:
    visits = [_visit(f"v{i}", T0 - timedelta(days=21 + 7 * i)) for i in range(3)] + [_visit("now", T0)]
    profile = _profile(visits, T0)
    rules = _rules(_rule(when="visits_in_days = { days = 60, min = 4 }\ndays_since_previous_visit = { min = 14 }",
                         facts_='["days_since_previous_visit"]'))
    fired = evaluate(rules, _trigger("now", T0), profile, [], personalisation=True)
    assert [f.rule.id for f in fired] == ["r"]
    assert fired[0].facts == {"days_since_previous_visit": 21.0}
    assert evaluate(rules, _trigger("now", T0), profile, [], personalisation=False) == []
    stricter = _rules(_rule(when="visits_in_days = { days = 60, min = 5 }"))
    assert evaluate(stricter, _trigger("now", T0), profile, [], personalisation=True) == []


def test_trigger_filters_event_type_and_sector() -> None:
    profile = _profile([_visit("now", T0)], T0)
    rules = _rules(_rule())
    assert evaluate(rules, _trigger("now", T0, sector="aisle-1"), profile, [], personalisation=True) == []
    assert evaluate(rules, _trigger("now", T0, event="visit.started"), profile, [], personalisation=True) == []
    assert len(evaluate(rules, _trigger("now", T0), profile, [], personalisation=True)) == 1


def test_quiet_hours_are_the_store_local_time() -> None:
    profile = _profile([_visit("now", T0)], T0)
    rules = _rules(_rule(limits='quiet_hours = { start = "21:00", end = "08:00" }'))
    madrid = ZoneInfo("Europe/Madrid")
    late = datetime(2026, 11, 2, 21, 30, tzinfo=madrid).astimezone(UTC)  # 20:30 UTC
    early = datetime(2026, 11, 3, 7, 59, tzinfo=madrid).astimezone(UTC)
    open_ = datetime(2026, 11, 3, 8, 0, tzinfo=madrid).astimezone(UTC)
    assert evaluate(rules, _trigger("now", late), profile, [], personalisation=True) == []
    assert evaluate(rules, _trigger("now", early), profile, [], personalisation=True) == []
    assert len(evaluate(rules, _trigger("now", open_), profile, [], personalisation=True)) == 1


def test_the_file_cap_lets_earlier_rules_win() -> None:
    profile = _profile([_visit("now", T0)], T0)
    rules = _rules(_rule("a") + _rule("b") + _rule("c"), header="max_per_customer_per_day = 2")
    fired = evaluate(rules, _trigger("now", T0), profile, [], personalisation=True)
    assert [f.rule.id for f in fired] == ["a", "b"]
    history = [PastFiring("a", T0 - timedelta(hours=1), (STORE, AGENT, "old"))]
    assert [f.rule.id for f in evaluate(rules, _trigger("now", T0), profile, history, personalisation=True)] == ["a"]


LIMITS = _rules(
    _rule("visit-once", limits="once_per_visit = true")
    + _rule("cooldown", limits="once_per_visit = false\ncooldown_days = 0.5")
    + _rule("daily", limits="once_per_visit = false\nmax_per_day = 2")
    + _rule("quiet", limits='once_per_visit = false\nquiet_hours = { start = "13:00", end = "15:00" }'),
    header="max_per_customer_per_day = 4",
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4 * 24 * 60), st.integers(0, 5)), min_size=1, max_size=60))
def test_limits_are_never_exceeded_for_any_sequence_of_events(events: list[tuple[int, int]]) -> None:
    history: list[PastFiring] = []
    fired: list[Firing] = []
    for n, (minute, visit) in enumerate(sorted(events)):
        ts = T0 + timedelta(minutes=minute)
        profile = _profile([_visit(f"v{visit}", ts)], ts)
        trigger = _trigger(f"v{visit}", ts, event_id=f"e{n}")
        for firing in evaluate(LIMITS, trigger, profile, history, personalisation=True):
            fired.append(firing)
            history.append(PastFiring(firing.rule.id, ts, firing.visit))
    assert fired, "the first event always fires visit-once: nothing was exercised"
    madrid = ZoneInfo("Europe/Madrid")
    by_rule: dict[str, list[Firing]] = {}
    for f in fired:
        by_rule.setdefault(f.rule.id, []).append(f)
    once = [f.visit for f in by_rule.get("visit-once", [])]
    assert len(once) == len(set(once))
    cooldown = sorted(f.trigger.ts for f in by_rule.get("cooldown", []))
    assert all(b - a >= timedelta(days=0.5) for a, b in itertools.pairwise(cooldown))
    days: dict[object, int] = {}
    for f in by_rule.get("daily", []):
        day = f.trigger.ts.astimezone(madrid).date()
        days[day] = days.get(day, 0) + 1
    assert all(count <= 2 for count in days.values())
    for f in by_rule.get("quiet", []):
        local = f.trigger.ts.astimezone(madrid).time()
        assert local.hour not in (13, 14)
    per_day: dict[object, int] = {}
    for f in fired:
        day = f.trigger.ts.astimezone(madrid).date()
        per_day[day] = per_day.get(day, 0) + 1
    assert all(count <= 4 for count in per_day.values())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3 * 24 * 60), min_size=1, max_size=40))
def test_no_firing_ever_without_consent(minutes: list[int]) -> None:
    for minute in minutes:
        ts = T0 + timedelta(minutes=minute)
        assert evaluate(LIMITS, _trigger("v", ts), _profile([_visit("v", ts)], ts), [], personalisation=False) == []
