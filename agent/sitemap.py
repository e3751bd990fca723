"""The installer's map of a store: where the receivers' layout limits how well a position can be known.

`error_map` evaluates the Cramér-Rao bound of `positioning.bounds` on a grid
over the store's floor, with the BLE-hearing receivers (the agent's own radio
and the remote nodes; Wi-Fi receivers hear other emitters) at their surveyed
heights, their path-loss exponents and noise, and the tag at the tracking
height. The bound is what the best possible fix from one reading per receiver
could achieve: a patch where it is large is a patch no tuning will fix, only
another receiver. `render_png` draws it (matplotlib's Agg canvas, no display
needed) with the outline, the sectors, the receivers and the NFC readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.config import SiteConfig
from agent.errors import InputError
from positioning.bounds import crlb_rmse
from positioning.geometry import points_in_polygon

BLE_KINDS = ("ble", "node")


class MapError(InputError):
    """The site cannot be mapped; the message says why in one line."""


@dataclass(frozen=True, eq=False)
class ErrorMap:
    """CRLB (metres) at cell centres: xs (nx,), ys (ny,), rmse (ny, nx); NaN off the floor, inf where no fix exists."""

    xs: NDArray[np.float64]
    ys: NDArray[np.float64]
    rmse: NDArray[np.float64]
    cell: float
    receiver_ids: tuple[str, ...]
    emitter_z: float

    def at(self, x: float, y: float) -> float:
        """The bound in the cell holding (x, y)."""
        ix = int(np.clip(np.searchsorted(self.xs + self.cell / 2, x), 0, self.xs.size - 1))
        iy = int(np.clip(np.searchsorted(self.ys + self.cell / 2, y), 0, self.ys.size - 1))
        return float(self.rmse[iy, ix])


def error_map(site: SiteConfig, cell: float = 0.25) -> ErrorMap:
    """Evaluate the bound on a `cell`-metre grid over the store's floor."""
    if not 0.01 <= cell <= 5.0:
        raise MapError(f"cell size must be between 0.01 and 5 m, got {cell:g}")
    receivers = [rx for rx in site.receivers if rx.kind in BLE_KINDS]
    if not receivers:
        raise MapError("no BLE-hearing receiver (kind = \"ble\" or \"node\") in the site: nothing to locate a tag with")
    outline = np.asarray(site.store.outline, dtype=np.float64)
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    nx, ny = (max(int(v), 1) for v in np.ceil((hi - lo) / cell))
    xs = lo[0] + cell * (np.arange(nx) + 0.5)
    ys = lo[1] + cell * (np.arange(ny) + 0.5)
    centres = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    floor = points_in_polygon(centres, outline)
    xyz = np.array([(rx.x, rx.y, rx.z) for rx in receivers])
    exponent = np.array([rx.path_loss_exponent for rx in receivers])
    sigma = np.array([rx.noise_sigma_db for rx in receivers])
    rmse = np.full(centres.shape[0], np.nan)
    rmse[floor] = crlb_rmse(centres[floor], xyz, exponent, sigma, site.tracking.emitter_height_m)
    return ErrorMap(xs, ys, rmse.reshape(ny, nx), float(cell), tuple(rx.id for rx in receivers),
                    site.tracking.emitter_height_m)


def _metres(value: float) -> float | None:
    return round(value, 3) if np.isfinite(value) else None


