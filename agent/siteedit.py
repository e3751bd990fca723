"""Edits of a site config's TOML text that keep what the technician wrote: comments, blank lines, key order.

The calibration commands (``santi calibrate fit`` and ``santi calibrate
receiver``) change a few values in a file a person maintains. tomlkit parses
TOML into a document that keeps every comment and the layout, so setting a
value changes that value and nothing else; a key a receiver lacks is added at
the end of its table. Callers validate the result with
`agent.config.parse_site` before writing it.

Part of the contract layer (docs/architecture.md): the simulator's walk
calibration and the agent's guided capture both write through it.
"""

from __future__ import annotations

from collections.abc import Mapping

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Table
from tomlkit.toml_document import TOMLDocument

from agent.config import ConfigError
from positioning.pathloss import Calibration


def fitted_values(cal: Calibration) -> dict[str, float]:
    """Config values of a fit, rounded as a technician would write them and kept within the config's bounds."""
    return {
        "rssi_at_1m": round(cal.rssi_at_1m, 1),
        "path_loss_exponent": round(cal.path_loss_exponent, 2),
        "noise_sigma_db": round(min(max(cal.sigma_db, 0.5), 20.0), 1),
    }


def _parse(text: str) -> TOMLDocument:
    """The document of `text`, which is read as ending in a newline (an appended section starts a line of its own)."""
    try:
        return tomlkit.parse(text if not text or text.endswith("\n") else text + "\n")
    except TOMLKitError as exc:
        raise ConfigError(f"not a TOML site config: {exc}") from None


def set_receiver_values(text: str, values: Mapping[str, Mapping[str, float]]) -> str:
    """The config text with ``values[receiver_id][key]`` set in each named ``[[receivers]]`` table."""
    doc = _parse(text)
    tables = {str(t.get("id")): t for t in doc.get("receivers", []) if isinstance(t, Table)}
    for receiver_id, settings in values.items():
        table = tables.get(receiver_id)
        if table is None:
            raise ConfigError(f"no [[receivers]] table with id = {receiver_id!r}")
        for key, value in settings.items():
            table[key] = value
    return tomlkit.dumps(doc)


def set_tracking_key(text: str, key: str, name: str | float) -> str:
    """The config text with ``[tracking] key = name`` (a file name or a number): the value replaced, or the key or
    section added."""
    doc = _parse(text)
    tracking = doc.get("tracking")
    if isinstance(tracking, Table):
        tracking[key] = name
    else:
        doc.add(tomlkit.nl())
        section = tomlkit.table()
        section.add(key, name)
        doc.add("tracking", section)
    return tomlkit.dumps(doc)


def drop_tracking_key(text: str, key: str) -> str:
    """The config text without its ``[tracking] key`` line, if it has one."""
    doc = _parse(text)
    tracking = doc.get("tracking")
    if not isinstance(tracking, Table) or key not in tracking:
        return text
    del tracking[key]
    return tomlkit.dumps(doc)
