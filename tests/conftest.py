"""Shared fixtures: a real Mosquitto, temp SQLite paths, the shared data, fake BlueZ, a TAP interface, HQ stores.

Shared code that is not a fixture lives in tests/helpers/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import BufferConfig
from agent.localbroker import EXAMPLE_SITE, Broker
from agent.outbox import Outbox
from hq.backends import open_store
from hq.store import Store
from tests.helpers.consent import SYNTHETIC_IDS, grant
from tests.helpers.fake_bluez import FakeBluez, serve_fake_bluez
from tests.helpers.hq import pg_conninfo, pg_schema_url
from tests.helpers.wifi import Tap

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
def outbox(sqlite_path: Path) -> Iterator[Outbox]:
    """An empty outbox with the default bounds, in a SQLite file of its own."""
    with Outbox.open(sqlite_path, BufferConfig()) as box:
        yield box


@pytest.fixture
def example_site() -> Path:
    return EXAMPLE_SITE


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip with the reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real recordings not found at {SHARED_DATA} (clone with ../shared beside the project)")
    return SHARED_DATA


@pytest.fixture
def fake_bluez(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBluez]:
    """The fake BlueZ with one powered adapter ``hci0``; the system bus of this test is its private bus.

    bleak keeps one BlueZ connection per event loop, so start each test's
    scanners in a fresh loop (``asyncio.run``) after this fixture is set up.
    """
    with serve_fake_bluez() as fake:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", fake.bus_address)
        monkeypatch.delenv("BLEAK_DBUS_AUTH_UID", raising=False)
        yield fake


@pytest.fixture
def tap_name() -> str:
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun on this machine")
    name = f"stm{os.getpid() % 100000}"
    try:
        Tap(name).close()
    except PermissionError:
        pytest.skip("creating a TAP interface needs CAP_NET_ADMIN")
    return name


@pytest.fixture(scope="session")
def pg_server() -> str:
    url = pg_conninfo()
    if url is None:
        pytest.skip("no PostgreSQL at 127.0.0.1:5432 (database test, user postgres or root, trust auth)")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/hq.sqlite"
        return
    yield from pg_schema_url(request.getfixturevalue("pg_server"))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = open_store(db_url)
    grant(opened, ["L1", *SYNTHETIC_IDS])  # the test customers consent to profiling
    try:
        yield opened
    finally:
        opened.close()
