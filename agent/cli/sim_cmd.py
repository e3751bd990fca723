"""``santi sim``, ``santi sim report``, ``santi locate`` and ``santi calibrate fit``.

Thin wrappers over ``simulator``: simulate a store, run the positioning core
over any observation file, score estimates against ground truth, and fit
receivers from a calibration walk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from agent.cli.config_cmd import site_option
from agent.cli.errors import CliError
from agent.config import ConfigError, SiteConfig, load_site
from agent.fingerprint_file import StoredFingerprint
from agent.observations import Observation, Tech
from agent.replayfile import RecordReader
from agent.text import Table, plural
from simulator.anonymous import CrowdConfig
from simulator.calibrate import (
    MAP_BANDWIDTHS_M,
    MAP_METHODS,
    MAP_MIN_GAIN,
    MAP_SECTOR_SLACK,
    GridCalibration,
    MapVerdict,
    ReceiverFit,
    WalkSamples,
    calibration_samples,
    fingerprint_path,
    fit_receivers,
    grid_is_better,
    grid_settings,
    held_out,
    judge_radio_map,
    map_spread,
    radio_map_path,
    summary_row,
    walk_fingerprint,
    without_body,
    write_calibrated_site,
)
from simulator.channel import CHANNELS
from simulator.locate import Estimate, LocateStats, Mode, locate_file
from simulator.report import Report, build_report, group_estimates
from simulator.run import SURVEY_PHONES, PhoneConfig, SimConfig, simulate
from simulator.truth import read_truth

ESTIMATES = "estimates.jsonl"


@contextmanager
def _progress(label: str, quiet: bool) -> Iterator[Any]:
    """A rich progress bar on stderr; yields an update(done, total) callback."""
    if quiet:
        yield lambda done, total: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=1.0)

        def update(done: float, total: float) -> None:
            bar.update(task, completed=done / total if total > 0 else 1.0)

        yield update


def _locate(site: SiteConfig, observations: Path, out: Path, mode: Mode, quiet: bool) -> LocateStats:
    if not observations.is_file():
        raise CliError(f"{observations}: no such file")
    total = observations.stat().st_size
    with _progress(f"locating ({mode})", quiet) as update, observations.open("rb") as handle:
        def tick(_: float) -> None:
            update(handle.tell(), total)

        stats = locate_file(site, observations, out, mode, on_window=tick)
    return stats


@click.group(invoke_without_command=True)
@site_option("site", default=None, help_text="Site config of the store")
@click.option("--shoppers", type=click.IntRange(min=1), default=50, show_default=True,
              help="Shoppers arriving during the first MINUTES.")
@click.option("--minutes", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Arrival window; the run lasts until the last shopper leaves.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same files.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), help="Output directory.")
@click.option("--store-seed", type=int, help="Seed of the store's static radio (receiver biases, lasting shadows); "
              "default: derived from the site's store id, so walks and shoppers of one site share a store.")
@click.option("--channel", "channel_name", type=click.Choice(list(CHANNELS)), default="impaired", show_default=True,
              help="Radio channel: lognormal (shadowing only), impaired (mild), store (phones differ, bodies, "
                   "lasting shadows). The flags below override its figures.")
@click.option("--sigma", type=click.FloatRange(min=0.0), help="Log-normal shadowing spread, dB.")
@click.option("--correlation-m", type=click.FloatRange(min=0.0),
              help="Spatial correlation distance of shadowing (0: independent per packet).")
@click.option("--body-loss", type=click.FloatRange(min=0.0),
              help="Loss through the carrier's body when a receiver is behind them, dB.")
@click.option("--receiver-bias", type=click.FloatRange(min=0.0), help="Spread of per-receiver bias, dB.")
@click.option("--device-offset", type=click.FloatRange(min=0.0), help="Spread of per-phone TX offset, dB.")
@click.option("--packet-loss", type=click.FloatRange(min=0.0, max=0.99),
              help="Probability a receiver misses a packet.")
@click.option("--app-share", type=click.FloatRange(0.0, 1.0), help="Share of shoppers whose phone runs the app "
              "(default 0.6).")
@click.option("--anon-ble-share", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Share of phones without the app that advertise over BLE from an address rotating every ~15 min.")
@click.option("--passers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Passers-by walking the pavement outside the entrance during the arrival window.")
@click.option("--passer-probe-share", type=click.FloatRange(0.0, 1.0), default=0.7, show_default=True,
              help="Share of passers-by whose phone sends Wi-Fi probes.")
@click.option("--fixtures", type=click.IntRange(min=0), default=0, show_default=True,
              help="Fixed devices inside (PC, printer, till, ...), probing from before the first shopper.")
@click.option("--survey", is_flag=True, help="Simulate one technician's calibration walk (a reference tag, "
              "no offset) instead of shoppers.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.pass_context
def sim(ctx: click.Context, site: Path | None, shoppers: int, minutes: float, seed: int, out_dir: Path | None,
        store_seed: int | None, channel_name: str, sigma: float | None, correlation_m: float | None,
        body_loss: float | None, receiver_bias: float | None, device_offset: float | None,
        packet_loss: float | None, app_share: float | None, anon_ble_share: float, passers: int,
        passer_probe_share: float, fixtures: int, survey: bool, quiet: bool) -> None:
    """Simulate shoppers in a store: observations.jsonl, taps.jsonl and truth.jsonl in --out.

    \b
    Example:
      santi sim --config examples/fishmonger.toml --shoppers 200 --minutes 30 --seed 1 --out run1
      santi sim report run1
      santi sim --config examples/fishmonger.toml --channel store --survey --out walk
      santi sim --config examples/fishmonger.toml --shoppers 200 --minutes 120 --app-share 0.5 \\
          --anon-ble-share 0.5 --passers 600 --fixtures 4 --out crowd
    """
    if ctx.invoked_subcommand is not None:
        return
    if site is None or out_dir is None:
        raise CliError("santi sim needs --config and --out (see santi sim --help)")
    config = load_site(site)
    given = {"sigma_db": sigma, "correlation_m": correlation_m, "body_loss_db": body_loss,
             "receiver_bias_db": receiver_bias, "device_offset_db": device_offset, "packet_loss": packet_loss}
    channel = replace(CHANNELS[channel_name], **{k: v for k, v in given.items() if v is not None})
    if survey and (app_share is not None or anon_ble_share or passers or fixtures):
        raise CliError("--survey simulates one technician's walk: --app-share, --anon-ble-share, --passers and "
                       "--fixtures do not apply to it")
    phones = PhoneConfig() if app_share is None else PhoneConfig(app_share=app_share)
    crowd = CrowdConfig(anon_ble_share=anon_ble_share, passers=passers, passer_probe_share=passer_probe_share,
                        fixtures=fixtures)
    sim_config = SimConfig(shoppers=1 if survey else shoppers, minutes=minutes, seed=seed, store_seed=store_seed,
                           channel=channel, phones=phones, crowd=crowd)
    if survey:
        sim_config = replace(sim_config, phones=SURVEY_PHONES)
    try:
        with _progress("simulating", quiet) as update:
            summary = simulate(config, sim_config, out_dir, update, survey=survey)
    except OSError as exc:
        raise CliError(str(exc)) from None
    if not quiet:
        click.echo(f"{plural(summary.shoppers, 'shopper')} over {summary.duration_s / 60:.1f} min: "
                   f"{plural(summary.observations, 'observation')} from {plural(summary.emitters, 'emitter')}, "
                   f"{plural(summary.taps, 'card tap')} -> {out_dir}")


def _report_table(report: Report) -> Table:
    table = Table("figure", "value", title=f"Accuracy ({report.tech.upper()}, {report.tracked_shoppers} tracked shoppers)")
    p, s, b = report.position, report.sectors, report.bound
    table.add_row("position error median", f"{p.median_m:.2f} m")
    table.add_row("position error p90", f"{p.p90_m:.2f} m")
    table.add_row("position RMSE (tracker)", f"{p.rmse_m:.2f} m  ({p.n} estimates)")
    if b is not None:
        table.add_row("snapshot RMSE / Cramér-Rao bound",
                      f"{b.rmse_m:.2f} m / {b.crlb_rmse_m:.2f} m = {b.ratio:.2f}x  ({b.windows} windows, sigma {b.sigma_db:g} dB)")
    table.add_row("sector accuracy (shopper-time)", f"{s.accuracy:.1%}  (estimate available {s.covered:.1%})")
    table.add_row("sector entries precision / recall",
                  f"{s.precision:.2f} / {s.recall:.2f}  ({s.matched_entries} of {s.estimated_entries} est., {s.true_entries} true)")
    table.add_row("false sector changes", f"{s.false_changes_per_hour:.2f} per shopper-hour  ({s.false_changes} in {s.shopper_hours:.1f} h)")
    table.add_row("entry decided after the true crossing",
                  f"p50 {s.latency_p50_s:.1f} s, p90 {s.latency_p90_s:.1f} s, p99 {s.latency_p99_s:.1f} s")
    return table


@sim.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@site_option("site", default=None, help_text="Site config [default: the one named in truth.jsonl]")
@click.option("--tech", type=click.Choice(["ble", "wifi"]), default="ble", show_default=True,
              help="Which emitters to score.")
@click.option("--mode", type=click.Choice(["track", "snapshot"]), default="track", show_default=True,
              help="How to locate if RUN_DIR has no estimates.jsonl yet.")
@click.option("--bound-sample", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Windows fixed on their own for the Cramér-Rao comparison (0 skips it).")
@click.option("--png", type=click.Path(path_type=Path, dir_okay=False), help="Plot path (default RUN_DIR/report.png).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def report_cmd(run_dir: Path, site: Path | None, tech: str, mode: str, bound_sample: int, png: Path | None,
               as_json: bool, quiet: bool) -> None:
    """Compare estimates in RUN_DIR with its truth: position, bound and sector figures, and a PNG.

    Runs `santi locate` first (writing RUN_DIR/estimates.jsonl) if there are no estimates yet.

    \b
    Example:
      santi sim report run1
      santi sim report run1 --json
    """
    truth_path, observations = run_dir / "truth.jsonl", run_dir / "observations.jsonl"
    for needed in (truth_path, observations):
        if not needed.is_file():
            raise CliError(f"{needed}: no such file (is {run_dir} the output of santi sim?)")
    truth = read_truth(truth_path)
    site_path = site or (Path(truth.run.site) if truth.run is not None and truth.run.site else None)
    if site_path is None:
        raise CliError(f"{truth_path} names no site config; pass --config")
    config = load_site(site_path)
    estimates = run_dir / ESTIMATES
    stats: dict[str, Any] = {}
    if not estimates.is_file():
        located = _locate(config, observations, estimates, cast(Mode, mode), quiet or as_json)
        stats = {"mode": mode, "windows": located.windows, "estimates": located.estimates,
                 "dropped": located.unknown_receiver + located.late + located.bad_lines}
    reader = RecordReader(estimates, Estimate)
    groups = group_estimates(reader)
    if reader.bad_total:
        raise CliError(f"{estimates}: {plural(reader.bad_total, 'bad line')} (first: line {reader.report.bad[0].line}: "
                       f"{reader.report.bad[0].reason})")
    report = build_report(config, truth, groups, tech=cast(Tech, tech),
                          observations=observations, bound_sample=bound_sample)
    report.locate = stats
    from simulator.plot import plot_report  # noqa: PLC0415  (matplotlib is an optional extra)

    picture = plot_report(config, truth, groups, report, png or run_dir / "report.png")
    if as_json:
        click.echo(json.dumps({**report.figures(), "png": str(picture)}, indent=2))
        return
    Console().print(_report_table(report))
    click.echo(f"plot: {picture}")


@click.command("locate")
@site_option("site", default=None, required=True)
@click.option("--observations", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Replay file of observations (JSON Lines, time order).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="Estimates file to write.")
@click.option("--mode", type=click.Choice(["track", "snapshot"]), default="track", show_default=True,
              help="track: Kalman tracker and sector HMM; snapshot: each window fixed on its own.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
def locate_cmd(site: Path, observations: Path, out: Path, mode: str, quiet: bool) -> None:
    """Locate every emitter in an observation file: one estimate per emitter per window.

    Each line: ts, emitter_id, x, y, sector, sector_probability, covariance (and sector_since).

    \b
    Example:
      santi locate --config examples/fishmonger.toml --observations run1/observations.jsonl --out run1/estimates.jsonl
    """
    config = load_site(site)
    stats = _locate(config, observations, out, cast(Mode, mode), quiet)
    if not quiet:
        click.echo(f"{stats.estimates} estimates in {stats.windows} windows from {stats.observations} observations "
                   f"-> {out}")
        dropped = {"unknown receiver": stats.unknown_receiver, "late": stats.late, "bad line": stats.bad_lines,
                   "too few receivers": stats.unfixed}
        if any(dropped.values()):
            click.echo("dropped: " + ", ".join(f"{v} {k}" for k, v in dropped.items() if v), err=True)


@click.group("calibrate")
def calibrate() -> None:
    """Receiver calibration: fit path-loss models from a walk with known positions."""


@calibrate.command("fit")
@site_option("site", default=None, required=True, help_text="Site config to start from")
@click.option("--observations", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Observations recorded during the walk.")
@click.option("--truth", "truth_path", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="truth.jsonl with the walk's known positions and the emitter carried.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the calibrated site config.")
@click.option("--min-samples", type=click.IntRange(min=3), default=30, show_default=True,
              help="Readings a receiver needs to be refitted.")
@click.option("--radio-map/--no-radio-map", default=True, show_default=True,
              help="Also learn where each receiver reads above or below its model (walls, shelves) and write "
                   "that map beside --out.")
@click.option("--fingerprint/--no-fingerprint", default=True, show_default=True,
              help="Also learn each sector's RSSI signature from the walk and write it beside --out, for the sector "
                   "filter to weigh beside the position.")
@click.option("--map-method", type=click.Choice(MAP_METHODS), default=None,
              help="How the radio map is fitted. kernel: the walk's residuals smoothed over a distance, gentle "
                   "gradients the tracker's own update follows safely. kriged: the Gaussian-process mean with the "
                   "covariance the walk's own variogram gives, the truest map but a steep one; meant for a tracker "
                   "that weighs the whole store at once (a grid filter): the tracker's update alone can follow its "
                   "gradients into wrong places. Either is kept only if it helps held-out walk segments. "
                   "[default: kernel; kriged for the grid filter]")
@click.option("--map-bandwidth", type=click.FloatRange(min=1.0, max=10.0),
              help="Smoothing distance of a kernel radio map, metres (default: chosen among "
                   f"{', '.join(f'{b:g}' for b in MAP_BANDWIDTHS_M)} by tracking held-out walk segments).")
@click.option("--without-walker-body", "walker_body", is_flag=True,
              help="Take the walker's own body out of the readings before fitting the receivers and the map: what the "
                   "receivers behind them lose, estimated from the walk's direction, which a map otherwise learns as "
                   "stripes. The map comes out truer and finer; on a finer map the tracker loses some tracks for "
                   "long unless [tracking] still_grid_s is on (benchmarks/README.md).")
@click.option("--grid-filter/--no-grid-filter", "for_grid", default=None,
              help="Calibrate for the grid filter, which weighs every cell of the store for every shopper: the "
                   "walker's whole body out of the readings, the receivers fitted as they read an unobstructed phone, "
                   "a kriged map judged by tracking held-out walk segments with the grid filter, and, if the map is "
                   "kept, [tracking] grid_motion_m, grid_sigma_db (the map's nugget), body_loss_db (the walker's "
                   "body), and, where the site sets none, phone_offset_db and the sector filter's walk test "
                   "(sector_walk_m, hysteresis_s) written to --out, still_grid_s dropped; it costs about three times "
                   "the CPU per reading (benchmarks/README.md). "
                   "--no-grid-filter calibrates for the tracker's own filter. With neither, both are fitted and the "
                   "grid filter is chosen only if it tracks the held-out walk segments better by the rule a map is "
                   "kept by; --map-method kernel, --map-bandwidth, --no-radio-map or --without-walker-body choose "
                   "the filter.")
@click.option("--json", "as_json", is_flag=True, help="Print the fits as JSON.")
def fit(site: Path, observations: Path, truth_path: Path, out: Path, min_samples: int, radio_map: bool,
        fingerprint: bool, map_method: str | None, map_bandwidth: float | None, walker_body: bool,
        for_grid: bool | None, as_json: bool) -> None:
    """Fit each receiver's rssi_at_1m, path_loss_exponent and noise from a calibration walk; write the site to --out.

    The new config keeps the original's comments and layout; receivers with too
    few readings keep their values. Unless --no-radio-map, the walk's
    residuals against the fitted models become a radio map (OUT's name with
    .radiomap.npz) that the config names in [tracking] radio_map: where the
    walk found a receiver reading several dB off its model, the tracker
    expects it to; where the walk did not pass, the plain model stays.
    Unless --no-fingerprint, each sector's RSSI signature on the walk
    (OUT's name with .fingerprint.npz, named in [tracking] fingerprint)
    is weighed by the sector filter beside the position's. Unless told
    (--grid-filter or --no-grid-filter), the walk is calibrated both for the
    tracker's own filter and for the grid filter, and the grid filter is
    turned on only if it tracks the walk's held-out segments better.

    \b
    Example:
      santi sim --config examples/fishmonger.toml --survey --out walk
      santi calibrate fit --config examples/fishmonger.toml --observations walk/observations.jsonl \\
          --truth walk/truth.jsonl --out fishmonger-calibrated.toml
    """
    plain_only = map_method == "kernel" or map_bandwidth is not None or not radio_map or walker_body
    if for_grid and plain_only:
        raise CliError("--grid-filter fits a kriged map with the walker's whole body out: drop --map-method kernel, "
                       "--map-bandwidth, --no-radio-map and --without-walker-body")
    if map_method == "kriged" and map_bandwidth is not None:
        raise CliError("--map-bandwidth is the smoothing distance of a kernel map; a kriged map takes its length "
                       "from the walk (drop --map-bandwidth or use --map-method kernel)")
    config = load_site(site)
    for needed in (observations, truth_path):
        if not needed.is_file():
            raise CliError(f"{needed}: no such file")
    truth = read_truth(truth_path)
    if not truth.tracks:
        raise CliError(f"{truth_path}: no known positions in it (position records)")
    samples = calibration_samples(config, RecordReader(observations, Observation), truth)
    options = (min_samples, radio_map, map_method, map_bandwidth, walker_body)
    chosen = _fitted(config, samples, for_grid is True, *options)
    choice = None
    if for_grid is None and not plain_only:
        gridded = _fitted(config, samples, True, *options)
        assert chosen.verdict is not None  # both judged a map: not plain_only
        assert gridded.verdict is not None
        choice = _choice_note(chosen.verdict, gridded.verdict)
        if grid_is_better(chosen.verdict, gridded.verdict):
            chosen = gridded
    fits, verdict, grid, body_db = chosen.fits, chosen.verdict, chosen.grid, chosen.body_db
    for_grid = grid is not None
    stored = verdict.stored if verdict is not None else None
    tracking = grid_settings(grid, verdict)
    signature = walk_fingerprint(config, samples) if fingerprint else None
    try:
        write_calibrated_site(config, site, fits, out, stored, signature, tracking)
    except ConfigError as exc:
        raise CliError(f"calibrated config did not validate: {exc}") from None
    except OSError as exc:
        raise CliError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    spread = map_spread(stored) if stored is not None else {}
    if as_json:
        click.echo(json.dumps([
            {"receiver_id": f.receiver_id, "samples": f.samples, "reason": f.reason,
             **({} if f.calibration is None else {
                 "rssi_at_1m": f.calibration.rssi_at_1m, "rssi_at_1m_se": f.calibration.rssi_at_1m_se,
                 "path_loss_exponent": f.calibration.path_loss_exponent,
                 "path_loss_exponent_se": f.calibration.path_loss_exponent_se,
                 "noise_sigma_db": f.calibration.sigma_db}),
             **({} if stored is None else {"radio_map_max_db": spread[f.receiver_id]})}
            for f in fits], indent=2))
        click.echo(_body_note(body_db, walker_body or for_grid, for_grid), err=True)
        if choice is not None:
            click.echo(choice, err=True)
        if for_grid:
            click.echo(_grid_note(tracking), err=True)
        click.echo(_map_verdict(verdict, out), err=True)
        click.echo(_fingerprint_note(signature, fingerprint, out), err=True)
        return
    columns = ["receiver", "readings", "rssi_at_1m", "exponent", "sigma dB / note"]
    table = Table(*columns, *(["map dB"] if stored is not None else []), title="Calibration")
    for result in fits:
        extra = [f"{spread[result.receiver_id]:+.1f}"] if stored is not None else []
        table.add_row(*summary_row(result), *extra)
    Console().print(table)
    click.echo(f"calibrated site config -> {out}")
    click.echo(_body_note(body_db, walker_body or for_grid, for_grid))
    if choice is not None:
        click.echo(choice)
    if for_grid:
        click.echo(_grid_note(tracking))
    click.echo(_fingerprint_note(signature, fingerprint, out))
    click.echo(_map_verdict(verdict, out))


@dataclass(frozen=True)
class _Fitted:
    """One calibration of the walk: the receivers' fits, the map's verdict, the grid's settings (None: the tracker's
    own filter) and the walker's body, dB."""

    fits: list[ReceiverFit]
    verdict: MapVerdict | None
    grid: GridCalibration | None
    body_db: float


