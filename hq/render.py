"""A customer profile as the tables a person reads (``santi hq profile`` and the demo)."""

from __future__ import annotations

import math
from datetime import datetime

from rich.console import Console

from agent.text import Table
from hq.profile import Profile


def _fmt_time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def _fmt_s(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s"


def print_profile(found: Profile, console: Console | None = None) -> None:
    """A profile as the tables a person reads (``santi hq profile`` and the demo)."""
    console = console or Console()
    summary = Table(show_header=False, title=f"{found.kind} {found.key}", title_justify="left")
    summary.add_column("", style="bold")
    summary.add_column("")
    summary.add_row("visits", str(found.visits))
    summary.add_row("first visit", _fmt_time(found.first_visit))
    summary.add_row("last visit", _fmt_time(found.last_visit))
    summary.add_row("visits, last 30 days", str(found.visits_last_30d))
    mdb = found.median_days_between
    summary.add_row("median days between visits", "-" if mdb is None else f"{mdb:.1f}")
    summary.add_row("average visit", _fmt_s(found.average_visit_s))
    summary.add_row("stores", ", ".join(f"{s} ({n})" for s, n in found.stores.items()) or "-")
    if found.kind == "loyalty":
        summary.add_row("card taps", f"{found.card_taps} (last {_fmt_time(found.last_card_tap)})")
    console.print(summary)
    if found.dwell_share:
        sectors = Table("sector", "share of time", title="Where they spend their time", title_justify="left")
        for sector, share in found.dwell_share.items():
            sectors.add_row(sector, f"{share:.0%}")
        console.print(sectors)
    visits = Table("started", "store", "duration", "sectors", title="Visits", title_justify="left")
    for v in found.visit_list:
        top = sorted(v.dwell_s.items(), key=lambda kv: -kv[1])
        visits.add_row(_fmt_time(v.started), v.store_id,
                       _fmt_s(v.duration_s) + ("" if v.closed else " (open)"),
                       ", ".join(f"{s} {_fmt_s(t)}" for s, t in top))
    console.print(visits)
