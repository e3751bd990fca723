"""How good are the estimates? Position, bound and sector figures against the truth.

- Position error: each estimate of an emitter against its carrier's true
  position at the estimate's time (truth is interpolated between samples).
- Snapshot RMSE against the Cramér-Rao bound: a seeded sample of windows is
  fixed on its own; the bound at each true position uses the receivers that
  heard it in that window, each with sigma / sqrt(readings), so the two
  describe the same information.
- Sector accuracy: the share of shopper-time (truth samples) at which the
  shopper's sector timeline names the true sector; time without a fresh
  estimate (at most `stale_s` old) counts as wrong. The timeline is the one
  HQ rebuilds from sector events: each entry stamped with the time the new
  sector first became the likely one (`sector_since`), not the later moment
  hysteresis confirmed it.
- Sector entries: an estimated entry matches a true one of the same shopper
  and sector within `match_s`; precision and recall over all shoppers.
- False sector changes: estimated changes (not a track's first sector) that
  match no true entry, per tracked shopper-hour.
- Entry latency: for each matched entry, from the true crossing to the
  window in which the estimate first named the new sector (the decision an
  activation could act on), p50 / p90 / p99.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.config import SiteConfig
from agent.observations import Observation, Tech
from agent.replayfile import RecordReader
from agent.site_arrays import site_arrays
from positioning.bounds import fisher_information
from positioning.multilaterate import fix
from simulator.locate import Estimate, LocateStats, windows
from simulator.truth import Truth

FloatArray = NDArray[np.float64]


@dataclass
class ErrorStats:
    """Distance errors in metres."""

    n: int
    median_m: float
    p90_m: float
    mean_m: float
    rmse_m: float

    @classmethod
    def of(cls, errors: FloatArray) -> ErrorStats:
        if errors.size == 0:
            return cls(0, float("nan"), float("nan"), float("nan"), float("nan"))
        return cls(int(errors.size), float(np.median(errors)), float(np.percentile(errors, 90)),
                   float(errors.mean()), float(np.sqrt(np.mean(errors**2))))


@dataclass
class BoundStats:
    """Snapshot fixes on a sample of windows beside the Cramér-Rao bound at the same points."""

    windows: int
    rmse_m: float
    crlb_rmse_m: float
    ratio: float
    median_m: float
    sigma_db: float


@dataclass
class SectorStats:
    accuracy: float
    covered: float
    true_entries: int
    estimated_entries: int
    matched_entries: int
    precision: float
    recall: float
    false_changes: int
    shopper_hours: float
    false_changes_per_hour: float
    latency_p50_s: float = float("nan")
    latency_p90_s: float = float("nan")
    latency_p99_s: float = float("nan")


@dataclass
class Report:
    tech: Tech
    tracked_shoppers: int
    position: ErrorStats
    sectors: SectorStats
    bound: BoundStats | None = None
    locate: dict[str, Any] = field(default_factory=dict)
    errors: FloatArray = field(default_factory=lambda: np.empty(0), repr=False)
    snapshot_errors: FloatArray = field(default_factory=lambda: np.empty(0), repr=False)
    crlb: FloatArray = field(default_factory=lambda: np.empty(0), repr=False)

    def figures(self) -> dict[str, Any]:
        """The report as plain JSON-ready data (no arrays)."""
        data = {
            "tech": self.tech,
            "tracked_shoppers": self.tracked_shoppers,
            "position": asdict(self.position),
            "sectors": asdict(self.sectors),
            "bound": asdict(self.bound) if self.bound is not None else None,
            "locate": self.locate,
        }
        cleaned: dict[str, Any] = _clean(data)
        return cleaned


def _clean(value: Any) -> Any:
    """NaN and infinity are not JSON: they become null."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclass
class EmitterEstimates:
    """ts (n,), xy (n, 2), the reported sector and the time it was entered (sector_since, else ts)."""

    ts: FloatArray
    xy: FloatArray
    sector: list[str | None]
    since: FloatArray


def group_estimates(estimates: Iterable[Estimate]) -> dict[str, EmitterEstimates]:
    """Estimates per emitter, in time order."""
    rows: dict[str, list[Estimate]] = {}
    for estimate in estimates:
        rows.setdefault(estimate.emitter_id, []).append(estimate)
    out: dict[str, EmitterEstimates] = {}
    for emitter, items in rows.items():
        items.sort(key=lambda e: e.ts)
        out[emitter] = EmitterEstimates(
            np.array([e.ts for e in items]), np.array([[e.x, e.y] for e in items]), [e.sector for e in items],
            np.array([e.ts if e.sector_since is None else e.sector_since for e in items]))
    return out


