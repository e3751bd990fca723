"""Run the positioning core over an observation stream: one estimate per emitter per window.

The glue between replay files and ``positioning/``: observations are cut
into windows of ``tracking.window_s``; each window's readings are stamped at
the window's centre (the time they describe best) and either fed to the
batched tracker and the sector HMM (``track``), or fixed window by window
with no memory (``snapshot``: a least-squares fix from the mean RSSI per
receiver, and the sector that fix's Gaussian falls in most).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from agent.config import SiteConfig
from agent.observations import Observation
from agent.replayfile import RecordReader, RecordWriter
from agent.site_arrays import (
    SiteArrays,
    make_sector_model,
    make_sector_tracker,
    make_tracker,
    site_arrays,
)
from positioning.multilaterate import fix
from positioning.sectors import SectorModel
from positioning.tracker import TrackerConfig

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
Mode = Literal["track", "snapshot"]


class Estimate(BaseModel):
    """Where one emitter was in one window: position, covariance and sector."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ts: float
    emitter_id: str
    x: float
    y: float
    sector: str | None
    sector_probability: float
    covariance: tuple[tuple[float, float], tuple[float, float]]
    sector_since: float | None = None
    """When the reported sector first became the likely one (the entry time), before hysteresis confirmed it."""


@dataclass
class LocateStats:
    """What a locate pass saw and dropped, for the operator."""

    observations: int = 0
    windows: int = 0
    estimates: int = 0
    unknown_receiver: int = 0
    late: int = 0
    unfixed: int = 0
    bad_lines: int = 0
    unknown_receivers: set[str] = field(default_factory=set)


@dataclass(frozen=True, eq=False)
class Window:
    """Readings of one window: centre time t, and per reading (N,) emitter, receiver row, RSSI."""

    t: float
    emitter_ids: list[str]
    receiver_index: NDArray[np.intp]
    rssi: FloatArray

    def matrix(self, m: int) -> tuple[list[str], FloatArray, FloatArray]:
        """Emitters heard (k), their mean RSSI per receiver (k, m; NaN if unheard), reading counts (k, m)."""
        codes: dict[str, int] = {}
        code = np.fromiter((codes.setdefault(e, len(codes)) for e in self.emitter_ids), np.intp, len(self.emitter_ids))
        k = len(codes)
        cell = code * m + self.receiver_index
        counts = np.bincount(cell, minlength=k * m).reshape(k, m).astype(np.float64)
        sums = np.bincount(cell, self.rssi, minlength=k * m).reshape(k, m)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(counts > 0, sums / counts, np.nan)
        return list(codes), mean, counts


def windows(
    observations: Iterable[Observation], arrays: SiteArrays, window_s: float, stats: LocateStats
) -> Iterator[Window]:
    """Cut a time-ordered stream into windows; late and unknown-receiver readings are counted and dropped."""
    current: int | None = None
    ids: list[str] = []
    rows: list[int] = []
    values: list[float] = []
    for obs in observations:
        stats.observations += 1
        row = arrays.receiver_row.get(obs.receiver_id)
        if row is None:
            stats.unknown_receiver += 1
            if obs.receiver_id not in stats.unknown_receivers:
                stats.unknown_receivers.add(obs.receiver_id)
                log.warning("observation from a receiver not in the site config dropped",
                            extra={"receiver": obs.receiver_id})
            continue
        k = math.floor(obs.ts / window_s)
        if current is not None and k < current:
            stats.late += 1
            continue
        if current is not None and k > current and ids:
            yield Window((current + 0.5) * window_s, ids, np.array(rows, dtype=np.intp), np.array(values))
            ids, rows, values = [], [], []
        current = k
        ids.append(obs.emitter_id)
        rows.append(row)
        values.append(obs.rssi_dbm)
    if current is not None and ids:
        yield Window((current + 0.5) * window_s, ids, np.array(rows, dtype=np.intp), np.array(values))


def _estimate(
    t: float, emitter: str, xy: FloatArray, cov: FloatArray, sector: str | None, p: float, since: float | None = None
) -> Estimate:
    return Estimate(
        ts=round(t, 6), emitter_id=emitter, x=round(float(xy[0]), 4), y=round(float(xy[1]), 4),
        sector=sector, sector_probability=round(float(p), 4),
        covariance=((round(float(cov[0, 0]), 5), round(float(cov[0, 1]), 5)),
                    (round(float(cov[1, 0]), 5), round(float(cov[1, 1]), 5))),
        sector_since=None if since is None else round(since, 6),
    )


