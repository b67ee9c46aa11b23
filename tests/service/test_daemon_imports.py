"""What a whole `musicgend run` imports: from start through frames on the LiteRT path to the
session written at SIGTERM, never TensorFlow, Keras, music21, matplotlib or pretty_midi (each
costs tens of MB of RSS; the CPU path needs none of them). A property, not a timing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.jackutil import JackPeer, jack_server, wait_until

ROOT = Path(__file__).resolve().parents[2]
NEVER = ("tensorflow", "keras", "music21", "matplotlib", "pretty_midi")

# the daemon exactly as `python -m musicgend run …`, writing its modules at exit
WRAPPER = """
import atexit, json, runpy, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "musicgend"
runpy.run_module("musicgend", run_name="__main__", alter_sys=True)
"""

pytestmark = [pytest.mark.jack, pytest.mark.tf]


def test_a_whole_daemon_run_imports_nothing_heavy(tmp_path: Path) -> None:
    from tests.model.conftest import save_tiny_artifact

    model = save_tiny_artifact(tmp_path / "tiny", seed=3)  # with its LiteRT export
    modules_file, metrics_file = tmp_path / "modules.json", tmp_path / "metrics.json"
    with jack_server(), JackPeer("peer") as peer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MUSICGEND_")}
        args = ["run", "--backend", "jack", "--model", str(model), "--runtime", "litert"]
        args += ["--connect-in", "^peer:out$", "--connect-out", "^peer:in$"]
        args += ["--session-dir", str(tmp_path / "sessions"), "--metrics-out", str(metrics_file)]
        proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, str(modules_file), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(
                lambda: (
                    proc.poll() is not None
                    or (peer.connections("peer:in") and peer.connections("peer:out"))
                ),
                30.0,
                what="the daemon's ports connected to the peer",
            )
            peer.send([bytes([0x90, 60, 90]), bytes([0x90, 64, 80]), bytes([0x80, 60, 0])])
            # the machine plays: the model ran, its output was sampled and voiced
            wait_until(
                lambda: (
                    proc.poll() is not None
                    or len({t for t, m in peer.received() if m[0] & 0xF0 in (0x80, 0x90)}) >= 3
                ),
                30.0,
                what="note traffic from the daemon in three frames",
            )
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    metrics = json.loads(metrics_file.read_text())
    assert metrics["runtime"].startswith("litert") and metrics["frames"] >= 3
    assert list((tmp_path / "sessions").rglob("*.mid"))  # the session was written at stop
    loaded = set(json.loads(modules_file.read_text()))
    assert "ai_edge_litert.interpreter" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in NEVER) == []
