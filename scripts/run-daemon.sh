#!/usr/bin/env bash
# Set up (idempotent) and run the daemon with the bundled model. Extra arguments go to
# `musicgend run` (see `musicgend run --help`) and mean what they mean there: relative paths
# are relative to the directory you run this from. With no JACK server and no ALSA
# sequencer, the daemon starts a private JACK server with the dummy driver.
set -euo pipefail
root="$(cd -- "$(dirname -- "$0")/.." >/dev/null && pwd)"
"$root/scripts/bootstrap.sh" >/dev/null
exec "$root/.venv/bin/musicgend" run "$@"
