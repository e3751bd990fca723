"""People inside from anonymous Wi-Fi probe requests: devices, dwell, fixtures, and a count.

Input: the probe requests of one receiver as arrays over N probes, each
reduced by `agent.probe_keys` to numbers and keyed pseudonyms (here as
integer codes): time t (s), RSSI z (dBm), MAC key m, element-signature key
s, 802.11 sequence number q (0..4095, -1 unknown) and the randomised-MAC
bit. Output: people inside per interval with an uncertainty, and entries.

(a) Devices. A randomised MAC follows a phone only until the phone draws a
new one. Every MAC key m is summarised by its first and last probe (t, q,
z, s). A MAC B that appears after MAC A went quiet continues A when both
are randomised, carry one element signature, and B's first probe follows
A's last in time, sequence and power:

    0 < t_B0 - t_A1 <= g,   1 <= (q_B0 - q_A1) mod 4096 <= q0 + rho (t_B0 - t_A1),
    |z_B0 - z_A1| <= dz                                                    (30)

Candidates are taken one-to-one, smallest sequence gap first (a phone's
next address is one address), and the devices are the connected components
of the MAC keys under the chosen links. Two phones whose signatures differ
are never joined; a global MAC is never joined to anything but itself.
The result depends only on the probes, not on the order they arrived in.

(b) Dwell. A device is inside from a probe to its next probe when they are
at most G apart, and for a hold h after its last probe of a stay:

    stay j of device d: [a_j, b_j + h],  a_j, b_j consecutive probes of d with gaps <= G   (31)

h = G gives the causal answer to "who is inside now" (seen in the last G);
a smaller h, the better answer once the next G has passed. Each stay keeps
the median RSSI of its probes, z_j.

(c) Fixtures. PCs, printers and tills probe all day: a device whose stays
add up to at least T_fix is a fixture, not a person,

    fixture(d) <=> sum_{j of d} (b_j + h - a_j) >= T_fix                   (32)

learnt from one stretch of probes and applied to another (the keys are
stable within a salt period).

(d) Outside. With one receiver the only cue is power: a stay whose median
RSSI is below a threshold theta is outside or far (the street, the next
room). A stay that two or more receivers hear is placed instead, by (41).

(e) Count. The mean number of people-stays inside over window [e_k, e_k+1)
is the integral of the step count divided by the width; with stays sorted,
the integral up to x is

    F(x) = sum_{a_j < x} (x - a_j) - sum_{c_j < x} (x - c_j),  c_j = b_j + h,
    n_k = (F(e_k+1) - F(e_k)) / (e_k+1 - e_k)                              (33)

one cumulative sum each over starts and ends, O((J + K) log J). Entries in
window k are the people-stays that start in it and last at least D: most
stays are one probe of an address heard once (a passer-by, or a phone's
new address that (30) could not join), which is no visit.

(f) People. Not everyone carries a phone that probes, and some carry two;
people are a linear function of counted devices, fitted by least squares on
windows with a known occupancy y (n windows, X = [n_k 1]):

    y_k = alpha n_k + beta + e_k,  beta_hat = (XᵀX)⁻¹ Xᵀy,
    s² = |y - X beta_hat|² / (n - 2)                                       (34)

and the estimate for a new window x0 = [n_0 1] carries the predictive
spread of ordinary least squares,

    sigma_0 = s sqrt(1 + x0ᵀ (XᵀX)⁻¹ x0)                                   (35)

Entries scale by the same alpha.

(g) Inside now. (31) with h < G knows a stay has ended only once G has
passed without a probe. Asked now, after a device has been silent for tau,
the chance that it is still inside is learnt from past silences s_i (the
time from probe i to its device's next probe, infinite after the last):

    S(tau) = 1 for tau < h,   #{i: tau < s_i <= G} / #{i: s_i > tau} for h <= tau <= G,   0 beyond   (36)

and the expected number inside at x is the sum over devices of S(x - t_d),
t_d the device's last probe before x; its mean over a window is taken on a
grid of step ``step_s``. This count is causal except for the power test of
(d), which uses the median of the whole stay.

(h) The live estimate. The agent asks every minute, at `now`, with the
receptions of the last W (every receiver's row for one transmission; BLE
rows and probes without a sequence number are grouped by their key alone).
It answers for x = now - L, a lead L that lets the next probes of a device
say whether it was still there. The devices of (30) over [now - W, now]
give stays (31) of first and last transmission a_j, b_j; a phone probes at
its own steady period, so the stay reaches half of it either side,

    p_j = min(h, (b_j - a_j) / (2 (u_j - 1))),   open over [a_j - p_j, b_j + p_j)   (37)

(p_j = h for a single burst), and is a person inside when

    keep_j <=> u_j >= u_min,  b_j - a_j >= w_min,  max_r z~_jr >= theta_r,  not fixed(d_j),
    fixed(d) <=> sum_j (c_j - a_j) >= T_fix  or  exists j of d: b_j - a_j >= T_still, sd_j <= sigma_still   (38)

u_j the bursts of the stay (transmissions more than a couple of seconds
apart; one burst alone is a passer-by or a new address (30) could not join),
w_min a shortest span (a passer-by is heard for a minute at most), z~_jr
the median power of the stay at receiver r and theta_r that receiver's
threshold (every receiver that hears it may vouch for it being inside), and
sd_j the spread of the stay's power at its loudest receiver, the
stationarity cue: a PC does not move, a shopper who stands at a counter
still turns and steps, so a long stay whose power barely varies is a
device. The count and the entries of the last interval I are

    n(x) = #{j kept: a_j - p_j <= x < b_j + p_j},
    e(x) = #{j kept, arriving: x - I <= a_j - p_j < x, b_j - a_j + 2 p_j >= D}   (39)

where a stay is arriving if it is its device's first in the window (a later
one is the visit split by a silence longer than G) and its first address
satisfies (30) with no other address at all (one that could continue a
look-alike's is a phone (30) left unjoined, not a new arrival); people follow from (34), alpha n +
beta, entries as alpha_e e (a visit split between two devices, or never
heard, scales otherwise than a device). If
each person carries a counted device with chance p = 1/alpha, the people
behind n devices exceed n by a negative binomial, so the spreads are

    sigma_n = sqrt(s^2 + alpha (alpha - 1) n),   sigma_e = sqrt(alpha_e |alpha_e - 1| e + alpha_e^2 e / 4)   (40)

s the residual spread of (34); the second term of sigma_e stands for stays
split or merged at the interval's edges. All of (37)-(40) depend on the set
of receptions only, not on their order.

(i) Outside by geometry. A stay j heard by two or more receivers R_j has a
median power z~_jr at each; over a grid of points g covering the store's
outline and a margin around it (the street), model (1) of
`positioning.pathloss` predicts mu_gr, and the stay is where

    g_j = argmin_g sum_{r in R_j} (z~_jr - mu_gr)^2 / sigma_r^2,   inside_j <=> g_j in the outline   (41)

which replaces the power threshold of (38) for it: a passer-by heard by the
entrance node and, faintly, by one further in is placed on the street
however loud the entrance node hears them, and a shopper at the back, faint
everywhere, inside. The nominal power of (1) is assumed (no per-phone
offset: two receivers could not tell it from distance). g_j also names a
sector. Per sector, the counted stays open at x are placed again by (41)
from their receptions within sector_recent_s / 2 of x (where the phone is
then, not where it went during the stay), and the store's count is split
as they fall, shrunk towards the sectors' floor areas A_k (shares of the
outline) by lambda devices' worth:

    people_k(x) = count(x) (l_k + lambda A_k) / (l + lambda),   l_k placed in sector k, l = sum_k l_k   (42)

reported only where l > 0: where the receivers place someone at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from positioning.geometry import points_in_polygon
from positioning.pathloss import DEFAULT_EMITTER_Z, rssi_at_distance, slant_distance

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]
BoolArray = NDArray[np.bool_]

SEQUENCE_MODULUS = 4096

WALL_LOSS_DB = 16.0
"""The outer wall's loss in (41) when a store has not measured its own (benchmarks/README.md, 2026-12-05)."""


