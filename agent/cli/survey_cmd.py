"""``santi calibrate survey``: record a calibration walk in a real store, for ``santi calibrate fit``.

Registered on the ``calibrate`` group by ``agent.cli.calibrate_cmd``. The
listening is ``agent.survey.SurveyCapture`` (the agent's own Bluetooth and
node sources); the files are ``simulator.calibrate.survey_files``, the
same observations and truth that ``santi sim --survey`` writes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console

from agent.calibration_walk import Beacon
from agent.cli.beacon_arg import beacon_arg
from agent.cli.errors import CliError
from agent.config import SiteConfig, load_site
from agent.replayfile import write_records
from agent.survey import SurveyCapture, parse_route
from agent.text import Table, plural
from simulator.calibrate import survey_files

SurveyFactory = Callable[[SiteConfig, Beacon], SurveyCapture]
"""Makes the capture for a site and a tag; the command takes one, so tests can pick theirs."""

ASK_HEARD = "?"
"""Typed at a prompt instead of Enter: what the receivers have heard of the tag so far, then the same prompt."""


def _heard_line(capture: SurveyCapture, site: SiteConfig) -> str:
    heard = capture.heard()
    if not heard:
        return "the tag has not been heard yet: is it on, and is it the one --beacon names?"
    return "heard so far: " + ", ".join(f"{r.id} {heard[r.id]}" for r in site.receivers if heard[r.id])


def survey_command(capture_factory: SurveyFactory = SurveyCapture) -> click.Command:
    """The command, with the capture it listens through; tests pass their own factory."""

    @click.command("survey")
    @click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False), required=True,
                  help="The store's site config (receivers, [nodes] broker, outline).")
    @click.option("--beacon", required=True, callback=beacon_arg,
                  help="The tag you carry: UUID:MAJOR:MINOR (iBeacon; heard by the Pi and the nodes) or "
                       "NAMESPACE:INSTANCE (Eddystone-UID; heard by the Pi's own radio only).")
    @click.option("--route", "route_text", required=True,
                  help="The points you walk through, X,Y in store metres, separated by spaces, e.g. "
                       "'2,2 2,18 10,18 10,2'. Mark them on the floor first.")
    @click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
                  help="Folder for observations.jsonl and truth.jsonl.")
    @click.option("--height", type=click.FloatRange(min=0.3, max=2.5), default=None,
                  help="Height of the tag above the floor, m [default: the site's [tracking] emitter_height_m].")
    @click.option("--stops", is_flag=True,
                  help="Stand at each point until you press Enter a second time, as you leave it: what the "
                       "receivers hear meanwhile is heard at the point itself.")
    def survey(config: Path, beacon: Beacon, route_text: str, out: Path, height: float | None, stops: bool) -> None:
        """Record a calibration walk: the tag's readings at every receiver, and when you reached each point.

        Carry the tag at chest height, as a shopper carries a phone. At each
        point of --route press Enter as you reach it, and walk at a steady
        pace to the next: between two points the tag is taken to be on the
        straight line, at the time's share of the leg. Type ? and Enter
        instead to see what the receivers have heard so far. With --stops
        you also press Enter as you leave each point, and may stand there as
        long as you like. Then fit the store from the walk with santi
        calibrate fit.

        \b
        Example:
          santi calibrate survey --config /etc/santi/site.toml \\
              --beacon 5a4e7469-0000-4000-8000-00000000f15c:1:1 --route '2,2 2,18 14,18 14,2 28,2 28,18' \\
              --out walk
          santi calibrate fit --config /etc/santi/site.toml --observations walk/observations.jsonl \\
              --truth walk/truth.jsonl --out calibrated.toml
        """
        site = load_site(config)
        try:
            route = parse_route(route_text, site)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--route") from None
        err = Console(stderr=True)
        capture = capture_factory(site, beacon)
        with err.status("starting the receivers…"):
            capture.start()
        marks: list[tuple[float, float, float]] = []
        try:
            for k, (x, y) in enumerate(route):
                asks = [f"Stand at point 1 ({x:g}, {y:g}) with the tag at chest height; press Enter to start"
                        if k == 0 else f"Walk steadily to point {k + 1} ({x:g}, {y:g}); press Enter as you reach it"]
                if stops:
                    asks.append(f"Stand still at point {k + 1}; press Enter as you leave it"
                                if k < len(route) - 1 else f"Stand still at point {k + 1}; press Enter to finish")
                for ask in asks:
                    while click.prompt(ask, default="", show_default=False, prompt_suffix=" ", err=True).strip() \
                            == ASK_HEARD:
                        err.print(_heard_line(capture, site), highlight=False)
                    marks.append((capture.now(), x, y))
        finally:
            capture.close()
        try:
            observations, truth = survey_files(site, str(config), marks, capture.readings(),
                                               height if height is not None else site.tracking.emitter_height_m,
                                               beacon.text)
        except ValueError as exc:
            raise CliError(f"{exc}; nothing written (is the tag on, and is it the one --beacon names?)") from None
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_records(out / "observations.jsonl", observations)
            write_records(out / "truth.jsonl", truth)
        except OSError as exc:
            raise CliError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
        table = Table("receiver", "readings of the tag", title=f"Survey walk, {len(route) - 1} legs, "
                      f"{marks[-1][0] - marks[0][0]:.0f} s")
        counts = {r.id: 0 for r in site.receivers}
        for o in observations:
            counts[o.receiver_id] = counts.get(o.receiver_id, 0) + 1
        for receiver_id, count in counts.items():
            table.add_row(receiver_id, str(count) if count else "none: not heard (off, out of range?)")
        Console().print(table)
        click.echo(f"{plural(len(observations), 'reading')} -> {out / 'observations.jsonl'}; the walk -> "
                   f"{out / 'truth.jsonl'}")
        click.echo(f"next: santi calibrate fit --config {config} --observations {out / 'observations.jsonl'} "
                   f"--truth {out / 'truth.jsonl'} --out CALIBRATED.toml")

    return survey