class TrackLocator:
    """The tracker and the sector HMM stepped window by window, as the agent's locator runs them."""

    def __init__(self, site: SiteConfig, arrays: SiteArrays, tracker: TrackerConfig | None = None,
                 mean_dwell_s: float = 10.0) -> None:
        self.arrays = arrays
        self.tracker = make_tracker(site, arrays, tracker)
        self.sectors = make_sector_tracker(site, arrays, make_sector_model(arrays, mean_dwell_s=mean_dwell_s))
        self.since: dict[str, float] = {}

    def step(self, window: Window) -> list[Estimate]:
        snap = self.tracker.step(window.t, window.emitter_ids, window.receiver_index, window.rssi)
        update = self.sectors.step(window.t, list(snap.emitter_ids), snap.xy, snap.cov,
                                   (snap.reading_track, window.receiver_index, window.rssi))
        for i in np.flatnonzero(update.entered >= 0):
            # The sector filter stamps the entry when the shopper crossed, not when hysteresis confirmed it.
            self.since[snap.emitter_ids[i]] = float(update.entered_at[i])
        out = [
            _estimate(window.t, emitter, snap.xy[i], snap.cov[i], self.arrays.sector_name(int(update.sector[i])),
                      float(update.probability[i]), self.since.get(emitter))
            for i, emitter in enumerate(snap.emitter_ids)
        ]
        expired = self.tracker.expire(window.t)
        if expired:
            self.sectors.forget(expired)
            for emitter in expired:
                self.since.pop(emitter, None)
        return out


class SnapshotLocator:
    """A fix per emitter per window from that window alone; emitters heard by fewer than 3 receivers get none."""

    def __init__(self, site: SiteConfig, arrays: SiteArrays, mean_dwell_s: float = 10.0) -> None:
        self.arrays = arrays
        self.model: SectorModel = make_sector_model(arrays, mean_dwell_s=mean_dwell_s)
        self.emitter_z = site.tracking.emitter_height_m
        self.unfixed = 0

    def step(self, window: Window) -> list[Estimate]:
        a = self.arrays
        ids, mean, counts = window.matrix(len(a.receiver_ids))
        out: list[Estimate] = []
        for i, emitter in enumerate(ids):
            # Averaging c readings of one receiver divides its noise variance by c.
            sigma = a.sigma_db / np.sqrt(np.maximum(counts[i], 1.0))
            result = fix(a.xyz, mean[i], a.rssi_at_1m, a.exponent, sigma, self.emitter_z, radio_map=a.radio_map)
            if not result.ok:
                self.unfixed += 1
                continue
            p = self.model.likelihood(result.xy[None, :], result.cov[None, :, :])[0]
            best = int(np.argmax(p))
            out.append(_estimate(window.t, emitter, result.xy, result.cov, a.sector_name(best), float(p[best])))
        return out


def locate(
    site: SiteConfig,
    observations: Iterable[Observation],
    mode: Mode = "track",
    *,
    stats: LocateStats | None = None,
    tracker: TrackerConfig | None = None,
    mean_dwell_s: float = 10.0,
    on_window: Callable[[float], None] | None = None,
) -> Iterator[Estimate]:
    """Estimates of every emitter in every window of a time-ordered observation stream."""
    arrays = site_arrays(site)
    stats = stats if stats is not None else LocateStats()
    locator: TrackLocator | SnapshotLocator = (
        TrackLocator(site, arrays, tracker, mean_dwell_s) if mode == "track"
        else SnapshotLocator(site, arrays, mean_dwell_s)
    )
    for window in windows(observations, arrays, site.tracking.window_s, stats):
        stats.windows += 1
        if on_window is not None:
            on_window(window.t)
        estimates = locator.step(window)
        stats.estimates += len(estimates)
        yield from estimates
    if isinstance(locator, SnapshotLocator):
        stats.unfixed = locator.unfixed


def locate_file(
    site: SiteConfig,
    observations: Path,
    out: Path,
    mode: Mode = "track",
    *,
    tracker: TrackerConfig | None = None,
    mean_dwell_s: float = 10.0,
    on_window: Callable[[float], None] | None = None,
) -> LocateStats:
    """Read a replay file, write estimates as JSON Lines; returns what was seen and dropped."""
    stats = LocateStats()
    reader = RecordReader(observations, Observation)
    tmp = out.with_name(out.name + ".partial")
    with RecordWriter(tmp) as writer:
        writer.write_all(locate(site, reader, mode, stats=stats, tracker=tracker, mean_dwell_s=mean_dwell_s,
                                on_window=on_window))
    tmp.replace(out)
    stats.bad_lines = reader.bad_total
    return stats


def weighted_centroid(window: Window, arrays: SiteArrays, *, strongest: int = 3) -> tuple[list[str], FloatArray]:
    """Baseline: each emitter at the centroid of its `strongest` receivers, weighted by received power (mW).

    The classic weighted-centroid locator that model-based tracking must beat;
    returns the emitters (k) and positions (k, 2).
    """
    ids, mean, _ = window.matrix(len(arrays.receiver_ids))
    power = np.where(np.isnan(mean), -np.inf, mean)
    top = np.argsort(-power, axis=1)[:, :strongest]
    rssi = np.take_along_axis(power, top, axis=1)
    w = np.where(np.isfinite(rssi), 10.0 ** (rssi / 10.0), 0.0)  # mW
    xy = np.einsum("kj,kjd->kd", w, arrays.xyz[top, :2]) / w.sum(axis=1, keepdims=True)
    return ids, xy
