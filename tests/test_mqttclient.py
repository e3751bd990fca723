"""One MQTT client builder: ``santi doctor`` judges a broker exactly as the uplink then fares.

A real Mosquitto that requires a login and TLS; for each way a store gets it
right or wrong, doctor's verdict (broker tls + broker checks) must be OK
exactly when the uplink reaches ``online``. Also what the builder itself
promises: a password is read when the client is built, and never shows.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.backoff import BackoffPolicy
from agent.config import ConfigError, SiteConfig, TlsConfig, load_site
from agent.doctor_broker import check_broker, check_tls
from agent.localbroker import Broker, example_site_for
from agent.mqttclient import BrokerConfig, new_client, tls_context
from agent.outbox import Outbox
from agent.uplink import Uplink
from tests.helpers.pki import Pki, make_pki, password_settings, tls_broker
from tests.helpers.wait import wait_until

USER, PASSWORD = "store-a", "right horse battery"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def locked_broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    """TLS with the test CA's certificate, and only ``USER`` with ``PASSWORD`` may log in."""
    broker = tls_broker(tmp_path, pki, cert=pki.server_cert, extra=password_settings(tmp_path, {USER: PASSWORD}))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop(kill=True)


def _site(tmp_path: Path, broker: Broker, *, password: str | None, ca: Path) -> SiteConfig:
    path = example_site_for(tmp_path, broker.port)
    lines = [f'username = "{USER}"', f'tls.ca_file = "{ca}"']
    if password is not None:
        (tmp_path / "broker.pass").write_text(password + "\n", encoding="utf-8")
        (tmp_path / "broker.pass").chmod(0o600)
    lines.append(f'password_file = "{tmp_path / "broker.pass"}"')
    text = path.read_text(encoding="utf-8").replace("[uplink]\n", "[uplink]\n" + "\n".join(lines) + "\n", 1)
    path.write_text(text, encoding="utf-8")
    if password is None:  # a password file named but gone since config check
        (tmp_path / "broker.pass").write_text("x", encoding="utf-8")
        site = load_site(path)
        (tmp_path / "broker.pass").unlink()
        return site
    return load_site(path)


def _uplink_state(site: SiteConfig, sqlite_path: Path) -> tuple[str, str | None]:
    with Outbox.open(sqlite_path, site.buffer) as outbox:
        link = Uplink(site.uplink.model_copy(update={"ack": "broker"}), outbox, store_id=site.store.id,
                      agent_id=site.agent.id, policy=BackoffPolicy(base_s=5.0, cap_s=5.0),
                      rng=random.Random(1), connect_timeout_s=3.0)
        link.start()
        try:
            assert link.wait_for("online", "offline", "auth_failed", timeout=10)
            return link.state, link.last_error
        finally:
            link.stop(drain_deadline_s=0)


@pytest.mark.parametrize(("password", "right_ca", "works"), [
    (PASSWORD, True, True),
    ("wrong horse", True, False),
    (PASSWORD, False, False),
    (None, True, False),
], ids=["right-login", "wrong-password", "wrong-ca", "password-file-gone"])
def test_doctor_and_uplink_judge_a_locked_broker_alike(tmp_path: Path, pki: Pki, locked_broker: Broker,
                                                       sqlite_path: Path, password: str | None, right_ca: bool,
                                                       works: bool) -> None:
    site = _site(tmp_path, locked_broker, password=password, ca=pki.ca if right_ca else pki.other_ca)
    tls = check_tls(site.uplink, now=time.time(), timeout=3.0)
    broker = check_broker(site, timeout=3.0)
    state, error = _uplink_state(site, sqlite_path)
    doctor_ok = "fail" not in (tls.status, broker.status)  # a warning (certificate expires soon) still works
    assert doctor_ok is works, (tls, broker)
    assert (state == "online") is works, error
    if not works:
        assert error is not None
        assert "\n" not in error
        assert PASSWORD not in error
        assert "wrong horse" not in error
        assert PASSWORD not in broker.detail + tls.detail


def test_password_is_read_when_the_client_is_built_and_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                   locked_broker: Broker, pki: Pki) -> None:
    secret_file = tmp_path / "pass"
    cfg = BrokerConfig(locked_broker.host, locked_broker.port, "t-1", USER, password_file=secret_file,
                       tls=TlsConfig(ca_file=pki.ca), section="nodes")
    with pytest.raises(ConfigError) as missing:
        new_client(cfg)
    assert str(missing.value).startswith(f"nodes.password_file {secret_file}: cannot read it (No such file")
    secret_file.write_text(PASSWORD + "\n", encoding="utf-8")
    caplog.set_level(logging.DEBUG)
    client = new_client(cfg)
    client.enable_logger(logging.getLogger("test-mqttclient"))
    assert client.connect(cfg.host, cfg.port) == 0
    client.loop_start()
    try:
        wait_until(client.is_connected, 10, "the login over TLS")
    finally:
        client.disconnect()
        client.loop_stop()
    assert PASSWORD not in caplog.text + repr(cfg)


def test_env_password_and_command_line_naming(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = BrokerConfig("h", 1, username="u", password_env="SANTI_TEST_PW", section="")
    with pytest.raises(ConfigError, match=r"^--password-env: environment variable SANTI_TEST_PW is not set$"):
        cfg.password()
    monkeypatch.setenv("SANTI_TEST_PW", "s3cret")
    secret = cfg.password()
    assert secret is not None
    assert secret.get_secret_value() == "s3cret"
    assert BrokerConfig("h", 1).password() is None


def test_tls_context_verifies_the_broker_and_loads_a_client_certificate(pki: Pki) -> None:
    context = tls_context(TlsConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key))
    assert context.check_hostname is True
    assert context.verify_mode.name == "CERT_REQUIRED"
    with pytest.raises(OSError):
        tls_context(TlsConfig(ca_file=pki.ca.with_name("absent.pem")))
