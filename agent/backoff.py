"""Reconnect decisions, as pure functions: the one backoff of the uplink, HQ's webhooks and the radios.

Two questions are answered here and nowhere else: what does a failure mean
to the technician (one line, with advice), and how long to wait before the
next attempt. Waits grow exponentially with "equal jitter" (half fixed, half
random from an injected ``random.Random``), so a chain of stores that lost
the same broker does not come back in lock-step. A failure retrying cannot fix
soon (bad credentials, not authorised, wrong protocol) gets a long wait, not
a reconnect storm against the broker's authentication.
"""

from __future__ import annotations

import errno
import random
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FailureKind = Literal["network", "tls", "auth", "config", "rejected", "storage"]
"""``auth`` and ``config`` wait long; the others back off exponentially."""


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    message: str


@dataclass(frozen=True)
class BackoffPolicy:
    """Delays before reconnect attempts, in seconds."""

    base_s: float = 1.0
    cap_s: float = 60.0
    long_s: float = 600.0

    def wait_s(self, attempt: int) -> float:
        """The exponential wait before attempt ``attempt + 1``: ``base_s`` doubled per failure, at most ``cap_s``.

        Local radios (Bluetooth, Wi-Fi, NFC) wait exactly this: one box's
        adapter has no herd to spread, and a technician can predict the retry.
        """
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt, 32))

    def delay(self, attempt: int, kind: FailureKind, rng: random.Random) -> float:
        """Wait before reconnect ``attempt + 1`` to a broker, jittered (``attempt`` counts failures in a row, from 0)."""
        ceiling = self.long_s if kind in ("auth", "config") else self.wait_s(attempt)
        return ceiling / 2.0 + rng.uniform(0.0, ceiling / 2.0)


RADIO_RETRY = BackoffPolicy(base_s=1.0, cap_s=30.0)
"""How the Bluetooth, Wi-Fi and NFC sources retry an adapter or reader that is down."""
INTERACTIVE_RETRY = BackoffPolicy(base_s=0.5, cap_s=2.0)
"""Radios under a technician's eyes (``santi scan``, a calibration walk): retry soon, report at once."""


# OpenSSL X509_V_ERR_* codes a technician can fix in a known way.
_EXPIRED, _NOT_YET_VALID = 10, 9
_UNKNOWN_ISSUER = {18, 19, 20, 21}
_HOSTNAME_MISMATCH, _IP_MISMATCH = 62, 64


