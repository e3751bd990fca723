"""Shared fixtures: a real Mosquitto, temp SQLite paths, the shared data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.localbroker import EXAMPLE_SITE, Broker

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A running mosquitto on a free loopback port; stop()/start()/restart() keep the port."""
    instance = Broker(tmp_path_factory.mktemp("mosquitto"))
    instance.start()
    try:
        yield instance
    finally:
        instance.stop(kill=True)


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """A path for a SQLite file on disk (not created)."""
    return tmp_path / "santi.sqlite"


@pytest.fixture
def example_site() -> Path:
    return EXAMPLE_SITE


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip with the reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real recordings not found at {SHARED_DATA} (clone with ../shared beside the project)")
    return SHARED_DATA
