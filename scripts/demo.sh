#!/usr/bin/env bash
# The demo: a private broker, the simulated station and the daemon. Extra arguments go to
# `swapctl demo` (see `swapctl demo --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/bootstrap.sh
exec .venv/bin/swapctl demo "$@"
