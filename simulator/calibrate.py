"""Receiver calibration from a technician's walk: known positions in, path-loss models out.

A technician carries a phone (or tag) along a route whose positions are
known (a survey, a camera system, or a simulated walk); every reading of it
then gives one (slant distance, RSSI) pair per receiver, and
``positioning.pathloss.fit_calibration`` fits that receiver's ``rssi_at_1m``,
``path_loss_exponent`` and noise robustly. The site config is rewritten in
place of its old values, keeping the technician's comments and layout, and
validated before it is written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from agent.config import SiteConfig, parse_site
from agent.fingerprint_file import StoredFingerprint, write_fingerprint
from agent.observations import Observation
from agent.radiomap_file import StoredRadioMap, write_radio_map
from agent.site_arrays import grid_filter, site_arrays
from agent.siteedit import drop_tracking_key, fitted_values, set_receiver_values, set_tracking_key
from positioning.ekf import BODY_WALK_SPEED, body_loss
from positioning.fingerprint import fit_fingerprint
from positioning.gridfilter import GRID_MOTION_M, GRID_OFFSET_SIGMA_DB
from positioning.pathloss import (
    MIN_DISTANCE_SPAN,
    Calibration,
    Receivers,
    fit_body_loss,
    fit_calibration,
    rssi_at_distance,
)
from positioning.radiomap import (
    DEFAULT_BANDWIDTH_M,
    DEFAULT_PRIOR_READINGS,
    FieldCovariance,
    RadioMap,
    fit_field_covariance,
    fit_radio_map,
    krige_radio_map,
)
from positioning.sectors import WALK_TEST_HOLD_S, WALK_TEST_M
from positioning.tracker import Tracker, TrackerConfig
from simulator.store import Store
from simulator.truth import EmitterTruth, PositionTruth, RunTruth, ShopperTruth, Truth

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]
MapFitter = Callable[[IndexArray, FloatArray, FloatArray], RadioMap]
"""A radio map from walk readings: receiver (N,), known position (N, 2), residual (N,) dB."""

MIN_SAMPLES = 30
"""Fewer readings than this leave a receiver's old values alone."""


MAP_MIN_GAIN = 0.05
"""A radio map is kept only if it tracks held-out walk segments with a median error this much lower than
the plain models (see `judge_radio_map`). Where shadowing is independent per packet a map learns noise and
costs; the held-out squared-error ratio alone also passed maps that made sectors worse
(benchmarks/README.md, "Tuning evidence")."""

MAP_SECTOR_SLACK = 0.01
"""A map may cost this share of held-out windows in the right sector (one window in a hundred) and still be kept.

Strictly no loss dropped maps on a real lab that lowered the held-out error for a single window on the wrong
side of a border; a map that really costs sectors is far beyond it (benchmarks/README.md, "Tuning evidence")."""

MAP_BLOCK_S = 10.0
"""The walk is cut into blocks this long, alternately held out, so no reading is scored by its own neighbours."""

LOCATE_BLOCK_S = 30.0
"""For the check on positions and sectors, blocks this long, each tracked from a fresh track."""

LOCATE_SETTLE_S = 5.0
"""Windows this close to the start of a held-out block are not scored: a fresh track is still converging."""


HEADING_SPAN_S = 0.5
"""The walker's velocity at a reading is their displacement from this long before to this long after it, over twice
this: the heading that eq. (48) needs, without the jitter of consecutive positions."""

MAX_WALKER_BODY_DB = 20.0
"""The largest body loss eq. (48) may report: a human body takes 5-10 dB at 2.4 GHz; beyond this the walk is wrong."""


class WalkSamples(NamedTuple):
    """One receiver's readings of the walk: slant distance (N,) m, rssi (N,) dBm, known position xy (N, 2) m, ts (N,) s,
    and how far the receiver was behind the walker, eq. (20)'s factor b (N,) in [0, 1] (0 while they stood)."""

    distance: FloatArray
    rssi: FloatArray
    xy: FloatArray
    ts: FloatArray
    behind: FloatArray


@dataclass(frozen=True)
class ReceiverFit:
    """A receiver's fit, or why it was left as it was (calibration None, reason set)."""

    receiver_id: str
    samples: int
    calibration: Calibration | None
    reason: str | None = None


def behind_walker(when: FloatArray, at: Callable[[FloatArray], FloatArray], receiver_xy: FloatArray) -> FloatArray:
    """Eq. (20)'s factor b (N,) of a receiver at receiver_xy (2,) for readings at times `when` (N,) of a walker whose
    known positions at any times are `at(times)` (N, 2): 1 straight behind them at walking pace, 0 ahead or standing."""
    xy = at(when)
    velocity = (at(when + HEADING_SPAN_S) - at(when - HEADING_SPAN_S)) / (2.0 * HEADING_SPAN_S)
    return body_loss(np.hstack([xy, velocity]), receiver_xy[None, :], 1.0, BODY_WALK_SPEED)


