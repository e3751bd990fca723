"""The tracker: a bank of tracks keyed by emitter id, one per emitter, stepped a window at a time.

It composes the parts of the positioning core that each do one job: each
track runs the interacting multiple model filter of `positioning.imm`
(eqs. (12)-(13)), whose models are constant-velocity extended Kalman
filters fed the RSSI readings themselves (`positioning.ekf`, eqs. (6)-(7),
(14), (16)-(17), (20)); `positioning.rows` keeps the emitter ids' rows of
the stacked arrays. A track that stands still is also weighed against every
cell of the store (`positioning.stillgrid`, eqs. (43)-(47)) where the site
turns that on, and moved where its still segment puts it if the filter has
settled somewhere that segment rejects. Where the site turns on the grid
filter (`positioning.gridfilter`, eqs. (51)-(57)), every track keeps a
posterior over the store's cells instead, with its body's facing and its
phone's offset carried beside it, and that posterior is what the tracker
reports: the linearised filter and the still grid are not run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from positioning.ekf import (
    BODY_HOLD_S,
    BODY_LOSS_DB,
    BODY_WALK_SPEED,
    GATE,
    ITERATIONS,
    READING_CORRELATION,
    WEAK_K,
    birth_covariance,
    birth_positions,
    clamp,
    facing,
    predict,
    update,
)
from positioning.gridfilter import GridFilter
from positioning.imm import combine, mix, mixture, mode_transitions
from positioning.pathloss import DEFAULT_EMITTER_Z, Receivers
from positioning.radiomap import RadioMap
from positioning.rows import MIN_CAPACITY, WINDOW_SLACK_S, IdRows, grown
from positioning.stillgrid import StillGrid

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]


STILL_AND_GRID = ("still_grid_s and grid_motion_m exclude each other: the still grid places still tracks for the "
                  "tracker's filter, and the grid filter replaces that filter, placing every track on the cells every "
                  "window; drop still_grid_s")
"""Why a config may not turn on both the still grid and the grid filter: the one message for both checks."""


@dataclass(frozen=True)
class TrackerConfig:
    """Tuning of the tracker; the defaults suit shoppers walking among shelves.

    sigma_a: white-acceleration spread of each IMM model, m/s², eq. (12):
        a standing shopper (0.05: sways, shuffles along a shelf) and a
        walking one (0.5: starts, stops, turns); a quicker walking model
        lags a real walk's corners.
    mode_dwell_s: tau of each model, s: how long a shopper keeps standing or
        walking before switching (same length as sigma_a).
    v_max: walking speed cap, m/s.
    gate: normalised innovation beyond which a reading is dropped (3.5 keeps
        99.95 % of honest Gaussian readings and drops deep fades).
    weak_k: k of eq. (14), normalised innovation below which a weaker-than-
        predicted reading is down-weighted (inf: never, the plain EKF). A
        body or a shelf in the way only ever takes power away, so a far
        weaker reading is trusted less; a smaller k helps real walks and
        costs a simulation with symmetric shadowing.
    iterations: linearisations per update. h is steep near a receiver, so
        the prior is a poor linearisation point after a birth or a turn;
        each iteration costs throughput.
    (benchmarks/README.md, "Tuning evidence", has the figures behind these defaults.)
    reading_correlation: correlation rho of repeated readings of one
        (track, receiver) pair in a window. Shadowing is shared by all of
        them, so c readings carry the information of 1 / (rho + (1-rho)/c),
        not c, independent ones.
    offset_sigma_db: prior spread sigma_o of a phone's TX offset, dB, eq. (16);
        0 leaves the offset out (four states, the plain model). Phones of
        different makes differ by several dB, and 4 dB suits that spread
        where they do (simulated store and impaired channel: better); it is
        off by default because where the phone is the very tag the receivers
        were calibrated with (the real danis tracks) it costs accuracy
        (benchmarks/README.md has the figures).
    offset_drift_db: q_o of eq. (16), dB per sqrt(s): how fast a phone's offset may wander.
    body_loss_db: B of eq. (20), the loss a walking carrier's body puts between
        the phone and a receiver straight behind, dB; 0 leaves it out. The
        default 0.5 is below any real body's: it also takes back part of the
        lag of a track behind its walker, and larger values cost where no
        body is (the log-normal channel) and a real track (danis). A site
        with shoppers walking among receivers sets more; benchmarks/README.md
        has what it does where.
    body_walk_speed: v_w of eq. (20), m/s: the speed at which the heading is trusted in full.
    body_hold_s: tau_h of eq. (21), s: how long a stopped carrier's facing is
        remembered (it fades as exp(-t / tau_h)); 0 forgets it as they stop, (20).
    still_grid_s: how long a track must have been still before the grid of
        eqs. (43)-(47) may place it instead of the filter, s; 0, the default,
        leaves the grid out. Only a tracker given a `StillGrid` uses it. Off
        by default: it helps where a calibration walk's map and bodies
        drag still shoppers' estimates about (the calibrated store), changes
        nothing measurable on the impaired and log-normal channels, and
        costs a grid evaluation per still track every `still_every_s`
        (benchmarks/README.md, 2026-12-05, "Still shoppers on a grid").
    still_speed: the speed below which a track counts as still, m/s.
    still_memory_s: tau_s of eq. (43), s: how fast a still segment's readings fade.
    still_every_s: how often a still track's segment is weighed on the grid, s:
        a segment of tens of seconds changes little from one window to the
        next, and a track the grid placed restarts where (46) put it, so
        weighing it every window buys nothing for the cost that dominates a
        window where many shoppers stand.
    still_gate: how many nats the grid's best cell must beat the cell under
        the filter's estimate by before the grid places the track (47): a
        static shadow fools a global estimate about as often as a body
        fools the filter, so the grid speaks only where the filter has
        settled somewhere its own segment of readings rejects.
    grid_motion_m: s of eq. (51), m per sqrt(s): how far a shopper may move
        between windows as the grid filter sees it; 0, the default, leaves
        the grid filter out. Only a tracker given a `GridFilter` uses it.
        When on, each track's reported position and spread are the grid's
        (46), for every track and window (the linearised filter and the
        still grid are not run): a calibrated store's map and its
        shoppers' bodies lead the linearised filter into wrong basins that
        the grid, weighing every cell, does not fall into
        (benchmarks/README.md, 2026-12-06, "A grid for every shopper"). The
        grid carries each phone's offset from the same offset_sigma_db
        prior, drifting by offset_drift_db, as the filter does.
    grid_sigma_db: the spread of one reading about the model and the radio
        map as the grid filter weighs it, dB; 0 takes each receiver's
        noise_sigma_db. A calibrated receiver's noise holds the static
        field that a kriged map explains; what is left about the map is
        the fading alone, and weighing readings by the larger spread blurs
        the posterior across sector borders (benchmarks/README.md,
        2026-12-06, "A grid for every shopper").
    birth_sigma_m, birth_sigma_v: initial position (m) and velocity (m/s) spread.
    birth_power_k: sharpness k of the birth centroid weights 10^(k rssi / 10).
    max_silence_s: a track unheard this long is dead.
    """

    emitter_z: float = DEFAULT_EMITTER_Z
    sigma_a: tuple[float, ...] = (0.05, 0.5)
    mode_dwell_s: tuple[float, ...] = (30.0, 10.0)
    v_max: float = 2.5
    gate: float = GATE
    weak_k: float = WEAK_K
    iterations: int = ITERATIONS
    reading_correlation: float = READING_CORRELATION
    offset_sigma_db: float = 0.0
    offset_drift_db: float = 0.05
    body_loss_db: float = BODY_LOSS_DB
    body_walk_speed: float = BODY_WALK_SPEED
    body_hold_s: float = BODY_HOLD_S
    still_grid_s: float = 0.0
    still_speed: float = 0.3
    still_memory_s: float = 60.0
    still_every_s: float = 3.0
    still_gate: float = 12.0
    grid_motion_m: float = 0.0
    grid_sigma_db: float = 0.0
    birth_sigma_m: float = 5.0
    birth_sigma_v: float = 1.0
    birth_power_k: float = 1.0
    max_silence_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.sigma_a or len(self.mode_dwell_s) != len(self.sigma_a):
            raise ValueError(
                "TrackerConfig.sigma_a and mode_dwell_s need one value per model, "
                f"got {len(self.sigma_a)} and {len(self.mode_dwell_s)}"
            )
        if not all(v > 0.0 for v in (*self.sigma_a, *self.mode_dwell_s)):
            raise ValueError("TrackerConfig.sigma_a and mode_dwell_s must be positive")
        positive = (
            "v_max",
            "gate",
            "weak_k",
            "birth_sigma_m",
            "birth_sigma_v",
            "birth_power_k",
            "max_silence_s",
            "body_walk_speed",
            "still_speed",
            "still_memory_s",
            "still_every_s",
        )
        for name in positive:
            if not getattr(self, name) > 0.0:
                raise ValueError(
                    f"TrackerConfig.{name} must be positive, got {getattr(self, name)}"
                )
        for name in ("body_loss_db", "body_hold_s", "still_grid_s", "still_gate", "grid_motion_m", "grid_sigma_db"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"TrackerConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.still_grid_s > 0.0 and self.grid_motion_m > 0.0:
            raise ValueError(STILL_AND_GRID)
        if not (self.offset_sigma_db >= 0.0 and self.offset_drift_db >= 0.0):
            raise ValueError(
                "TrackerConfig.offset_sigma_db and offset_drift_db must be >= 0, "
                f"got {self.offset_sigma_db} and {self.offset_drift_db}"
            )
        if self.iterations < 1:
            raise ValueError(f"TrackerConfig.iterations must be at least 1, got {self.iterations}")
        if not 0.0 <= self.reading_correlation <= 1.0:
            raise ValueError(
                f"TrackerConfig.reading_correlation must be in [0, 1], got {self.reading_correlation}"
            )


@dataclass(frozen=True, eq=False)
class TrackSnapshot:
    """Tracks as of a step: emitter ids (k), xy (k, 2) m, cov (k, 2, 2) m², last_seen (k,) s; from `step`,
    also reading_track (N,), the row among these of each of the window's readings (empty otherwise)."""

    emitter_ids: tuple[str, ...]
    xy: FloatArray
    cov: FloatArray
    last_seen: FloatArray
    reading_track: IndexArray = field(default_factory=lambda: np.empty(0, dtype=np.intp))


