"""A rectangular store in one or two sectors, as site TOML: for tests that need a floor of their own shape."""

from __future__ import annotations

from typing import Literal

Point = tuple[float, float]


def _points(points: list[Point]) -> str:
    return "[" + ", ".join(f"[{x:g}, {y:g}]" for x, y in points) + "]"


def rectangle_site(*, store_id: str, name: str, width: float, depth: float, receivers: str,
                   sectors: tuple[tuple[str, str], ...], split: Literal["x", "y"] = "x",
                   agent: str = 'id = "pi"') -> str:
    """``width`` × ``depth`` m; one sector is the whole floor, two are its halves across ``split``.

    ``sectors`` are (id, name); the first is the entrance (and adjacent to the second). ``receivers``
    and ``agent`` are TOML put in as given; sections after the sectors ([uplink], [nodes]) the caller appends.
    """
    floor = [(0.0, 0.0), (width, 0.0), (width, depth), (0.0, depth)]
    if len(sectors) == 1:
        polygons = [floor]
    elif split == "x":
        half = width / 2
        polygons = [[(0.0, 0.0), (half, 0.0), (half, depth), (0.0, depth)],
                    [(half, 0.0), (width, 0.0), (width, depth), (half, depth)]]
    else:
        half = depth / 2
        polygons = [[(0.0, 0.0), (width, 0.0), (width, half), (0.0, half)],
                    [(0.0, half), (width, half), (width, depth), (0.0, depth)]]
    blocks = []
    for index, ((sector_id, sector_name), polygon) in enumerate(zip(sectors, polygons, strict=True)):
        lines = [f'id = "{sector_id}"', f'name = "{sector_name}"', f"polygon = {_points(polygon)}"]
        if index == 0:
            lines += [f'adjacent = ["{other}"]' for other, _ in sectors[1:]] + ["entrance = true"]
        blocks.append("[[sectors]]\n" + "\n".join(lines) + "\n")
    return (f'\n[store]\nid = "{store_id}"\nname = "{name}"\noutline = {_points(floor)}\n\n[agent]\n{agent}\n\n'
            f"{receivers}\n\n" + "\n".join(blocks))
