"""The accuracy report's picture: error CDFs and a store map with a true and an estimated path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from agent.config import SiteConfig
from agent.observations import Tech
from simulator.report import EmitterEstimates, Report, merged, shopper_emitters
from simulator.truth import Truth

FloatArray = NDArray[np.float64]


def _cdf(values: FloatArray) -> tuple[FloatArray, FloatArray]:
    v = np.sort(values[np.isfinite(values)])
    return v, np.arange(1, v.size + 1) / max(v.size, 1)


def pick_shopper(truth: Truth, groups: dict[str, EmitterEstimates], tech: Tech) -> str | None:
    """The tracked shopper with the most estimates: the path with the most to show."""
    owned = shopper_emitters(truth, groups, tech)
    counts = {s: sum(groups[e].ts.size for e in emitters) for s, emitters in owned.items()}
    return max(sorted(counts), key=counts.__getitem__) if counts else None


def plot_report(
    site: SiteConfig, truth: Truth, groups: dict[str, EmitterEstimates], report: Report, out: Path,
    *, title: str | None = None, shopper: str | None = None,
) -> Path:
    """Write the report PNG to `out`: error CDFs (left) and the store map with one shopper's paths (right)."""
    import matplotlib  # noqa: PLC0415  (optional dependency, loaded only to plot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax_cdf, ax_map) = plt.subplots(1, 2, figsize=(15, 6.2), gridspec_kw={"width_ratios": [1, 1.4]})
    fig.suptitle(title or f"Santi accuracy: {site.store.name} ({report.tech.upper()})")

    for values, label, style in (
        (report.errors, f"tracker (median {report.position.median_m:.2f} m)", "-"),
        (report.snapshot_errors, "snapshot fix (sample)", "--"),
        (report.crlb, "Cramér-Rao bound at the same windows", ":"),
    ):
        if values.size:
            x, y = _cdf(values)
            ax_cdf.plot(x, y, style, label=label, linewidth=2)
    ax_cdf.axvline(1.5, color="grey", linewidth=0.8)
    ax_cdf.set_xlim(0, max(8.0, float(np.nanpercentile(report.errors, 95))) if report.errors.size else 8.0)
    ax_cdf.set_ylim(0, 1)
    ax_cdf.set_xlabel("position error (m)")
    ax_cdf.set_ylabel("share of estimates")
    ax_cdf.set_title("Error CDF")
    ax_cdf.grid(alpha=0.3)
    ax_cdf.legend(loc="lower right")
    s = report.sectors
    ax_cdf.text(
        0.98, 0.45,
        f"sector accuracy {s.accuracy:.1%}\nentries P {s.precision:.2f} / R {s.recall:.2f}\n"
        f"false changes {s.false_changes_per_hour:.2f} /shopper-h",
        transform=ax_cdf.transAxes, ha="right", va="top", fontsize=9,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "grey"},
    )

    outline = np.asarray([*site.store.outline, site.store.outline[0]])
    ax_map.plot(outline[:, 0], outline[:, 1], color="black", linewidth=2)
    colours = plt.get_cmap("tab10")
    for i, sector in enumerate(site.sectors):
        poly = np.asarray([*sector.polygon, sector.polygon[0]])
        ax_map.fill(poly[:, 0], poly[:, 1], color=colours(i % 10), alpha=0.12)
        ax_map.plot(poly[:, 0], poly[:, 1], color="grey", linewidth=0.8)
        centre = poly[:-1].mean(axis=0)
        ax_map.text(centre[0], centre[1], sector.id, ha="center", va="center", fontsize=8, color="dimgrey")
    rx = np.array([[r.x, r.y] for r in site.receivers])
    ax_map.scatter(rx[:, 0], rx[:, 1], marker="^", s=70, color="black", label="receivers", zorder=5)
    if site.nfc_readers:
        nfc = np.array([[r.x, r.y] for r in site.nfc_readers])
        ax_map.scatter(nfc[:, 0], nfc[:, 1], marker="s", s=60, color="purple", label="NFC reader", zorder=5)
    who = shopper or pick_shopper(truth, groups, report.tech)
    if who is not None:
        track = truth.tracks[who]
        est = merged(groups, shopper_emitters(truth, groups, report.tech)[who])
        ax_map.plot(track.xy[:, 0], track.xy[:, 1], color="tab:green", linewidth=2, label=f"true path ({who})")
        ax_map.plot(est.xy[:, 0], est.xy[:, 1], color="tab:red", linewidth=1, alpha=0.8, label="estimated path")
    ax_map.set_aspect("equal")
    ax_map.set_xlabel("x (m)")
    ax_map.set_ylabel("y (m)")
    ax_map.set_title("Store map")
    ax_map.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
