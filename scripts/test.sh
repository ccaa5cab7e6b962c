#!/usr/bin/env bash
# The test command: lint, types, then the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/bootstrap.sh
echo "== ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy" >&2
.venv/bin/mypy
echo "== pytest" >&2
# Two workers: most tests wait on simulated devices rather than use a core (the whole suite
# takes about 9½ minutes on 2 cores this way; in one process it would not fit in 10).
exec .venv/bin/python -m pytest -n 2 --dist worksteal "$@"
