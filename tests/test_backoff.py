"""The one backoff: exact waits, jitter bounds, the long wait for logins, and who uses it."""

from __future__ import annotations

import random
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.backoff import INTERACTIVE_RETRY, RADIO_RETRY, BackoffPolicy


def test_radio_waits_double_from_one_second_up_to_thirty() -> None:
    assert [RADIO_RETRY.wait_s(n) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert RADIO_RETRY.wait_s(10_000) == 30.0
    assert [INTERACTIVE_RETRY.wait_s(n) for n in range(4)] == [0.5, 1.0, 2.0, 2.0]


def test_broker_delay_is_equal_jitter_of_the_same_wait() -> None:
    policy = BackoffPolicy(base_s=1.0, cap_s=60.0, long_s=600.0)
    rng = random.Random(7)
    expected = random.Random(7)
    for attempt in range(10):
        ceiling = policy.wait_s(attempt)
        assert policy.delay(attempt, "network", rng) == ceiling / 2.0 + expected.uniform(0.0, ceiling / 2.0)
    assert 300.0 <= policy.delay(0, "auth", rng) <= 600.0
    assert 300.0 <= policy.delay(50, "config", rng) <= 600.0


@settings(max_examples=300, derandomize=True)
@given(st.integers(0, 10_000), st.floats(0.01, 5.0), st.floats(5.0, 600.0), st.integers(0, 2**32))
def test_waits_stay_within_bounds_and_never_shrink(attempt: int, base: float, cap: float, seed: int) -> None:
    policy = BackoffPolicy(base_s=base, cap_s=cap)
    wait = policy.wait_s(attempt)
    assert min(base, cap) <= wait <= cap
    assert policy.wait_s(attempt + 1) >= wait
    delay = policy.delay(attempt, "network", random.Random(seed))
    assert wait / 2.0 <= delay <= wait


def test_the_nfc_source_does_not_import_the_wifi_source() -> None:
    code = "import sys, agent.sources.nfc; print('agent.sources.wifi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
