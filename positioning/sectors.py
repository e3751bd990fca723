"""From a track's Gaussian position to the store sector it is in, without flapping.

Three stages, each batched across tracks:

(a) Sector probabilities of the estimate N(xy, cov): the Gaussian integrated
    over a raster of sector labels with J = q² equal-weight points,

        p_k(s) = (1/J) sum_j [label(xy_k + L_k u_j) = s],  L_k L_kᵀ = cov_k  (8)

    u_j on the grid of standard-normal quantiles Phi⁻¹((i + 1/2) / q) per
    axis, with column s = S (the last) meaning outside the store. The
    integrand is a step function, for which equal-mass points err by at most
    1/(2q) per axis; Gauss-Hermite nodes, built for smooth integrands, put
    most weight on the central few and are much coarser here. A point
    beyond a wall counts as in the nearest sector, and as outside only
    beyond an entrance sector: shoppers leave by the door, and tracks are
    clamped onto the walls, so an estimate at a wall has half its mass
    beyond it; counted as outside, shoppers browsing at a wall would leave
    the store through it.

(b) A hidden Markov model over the adjacency graph (outside is adjacent to the
    entrance sectors). A shopper stays put with probability exp(-dt / tau)
    and otherwise steps to one neighbour, chosen uniformly:

        T(dt) = e^(-dt/tau) I + (1 - e^(-dt/tau)) N,   N = D⁻¹ A            (9)
        posterior = normalise(p * (prior T(dt)))                           (10)

    so probability only ever flows along the adjacency graph.

(c) Hysteresis in time and in space: the reported sector changes only once
    another sector's posterior has stayed above `threshold`, with the
    estimate's mean at least `margin_m` inside that sector, for `hold_s`
    seconds. A shopper browsing half a metre from a border sees the
    estimate wander across it and back, and the posterior with it (the
    windows' estimates are correlated, yet (10) counts each as fresh
    evidence); only a walk carries the mean deep into the next sector.
    The margin of a sector is capped at half its largest depth, so a narrow
    sector can still be entered.

    A shopper standing at a shelf does not change sector, yet their
    estimate may: a body turned towards the shelf takes up to 8 dB from
    the receivers behind it, and the estimate drifts metres away for tens
    of seconds, into the next sector, deep enough for the margin. So a
    change also needs the estimate to have walked there. Each track keeps
    its recent position, the estimate smoothed over `settle_s`,

        a_k(t) = a_k(t - dt) + (1 - e^(-dt / settle_s)) (xy_k(t) - a_k(t - dt))   (25)

    and a change to sector s, once its hold is over, is reported at once only if

        |xy_k - a_k| >= walk_m   or   a_k lies margin deep inside s              (26)

    (with a_k before this window's update): the mean has just moved
    walk_m away from where the track had been (a shopper walking at
    1 m/s is about v settle_s ahead of their smoothed position), or it has
    been in s long enough for the smoothed position to follow. A change
    that fails (26) waits a longer hold, `still_hold_s`, so that a track
    held in a wrong sector is not stuck there. Outside and a track's first
    sector are exempt, as from the margin.

(d) The entry is stamped with when the shopper crossed, not the later moment
    the hysteresis confirmed it: the change point of Page's CUSUM on each
    sector's likelihood (8) against the best of the others,

        W_s = max(0, W_s + clip(ln p(s) - max_(j != s) ln p(j), ±EVIDENCE_CLIP))   (11)

    whose maximum-likelihood change time is the last step at which W_s was 0:
    from then on, the windows favour s over every other sector without
    interruption. The HMM posterior would date it late: (10) needs several
    windows of evidence to reach any level, and a low level is crossed by
    noise. The figures of both choices, (a)'s wall rule and (d)'s dating,
    are in benchmarks/README.md ("Tuning evidence").

Where a calibration walk learnt each sector's RSSI signature
(`positioning.fingerprint`), its likelihood (18) multiplies (8) before
(10) and (11) by eq. (19).

Sector ids are indices here (outside = S); names are the caller's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike, NDArray

from positioning.fingerprint import Fingerprint, fuse
from positioning.geometry import LabelRaster, nearest_cells
from positioning.rows import WINDOW_SLACK_S, IdRows

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]

EVIDENCE_CLIP = 3.0
"""Largest log-likelihood ratio one window adds to or takes from eq. (11).

