"""The activation rules file: the example loads, and every mistake is one line naming the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hq.rules import RulesError, load_rules, parse_rules

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "rules.toml"
SITE = ROOT / "examples" / "fishmonger.toml"

GOOD = f"""\
timezone = "Europe/Madrid"

[stores.fishmonger-01]
site = "{SITE}"

[[rule]]
id = "first"
text = "hello"

[rule.trigger]
event = "visit.started"

[[rule.action]]
kind = "staff"

[[rule]]
id = "cod"
text = "fresh cod"
facts = ["visits_in_days"]

[rule.trigger]
event = "sector.entered"
sectors = ["fish"]

[rule.when]
visits_in_days = {{ days = 60, min = 3 }}

[rule.limits]
cooldown_days = 7

[[rule.action]]
kind = "staff"
"""


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:")
    return message


def test_the_example_loads_with_its_store_sectors_and_zone() -> None:
    rules = load_rules(EXAMPLE)
    assert [r.id for r in rules.rules] == ["cod-regular", "welcome", "fish-counter"]
    assert "fish" in rules.sectors["fishmonger-01"]
    assert str(rules.zone("fishmonger-01")) == "Europe/Madrid"
    assert str(rules.zone("another-store")) == "Europe/Madrid"


def test_a_good_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(GOOD, encoding="utf-8")
    rules = parse_rules(GOOD, path)
    assert rules.rules[1].when.visits_in_days is not None
    assert rules.rules[1].when.visits_in_days.min == 3
    assert rules.rules[0].limits.once_per_visit


@pytest.mark.parametrize(
    ("old", "new", "line", "expected"),
    [
        ('event = "sector.entered"', 'event = "sector.entred"', 22, "rule[1].trigger.event: unknown event type 'sector.entred'"),
        ('sectors = ["fish"]', 'sectors = ["fishy"]', 23, "rule[1].trigger.sectors: unknown sector 'fishy' (known: aisle-1"),
        ("visits_in_days = {", "visits_in_weeks = {", 26, "rule[1].when.visits_in_weeks: unknown profile field 'visits_in_weeks'"),
        ('facts = ["visits_in_days"]', 'facts = ["shoe_size"]', 19, "rule[1].facts[0]: unknown profile field 'shoe_size'"),
        ("cooldown_days = 7", "cooldown_days = -1", 29, "rule[1].limits.cooldown_days: Input should be greater than or equal to 0"),
        ('id = "cod"', 'id = "first"', 17, "rule[1].id: duplicate rule id 'first' (also rule[0])"),
        ('timezone = "Europe/Madrid"', 'timezone = "Mars/Olympus"', 1, "timezone: unknown time zone 'Mars/Olympus'"),
        ('kind = "staff"\n\n[[rule]]', 'kind = "sms"\n\n[[rule]]', 13, "rule[0].action[0]: unknown action kind 'sms'"),
        ("min = 3 }", "min = 3, max = 1 }", 26, "rule[1].when.visits_in_days: min 3.0 is above max 1.0"),
    ],
)
def test_each_mistake_is_one_line_with_file_line_and_key(tmp_path: Path, old: str, new: str, line: int, expected: str) -> None:
    assert old in GOOD
    message = _error(tmp_path, GOOD.replace(old, new, 1))
    assert f"rules.toml:{line}: " in message, message
    assert expected in message, message


def test_a_sector_with_no_site_to_check_it_against_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace(f'site = "{SITE}"', "")
    assert "no store it applies to has a site" in _error(tmp_path, text)


def test_a_trigger_naming_an_undeclared_store_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace('event = "visit.started"', 'event = "visit.started"\nstores = ["other-store"]')
    assert "unknown store 'other-store': declare it as [stores.other-store]" in _error(tmp_path, text)


def test_a_site_of_another_store_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace("[stores.fishmonger-01]", "[stores.other-01]")
    assert "is store 'fishmonger-01', not 'other-01'" in _error(tmp_path, text)


def test_a_webhook_needs_its_secret_file(tmp_path: Path) -> None:
    text = GOOD + '\n[[rule.action]]\nkind = "webhook"\nurl = "http://127.0.0.1:9/hook"\nsecret_file = "hook.secret"\n'
    assert "secret_file: file" in _error(tmp_path, text)
    (tmp_path / "hook.secret").write_text("s3cret\n", encoding="utf-8")
    rules = load_rules(tmp_path / "rules.toml")
    assert rules.webhook_secret_files() == [tmp_path / "hook.secret"]


@pytest.mark.parametrize(
    "text",
    ["[[rule]\n", "rule = 3\n", "\x00\x01", "[[rule]]\nid = 'x'\n", "[stores]\nx = 1\n"],
)
def test_garbage_is_one_line_never_a_traceback(tmp_path: Path, text: str) -> None:
    _error(tmp_path, text)


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r"no such file$"):
        load_rules(tmp_path / "absent.toml")
