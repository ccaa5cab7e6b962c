#!/usr/bin/env bash
# Make this checkout runnable on a fresh Debian machine: system packages, then .venv.
# Idempotent and quiet when there is nothing to do; sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages: the broker and its clients (tests, demo), socat (pty pairs for the serial
# simulators), mbpoll (an independent Modbus client for the tests), systemd-analyze (unit
# checks), python3-venv (the virtualenv).
missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have mosquitto || missing+=(mosquitto)
have mosquitto_sub || missing+=(mosquitto-clients)
have socat || missing+=(socat)
have mbpoll || missing+=(mbpoll)
have systemd-analyze || missing+=(systemd)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

python3 - <<'PY' || { echo "bootstrap: Python >= 3.11 is required (found $(python3 --version))" >&2; exit 1; }
import sys
sys.exit(sys.version_info < (3, 11))
PY

# The virtualenv, reinstalled only when pyproject.toml changes.
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv" >&2
    python3 -m venv .venv
fi
stamp=.venv/.swapstation-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: installing Python packages into .venv" >&2
    log=.venv/pip-install.log
    if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e '.[dev,sim]'; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "bootstrap: pip install failed (full log: $log)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