The floor of (8) makes a single window's ratio as large as ln(1/floor) ~ 7;
clipped, one wild estimate cannot wipe out or fake a run of evidence."""


SECTOR_THRESHOLD = 0.8
"""Posterior a new sector must keep before it is reported: the one home of this default
(`SectorTracker` and ``[tracking] sector_threshold`` take it from here)."""

SECTOR_HOLD_S = 3.0
"""Seconds the new sector must keep `SECTOR_THRESHOLD` (stage (c)): the one home of this default
(`SectorTracker` and ``[tracking] hysteresis_s`` take it from here)."""

SECTOR_MARGIN_M = 1.5
"""Spatial hysteresis of stage (c): how far inside the new sector the estimate must be, m."""

SECTOR_WALK_M = 0.0
"""walk_m of eq. (26): how far the estimate must have moved from the track's recent position for a change, m;
0, the default, is no walk test. The one home of this default (``[tracking] sector_walk_m`` takes it from
here). Off by default: it delays entries whose estimate creeps in (a shopper who walks up to a counter and
stops at its edge), which costs the lognormal channel, with no bodies, more than it saves there; 4 m where
still shoppers' bodies drag their estimates about (benchmarks/README.md, 2026-12-05, "The walk test")."""

WALK_TEST_M = 4.0
"""walk_m of eq. (26) where a calibration for the grid filter turns the walk test on, m (SECTOR_WALK_M says why 4)."""

WALK_TEST_HOLD_S = 2.0
"""The hold that goes with the walk test, s: with (26) against estimates that drift, a change may be decided a
second sooner (benchmarks/README.md, 2026-12-05, "The walk test": entries p50 4.4 -> 3.4 s)."""

SECTOR_SETTLE_S = 10.0
"""settle_s of eq. (25): the time over which a track's recent position is smoothed, s."""

SECTOR_STILL_HOLD_S = 20.0
"""Hold of a change that fails the walk test (26): a sector that keeps the threshold and margin this long is
reported all the same, so that a track the walk test holds in a wrong sector is not stuck there."""