SURVEY_TAG = "survey-tag"
"""The emitter id a recorded survey walk gives its reference tag in the files it writes."""

SURVEY_WALKER = "walker"
"""The carrier of the tag in a recorded survey walk's truth."""


def survey_files(site: SiteConfig, site_path: str, marks: Sequence[tuple[float, float, float]],
                 readings: Iterable[Observation], height_m: float,
                 beacon: str) -> tuple[list[Observation], list[RunTruth | ShopperTruth | EmitterTruth | PositionTruth]]:
    """A technician's recorded walk as `calibrate fit` reads one: the tag's readings between the first and the last
    mark, named SURVEY_TAG, and a truth of one walker at each mark (ts, x, y), the tag at `height_m`, whose track
    interpolates the legs between them. ValueError if fewer than two marks or no reading falls between them."""
    if len(marks) < 2:
        raise ValueError("a survey needs the walker at two points at least")
    start, end = marks[0][0], marks[-1][0]
    kept = sorted((r.model_copy(update={"emitter_id": SURVEY_TAG}) for r in readings if start <= r.ts <= end),
                  key=lambda r: r.ts)
    if not kept:
        raise ValueError("the tag was not heard between the first and the last point")
    truth: list[RunTruth | ShopperTruth | EmitterTruth | PositionTruth] = [
        RunTruth(store_id=site.store.id, site=site_path, start_ts=start, end_ts=end, shoppers=1,
                 emitter_height_m=height_m, sigma_db=float(np.median([r.noise_sigma_db for r in site.receivers])),
                 settings={"survey": "recorded", "tag": beacon}),
        ShopperTruth(shopper_id=SURVEY_WALKER, enter_ts=start, leave_ts=end, has_app=False),
        EmitterTruth(emitter_id=SURVEY_TAG, tech="ble", raw_id=beacon, shopper_id=SURVEY_WALKER,
                     first_ts=kept[0].ts, last_ts=kept[-1].ts),
        *(PositionTruth(ts=ts, shopper_id=SURVEY_WALKER, x=x, y=y, z=height_m) for ts, x, y in marks),
    ]
    return kept, truth


def calibration_samples(
    site: SiteConfig, observations: Iterable[Observation], truth: Truth
) -> dict[str, WalkSamples]:
    """Readings, with distance and position, per receiver, of emitters whose carrier's track is known.

    Readings outside the track's time span are not used: positions are only
    interpolated, never extrapolated.
    """
    rows = {r.id: r for r in site.receivers}
    by_emitter: dict[str, tuple[list[float], list[str], list[float]]] = {}
    for obs in observations:
        if obs.receiver_id in rows:
            ts, rx, rssi = by_emitter.setdefault(obs.emitter_id, ([], [], []))
            ts.append(obs.ts)
            rx.append(obs.receiver_id)
            rssi.append(obs.rssi_dbm)
    default_z = truth.run.emitter_height_m if truth.run else site.tracking.emitter_height_m
    parts: dict[str, list[tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]]] = {r: [] for r in rows}
    for emitter, (ts_list, rx_list, rssi_list) in by_emitter.items():
        shopper = truth.shopper_of(emitter)
        if shopper is None or shopper not in truth.tracks:
            continue
        track = truth.tracks[shopper]
        when = np.array(ts_list)
        inside = (when >= track.ts[0]) & (when <= track.ts[-1])
        xy = track.at(when)
        z = np.interp(when, track.ts, np.where(np.isnan(track.z), default_z, track.z))
        heard_by = np.array(rx_list)
        level = np.array(rssi_list)
        for receiver_id, receiver in rows.items():
            mine = inside & (heard_by == receiver_id)
            if not mine.any():
                continue
            # Slant distance with each reading's own carrier height.
            d = np.sqrt((xy[mine, 0] - receiver.x) ** 2 + (xy[mine, 1] - receiver.y) ** 2 + (z[mine] - receiver.z) ** 2)
            behind = behind_walker(when[mine], track.at, np.array([receiver.x, receiver.y]))
            parts[receiver_id].append((d, level[mine], xy[mine], when[mine], behind))
    return {
        r: WalkSamples(*(np.concatenate(column) for column in zip(*found, strict=True))) if found
        else WalkSamples(np.empty(0), np.empty(0), np.empty((0, 2)), np.empty(0), np.empty(0))
        for r, found in parts.items()
    }


