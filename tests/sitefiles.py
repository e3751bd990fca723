"""Site configs for tests: the example store pointed at a test's own broker and state folder."""

from __future__ import annotations

import re
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml"


def example_site_for(tmp_path: Path, port: int, *, host: str = "127.0.0.1", extra: str = "") -> Path:
    """A copy of the example store whose uplink goes to ``host:port`` and state to ``tmp_path/state``."""
    text = EXAMPLE.read_text(encoding="utf-8")
    text = re.sub(r'(\[uplink\]\nhost = )"[^"]*"\nport = \d+', f'\\1"{host}"\nport = {port}', text)
    text = text.replace('state_dir = "/var/lib/santi"', f'state_dir = "{tmp_path / "state"}"')
    text = text.replace("status_interval_s = 60", "status_interval_s = 5")
    path = tmp_path / "site.toml"
    path.write_text(text + extra, encoding="utf-8")
    return path
