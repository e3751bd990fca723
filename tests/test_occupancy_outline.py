"""Outside by geometry, eq. (41): a stay heard by two or more receivers is placed against the store's outline."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import load_site
from agent.observations import Observation
from agent.replayfile import read_records
from agent.site_arrays import occupancy_outline, site_arrays
from positioning.occupancy import EstimateConfig, Outline, classify_stays
from simulator.anonymous import CrowdConfig
from simulator.channel import CHANNELS
from simulator.run import PhoneConfig, SimConfig, simulate
from simulator.shoppers import MobilityConfig
from simulator.truth import Truth, read_truth

SITE = Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml"
OUTLINE = occupancy_outline(load_site(SITE), 8.0)


@settings(max_examples=60, deadline=None)
@given(point=st.integers(0, OUTLINE.predicted.shape[0] - 1), receivers=st.integers(3, 8),
       first=st.integers(0, 7))
def test_a_stay_heard_as_the_model_says_is_placed_where_it_was(point: int, receivers: int, first: int) -> None:
    """Medians that are model (1)'s power at a grid point, at three or more receivers, place the stay there."""
    rows = (first + np.arange(receivers)) % OUTLINE.weight.size
    rows = np.unique(rows)
    if rows.size < 3 or {int(r) for r in rows} <= {0, 1}:  # pi-ble and pi-wifi share a spot
        return
    median = OUTLINE.predicted[point, rows]
    placed = OUTLINE.place(np.zeros(rows.size, dtype=np.intp), rows.astype(np.intp), median, 1)
    assert np.allclose(OUTLINE.predicted[placed[0], rows], median, atol=1e-6)
    assert OUTLINE.inside[placed[0]] == OUTLINE.inside[point]


def test_one_receiver_keeps_the_power_threshold_and_a_foreign_receiver_is_refused() -> None:
    placed = OUTLINE.place(np.array([0, 1, 1], dtype=np.intp), np.array([2, 2, 3], dtype=np.intp),
                           np.array([-60.0, -70.0, -72.0]), 2)
    assert placed[0] == -1
    assert placed[1] >= 0
    with pytest.raises(ValueError, match="receiver code outside"):
        OUTLINE.place(np.array([0, 0], dtype=np.intp), np.array([0, 99], dtype=np.intp), np.array([-60.0, -60.0]), 1)
    with pytest.raises(ValueError, match="cell must be positive"):
        Outline.of([[0.0, 0.0, 2.0]], -59.0, 2.0, 4.0, [[0, 0], [1, 0], [1, 1]], cell_m=0.0)


@pytest.mark.slow
def test_passers_by_go_outside_and_shoppers_inside_on_a_short_simulation(tmp_path: Path) -> None:
    """BLE adverts of a short seeded day, one row per address, receiver and 10 s: the stays eq. (41) places."""
    site = load_site(SITE)
    config = SimConfig(shoppers=40, minutes=20, seed=11, channel=CHANNELS["store"], phones=PhoneConfig(app_share=0.5),
                       mobility=MobilityConfig(dwell_s=(30.0, 240.0)),
                       crowd=CrowdConfig(anon_ble_share=1.0, passers=120, passer_probe_share=0.0, fixtures=0))
    simulate(site, config, tmp_path)
    truth: Truth = read_truth(tmp_path / "truth.jsonl")
    observations, _ = read_records(tmp_path / "observations.jsonl", Observation)
    code = site_arrays(site).receiver_row
    seen: set[tuple[str, str, int]] = set()
    rows = []
    for o in observations:
        bucket = (o.emitter_id, o.receiver_id, int(o.ts // 10.0))
        if o.tech == "ble" and bucket not in seen:
            seen.add(bucket)
            rows.append((o.ts, o.emitter_id, o.rssi_dbm, code[o.receiver_id], truth.emitters[o.emitter_id].shopper_id))
    t = np.array([r[0] for r in rows])
    keys = {e: k for k, e in enumerate(sorted({r[1] for r in rows}))}
    mac = np.array([keys[r[1]] for r in rows])
    owner = np.array([r[4] for r in rows])
    none = np.full(t.size, -1)
    verdict = classify_stays(t, mac, none, none, np.ones(t.size, bool), [r[2] for r in rows], [r[3] for r in rows],
                             float(t.max()), config=replace(EstimateConfig(), outline=OUTLINE))
    stay_owner = np.empty(verdict.found.device.size, dtype=object)
    stay_owner[verdict.found.of_probe] = owner[verdict.rows]
    passer = np.array([o.startswith("P-") for o in stay_owner])
    placed = verdict.placed >= 0
    assert placed[passer].sum() >= 20
    assert placed[~passer].sum() >= 20
    geometry = (verdict.inside[placed & passer].mean(), verdict.inside[placed & ~passer].mean())
    assert geometry[0] <= 0.05, geometry
    assert geometry[1] >= 0.6, geometry
    # Against the power threshold on the same stays: no threshold that lets as few passers in keeps more shoppers.
    for theta in np.arange(-90.0, -64.0, 1.0):
        by_power = classify_stays(t, mac, none, none, np.ones(t.size, bool), [r[2] for r in rows],
                                  [r[3] for r in rows], float(t.max()), config=replace(EstimateConfig(),
                                                                                        min_rssi_dbm=theta))
        passers, shoppers = by_power.inside[placed & passer].mean(), by_power.inside[placed & ~passer].mean()
        assert passers > geometry[0] or shoppers <= geometry[1], (theta, passers, shoppers, geometry)
