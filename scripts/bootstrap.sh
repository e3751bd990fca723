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
# The console's browser tests drive Debian's chromium through Playwright (no browser download).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)

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
    echo "bootstrap: pip install -e .[test] (log: .venv/pip.log)" >&2
    # pip and setuptools talk a lot (an editable-install warning among it): keep it in a log and
    # show it only when the install fails, so the two commands' output stays what they print.
    if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip \
           && .venv/bin/python -m pip install --disable-pip-version-check -e '.[test]'; } </dev/null >.venv/pip.log 2>&1; then
        tail -n 40 .venv/pip.log >&2
        echo "bootstrap: pip install failed; the whole log is .venv/pip.log" >&2
        exit 1
    fi
    .venv/bin/python -c 'import agent, bleak, nfc, paho.mqtt, numpy, scipy, pydantic, sqlite_utils, shapely, aiohttp, prometheus_client, playwright, pytest, hypothesis'
    echo "$want" > "$stamp"
fi

# `santi` on PATH, so the commands the demo and the README suggest work as printed.
santi="$(pwd)/.venv/bin/santi"
for bin in /usr/local/bin "$HOME/.local/bin"; do
    if [ -w "$bin" ] || { [ "$bin" = "$HOME/.local/bin" ] && mkdir -p "$bin" 2>/dev/null; }; then
        if [ "$(readlink "$bin/santi" 2>/dev/null)" != "$santi" ]; then
            if [ ! -e "$bin/santi" ] || [ -L "$bin/santi" ]; then
                ln -sfn "$santi" "$bin/santi"
                echo "bootstrap: linked $bin/santi -> $santi" >&2
            else
                echo "bootstrap: $bin/santi exists and is not ours; run $santi directly" >&2
            fi
        fi
        case ":$PATH:" in
            *":$bin:"*) ;;
            *) echo "bootstrap: add $bin to PATH to run 'santi' by name" >&2 ;;
        esac
        break
    fi
done
