"""Shopper mobility: enter, browse 3-6 sectors, queue at the till, tap, leave.

Each shopper's movement is a piecewise-linear path: knots of time and
position, straight walks at the shopper's own pace between waypoints and
still spells (dwells) at shelves. A path is planned in three passes because
the checkout queue couples shoppers: (1) each shopper's walk up to the
checkout, from its own random stream; (2) a first-come first-served till per
NFC reader, which fixes when each shopper is served; (3) the queue (stepping
up one place each time someone ahead is called), the payment and the walk
out through the entrance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from shapely.geometry import LineString

from simulator.store import WALL_MARGIN_M, Store

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class MobilityConfig:
    """How shoppers move; ranges are (low, high) drawn uniformly per shopper unless noted.

    dwell_s is drawn log-uniformly (many short looks, a few long ones);
    sectors_visited counts shopping sectors (not the entrance or checkout).
    """

    speed_m_s: tuple[float, float] = (1.0, 1.4)
    dwell_s: tuple[float, float] = (20.0, 300.0)
    sectors_visited: tuple[int, int] = (3, 6)
    checkout_share: float = 0.85
    service_s: tuple[float, float] = (5.0, 15.0)
    queue_spacing_m: float = 0.8
    browse_stops: tuple[int, int] = (1, 3)
    browse_radius_m: float = 1.0
    points_of_interest: int = 4

    def __post_init__(self) -> None:
        for name in ("speed_m_s", "dwell_s", "sectors_visited", "service_s", "browse_stops"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be a range 0 < low <= high, got ({low}, {high})")
        if not 0.0 <= self.checkout_share <= 1.0:
            raise ValueError(f"checkout_share must be in [0, 1], got {self.checkout_share}")


class PathBuilder:
    """Appends walks and dwells to a path, keeping time and place."""

    def __init__(self, t: float, xy: FloatArray, speed: float, facing: float) -> None:
        self.t = [t]
        self.xy = [xy.copy()]
        self.facing = [facing]
        self.speed = speed

    @property
    def now(self) -> float:
        return self.t[-1]

    @property
    def here(self) -> FloatArray:
        return self.xy[-1]

    def walk(self, points: list[FloatArray]) -> None:
        for point in points:
            step = point - self.here
            distance = float(np.hypot(step[0], step[1]))
            if distance < 1e-9:
                continue
            self.facing[-1] = math.atan2(step[1], step[0])
            self.t.append(self.now + distance / self.speed)
            self.xy.append(point.copy())
            self.facing.append(self.facing[-1])

    def dwell(self, seconds: float, facing: float | None = None) -> None:
        if seconds <= 0.0:
            return
        if facing is not None:
            self.facing[-1] = facing
        self.t.append(self.now + seconds)
        self.xy.append(self.here.copy())
        self.facing.append(self.facing[-1])

    def until(self, t: float, facing: float | None = None) -> None:
        self.dwell(t - self.now, facing)

    def path(self) -> Path:
        return Path(np.array(self.t), np.array(self.xy), np.array(self.facing))


@dataclass(frozen=True, eq=False)
class Path:
    """Knots t (K,) seconds, xy (K, 2) metres, facing (K,) radians of the interval after each knot."""

    t: FloatArray
    xy: FloatArray
    facing: FloatArray

    def at(self, times: FloatArray) -> FloatArray:
        """Positions (n, 2) at times (n,), held at the ends."""
        return np.stack([np.interp(times, self.t, self.xy[:, 0]), np.interp(times, self.t, self.xy[:, 1])], axis=-1)

    def facing_at(self, times: FloatArray) -> FloatArray:
        """Heading (n,) radians: the walking direction, or where the shopper faces when still."""
        k = np.clip(np.searchsorted(self.t, times, side="right") - 1, 0, len(self.t) - 1)
        return self.facing[k]

    def still_at(self, times: FloatArray) -> NDArray[np.bool_]:
        """Whether the shopper stands still (n,) at times (n,); outside the path counts as still."""
        if len(self.t) < 2:
            return np.ones(times.shape, dtype=bool)
        k = np.clip(np.searchsorted(self.t, times, side="right") - 1, 0, len(self.t) - 2)
        moved = np.any(self.xy[k + 1] != self.xy[k], axis=1)
        return np.asarray((times < self.t[0]) | (times >= self.t[-1]) | ~moved, dtype=bool)

    @property
    def start(self) -> float:
        return float(self.t[0])

    @property
    def end(self) -> float:
        return float(self.t[-1])


@dataclass
class ShopperPlan:
    """One shopper's visit; times are seconds from the start of the run."""

    index: int
    speed: float
    enter: float
    builder: PathBuilder
    sectors: list[int]
    till: int | None = None
    queue_join: float = math.inf
    service_start: float = math.nan
    service_end: float = math.nan
    tap_at: float = math.nan
    path: Path | None = None
    queue_slots: list[int] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class Till:
    """An NFC reader's checkout: where the paying shopper stands and where the queue waits."""

    reader: int
    sector: int
    service_point: FloatArray
    slots: FloatArray  # (q, 2), nearest the till first


