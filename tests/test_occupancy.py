"""The counting stage: grouping probes into devices, dwell, fixtures, counts and the people fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import benchmarks.real_data as real_data
from agent.privacy import Pseudonymizer
from positioning.occupancy import (
    LinkConfig,
    entries,
    expected_count,
    fit_occupancy,
    fixtures,
    group_devices,
    mean_count,
    people_stays,
    predict_occupancy,
    silences,
    stays,
    still_inside,
)

Probe = tuple[float, int, int, int, float, bool]
"""t, MAC key, signature key, sequence number, RSSI, randomised."""


DEFAULT = LinkConfig()


def grouped(probes: list[Probe], config: LinkConfig = DEFAULT) -> list[int]:
    t, mac, sig, seq, z, rnd = (list(column) for column in zip(*probes, strict=True))
    return [int(v) for v in group_devices(t, mac, sig, seq, z, rnd, config)]


def burst(t: float, mac: int, sig: int, seq: int, z: float = -60.0, n: int = 3, rnd: bool = True) -> list[Probe]:
    """n probes 20 ms apart, sequence numbers running on (mod 4096)."""
    return [(t + 0.02 * i, mac, sig, (seq + i) % 4096, z, rnd) for i in range(n)]


def test_a_phone_that_draws_a_new_mac_stays_one_device() -> None:
    probes = burst(0.0, mac=1, sig=7, seq=100) + burst(30.0, mac=2, sig=7, seq=103) + burst(70.0, mac=3, sig=7, seq=106)
    assert grouped(probes) == [0] * 9


@pytest.mark.parametrize(("second", "why"), [
    (burst(30.0, mac=2, sig=8, seq=103), "another model"),
    (burst(30.0, mac=2, sig=7, seq=2103), "sequence far off"),
    (burst(130.0, mac=2, sig=7, seq=103), "silent longer than g"),
    (burst(30.0, mac=2, sig=7, seq=103, z=-85.0), "power jumped"),
    (burst(30.0, mac=2, sig=7, seq=103, rnd=False), "a global MAC"),
    (burst(1.0, mac=2, sig=7, seq=1102), "sequence too far for the time (64 + 4/s * 0.96 s < 1000)"),
])
def test_links_need_every_condition_of_eq_30(second: list[Probe], why: str) -> None:
    first = burst(0.0, mac=1, sig=7, seq=100)
    assert grouped(first + second) == [0, 0, 0, 1, 1, 1], why


def test_sequence_wraps_around() -> None:
    assert grouped(burst(0.0, 1, 7, 4094) + burst(20.0, 2, 7, 1)) == [0] * 6


def test_one_successor_each_the_closest_in_sequence() -> None:
    a = burst(0.0, mac=1, sig=7, seq=100, z=-60.0)
    near = burst(20.0, mac=2, sig=7, seq=104, z=-55.0)
    far = burst(21.0, mac=3, sig=7, seq=110, z=-75.0)  # A's candidate too, but 20 dB off the near one
    assert grouped(a + near + far) == [0, 0, 0, 0, 0, 0, 1, 1, 1]


def test_a_mac_is_one_device_whatever_its_probes_say() -> None:
    probes = [(0.0, 5, 1, 10, -60.0, True), (500.0, 5, 2, 3000, -90.0, True), (9000.0, 5, 3, -1, -40.0, True)]
    assert grouped(probes) == [0, 0, 0]


def test_unknown_sequence_numbers_never_link() -> None:
    probes = [(0.0, 1, 7, -1, -60.0, True), (10.0, 2, 7, -1, -60.0, True)]
    assert grouped(probes) == [0, 1]


def test_mismatched_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        group_devices([0.0, 1.0], [1], [1], [1], [1.0], [True])
    assert group_devices([], [], [], [], [], []).size == 0


@st.composite
def phone(draw: st.DrawFn, sig: int, mac_base: int) -> list[Probe]:
    """One phone: bursts over ten minutes, a new randomised MAC every few bursts, sequence running on."""
    probes: list[Probe] = []
    t = draw(st.floats(0.0, 60.0))
    seq = draw(st.integers(0, 4095))
    z = draw(st.floats(-80.0, -50.0))
    mac = mac_base
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            mac += 1
        size = draw(st.integers(1, 4))
        probes += burst(t, mac, sig, seq, z + draw(st.floats(-5.0, 5.0)), n=size)
        seq = (seq + size + draw(st.integers(0, 40))) % 4096
        t += draw(st.floats(5.0, 90.0))
    return probes


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.data())
def test_two_phones_whose_keys_differ_never_merge(data: st.DataObject) -> None:
    a = data.draw(phone(sig=1, mac_base=0))
    b = data.draw(phone(sig=2, mac_base=1000))
    labels = grouped(a + b)
    assert not set(labels[: len(a)]) & set(labels[len(a):])


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.data())
def test_grouping_does_not_depend_on_arrival_order(data: st.DataObject) -> None:
    probes = [p for k in range(data.draw(st.integers(1, 4)))
              for p in data.draw(phone(sig=data.draw(st.integers(0, 1)), mac_base=1000 * k))]
    permutation = data.draw(st.permutations(range(len(probes))))
    labels = np.array(grouped(probes))
    shuffled = np.array(grouped([probes[i] for i in permutation]))
    assert np.array_equal(shuffled, labels[list(permutation)])


@settings(max_examples=100, derandomize=True, deadline=None)
@given(st.data())
def test_a_phone_alone_is_one_device(data: st.DataObject) -> None:
    probes = data.draw(phone(sig=3, mac_base=0))
    # Bursts at most 90 s apart, sequence gaps at most 44 + burst: within the default g, q0 and dz.
    assert set(grouped(probes)) == {0}


def test_stays_bridge_short_silences_and_hold_after_the_last_probe() -> None:
    found = stays([0.0, 100.0, 1000.0, 5.0, 50.0], [0, 0, 0, 1, 1], [-60.0, -70.0, -50.0, -40.0, -44.0],
                  gap_s=600.0, hold_s=60.0)
    assert found.device.tolist() == [0, 0, 1]
    assert found.start.tolist() == [0.0, 1000.0, 5.0]
    assert found.end.tolist() == [160.0, 1060.0, 110.0]
    assert found.rssi_dbm.tolist() == [-65.0, -50.0, -42.0]
    assert found.probes.tolist() == [2, 1, 2]
    with pytest.raises(ValueError, match="dwell gap"):
        stays([0.0], [0], [-60.0], gap_s=0.0, hold_s=0.0)


def test_fixtures_are_devices_present_for_hours_and_people_stays_leave_them_and_the_street_out() -> None:
    t = np.r_[np.arange(0.0, 3 * 3600.0, 300.0), 100.0, 400.0, 200.0]
    device = np.r_[np.zeros(36, dtype=int), 1, 1, 2]
    z = np.r_[np.full(36, -50.0), -60.0, -62.0, -90.0]
    found = stays(t, device, z, gap_s=600.0, hold_s=60.0)
    fixed = fixtures(found, 2 * 3600.0)
    assert fixed.tolist() == [0]
    assert people_stays(found, fixed, min_rssi_dbm=-75.0).tolist() == [False, True, False]


def test_mean_count_exact() -> None:
    got = mean_count([0.0, 50.0, 250.0], [150.0, 400.0, 260.0], [0.0, 100.0, 200.0, 300.0])
    # window 0: 100 + 50 = 150 s; window 1: 50 + 100 = 150 s; window 2: 100 + 10 = 110 s
    assert got.tolist() == [1.5, 1.5, 1.1]
    with pytest.raises(ValueError, match="strictly increasing"):
        mean_count([0.0], [1.0], [0.0, 0.0])


@settings(max_examples=100, derandomize=True)
@given(st.lists(st.tuples(st.floats(-50.0, 1000.0), st.floats(0.0, 300.0)), max_size=30),
       st.lists(st.floats(1.0, 200.0), min_size=1, max_size=8))
def test_mean_count_equals_the_overlaps(intervals: list[tuple[float, float]], widths: list[float]) -> None:
    start = np.array([a for a, _ in intervals])
    end = start + np.array([w for _, w in intervals])
    edges = np.r_[0.0, np.cumsum(widths)]
    overlap = np.clip(np.minimum(end[:, None], edges[None, 1:]) - np.maximum(start[:, None], edges[None, :-1]), 0.0, None)
    expected = overlap.sum(axis=0) / np.diff(edges) if start.size else np.zeros(len(widths))
    assert np.allclose(mean_count(start, end, edges), expected, atol=1e-9)


def test_entries_are_kept_stays_long_enough_to_be_visits() -> None:
    found = stays([5.0, 400.0, 99.0, 100.0, 150.0, 350.0], [0, 0, 1, 2, 3, 4], [-60.0] * 6, gap_s=600.0, hold_s=60.0)
    # stays: device 0 [5, 460], 1 [99, 159], 2 [100, 160], 3 [150, 210], 4 [350, 410]
    assert entries(found, [True] * 5, [0.0, 100.0, 200.0], min_stay_s=0.0).tolist() == [2.0, 2.0]
    assert entries(found, [True, True, False, True, True], [0.0, 100.0, 200.0], min_stay_s=0.0).tolist() == [2.0, 1.0]
    assert entries(found, [True] * 5, [0.0, 100.0, 200.0], min_stay_s=120.0).tolist() == [1.0, 0.0]


def test_silences_and_the_chance_of_still_being_inside() -> None:
    assert silences([100.0, 0.0, 5.0], [0, 0, 1]).tolist() == [np.inf, 100.0, np.inf]
    # past silences 100 s (the device came back) and 1000 s (it had left): eq. (36) with G = 600, h = 60
    got = still_inside([100.0, 1000.0], gap_s=600.0, hold_s=60.0, tau=[0.0, 59.0, 60.0, 99.0, 100.0, 700.0])
    assert got.tolist() == [1.0, 1.0, 0.5, 0.5, 0.0, 0.0]


def test_expected_count_exact() -> None:
    # Each probe: S is 1 for 60 s and 0.5 for the next 40 s, then 0 (no past silence ended later) -> 80 s.
    got = expected_count([0.0, 100.0], [0, 0], [0.0, 1000.0], past=[100.0, 1000.0], gap_s=600.0, hold_s=60.0)
    assert got.tolist() == [pytest.approx(0.16)]


@settings(max_examples=100, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 3)), min_size=1, max_size=40),
       st.integers(1, 60))
def test_expected_count_without_history_is_the_causal_hold(probes: list[tuple[int, int]], gap_steps: int) -> None:
    """With no past silences S is 1 up to h; with h = G that is (31)-(33) holding every device for G."""
    t = np.array([10.0 * k for k, _ in probes])
    device = np.array([d for _, d in probes])
    gap = 10.0 * gap_steps
    edges = np.arange(0.0, 10.0 * 300 + gap + 100.0, 100.0)
    found = stays(t, device, np.zeros(t.size), gap_s=gap, hold_s=gap)
    held = mean_count(found.start, found.end, edges)
    assert np.allclose(expected_count(t, device, edges, past=[], gap_s=gap, hold_s=gap), held, atol=1e-9)


def test_the_fit_recovers_a_line_and_its_spread() -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    fit = fit_occupancy(x, 2.0 * x + 1.0)
    assert (round(fit.alpha, 12), round(fit.beta, 12), round(fit.s, 12)) == (2.0, 1.0, 0.0)
    noisy = fit_occupancy(x, 2.0 * x + 1.0 + np.array([1.0, -1.0, 0.0, 1.0, -1.0]))
    mean, sigma = predict_occupancy(noisy, [2.0, -10.0])
    # eq. (35) at the mean of x: s sqrt(1 + 1/n); s² = |r|² / (n - 2) from the residuals of the fit
    residual = 2.0 * x + 1.0 + np.array([1.0, -1.0, 0.0, 1.0, -1.0]) - (noisy.alpha * x + noisy.beta)
    s = np.sqrt(residual @ residual / 3.0)
    assert sigma[0] == pytest.approx(s * np.sqrt(1.0 + 1.0 / 5.0))
    assert mean[1] == 0.0  # never fewer than nobody
    assert sigma[1] > sigma[0]
    with pytest.raises(ValueError, match="do not vary"):
        fit_occupancy([3.0, 3.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least three"):
        fit_occupancy([1.0, 2.0], [1.0, 2.0])


def test_the_lab_pcs_are_found_by_their_presence_alone(shared_data: Path) -> None:
    """On the real day, fixtures (32) over the whole capture include every lab PC heard, and few others."""
    pseudonymizer = Pseudonymizer(real_data.FRYZA_SECRET, "fryza", 86_400.0)
    root = shared_data / "fryza-wifi-probe-requests"
    p = real_data.fryza_probes(root, pseudonymizer)
    device = group_devices(p["t"], p["mac"], p["sig"], p["seq"], p["rssi"], p["randomised"])
    fixed = fixtures(stays(p["t"], device, p["rssi"], 600.0, 60.0), 2 * 3600.0)
    edges = np.array([p["t"].min(), p["t"].max() + 1.0])
    _, pcs, _ = real_data.fryza_truth(root, p["t"], p["idx"], edges)
    pc_keys = {pseudonymizer.pseudonym("wifi", pc, float(p["t"][0])) for pc in pcs} & set(p["mac_key"])
    flagged = set(p["mac_key"][np.isin(device, fixed)])
    assert len(pc_keys) == 11
    assert pc_keys <= flagged
    assert len(fixed) <= 2 * len(pc_keys)
