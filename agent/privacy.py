"""Keyed pseudonyms for radio addresses and card UIDs, with a rotating salt.

A raw MAC, BLE address or card UID never leaves the adapter code: it is
replaced at once by ``HMAC(salt_p, kind | id)``, where the salt of period
``p`` is itself ``HMAC(store_secret, store_id | p)``. Within one salt period
the same device always maps to the same pseudonym (so a visit can be
followed); across periods or stores the pseudonyms are unlinkable without
the store secret, which never leaves the store.

Only a loyalty id that the customer presented is sent as is; that decision
belongs to the card source, not here.
"""

from __future__ import annotations

import hmac
import math
import os
import re
import secrets
from pathlib import Path
from typing import Literal

from agent.config import ConfigError, PrivacyConfig

IdKind = Literal["mac", "ble", "wifi", "card"]

SECRET_BYTES = 32
GENERATED_SECRET = "store.secret"  # noqa: S105  (a file name, not a secret)
"""The file in ``state_dir`` holding a secret the agent generated itself."""
PSEUDONYM_HEX = 24  # 96 bits: collisions are negligible at store scale

_HEX_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}([:\-]?[0-9A-Fa-f]{2})*$")


def normalise_address(raw: str | bytes) -> bytes:
    """One spelling per device: ``aa:bb-cc``, ``AABBCC`` and bytes agree."""
    if isinstance(raw, bytes):
        return raw
    text = raw.strip()
    if _HEX_ADDRESS.match(text):
        return bytes.fromhex(text.replace(":", "").replace("-", ""))
    return text.encode("utf-8")


class Pseudonymizer:
    """Maps raw ids to pseudonyms; the period comes from the observation's own time."""

    def __init__(self, secret: bytes, store_id: str, rotation_s: float) -> None:
        if len(secret) < 16:
            raise ValueError("store secret must be at least 16 bytes")
        if not rotation_s > 0:
            raise ValueError("salt rotation period must be positive")
        self._secret = secret
        self._store = store_id.encode("utf-8")
        self._rotation_s = rotation_s
        self._salts: dict[int, bytes] = {}

    def period(self, ts: float) -> int:
        """Index of the salt period holding ``ts`` (epoch seconds)."""
        return math.floor(ts / self._rotation_s)

    def _salt(self, period: int) -> bytes:
        salt = self._salts.get(period)
        if salt is None:
            if len(self._salts) > 8:
                self._salts.clear()
            salt = hmac.digest(self._secret, b"santi-salt|" + self._store + b"|" + str(period).encode(), "sha256")
            self._salts[period] = salt
        return salt

    def pseudonym(self, kind: IdKind, raw: str | bytes, ts: float) -> str:
        """The pseudonym of ``raw`` during the salt period of ``ts``."""
        message = kind.encode() + b"|" + normalise_address(raw)
        return hmac.digest(self._salt(self.period(ts)), message, "sha256").hex()[:PSEUDONYM_HEX]


def load_secret(privacy: PrivacyConfig, state_dir: Path) -> bytes:
    """The store secret: from the configured file or variable, else generated once in ``state_dir``.

    A generated secret is written with mode 0600 and reused on every start,
    so pseudonyms survive restarts within a salt period. A file that cannot
    be read or made is a `ConfigError` naming it.
    """
    try:
        data = _secret_bytes(privacy, state_dir)
    except OSError as exc:
        raise ConfigError(f"cannot read the store secret: {exc.strerror or exc}: {exc.filename}") from exc
    if len(data) < 16:
        raise ConfigError("privacy: the store secret is shorter than 16 bytes; use at least 32 random bytes")
    return data


def _secret_bytes(privacy: PrivacyConfig, state_dir: Path) -> bytes:
    if privacy.secret_file is not None:
        data = privacy.secret_file.read_bytes().strip()
    elif privacy.secret_env is not None:
        value = os.environ.get(privacy.secret_env)
        if value is None:
            raise ConfigError(f"privacy.secret_env: environment variable {privacy.secret_env} is not set")
        data = value.encode("utf-8")
    else:
        path = state_dir / GENERATED_SECRET
        if not path.exists():
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(secrets.token_hex(SECRET_BYTES).encode())
                handle.flush()
                os.fsync(handle.fileno())
        data = path.read_bytes().strip()
    return data