@dataclass(frozen=True)
class LinkConfig:
    """Bounds of eq. (30) for joining a new randomised MAC to the one a phone dropped.

    gap_s: g, longest silence between the old address's last probe and the new one's first.
    seq_slack: q0, sequence numbers a phone may spend unheard (other channels, lost frames).
    seq_rate_per_s: rho, sequence numbers a probing phone spends per second at most.
    rssi_step_db: dz, largest power jump between the two probes.
    """

    gap_s: float = 120.0
    seq_slack: int = 64
    seq_rate_per_s: float = 4.0
    rssi_step_db: float = 15.0


@dataclass(frozen=True)
class Stays:
    """Eq. (31): J stays, each of one device: device (J,), start a (J,), end c = b + h (J,) s,
    median RSSI z (J,) dBm, probes (J,)."""

    device: IntArray
    start: FloatArray
    end: FloatArray
    rssi_dbm: FloatArray
    probes: IntArray
    of_probe: IntArray
    """The stay (index into the arrays above) of each input probe (N,)."""


@dataclass(frozen=True)
class OccupancyFit:
    """Eq. (34): people = alpha devices + beta, with (XᵀX)⁻¹ and s for eq. (35)."""

    alpha: float
    beta: float
    xtx_inv: FloatArray
    s: float


def _as(values: ArrayLike, dtype: type) -> NDArray[np.generic]:
    return np.asarray(values, dtype=dtype).ravel()


def group_devices(t: ArrayLike, mac: ArrayLike, signature: ArrayLike, sequence: ArrayLike,
                  rssi_dbm: ArrayLike, randomised: ArrayLike,
                  config: LinkConfig = LinkConfig()) -> IntArray:
    """Device label (N,) of each probe, eq. (30); labels are 0..D-1 in order of first appearance.

    t (N,) s, mac and signature (N,) integer keys, sequence (N,) 0..4095 or
    -1, rssi_dbm (N,), randomised (N,) bool. A MAC key is one device
    whatever else its probes say.
    """
    t_ = np.asarray(_as(t, float), dtype=np.float64)
    mac_ = np.asarray(_as(mac, np.int64))
    sig_ = np.asarray(_as(signature, np.int64))
    seq_ = np.asarray(_as(sequence, np.int64))
    z_ = np.asarray(_as(rssi_dbm, float), dtype=np.float64)
    rnd_ = np.asarray(_as(randomised, bool))
    n = t_.size
    if not all(a.size == n for a in (mac_, sig_, seq_, z_, rnd_)):
        raise ValueError("probe arrays differ in length")
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    order, node, first, last = _mac_ends(t_, mac_, sig_, seq_, z_)
    node_sorted = node[order]
    m = first.size
    a_idx, b_idx = _link_candidates(t_, sig_, seq_, z_, rnd_, first, last, config)
    links = _one_to_one(a_idx, b_idx, (seq_[first[b_idx]] - seq_[last[a_idx]]) % SEQUENCE_MODULUS,
                        t_[first[b_idx]] - t_[last[a_idx]])
    graph = coo_matrix((np.ones(links.shape[0]), (links[:, 0], links[:, 1])), shape=(m, m))
    _, component = connected_components(graph, directed=False)
    # Number devices by first appearance in the canonical order.
    seen_order = component[node_sorted]
    _, first_pos = np.unique(seen_order, return_index=True)
    rank = np.empty(first_pos.size, dtype=np.intp)
    rank[np.argsort(first_pos, kind="stable")] = np.arange(first_pos.size)
    labels: IntArray = rank[np.unique(seen_order, return_inverse=True)[1]][np.argsort(order)]
    return labels


