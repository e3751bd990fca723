"""Receiver calibration from a technician's walk: known positions in, path-loss models out.

A technician carries a phone (or tag) along a route whose positions are
known (a survey, a camera system, or a simulated walk); every reading of it
then gives one (slant distance, RSSI) pair per receiver, and
``positioning.pathloss.fit_calibration`` fits that receiver's ``rssi_at_1m``,
``path_loss_exponent`` and noise robustly. The site config is rewritten in
place of its old values, keeping the technician's comments and layout, and
validated before it is written.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from agent.config import ConfigError, SiteConfig, parse_site
from agent.observations import Observation
from agent.tomllines import key_lines
from positioning.pathloss import Calibration, fit_calibration
from simulator.truth import Truth

FloatArray = NDArray[np.float64]

MIN_SAMPLES = 30
"""Fewer readings than this leave a receiver's old values alone."""

MIN_DISTANCE_SPAN = 2.0
"""The walk must reach at least this ratio of far to near distance for n to be identifiable."""


@dataclass(frozen=True)
class ReceiverFit:
    """A receiver's fit, or why it was left as it was (calibration None, reason set)."""

    receiver_id: str
    samples: int
    calibration: Calibration | None
    reason: str | None = None


def calibration_samples(
    site: SiteConfig, observations: Iterable[Observation], truth: Truth
) -> dict[str, tuple[FloatArray, FloatArray]]:
    """(distance, rssi) arrays per receiver from readings of emitters whose carrier's track is known.

    Readings outside the track's time span are not used: positions are only
    interpolated, never extrapolated.
    """
    rows = {r.id: r for r in site.receivers}
    by_emitter: dict[str, tuple[list[float], list[str], list[float]]] = {}
    for obs in observations:
        if obs.receiver_id in rows:
            ts, rx, rssi = by_emitter.setdefault(obs.emitter_id, ([], [], []))
            ts.append(obs.ts)
            rx.append(obs.receiver_id)
            rssi.append(obs.rssi_dbm)
    default_z = truth.run.emitter_height_m if truth.run else site.tracking.emitter_height_m
    pairs: dict[str, tuple[list[FloatArray], list[FloatArray]]] = {r: ([], []) for r in rows}
    for emitter, (ts_list, rx_list, rssi_list) in by_emitter.items():
        shopper = truth.shopper_of(emitter)
        if shopper is None or shopper not in truth.tracks:
            continue
        track = truth.tracks[shopper]
        when = np.array(ts_list)
        inside = (when >= track.ts[0]) & (when <= track.ts[-1])
        xy = track.at(when)
        z = np.interp(when, track.ts, np.where(np.isnan(track.z), default_z, track.z))
        heard_by = np.array(rx_list)
        level = np.array(rssi_list)
        for receiver_id, receiver in rows.items():
            mine = inside & (heard_by == receiver_id)
            if not mine.any():
                continue
            # Slant distance with each reading's own carrier height.
            d = np.sqrt((xy[mine, 0] - receiver.x) ** 2 + (xy[mine, 1] - receiver.y) ** 2 + (z[mine] - receiver.z) ** 2)
            pairs[receiver_id][0].append(d)
            pairs[receiver_id][1].append(level[mine])
    return {
        r: (np.concatenate(d) if d else np.empty(0), np.concatenate(z) if z else np.empty(0))
        for r, (d, z) in pairs.items()
    }


