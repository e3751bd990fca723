"""Which rules fire for one triggering event: a pure function of the event, the profile and the history.

The runner in ``santi hq run`` hands over the event that arrived, the
customer's profile as HQ has it at that moment (the current visit included),
whether the customer consents to personalisation, and the customer's earlier
firings; it gets back the firings to record and deliver. No clock, no
database, no network: the limits below are checked against what is passed in,
which is what lets a property test drive any sequence of events through them.

Limits, per rule and customer:

* ``once_per_visit``: at most one firing per visit;
* ``cooldown_days``: at least that long between two firings;
* ``max_per_day``: at most K firings per calendar day in the store's time zone;
* ``quiet_hours``: none while the store's local time is inside them;

and, across rules, ``max_per_customer_per_day`` of the file (in the rules'
order: an earlier rule wins a slot).
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from hq.profile import DAY_S, Profile, Visit
from hq.rules import Conditions, FactName, Rule, Rules

Fact = str | int | float | bool | None


@dataclass(frozen=True)
class Trigger:
    """The event a rule may fire on, with the customer it belongs to."""

    event_id: str
    type: str
    store_id: str
    agent_id: str
    visit_id: str | None
    sector_id: str | None
    ts: datetime
    loyalty_id: str


@dataclass(frozen=True)
class PastFiring:
    """An earlier firing of a rule for the customer (from HQ's activation history)."""

    rule_id: str
    ts: datetime
    visit: tuple[str, str, str] | None


@dataclass(frozen=True)
class Firing:
    """A rule that fires: what to record and deliver."""

    rule: Rule
    trigger: Trigger
    facts: dict[str, Fact] = field(default_factory=dict)

    @property
    def visit(self) -> tuple[str, str, str] | None:
        t = self.trigger
        return None if t.visit_id is None else (t.store_id, t.agent_id, t.visit_id)


def _current_visit(profile: Profile, trigger: Trigger) -> Visit | None:
    for visit in profile.visit_list:
        if (visit.store_id, visit.agent_id, visit.visit_id) == (trigger.store_id, trigger.agent_id, trigger.visit_id):
            return visit
    return None


def _earlier_visits(profile: Profile, trigger: Trigger) -> list[Visit]:
    """Visits that started before the triggering one (before the event when it names none)."""
    current = _current_visit(profile, trigger)
    cutoff = current.started if current is not None else trigger.ts
    return [v for v in profile.visit_list if v is not current and v.started < cutoff]


def facts(profile: Profile, trigger: Trigger, conditions: Conditions, names: Iterable[FactName],
          earlier: Sequence[Visit] | None = None) -> dict[str, Fact]:
    """The profile facts at the trigger's time, for the conditions and the names a rule shows.

    ``earlier``: the visits before the triggering one, when the caller has them already (the
    same for every rule a trigger matches).
    """
    wanted = set(names) | {n for n in conditions.model_fields_set if getattr(conditions, n) is not None}
    out: dict[str, Fact] = {}
    if earlier is None:
        earlier = _earlier_visits(profile, trigger)
    if "visits_in_days" in wanted:
        days = conditions.visits_in_days.days if conditions.visits_in_days is not None else 30
        since = trigger.ts - timedelta(days=days)
        out["visits_in_days"] = sum(1 for v in profile.visit_list if since < v.started <= trigger.ts)
    if "days_since_previous_visit" in wanted:
        previous = max((v.started for v in earlier), default=None)
        out["days_since_previous_visit"] = (
            None if previous is None else round((trigger.ts - previous).total_seconds() / DAY_S, 2)
        )
    if "first_visit" in wanted:
        out["first_visit"] = not earlier
    if "dwell_share" in wanted:
        sector = conditions.dwell_share.sector if conditions.dwell_share is not None else None
        share = profile.dwell_share
        if sector is None:
            sector = next(iter(share), None)
        out["dwell_share"] = None if sector is None else round(share.get(sector, 0.0), 3)
        if sector is not None:
            out["dwell_share_sector"] = sector
    if "average_visit_s" in wanted:
        out["average_visit_s"] = None if profile.average_visit_s is None else round(profile.average_visit_s, 1)
    if "card_taps" in wanted:
        out["card_taps"] = profile.card_taps
    return out


def _number(value: Fact) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def conditions_hold(conditions: Conditions, values: dict[str, Fact]) -> bool:
    """Every condition given holds on the facts (an unknown fact never satisfies a bound)."""
    checks = [
        (conditions.visits_in_days, "visits_in_days"),
        (conditions.days_since_previous_visit, "days_since_previous_visit"),
        (conditions.dwell_share, "dwell_share"),
        (conditions.average_visit_s, "average_visit_s"),
        (conditions.card_taps, "card_taps"),
    ]
    for bounds, name in checks:
        if bounds is not None and not bounds.holds(_number(values.get(name))):
            return False
    return conditions.first_visit is None or values.get("first_visit") is conditions.first_visit


@functools.lru_cache(maxsize=65_536)
def _local_date(ts: datetime, zone: zoneinfo.ZoneInfo) -> date:
    """The calendar day of ``ts`` in ``zone``: remembered, as every evaluation counts a customer's
    earlier firings by day again (the same few timestamps for each of a visit's events)."""
    return ts.astimezone(zone).date()


def _matches(rule: Rule, trigger: Trigger) -> bool:
    spec = rule.trigger
    if spec.event != trigger.type:
        return False
    if spec.stores is not None and trigger.store_id not in spec.stores:
        return False
    return spec.sectors is None or trigger.sector_id in spec.sectors


def _allowed_by_limits(rule: Rule, trigger: Trigger, history: Sequence[PastFiring], zone: zoneinfo.ZoneInfo,
                       local: datetime) -> bool:
    """``local``: the trigger's time in the store's ``zone``."""
    limits = rule.limits
    if limits.quiet_hours is not None and limits.quiet_hours.covers(local.time().replace(tzinfo=None)):
        return False
    mine = [f for f in history if f.rule_id == rule.id]
    visit = None if trigger.visit_id is None else (trigger.store_id, trigger.agent_id, trigger.visit_id)
    if limits.once_per_visit and visit is not None and any(f.visit == visit for f in mine):
        return False
    cooldown = timedelta(days=limits.cooldown_days)
    if cooldown > timedelta(0) and any(abs(trigger.ts - f.ts) < cooldown for f in mine):
        return False
    if limits.max_per_day is not None:
        today = local.date()
        if sum(1 for f in mine if _local_date(f.ts, zone) == today) >= limits.max_per_day:
            return False
    return True


def evaluate(
    rules: Rules,
    trigger: Trigger,
    profile: Profile,
    history: Sequence[PastFiring],
    *,
    personalisation: bool,
) -> list[Firing]:
    """The rules that fire for ``trigger``, in the file's order; none without consent to personalisation."""
    if not personalisation:
        return []
    fired: list[Firing] = []
    cap = rules.spec.max_per_customer_per_day
    zone = rules.zone(trigger.store_id)
    local = trigger.ts.astimezone(zone)
    today = local.date()
    used_today = sum(1 for f in history if _local_date(f.ts, zone) == today)
    if cap is not None and used_today >= cap:
        return fired  # the customer's day is full: no rule's facts need computing
    candidates = rules.triggered_by(trigger.type)
    earlier = _earlier_visits(profile, trigger) if candidates else []
    for rule in candidates:
        if not _matches(rule, trigger):
            continue
        values = facts(profile, trigger, rule.when, rule.facts, earlier)
        if not conditions_hold(rule.when, values):
            continue
        if not _allowed_by_limits(rule, trigger, history, zone, local):
            continue
        shown = {k: v for k, v in values.items() if k in rule.facts or (k == "dwell_share_sector" and "dwell_share" in rule.facts)}
        fired.append(Firing(rule, trigger, shown))
        if cap is not None and used_today + len(fired) >= cap:
            break
    return fired