def without_body(samples: dict[str, WalkSamples], *, keep_mean: bool = True) -> tuple[dict[str, WalkSamples], float]:
    """The walk's readings with the walker's body taken out where it depends on the way they walked, and its loss B.

    B is eq. (48)'s, clipped to [0, MAX_WALKER_BODY_DB] (a walk whose
    readings rise behind the walker has told nothing about a body). Each
    reading gets back B (b_j - mean b of its receiver): what the receiver
    loses on average to a body stays, since shoppers carry one too, facing
    every way, and the tracker's models were made for that level; what
    follows the direction of each pass goes, which the radio map would
    otherwise paint as stripes of several dB between neighbouring passes
    (benchmarks/README.md, 2026-12-05, "What the walk knows").

    keep_mean False takes all of it out, B b_j: the receivers come out as
    they read an unobstructed phone, for a tracker that expects a body of
    B itself on every shopper, facing any way (the grid filter's (44)).
    """
    found = {r: s for r, s in samples.items() if s.rssi.size}
    if not found:
        return samples, 0.0
    labels = np.concatenate([np.full(s.rssi.size, k) for k, s in enumerate(found.values())])
    loss = fit_body_loss(labels, *(np.concatenate([getattr(s, name) for s in found.values()])
                                   for name in ("distance", "rssi", "behind")))
    loss = min(max(loss, 0.0), MAX_WALKER_BODY_DB)
    return {r: s._replace(rssi=s.rssi + loss * (s.behind - (s.behind.mean() if keep_mean else 0.0)))
            if s.rssi.size else s for r, s in samples.items()}, loss


def fit_receivers(
    site: SiteConfig, samples: dict[str, WalkSamples], *, min_samples: int = MIN_SAMPLES
) -> list[ReceiverFit]:
    """Fit every receiver with enough well-spread readings; others keep their values, with the reason."""
    fits: list[ReceiverFit] = []
    for receiver in site.receivers:
        found = samples.get(receiver.id)
        d, z = (found.distance, found.rssi) if found is not None else (np.empty(0), np.empty(0))
        if d.size < min_samples:
            fits.append(ReceiverFit(receiver.id, int(d.size), None, f"only {d.size} readings (need {min_samples})"))
            continue
        near, far = np.percentile(d, [5, 95])
        if far < MIN_DISTANCE_SPAN * max(near, 0.1):
            fits.append(ReceiverFit(receiver.id, int(d.size), None,
                                    f"walk covered {near:.1f}-{far:.1f} m only; walk nearer and farther"))
            continue
        try:
            cal = fit_calibration(d, z)
        except ValueError as exc:
            fits.append(ReceiverFit(receiver.id, int(d.size), None, str(exc)))
            continue
        if not (-110.0 <= cal.rssi_at_1m <= 10.0 and 1.0 <= cal.path_loss_exponent <= 6.0):
            fits.append(ReceiverFit(
                receiver.id, int(d.size), None,
                f"fit out of range (rssi_at_1m {cal.rssi_at_1m:.1f}, exponent {cal.path_loss_exponent:.2f})"))
            continue
        fits.append(ReceiverFit(receiver.id, int(d.size), cal))
    return fits


class WalkResiduals(NamedTuple):
    """The walk's readings against the new models: receiver row (N,), xy (N, 2), residual (N,) dB, ts (N,) s,
    and the readings themselves, rssi (N,) dBm."""

    receiver: IndexArray
    xy: FloatArray
    residual: FloatArray
    ts: FloatArray
    rssi: FloatArray


