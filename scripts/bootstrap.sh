#!/usr/bin/env bash
# Install what Santi needs on a Debian machine: apt packages, a venv, the package.
# Idempotent and non-interactive; run by ./run-demo and ./run-tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v dbus-daemon >/dev/null 2>&1 || need_apt+=(dbus-daemon)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)

if [ ${#need_apt[@]} -gt 0 ]; then
    echo "bootstrap: installing ${need_apt[*]} with apt-get" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y --no-install-recommends "${need_apt[@]}" </dev/null \
        || { $SUDO apt-get update </dev/null && $SUDO apt-get install -y --no-install-recommends "${need_apt[@]}" </dev/null; }
fi

if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv" >&2
    python3 -m venv .venv
fi

stamp=".venv/.santi-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: pip install -e .[test]" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip </dev/null 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' </dev/null 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -c 'import agent, bleak, nfc, paho.mqtt, numpy, scipy, pydantic, sqlite_utils, shapely, pytest, hypothesis'
    echo "$want" > "$stamp"
fi
