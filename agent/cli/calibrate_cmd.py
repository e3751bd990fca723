"""``santi calibrate receiver``: guided capture at measured distances, fit, diff, confirm, write.

Attached to the ``calibrate`` group of ``agent.cli.sim_cmd`` (beside
``calibrate fit``, the walk-based calibration), so importing this module is
what registers it, and ``calibrate survey`` (``agent.cli.survey_cmd``), which
records such a walk in a real store.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.syntax import Syntax

from agent.calibration_walk import (
    DEFAULT_DISTANCES,
    Beacon,
    CaptureFactory,
    Step,
    WalkError,
    ble_capture,
    fit_walk,
    parse_distances,
    proposed_text,
    replace_site_file,
    residual_db,
    unified_diff,
)
from agent.cli.beacon_arg import beacon_arg
from agent.cli.errors import CliError
from agent.cli.sim_cmd import calibrate
from agent.cli.survey_cmd import survey_command
from agent.config import ConfigError, ReceiverConfig, SiteConfig, load_site
from agent.errors import SantiError
from agent.siteedit import fitted_values
from agent.text import Table
from positioning.pathloss import Calibration


class CalibrationNotWritten(SantiError):
    """The capture ran but gave nothing to write (too few readings, refused, invalid result): exit 1."""


def _receiver(site: SiteConfig, receiver_id: str) -> ReceiverConfig:
    found = next((r for r in site.receivers if r.id == receiver_id), None)
    if found is None:
        raise CliError(f"no receiver {receiver_id!r} in {site.path}; receivers: "
                       + ", ".join(r.id for r in site.receivers))
    if found.kind != "ble":
        raise CliError(f"receiver {receiver_id} is kind {found.kind!r}: this guided capture listens with this "
                       "machine's own Bluetooth adapter, so it calibrates kind 'ble' receivers; calibrate remote "
                       "receivers from a walk with santi calibrate fit")
    return found


def _distances(_: click.Context, __: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        return parse_distances(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _capture_steps(capture_factory: CaptureFactory, beacon: Beacon, adapter: str, receiver_id: str,
                   distances: tuple[float, ...], seconds: float, settle: float, min_readings: int,
                   err: Console) -> list[Step]:
    capture = capture_factory(beacon, adapter)
    with err.status(f"starting Bluetooth on {adapter}…"):
        capture.start()
    steps: list[Step] = []
    try:
        for distance in distances:
            while True:
                click.prompt(f"Place the reference beacon at {distance:g} m from {receiver_id} and press Enter",
                             default="", show_default=False, prompt_suffix=" ", err=True)
                with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[readings]}"),
                              console=err, transient=True, disable=not err.is_terminal) as bar:
                    task = bar.add_task(f"{distance:g} m: listening", total=seconds, readings="")

                    def show(elapsed: float, count: int, task_id: Any = task, progress: Progress = bar) -> None:
                        progress.update(task_id, completed=elapsed, readings=f"{count} readings")

                    readings = capture.measure(distance, seconds, settle, show)
                step = Step(distance, tuple(readings))
                if len(readings) >= min_readings:
                    err.print(f"{distance:g} m: {len(readings)} readings, median {step.median_dbm:.1f} dBm",
                              highlight=False)
                    steps.append(step)
                    break
                err.print(f"[yellow]{distance:g} m: only {len(readings)} readings (need {min_readings})[/]: is the "
                          f"beacon on, and is it {escape(beacon.text)}?", highlight=False)
                if not click.confirm(f"Measure {distance:g} m again?", default=True, err=True):
                    raise CalibrationNotWritten(f"not enough readings at {distance:g} m; nothing written")
    finally:
        capture.close()
    return steps


def _report(steps: list[Step], cal: Calibration, receiver: ReceiverConfig, console: Console) -> None:
    table = Table("distance", "readings", "median RSSI", "fit", "residual", title=f"Calibration of {receiver.id}",
                  title_justify="left")
    for step in steps:
        residual = residual_db(step, cal)
        table.add_row(f"{step.distance_m:g} m", str(len(step.rssi_dbm)), f"{step.median_dbm:.1f} dBm",
                      f"{step.median_dbm - residual:.1f} dBm", f"{residual:+.1f} dB")
    console.print(table)
    new = fitted_values(cal)
    values = Table("value", "now", "fitted", title="Path-loss model", title_justify="left")
    values.add_row("rssi_at_1m", f"{receiver.rssi_at_1m:g}", f"{new['rssi_at_1m']:g}  (± {cal.rssi_at_1m_se:.1f})")
    values.add_row("path_loss_exponent", f"{receiver.path_loss_exponent:g}",
                   f"{new['path_loss_exponent']:g}  (± {cal.path_loss_exponent_se:.2f})")
    values.add_row("noise_sigma_db", f"{receiver.noise_sigma_db:g}", f"{new['noise_sigma_db']:g}")
    console.print(values)


def _result(receiver: ReceiverConfig, beacon: Beacon, steps: list[Step], cal: Calibration, diff: str,
            written: bool, backup: Path | None) -> dict[str, Any]:
    return {
        "receiver_id": receiver.id, "beacon": beacon.text,
        "steps": [{"distance_m": s.distance_m, "readings": len(s.rssi_dbm), "median_dbm": s.median_dbm}
                  for s in steps],
        "fit": {"rssi_at_1m": cal.rssi_at_1m, "rssi_at_1m_se": cal.rssi_at_1m_se,
                "path_loss_exponent": cal.path_loss_exponent, "path_loss_exponent_se": cal.path_loss_exponent_se,
                "noise_sigma_db": cal.sigma_db if math.isfinite(cal.sigma_db) else None, "samples": cal.n_samples},
        "old": {"rssi_at_1m": receiver.rssi_at_1m, "path_loss_exponent": receiver.path_loss_exponent,
                "noise_sigma_db": receiver.noise_sigma_db},
        "new": fitted_values(cal), "diff": diff, "written": written,
        "backup": None if backup is None else str(backup),
    }


def receiver_command(capture_factory: CaptureFactory = ble_capture) -> click.Command:
    """The command, with the radio it listens through; tests pass their own factory."""

    @click.command("receiver")
    @click.argument("receiver_id")
    @click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False), required=True,
                  help="Site config to update.")
    @click.option("--beacon", required=True, callback=beacon_arg,
                  help="Reference beacon: UUID:MAJOR:MINOR (iBeacon) or NAMESPACE:INSTANCE (Eddystone-UID).")
    @click.option("--distances", default=",".join(f"{d:g}" for d in DEFAULT_DISTANCES), show_default=True,
                  callback=_distances, help="Distances to measure at, metres, comma-separated.")
    @click.option("--seconds", type=click.FloatRange(min=0.5, max=600.0), default=10.0, show_default=True,
                  help="How long to listen at each distance.")
    @click.option("--settle", type=click.FloatRange(min=0.0, max=60.0), default=1.0, show_default=True,
                  help="Seconds ignored after Enter, while you step away from the beacon.")
    @click.option("--min-readings", type=click.IntRange(min=1), default=10, show_default=True,
                  help="Readings needed at each distance.")
    @click.option("--adapter", default=None, help="Bluetooth adapter (default: ble.adapter of the site).")
    @click.option("--yes", "-y", is_flag=True, help="Write the new values without asking.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (prompts on stderr).")
    def receiver(receiver_id: str, config: Path, beacon: Beacon, distances: tuple[float, ...], seconds: float,
                 settle: float, min_readings: int, adapter: str | None, yes: bool, as_json: bool) -> None:
        """Calibrate RECEIVER_ID with a reference beacon at measured distances, then update the site config.

        At each distance you place the beacon, press Enter, and the receiver
        listens. The fitted rssi_at_1m, path_loss_exponent and noise_sigma_db
        are shown as a diff of the config, written after you confirm (the old
        file is kept as .bak) and validated first. Reload the agent afterwards
        (systemctl reload santi-agent).

        Exit code 0 when written, 1 when not written (refused, radio failure,
        too few readings), 2 on bad input.

        \b
        Example:
          santi calibrate receiver pi-ble --config /etc/santi/site.toml \\
              --beacon 5a4e7469-0000-4000-8000-00000000f15c:1:1
          santi calibrate receiver pi-ble --config site.toml --beacon 5a4e54490000000000c1:0000000000a1 \\
              --distances 1,2,3,5,8 --seconds 20
        """
        site = load_site(config)
        target = _receiver(site, receiver_id)
        try:
            old_text = config.read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"{config}: cannot read: {exc}") from None
        err = Console(stderr=True)
        console = err if as_json else Console()
        steps = _capture_steps(capture_factory, beacon, adapter or site.ble.adapter, receiver_id, distances,
                               seconds, settle, min_readings, err)
        try:
            cal = fit_walk(steps)
        except WalkError as exc:
            raise CalibrationNotWritten(f"{exc}; nothing written") from None
        _report(steps, cal, target, console)
        new_text = proposed_text(old_text, receiver_id, cal)
        diff = unified_diff(old_text, new_text, config)
        written, backup = False, None
        if not diff:
            console.print(f"{receiver_id} already has these values; {config} unchanged")
        else:
            console.print(Syntax(diff, "diff", theme="ansi_dark", background_color="default"))
            if yes or click.confirm(f"Write the new values to {config}?", default=False, err=True):
                try:
                    _, backup = replace_site_file(config, old_text, new_text)
                except ConfigError as exc:
                    raise CalibrationNotWritten(f"the calibrated config did not validate, {config} unchanged: {exc}") from None
                except (ValueError, OSError) as exc:
                    raise CalibrationNotWritten(f"{exc}") from None
                written = True
                console.print(f"written {config} (previous version: {backup}); reload the agent to use it "
                              "(systemctl reload santi-agent)", highlight=False)
        if as_json:
            click.echo(json.dumps(_result(target, beacon, steps, cal, diff, written, backup), indent=2))
        if diff and not written:
            raise CalibrationNotWritten(f"not written; {config} unchanged")

    return receiver


calibrate.add_command(receiver_command())
calibrate.add_command(survey_command())