def make_tills(store: Store, spacing: float) -> list[Till]:
    tills: list[Till] = []
    index = store.site.sector_index()
    for r, reader in enumerate(store.site.nfc_readers):
        sector = index[reader.sector]
        polygon = store.sectors[sector]
        at = np.array([reader.x, reader.y])
        inner = polygon.buffer(-0.4)
        area = inner if not inner.is_empty else polygon
        x0, y0, x1, y1 = area.bounds
        gx, gy = np.meshgrid(np.arange(x0, x1 + 1e-9, spacing), np.arange(y0, y1 + 1e-9, spacing))
        grid = np.stack([gx.ravel(), gy.ravel()], axis=-1)
        inside = store.label(grid) == sector
        grid = grid[inside]
        distance = np.hypot(*(grid - at).T)
        service = grid[np.argmin(distance)] if grid.size else at
        keep = np.hypot(*(grid - service).T) > 0.5 * spacing
        order = np.argsort(np.hypot(*(grid[keep] - service).T), kind="stable")
        tills.append(Till(r, sector, service, grid[keep][order]))
    return tills


def points_of_interest(store: Store, rng: np.random.Generator, count: int) -> list[list[FloatArray]]:
    """Shelves and counters: a few fixed spots per sector that every shopper's browsing centres on."""
    return [[store.sample_point(rng, s) for _ in range(count)] for s in range(len(store.sectors))]


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def plan_until_checkout(
    store: Store,
    config: MobilityConfig,
    rng: np.random.Generator,
    index: int,
    enter: float,
    pois: list[list[FloatArray]],
    tills: list[Till],
) -> ShopperPlan:
    """Pass (1): the walk from the door through the chosen sectors to the checkout (or the door)."""
    checkout_sectors = {till.sector for till in tills}
    shopping = [s for s in range(len(store.sectors)) if s != store.entrance and s not in checkout_sectors]
    if not shopping:
        shopping = [s for s in range(len(store.sectors)) if s != store.entrance] or [store.entrance]
    low, high = config.sectors_visited
    k = min(int(rng.integers(low, high + 1)), len(shopping))
    chosen = [shopping[i] for i in rng.permutation(len(shopping))[:k]]
    speed = float(rng.uniform(*config.speed_m_s))
    builder = PathBuilder(enter, store.door, speed, float(rng.uniform(-math.pi, math.pi)))
    where = store.entrance
    for sector in chosen:
        poi = pois[sector][int(rng.integers(len(pois[sector])))]
        stops = int(rng.integers(config.browse_stops[0], config.browse_stops[1] + 1))
        first = store.near(rng, sector, poi, 0.5)
        builder.walk(store.walk(rng, builder.here, where, first, sector)[1:])
        where = sector
        total = _log_uniform(rng, *config.dwell_s)
        shares = rng.dirichlet(np.ones(stops))
        for stop in range(stops):
            if stop > 0:
                builder.walk([store.near(rng, sector, poi, config.browse_radius_m)])
            builder.dwell(float(total * shares[stop]), float(rng.uniform(-math.pi, math.pi)))
    plan = ShopperPlan(index, speed, enter, builder, chosen)
    if tills and rng.random() < config.checkout_share:
        plan.till = int(rng.integers(len(tills)))
        till = tills[plan.till]
        route = store.route(where, till.sector)
        if len(route) > 1:
            builder.walk(store.walk(rng, builder.here, where, store.crossing(rng, route[-2], till.sector), route[-2])[1:])
        plan.queue_join = builder.now
    else:
        builder.walk(store.walk(rng, builder.here, where, store.door, store.entrance)[1:])
        plan.path = builder.path()
    return plan


def serve(plans: list[ShopperPlan], tills: list[Till], config: MobilityConfig, rng: np.random.Generator) -> None:
    """Pass (2): first come, first served at each till; fixes service start and end."""
    for t, till in enumerate(tills):
        queue = sorted((p for p in plans if p.till == t), key=lambda p: (p.queue_join, p.index))
        free = -math.inf
        for plan in queue:
            start = max(plan.queue_join, free)
            waited = start > plan.queue_join and len(till.slots) > 0
            origin = till.slots[0] if waited else plan.builder.here  # the front of the queue
            walk_s = float(np.hypot(*(till.service_point - origin))) / plan.speed
            service = float(rng.uniform(*config.service_s))
            plan.service_start = start
            plan.service_end = start + walk_s + service
            plan.tap_at = start + walk_s + float(rng.uniform(0.3, 0.9)) * service
            free = plan.service_end