def _fitted(config: SiteConfig, samples: dict[str, WalkSamples], for_grid: bool, min_samples: int, radio_map: bool,
            map_method: str | None, map_bandwidth: float | None, walker_body: bool) -> _Fitted:
    """The walk calibrated for the grid filter or for the tracker's own filter, its map judged."""
    # Taken out, the walker's body leaves the receivers and the map to describe the store; the fingerprint keeps
    # what a carried phone reads, body and all, as a shopper's does.
    cleaned, body_db = without_body(samples, keep_mean=not for_grid)
    walked = cleaned if walker_body or for_grid else samples
    fits = fit_receivers(config, walked, min_samples=min_samples)
    if not any(f.calibration is not None for f in fits):
        raise CliError("no receiver had enough readings to fit; " + "; ".join(
            f"{f.receiver_id}: {f.reason}" for f in fits))
    grid = GridCalibration.for_site(config, body_db) if for_grid else None
    method = map_method or ("kriged" if for_grid else "kernel")
    verdict = judge_radio_map(config, walked, fits, method=method, bandwidth_m=map_bandwidth, grid=grid) \
        if radio_map else None
    return _Fitted(fits, verdict, grid, body_db)


def _choice_note(plain: MapVerdict, grid: MapVerdict) -> str:
    """Which tracker `calibrate fit` chose, with the held-out figures it chose by."""
    (plain_m, plain_s), (grid_m, grid_s) = held_out(plain), held_out(grid)
    figures = (f"on held-out walk segments, the filter {plain_m:.2f} m median, {plain_s:.1%} in the right sector; the "
               f"grid filter {grid_m:.2f} m, {grid_s:.1%}")
    if grid_is_better(plain, grid):
        return f"tracker: the grid filter ({figures}; --no-grid-filter keeps the filter)"
    if grid.stored is None:
        figures += ", its kriged map not kept"
    return (f"tracker: the filter ({figures}; the grid filter needs the error x{1.0 - MAP_MIN_GAIN:.2f} or less and "
            f"at most {MAP_SECTOR_SLACK:.0%} fewer windows in the right sector; --grid-filter turns it on anyway)")