class Tracker:
    """A bank of tracks keyed by emitter id, stepped one window of readings at a time.

    A thin wrapper over `predict`, `update` and `clamp`: it owns the stacked
    arrays, births a track the first time an emitter is heard, and drops it
    after `config.max_silence_s` of silence. Time is always passed in.

    Args:
        receivers_xyz: (m, 3) receiver positions, metres.
        rssi_at_1m, exponent, sigma_db: (m,) calibration of each receiver.
        bbox: ((x_min, y_min), (x_max, y_max)) of the store outline, metres.
        radio_map: residual fields from a calibration walk, one per receiver, or None.
        still_grid: the grid of eqs. (43)-(46) over the same receivers, or None;
            used where `config.still_grid_s` > 0.
        grid_filter: the filter of eqs. (51)-(57) over the same receivers, or None;
            used where `config.grid_motion_m` > 0.
    """

    def __init__(
        self,
        receivers_xyz: ArrayLike,
        rssi_at_1m: ArrayLike,
        exponent: ArrayLike,
        sigma_db: ArrayLike,
        bbox: ArrayLike,
        config: TrackerConfig | None = None,
        radio_map: RadioMap | None = None,
        still_grid: StillGrid | None = None,
        grid_filter: GridFilter | None = None,
    ) -> None:
        self.receivers = Receivers.of(receivers_xyz, rssi_at_1m, exponent, sigma_db, radio_map)
        box = np.asarray(bbox, dtype=np.float64)
        if box.shape != (2, 2) or not np.all(box[1] > box[0]):
            raise ValueError(
                f"bbox must be ((x_min, y_min), (x_max, y_max)) with max > min, got {box.tolist()}"
            )
        self.lo, self.hi = box[0].copy(), box[1].copy()
        self.config = config or TrackerConfig()
        self._rows = IdRows()
        m = len(self.config.sigma_a)
        self._sigma_a = np.asarray(self.config.sigma_a, dtype=np.float64)
        self._dwell = np.asarray(self.config.mode_dwell_s, dtype=np.float64)
        d = 5 if self.config.offset_sigma_db > 0.0 else 4  # eq. (16)
        self._xm = np.empty((0, m, d))  # per model; the track is their mixture, eq. (13)
        self._Pm = np.empty((0, m, d, d))
        self._mu = np.empty((0, m))
        self._t = np.empty(0)  # time of each track's state
        self._facing = np.empty((0, 2))  # f of eq. (21) as of each track's state
        self._last_seen = np.empty(0)
        self._grid = still_grid if self.config.still_grid_s > 0.0 else None
        n_rx = len(self.receivers)
        self._still_since = np.empty(0)  # when each track last started being still, eq. (43)
        self._still_count = np.empty((0, n_rx))  # its still segment's faded reading counts per receiver
        self._still_sum = np.empty((0, n_rx))  # and their faded sums, dBm
        self._grid_at = np.empty(0)  # when each track's segment was last weighed on the grid
        self._grid_filter = grid_filter if self.config.grid_motion_m > 0.0 else None
        self._posterior = np.empty((0, self._grid_filter.width if self._grid_filter is not None else 0))  # (52)-(55)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, emitter_id: object) -> bool:
        return emitter_id in self._rows

    @property
    def nbytes(self) -> int:
        """Bytes held by the bank's arrays (capacity included)."""
        return sum(bank.nbytes for bank in self._banks())

    def _banks(self) -> tuple[FloatArray, ...]:
        return (self._xm, self._Pm, self._mu, self._t, self._last_seen, self._facing, self._still_since,
                self._still_count, self._still_sum, self._grid_at, self._posterior)

    def step(
        self,
        t: float,
        emitter_ids: Sequence[str] | NDArray[np.str_],
        receiver_index: ArrayLike,
        rssi: ArrayLike,
    ) -> TrackSnapshot:
        """Fold one window of N readings, all stamped `t`, into the tracks heard.

        emitter_ids (N,), receiver_index (N,) rows of the receivers given at
        construction, rssi (N,) dBm. Returns the tracks updated by this step.
        """
        ri = np.asarray(receiver_index, dtype=np.intp).ravel()
        z = np.asarray(rssi, dtype=np.float64).ravel()
        if not len(emitter_ids) == ri.size == z.size:
            raise ValueError(
                f"emitter_ids, receiver_index and rssi differ in length: {len(emitter_ids)}, {ri.size}, {z.size}"
            )
        if ri.size and (ri.min() < 0 or ri.max() >= len(self.receivers)):
            raise ValueError(f"receiver_index must be in [0, {len(self.receivers)})")
        if not np.all(np.isfinite(z)):
            raise ValueError("rssi must be finite")
        cfg = self.config
        ids, rows, code = self._rows.factorise(emitter_ids)
        new = rows < 0
        if new.any():
            rows[new] = self._birth(t, [ids[i] for i in np.flatnonzero(new)], new, code, ri, z)
        k, m, d = len(ids), self._sigma_a.shape[0], self._xm.shape[2]
        dt = np.maximum(t - self._t[rows], 0.0)
        if self._grid_filter is not None:
            # The grid's (46) is every track's estimate, every window: the linearised filter and the still grid
            # would be run only to be overwritten.
            xy, cov = self._on_grid(rows, dt, code, ri, z)
            self._t[rows], self._last_seen[rows] = t, t
            return TrackSnapshot(tuple(ids), xy, cov, np.full(len(ids), float(t)), code)
        held = self._held(rows, dt)
        x0, P0, c = mix(
            self._xm[rows], self._Pm[rows], self._mu[rows], mode_transitions(dt, self._dwell)
        )
        xm, Pm, loglik = np.empty((k, m, d)), np.empty((k, m, d, d)), np.empty((k, m))
        # One batch per model, all tracks and readings at once. Stacking the models as
        # rows of a single batch repeats every reading M times and doubles a window's
        # temporaries (40 readings per emitter, 1,000 emitters: 22 MB traced, not 11;
        # santi run's peak RSS 126-130 MB, not 119-122).
        for b in range(m):
            x, P = predict(x0[:, b], P0[:, b], dt, self._sigma_a[b], cfg.offset_drift_db)
            res = update(
                x,
                P,
                code,
                ri,
                z,
                self.receivers,
                emitter_z=cfg.emitter_z,
                gate=cfg.gate,
                weak_k=cfg.weak_k,
                iterations=cfg.iterations,
                reading_correlation=cfg.reading_correlation,
                body=(cfg.body_loss_db, cfg.body_walk_speed),
                held=held,
            )
            xm[:, b], Pm[:, b] = clamp(res.x, res.P, self.lo, self.hi, cfg.v_max, cfg.offset_sigma_db)
            loglik[:, b] = res.loglik
        mu, x, P = combine(xm, Pm, loglik, c)
        xy, cov = x[:, :2].copy(), P[:, :2, :2].copy()
        if self._grid is not None:
            placed, grid_xy, grid_cov = self._still(t, rows, dt, x, code, ri, z)
            xy[placed], cov[placed] = grid_xy, grid_cov
            # The filter starts again from the grid's estimate: left where it had settled, it reports the
            # grid's place only while the grid speaks, and walks away from the wrong one.
            xm[placed, :, :2] = grid_xy[:, None]
            Pm[placed, :, :, :2] = Pm[placed, :, :2, :] = 0.0
            Pm[placed, :, :2, :2] = grid_cov[:, None]
        self._xm[rows], self._Pm[rows], self._mu[rows] = xm, Pm, mu
        if held is not None:
            self._facing[rows] = facing(x, cfg.body_walk_speed, held)
        self._t[rows], self._last_seen[rows] = t, t
        return TrackSnapshot(tuple(ids), xy, cov, np.full(len(ids), float(t)), code)

    def _still(
        self, t: float, rows: IndexArray, dt: FloatArray, x: FloatArray, code: IndexArray, ri: IndexArray,
        z: FloatArray,
    ) -> tuple[NDArray[np.bool_], FloatArray, FloatArray]:
        """Fold the window into each still track's segment (43); which tracks the grid places, and where (46).

        A segment is weighed once every `still_every_s` per track, not every window.
        """
        assert self._grid is not None
        cfg, m = self.config, len(self.receivers)
        still = np.hypot(x[:, 2], x[:, 3]) < cfg.still_speed
        fade = np.where(still, np.exp(-dt / cfg.still_memory_s), 0.0)[:, None]
        k = rows.shape[0]
        cell = code * m + ri
        count = np.bincount(cell, minlength=k * m).reshape(k, m) * still[:, None]
        total = np.bincount(cell, z, minlength=k * m).reshape(k, m) * still[:, None]
        self._still_count[rows] = fade * self._still_count[rows] + count
        self._still_sum[rows] = fade * self._still_sum[rows] + total
        self._still_since[rows] = np.where(still, self._still_since[rows], t)
        due = t - self._grid_at[rows] >= cfg.still_every_s - WINDOW_SLACK_S
        placed = still & due & (t - self._still_since[rows] >= cfg.still_grid_s)
        if not placed.any():
            return placed, np.empty((0, 2)), np.empty((0, 2, 2))
        at = rows[placed]
        self._grid_at[at] = t
        grid_xy, grid_cov, rejected = self._grid.estimate(self._still_count[at], self._still_sum[at], x[placed, :2])
        moved = rejected > cfg.still_gate  # eq. (47)
        placed[placed] = moved
        return placed, grid_xy[moved], grid_cov[moved]

    def _on_grid(
        self, rows: IndexArray, dt: FloatArray, code: IndexArray, ri: IndexArray, z: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """Eqs. (51)-(57) for the tracks at `rows` with this window's readings; their (46)."""
        assert self._grid_filter is not None
        k, m = rows.shape[0], len(self.receivers)
        cell = code * m + ri
        count = np.bincount(cell, minlength=k * m).reshape(k, m).astype(np.float64)
        total = np.asarray(np.bincount(cell, z, minlength=k * m).reshape(k, m), dtype=np.float64)
        self._grid_filter.step(self._posterior, rows, dt, count, total)
        return self._grid_filter.estimate(self._posterior, rows)

    def _held(self, rows: IndexArray, dt: FloatArray) -> FloatArray | None:
        """The held part exp(-dt / tau_h) f_prev of eq. (21) for the tracks at `rows`; None where (20) holds."""
        cfg = self.config
        if cfg.body_loss_db <= 0.0 or cfg.body_hold_s <= 0.0:
            return None
        return np.asarray(np.exp(-dt / cfg.body_hold_s)[:, None] * self._facing[rows], dtype=np.float64)

    def _birth(
        self,
        t: float,
        new_ids: list[str],
        new: NDArray[np.bool_],
        code: IndexArray,
        ri: IndexArray,
        z: FloatArray,
    ) -> IndexArray:
        """Start tracks for `new_ids` at the power-weighted centroid; returns their rows."""
        cfg = self.config
        local = np.cumsum(new) - 1  # code -> index among the newborn
        mine = new[code]
        xy = birth_positions(
            local[code[mine]], ri[mine], z[mine], self.receivers, len(new_ids), cfg.birth_power_k
        )
        rows = self._rows.add(new_ids)
        n = len(self._rows)
        (self._xm, self._Pm, self._mu, self._t, self._last_seen, self._facing, self._still_since,
         self._still_count, self._still_sum, self._grid_at, self._posterior) = [grown(bank, n) for bank in self._banks()]
        self._xm[rows] = 0.0
        self._facing[rows] = 0.0
        self._still_since[rows] = t
        self._grid_at[rows] = -np.inf
        self._still_count[rows] = self._still_sum[rows] = 0.0
        if self._grid_filter is not None:
            self._posterior[rows] = self._grid_filter.start(len(new_ids))
        self._xm[rows, :, :2] = xy[:, None, :]
        self._Pm[rows] = birth_covariance(
            len(new_ids), cfg.birth_sigma_m, cfg.birth_sigma_v, cfg.offset_sigma_db
        )[:, None]
        # Born in the switching chain's stationary mix: time in a mode is proportional to its dwell.
        self._mu[rows] = self._dwell / self._dwell.sum()
        self._t[rows] = self._last_seen[rows] = t
        return rows

    def expire(self, t: float) -> list[str]:
        """Drop tracks silent for more than `config.max_silence_s` at time t; returns their ids."""
        n = len(self._rows)
        dead = t - self._last_seen[:n] > self.config.max_silence_s
        if not dead.any():
            return []
        keep = ~dead
        m = int(keep.sum())
        for bank in self._banks():
            bank[:m] = bank[:n][keep]
        if self._t.shape[0] > 4 * max(m, MIN_CAPACITY):  # after a crowd (or a flood): give the memory back
            (self._xm, self._Pm, self._mu, self._t, self._last_seen, self._facing, self._still_since,
             self._still_count, self._still_sum, self._grid_at, self._posterior) = [
                bank[: 2 * max(m, MIN_CAPACITY)].copy() for bank in self._banks()]
        return self._rows.drop(dead)

    def snapshot(self) -> TrackSnapshot:
        """All live tracks as of their last update."""
        n = len(self._rows)
        x, P = mixture(self._xm[:n], self._Pm[:n], self._mu[:n])
        xy, cov = (x[:, :2], P[:, :2, :2].copy()) if self._grid_filter is None else self._grid_filter.estimate(self._posterior[:n])
        return TrackSnapshot(tuple(self._rows.ids), xy, cov, self._last_seen[:n].copy())

    def state(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Copies of the full state of all live tracks: x (k, d), P (k, d, d), state time (k,); d of eq. (16).

        A tracker on the grid filter runs no linearised filter, so it has no such state: ValueError.
        """
        if self._grid_filter is not None:
            raise ValueError("a tracker on the grid filter keeps each track as a posterior over cells, not (16)")
        n = len(self._rows)
        x, P = mixture(self._xm[:n], self._Pm[:n], self._mu[:n])
        return x, P, self._t[:n].copy()