def _mac_ends(t: FloatArray, mac: NDArray[np.int64], sig: NDArray[np.int64], seq: NDArray[np.int64],
              z: FloatArray) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """A canonical order of the probes (N,) that depends on the probes only, so arrival order cannot
    matter; the MAC table index of each probe (N,); the first and last probe of each MAC (M,)."""
    order = np.lexsort((z, seq, sig, mac, t)).astype(np.intp)
    _, node = np.unique(mac, return_inverse=True)
    node_sorted = node[order]
    _, first_at = np.unique(node_sorted, return_index=True)
    _, last_from_end = np.unique(node_sorted[::-1], return_index=True)
    return order, node.astype(np.intp), order[first_at], order[node_sorted.size - 1 - last_from_end]


def continues(t: ArrayLike, mac: ArrayLike, signature: ArrayLike, sequence: ArrayLike, rssi_dbm: ArrayLike,
              randomised: ArrayLike, config: LinkConfig = LinkConfig()) -> BoolArray:
    """Probes (N,) whose MAC could continue another one by eq. (30), chosen as its successor or not.

    The one-to-one choice of (30) leaves a phone's new address unjoined
    when a look-alike took its place; such an address is still no new
    arrival, which is what the entries of (39) need to know.
    """
    t_ = np.asarray(_as(t, float), dtype=np.float64)
    mac_, sig_, seq_ = (np.asarray(_as(v, np.int64)) for v in (mac, signature, sequence))
    z_ = np.asarray(_as(rssi_dbm, float), dtype=np.float64)
    rnd_ = np.asarray(_as(randomised, bool))
    if not all(a.size == t_.size for a in (mac_, sig_, seq_, z_, rnd_)):
        raise ValueError("probe arrays differ in length")
    if t_.size == 0:
        return np.zeros(0, dtype=bool)
    _, node, first, last = _mac_ends(t_, mac_, sig_, seq_, z_)
    _, b_idx = _link_candidates(t_, sig_, seq_, z_, rnd_, first, last, config)
    successor = np.zeros(first.size, dtype=bool)
    successor[b_idx] = True
    result: BoolArray = successor[node]
    return result


_PAIRS_PER_BLOCK = 65_536
"""Candidate pairs of eq. (30) checked at once (about 5 MB of temporaries)."""


def _link_candidates(t: FloatArray, sig: NDArray[np.int64], seq: NDArray[np.int64], z: FloatArray,
                     rnd: BoolArray, first: IntArray, last: IntArray,
                     config: LinkConfig) -> tuple[IntArray, IntArray]:
    """MAC pairs (A, B) that satisfy eq. (30), as index arrays into the MAC table.

    Only MACs of one signature can link, so the search runs per signature:
    starts sorted by (signature, time) on one axis, signature rank times a
    span longer than the times, and each end looks up the starts within g
    after it in its own signature's block (a busy street's thousands of
    addresses no longer pair with every other model's). The bounds are
    widened by a margin and checked exactly afterwards.
    """
    usable = np.flatnonzero(rnd[first] & (seq[first] >= 0) & (seq[last] >= 0))
    if usable.size == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty
    t_first, t_last = t[first[usable]], t[last[usable]]
    origin = float(t_first.min())
    margin = 1e-6 * (1.0 + float(t_last.max()) - origin)
    span = float(t_last.max()) - origin + config.gap_s + 4.0 * margin + 1.0
    _, rank = np.unique(np.r_[sig[first[usable]], sig[last[usable]]], return_inverse=True)
    start_key = rank[:usable.size] * span + (t_first - origin)
    end_key = rank[usable.size:] * span + (t_last - origin)
    by_key = np.argsort(start_key, kind="stable")
    starts, start_sorted = usable[by_key], start_key[by_key]
    lo = np.searchsorted(start_sorted, end_key - margin, side="left")
    hi = np.searchsorted(start_sorted, end_key + config.gap_s + margin, side="right")
    # Pairs are checked a block of ends at a time, so memory stays bounded on a busy street.
    bounds = np.searchsorted(np.cumsum(hi - lo), np.arange(_PAIRS_PER_BLOCK, int((hi - lo).sum()),
                                                           _PAIRS_PER_BLOCK), side="left")
    found_a: list[IntArray] = []
    found_b: list[IntArray] = []
    # Per MAC, its first and last probe's fields; the sequence test first, which few pairs pass
    # (it implies dq <= q0 + rho g), then the rest on those.
    q_first, q_last, t_first_all, t_last_all = seq[first], seq[last], t[first], t[last]
    most = config.seq_slack + max(config.seq_rate_per_s * config.gap_s, 0.0)
    for block in np.split(np.arange(usable.size), bounds + 1):
        owner, within = _ragged(hi[block] - lo[block])
        a = usable[block[owner]]
        b = starts[lo[block][owner] + within]
        dq = (q_first[b] - q_last[a]) % SEQUENCE_MODULUS
        near = (dq >= 1) & (dq <= most)
        a, b, dq = a[near], b[near], dq[near]
        dt = t_first_all[b] - t_last_all[a]
        ok = ((a != b) & (sig[last[a]] == sig[first[b]]) & (dt > 0.0) & (dt <= config.gap_s)
              & (dq <= config.seq_slack + config.seq_rate_per_s * dt)
              & (np.abs(z[first[b]] - z[last[a]]) <= config.rssi_step_db))
        found_a.append(a[ok])
        found_b.append(b[ok])
    return np.concatenate(found_a).astype(np.intp), np.concatenate(found_b).astype(np.intp)


def _ragged(count: IntArray) -> tuple[IntArray, IntArray]:
    """Runs of the given lengths (R,) flattened: the run of each element and its place in the run."""
    owner = np.repeat(np.arange(count.size), count)
    place = np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count)
    return owner.astype(np.intp), place.astype(np.intp)


