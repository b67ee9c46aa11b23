"""What a whole `musicgend run` imports: from start through frames on the LiteRT path to the
session written at SIGTERM, never TensorFlow, Keras, music21, matplotlib or pretty_midi (each
costs tens of MB of RSS; the CPU path needs none of them); and once it plays, nothing at all
(an import holds the GIL for up to tens of milliseconds: the JACK thread misses cycles, and
MIDI input is lost or read twice). Properties, not timings."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.jackutil import JackPeer, jack_server, wait_until
from tests.mqttutil import Broker, Observer, mosquitto_broker, topic_is

ROOT = Path(__file__).resolve().parents[2]
NEVER = ("tensorflow", "keras", "music21", "matplotlib", "pretty_midi")

# the daemon exactly as `python -m musicgend run …`, writing at exit its modules and when each
# new one was imported
WRAPPER = """
import atexit, json, runpy, sys, time
out = sys.argv.pop(1)
imported = []
def audit(event, args):
    if event == "import" and args[0] not in sys.modules:
        imported.append((args[0], time.monotonic_ns()))
sys.addaudithook(audit)
atexit.register(
    lambda: open(out, "w").write(json.dumps({"modules": sorted(sys.modules), "imported": imported}))
)
sys.argv[0] = "musicgend"
runpy.run_module("musicgend", run_name="__main__", alter_sys=True)
"""

pytestmark = [pytest.mark.jack, pytest.mark.tf, pytest.mark.mqtt]


def notes_played(peer: JackPeer) -> list[tuple[int, bytes]]:
    return [(t, m) for t, m in peer.received() if m[0] & 0xF0 in (0x80, 0x90)]


async def _control_while_playing(broker: Broker, peer: JackPeer) -> None:
    """What a musician does during play: a parameter over MQTT, more notes and a controller;
    and the metrics the daemon publishes meanwhile (twice: its reporting ran)."""
    prefix = "musicgend/default"
    async with Observer(broker, f"{prefix}/#") as observer:
        start = len(observer.messages)
        await observer.publish(f"{prefix}/cmd", json.dumps({"action": "set", "temperature": 0.9}))
        await observer.wait(
            lambda m: (
                m.topic == f"{prefix}/status"
                and json.loads(m.payload).get("params", {}).get("temperature") == 0.9
            ),
            what="the new temperature in the status",
            start=start,
        )
        peer.send([bytes([0x90, 62, 90]), bytes([0xB0, 1, 80]), bytes([0x80, 62, 0])])
        for _ in range(2):
            start = len(observer.messages)
            await observer.wait(topic_is(f"{prefix}/metrics"), what="metrics", start=start)


@pytest.mark.parametrize(
    "kind", ["vocab", "pitch", "roll"], ids=["vocab-model", "per-pitch-model", "pitch-input-model"]
)
def test_a_whole_daemon_run_imports_nothing_heavy_and_nothing_while_playing(
    tmp_path: Path, kind: str
) -> None:
    from tests.model.conftest import save_tiny_artifact

    model = save_tiny_artifact(  # + LiteRT
        tmp_path / "tiny", seed=3, pitch=kind == "pitch", pitch_input=kind == "roll"
    )
    modules_file, metrics_file = tmp_path / "modules.json", tmp_path / "metrics.json"
    with mosquitto_broker() as broker, jack_server(), JackPeer("peer") as peer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MUSICGEND_")}
        env["MUSICGEND_MQTT__METRICS_INTERVAL_S"] = "0.5"
        args = ["run", "--backend", "jack", "--model", str(model), "--runtime", "litert"]
        args += ["--connect-in", "^peer:out$", "--connect-out", "^peer:in$"]
        args += ["--session-dir", str(tmp_path / "sessions"), "--metrics-out", str(metrics_file)]
        args += ["--mqtt-url", broker.url]
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
            wait_until(
                lambda: proc.poll() is not None or notes_played(peer),
                30.0,
                interval_s=0.005,
                what="the daemon's first notes",
            )
            playing_ns = time.monotonic_ns()
            # the machine plays: the model ran, its output was sampled and voiced
            wait_until(
                lambda: proc.poll() is not None or len({t for t, _ in notes_played(peer)}) >= 3,
                30.0,
                what="note traffic from the daemon in three frames",
            )
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            asyncio.run(_control_while_playing(broker, peer))
            stopping_ns = time.monotonic_ns()
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
    report = json.loads(modules_file.read_text())
    loaded = set(report["modules"])
    assert "ai_edge_litert.interpreter" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in NEVER) == []
    while_playing = [name for name, t_ns in report["imported"] if playing_ns < t_ns < stopping_ns]
    assert while_playing == []
