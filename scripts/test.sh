#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: lint, types, then pytest.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh >/dev/null
# A jackd killed with SIGKILL leaves its entry in JACK's shared-memory registry (8 slots), and a
# later private test server can then hang at start. With no jackd running, none is in use.
if ! pgrep -x jackd >/dev/null && ! pgrep -x jackdbus >/dev/null; then
  rm -f /dev/shm/jack-shm-registry /dev/shm/jack_* /dev/shm/jack-[0-9]* 2>/dev/null || true
fi
.venv/bin/ruff check musicgend tests bench
.venv/bin/ruff format --check musicgend tests bench
.venv/bin/mypy
# pytest exits 5 when it collects no test: that fails this script like any other failure.
exec .venv/bin/pytest "$@"
