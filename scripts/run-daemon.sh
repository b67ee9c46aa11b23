#!/usr/bin/env bash
# Set up (idempotent) and run the daemon with the bundled model. Extra arguments go to
# `musicgend run` (see `musicgend run --help`). With no JACK server and no ALSA sequencer,
# the daemon starts a private JACK server with the dummy driver.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh >/dev/null
exec .venv/bin/musicgend run "$@"
