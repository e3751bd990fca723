"""The one way Santi builds an MQTT client: host, port, credentials, TLS, client id.

The uplink, the node subscriber and publisher, ``santi doctor`` and HQ's
subscriber all get their paho client here, so a broker that requires a login
or a client certificate is met the same way by each: ``santi doctor`` cannot
say OK where the agent then fails. The password is read from its file or
environment variable when a client is built (a rotated password needs no
restart) and handed to paho only; it is never part of a message or a log line.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from agent.config import BrokerSettings, ConfigError, TlsConfig

Protocol = Literal["5", "3.1.1"]


@dataclass(frozen=True)
class BrokerConfig:
    """A broker and this client's login to it; ``section`` names the config keys in messages."""

    host: str
    port: int
    client_id: str = ""
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    tls: TlsConfig | None = None
    protocol: Protocol = "5"
    section: str = "uplink"
    """``uplink``/``nodes`` (keys named ``uplink.password_file``); empty for command-line options."""

    @classmethod
    def of(cls, settings: BrokerSettings, client_id: str, protocol: Protocol = "5") -> BrokerConfig:
        """The broker an ``[uplink]`` or ``[nodes]`` section describes, for one client id."""
        return cls(settings.host, settings.port, client_id, settings.username, settings.password_file,
                   settings.password_env, settings.tls, protocol, settings.section)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def key(self, name: str) -> str:
        """How the person who set ``name`` spelt it: ``nodes.password_file`` or ``--password-file``."""
        return f"{self.section}.{name}" if self.section else "--" + name.replace("_", "-")

    def password(self) -> SecretStr | None:
        """The password, read now; ``ConfigError`` (one line, no secret in it) when it cannot be."""
        if self.password_file is not None:
            try:
                return SecretStr(self.password_file.read_text(encoding="utf-8").strip())
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                raise ConfigError(f"{self.key('password_file')} {self.password_file}: cannot read it "
                                  f"({reason}) — check the path and that the agent's user may read it") from None
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"{self.key('password_env')}: environment variable {self.password_env} is not set")
            return SecretStr(value)
        return None


class TrackingContext(ssl.SSLContext):
    """Remembers the sockets it wraps: paho leaves one open when the TLS handshake fails."""

    def __init__(self, protocol: int) -> None:
        super().__init__()
        self.wrapped: list[ssl.SSLSocket] = []

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        self.wrapped.append(sock)
        return sock

    def close_wrapped(self) -> None:
        """Close what a failed connect left open (closing a closed socket does nothing)."""
        for sock in self.wrapped:
            sock.close()


def tls_context(tls: TlsConfig) -> TrackingContext:
    """A client context that verifies the broker against ``ca_file`` (and its host name).

    Raises ``OSError``/``ssl.SSLError`` when a file is missing or bad.
    """
    context = TrackingContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(tls.ca_file))
    if tls.cert_file is not None:
        context.load_cert_chain(str(tls.cert_file), None if tls.key_file is None else str(tls.key_file))
    return context


def new_client(cfg: BrokerConfig, *, context: ssl.SSLContext | None = None, manual_ack: bool = False) -> mqtt.Client:
    """A paho client for ``cfg`` with its login and TLS set, not yet connected.

    ``context`` replaces the TLS context built from ``cfg.tls``. Raises
    ``ConfigError`` when the password cannot be read and ``OSError`` or
    ``ssl.SSLError`` when the TLS files cannot be loaded.
    """
    v5 = cfg.protocol == "5"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                         clean_session=None if v5 else True, manual_ack=manual_ack)
    if cfg.username is not None:
        password = cfg.password()
        client.username_pw_set(cfg.username, None if password is None else password.get_secret_value())
    if context is None and cfg.tls is not None:
        context = tls_context(cfg.tls)
    if context is not None:
        client.tls_set_context(context)
    return client