def _one_to_one(a: IntArray, b: IntArray, dq: NDArray[np.int64], dt: FloatArray) -> IntArray:
    """Links (L, 2) chosen greedily by smallest sequence gap, then time gap: each A once, each B once.

    The greedy pass over the sorted pairs is done in rounds: a pair that is
    the first remaining pair of its A and of its B would be taken by the
    pass whenever it reached it, so every such pair of a round is taken at
    once and the pairs sharing their A or B are dropped. The order being
    strict (ties broken by A, then B), this is the same matching as the pass,
    in a few rounds (12 for 2.5 million pairs) instead of a loop over pairs.
    """
    order = np.lexsort((b, a, dt, dq))
    a_s, b_s, rank = a[order], b[order], np.arange(order.size)
    size = int(max(a.max(initial=-1), b.max(initial=-1))) + 1
    chosen: list[IntArray] = []
    while a_s.size:
        first_a = np.unique(a_s, return_index=True)[1]
        first_b = np.unique(b_s, return_index=True)[1]
        taken = np.intersect1d(first_a, first_b, assume_unique=True)
        chosen.append(rank[taken])
        used_a = np.zeros(size, dtype=bool)
        used_b = np.zeros(size, dtype=bool)
        used_a[a_s[taken]] = True
        used_b[b_s[taken]] = True
        rest = ~(used_a[a_s] | used_b[b_s])
        a_s, b_s, rank = a_s[rest], b_s[rest], rank[rest]
    picked = order[np.sort(np.concatenate(chosen))] if chosen else np.zeros(0, dtype=np.intp)
    return np.column_stack([a[picked], b[picked]]).astype(np.intp).reshape(-1, 2)


def stays(t: ArrayLike, device: ArrayLike, rssi_dbm: ArrayLike, gap_s: float, hold_s: float) -> Stays:
    """Eq. (31): the stays of every device, sorted by device then start.

    gap_s is G, the longest silence within one stay; hold_s is h. The
    median RSSI of a stay is that of its probes.
    """
    if not gap_s > 0.0 or not hold_s >= 0.0:
        raise ValueError("the dwell gap must be positive and the hold not negative")
    t_ = np.asarray(_as(t, float), dtype=np.float64)
    d_ = np.asarray(_as(device, np.int64))
    z_ = np.asarray(_as(rssi_dbm, float), dtype=np.float64)
    if not (d_.size == t_.size == z_.size):
        raise ValueError("probe arrays differ in length")
    if t_.size == 0:
        empty, none = np.zeros(0), np.zeros(0, dtype=np.intp)
        return Stays(none, empty, empty, empty, none, none)
    order = np.lexsort((t_, d_))
    ts, ds = t_[order], d_[order]
    new = np.ones(ts.size, dtype=bool)
    new[1:] = (ds[1:] != ds[:-1]) | (ts[1:] - ts[:-1] > gap_s)
    stay = np.cumsum(new) - 1
    begin = np.flatnonzero(new)
    finish = np.r_[begin[1:], ts.size] - 1
    # Median RSSI per stay: sort by (stay, rssi), which keeps each stay's block, and take the middle.
    zs = z_[order][np.lexsort((z_[order], stay))]
    lo_mid = begin + (finish - begin) // 2
    hi_mid = begin + (finish - begin + 1) // 2
    return Stays(device=ds[begin].astype(np.intp), start=ts[begin], end=ts[finish] + hold_s,
                 rssi_dbm=0.5 * (zs[lo_mid] + zs[hi_mid]), probes=(finish - begin + 1).astype(np.intp),
                 of_probe=stay[np.argsort(order)].astype(np.intp))


def fixtures(found: Stays, min_present_s: float) -> IntArray:
    """Eq. (32): devices present at least ``min_present_s`` in total over ``found``, sorted."""
    if found.device.size == 0:
        return np.zeros(0, dtype=np.intp)
    total = np.bincount(found.device, weights=found.end - found.start)
    return np.flatnonzero(total >= min_present_s).astype(np.intp)


def people_stays(found: Stays, fixed: ArrayLike, min_rssi_dbm: float) -> BoolArray:
    """Stays (J,) that count as a person inside: not a fixture (32), not outside by power."""
    fixed_ = np.asarray(_as(fixed, np.int64))
    keep: BoolArray = ~np.isin(found.device, fixed_) & (found.rssi_dbm >= min_rssi_dbm)
    return keep


def mean_count(start: ArrayLike, end: ArrayLike, edges: ArrayLike) -> FloatArray:
    """Eq. (33): mean number of intervals [start, end) open over each window of ``edges`` (K+1,) -> (K,)."""
    a = np.sort(np.asarray(_as(start, float), dtype=np.float64))
    c = np.sort(np.asarray(_as(end, float), dtype=np.float64))
    e = np.asarray(_as(edges, float), dtype=np.float64)
    if e.size < 2 or np.any(np.diff(e) <= 0.0):
        raise ValueError("window edges must be at least two and strictly increasing")
    if a.size != c.size:
        raise ValueError("starts and ends differ in length")

    def integral(x: FloatArray, points: FloatArray) -> FloatArray:
        k = np.searchsorted(points, x, side="left")
        cum = np.r_[0.0, np.cumsum(points)]
        return np.asarray(k * x - cum[k], dtype=np.float64)

    f = integral(e, a) - integral(e, c)
    result: FloatArray = np.diff(f) / np.diff(e)
    return result


def entries(found: Stays, keep: ArrayLike, edges: ArrayLike, min_stay_s: float) -> FloatArray:
    """Kept stays (J,) of at least ``min_stay_s`` (D) that begin in each window of ``edges`` (K+1,) -> (K,)."""
    e = np.asarray(_as(edges, float), dtype=np.float64)
    visit = np.asarray(_as(keep, bool)) & (found.end - found.start >= min_stay_s)
    counts, _ = np.histogram(found.start[visit], bins=e)
    return counts.astype(np.float64)


