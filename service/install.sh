#!/usr/bin/env bash
# Install (or update) musicgend as a systemd service. Idempotent: run it again after an update.
#
#   service/install.sh [--bin PATH] [--venv DIR] [--root DIR] [--no-systemctl]
#
#   --bin PATH       the musicgend executable ExecStart runs (default: a venv, see --venv)
#   --venv DIR       create/update a virtual environment there and install this checkout into
#                    it (default /opt/musicgend/venv); ignored with --bin
#   --root DIR       install under DIR instead of / (packaging, tests); implies --no-systemctl
#   --no-systemctl   don't run systemctl daemon-reload / enable / restart
#
# Installs: /etc/systemd/system/musicgend.service (ExecStart pointed at the executable),
# /etc/musicgend/musicgend.toml (from systemd/musicgend.example.toml, only if absent: your
# config is never overwritten). Then checks the unit with systemd-analyze verify.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
bin=""
venv="/opt/musicgend/venv"
root=""
systemctl=1

while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) bin="$2"; shift 2 ;;
        --venv) venv="$2"; shift 2 ;;
        --root) root="${2%/}"; systemctl=0; shift 2 ;;
        --no-systemctl) systemctl=0; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

say() { echo "install: $*"; }

if [[ -z "$bin" ]]; then
    if [[ ! -x "$root$venv/bin/python" ]]; then
        say "creating virtual environment $root$venv"
        python3 -m venv "$root$venv"
    fi
    say "installing musicgend from $here into $root$venv"
    "$root$venv/bin/python" -m pip install --quiet --upgrade "$here"
    bin="$venv/bin/musicgend"
fi
if [[ ! -x "$root$bin" ]]; then
    echo "error: $root$bin is not an executable file" >&2
    exit 1
fi
case "$bin" in
    /*) ;;
    *) echo "error: --bin must be an absolute path, got $bin" >&2; exit 1 ;;
esac

# install_if_changed SRC DEST MODE: copy only when the content differs.
install_if_changed() {
    local src="$1" dest="$2" mode="$3"
    if [[ -f "$dest" ]] && cmp -s "$src" "$dest"; then
        say "unchanged $dest"
        return 1
    fi
    install -D -m "$mode" "$src" "$dest"
    say "wrote $dest"
}

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
sed "s#^ExecStart=/usr/local/bin/musicgend #ExecStart=$bin #" \
    "$here/systemd/musicgend.service" > "$tmp"
unit="$root/etc/systemd/system/musicgend.service"
changed=0
install_if_changed "$tmp" "$unit" 0644 && changed=1

config="$root/etc/musicgend/musicgend.toml"
if [[ -e "$config" ]]; then
    say "kept existing $config"
else
    install -D -m 0640 "$here/systemd/musicgend.example.toml" "$config"
    say "wrote $config (edit it: mqtt.url, midi.connect_in/connect_out)"
fi
# The service validates the same way at start; catch mistakes now.
MUSICGEND_CONFIG="$config" "$root$bin" config show >/dev/null

if command -v systemd-analyze >/dev/null; then
    if [[ -z "$root" ]]; then
        systemd-analyze verify "$unit"
    else
        # Verify the copy as it will run: with the executable where --root put it.
        sed "s#^ExecStart=$bin #ExecStart=$root$bin #" "$unit" > "$tmp.d"
        mkdir -p "$tmp.dir" && mv "$tmp.d" "$tmp.dir/musicgend.service"
        systemd-analyze verify "$tmp.dir/musicgend.service"
        rm -rf "$tmp.dir"
    fi
fi

if [[ "$systemctl" -eq 1 ]]; then
    if [[ "$changed" -eq 1 ]]; then systemctl daemon-reload; fi
    systemctl enable musicgend.service
    systemctl restart musicgend.service
    say "(re)started; follow it with: journalctl -u musicgend -f"
else
    say "done (systemctl not run)"
fi
