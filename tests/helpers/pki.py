"""Certificates made here by ``openssl`` (a CA, another CA, good, expired and client certificates) and brokers that use them."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.localbroker import Broker

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


def make_pki(d: Path) -> Pki:
    """A fresh PKI in the folder ``d``: broker certificates for 127.0.0.1, a client certificate for pi-1."""
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


def tls_broker(tmp_path: Path, pki: Pki, *, cert: Path, require_client_cert: bool = False, extra: str = "") -> Broker:
    """A (not yet started) broker whose only listener speaks TLS with ``cert``; ``extra`` adds settings."""
    workdir = tmp_path / "tls-broker"
    workdir.mkdir()
    for source in (pki.ca, cert, pki.server_key):
        shutil.copy(source, workdir / source.name)
    return Broker(workdir, extra_config="\n".join([
        f"cafile {workdir / pki.ca.name}",
        f"certfile {workdir / cert.name}",
        f"keyfile {workdir / pki.server_key.name}",
        f"require_certificate {'true' if require_client_cert else 'false'}",
        extra,
    ]))


def password_settings(tmp_path: Path, users: dict[str, str]) -> str:
    """Mosquitto settings that refuse anonymous clients and know ``users`` (name -> password)."""
    passwords = tmp_path / "passwd"
    passwords.touch()
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True, capture_output=True)
    return f"allow_anonymous false\npassword_file {passwords}"