def silences(t: ArrayLike, device: ArrayLike) -> FloatArray:
    """s_i of eq. (36): seconds from each probe (N,) to its device's next probe, inf after the last."""
    t_ = np.asarray(_as(t, float), dtype=np.float64)
    d_ = np.asarray(_as(device, np.int64))
    if t_.size != d_.size:
        raise ValueError("probe arrays differ in length")
    order = np.lexsort((t_, d_))
    ts, ds = t_[order], d_[order]
    after = np.full(ts.size, np.inf)
    same = ds[1:] == ds[:-1]
    after[:-1][same] = (ts[1:] - ts[:-1])[same]
    result: FloatArray = np.empty_like(after)
    result[order] = after
    return result


def still_inside(past: ArrayLike, gap_s: float, hold_s: float, tau: ArrayLike) -> FloatArray:
    """Eq. (36): S(tau) (M,) from past silences s_i (any shape); 1 where no silence is that long yet."""
    s = np.sort(np.asarray(_as(past, float), dtype=np.float64))
    tau_ = np.asarray(_as(tau, float), dtype=np.float64)
    within = s[s <= gap_s]
    longer = s.size - np.searchsorted(s, tau_, side="right")
    ended_later = within.size - np.searchsorted(within, tau_, side="right")
    survival = np.where(longer > 0, ended_later / np.maximum(longer, 1), 0.0)
    result: FloatArray = np.where(tau_ < hold_s, 1.0, np.where(tau_ > gap_s, 0.0, survival))
    return result


def expected_count(t: ArrayLike, device: ArrayLike, edges: ArrayLike, past: ArrayLike,
                   gap_s: float, hold_s: float, step_s: float = 10.0) -> FloatArray:
    """Eq. (36): mean expected number of devices inside per window of ``edges`` (K+1,) -> (K,).

    t, device (N,) are the probes to count (people's, already filtered);
    ``past`` the silences S is learnt from. Each probe carries S(x - t_i)
    until its device's next probe or G, sampled every ``step_s``.
    """
    t_ = np.asarray(_as(t, float), dtype=np.float64)
    e = np.asarray(_as(edges, float), dtype=np.float64)
    if e.size < 2 or np.any(np.diff(e) <= 0.0):
        raise ValueError("window edges must be at least two and strictly increasing")
    if not step_s > 0.0:
        raise ValueError("the sampling step must be positive")
    tau = np.arange(0.0, gap_s + step_s, step_s)
    survival = still_inside(past, gap_s, hold_s, tau)
    reach = np.minimum(silences(t_, device), gap_s + step_s)
    probe, offset = _ragged(np.ceil(reach / step_s).astype(np.intp))
    weight = survival[np.minimum(offset, tau.size - 1)] * step_s
    area, _ = np.histogram(t_[probe] + offset * step_s, bins=e, weights=weight)
    result: FloatArray = area / np.diff(e)
    return result


def fit_occupancy(devices: ArrayLike, people: ArrayLike) -> OccupancyFit:
    """Eq. (34) from n >= 3 windows: counted devices (n,) and known people (n,)."""
    x = np.asarray(_as(devices, float), dtype=np.float64)
    y = np.asarray(_as(people, float), dtype=np.float64)
    if x.size != y.size or x.size < 3:
        raise ValueError("need at least three windows with both a device count and an occupancy")
    design = np.column_stack([x, np.ones_like(x)])
    gram = design.T @ design
    if np.linalg.cond(gram) > 1e12:
        raise ValueError("the device counts do not vary over the fitting windows; cannot fit a slope")
    xtx_inv: FloatArray = np.asarray(np.linalg.inv(gram), dtype=np.float64)
    beta = xtx_inv @ design.T @ y
    residual = y - design @ beta
    s = float(np.sqrt(residual @ residual / (x.size - 2)))
    return OccupancyFit(alpha=float(beta[0]), beta=float(beta[1]), xtx_inv=xtx_inv, s=s)


