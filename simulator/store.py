"""The store as shoppers walk it: sector polygons, borders, routes and a door.

Built from a validated site config. Shoppers move in straight lines between
waypoints; a route from one sector to another goes through the sectors of
the shortest path on the adjacency graph and crosses each border at a point
on the shared edge, so with convex sectors (the usual rectangles) a path
never leaves the sectors it is meant to pass through.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from shapely.geometry import LineString, MultiLineString, Point, Polygon
from shapely.ops import linemerge, nearest_points

from agent.config import SiteConfig
from agent.errors import InputError
from positioning.geometry import LabelRaster

FloatArray = NDArray[np.float64]

WALL_MARGIN_M = 0.5
"""Waypoints keep this far from a sector's edges: shelves and walls line them."""

BORDER_MARGIN_M = 0.4
"""Border crossings keep this far from the ends of a shared edge (doorway jambs)."""


class SiteNotSimulable(InputError):
    """The site cannot host a simulation (e.g. a sector unreachable from the entrance)."""


def _shared_border(a: Polygon, b: Polygon) -> LineString | None:
    shared = a.boundary.intersection(b.boundary)
    lines = [g for g in getattr(shared, "geoms", [shared]) if isinstance(g, LineString) and g.length > 0]
    if not lines:
        return None
    merged = linemerge(MultiLineString(lines)) if len(lines) > 1 else lines[0]
    if isinstance(merged, LineString):
        return merged
    return max(merged.geoms, key=lambda g: g.length)


@dataclass(frozen=True, eq=False)
class Store:
    """Geometry of a site for the simulator; sector indexes follow the config's order."""

    site: SiteConfig
    outline: Polygon
    sectors: tuple[Polygon, ...]
    sector_ids: tuple[str, ...]
    neighbours: tuple[tuple[int, ...], ...]
    borders: dict[tuple[int, int], LineString]
    entrance: int
    door: FloatArray
    raster: LabelRaster

    @classmethod
    def of(cls, site: SiteConfig) -> Store:
        outline = Polygon(site.store.outline)
        sectors = tuple(Polygon(s.polygon) for s in site.sectors)
        index = site.sector_index()
        borders: dict[tuple[int, int], LineString] = {}
        neighbours: list[tuple[int, ...]] = []
        for i, names in enumerate(site.adjacency()):
            walkable: list[int] = []
            for name in sorted(names, key=index.__getitem__):
                j = index[name]
                border = _shared_border(sectors[i], sectors[j])
                if border is not None:
                    borders[(i, j)] = border
                    walkable.append(j)
            neighbours.append(tuple(walkable))
        entrance = next(i for i, s in enumerate(site.sectors) if s.entrance)
        door = cls._door(outline, sectors[entrance])
        raster = LabelRaster.build([np.asarray(s.polygon, dtype=np.float64) for s in site.sectors], 0.1, 0.5)
        store = cls(site, outline, sectors, tuple(s.id for s in site.sectors), tuple(neighbours),
                    borders, entrance, door, raster)
        unreachable = [store.sector_ids[j] for j in range(len(sectors)) if not store.route(entrance, j)]
        if unreachable:
            raise SiteNotSimulable(
                f"sectors {', '.join(unreachable)} share no walkable border with a path from the entrance; "
                "check 'adjacent' and that adjacent polygons touch along an edge"
            )
        return store

    @staticmethod
    def _door(outline: Polygon, entrance: Polygon) -> FloatArray:
        """Where shoppers come in: the middle of the entrance sector's stretch of outer wall."""
        wall = entrance.boundary.intersection(outline.boundary)
        lines = [g for g in getattr(wall, "geoms", [wall]) if isinstance(g, LineString) and g.length > 0]
        if lines:
            point = max(lines, key=lambda g: g.length).interpolate(0.5, normalized=True)
        else:
            point = nearest_points(outline.boundary, entrance.centroid)[0]
        # Step just inside so the first position is in the entrance sector.
        inner = entrance.buffer(-0.3)
        target = inner if not inner.is_empty else entrance
        inside = nearest_points(target, point)[0]
        return np.array([inside.x, inside.y])

    def label(self, xy: FloatArray) -> NDArray[np.intp]:
        """Sector index under each (..., 2) point; len(sectors) outside every sector."""
        return self.raster.lookup(xy)

    def sample_point(self, rng: np.random.Generator, sector: int, margin: float = WALL_MARGIN_M) -> FloatArray:
        """A uniform random point in a sector, `margin` metres from its edges when it is big enough."""
        polygon = self.sectors[sector]
        inner = polygon.buffer(-margin)
        area = inner if not inner.is_empty and inner.area > 0.05 else polygon
        x0, y0, x1, y1 = area.bounds
        for _ in range(1000):
            x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
            if area.contains(Point(x, y)):
                return np.array([x, y])
        centre = area.representative_point()
        return np.array([centre.x, centre.y])

    def near(self, rng: np.random.Generator, sector: int, xy: FloatArray, radius: float) -> FloatArray:
        """A point within `radius` of xy that stays inside the sector (xy itself if none is found)."""
        polygon = self.sectors[sector].buffer(-0.2)
        for _ in range(50):
            candidate = xy + rng.uniform(-radius, radius, 2)
            if polygon.contains(Point(candidate[0], candidate[1])):
                return candidate
        return xy.copy()

    def crossing(self, rng: np.random.Generator, a: int, b: int) -> FloatArray:
        """A random point on the border from sector a to sector b, clear of its ends."""
        border = self.borders[(a, b)]
        margin = min(BORDER_MARGIN_M, 0.5 * border.length)
        at = rng.uniform(margin, border.length - margin) if border.length > 2 * margin else 0.5 * border.length
        point = border.interpolate(at)
        return np.array([point.x, point.y])

    def route(self, a: int, b: int) -> list[int]:
        """Sectors of a shortest walk from a to b (both included); [] if b cannot be reached."""
        previous = {a: a}
        queue = deque([a])
        while queue:
            here = queue.popleft()
            if here == b:
                path = [b]
                while path[-1] != a:
                    path.append(previous[path[-1]])
                return path[::-1]
            for nxt in self.neighbours[here]:
                if nxt not in previous:
                    previous[nxt] = here
                    queue.append(nxt)
        return []

    def walk(self, rng: np.random.Generator, start: FloatArray, a: int, end: FloatArray, b: int) -> list[FloatArray]:
        """Waypoints from `start` in sector a to `end` in sector b, crossing each border on the way."""
        sectors = self.route(a, b)
        points = [start]
        for here, nxt in itertools.pairwise(sectors):
            points.append(self.crossing(rng, here, nxt))
        points.append(end)
        return points