def _body_note(body_db: float, taken_out: bool, whole: bool = False) -> str:
    if body_db == 0.0:
        return "walker's body: not seen (no receiver read lower behind the walker); readings fitted as recorded"
    said = f"walker's body: receivers behind the walker read up to {body_db:.1f} dB low; "
    if whole:
        return said + "all of it taken out before fitting the receivers and the map"
    return said + ("taken out before fitting the receivers and the map" if taken_out
                   else "left in the readings (--without-walker-body takes it out)")


def _grid_note(tracking: dict[str, float | None]) -> str:
    if tracking.get("grid_motion_m") is None:
        return "grid filter: not turned on, the kriged map was not kept (without the store's field it does worse)"
    return (f"grid filter: on ([tracking] grid_motion_m = {tracking['grid_motion_m']:g}, grid_sigma_db = "
            f"{tracking['grid_sigma_db']:g}, body_loss_db = {tracking['body_loss_db']:g}, phone_offset_db = "
            f"{tracking['phone_offset_db']:g}, sector_walk_m = {tracking['sector_walk_m']:g}, hysteresis_s = "
            f"{tracking['hysteresis_s']:g})")


def _fingerprint_note(signature: StoredFingerprint | None, asked: bool, out: Path) -> str:
    if not asked:
        return "sector fingerprint: not asked for (--no-fingerprint)"
    if signature is None:
        return "sector fingerprint: not written, the walk heard no receiver"
    windows = signature.fingerprint.windows
    unwalked = [s for s, n in zip(signature.sector_ids, windows.tolist(), strict=True) if n == 0]
    return (f"sector fingerprint -> {fingerprint_path(out)} ({int(windows.sum())} walk windows, kernel "
            f"{signature.fingerprint.bandwidth_db:g} dB"
            + (f"; sectors not walked, judged by position alone: {', '.join(unwalked)})" if unwalked else ")"))


