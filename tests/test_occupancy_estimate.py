"""The live occupancy estimate, eqs. (37)-(39): exact small cases and invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from positioning.occupancy import (
    EstimateConfig,
    LinkConfig,
    OccupancyEstimate,
    continues,
    estimate_occupancy,
)

Row = tuple[float, int, int, int, bool, float, int]
"""t, MAC key, signature key, sequence, randomised, RSSI, receiver code."""

CONFIG = EstimateConfig(link=LinkConfig(), lead_s=0.0, window_s=7200.0, gap_s=300.0, hold_s=60.0, min_bursts=2,
                        min_span_s=0.0, min_rssi_dbm=-80.0, fixture_s=2700.0, still_s=900.0, still_sd_db=1.0,
                        visit_s=120.0, interval_s=3600.0)
LEAD = EstimateConfig(**{**CONFIG.__dict__, "lead_s": 60.0})
"""Counting a minute back: the probes after that minute say who was still there."""


def estimate(rows: list[Row], now: float, config: EstimateConfig = CONFIG) -> OccupancyEstimate:
    if not rows:
        return estimate_occupancy([], [], [], [], [], [], [], now, config=config)
    t, mac, sig, seq, rnd, z, rx = (list(column) for column in zip(*rows, strict=True))
    return estimate_occupancy(t, mac, sig, seq, rnd, z, rx, now, config=config)


def phone(start: float, end: float, every: float, mac: int, sig: int, seq: int = 0, z: float = -60.0,
          new_mac_every: int = 0, wobble: float = 6.0) -> list[Row]:
    """A phone probing every ``every`` s from start to end, drawing a new MAC every few probes, sequence running."""
    rows: list[Row] = []
    for k, ts in enumerate(np.arange(start, end, every)):
        key = mac + (k // new_mac_every if new_mac_every else 0)
        rows.append((float(ts), key, sig, (seq + 3 * k) % 4096, True, z + wobble * ((-1) ** k), 0))
    return rows


def test_a_shopper_inside_is_counted_and_entered() -> None:
    rows = phone(1000.0, 1600.0, 30.0, mac=1, sig=5, new_mac_every=2)
    result = estimate(rows, now=1300.0)
    assert (result.count, result.entries, result.devices, result.stationary, result.outside) == (1.0, 1.0, 1, 0, 0)
    # The stay reaches half the phone's own probing period (30 s) either side of its first and last probe.
    assert estimate(rows, now=1050.0, config=LEAD).count == 1.0
    assert estimate(rows, now=1040.0, config=LEAD).count == 0.0
    assert estimate(rows, now=1580.0).count == 1.0
    assert estimate(rows, now=1590.0).count == 0.0


def test_a_single_burst_is_no_person_and_the_street_is_outside() -> None:
    burst = [(100.0, 1, 5, 10, True, -60.0, 0), (100.02, 1, 5, 11, True, -60.0, 0)]
    passer = phone(100.0, 400.0, 30.0, mac=50, sig=6, z=-88.0, wobble=2.0)
    result = estimate(burst + passer, now=200.0)
    assert (result.count, result.outside) == (0.0, 1)


def test_another_receiver_that_hears_it_loud_vouches_for_inside() -> None:
    far = phone(100.0, 400.0, 30.0, mac=50, sig=6, z=-88.0, wobble=2.0)
    near = [(ts, mac, sig, seq, rnd, -62.0, 1) for ts, mac, sig, seq, rnd, _, _ in far]
    config = EstimateConfig(**{**CONFIG.__dict__, "min_rssi_dbm": (-80.0, -70.0)})
    assert estimate(far, now=200.0, config=config).count == 0.0
    assert estimate(far + near, now=200.0, config=config).count == 1.0


def test_devices_present_for_hours_or_unmoving_are_stationary() -> None:
    pc = phone(0.0, 7000.0, 60.0, mac=900, sig=1, wobble=6.0)
    printer = phone(5000.0, 6200.0, 60.0, mac=901, sig=2, wobble=0.0)
    shopper = phone(5500.0, 6500.0, 40.0, mac=1, sig=3, new_mac_every=3)
    result = estimate(pc + printer + shopper, now=5990.0)
    assert (result.count, result.stationary) == (1.0, 2)


def test_people_per_device_scales_and_spreads() -> None:
    rows = phone(0.0, 600.0, 30.0, mac=1, sig=5) + phone(0.0, 600.0, 30.0, mac=100, sig=6)
    config = EstimateConfig(**{**CONFIG.__dict__, "people_per_device": 1.5, "people_offset": 0.5, "residual_sd": 0.3,
                                       "people_per_entry": 1.25})
    result = estimate(rows, now=300.0, config=config)
    assert result.count == pytest.approx(3.5)
    assert result.count_sd == pytest.approx(np.sqrt(0.09 + 1.5 * 0.5 * 2))
    assert result.entries == pytest.approx(2.5)
    assert result.entries_sd == pytest.approx(np.sqrt(1.25 * 0.25 * 2 + 1.25 ** 2 * 2 / 4))


def test_rows_outside_the_window_are_ignored_and_bad_input_refused() -> None:
    rows = phone(0.0, 600.0, 30.0, mac=1, sig=5)
    assert estimate(rows, now=20000.0).devices == 0
    with pytest.raises(ValueError, match="differ in length"):
        estimate_occupancy([0.0], [1, 2], [1], [1], [True], [-60.0], [0], 10.0)
    with pytest.raises(ValueError, match="finite"):
        estimate_occupancy([0.0], [1], [1], [1], [True], [float("nan")], [0], 10.0)
    with pytest.raises(ValueError, match="receiver code"):
        estimate([(r[0], *r[1:6], 3) for r in rows], now=300.0, config=EstimateConfig(min_rssi_dbm=(-80.0,)))
    with pytest.raises(ValueError, match="lead"):
        EstimateConfig(lead_s=8000.0)


@st.composite
def crowd(draw: st.DrawFn) -> list[Row]:
    """A few phones with distinct signatures, rotating MACs, over an hour."""
    rows: list[Row] = []
    for k in range(draw(st.integers(1, 5))):
        start = draw(st.floats(0.0, 3000.0))
        rows += phone(start, start + draw(st.floats(60.0, 1500.0)), draw(st.floats(10.0, 90.0)), mac=1000 * k, sig=k,
                      seq=draw(st.integers(0, 4095)), z=draw(st.floats(-75.0, -50.0)),
                      new_mac_every=draw(st.integers(0, 4)), wobble=draw(st.floats(0.0, 4.0)))
    return rows


@settings(max_examples=100, derandomize=True, deadline=None)
@given(crowd(), st.data())
def test_the_estimate_does_not_depend_on_arrival_order(rows: list[Row], data: st.DataObject) -> None:
    now = data.draw(st.floats(0.0, 4800.0))
    shuffled = data.draw(st.permutations(rows))
    assert estimate(shuffled, now) == estimate(rows, now)


@settings(max_examples=100, derandomize=True, deadline=None)
@given(st.data())
def test_two_phones_whose_keys_differ_are_counted_twice(data: st.DataObject) -> None:
    """Two phones inside together, same place and timing, different element signatures: two people."""
    start, every = data.draw(st.floats(0.0, 500.0)), data.draw(st.floats(10.0, 60.0))
    seq, rotate = data.draw(st.integers(0, 4095)), data.draw(st.integers(0, 3))
    a = phone(start, start + 900.0, every, mac=1, sig=1, seq=seq, new_mac_every=rotate)
    b = phone(start + 0.5, start + 900.5, every, mac=500, sig=2, seq=seq + 1, new_mac_every=rotate)
    result = estimate(a + b, now=start + 450.0, config=LEAD)
    assert (result.count, result.devices) == (2.0, 2)


def test_a_visit_split_by_a_long_silence_is_one_entry_and_short_stays_none() -> None:
    visit = phone(0.0, 600.0, 30.0, mac=1, sig=5) + phone(1000.0, 1600.0, 30.0, mac=1, sig=5, seq=300)
    glimpse = phone(500.0, 560.0, 30.0, mac=7, sig=6)  # 60 s heard: shorter than D = 120 s
    result = estimate(visit + glimpse, now=1700.0)
    assert result.entries == 1.0
    assert estimate(visit + glimpse, now=1190.0).count == 1.0


def test_an_address_a_look_alike_could_have_continued_is_no_entry() -> None:
    """Two phones of one model drop their MACs at once; (30) joins one pair, the other new MAC is no arrival."""
    a = phone(0.0, 300.0, 30.0, mac=1, sig=5, seq=100) + phone(330.0, 900.0, 30.0, mac=2, sig=5, seq=130)
    b = phone(1.0, 301.0, 30.0, mac=10, sig=5, seq=110) + phone(331.0, 901.0, 30.0, mac=11, sig=5, seq=140)
    newcomer = phone(335.0, 900.0, 30.0, mac=20, sig=5, seq=3000)
    rows = a + b + newcomer
    t, mac, sig, seq, rnd, z, _ = (list(column) for column in zip(*rows, strict=True))
    flagged = {m for m, hit in zip(mac, continues(t, mac, sig, seq, z, rnd), strict=True) if hit}
    assert flagged == {2, 11}
    # Three people, of whom three arrived in the last hour: the continuing addresses add none.
    result = estimate(rows, now=1000.0)
    assert (result.count, result.entries) == (0.0, 3.0)
    assert estimate(rows, now=660.0, config=LEAD).count == 3.0
