"""The activation rules file: what turns "this customer just entered this sector" into a message.

One TOML file, read by ``santi hq run --rules FILE``. A rule has a trigger,
conditions over the customer's profile, limits and actions::

    timezone = "Europe/Madrid"          # default time zone of the stores below
    max_per_customer_per_day = 3        # across all rules (optional)

    [stores.fishmonger-01]
    site = "fishmonger.toml"            # its sectors are what rules may name

    [[rule]]
    id = "cod-regular"
    text = "Regular at the fish counter, 3 weeks since the last visit: fresh cod arrived today"
    facts = ["visits_in_days", "days_since_previous_visit", "dwell_share"]

    [rule.trigger]
    event = "sector.entered"            # visit.started | sector.entered | identity.linked | card.tapped
    sectors = ["fish-counter"]          # optional; stores = [...] too

    [rule.when]                         # all must hold; each is optional
    visits_in_days = { days = 60, min = 3 }
    days_since_previous_visit = { min = 21 }
    dwell_share = { sector = "fish-counter", min = 0.3 }

    [rule.limits]
    once_per_visit = true               # the default
    cooldown_days = 7
    max_per_day = 1
    quiet_hours = { start = "21:00", end = "08:00" }

    [[rule.action]]
    kind = "staff"                      # staff | webhook | mqtt

A file that does not parse, or names an unknown sector, event type, profile
field or store, is one line naming the file, the line and the key
(``RulesError``); a running HQ keeps the rules it had.
"""

from __future__ import annotations

import re
import tomllib
import zoneinfo
from collections.abc import Mapping, Sequence
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.config import ConfigError, load_site
from agent.errors import InputError
from agent.tomllines import located, read_text, syntax_error

TriggerEvent = Literal["visit.started", "sector.entered", "identity.linked", "card.tapped"]
FactName = Literal[
    "visits_in_days",
    "days_since_previous_visit",
    "first_visit",
    "dwell_share",
    "average_visit_s",
    "card_taps",
]
FACT_NAMES: tuple[str, ...] = get_args(FactName)
TRIGGER_EVENTS: tuple[str, ...] = get_args(TriggerEvent)

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
_CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class RulesError(InputError):
    """A rules file problem, already worded as the one line a person reads."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bounds(_Model):
    """``min`` and/or ``max`` of a number, both inclusive."""

    min: Finite | None = None
    max: Finite | None = None

    @model_validator(mode="after")
    def _some(self) -> Bounds:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def holds(self, value: float | None) -> bool:
        """False for an unknown value: a condition on a fact HQ does not have yet is not met."""
        if value is None:
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class VisitsInDays(Bounds):
    """Visits started in the last ``days`` days, the current one included."""

    days: int = Field(ge=1, le=3650)


class DwellShare(Bounds):
    """The share of the customer's sector dwell time spent in ``sector`` (0-1)."""

    sector: Id
    min: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    max: Annotated[float, Field(ge=0.0, le=1.0)] | None = None


class Conditions(_Model):
    """Conditions over the profile; every one given must hold. Keys are the profile fields."""

    visits_in_days: VisitsInDays | None = None
    days_since_previous_visit: Bounds | None = None
    first_visit: bool | None = None
    dwell_share: DwellShare | None = None
    average_visit_s: Bounds | None = None
    card_taps: Bounds | None = None


class Trigger(_Model):
    event: TriggerEvent
    stores: list[Id] | None = Field(default=None, min_length=1)
    sectors: list[Id] | None = Field(default=None, min_length=1)


class QuietHours(_Model):
    """No firing from ``start`` to ``end`` (store time, HH:MM); wraps past midnight when end < start."""

    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(value):
            raise ValueError(f"{value!r} is not a time of day as HH:MM")
        return value

    def covers(self, at: time) -> bool:
        start, end = time.fromisoformat(self.start), time.fromisoformat(self.end)
        if start == end:
            return False
        if start < end:
            return start <= at < end
        return at >= start or at < end


class Limits(_Model):
    once_per_visit: bool = True
    cooldown_days: Finite = Field(default=0.0, ge=0.0, le=3650.0)
    max_per_day: int | None = Field(default=None, ge=1, le=1000)
    quiet_hours: QuietHours | None = None


class StaffAction(_Model):
    """A card on the store's staff topic."""

    kind: Literal["staff"]


class WebhookAction(_Model):
    """A CloudEvents 1.0 JSON POST, signed with HMAC-SHA256 of the body under the secret."""

    kind: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2000)]
    secret_file: Path
    timeout_s: Finite = Field(default=5.0, gt=0.0, le=60.0)
    max_attempts: int = Field(default=8, ge=1, le=100)


class MqttAction(_Model):
    """A message on ``santi/v1/hq/activations/<rule_id>`` for the company's own bus."""

    kind: Literal["mqtt"]


Action = Annotated[StaffAction | WebhookAction | MqttAction, Field(discriminator="kind")]


class Rule(_Model):
    id: Id
    text: str = Field(min_length=1, max_length=500)
    trigger: Trigger
    when: Conditions = Field(default_factory=Conditions)
    limits: Limits = Field(default_factory=Limits)
    facts: list[FactName] = Field(default_factory=list)
    action: list[Action] = Field(min_length=1)


class StoreRules(_Model):
    site: Path | None = None
    timezone: str | None = None


class RulesFile(_Model):
    timezone: str = "UTC"
    max_per_customer_per_day: int | None = Field(default=None, ge=1, le=1000)
    stores: dict[Id, StoreRules] = Field(default_factory=dict)
    rule: list[Rule] = Field(default_factory=list)