def _tls_failure(reason: str, where: str) -> Failure:
    """A TLS alert or handshake error (by OpenSSL's reason name) as one line."""
    reason = reason.upper()
    if "CERTIFICATE_REQUIRED" in reason:
        return Failure("auth", f"TLS: broker {where} requires a client certificate — set "
                               f"uplink.tls.cert_file and key_file")
    if "CERTIFICATE_EXPIRED" in reason:
        return Failure("auth", f"TLS: broker {where} says our client certificate has expired — "
                               f"install a new one")
    if any(word in reason for word in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN")):
        return Failure("auth", f"TLS: broker {where} rejected our client certificate — is it "
                               f"signed by the CA the broker trusts?")
    if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason:
        return Failure("config", f"TLS: broker {where} does not speak TLS on that port — use its TLS "
                                 f"port (often 8883) or remove [uplink.tls]")
    return Failure("tls", f"TLS: handshake with broker {where} failed: {reason}")


def describe_exception(exc: BaseException, host: str, port: int, ca_file: Path | None,
                       timeout_s: float) -> Failure:
    """A failed TCP/TLS connect (or a TLS error on the first read) as one line with advice."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code == _EXPIRED:
            return Failure("tls", f"TLS: the certificate of broker {where} has expired — renew it on the "
                                  f"broker (or check this device's clock)")
        if code == _NOT_YET_VALID:
            return Failure("tls", f"TLS: the certificate of broker {where} is not valid yet — check this "
                                  f"device's clock (NTP)")
        if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
            return Failure("tls", f"TLS: the certificate of broker {where} is not issued for {host!r} — "
                                  f"set uplink.host to a name in the certificate")
        if code in _UNKNOWN_ISSUER:
            return Failure("tls", f"TLS: certificate verify failed for broker {where}: wrong CA file "
                                  f"{ca_file}? ({exc.verify_message})")
        return Failure("tls", f"TLS: certificate verify failed for broker {where}: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return _tls_failure(exc.reason or str(exc), where)
    if isinstance(exc, socket.gaierror):
        return Failure("network", f"cannot resolve broker host {host!r}: {exc.strerror} — check "
                                  f"uplink.host and the store's DNS")
    if isinstance(exc, ConnectionRefusedError):
        return Failure("network", f"cannot reach broker {where}: connection refused — is mosquitto "
                                  f"running and listening there?")
    if isinstance(exc, TimeoutError):
        return Failure("network", f"cannot reach broker {where}: no answer within {timeout_s:g} s — "
                                  f"check uplink.host, the port and any firewall")
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN):
        return Failure("network", f"cannot reach broker {where}: {exc.strerror} — check the store's "
                                  f"network link")
    if isinstance(exc, ConnectionError):
        return Failure("network", f"connection to broker {where} lost: {exc.strerror or exc}")
    if isinstance(exc, OSError):
        return Failure("network", f"cannot reach broker {where}: {exc.strerror or exc}")
    return Failure("network", f"broker {where}: {type(exc).__name__}: {exc}")


# MQTT 5 CONNACK reason codes (paho maps MQTT 3.1.1 return codes onto these).
_BAD_LOGIN, _NOT_AUTHORIZED, _BAD_CLIENT_ID, _BAD_PROTOCOL = 0x86, 0x87, 0x85, 0x84
_BAD_AUTH_METHOD, _BANNED = 0x8C, 0x8A


def describe_connack(code: int, name: str, host: str, port: int, username: str | None) -> Failure:
    """A refused CONNACK as one line with advice; logins that cannot work get ``auth``."""
    where = f"{host}:{port}"
    if code == _BAD_LOGIN:
        who = f"user {username!r}" if username else "no username (uplink.username is not set)"
        return Failure("auth", f"broker {where} refused the login: bad username or password for {who} — "
                               f"check uplink.username and the password file")
    if code in (_NOT_AUTHORIZED, _BANNED, _BAD_AUTH_METHOD):
        return Failure("auth", f"broker {where} refused the login: {name.lower()} — check uplink.username, "
                               f"the password and the broker's allow_anonymous/ACL")
    if code == _BAD_CLIENT_ID:
        return Failure("config", f"broker {where} rejected the client id — set uplink.client_id to a "
                                 f"short id made of letters and digits")
    if code == _BAD_PROTOCOL:
        return Failure("config", f"broker {where} does not support this MQTT version — set "
                                 f'uplink.protocol = "3.1.1"')
    return Failure("network", f"broker {where} refused the connection: {name} (reason 0x{code:02X})")


def describe_puback(code: int, name: str, seq: int, topic: str) -> Failure:
    """A PUBACK that did not accept an event: kept in the outbox and retried after a backoff."""
    return Failure("rejected", f"broker rejected event seq {seq} on {topic}: {name} (0x{code:02X}) — "
                               f"kept in the outbox; check the broker's ACL and limits")


def describe_lost(detail: str | None, host: str, port: int, *, accepted: bool,
                  tls_without_cert: bool = False) -> Failure:
    """A connection that ended under paho (which only logs why) as one line.

    ``detail`` is paho's last error log line, e.g. ``failed to receive on
    socket: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] ...``: TLS 1.3 reports a
    refused client certificate only on the first read, after the handshake.
    """
    where = f"{host}:{port}"
    detail = (detail or "").strip()
    if "[SSL: " in detail:
        return _tls_failure(detail.split("[SSL: ", 1)[1].split("]", 1)[0], where)
    suffix = f": {detail}" if detail else ""
    if not accepted and tls_without_cert and "EOF occurred" in detail:
        # The broker hung up right after the handshake; without a certificate
        # to offer, the likely reason is that it wants one (the alert saying
        # so does not always reach us before the close).
        return Failure("auth", f"TLS: broker {where} closed the connection after the handshake — it "
                               f"probably requires a client certificate: set uplink.tls.cert_file and key_file")
    if not accepted:
        return Failure("network", f"broker {where} closed the connection before accepting it{suffix} — "
                                  f"is it a TLS port without [uplink.tls], or over its connection limit?")
    return Failure("network", f"connection to broker {where} lost{suffix} — reconnecting; if this "
                              f"repeats, check the broker's log and the store's network")
