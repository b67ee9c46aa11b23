#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: lint, types, then pytest.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh >/dev/null
.venv/bin/ruff check musicgend tests bench
.venv/bin/ruff format --check musicgend tests bench
.venv/bin/mypy
# pytest exits 5 when it collects no test: that fails this script like any other failure.
exec .venv/bin/pytest "$@"
