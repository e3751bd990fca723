"""``--beacon``: the one way a command names a reference tag (iBeacon ``UUID:MAJOR:MINOR`` or Eddystone-UID
``NAMESPACE:INSTANCE``, as ``santi scan`` shows them)."""

from __future__ import annotations

import click

from agent.calibration_walk import Beacon, parse_beacon


def beacon_arg(_: click.Context, __: click.Parameter, value: str) -> Beacon:
    """Click callback: the parsed tag, or a usage error saying what a tag's identity looks like."""
    try:
        return parse_beacon(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
