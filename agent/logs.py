"""Structured, quiet logging: one logfmt line per record, WARNING by default.

The daemon's own lifecycle lines (``agent ready``, a reload, the stop) are
INFO and still reach the journal without ``-v`` (``daemon()``): store IT
sees that a healthy agent started and what it runs, and nothing else.

Fields passed with ``extra={...}`` become ``key=value`` pairs, so journald
lines can be grepped and parsed. Nothing here ever formats a secret: config
secrets are ``SecretStr`` and render as ``**********``.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(ch in text for ch in ' "=\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


class LogfmtFormatter(logging.Formatter):
    """``level=... logger=... msg=... key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        parts.extend(
            f"{key}={_quote(value)}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        )
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(f"error={_quote(repr(record.exc_info[1]))}")
        return " ".join(parts)


def setup(verbosity: int = 0, stream: TextIO | None = None) -> None:
    """WARNING by default, INFO with -v, DEBUG with -vv."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # nfcpy sets its logger to INFO on import, and its errors repeat the one
    # line our NFC source already logs: it speaks only with -v.
    import nfc  # noqa: F401, PLC0415  (so its import-time setLevel runs before ours)

    logging.getLogger("nfc").setLevel(logging.NOTSET if verbosity > 0 else logging.CRITICAL)


LIFECYCLE_LOGGER = "agent.service"
"""Its INFO lines are the daemon's lifecycle: ready, reloaded, uplink stopped."""


def daemon() -> None:
    """Let the lifecycle lines through at the default verbosity (``santi run``, what systemd starts)."""
    logger = logging.getLogger(LIFECYCLE_LOGGER)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
