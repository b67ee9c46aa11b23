#!/usr/bin/env bash
# Install everything musicgend needs on a Debian machine, as root. Idempotent: when
# everything is already there it only checks, in a second or two.
#   apt: jackd2 (private dummy JACK server), mosquitto (MQTT broker for tests and examples),
#        fluidsynth + a GM soundfont (demo WAV), systemd (unit checks), python3-venv.
#   Python: uv from PyPI (pinned), then the locked environment in .venv (uv sync --frozen),
#           compiled to bytecode.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(jackd2 libjack-jackd2-0 libasound2 mosquitto mosquitto-clients
              fluidsynth fluid-soundfont-gm systemd python3 python3-venv ca-certificates)
UV_VERSION=0.13.8

log() { echo "[bootstrap] $*" >&2; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    log "missing Debian packages: ${missing[*]} (run as root, or install them first)"; exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# uv, pinned; installed into a private venv so the system Python stays untouched.
UV_HOME="${MUSICGEND_TOOLS:-$HOME/.cache/musicgend-tools}"
UV="$UV_HOME/bin/uv"
if ! "$UV" --version 2>/dev/null | grep -q " $UV_VERSION"; then
  log "installing uv $UV_VERSION into $UV_HOME"
  python3 -m venv "$UV_HOME" >&2
  "$UV_HOME/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION" >&2
fi

export UV_PYTHON_DOWNLOADS=never
# Bytecode is compiled at install time, not at first import: where imports can't write
# __pycache__ (PYTHONDONTWRITEBYTECODE, a read-only install) every start compiled from
# source again, and that was half of the daemon's time to ports ready (measured: loading
# the model 1.1-1.4 s -> 0.5-0.8 s; `import tensorflow` 13.9 s -> 4.8 s). The first
# compile takes ~15 s on 2 cores; when .venv already matches uv.lock and is compiled,
# both commands below take about a second together.
"$UV" sync --frozen --quiet --compile-bytecode >&2
.venv/bin/python -m compileall -q musicgend >&2
echo "$UV"