def walk_residuals(site: SiteConfig, samples: dict[str, WalkSamples], fits: list[ReceiverFit]) -> WalkResiduals:
    """Residuals against each receiver's model as the new config will hold it.

    That is the fit, rounded as written, or the old values where none was
    fitted, so a map of them corrects exactly the model the tracker will run.
    """
    fitted = {f.receiver_id: fitted_values(f.calibration) for f in fits if f.calibration is not None}
    parts: list[tuple[IndexArray, FloatArray, FloatArray, FloatArray, FloatArray]] = []
    for row, receiver in enumerate(site.receivers):
        found = samples.get(receiver.id)
        if found is None or not found.rssi.size:
            continue
        values = fitted.get(receiver.id, {"rssi_at_1m": receiver.rssi_at_1m,
                                          "path_loss_exponent": receiver.path_loss_exponent})
        model = rssi_at_distance(found.distance, values["rssi_at_1m"], values["path_loss_exponent"])
        parts.append((np.full(found.rssi.size, row, dtype=np.intp), found.xy, found.rssi - model, found.ts, found.rssi))
    if not parts:
        return WalkResiduals(np.empty(0, np.intp), np.empty((0, 2)), np.empty(0), np.empty(0), np.empty(0))
    return WalkResiduals(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def _outline_bbox(site: SiteConfig) -> FloatArray:
    outline = np.asarray(site.store.outline, dtype=np.float64)
    return np.stack([outline.min(axis=0), outline.max(axis=0)])


def walk_radio_map(
    site: SiteConfig,
    samples: dict[str, WalkSamples],
    fits: list[ReceiverFit],
    *,
    bandwidth_m: float = DEFAULT_BANDWIDTH_M,
    prior_readings: float = DEFAULT_PRIOR_READINGS,
) -> StoredRadioMap:
    """Eq. (15) of ``positioning.radiomap`` from the whole walk, over the store's outline."""
    return _stored_map(site, walk_residuals(site, samples, fits), _kernel_fitter(site, bandwidth_m, prior_readings),
                       bandwidth_m, prior_readings)


def walk_fingerprint(site: SiteConfig, samples: dict[str, WalkSamples]) -> StoredFingerprint | None:
    """Each sector's RSSI signature from the walk, eq. (18) of ``positioning.fingerprint``; None if it heard nothing.

    The walk is cut into windows of ``tracking.window_s`` (what the tracker
    averages over); each window belongs to the sector of its mean known position.
    """
    parts = [(np.full(found.rssi.size, row, dtype=np.intp), found.xy, found.ts, found.rssi)
             for row, found in enumerate(samples.get(r.id) for r in site.receivers)
             if found is not None and found.rssi.size]
    if not parts:
        return None
    receiver, xy, ts, rssi = (np.concatenate(column) for column in zip(*parts, strict=True))
    slot = np.floor((ts - ts.min()) / site.tracking.window_s).astype(np.intp)
    _, window_index = np.unique(slot, return_inverse=True)
    count = np.bincount(window_index)
    centre = np.stack([np.bincount(window_index, xy[:, j]) / count for j in (0, 1)], axis=-1)
    sector = Store.of(site).label(centre)
    fingerprint = fit_fingerprint(window_index, receiver, rssi, sector, len(site.sectors), len(site.receivers))
    return StoredFingerprint(tuple(s.id for s in site.sectors), tuple(r.id for r in site.receivers), fingerprint)


MAP_BANDWIDTHS_M = (1.0, 1.5, 2.0, 3.0)
"""Smoothing distances `judge_radio_map` tries when none is given; it keeps the best on held-out segments."""

MAP_METHODS = ("kernel", "kriged")
"""How a radio map is fitted: "kernel", eq. (15) at a smoothing distance (the default: gentle gradients that the
tracker's linearised update can follow); "kriged", eq. (50) with the covariance the walk's own semivariogram gives
(eq. (49)): the truest map, and the steepest, for a tracker that weighs the whole store at once."""


@dataclass(frozen=True)
class GridCalibration:
    """A calibration for the grid filter (eqs. (51)-(57)): its walk per sqrt(s), m, the body every shopper is
    expected to carry, dB (the walker's, eq. (48)), the spread of phones' offsets it estimates, dB (the site's,
    or GRID_OFFSET_SIGMA_DB where the site estimates none: `for_site`), and the sector filter's walk test (26) and
    hold, m and s (the site's, or WALK_TEST_M and WALK_TEST_HOLD_S where it has no walk test). The map's held-out
    checks then track with the grid filter, weighing readings by the kriged map's nugget.

    The walk test is off in an uncalibrated site, where it costs the log-normal channel's creeping entries more
    than it saves; behind the grid filter it is what decides a calibrated store's entries in time and in full
    (benchmarks/README.md, 2026-12-06, night, "The grid filter on a block").
    """

    motion_m: float
    body_db: float
    offset_sigma_db: float
    walk_m: float = WALK_TEST_M
    hold_s: float = WALK_TEST_HOLD_S

    @classmethod
    def for_site(cls, site: SiteConfig, body_db: float) -> GridCalibration:
        """The calibration `calibrate fit` makes for `site`'s grid filter, given the walker's body."""
        walk = site.tracking.sector_walk_m
        return cls(GRID_MOTION_M, body_db, site.tracking.phone_offset_db or GRID_OFFSET_SIGMA_DB,
                   *((walk, site.tracking.hysteresis_s) if walk > 0.0 else (WALK_TEST_M, WALK_TEST_HOLD_S)))

    def config(self, site: SiteConfig, covariance: FieldCovariance | None) -> TrackerConfig:
        """The held-out check's tracker: the site's, with the grid on (reading spread the nugget, if a map has one)."""
        return TrackerConfig(emitter_z=site.tracking.emitter_height_m, offset_sigma_db=self.offset_sigma_db,
                             body_loss_db=self.body_db, body_hold_s=site.tracking.body_hold_s,
                             grid_motion_m=self.motion_m,
                             grid_sigma_db=0.0 if covariance is None else math.sqrt(covariance.nugget_db2))


def grid_settings(grid: GridCalibration | None, verdict: MapVerdict | None) -> dict[str, float | None]:
    """The [tracking] keys a calibration for the grid filter writes: the filter on, with the map's nugget, the
    walker's body, the phones' offsets it estimates and the sector filter's walk test, and the still grid off (the
    grid filter places every track), where its map was kept; off (the keys dropped) where it was not, since without
    the store's field the grid is worse than the filter alone (benchmarks/README.md, 2026-12-06). Nothing without
    `grid`."""
    if grid is None:
        return {}
    if verdict is None or verdict.stored is None or verdict.covariance is None:
        return {"grid_motion_m": None, "grid_sigma_db": None}
    return {"grid_motion_m": grid.motion_m, "grid_sigma_db": round(math.sqrt(verdict.covariance.nugget_db2), 2),
            "body_loss_db": round(grid.body_db, 2), "phone_offset_db": grid.offset_sigma_db,
            "sector_walk_m": grid.walk_m, "hysteresis_s": grid.hold_s, "still_grid_s": None}


@dataclass(frozen=True)
class MapVerdict:
    """What a radio map does on walk segments it was not fitted on, and whether it is kept.

    bandwidth_m: the smoothing distance judged (the best of those tried);
    NaN for a kriged map, which has none. method: one of MAP_METHODS.
    covariance: a kriged map's eq. (49), estimated from the whole walk (None
    for a kernel map, or if the walk is too short to estimate it). ratio: held-out squared residual with the map over without (below 1: it
    predicts readings). median_m and sectors: (without, with) median
    position error and share of windows in the right sector, tracking
    held-out segments of the walk. NaN where the walk is too short to hold
    half of it out.
    """

    stored: StoredRadioMap | None
    bandwidth_m: float
    ratio: float
    median_m: tuple[float, float]
    sectors: tuple[float, float]
    windows: int
    method: str = "kernel"
    covariance: FieldCovariance | None = None

    @property
    def better(self) -> bool:
        """The product's rule: median error down by MAP_MIN_GAIN or more, sectors not worse beyond MAP_SECTOR_SLACK."""
        return (self.median_m[1] <= (1.0 - MAP_MIN_GAIN) * self.median_m[0]
                and self.sectors[1] >= self.sectors[0] - MAP_SECTOR_SLACK)


def held_out(verdict: MapVerdict) -> tuple[float, float]:
    """(median error m, right-sector share) of the walk's held-out segments as the calibration leaves them: tracked
    with its map if the map was kept, with the fitted models alone if not."""
    if verdict.stored is not None:
        return verdict.median_m[1], verdict.sectors[1]
    return verdict.median_m[0], verdict.sectors[0]


def grid_is_better(plain: MapVerdict, grid: MapVerdict) -> bool:
    """Whether the calibration for the grid filter (`grid`) tracks the walk's held-out segments better than the
    plain one (`plain`), by the rule a map is kept by: median error down by MAP_MIN_GAIN or more, sectors not worse
    beyond MAP_SECTOR_SLACK.

    Neither tracker wins everywhere: where shelves and shoppers' bodies shape the field, the grid filter with its
    kriged map puts shoppers in the right sector far more often; in a bare room walked with the calibrated tag
    itself, the linearised filter is as good or better, for a quarter of the CPU. The walk's held-out segments
    tell the two apart (benchmarks/README.md has the figures). A grid calibration whose map was not kept leaves
    the grid off, so it cannot win; a walk too short to hold segments out (NaN figures) keeps the plain one.
    """
    if grid.stored is None:
        return False
    (plain_m, plain_s), (grid_m, grid_s) = held_out(plain), held_out(grid)
    return bool(grid_m <= (1.0 - MAP_MIN_GAIN) * plain_m and grid_s >= plain_s - MAP_SECTOR_SLACK)


def judge_radio_map(
    site: SiteConfig,
    samples: dict[str, WalkSamples],
    fits: list[ReceiverFit],
    *,
    method: str = "kernel",
    bandwidth_m: float | None = None,
    prior_readings: float = DEFAULT_PRIOR_READINGS,
    grid: GridCalibration | None = None,
) -> MapVerdict:
    """The walk's radio map, kept only if it improves what the product is for.

    The squared-error check alone kept maps that made sectors worse (a
    simulated store with 4 dB phones and 8 dB bodies: held-out x0.79, yet
    sector accuracy 71 -> 54 %): a map fits the receivers' residual fields,
    and a field that predicts readings a little better can still bend the
    tracker's gradient the wrong way. So the map is kept only if, tracking
    the walk's held-out segments with the new models, median position error
    falls by MAP_MIN_GAIN or more and the share of windows in the right
    sector does not fall (beyond MAP_SECTOR_SLACK). With no `bandwidth_m`, each of MAP_BANDWIDTHS_M is
    judged so and the finest of those within MAP_MIN_GAIN of the lowest
    held-out median error is kept: how smooth a map must be depends on the
    store (benchmarks/README.md).

    With `method` "kriged" there is one candidate, eq. (50) with the
    covariance (49) of the whole walk (a walk too short to estimate it gives
    a verdict of no windows), judged by the same checks and the same rule.
    A bandwidth does not apply to it (ValueError). With `grid`, the held-out
    segments are tracked by the grid filter that calibration turns on, the
    map's by one weighing readings by its nugget.
    """
    if method not in MAP_METHODS:
        raise ValueError(f"map method must be one of {', '.join(MAP_METHODS)}, got {method!r}")
    if method == "kriged" and bandwidth_m is not None:
        raise ValueError("a kriged map has no smoothing distance: bandwidth_m applies to kernel maps only")
    res = walk_residuals(site, samples, fits)
    if method == "kriged":
        try:
            covariance = fit_field_covariance(res.receiver, res.xy, res.residual, len(site.receivers))
        except ValueError:
            return MapVerdict(None, math.nan, math.nan, (math.nan, math.nan), (math.nan, math.nan), 0, method)
        fitter = _kriged_fitter(site, covariance)
        plain = _held_out_tracks(site, fits, res, None, None if grid is None else grid.config(site, None))
        kriged = _judged(site, fits, res, plain, fitter, math.nan, method, covariance,
                         None if grid is None else grid.config(site, covariance))
        if not kriged.better:
            return kriged
        # Described in the file by the kernel (15) that widens and shrinks a lone reading as (50) does.
        return replace(kriged, stored=_stored_map(site, res, fitter, covariance.length_m / math.sqrt(2.0),
                                                  covariance.nugget_db2 / max(covariance.signal_db2, 1e-12)))
    tracking = None if grid is None else grid.config(site, None)
    plain = _held_out_tracks(site, fits, res, None, tracking)
    verdicts = [_judged(site, fits, res, plain, _kernel_fitter(site, bw, prior_readings), bw, method, None, tracking)
                for bw in (MAP_BANDWIDTHS_M if bandwidth_m is None else (bandwidth_m,))]
    passing = [v for v in verdicts if v.better]
    if not passing:
        return min(verdicts, key=lambda v: v.median_m[1] if v.windows else math.inf)
    # The finest map within MAP_MIN_GAIN of the best: held-out medians a few cm apart are noise, and a
    # smoother map than needed blurs what the walk found (danis rectangle: 2 m chosen by 1.29 vs 1.29 m
    # held out, tracked at 1.64 m against 1.30 m with 1 m).
    best = min(v.median_m[1] for v in passing)
    chosen = min((v for v in passing if v.median_m[1] <= best / (1.0 - MAP_MIN_GAIN)), key=lambda v: v.bandwidth_m)
    return replace(chosen, stored=_stored_map(site, res, _kernel_fitter(site, chosen.bandwidth_m, prior_readings),
                                              chosen.bandwidth_m, prior_readings))


def _judged(site: SiteConfig, fits: list[ReceiverFit], res: WalkResiduals, plain: tuple[float, float, int] | None,
            fitter: MapFitter, bandwidth_m: float, method: str, covariance: FieldCovariance | None,
            tracking: TrackerConfig | None = None) -> MapVerdict:
    """One candidate map's verdict (not yet stored): its held-out checks against the plain models' `plain`."""
    ratio = _held_out_ratio(site, res, fitter)
    mapped = _held_out_tracks(site, fits, res, fitter, tracking)
    if plain is None or mapped is None:
        return MapVerdict(None, bandwidth_m, ratio, (math.nan, math.nan), (math.nan, math.nan), 0, method, covariance)
    return MapVerdict(None, bandwidth_m, ratio, (plain[0], mapped[0]), (plain[1], mapped[1]), plain[2], method,
                      covariance)


def _kernel_fitter(site: SiteConfig, bandwidth_m: float, prior_readings: float) -> MapFitter:
    """Eq. (15) over the store's outline."""
    bbox, receivers = _outline_bbox(site), len(site.receivers)
    return lambda ri, xy, e: fit_radio_map(ri, xy, e, receivers, bbox, bandwidth_m=bandwidth_m,
                                           prior_readings=prior_readings)


def _kriged_fitter(site: SiteConfig, covariance: FieldCovariance) -> MapFitter:
    """Eq. (50) over the store's outline, with one covariance whatever part of the walk it is given."""
    bbox, receivers = _outline_bbox(site), len(site.receivers)
    return lambda ri, xy, e: krige_radio_map(ri, xy, e, receivers, bbox, covariance=covariance)


def chosen_radio_map(
    site: SiteConfig, samples: dict[str, WalkSamples], fits: list[ReceiverFit], **options: Any
) -> tuple[StoredRadioMap | None, float]:
    """`judge_radio_map`'s map (or None) and its held-out squared-error ratio; options as it takes them."""
    verdict = judge_radio_map(site, samples, fits, **options)
    return verdict.stored, verdict.ratio


def _held_out_tracks(
    site: SiteConfig, fits: list[ReceiverFit], res: WalkResiduals, fitter: MapFitter | None,
    tracking: TrackerConfig | None = None,
) -> tuple[float, float, int] | None:
    """Track held-out blocks of the walk, with a map that `fitter` fits on the other blocks (None: no map).

    Blocks of LOCATE_BLOCK_S alternate between two folds; each block is
    tracked from a fresh track with the calibrated models, windows of
    ``tracking.window_s`` stamped at their centre, and scored after
    LOCATE_SETTLE_S against the walk's known position and its sector.
    Returns the median error, the share of windows in the right sector and
    the windows scored; None if the walk is too short. `tracking` replaces
    the site's tracker settings (with its grid filter, if it turns one on).
    """
    if not res.ts.size:
        return None
    window_s = site.tracking.window_s
    t0 = float(res.ts.min())
    block = np.floor((res.ts - t0) / LOCATE_BLOCK_S).astype(np.intp)
    fold = (block % 2).astype(bool)
    if fold.all() or not fold.any():
        return None
    slot = np.floor((res.ts - t0) / window_s).astype(np.intp)
    store = Store.of(site)
    fitted = {f.receiver_id: fitted_values(f.calibration) for f in fits if f.calibration is not None}
    models = [fitted.get(r.id, {"rssi_at_1m": r.rssi_at_1m, "path_loss_exponent": r.path_loss_exponent,
                                "noise_sigma_db": r.noise_sigma_db}) for r in site.receivers]
    bbox = _outline_bbox(site)
    errors, right = [], []
    config = tracking or TrackerConfig(emitter_z=site.tracking.emitter_height_m,
                                       offset_sigma_db=site.tracking.phone_offset_db,
                                       body_loss_db=site.tracking.body_loss_db, body_hold_s=site.tracking.body_hold_s)
    xyz = np.array([[r.x, r.y, r.z] for r in site.receivers])
    a, n, sigma = ([v[key] for v in models] for key in ("rssi_at_1m", "path_loss_exponent", "noise_sigma_db"))
    arrays = site_arrays(site) if config.grid_motion_m > 0.0 else None
    for held in (fold, ~fold):
        radio_map = None if fitter is None else fitter(res.receiver[~held], res.xy[~held], res.residual[~held])
        cells = None if arrays is None else grid_filter(arrays, config, Receivers.of(xyz, a, n, sigma, radio_map))
        tracker = Tracker(xyz, a, n, sigma, bbox, config, radio_map, grid_filter=cells)
        for w in np.unique(slot[held]):
            rows = held & (slot == w)
            b = int(block[rows][0])
            t = t0 + (w + 0.5) * window_s
            out = tracker.step(t, [f"block-{b}"] * int(rows.sum()), res.receiver[rows], res.rssi[rows])
            if t - (t0 + b * LOCATE_BLOCK_S) >= LOCATE_SETTLE_S:
                true = res.xy[rows].mean(axis=0)
                errors.append(float(np.hypot(*(out.xy[0] - true))))
                right.append(bool(store.label(out.xy[:1])[0] == store.label(true[None])[0]))
    if not errors:
        return None
    return float(np.median(errors)), float(np.mean(right)), len(errors)


def _stored_map(site: SiteConfig, res: WalkResiduals, fitter: MapFitter, bandwidth_m: float,
                prior_readings: float) -> StoredRadioMap:
    """The map `fitter` fits on the whole walk, as written; bandwidth_m and prior_readings describe it in the file."""
    radio_map = fitter(res.receiver, res.xy, res.residual)
    counts = np.bincount(res.receiver, minlength=len(site.receivers)).astype(np.int64)
    return StoredRadioMap(tuple(r.id for r in site.receivers), radio_map, counts, bandwidth_m, prior_readings)


def _held_out_ratio(site: SiteConfig, res: WalkResiduals, fitter: MapFitter) -> float:
    """Mean squared residual of held-out walk readings with a map over without one (two folds of blocks).

    Below 1, the map predicts where the walk did not fit it: it found
    something that stays put. About 1, it learnt the walk's own noise.
    NaN if the walk is too short to hold half of it out.
    """
    if not res.ts.size:
        return float("nan")
    fold = (np.floor((res.ts - res.ts.min()) / MAP_BLOCK_S).astype(np.intp) % 2).astype(bool)
    if fold.all() or not fold.any():
        return float("nan")
    with_map = 0.0
    for held in (fold, ~fold):
        radio_map = fitter(res.receiver[~held], res.xy[~held], res.residual[~held])
        predicted, _ = radio_map.at(res.receiver[held], res.xy[held])
        with_map += float(np.sum((res.residual[held] - predicted) ** 2))
    return with_map / max(float(np.sum(res.residual**2)), 1e-12)


def map_spread(stored: StoredRadioMap) -> dict[str, float]:
    """Per receiver, the map's largest offset from the model (signed, dB): how far the walk found it off."""
    flat = stored.radio_map.values.reshape(len(stored.receiver_ids), -1)
    worst = flat[np.arange(flat.shape[0]), np.argmax(np.abs(flat), axis=1)]
    return {r: round(float(v), 1) for r, v in zip(stored.receiver_ids, worst, strict=True)}


def rewrite_site_text(text: str, fits: list[ReceiverFit]) -> str:
    """The config text with fitted receivers' values replaced (or added), comments and layout kept."""
    return set_receiver_values(text, {f.receiver_id: fitted_values(f.calibration)
                                      for f in fits if f.calibration is not None})


def radio_map_path(out: Path) -> Path:
    """Where the radio map of the site config `out` goes: beside it, named after it."""
    return out.with_name(f"{out.stem}.radiomap.npz")


def fingerprint_path(out: Path) -> Path:
    """Where the sector fingerprint of the site config `out` goes: beside it, named after it."""
    return out.with_name(f"{out.stem}.fingerprint.npz")


def write_calibrated_site(site: SiteConfig, source: Path, fits: list[ReceiverFit], out: Path,
                          radio_map: StoredRadioMap | None = None,
                          fingerprint: StoredFingerprint | None = None,
                          tracking: dict[str, float | None] | None = None) -> SiteConfig:
    """Rewrite `source`'s text with the fits, validate it as `out`, then write it atomically.

    With `radio_map` or `fingerprint`, each is written first (to
    `radio_map_path(out)`, `fingerprint_path(out)`), so the config that names
    it never exists without it. Without, an older one is no longer named: the
    map's residuals were taken against the old models, the fingerprint is of
    another walk. `tracking` sets [tracking] keys to numbers (None drops one).
    """
    text = rewrite_site_text(source.read_text(encoding="utf-8"), fits)
    for name, value in (tracking or {}).items():
        text = drop_tracking_key(text, name) if value is None else set_tracking_key(text, name, value)
    if radio_map is not None:
        write_radio_map(radio_map_path(out), radio_map)
    if fingerprint is not None:
        write_fingerprint(fingerprint_path(out), fingerprint)
    for key, stored, path in (("radio_map", radio_map, radio_map_path(out)),
                              ("fingerprint", fingerprint, fingerprint_path(out))):
        text = drop_tracking_key(text, key) if stored is None else set_tracking_key(text, key, path.name)
    checked = parse_site(text, out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return checked


def summary_row(result: ReceiverFit) -> tuple[str, str, str, str, str]:
    """receiver, readings, rssi_at_1m, exponent, sigma as table cells (with standard errors)."""
    cal = result.calibration
    if cal is None:
        return result.receiver_id, str(result.samples), "-", "-", result.reason or ""
    return (
        result.receiver_id, str(result.samples),
        f"{cal.rssi_at_1m:.1f} ± {cal.rssi_at_1m_se:.1f}",
        f"{cal.path_loss_exponent:.2f} ± {cal.path_loss_exponent_se:.2f}",
        f"{cal.sigma_db:.1f}" if math.isfinite(cal.sigma_db) else "-",
    )