def shopper_emitters(truth: Truth, groups: dict[str, EmitterEstimates], tech: Tech) -> dict[str, list[str]]:
    """Shoppers carrying an emitter of `tech`, each with its emitters that have estimates."""
    owned: dict[str, list[str]] = {}
    for emitter in sorted(truth.emitters.values(), key=lambda e: (e.shopper_id, e.first_ts)):
        if emitter.tech == tech:
            owned.setdefault(emitter.shopper_id, [])
            if emitter.emitter_id in groups:
                owned[emitter.shopper_id].append(emitter.emitter_id)
    return {s: e for s, e in owned.items() if s in truth.tracks}


def merged(groups: dict[str, EmitterEstimates], emitters: list[str]) -> EmitterEstimates:
    if not emitters:
        return EmitterEstimates(np.empty(0), np.empty((0, 2)), [], np.empty(0))
    ts = np.concatenate([groups[e].ts for e in emitters])
    order = np.argsort(ts, kind="stable")
    xy = np.concatenate([groups[e].xy for e in emitters])[order]
    since = np.concatenate([groups[e].since for e in emitters])[order]
    sectors = [s for e in emitters for s in groups[e].sector]
    return EmitterEstimates(ts[order], xy, [sectors[i] for i in order], since)


def position_errors(truth: Truth, groups: dict[str, EmitterEstimates], tech: Tech) -> FloatArray:
    """Distance from each estimate of a carried emitter to its carrier's true position."""
    errors: list[FloatArray] = []
    for shopper, emitters in shopper_emitters(truth, groups, tech).items():
        track = truth.tracks[shopper]
        est = merged(groups, emitters)
        inside = (est.ts >= track.ts[0]) & (est.ts <= track.ts[-1])
        true_xy = track.at(est.ts[inside])
        errors.append(np.hypot(*(est.xy[inside] - true_xy).T))
    return np.concatenate(errors) if errors else np.empty(0)


def _entries(est: EmitterEstimates) -> list[tuple[float, str, float]]:
    """Sector entries as events would carry them: stamped with the entry time; and the decision time."""
    out: list[tuple[float, str, float]] = []
    last: str | None = None
    for since, sector, decided in zip(est.since.tolist(), est.sector, est.ts.tolist(), strict=True):
        if sector is not None and sector != last:
            out.append((since, sector, decided))
            last = sector
    return out


def sector_metrics(
    truth: Truth, groups: dict[str, EmitterEstimates], tech: Tech, *, match_s: float = 5.0, stale_s: float = 5.0
) -> SectorStats:
    right = total = covered = 0
    true_n = est_n = matched_n = false_n = 0
    seconds = 0.0
    latency: list[float] = []
    for shopper, emitters in shopper_emitters(truth, groups, tech).items():
        track = truth.tracks[shopper]
        est = merged(groups, emitters)
        present = np.array([s is not None for s in track.sector])
        times = track.ts[present]
        true_sector = [s for s in track.sector if s is not None]
        seconds += float(track.ts[-1] - track.ts[0]) if track.ts.size > 1 else 0.0
        total += times.size
        estimated = _entries(est)
        if est.ts.size and estimated:
            k = np.searchsorted(est.ts, times, side="right") - 1
            fresh = (k >= 0) & (times - est.ts[np.maximum(k, 0)] <= stale_s)
            covered += int(fresh.sum())
            entry_ts = np.array([t for t, _, _ in estimated])
            e = np.searchsorted(entry_ts, times, side="right") - 1
            right += sum(1 for j in np.flatnonzero(fresh & (e >= 0)) if estimated[e[j]][1] == true_sector[j])
        true_entries = [(v.enter_ts, v.sector) for v in truth.visits.get(shopper, [])]
        true_n += len(true_entries)
        est_n += len(estimated)
        used = [False] * len(true_entries)
        for position, (t, sector, decided) in enumerate(estimated):
            best, best_dt = -1, match_s
            for j, (tt, ts_sector) in enumerate(true_entries):
                if not used[j] and ts_sector == sector and abs(tt - t) <= best_dt:
                    best, best_dt = j, abs(tt - t)
            if best >= 0:
                used[best] = True
                matched_n += 1
                latency.append(decided - true_entries[best][0])
            elif position > 0:
                false_n += 1
    hours = seconds / 3600.0
    return SectorStats(
        accuracy=right / total if total else float("nan"),
        covered=covered / total if total else float("nan"),
        true_entries=true_n, estimated_entries=est_n, matched_entries=matched_n,
        precision=matched_n / est_n if est_n else float("nan"),
        recall=matched_n / true_n if true_n else float("nan"),
        false_changes=false_n, shopper_hours=hours,
        false_changes_per_hour=false_n / hours if hours else float("nan"),
        **_latency(np.array(latency)),
    )


def _latency(seconds: FloatArray) -> dict[str, float]:
    if not seconds.size:
        return {}
    p50, p90, p99 = np.percentile(seconds, [50, 90, 99])
    return {"latency_p50_s": float(p50), "latency_p90_s": float(p90), "latency_p99_s": float(p99)}