def predict_occupancy(fit: OccupancyFit, devices: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Eqs. (34)-(35): people (K,) for counted devices (K,), not below zero, and their sigma (K,)."""
    x = np.asarray(_as(devices, float), dtype=np.float64)
    design = np.column_stack([x, np.ones_like(x)])
    mean = np.maximum(0.0, fit.alpha * x + fit.beta)
    sigma = fit.s * np.sqrt(1.0 + np.einsum("ki,ij,kj->k", design, fit.xtx_inv, design))
    return mean, sigma


@dataclass(frozen=True, eq=False)
class Outline:
    """The grid of (41): model (1)'s power at each point for each receiver, and where each point is.

    predicted (G, m) dBm, weight (m,) 1/sigma_r^2, inside (G,) in the store's
    outline, sector (G,) the sector polygon holding each point (the number of
    polygons for none), area (S,) each sector's share of the points in
    sectors (A_k of 42). Built once per site by `Outline.of`; receiver r is
    the receiver code r of the rows `estimate_occupancy` takes.
    """

    predicted: FloatArray
    weight: FloatArray
    inside: BoolArray
    sector: IntArray
    sectors: int
    area: FloatArray

    @classmethod
    def of(cls, receivers_xyz: ArrayLike, rssi_at_1m: ArrayLike, exponent: ArrayLike, sigma_db: ArrayLike,
           outline: ArrayLike, polygons: tuple[ArrayLike, ...] = (), *, cell_m: float = 1.0,
           margin_m: float = 10.0, emitter_z: float = DEFAULT_EMITTER_Z, wall_loss_db: float = WALL_LOSS_DB) -> Outline:
        """The grid over the outline's box grown by ``margin_m`` (the street must be on it), ``cell_m`` apart.

        ``wall_loss_db``: what the outer wall takes from a point outside to every receiver (all are inside).
        """
        if not (cell_m > 0.0 and margin_m >= 0.0 and wall_loss_db >= 0.0):
            raise ValueError("the grid's cell must be positive, its margin and the wall's loss not negative")
        xyz = np.asarray(receivers_xyz, dtype=np.float64).reshape(-1, 3)
        m = xyz.shape[0]
        a, n, sd = (np.broadcast_to(np.asarray(v, dtype=np.float64), (m,)) for v in (rssi_at_1m, exponent, sigma_db))
        if m == 0 or not (np.all(np.isfinite(xyz)) and np.all(n > 0.0) and np.all(sd > 0.0)):
            raise ValueError("receivers need finite positions, positive exponents and positive sigma")
        shape = np.asarray(outline, dtype=np.float64).reshape(-1, 2)
        lo, hi = shape.min(axis=0) - margin_m, shape.max(axis=0) + margin_m
        xs = np.arange(lo[0] + cell_m / 2.0, hi[0], cell_m)
        ys = np.arange(lo[1] + cell_m / 2.0, hi[1], cell_m)
        grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        inside = points_in_polygon(grid, shape)
        predicted = rssi_at_distance(slant_distance(grid, xyz, emitter_z), a, n) - np.where(
            inside, 0.0, wall_loss_db)[:, None]
        sector = np.full(grid.shape[0], len(polygons), dtype=np.intp)
        for index, polygon in reversed(list(enumerate(polygons))):  # the first listed wins an overlap
            sector[points_in_polygon(grid, polygon)] = index
        for array in (predicted, sector):
            array.flags.writeable = False
        weight = 1.0 / sd ** 2
        weight.flags.writeable = False
        inside.flags.writeable = False
        cells = np.bincount(sector, minlength=len(polygons) + 1)[:len(polygons)].astype(np.float64)
        area = cells / max(cells.sum(), 1.0)
        area.flags.writeable = False
        return cls(predicted, weight, inside, sector, len(polygons), area)

    def place(self, cell_stay: IntArray, cell_rx: IntArray, median: FloatArray, stays_n: int) -> IntArray:
        """Eq. (41): the grid point (J,) of each stay from its (stay, receiver) medians; -1 if under two receivers."""
        m = self.weight.size
        if cell_rx.size and cell_rx.max() >= m:
            raise ValueError(f"receiver code outside the {m} receivers of the outline's grid")
        heard_by = np.bincount(cell_stay, minlength=stays_n)
        placed = np.flatnonzero(heard_by >= 2)
        where = np.full(stays_n, -1, dtype=np.intp)
        if placed.size == 0:
            return where
        row = np.full(stays_n, -1, dtype=np.intp)
        row[placed] = np.arange(placed.size)
        use = row[cell_stay] >= 0
        heard = np.zeros((placed.size, m))
        level = np.zeros((placed.size, m))
        heard[row[cell_stay[use]], cell_rx[use]] = self.weight[cell_rx[use]]
        level[row[cell_stay[use]], cell_rx[use]] = median[use]
        # sum_r w (z - mu)^2 = sum_r w z^2 - 2 (w z) . mu + w . mu^2, in blocks of stays to bound the (block, G) cost.
        mu, mu2 = self.predicted.T, (self.predicted ** 2).T
        block = max(1, (1 << 22) // max(self.predicted.shape[0], 1))
        best = np.empty(placed.size, dtype=np.intp)
        for lo in range(0, placed.size, block):
            h, z = heard[lo:lo + block], level[lo:lo + block]
            cost = ((h * z * z).sum(axis=1)[:, None] - 2.0 * (h * z) @ mu + h @ mu2)
            best[lo:lo + block] = np.argmin(cost, axis=1)
        where[placed] = best
        return where


@dataclass(frozen=True)
class EstimateConfig:
    """Parameters of eqs. (37)-(40); the benchmark fits them on one simulated day (benchmarks/footfall.py).

    window_s: W, the history an estimate looks at.
    lead_s: L, how far behind ``now`` the count is taken.
    interval_s: I, the interval the entries are counted over, ending at now - L.
    gap_s, hold_s: G of eq. (31) and h, the most a stay reaches beyond its probes (37).
    min_bursts, burst_s: u_min of (38), and the silence that separates two bursts.
    min_span_s: w_min of (38).
    min_rssi_dbm: theta, one threshold for every receiver, or one per receiver code.
    fixture_s: T_fix of (32) and (38); still_s, still_sd_db: T_still and sigma_still of (38).
    visit_s: D of (39).
    people_per_device, people_offset, residual_sd: alpha, beta and s of (34), (40).
    people_per_entry: alpha_e of (39)-(40).
    outline: the grid of (41), or None for the power threshold alone.
    sector_recent_s, sector_prior_devices: the receptions (42) places a stay by, and lambda.
    """

    link: LinkConfig = LinkConfig()
    window_s: float = 7200.0
    lead_s: float = 120.0
    interval_s: float = 3600.0
    gap_s: float = 300.0
    hold_s: float = 60.0
    min_bursts: int = 2
    burst_s: float = 2.0
    min_span_s: float = 0.0
    min_rssi_dbm: float | tuple[float, ...] = -85.0
    fixture_s: float = 2700.0
    still_s: float = 900.0
    still_sd_db: float = 2.0
    visit_s: float = 120.0
    people_per_device: float = 1.0
    people_offset: float = 0.0
    residual_sd: float = 0.0
    people_per_entry: float = 1.0
    outline: Outline | None = None
    sector_recent_s: float = 60.0
    sector_prior_devices: float = 10.0

    def __post_init__(self) -> None:
        for name in ("window_s", "gap_s", "interval_s", "fixture_s", "still_s", "people_per_device",
                     "people_per_entry"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lead_s", "hold_s", "still_sd_db", "visit_s", "residual_sd", "burst_s", "min_span_s",
                     "sector_recent_s", "sector_prior_devices"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.lead_s >= self.window_s:
            raise ValueError("the lead must be shorter than the window")

    def threshold(self, receiver: IntArray) -> FloatArray:
        """theta_r of (38) for receiver codes (M,)."""
        if isinstance(self.min_rssi_dbm, tuple):
            table = np.asarray(self.min_rssi_dbm, dtype=np.float64)
            if receiver.size and (receiver.min() < 0 or receiver.max() >= table.size):
                raise ValueError(f"receiver code outside the {table.size} thresholds given")
            return np.asarray(table[receiver], dtype=np.float64)
        return np.full(receiver.size, float(self.min_rssi_dbm))


@dataclass(frozen=True)
class OccupancyEstimate:
    """Eqs. (37)-(40) at time ``at`` = now - L: people inside and entries over [at - I, at).

    devices, stationary and outside are the anonymous devices behind the
    figures (counted, set aside as fixtures, heard only from outside); only
    counts, never a device, leave the store.
    """

    at: float
    count: float
    count_sd: float
    entries: float
    entries_sd: float
    devices: int
    stationary: int
    outside: int
    sectors: tuple[float, ...] | None = None
    """People per sector of (42) (the outline's polygons' order), or None where no counted device was placed."""
    located: int = 0
    """l of (42): counted devices placed in a sector from their receptions around ``at``."""


def placed_per_sector(outline: Outline, stay: IntArray, t: FloatArray, rssi_dbm: FloatArray, receiver: IntArray,
                      at: float, recent_s: float) -> IntArray:
    """l_k of (42), (S,): the given rows of counted stays within ``recent_s`` / 2 of ``at``, placed by (41) from
    their medians there where two or more receivers heard them."""
    near = np.abs(t - at) <= recent_s / 2.0
    stay, z, rx = stay[near], rssi_dbm[near], receiver[near]
    if stay.size == 0:
        return np.zeros(outline.sectors, dtype=np.intp)
    m = int(outline.weight.size)
    cell = stay.astype(np.int64) * m + rx
    _, begin, z_sorted = _group_sorted(cell, z)
    cells = np.unique(cell)
    median = _quantile_in_runs(z_sorted, begin, 0.5)
    cell_stay = (cells // m).astype(np.intp)
    _, code = np.unique(cell_stay, return_inverse=True)
    placed = outline.place(code.astype(np.intp), (cells % m).astype(np.intp), median, int(code.max()) + 1)
    sector = outline.sector[placed[placed >= 0]]
    return np.bincount(sector[sector < outline.sectors], minlength=outline.sectors).astype(np.intp)


def _group_sorted(keys: NDArray[np.int64], values: FloatArray) -> tuple[IntArray, IntArray, FloatArray]:
    """Rows sorted by (key, value): the order, the start of each key's run, and the values sorted."""
    order = np.lexsort((values, keys))
    sorted_keys = keys[order]
    begin = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return order.astype(np.intp), begin.astype(np.intp), values[order]


def _quantile_in_runs(sorted_values: FloatArray, begin: IntArray, q: float) -> FloatArray:
    """The q-quantile (lower/upper mean) of each run of sorted values starting at ``begin``."""
    size = np.r_[begin[1:], sorted_values.size] - begin
    pos = q * (size - 1)
    lo, hi = begin + np.floor(pos).astype(np.intp), begin + np.ceil(pos).astype(np.intp)
    result: FloatArray = 0.5 * (sorted_values[lo] + sorted_values[hi])
    return result


@dataclass(frozen=True)
class StayVerdicts:
    """Eqs. (37)-(38) over one window of receptions: the devices, their stays and what each stay is.

    device (N,) of each reception row kept in the window (``rows``, indexes
    into the caller's arrays); found, the stays (31) reaching p_j either side (37); bursts (J,) u_j;
    inside (J,) placed in the outline by (41), or where it is not placed
    heard at or above a receiver's threshold; fixed (D,) the stationary
    devices; keep (J,) the people-stays; arrival (J,) the stays that may be
    an entry of (39); placed (J,) the grid point of (41), -1 for a stay not
    placed (one receiver, or no outline).
    """

    rows: IntArray
    device: IntArray
    found: Stays
    bursts: IntArray
    inside: BoolArray
    fixed: BoolArray
    keep: BoolArray
    arrival: BoolArray
    placed: IntArray


def classify_stays(t: ArrayLike, mac: ArrayLike, signature: ArrayLike, sequence: ArrayLike,
                   randomised: ArrayLike, rssi_dbm: ArrayLike, receiver: ArrayLike, now: float, *,
                   config: EstimateConfig = EstimateConfig()) -> StayVerdicts:
    """Eqs. (30), (31), (37), (38) over the receptions in [now - W, now]; arrays as `estimate_occupancy` takes them."""
    t_ = np.asarray(_as(t, float), dtype=np.float64)
    columns = [np.asarray(_as(v, np.int64)) for v in (mac, signature, sequence, receiver)]
    rnd_ = np.asarray(_as(randomised, bool))
    z_ = np.asarray(_as(rssi_dbm, float), dtype=np.float64)
    if not all(c.size == t_.size for c in (*columns, rnd_, z_)):
        raise ValueError("reception arrays differ in length")
    if not np.all(np.isfinite(z_)) or not np.all(np.isfinite(t_)) or not np.isfinite(now):
        raise ValueError("times and powers must be finite")
    rows = np.flatnonzero((t_ >= now - config.window_s) & (t_ <= now)).astype(np.intp)
    t_, z_, rnd_ = t_[rows], z_[rows], rnd_[rows]
    mac_, sig_, seq_, rx_ = (c[rows] for c in columns)
    device = group_devices(t_, mac_, sig_, seq_, z_, rnd_, config.link)
    heard = stays(t_, device, z_, config.gap_s, 0.0)
    stay = heard.of_probe
    count_j = heard.device.size
    if count_j == 0:
        none = np.zeros(0, dtype=bool)
        nowhere = np.zeros(0, dtype=np.intp)
        return StayVerdicts(rows, device, heard, nowhere, none, none, none, none, nowhere)
    # u_j: bursts of each stay, transmissions more than burst_s apart.
    order = np.lexsort((t_, stay))
    ts, ss = t_[order], stay[order]
    new_burst = np.r_[True, (ss[1:] != ss[:-1]) | (np.diff(ts) > config.burst_s)]
    bursts = np.bincount(ss[new_burst], minlength=count_j).astype(np.intp)
    opening_row = order[np.r_[True, ss[1:] != ss[:-1]]]
    arrival = (np.r_[True, heard.device[1:] != heard.device[:-1]]
               & ~continues(t_, mac_, sig_, seq_, z_, rnd_, config.link)[opening_row])
    span = heard.end - heard.start
    pad = np.minimum(0.5 * span / np.maximum(bursts - 1, 1), config.hold_s)
    pad[bursts < 2] = config.hold_s
    found = Stays(heard.device, heard.start - pad, heard.end + pad, heard.rssi_dbm, heard.probes, heard.of_probe)
    # Median and spread of each stay's power at each receiver; the loudest receiver vouches for it.
    m = int(rx_.max()) + 1
    cell = stay.astype(np.int64) * m + rx_
    _, begin, z_sorted = _group_sorted(cell, z_)
    cells = np.unique(cell)
    median = _quantile_in_runs(z_sorted, begin, 0.5)
    size = np.diff(np.r_[begin, z_sorted.size])
    mean = np.add.reduceat(z_sorted, begin) / size
    spread = np.sqrt(np.maximum(np.add.reduceat(z_sorted ** 2, begin) / size - mean ** 2, 0.0))
    cell_stay = (cells // m).astype(np.intp)
    margin = median - config.threshold((cells % m).astype(np.intp))
    inside = np.zeros(count_j, dtype=bool)
    inside[cell_stay[margin >= 0.0]] = True
    placed = np.full(count_j, -1, dtype=np.intp)
    if config.outline is not None:
        placed = config.outline.place(cell_stay, (cells % m).astype(np.intp), median, count_j)
        inside = np.where(placed >= 0, config.outline.inside[np.maximum(placed, 0)], inside)
    by_margin = np.lexsort((margin, cell_stay))
    last = np.r_[np.flatnonzero(cell_stay[by_margin][1:] != cell_stay[by_margin][:-1]), by_margin.size - 1]
    loudest = np.empty(count_j, dtype=np.intp)
    loudest[cell_stay[by_margin][last]] = by_margin[last]
    still = (span >= config.still_s) & (spread[loudest] <= config.still_sd_db)
    present = np.bincount(found.device, weights=found.end - found.start)
    fixed = (present >= config.fixture_s) | (np.bincount(found.device, weights=still) > 0)
    keep = (bursts >= config.min_bursts) & (span >= config.min_span_s) & inside & ~fixed[found.device]
    return StayVerdicts(rows, device, found, bursts, inside, fixed, keep, arrival, placed)


def estimate_occupancy(t: ArrayLike, mac: ArrayLike, signature: ArrayLike, sequence: ArrayLike,
                       randomised: ArrayLike, rssi_dbm: ArrayLike, receiver: ArrayLike, now: float, *,
                       config: EstimateConfig = EstimateConfig()) -> OccupancyEstimate:
    """Eqs. (30), (31), (37)-(40): people inside at now - L and entries over the interval before it.

    One row (N,) per reception: t s, mac and signature integer keys
    (signature -1 where unknown), sequence 0..4095 or -1, randomised bool,
    rssi_dbm, receiver integer code (indexes ``config.min_rssi_dbm`` when
    that is a tuple). Rows outside [now - W, now] are ignored, so the caller
    may hand over more. Pure: the same rows in any order give the same answer.
    """
    verdict = classify_stays(t, mac, signature, sequence, randomised, rssi_dbm, receiver, now, config=config)
    found, keep = verdict.found, verdict.keep
    at = float(now) - config.lead_s
    open_at = (found.start <= at) & (at < found.end)
    duration = found.end - found.start
    entered = (keep & verdict.arrival & (found.start >= at - config.interval_s) & (found.start < at)
               & (duration >= config.visit_s))
    n, e = float((keep & open_at).sum()), float(entered.sum())
    alpha = config.people_per_device
    count = max(0.0, alpha * n + config.people_offset)
    count_sd = float(np.sqrt(config.residual_sd ** 2 + alpha * max(alpha - 1.0, 0.0) * n))
    alpha_e = config.people_per_entry
    entries_sd = float(np.sqrt(alpha_e * abs(alpha_e - 1.0) * e + alpha_e ** 2 * e / 4.0))
    heard = verdict.bursts >= config.min_bursts
    fixed_stay = verdict.fixed[found.device]
    outside = np.unique(found.device[heard & ~verdict.inside & ~fixed_stay & open_at])
    devices = int(verdict.device.max()) + 1 if verdict.device.size else 0
    sectors, located = None, 0
    outline = config.outline
    if outline is not None and outline.sectors and verdict.rows.size:
        rows = verdict.rows
        stay = found.of_probe
        counted = (keep & open_at)[stay]
        per_sector = placed_per_sector(
            outline, stay[counted], np.asarray(_as(t, float), dtype=np.float64)[rows][counted],
            np.asarray(_as(rssi_dbm, float), dtype=np.float64)[rows][counted],
            np.asarray(_as(receiver, np.int64))[rows][counted], at, config.sector_recent_s)
        located = int(per_sector.sum())
        if located:
            prior = config.sector_prior_devices
            sectors = tuple(float(v) for v in count * (per_sector + prior * outline.area) / (located + prior))
    return OccupancyEstimate(at=at, count=count, count_sd=count_sd, entries=alpha_e * e, entries_sd=entries_sd,
                             devices=devices, stationary=int(verdict.fixed.sum()), outside=int(outside.size),
                             sectors=sectors, located=located)
