"""The uplink over TLS, with certificates made here by ``openssl``: good, wrong CA, expired, client certs."""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.backoff import BackoffPolicy
from agent.config import BufferConfig, TlsConfig, UplinkConfig
from agent.localbroker import Broker
from agent.outbox import Outbox
from agent.uplink import Uplink, UplinkState
from tests.helpers.outbox_writer import AGENT, STORE, make_event

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")

_CA_CNF = """\
[ca]
default_ca = ca_default
[ca_default]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = policy_any
copy_extensions = copy
[policy_any]
commonName = supplied
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key_and_csr(name: str, cn: str, cwd: Path) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=cwd)


@dataclass
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    expired_cert: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "30", "-subj", f"/CN=Santi test {ca}",
                 cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    _key_and_csr("server", "127.0.0.1", d)
    _key_and_csr("client", "pi-1", d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "30", "-extfile", "san.ext", cwd=d)
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.pem", "-days", "30", "-extfile", "client.ext", cwd=d)
    # `openssl x509` cannot date a certificate in the past on OpenSSL 3.0; `openssl ca` can.
    (d / "ca.cnf").write_text(_CA_CNF.format(dir=d))
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    _openssl("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-in", "server.csr",
             "-out", "expired.pem", "-startdate", "20200101000000Z", "-enddate", "20200201000000Z",
             "-extfile", "san.ext", "-notext", cwd=d)
    return Pki(d / "ca.pem", d / "other-ca.pem", d / "server.pem", d / "server.key", d / "expired.pem",
               d / "client.pem", d / "client.key")


def _tls_broker(tmp_path: Path, pki: Pki, *, cert: Path, require_client_cert: bool = False) -> Broker:
    workdir = tmp_path / "tls-broker"
    workdir.mkdir()
    for source in (pki.ca, cert, pki.server_key):
        shutil.copy(source, workdir / source.name)
    return Broker(workdir, extra_config="\n".join([
        f"cafile {workdir / pki.ca.name}",
        f"certfile {workdir / cert.name}",
        f"keyfile {workdir / pki.server_key.name}",
        f"require_certificate {'true' if require_client_cert else 'false'}",
    ]))


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


def _drained(outbox: Outbox, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while outbox.depth() and time.monotonic() < deadline:
        time.sleep(0.02)
    return outbox.depth() == 0


def test_tls_with_the_right_ca_delivers(tmp_path: Path, pki: Pki, outbox: Outbox) -> None:
    broker = _tls_broker(tmp_path, pki, cert=pki.server_cert)
    broker.start()
    link = _run(broker, outbox, TlsConfig(ca_file=pki.ca), until="online")
    try:
        assert link.state == "online", link.last_error
        assert _drained(outbox)
    finally:
        link.stop(drain_deadline_s=2)
        broker.stop()


def test_wrong_ca_is_one_clear_line(tmp_path: Path, pki: Pki, outbox: Outbox) -> None:
    broker = _tls_broker(tmp_path, pki, cert=pki.server_cert)
    broker.start()
    link = _run(broker, outbox, TlsConfig(ca_file=pki.other_ca), until="offline")
    try:
        assert link.last_error == (
            f"TLS: certificate verify failed for broker 127.0.0.1:{broker.port}: wrong CA file "
            f"{pki.other_ca}? (self-signed certificate in certificate chain)"
        )
        assert outbox.depth() == 50
    finally:
        link.stop(drain_deadline_s=0)
        broker.stop()


def test_expired_server_certificate_is_named(tmp_path: Path, pki: Pki, outbox: Outbox) -> None:
    broker = _tls_broker(tmp_path, pki, cert=pki.expired_cert)
    broker.start()
    link = _run(broker, outbox, TlsConfig(ca_file=pki.ca), until="offline")
    try:
        assert link.last_error == (
            f"TLS: the certificate of broker 127.0.0.1:{broker.port} has expired — renew it on the broker "
            f"(or check this device's clock)"
        )
    finally:
        link.stop(drain_deadline_s=0)
        broker.stop()


def test_client_certificate_required_and_given(tmp_path: Path, pki: Pki, outbox: Outbox) -> None:
    broker = _tls_broker(tmp_path, pki, cert=pki.server_cert, require_client_cert=True)
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
            assert _drained(outbox)
        finally:
            link.stop(drain_deadline_s=2)
    finally:
        broker.stop()


def test_plain_client_on_a_tls_port_gets_advice(tmp_path: Path, pki: Pki, outbox: Outbox) -> None:
    broker = _tls_broker(tmp_path, pki, cert=pki.server_cert)
    broker.start()
    link = _run(broker, outbox, None, until="offline")
    try:
        assert (link.last_error or "").startswith(
            f"broker 127.0.0.1:{broker.port} closed the connection before accepting it")
        assert "TLS port without [uplink.tls]" in (link.last_error or "")
    finally:
        link.stop(drain_deadline_s=0)
        broker.stop()


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