def summarise(emap: ErrorMap) -> dict[str, Any]:
    """Median, p90 and max of the bound over the floor, and where the worst spot is.

    Quantiles pick actual cell values (inverted CDF), so cells with no fix at
    all (inf) count as the worst rather than turning the figures into NaN;
    JSON shows them as null.
    """
    values = emap.rmse[np.isfinite(emap.rmse) | np.isinf(emap.rmse)]
    median, p90 = np.quantile(values, [0.5, 0.9], method="inverted_cdf")
    flat = np.where(np.isnan(emap.rmse), -1.0, emap.rmse)
    iy, ix = np.unravel_index(int(np.argmax(flat)), flat.shape)
    return {
        "median_m": _metres(float(median)),
        "p90_m": _metres(float(p90)),
        "max_m": _metres(float(flat[iy, ix])),
        "worst_spot": {"x": round(float(emap.xs[ix]), 2), "y": round(float(emap.ys[iy]), 2)},
        "no_fix_share": round(float(np.mean(np.isinf(values))), 4),
        "floor_m2": round(values.size * emap.cell**2, 1),
        "cell_m": emap.cell,
        "receivers": list(emap.receiver_ids),
        "emitter_height_m": emap.emitter_z,
    }


def _colour_range(emap: ErrorMap) -> tuple[float, float]:
    """From the best cell (rounded down to 0.5 m) to the 98th percentile, so the scale spends its colours
    where the floor differs and a few cells under a receiver do not wash the rest out."""
    finite = emap.rmse[np.isfinite(emap.rmse)]
    if finite.size == 0:
        return 0.0, 1.0
    low = float(np.floor(finite.min() * 2.0) / 2.0)
    return low, float(max(np.quantile(finite, 0.98), low + 0.1))


def _label_spot(polygon: list[tuple[float, float]], avoid: NDArray[np.float64]) -> tuple[float, float]:
    """A point inside the polygon near its middle but clear of the markers in `avoid` (k, 2)."""
    poly = np.asarray(polygon, dtype=np.float64)
    lo, hi = poly.min(axis=0), poly.max(axis=0)
    grid = np.stack(np.meshgrid(np.linspace(lo[0], hi[0], 9)[1:-1], np.linspace(lo[1], hi[1], 9)[1:-1]),
                    axis=-1).reshape(-1, 2)
    inside = grid[points_in_polygon(grid, poly)]
    if inside.size == 0:
        return float(poly[:, 0].mean()), float(poly[:, 1].mean())
    middle = inside.mean(axis=0)
    clear = np.full(inside.shape[0], 3.0)
    if avoid.size:
        clear = np.minimum(np.min(np.linalg.norm(inside[:, None, :] - avoid[None, :, :], axis=-1), axis=1), 3.0)
    score = clear - 0.15 * np.linalg.norm(inside - middle, axis=1)
    best = inside[int(np.argmax(score))]
    return float(best[0]), float(best[1])