class Rules:
    """A validated rules file, with each store's time zone and sectors resolved."""

    def __init__(self, path: Path, spec: RulesFile, zones: Mapping[str, zoneinfo.ZoneInfo],
                 sectors: Mapping[str, frozenset[str]]) -> None:
        self.path = path
        self.spec = spec
        self._zones = dict(zones)
        self._default_zone = zoneinfo.ZoneInfo(spec.timezone)
        self.sectors = dict(sectors)
        self._by_event: dict[str, tuple[Rule, ...]] = {
            event: tuple(r for r in spec.rule if r.trigger.event == event) for event in TRIGGER_EVENTS}

    @property
    def rules(self) -> Sequence[Rule]:
        return self.spec.rule

    def triggered_by(self, event_type: str) -> Sequence[Rule]:
        """The rules an event of this type may fire, in the file's order (looked up once per file, not per event)."""
        return self._by_event.get(event_type, ())

    def zone(self, store_id: str) -> zoneinfo.ZoneInfo:
        """The store's time zone: its own, else the file's."""
        return self._zones.get(store_id, self._default_zone)

    def webhook_secret_files(self) -> list[Path]:
        return [a.secret_file for r in self.rules for a in r.action if isinstance(a, WebhookAction)]


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'Europe/Madrid')") from None


def _message(error: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        if len(loc) >= 2 and loc[-2] == "when":
            return f"unknown profile field {loc[-1]!r} (known: {', '.join(FACT_NAMES)})"
        return "unknown key (misspelt?)"
    if error["type"] == "literal_error" and "event" in loc:
        return f"unknown event type {error['input']!r} (known: {', '.join(TRIGGER_EVENTS)})"
    if error["type"] == "literal_error" and "facts" in loc:
        return f"unknown profile field {error['input']!r} (known: {', '.join(FACT_NAMES)})"
    if error["type"] == "union_tag_invalid":
        return f"unknown action kind {error['input'].get('kind')!r} (known: staff, webhook, mqtt)"
    return str(error["msg"]).removeprefix("Value error, ")


def _loc(error: Mapping[str, Any]) -> tuple[str | int, ...]:
    # A discriminated union adds the tag ("staff", "webhook") as a path part the file does not have.
    return tuple(p for p in error["loc"] if p not in {"staff", "webhook", "mqtt"})


def parse_rules(text: str, path: Path) -> Rules:
    """Validate the text of a rules file; ``path`` names it in errors and anchors relative paths."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(syntax_error(path, exc)) from None
    try:
        spec = RulesFile.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise RulesError(located(path, text, _loc(error), _message(error))) from None

    def problem(loc: tuple[str | int, ...], message: str) -> RulesError:
        return RulesError(located(path, text, loc, message))

    zones: dict[str, zoneinfo.ZoneInfo] = {}
    sectors: dict[str, frozenset[str]] = {}
    try:
        _zone(spec.timezone)
    except ValueError as exc:
        raise problem(("timezone",), str(exc)) from None
    for store_id, store in spec.stores.items():
        if store.timezone is not None:
            try:
                zones[store_id] = _zone(store.timezone)
            except ValueError as exc:
                raise problem(("stores", store_id, "timezone"), str(exc)) from None
        if store.site is not None:
            site_path = store.site if store.site.is_absolute() else path.parent / store.site
            try:
                site = load_site(site_path)
            except ConfigError as exc:
                raise problem(("stores", store_id, "site"), f"site config: {exc}") from None
            if site.store.id != store_id:
                raise problem(("stores", store_id, "site"), f"{site_path} is store {site.store.id!r}, not {store_id!r}")
            sectors[store_id] = frozenset(s.id for s in site.sectors)

    seen: dict[str, int] = {}
    for index, rule in enumerate(spec.rule):
        if rule.id in seen:
            raise problem(("rule", index, "id"), f"duplicate rule id {rule.id!r} (also rule[{seen[rule.id]}])")
        seen[rule.id] = index
        for store_id in rule.trigger.stores or ():
            if store_id not in spec.stores:
                raise problem(("rule", index, "trigger", "stores"),
                              f"unknown store {store_id!r}: declare it as [stores.{store_id}]")
        named = [("trigger", "sectors", s) for s in rule.trigger.sectors or ()]
        if rule.when.dwell_share is not None:
            named.append(("when", "dwell_share", rule.when.dwell_share.sector))
        scope = rule.trigger.stores or list(sectors)
        for table, key, sector in named:
            known = set().union(*(sectors.get(s, frozenset()) for s in scope))
            if not known:
                raise problem(("rule", index, table, key),
                              f"names sector {sector!r} but no store it applies to has a site = ... to check it against")
            if sector not in known:
                raise problem(("rule", index, table, key),
                              f"unknown sector {sector!r} (known: {', '.join(sorted(known))})")
        for position, action in enumerate(rule.action):
            if isinstance(action, WebhookAction):
                secret = action.secret_file if action.secret_file.is_absolute() else path.parent / action.secret_file
                if not secret.is_file():
                    raise problem(("rule", index, "action", position, "secret_file"), f"file {secret} does not exist")
    resolved = spec.model_copy(update={"rule": [_with_secret_paths(r, path.parent) for r in spec.rule]})
    return Rules(path, resolved, zones, sectors)


def _with_secret_paths(rule: Rule, base: Path) -> Rule:
    actions = [
        a.model_copy(update={"secret_file": base / a.secret_file})
        if isinstance(a, WebhookAction) and not a.secret_file.is_absolute() else a
        for a in rule.action
    ]
    return rule.model_copy(update={"action": actions})


def load_rules(path: Path) -> Rules:
    """Read and validate a rules file, or raise ``RulesError`` with one line."""
    return parse_rules(read_text(path, RulesError), path)