def fit_receivers(
    site: SiteConfig, samples: dict[str, tuple[FloatArray, FloatArray]], *, min_samples: int = MIN_SAMPLES
) -> list[ReceiverFit]:
    """Fit every receiver with enough well-spread readings; others keep their values, with the reason."""
    fits: list[ReceiverFit] = []
    for receiver in site.receivers:
        d, z = samples.get(receiver.id, (np.empty(0), np.empty(0)))
        if d.size < min_samples:
            fits.append(ReceiverFit(receiver.id, int(d.size), None, f"only {d.size} readings (need {min_samples})"))
            continue
        near, far = np.percentile(d, [5, 95])
        if far < MIN_DISTANCE_SPAN * max(near, 0.1):
            fits.append(ReceiverFit(receiver.id, int(d.size), None,
                                    f"walk covered {near:.1f}-{far:.1f} m only; walk nearer and farther"))
            continue
        try:
            cal = fit_calibration(d, z)
        except ValueError as exc:
            fits.append(ReceiverFit(receiver.id, int(d.size), None, str(exc)))
            continue
        if not (-110.0 <= cal.rssi_at_1m <= 10.0 and 1.0 <= cal.path_loss_exponent <= 6.0):
            fits.append(ReceiverFit(
                receiver.id, int(d.size), None,
                f"fit out of range (rssi_at_1m {cal.rssi_at_1m:.1f}, exponent {cal.path_loss_exponent:.2f})"))
            continue
        fits.append(ReceiverFit(receiver.id, int(d.size), cal))
    return fits


_VALUE = re.compile(r"^(?P<head>\s*(?P<key>[A-Za-z0-9_]+)\s*=\s*)(?P<value>[^#\r\n]*?)(?P<tail>\s*(#.*)?)$")


def _set_value(line: str, value: str) -> str:
    """The line with its value replaced; the key, spacing, trailing comment and line ending stay."""
    body = line.rstrip("\r\n")
    match = _VALUE.match(body)
    if match is None:
        raise ConfigError(f"cannot rewrite line {body.strip()!r}")
    return f"{match.group('head')}{value}{match.group('tail')}{line[len(body):]}"


def fitted_values(cal: Calibration) -> dict[str, float]:
    """Config values of a fit, rounded as a technician would write them and kept within the config's bounds."""
    return {
        "rssi_at_1m": round(cal.rssi_at_1m, 1),
        "path_loss_exponent": round(cal.path_loss_exponent, 2),
        "noise_sigma_db": round(min(max(cal.sigma_db, 0.5), 20.0), 1),
    }


def rewrite_site_text(text: str, fits: list[ReceiverFit], site: SiteConfig) -> str:
    """The config text with fitted receivers' values replaced (or added), comments and layout kept."""
    lines = text.splitlines(keepends=True)
    where = key_lines(text)
    inserts: dict[int, list[str]] = {}
    index = {r.id: i for i, r in enumerate(site.receivers)}
    for result in fits:
        if result.calibration is None:
            continue
        i = index[result.receiver_id]
        block = [line for path, line in where.items() if path[:2] == ("receivers", i)]
        for key, value in fitted_values(result.calibration).items():
            line = where.get(("receivers", i, key))
            if line is not None:
                lines[line - 1] = _set_value(lines[line - 1], repr(value))
            else:
                inserts.setdefault(max(block), []).append(f"{key} = {value!r}\n")
    for after in sorted(inserts, reverse=True):
        if not lines[after - 1].endswith("\n"):
            lines[after - 1] += "\n"
        lines[after:after] = inserts[after]
    return "".join(lines)


def write_calibrated_site(site: SiteConfig, source: Path, fits: list[ReceiverFit], out: Path) -> SiteConfig:
    """Rewrite `source`'s text with the fits, validate it as `out`, then write it atomically."""
    text = rewrite_site_text(source.read_text(encoding="utf-8"), fits, site)
    checked = parse_site(text, out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return checked


def summary_row(result: ReceiverFit) -> tuple[str, str, str, str, str]:
    """receiver, readings, rssi_at_1m, exponent, sigma as table cells (with standard errors)."""
    cal = result.calibration
    if cal is None:
        return result.receiver_id, str(result.samples), "-", "-", result.reason or ""
    return (
        result.receiver_id, str(result.samples),
        f"{cal.rssi_at_1m:.1f} ± {cal.rssi_at_1m_se:.1f}",
        f"{cal.path_loss_exponent:.2f} ± {cal.path_loss_exponent_se:.2f}",
        f"{cal.sigma_db:.1f}" if math.isfinite(cal.sigma_db) else "-",
    )