def _map_verdict(verdict: MapVerdict | None, out: Path) -> str:
    if verdict is None:
        return "radio map: not asked for (--no-radio-map)"
    if verdict.method == "kriged" and verdict.covariance is None:
        return "radio map: not written, the walk is too short to estimate how the field varies for kriging"
    if not verdict.windows:
        return "radio map: not written, the walk is too short to check one on segments it was not fitted to"
    (plain, mapped), (s_plain, s_mapped) = verdict.median_m, verdict.sectors
    cov = verdict.covariance
    how = (f"{verdict.bandwidth_m:g} m smoothing" if cov is None else
           f"kriged (nugget {cov.nugget_db2:.1f} dB², signal {cov.signal_db2:.1f} dB², length {cov.length_m:.1f} m)")
    held_out = (f"{how}: on held-out walk segments, median error {plain:.2f} -> "
                f"{mapped:.2f} m, right sector {s_plain:.1%} -> {s_mapped:.1%}; readings' squared error "
                f"x{verdict.ratio:.2f}")
    if verdict.stored is None:
        return (f"radio map: not written ({held_out}; needs the error x{1.0 - MAP_MIN_GAIN:.2f} or less and at most "
                f"{MAP_SECTOR_SLACK:.0%} fewer windows in the right sector)")
    return f"radio map -> {radio_map_path(out)} ({held_out})"
