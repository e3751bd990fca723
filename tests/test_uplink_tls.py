"""The uplink over TLS, with certificates made here by ``openssl``: good, wrong CA, expired, client certs."""

from __future__ import annotations

import contextlib
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.backoff import BackoffPolicy
from agent.config import BufferConfig, TlsConfig, UplinkConfig
from agent.localbroker import Broker
from agent.outbox import Outbox
from agent.uplink import Uplink, UplinkState
from tests.helpers.outbox_writer import AGENT, STORE, make_event
from tests.helpers.pki import Pki, make_pki, password_settings, tls_broker
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def outbox(sqlite_path: Path) -> Iterator[Outbox]:
    with Outbox.open(sqlite_path, BufferConfig()) as box:
        rng = random.Random(9)
        box.append_many([make_event(i, rng) for i in range(50)])
        yield box


def _run(broker: Broker, outbox: Outbox, tls: TlsConfig | None, *, until: UplinkState) -> Uplink:
    # About the broker's TLS: PUBACKs say delivered, with no HQ to acknowledge.
    config = UplinkConfig(host=broker.host, port=broker.port, tls=tls, ack="broker")
    link = Uplink(config, outbox, store_id=STORE, agent_id=AGENT,
                  policy=BackoffPolicy(base_s=0.2, cap_s=1.0), rng=random.Random(1), connect_timeout_s=3.0)
    link.start()
    link.wait_for(until, timeout=8)
    return link


@contextlib.contextmanager
def _linked(tmp_path: Path, pki: Pki, outbox: Outbox, tls: TlsConfig | None, *, until: UplinkState,
            cert: Path | None = None, drain_s: float = 0.0) -> Iterator[tuple[Broker, Uplink]]:
    """A TLS broker serving ``cert`` (the good one unless told), an uplink run until ``until``; both stopped after."""
    broker = tls_broker(tmp_path, pki, cert=cert or pki.server_cert)
    broker.start()
    link = _run(broker, outbox, tls, until=until)
    try:
        yield broker, link
    finally:
        link.stop(drain_deadline_s=drain_s)
        broker.stop()


def test_tls_with_the_right_ca_delivers(tmp_path: Path, pki: Pki, outbox: Outbox) -> None:
    with _linked(tmp_path, pki, outbox, TlsConfig(ca_file=pki.ca), until="online", drain_s=2) as (_, link):
        assert link.state == "online", link.last_error
        wait_until(lambda: outbox.depth() == 0, 10, "the outbox drained")


def test_wrong_ca_is_one_clear_line(tmp_path: Path, pki: Pki, outbox: Outbox) -> None:
    with _linked(tmp_path, pki, outbox, TlsConfig(ca_file=pki.other_ca), until="offline") as (broker, link):
        assert link.last_error == (
            f"TLS: certificate verify failed for broker 127.0.0.1:{broker.port}: wrong CA file "
            f"{pki.other_ca}? (self-signed certificate in certificate chain)"
        )
        assert outbox.depth() == 50


def test_expired_server_certificate_is_named(tmp_path: Path, pki: Pki, outbox: Outbox) -> None:
    with _linked(tmp_path, pki, outbox, TlsConfig(ca_file=pki.ca), until="offline",
                 cert=pki.expired_cert) as (broker, link):
        assert link.last_error == (
            f"TLS: the certificate of broker 127.0.0.1:{broker.port} has expired — renew it on the broker "
            f"(or check this device's clock)"
        )


def test_client_certificate_required_and_given(tmp_path: Path, pki: Pki, outbox: Outbox) -> None:
    broker = tls_broker(tmp_path, pki, cert=pki.server_cert, require_client_cert=True)
    broker.start()
    try:
        link = _run(broker, outbox, TlsConfig(ca_file=pki.ca), until="auth_failed")
        try:
            assert link.state == "auth_failed"
            # Either the broker's alert arrives ("requires a client certificate") or
            # only its close does ("probably requires ..."): both say what to do.
            message = link.last_error or ""
            assert message.startswith(f"TLS: broker 127.0.0.1:{broker.port} ")
            assert message.endswith((
                "probably requires a client certificate: set uplink.tls.cert_file and key_file",
                "requires a client certificate — set uplink.tls.cert_file and key_file",
            ))
            assert link.stats.connect_attempts == 1
        finally:
            link.stop(drain_deadline_s=0)
        tls = TlsConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
        link = _run(broker, outbox, tls, until="online")
        try:
            assert link.state == "online", link.last_error
            wait_until(lambda: outbox.depth() == 0, 10, "the outbox drained")
        finally:
            link.stop(drain_deadline_s=2)
    finally:
        broker.stop()


def test_plain_client_on_a_tls_port_gets_advice(tmp_path: Path, pki: Pki, outbox: Outbox) -> None:
    with _linked(tmp_path, pki, outbox, None, until="offline") as (broker, link):
        assert (link.last_error or "").startswith(
            f"broker 127.0.0.1:{broker.port} closed the connection before accepting it")
        assert "TLS port without [uplink.tls]" in (link.last_error or "")


def test_missing_ca_file_is_a_config_error(tmp_path: Path, outbox: Outbox) -> None:
    broker = Broker(tmp_path)
    missing = tmp_path / "nope" / "ca.pem"
    link = _run(broker, outbox, TlsConfig(ca_file=missing), until="offline")
    try:
        assert link.state == "offline"
        assert (link.last_error or "").startswith("cannot load uplink TLS files: [Errno 2] No such file")
        assert link.stats.connect_attempts == 1
    finally:
        link.stop(drain_deadline_s=0)


def test_a_missing_password_file_is_named_as_such_not_as_tls_files(tmp_path: Path, pki: Pki, outbox: Outbox) -> None:
    broker = tls_broker(tmp_path, pki, cert=pki.server_cert, extra=password_settings(tmp_path, {"pi-1": "pw-1"}))
    broker.start()
    secret = tmp_path / "uplink.password"
    config = UplinkConfig(host=broker.host, port=broker.port, tls=TlsConfig(ca_file=pki.ca), ack="broker",
                          username="pi-1", password_file=secret)
    try:
        for password, state in ((None, "offline"), ("pw-1", "online")):
            if password is not None:
                secret.write_text(password + "\n", encoding="utf-8")
            link = Uplink(config, outbox, store_id=STORE, agent_id=AGENT, policy=BackoffPolicy(base_s=0.2, cap_s=1.0),
                          rng=random.Random(1), connect_timeout_s=3.0)
            link.start()
            try:
                assert link.wait_for(state, timeout=8), link.last_error
                if password is None:
                    assert link.last_error == (
                        f"cannot load uplink credentials: uplink.password_file {secret}: cannot read it (No such "
                        f"file or directory) — check the path and that the agent's user may read it")
            finally:
                link.stop(drain_deadline_s=0)
    finally:
        broker.stop(kill=True)