def render_png(site: SiteConfig, emap: ErrorMap, out: Path, *, dpi: int = 110) -> None:
    """Draw the heatmap with the store's outline, sectors, receivers and NFC readers into a PNG."""
    # matplotlib is the optional "plot" extra: imported here so the CLI starts (and `--no-png` works) without it.
    from matplotlib import patheffects  # noqa: PLC0415
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    summary = summarise(emap)
    outline = np.asarray(site.store.outline, dtype=np.float64)
    width, height = np.ptp(outline, axis=0)
    fig = Figure(figsize=(11.0, max(9.0 * height / width, 3.5) + 1.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    low, cap = _colour_range(emap)
    shown = np.where(np.isinf(emap.rmse), cap, emap.rmse)
    extent = (emap.xs[0] - emap.cell / 2, emap.xs[-1] + emap.cell / 2,
              emap.ys[0] - emap.cell / 2, emap.ys[-1] + emap.cell / 2)
    image = ax.imshow(np.ma.masked_invalid(shown), origin="lower", extent=extent, cmap="viridis",
                      vmin=low, vmax=cap, interpolation="bilinear")
    bar = fig.colorbar(image, ax=ax, extend="max", fraction=0.035, pad=0.02)
    bar.set_label("expected position error, m (Cramér-Rao bound)")
    levels = [level for level in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0) if level < cap]
    if levels:
        grid_x, grid_y = np.meshgrid(emap.xs, emap.ys)
        lines = ax.contour(grid_x, grid_y, np.ma.masked_invalid(shown), levels=levels, colors="white",
                           linewidths=0.6, alpha=0.7)
        ax.clabel(lines, fmt="%g m", fontsize=7, inline=True)

    halo = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    markers = np.array([(rx.x, rx.y) for rx in site.receivers] + [(r.x, r.y) for r in site.nfc_readers])
    centre = outline.mean(axis=0)

    def inward(x: float, y: float) -> tuple[float, float]:
        """Offset (points) for a marker's label, towards the middle of the store so it stays on the map."""
        return (8.0 if x <= centre[0] else -8.0), (-13.0 if y >= centre[1] else 7.0)

    ax.plot(*np.vstack([outline, outline[:1]]).T, color="black", linewidth=2.5)
    for sector in site.sectors:
        poly = np.asarray(sector.polygon, dtype=np.float64)
        ax.plot(*np.vstack([poly, poly[:1]]).T, color="white", linewidth=1.0, linestyle="--", alpha=0.9)
        spot_x, spot_y = _label_spot(sector.polygon, markers)
        ax.text(spot_x, spot_y, sector.name + (" (entrance)" if sector.entrance else ""), ha="center",
                va="center", fontsize=9, color="white", weight="bold", path_effects=halo)

    used = set(emap.receiver_ids)
    for kind, marker, label in (("node", "^", "BLE node"), ("ble", "D", "agent's BLE radio")):
        mine = [rx for rx in site.receivers if rx.kind == kind]
        if mine:
            ax.scatter([rx.x for rx in mine], [rx.y for rx in mine], marker=marker, s=90, color="#ff5a36",
                       edgecolors="white", linewidths=1.2, zorder=5, label=label)
    wifi = [rx for rx in site.receivers if rx.id not in used]
    if wifi:
        ax.scatter([rx.x for rx in wifi], [rx.y for rx in wifi], marker="o", s=420, facecolors="none",
                   edgecolors="#cccccc", linewidths=1.5, zorder=4, label="Wi-Fi receiver (not in the map)")
    for rx in site.receivers:
        if rx.id in used:
            dx, dy = inward(rx.x, rx.y)
            ax.annotate(rx.id, (rx.x, rx.y), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                        color="white", path_effects=halo, zorder=6, ha="left" if dx > 0 else "right")
    if site.nfc_readers:
        ax.scatter([r.x for r in site.nfc_readers], [r.y for r in site.nfc_readers], marker="s", s=70,
                   color="#4fc3f7", edgecolors="black", zorder=5, label="NFC reader")
        for reader in site.nfc_readers:
            dx, dy = inward(reader.x, reader.y)
            ax.annotate(reader.id, (reader.x, reader.y), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                        color="#4fc3f7", path_effects=halo, zorder=6, ha="left" if dx > 0 else "right")
    worst = summary["worst_spot"]
    ax.scatter([worst["x"]], [worst["y"]], marker="x", s=120, color="#ff1744", linewidths=2.5, zorder=6,
               label="worst spot")

    def fmt(value: float | None) -> str:
        return "no fix" if value is None else f"{value:.2f} m"

    ax.set_title(f"{site.store.name} ({site.store.id}): where a tag can be located\n"
                 f"median {fmt(summary['median_m'])}, p90 {fmt(summary['p90_m'])}, "
                 f"worst {fmt(summary['max_m'])} at ({worst['x']:g}, {worst['y']:g}); "
                 f"{len(emap.receiver_ids)} BLE receivers, tag at {emap.emitter_z:g} m",
                 fontsize=11)
    ax.set_xlabel("x, m (store frame)")
    ax.set_ylabel("y, m")
    ax.set_aspect("equal")
    margin = 0.5
    ax.set_xlim(outline[:, 0].min() - margin, outline[:, 0].max() + margin)
    ax.set_ylim(outline[:, 1].min() - margin, outline[:, 1].max() + margin)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=5, fontsize=8, frameon=False)
    fig.savefig(out, dpi=dpi, format="png", bbox_inches="tight")
