"""Pseudonyms: stable within a salt period, unlinkable across periods and stores."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, PrivacyConfig
from agent.privacy import Pseudonymizer, load_secret, normalise_address

DAY = 86400.0
SECRET = b"k" * 32


@settings(max_examples=100, derandomize=True)
@given(st.binary(min_size=6, max_size=6), st.floats(0, 4e9), st.floats(0, DAY - 1e-3))
def test_same_device_same_period_same_pseudonym(mac: bytes, ts: float, delta: float) -> None:
    p = Pseudonymizer(SECRET, "store-a", DAY)
    start = (ts // DAY) * DAY
    assert p.pseudonym("mac", mac, start) == p.pseudonym("mac", mac, start + delta)


@settings(max_examples=100, derandomize=True)
@given(st.binary(min_size=6, max_size=6), st.floats(0, 4e9))
def test_unlinkable_across_periods_stores_and_kinds(mac: bytes, ts: float) -> None:
    a = Pseudonymizer(SECRET, "store-a", DAY)
    b = Pseudonymizer(SECRET, "store-b", DAY)
    here = a.pseudonym("mac", mac, ts)
    assert here != a.pseudonym("mac", mac, ts + DAY)
    assert here != b.pseudonym("mac", mac, ts)
    assert here != a.pseudonym("card", mac, ts)
    assert mac.hex() not in here


def test_address_spellings_agree() -> None:
    p = Pseudonymizer(SECRET, "s", DAY)
    forms = ["AA:BB:CC:DD:EE:FF", "aa-bb-cc-dd-ee-ff", "aabbccddeeff", bytes.fromhex("aabbccddeeff")]
    assert len({p.pseudonym("ble", form, 10.0) for form in forms}) == 1
    assert normalise_address("not-an-address") == b"not-an-address"


def test_secret_is_generated_once_private_and_reused(tmp_path: Path) -> None:
    first = load_secret(PrivacyConfig(), tmp_path)
    second = load_secret(PrivacyConfig(), tmp_path)
    assert first == second
    assert len(first) >= 32
    assert stat.S_IMODE((tmp_path / "store.secret").stat().st_mode) == 0o600


def test_secret_from_env_and_short_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANTI_TEST_SECRET", "x" * 40)
    assert load_secret(PrivacyConfig(secret_env="SANTI_TEST_SECRET"), tmp_path) == b"x" * 40
    monkeypatch.setenv("SANTI_TEST_SECRET", "short")
    with pytest.raises(ConfigError, match="shorter than 16 bytes"):
        load_secret(PrivacyConfig(secret_env="SANTI_TEST_SECRET"), tmp_path)
    with pytest.raises(ConfigError, match="not set"):
        load_secret(PrivacyConfig(secret_env="SANTI_NOT_SET_ANYWHERE"), tmp_path)
