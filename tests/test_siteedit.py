"""Site config edits through tomlkit: values change, the technician's comments and layout do not."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, parse_site
from agent.siteedit import drop_tracking_key, set_receiver_values, set_tracking_key

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml"

COMMENTED = """\
# Santi site config for the test shop.   (a header comment)

[store]
id = "shop-1"        # as HQ knows it
name = "Test shop"

# The BLE receiver on the ceiling; values from the datasheet.
[[receivers]]
id = "pi-ble"
kind = "ble"
x = 1.0
y = 2.0
rssi_at_1m    = -59.0   # datasheet
path_loss_exponent = 2.0
# a comment between two receivers

[[receivers]]
id = "node-b"   # no calibration yet
kind = "node"
x = 3.0
y = 4.0

[tracking]
window_s = 1.0  # one window per second
"""


def _without(text: str, keys: set[str]) -> list[str]:
    return [line for line in text.splitlines() if line.split("=")[0].strip() not in keys]


def test_a_commented_config_round_trips_unchanged() -> None:
    assert set_receiver_values(COMMENTED, {}) == COMMENTED
    assert set_receiver_values(COMMENTED, {"pi-ble": {"rssi_at_1m": -59.0}}) == COMMENTED
    assert drop_tracking_key(COMMENTED, "radio_map") == COMMENTED
    assert EXAMPLE.read_text() == set_receiver_values(EXAMPLE.read_text(), {})


def test_setting_values_keeps_every_comment_and_other_line() -> None:
    new = set_receiver_values(COMMENTED, {"pi-ble": {"rssi_at_1m": -61.2, "noise_sigma_db": 3.5},
                                          "node-b": {"path_loss_exponent": 2.4}})
    assert "rssi_at_1m    = -61.2   # datasheet\n" in new
    assert [line for line in new.splitlines() if "#" in line] == [
        line.replace("-59.0", "-61.2") for line in COMMENTED.splitlines() if "#" in line]
    changed = {"rssi_at_1m", "noise_sigma_db", "path_loss_exponent"}
    assert _without(new, changed) == _without(COMMENTED, changed)
    parsed = tomllib.loads(new)
    assert [{k: r.get(k) for k in sorted(changed)} for r in parsed["receivers"]] == [
        {"noise_sigma_db": 3.5, "path_loss_exponent": 2.0, "rssi_at_1m": -61.2},
        {"noise_sigma_db": None, "path_loss_exponent": 2.4, "rssi_at_1m": None},
    ]


def test_the_tracking_file_key_is_set_and_dropped_with_its_comments_kept() -> None:
    named = set_tracking_key(COMMENTED, "radio_map", "shop.radiomap.npz")
    assert named == COMMENTED + 'radio_map = "shop.radiomap.npz"\n'
    assert drop_tracking_key(named, "radio_map") == COMMENTED


def test_an_unknown_receiver_or_broken_text_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no \\[\\[receivers\\]\\] table with id = 'nope'"):
        set_receiver_values(COMMENTED, {"nope": {"rssi_at_1m": -60.0}})
    with pytest.raises(ConfigError, match=r"^not a TOML site config: "):
        set_receiver_values("[store\n", {})


@settings(max_examples=60, deadline=None)
@given(a=st.floats(-100.0, -20.0).map(lambda v: round(v, 1)), n=st.floats(1.0, 6.0).map(lambda v: round(v, 2)),
       s=st.floats(0.5, 20.0).map(lambda v: round(v, 1)))
def test_the_example_site_takes_any_fit_and_only_those_values_change(a: float, n: float, s: float) -> None:
    text = EXAMPLE.read_text()
    values = {"rssi_at_1m": a, "path_loss_exponent": n, "noise_sigma_db": s}
    new = set_receiver_values(text, {"node-fish": values})
    fish = next(r for r in parse_site(new, EXAMPLE).receivers if r.id == "node-fish")
    assert (fish.rssi_at_1m, fish.path_loss_exponent, fish.noise_sigma_db) == (a, n, s)
    assert [line for line in new.splitlines() if line.lstrip().startswith("#")] == [
        line for line in text.splitlines() if line.lstrip().startswith("#")]
    assert len(new.splitlines()) == len(text.splitlines()) + 3  # node-fish had none of the three
