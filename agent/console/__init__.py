"""The store console: a live page for technicians and staff, and ``/metrics`` for the fleet.

Off unless the site config has a ``[console]`` section; the service then
imports this package (and with it aiohttp and prometheus-client) and runs
the server in its own loop. See ``server.py`` for access and streaming,
``snapshot.py`` for what a window shows, ``metrics.py`` for ``/metrics``.
"""

from __future__ import annotations

from pydantic import SecretStr

from agent.config import ConfigError, SiteConfig, read_token
from agent.console.server import Console, ConsoleError, Role
from agent.console.snapshot import Feed
from agent.staffboard import StaffBoard

__all__ = ["Console", "ConsoleError", "open_console"]


async def open_console(site: SiteConfig, board: StaffBoard) -> Console:
    """Read the tokens and start listening; ``ConsoleError`` (one line) when it cannot."""
    config = site.console
    if config is None:
        raise ConsoleError("console: no [console] section in the site config")
    try:
        tokens: dict[Role, SecretStr] = {
            "technician": read_token(config.technician_token_file, "technician_token_file"),
            "staff": read_token(config.staff_token_file, "staff_token_file"),
        }
    except ConfigError as exc:
        raise ConsoleError(str(exc)) from None
    host, port = config.address()
    console = Console(Feed(site, board), tokens, host, port)
    await console.start()
    return console