@dataclass(frozen=True, eq=False)
class HmmState:
    """Per-track sector filter state, k rows.

    posterior (k, S+1); t (k,) time of the posterior; reported (k,) sector
    index reported to the caller, -1 before the first; candidate (k,) the
    sector waiting out its hold time, -1 if none; candidate_since (k,) when
    it first crossed the threshold; evidence (k, S+1) W of eq. (11) and
    evidence_since (k, S+1) the last step at which it was 0; entered_at (k,)
    entry time of the reported sector, NaN before the first; anchor (k, 2)
    the recent position a of eq. (25), NaN before the first estimate.
    """

    posterior: FloatArray
    t: FloatArray
    reported: IntArray
    candidate: IntArray
    candidate_since: FloatArray
    evidence: FloatArray
    evidence_since: FloatArray
    entered_at: FloatArray
    anchor: FloatArray

    def take(self, rows: IntArray) -> HmmState:
        """The rows given, as a new state (copies)."""
        return HmmState(*(getattr(self, f.name)[rows] for f in fields(self)))

    def join(self, other: HmmState) -> HmmState:
        """This state's rows followed by `other`'s."""
        return HmmState(
            *(np.concatenate([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self))
        )

    def put(self, rows: IntArray, part: HmmState) -> None:
        """Overwrite the given rows in place with `part` (a wrapper's own bank only)."""
        for f in fields(self):
            getattr(self, f.name)[rows] = getattr(part, f.name)


@dataclass(frozen=True, eq=False)
class SectorUpdate:
    """Per track (k,): reported sector (-1 none yet, S outside), its posterior,
    this step's transition: entered / exited sector, -1 when none, and
    entered_at, when the shopper entered the reported sector (NaN before the
    first report; earlier than the step that reports an entry, by the hold
    time or more). On a step that reports an entry, qualified_at is when the
    new sector first met the threshold and margin, the start of the hold that
    this step completed (NaN on other steps): the time from the crossing to
    it is the positioning's, the time after it the hysteresis's."""

    sector: IntArray
    probability: FloatArray
    entered: IntArray
    exited: IntArray
    entered_at: FloatArray
    qualified_at: FloatArray


class SectorModel:
    """Store sectors: polygons, adjacency, entrances and the HMM of eq. (9).

    Args:
        polygons: S vertex arrays (n_i, 2), metres.
        adjacency: (S, S) bool, True where shoppers can walk directly from
            sector i to sector j; the diagonal is ignored.
        entrances: (S,) bool, sectors that connect to outside.
        cell_m: raster cell size of eq. (8).
        margin_m: raster margin around the polygons; a point beyond it
            counts as at the raster's edge.
        mean_dwell_s: tau of eq. (9), the mean time a shopper stays in a sector.
        samples_per_axis: q of eq. (8).
        floor: mixed into the probabilities so that no sector is ever ruled
            out outright; a poor estimate must not strand the filter.
    """

    def __init__(
        self,
        polygons: Sequence[ArrayLike],
        adjacency: ArrayLike,
        entrances: ArrayLike,
        *,
        cell_m: float = 0.25,
        margin_m: float = 1.0,
        mean_dwell_s: float = 10.0,
        samples_per_axis: int = 8,
        floor: float = 1e-3,
    ) -> None:
        s = len(polygons)
        adj = np.asarray(adjacency, dtype=bool)
        ent = np.asarray(entrances, dtype=bool)
        if s == 0 or adj.shape != (s, s) or ent.shape != (s,):
            raise ValueError(
                f"need S >= 1 polygons, adjacency (S, S) and entrances (S,); got {s}, {adj.shape}, {ent.shape}"
            )
        if mean_dwell_s <= 0.0 or not 0.0 <= floor < 1.0 or samples_per_axis < 1:
            raise ValueError(
                "mean_dwell_s must be positive, floor in [0, 1), samples_per_axis >= 1"
            )
        self.n_sectors = s
        self.outside = s
        self.entrances: NDArray[np.bool_] = ent.copy()
        self.raster = LabelRaster.build(polygons, cell_m, margin_m)
        self.mean_dwell_s = mean_dwell_s
        self.floor = floor
        a = np.zeros((s + 1, s + 1), dtype=bool)
        a[:s, :s] = adj
        a[s, :s] = a[:s, s] = ent  # outside <-> entrance sectors
        np.fill_diagonal(a, False)
        degree = a.sum(axis=1, keepdims=True)
        # N = D⁻¹ A; a sector with no way out keeps its mass.
        self.moves: FloatArray = np.where(degree > 0, a / np.maximum(degree, 1), np.eye(s + 1))
        # Depth of each raster cell: its distance (m) to the nearest cell of another
        # sector. Walls are not borders (tracks are clamped onto them), so cells
        # outside every polygon take the label of the nearest sector cell first.
        labels = self.raster.labels
        beyond = labels == s
        everywhere = np.ones(labels.shape, dtype=bool)
        _, near_r, near_c = nearest_cells(~beyond, everywhere)
        self.nearest_label: IntArray = labels[near_r, near_c].reshape(labels.shape)
        self.depth: FloatArray = np.zeros(labels.shape)
        for index in range(s):
            mine = self.nearest_label == index
            if mine.any():
                self.depth[mine] = nearest_cells(~mine, mine)[0] * cell_m
        self.max_depth: FloatArray = np.array(
            [self.depth[labels == i].max() if np.any(labels == i) else 0.0 for i in range(s)]
            + [0.0]
        )
        # Labels of eq. (8): beyond a wall is outside only where the nearest sector is an entrance.
        door = np.append(ent, False)[self.nearest_label]
        self.sample_labels: IntArray = np.where(beyond & ~door, self.nearest_label, labels)
        u = np.array(
            [NormalDist().inv_cdf((i + 0.5) / samples_per_axis) for i in range(samples_per_axis)]
        )
        self._nodes: FloatArray = np.stack(np.meshgrid(u, u), axis=-1).reshape(-1, 2)  # (J, 2)

    def label(self, xy: ArrayLike) -> IntArray:
        """Sector index under each (k, 2) point (S when outside) -> (k,)."""
        return self.raster.lookup(np.asarray(xy, dtype=np.float64).reshape(-1, 2))

    def _cells(self, p: FloatArray) -> tuple[IntArray, IntArray]:
        """Raster row and column of each (..., 2) point, clamped to the raster."""
        ras = self.raster
        ny, nx = ras.labels.shape
        ij = np.floor((p - ras.origin) / ras.cell)
        ix = np.clip(ij[..., 0], 0, nx - 1).astype(np.intp)
        iy = np.clip(ij[..., 1], 0, ny - 1).astype(np.intp)
        return iy, ix

    def depth_at(self, xy: ArrayLike) -> tuple[IntArray, FloatArray]:
        """Nearest sector to each (k, 2) point and its depth (m) in it -> (k,), (k,).

        Depth is the distance to the nearest cell of another sector; a point
        beyond the polygons (on a wall) counts as in the nearest sector.
        """
        iy, ix = self._cells(np.asarray(xy, dtype=np.float64).reshape(-1, 2))
        return self.nearest_label[iy, ix], self.depth[iy, ix]

    def likelihood(self, xy: ArrayLike, cov: ArrayLike) -> FloatArray:
        """Probability of each sector and of outside under N(xy, cov), eq. (8).

        xy (k, 2), cov (k, 2, 2) -> (k, S+1), rows summing to 1, floored.
        """
        mu = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        c = np.asarray(cov, dtype=np.float64).reshape(-1, 2, 2)
        k, n = mu.shape[0], self.n_sectors + 1
        # Closed-form Cholesky of each 2 x 2 covariance, L Lᵀ = cov.
        l00 = np.sqrt(np.maximum(c[:, 0, 0], 0.0))
        l10 = np.where(l00 > 0.0, c[:, 1, 0] / np.where(l00 > 0.0, l00, 1.0), 0.0)
        l11 = np.sqrt(np.maximum(c[:, 1, 1] - l10**2, 0.0))
        u0, u1 = self._nodes[:, 0], self._nodes[:, 1]
        points = np.stack(
            [mu[:, :1] + l00[:, None] * u0, mu[:, 1:] + l10[:, None] * u0 + l11[:, None] * u1],
            axis=-1,
        )
        iy, ix = self._cells(points)
        labels = self.sample_labels[iy, ix]  # (k, J)
        rows = np.arange(k)[:, None] * n
        counts = np.bincount((rows + labels).ravel(), minlength=k * n).reshape(k, n)
        p = counts / labels.shape[1]
        return np.asarray((1.0 - self.floor) * p + self.floor / n, dtype=np.float64)

    def predict(self, prior: FloatArray, dt: ArrayLike) -> FloatArray:
        """prior T(dt) of eq. (9) for k tracks: (k, S+1), dt scalar or (k,) -> (k, S+1)."""
        stay = np.exp(-np.maximum(np.asarray(dt, dtype=np.float64), 0.0) / self.mean_dwell_s)
        stay = np.broadcast_to(stay, prior.shape[:1])[:, None]
        return stay * prior + (1.0 - stay) * (prior @ self.moves)

    def initial(self, k: int, t: float) -> HmmState:
        """State of k new tracks at time t: uniform posterior, nothing reported."""
        n = self.n_sectors + 1
        none = np.full(k, -1, dtype=np.intp)
        return HmmState(
            np.full((k, n), 1.0 / n),
            np.full(k, float(t)),
            none,
            none.copy(),
            np.full(k, float(t)),
            np.zeros((k, n)),
            np.full((k, n), float(t)),
            np.full(k, np.nan),
            np.full((k, 2), np.nan),
        )


def change_evidence(
    state: HmmState, likelihood: FloatArray, t: float
) -> tuple[FloatArray, FloatArray]:
    """Eq. (11): W (k, S+1) and the last time each was 0, given this step's likelihood (8).

    Each sector is weighed against the most likely of the others, not only the
    reported one: a shopper who crosses a sector on the way to the next must
    not have the next dated from the moment they left the first.
    """
    top2 = np.partition(likelihood, -2, axis=1)[:, -2:]  # S + 1 >= 2 columns: a sector and outside
    first = top2[:, -1:]
    others = np.where(likelihood >= first, top2[:, :1], first)  # best of the other sectors
    step = np.clip(np.log(likelihood / others), -EVIDENCE_CLIP, EVIDENCE_CLIP)
    evidence = np.maximum(state.evidence + step, 0.0)
    return evidence, np.where(evidence > 0.0, state.evidence_since, t)


def hysteresis(
    state: HmmState,
    posterior: FloatArray,
    likelihood: FloatArray,
    t: float,
    threshold: float,
    hold_s: float,
    *,
    label: IntArray | None = None,
    depth: FloatArray | None = None,
    margin: FloatArray | None = None,
    walked: NDArray[np.bool_] | None = None,
    still_hold_s: float = np.inf,
) -> tuple[HmmState, SectorUpdate]:
    """Stages (c) and (d): switch the reported sector only after `hold_s` above
    `threshold`, and date the entry by the change point of eq. (11).

    With `label` and `depth` (k,) of the estimate's mean and `margin` (S+1,)
    per sector, the mean must also lie `margin` deep inside the new sector;
    with `walked` (k,), whether eq. (26) holds for the most probable sector,
    a change that fails it waits `still_hold_s` instead of `hold_s`
    (outside and a track's first sector are exempt from both).
    """
    k = posterior.shape[0]
    rows = np.arange(k)
    evidence, evidence_since = change_evidence(state, likelihood, t)
    best = np.argmax(posterior, axis=1)
    p_best = posterior[rows, best]
    strong = (best != state.reported) & (p_best >= threshold)
    if label is not None and depth is not None and margin is not None:
        exempt = (state.reported < 0) | (best == posterior.shape[1] - 1)
        deep = (label == best) & (depth >= margin[best])
        strong &= exempt | deep
    since = np.where(strong & (best != state.candidate), t, state.candidate_since)
    switch = strong & (t - since >= hold_s - WINDOW_SLACK_S)
    if walked is not None:
        unchecked = (state.reported < 0) | (best == posterior.shape[1] - 1)
        switch &= unchecked | walked | (t - since >= still_hold_s - WINDOW_SLACK_S)
    entered = np.where(switch, best, -1)
    exited = np.where(switch & (state.reported >= 0), state.reported, -1)
    reported = np.where(switch, best, state.reported)
    # The crossing: the change point of (11), never before the previous entry
    # nor after the candidate first qualified.
    crossed = np.minimum(evidence_since[rows, best], since)
    previous = np.where(np.isnan(state.entered_at), -np.inf, state.entered_at)
    entered_at = np.where(switch, np.maximum(crossed, previous), state.entered_at)
    candidate = np.where(strong & ~switch, best, -1)
    probability = np.where(reported >= 0, posterior[rows, np.maximum(reported, 0)], 0.0)
    # After a switch every run of evidence starts afresh: what came before dated the previous entry,
    # and kept, it dates the next one too early (false sector changes double without the reset).
    evidence = np.where(switch[:, None], 0.0, evidence)
    evidence_since = np.where(switch[:, None], t, evidence_since)
    new_state = HmmState(
        posterior,
        np.full(k, float(t)),
        reported,
        candidate,
        since,
        evidence,
        evidence_since,
        entered_at,
        state.anchor,
    )
    qualified_at = np.where(switch, since, np.nan)
    return new_state, SectorUpdate(reported, probability, entered, exited, entered_at.copy(), qualified_at)


def hmm_step(
    model: SectorModel,
    state: HmmState,
    xy: ArrayLike,
    cov: ArrayLike,
    t: float,
    *,
    threshold: float,
    hold_s: float,
    margin_m: float,
    walk_m: float,
    settle_s: float,
    still_hold_s: float,
    fingerprint_loglik: FloatArray | None = None,
    fingerprint_weight: float = 1.0,
) -> tuple[HmmState, SectorUpdate]:
    """One forward step, eqs. (8)-(10), then hysteresis and dating (11), for the k tracks of `state`.

    xy (k, 2) and cov (k, 2, 2) are the tracks' estimates at time t;
    threshold, hold_s, margin_m (0 for no spatial hysteresis), walk_m (0 for
    no walk test), settle_s of eqs. (25)-(26) and still_hold_s are stage
    (c)'s, passed by the caller: `SectorTracker` holds their defaults;
    fingerprint_loglik (k, S), ln L(s) of eq. (18), is fused into (8) by
    eq. (19) with `fingerprint_weight`.
    """
    p = model.likelihood(xy, cov)
    if fingerprint_loglik is not None:
        p = fuse(p, fingerprint_loglik, model.entrances, fingerprint_weight, model.floor)
    predicted = model.predict(state.posterior, t - state.t)
    joint = p * predicted  # p * (prior T(dt))
    posterior = joint / joint.sum(axis=1, keepdims=True)
    mean = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    anchor = np.where(np.isnan(state.anchor), mean, state.anchor)  # a track's first estimate is its anchor
    smoothing = 1.0 - np.exp(-np.maximum(t - state.t, 0.0) / settle_s)
    state = replace(state, anchor=anchor + smoothing[:, None] * (mean - anchor))  # eq. (25)
    if margin_m <= 0.0 and walk_m <= 0.0:
        return hysteresis(state, posterior, p, t, threshold, hold_s)
    label, depth = model.depth_at(mean)
    margin = np.minimum(margin_m, 0.5 * model.max_depth)
    walked = None
    if walk_m > 0.0:  # eq. (26), against the anchor before this window
        best = np.argmax(posterior, axis=1)
        anchor_label, anchor_depth = model.depth_at(anchor)
        settled = (anchor_label == best) & (anchor_depth >= margin[best])
        walked = settled | (np.hypot(*(mean - anchor).T) >= walk_m)
    return hysteresis(
        state, posterior, p, t, threshold, hold_s, label=label, depth=depth, margin=margin, walked=walked,
        still_hold_s=still_hold_s,
    )


class SectorTracker:
    """Sector filter states keyed by emitter id; a thin wrapper over `hmm_step`.

    Feed it each window's `TrackSnapshot` fields; call `forget` with the ids
    the tracker expired. margin_m is the spatial hysteresis of stage (c): it
    cuts the false sector changes of shoppers browsing near a border, at the
    price of entries missed on quick walks through a sector and a later
    decision (benchmarks/README.md, "Tuning evidence", has the figures).
    walk_m and settle_s are the walk test of eqs. (25)-(26): it cuts the
    false changes of still shoppers whose estimate drifts behind their body
    (benchmarks/README.md, 2026-12-05, "The walk test").

    With a `fingerprint`, each step also takes the window's readings and
    fuses their likelihood (18), phones' offsets of spread `offset_sigma_db`
    integrated out, into (8) by eq. (19).
    """

    def __init__(
        self,
        model: SectorModel,
        *,
        threshold: float = SECTOR_THRESHOLD,
        hold_s: float = SECTOR_HOLD_S,
        margin_m: float = SECTOR_MARGIN_M,
        walk_m: float = SECTOR_WALK_M,
        settle_s: float = SECTOR_SETTLE_S,
        still_hold_s: float = SECTOR_STILL_HOLD_S,
        fingerprint: Fingerprint | None = None,
        offset_sigma_db: float = 0.0,
        fingerprint_weight: float = 1.0,
    ) -> None:
        if not 0.5 < threshold <= 1.0 or hold_s < 0.0 or margin_m < 0.0 or walk_m < 0.0 or settle_s <= 0.0 \
                or still_hold_s < hold_s:
            raise ValueError(
                "threshold must be in (0.5, 1] (one sector at a time), hold_s, margin_m and walk_m >= 0, "
                "settle_s > 0, still_hold_s >= hold_s"
            )
        if fingerprint is not None and fingerprint.n_sectors != model.n_sectors:
            raise ValueError(
                f"the fingerprint has {fingerprint.n_sectors} sectors, the model {model.n_sectors}"
            )
        if offset_sigma_db < 0.0 or fingerprint_weight < 0.0:
            raise ValueError("offset_sigma_db and fingerprint_weight must be >= 0")
        self.model = model
        self.fingerprint = fingerprint
        self.offset_sigma_db = offset_sigma_db
        self.fingerprint_weight = fingerprint_weight
        self.threshold = threshold
        self.hold_s = hold_s
        self.margin_m = margin_m
        self.walk_m = walk_m
        self.settle_s = settle_s
        self.still_hold_s = still_hold_s
        self._rows = IdRows()
        self._state = model.initial(0, 0.0)

    def __len__(self) -> int:
        return len(self._rows)

    def step(
        self,
        t: float,
        emitter_ids: Sequence[str],
        xy: ArrayLike,
        cov: ArrayLike,
        readings: tuple[ArrayLike, ArrayLike, ArrayLike] | None = None,
    ) -> SectorUpdate:
        """Advance the k given tracks to time t with their estimates xy (k, 2), cov (k, 2, 2).

        readings: the window's (track_index (N,) into emitter_ids, receiver_index (N,), rssi (N,)),
        used by the fingerprint if there is one.
        """
        ids, rows, _ = self._rows.factorise(emitter_ids)
        if len(ids) != len(emitter_ids):
            raise ValueError("emitter_ids must be unique within a step")
        new = rows < 0
        if new.any():
            rows[new] = self._rows.add([ids[i] for i in np.flatnonzero(new)])
            self._state = self._state.join(self.model.initial(int(new.sum()), t))
        updated, out = hmm_step(
            self.model,
            self._state.take(rows),
            xy,
            cov,
            t,
            threshold=self.threshold,
            hold_s=self.hold_s,
            margin_m=self.margin_m,
            walk_m=self.walk_m,
            settle_s=self.settle_s,
            still_hold_s=self.still_hold_s,
            fingerprint_loglik=None if self.fingerprint is None or readings is None else self.fingerprint.loglik(
                *readings, len(ids), self.offset_sigma_db),
            fingerprint_weight=self.fingerprint_weight,
        )
        self._state.put(rows, updated)
        return out

    def forget(self, emitter_ids: Sequence[str]) -> None:
        """Drop the filter state of these emitters (unknown ids are ignored)."""
        _, rows, _ = self._rows.factorise(emitter_ids)
        dead = np.zeros(len(self._rows), dtype=bool)
        dead[rows[rows >= 0]] = True
        if dead.any():
            self._rows.drop(dead)
            self._state = self._state.take(np.flatnonzero(~dead))

    def state(self) -> tuple[list[str], HmmState]:
        """Ids and filter state of every emitter held, row-aligned (copies)."""
        return self._rows.ids, self._state.take(np.arange(len(self._rows)))