def crlb_at(
    points: FloatArray, counts: FloatArray, receivers_xyz: FloatArray, exponent: FloatArray,
    sigma_db: float, emitter_z: float,
) -> FloatArray:
    """Bound (m) at each of g points given (g, m) readings per receiver, each N(0, sigma²).

    The FIM adds over receivers and c readings of one receiver carry c times
    its information, so FIM_g = sum_r c_gr FIM_r(q_g; sigma).
    """
    fim = np.zeros((points.shape[0], 2, 2))
    for r in range(receivers_xyz.shape[0]):
        fim += counts[:, r, None, None] * fisher_information(
            points, receivers_xyz[r:r + 1], exponent[r:r + 1], sigma_db, emitter_z)
    tr = fim[:, 0, 0] + fim[:, 1, 1]
    det = fim[:, 0, 0] * fim[:, 1, 1] - fim[:, 0, 1] ** 2
    singular = det <= 1e-12 * tr**2
    return np.where(singular, np.inf, np.sqrt(tr / np.where(singular, 1.0, det)))


def snapshot_vs_bound(
    site: SiteConfig, truth: Truth, observations: Iterable[Observation], tech: Tech, *,
    sample: int = 2000, seed: int = 0, sigma_db: float | None = None,
) -> tuple[BoundStats, FloatArray, FloatArray]:
    """Snapshot fixes on a seeded reservoir sample of (emitter, window) pairs, beside the bound."""
    arrays = site_arrays(site)
    m = len(arrays.receiver_ids)
    sigma = sigma_db if sigma_db is not None else (truth.run.sigma_db if truth.run else float(np.median(arrays.sigma_db)))
    z = truth.run.emitter_height_m if truth.run else site.tracking.emitter_height_m
    rng = np.random.default_rng(seed)
    kept: list[tuple[float, str, FloatArray, FloatArray]] = []
    seen = 0
    for window in windows(observations, arrays, site.tracking.window_s, LocateStats()):
        ids, mean, counts = window.matrix(m)
        for i, emitter in enumerate(ids):
            owner = truth.emitters.get(emitter)
            if owner is None or owner.tech != tech or owner.shopper_id not in truth.tracks:
                continue
            track = truth.tracks[owner.shopper_id]
            if np.count_nonzero(counts[i]) < 3 or not track.ts[0] <= window.t <= track.ts[-1]:
                continue
            seen += 1
            item = (window.t, owner.shopper_id, mean[i], counts[i])
            if len(kept) < sample:
                kept.append(item)
            else:
                j = int(rng.integers(seen))
                if j < sample:
                    kept[j] = item
    errors: list[float] = []
    points: list[FloatArray] = []
    count_rows: list[FloatArray] = []
    for t, shopper, rssi, counts in kept:
        result = fix(arrays.xyz, rssi, arrays.rssi_at_1m, arrays.exponent,
                     arrays.sigma_db / np.sqrt(np.maximum(counts, 1.0)), z)
        if not result.ok:
            continue
        true_xy = truth.tracks[shopper].at(np.array([t]))[0]
        errors.append(float(np.hypot(*(result.xy - true_xy))))
        points.append(true_xy)
        count_rows.append(counts)
    err = np.array(errors)
    if not errors:
        return BoundStats(0, float("nan"), float("nan"), float("nan"), float("nan"), sigma), err, np.empty(0)
    bound = crlb_at(np.array(points), np.array(count_rows), arrays.xyz, arrays.exponent, sigma, z)
    finite = np.isfinite(bound)
    rmse = float(np.sqrt(np.mean(err[finite] ** 2)))
    crlb_rmse = float(np.sqrt(np.mean(bound[finite] ** 2)))
    return BoundStats(int(finite.sum()), rmse, crlb_rmse, rmse / crlb_rmse, float(np.median(err[finite])), sigma), err, bound


def build_report(
    site: SiteConfig, truth: Truth, groups: dict[str, EmitterEstimates], *, tech: Tech = "ble",
    observations: Path | None = None, bound_sample: int = 2000, seed: int = 0,
    match_s: float = 5.0, stale_s: float = 5.0,
) -> Report:
    """All figures from estimates grouped by `group_estimates`; the bound row needs the observation file."""
    errors = position_errors(truth, groups, tech)
    sectors = sector_metrics(truth, groups, tech, match_s=match_s, stale_s=stale_s)
    report = Report(tech, len(shopper_emitters(truth, groups, tech)), ErrorStats.of(errors), sectors, errors=errors)
    if observations is not None and bound_sample > 0:
        bound, snap_err, crlb = snapshot_vs_bound(site, truth, RecordReader(observations, Observation), tech,
                                                  sample=bound_sample, seed=seed)
        report.bound, report.snapshot_errors, report.crlb = bound, snap_err, crlb
    return report
