"""``santi doctor``'s network checks: can this box reach and trust its broker?

A TCP connect, the TLS handshake on its own (so a wrong CA gets its own line
and fix), then a real MQTT CONNECT with the configured credentials, each with
a short timeout so a dead broker cannot stall the command.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import threading
from typing import Any

from agent.checks import Check, fail, ok, warn
from agent.config import ConfigError, SiteConfig, UplinkConfig
from agent.mqttclient import BrokerConfig, new_client, tls_context

CERT_EXPIRY_WARN_DAYS = 30


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tcp_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc)


def check_tls(uplink: UplinkConfig, *, now: float, timeout: float = 3.0) -> Check:
    """The TLS handshake alone, so a wrong CA or host name gets its own line and fix."""
    name = "broker tls"
    where = f"{uplink.host}:{uplink.port}"
    if uplink.tls is None:
        if _is_loopback(uplink.host):
            return ok(name, f"not used (broker {where} is on this box)")
        return warn(name, f"the uplink to {where} is not encrypted",
                    "add [uplink.tls] ca_file = \"...\" (and the broker's TLS listener)")
    try:
        context = tls_context(uplink.tls)
    except (OSError, ssl.SSLError) as exc:
        return fail(name, f"cannot load the TLS files: {exc}", "check [uplink.tls] ca_file, cert_file and key_file")
    try:
        with socket.create_connection((uplink.host, uplink.port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=uplink.host) as tls:
            version = tls.version()
            cert = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        return fail(name, f"{where}: certificate rejected: {exc.verify_message}",
                    "ca_file must be the CA that signed the broker's certificate, and [uplink] host a name in it")
    except ssl.SSLError as exc:
        return fail(name, f"{where}: TLS handshake failed: {exc.reason or exc}",
                    "is that port the broker's TLS listener (often 8883)? check the broker's TLS settings")
    except OSError as exc:
        return fail(name, f"{where}: {_tcp_reason(exc)}", "see the broker check")
    detail = f"{where}: {version}, certificate verified"
    expires = cert.get("notAfter")
    if isinstance(expires, str):
        days = (ssl.cert_time_to_seconds(expires) - now) / 86400.0
        if days < CERT_EXPIRY_WARN_DAYS:
            return warn(name, f"{detail}, but it expires in {days:.0f} days", "renew the broker's certificate")
        detail += f", valid for {days:.0f} more days"
    return ok(name, detail)


def check_broker(site: SiteConfig, *, timeout: float = 3.0) -> Check:
    """The uplink's broker: TCP, then a real MQTT CONNECT as the agent makes it; CONNACK's reason is the verdict."""
    uplink = site.uplink
    # Never the agent's own client id: the broker would disconnect the running agent.
    cfg = BrokerConfig.of(uplink, f"{site.agent.id}-doctor-{os.getpid()}", uplink.protocol)
    return _check_connect("broker", cfg, keepalive_s=uplink.keepalive_s, timeout=timeout)


def check_node_broker(site: SiteConfig, *, timeout: float = 3.0) -> Check:
    """The ``[nodes]`` broker, logged in as the nodes source does; nothing to check without the section."""
    if site.nodes is None:
        return ok("node broker", "no [nodes] section: nothing subscribes to a node broker")
    cfg = BrokerConfig.of(site.nodes, f"santi-{site.store.id}-{site.agent.id}-nodes-doctor-{os.getpid()}")
    return _check_connect("node broker", cfg, keepalive_s=30, timeout=timeout)


def _check_connect(name: str, cfg: BrokerConfig, *, keepalive_s: int, timeout: float) -> Check:
    """The agent's very client (same login, TLS, protocol) connects once; each failure with its fix."""
    where = cfg.where
    section = cfg.section
    fix = f"start the broker (`systemctl start mosquitto`) or correct [{section}] host and port ({where})"
    try:
        socket.create_connection((cfg.host, cfg.port), timeout=timeout).close()
    except OSError as exc:
        return fail(name, f"{where}: {_tcp_reason(exc)}", fix)
    try:
        context = None if cfg.tls is None else tls_context(cfg.tls)
        client = new_client(cfg, context=context)
    except ConfigError as exc:
        return fail(name, f"cannot read the broker password: {exc}",
                    f"set {section}.password_file or the environment variable")
    except (OSError, ssl.SSLError) as exc:
        return fail(name, f"cannot load the TLS files: {exc}", f"check [{section}.tls] ca_file, cert_file and key_file")
    client.connect_timeout = timeout
    answer: list[str] = []
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        answer.append("" if not reason.is_failure else str(reason))
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(cfg.host, cfg.port, keepalive=max(keepalive_s, 5))
    except (OSError, ssl.SSLError) as exc:
        if context is not None:
            context.close_wrapped()
        return fail(name, f"{where}: MQTT connect failed: {exc}", fix)
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    if not answer:
        return fail(name, f"{where}: TCP open but no MQTT CONNACK within {timeout:g} s",
                    f"is that port an MQTT listener (TLS listeners need [{section}.tls])?")
    if answer[0]:
        return fail(name, f"{where}: broker refused the connection: {answer[0]}",
                    f"check {section}.username and the password file against the broker's ACL")
    return ok(name, f"{where}: MQTT {cfg.protocol} CONNECT accepted")
