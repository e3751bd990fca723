"""``--broker HOST:PORT``: the one way a command names an MQTT broker.

Earlier releases also took a URL (``mqtt://host:1883``, ``mqtts://host:8883``,
``santi hq run``) and a bare host (``santi firmware render``); both still
parse, for one more release, and are no longer shown in any help. A bare
host takes ``default_port``: 1883, or the ``[nodes]`` port for the commands
that address the store's node broker (``santi node``, ``santi firmware
render``). TLS is asked for by ``--ca-file`` (or the old ``mqtts://``), not
by the address.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.cli.errors import CliError

MQTT_PORT = 1883
MQTTS_PORT = 8883


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    """The old ``mqtts://`` form asked for TLS."""

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_broker(text: str, default_port: int = MQTT_PORT) -> BrokerAddress:
    """``HOST:PORT`` (``[v6]:PORT``), or a hidden old form; one line naming the right form otherwise.

    ``default_port`` is the port of a bare host, so that a command whose broker
    already has a configured port can be moved to another host alone.
    """
    wrong = CliError(f"--broker {text!r}: give HOST:PORT, e.g. 127.0.0.1:1883")
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/"):
            raise wrong
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (MQTTS_PORT if tls else MQTT_PORT)
        except ValueError:
            raise wrong from None
        return BrokerAddress(parts.hostname, port, tls)
    host, sep, port_text = text.rpartition(":")
    if not sep or (":" in host and not host.startswith("[")):
        host, port_text = text, str(default_port)  # a bare host (or a bare IPv6 address)
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535 or any(c in host for c in "/ "):
        raise wrong
    return BrokerAddress(host, int(port_text))