def finish(store: Store, plans: list[ShopperPlan], tills: list[Till], rng: np.random.Generator) -> None:
    """Pass (3): queue places, payment and the walk out, for shoppers who went to a till."""
    for t, till in enumerate(tills):
        queue = sorted((p for p in plans if p.till == t), key=lambda p: (p.queue_join, p.index))
        for position, plan in enumerate(queue):
            builder = plan.builder
            ahead = sorted(
                other.service_start for other in queue[:position] if other.service_start > plan.queue_join
            )
            facing_till = math.atan2(*(till.service_point - builder.here)[::-1])
            if plan.service_start > plan.queue_join and len(till.slots):
                slot = min(len(ahead), len(till.slots) - 1)
                builder.walk([till.slots[slot]])
                for called in ahead:
                    builder.until(called, facing_till)
                    slot = max(slot - 1, 0)
                    builder.walk([till.slots[slot]])
                builder.until(plan.service_start, facing_till)
            builder.walk([till.service_point])
            builder.until(plan.service_end, facing_till)
            builder.walk(store.walk(rng, builder.here, till.sector, store.door, store.entrance)[1:])
            plan.path = builder.path()


def plan_shoppers(
    store: Store, config: MobilityConfig, count: int, arrive_within_s: float, seed: np.random.SeedSequence
) -> list[ShopperPlan]:
    """Every shopper's complete path; arrivals are uniform over the first `arrive_within_s` seconds.

    Each shopper draws from its own child stream of `seed`, so adding a
    shopper or changing the radio never changes the others' walks.
    """
    layout, service, leaving, *streams = seed.spawn(count + 3)
    pois = points_of_interest(store, np.random.default_rng(layout), config.points_of_interest)
    tills = make_tills(store, config.queue_spacing_m)
    plans = []
    for i, stream in enumerate(streams):
        rng = np.random.default_rng(stream)
        enter = float(rng.uniform(0.0, arrive_within_s))
        plans.append(plan_until_checkout(store, config, rng, i, enter, pois, tills))
    serve(plans, tills, config, np.random.default_rng(service))
    finish(store, plans, tills, np.random.default_rng(leaving))
    return plans


def survey_plan(store: Store, *, speed: float = 0.8, spacing_m: float = 2.0, start: float = 0.0) -> ShopperPlan:
    """A technician's calibration walk: back and forth across every sector, `spacing_m` between rows.

    Rows run along x through each sector (shrunk by the wall margin), so
    every receiver sees the phone near and far; the last row runs along the
    far wall margin even when that is closer than `spacing_m`, since a radio
    map knows nothing where the walk did not pass and shoppers browse the
    shelves along the walls. The walk starts and ends at the door and goes
    from sector to sector along the adjacency graph.
    """
    builder = PathBuilder(start, store.door, speed, 0.0)
    where = store.entrance
    rng = np.random.default_rng(0)  # border crossings only; the walk itself is fixed
    order = sorted(range(len(store.sectors)), key=lambda s: (len(store.route(store.entrance, s)), s))
    for sector in order:
        area = store.sectors[sector].buffer(-WALL_MARGIN_M)
        if area.is_empty:
            area = store.sectors[sector]
        x0, y0, x1, y1 = area.bounds
        rows = np.arange(y0, y1 + 1e-9, spacing_m)
        if y1 - rows[-1] > 0.25 * spacing_m:  # walk along the far shelves too: shoppers stand there
            rows = np.append(rows, y1)
        points: list[FloatArray] = []
        for k, y in enumerate(rows):
            line = LineString([(x0 - 1.0, y), (x1 + 1.0, y)]).intersection(area)
            if line.is_empty or line.length == 0:
                continue
            a, b = (np.array(c) for c in (line.bounds[:2], line.bounds[2:]))
            points.extend([a, b] if k % 2 == 0 else [b, a])
        if not points:
            continue
        builder.walk(store.walk(rng, builder.here, where, points[0], sector)[1:])
        builder.walk(points[1:])
        where = sector
    builder.walk(store.walk(rng, builder.here, where, store.door, store.entrance)[1:])
    plan = ShopperPlan(0, speed, start, builder, [])
    plan.path = builder.path()
    return plan
