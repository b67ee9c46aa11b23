"""End to end: the real daemon (`musicgend run` as a subprocess) on a private JACK server,
steered over a real mosquitto; its behaviour is judged by what a separate JACK client hears.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.jackutil import JackPeer, jack_server
from tests.mqttutil import Broker, Observer, Received, env_without_musicgend, mosquitto_broker

ROOT = Path(__file__).resolve().parents[2]
INSTANCE = "e2e"
PREFIX = f"musicgend/{INSTANCE}"

pytestmark = [pytest.mark.jack, pytest.mark.mqtt, pytest.mark.tf, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.model.conftest import save_tiny_artifact

    return save_tiny_artifact(tmp_path_factory.mktemp("model") / "tiny", seed=3)


class Daemon:
    """`musicgend run` in a subprocess; ``lines`` collects its stdout."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "musicgend", "run", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.err: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("ready:"):
                self._ready.set()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line.rstrip("\n"))

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"daemon not ready: rc={self.proc.poll()}\n" + "\n".join(self.err))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(30)


@contextlib.contextmanager
def daemon_process(broker: Broker, model: Path, session_dir: Path) -> Iterator[Daemon]:
    env = env_without_musicgend()
    env.update(
        {
            "MUSICGEND_MQTT__INSTANCE": INSTANCE,
            "MUSICGEND_MQTT__METRICS_INTERVAL_S": "0.5",
            "MUSICGEND_MQTT__RECONNECT_MIN_S": "0.05",
            "MUSICGEND_MQTT__RECONNECT_MAX_S": "0.5",
        }
    )
    args = ["--backend", "jack", "--model", str(model), "--runtime", "numpy"]
    args += ["--connect-in", "^peer:out$", "--connect-out", "^peer:in$"]
    args += ["--session-dir", str(session_dir), "--mqtt-url", broker.url]
    daemon = Daemon(args, env)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()


def session_journal(daemon: Daemon) -> list[tuple[int, bytes]]:
    """The machine's messages from the session journal of a stopped daemon."""
    line = next(x for x in daemon.lines if x.startswith("session: "))
    journal = Path(line.removeprefix("session: ")) / "journal.jsonl"
    out = []
    for text in journal.read_text().splitlines()[1:]:
        entry = json.loads(text)
        if entry.get("d") == "m":
            out.append((int(entry["t"]), bytes.fromhex(entry["b"])))
    return out


def note_ons(events: list[tuple[int, bytes]]) -> int:
    return sum(1 for _, m in events if len(m) == 3 and m[0] & 0xF0 == 0x90 and m[2] > 0)


def sounding(events: list[tuple[int, bytes]]) -> set[tuple[int, int]]:
    notes: set[tuple[int, int]] = set()
    for _, m in events:
        if len(m) == 3 and m[0] & 0xF0 == 0x90 and m[2] > 0:
            notes.add((m[0] & 0x0F, m[1]))
        elif len(m) == 3 and (m[0] & 0xF0 == 0x80 or (m[0] & 0xF0 == 0x90 and m[2] == 0)):
            notes.discard((m[0] & 0x0F, m[1]))
    return notes


async def heard(
    peer: JackPeer,
    predicate: Callable[[list[tuple[int, bytes]]], bool],
    what: str,
    timeout_s: float = 15.0,
) -> list[tuple[int, bytes]]:
    """Poll what the peer received until ``predicate`` holds (or fail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        events = await asyncio.to_thread(peer.received)
        if predicate(events):
            return events
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting to hear {what}")
        await asyncio.sleep(0.05)


def status_with(**want: Any) -> Callable[[Received], bool]:
    def check(msg: Received) -> bool:
        if msg.topic != f"{PREFIX}/status":
            return False
        data = msg.json()
        params = data.get("params", {})
        return all(data.get(k, params.get(k)) == v for k, v in want.items())

    return check


def is_metrics(msg: Received) -> bool:
    return msg.topic == f"{PREFIX}/metrics"


async def publish(obs: Observer, command: dict[str, Any] | bytes) -> int:
    start = len(obs.messages)
    payload = command if isinstance(command, bytes) else json.dumps(command).encode()
    await obs.publish(f"{PREFIX}/cmd", payload)
    return start


def test_commands_change_the_daemons_midi_output(tiny_model: Path, tmp_path: Path) -> None:
    with (
        jack_server(),
        mosquitto_broker() as broker,
        JackPeer("peer") as peer,
        daemon_process(broker, tiny_model, tmp_path / "sessions") as daemon,
    ):

        async def body() -> None:
            async with Observer(broker, f"{PREFIX}/#") as obs:
                await obs.wait(
                    status_with(online=True, mode="accompany", playing=True),
                    what="online, accompany",
                )
                # Solo: the machine plays on its own.
                start = await publish(obs, {"action": "set", "mode": "solo", "seed": 1})
                await obs.wait(status_with(mode="solo", seed=1), start=start, what="solo")
                await heard(peer, lambda ev: note_ons(ev) >= 3, "chords in solo mode")

                # stop: every note released, then silence while frames go on.
                start = await publish(obs, {"action": "stop"})
                await obs.wait(status_with(playing=False), start=start, what="stopped")
                mark = len(await asyncio.to_thread(peer.received))
                first = await obs.wait(is_metrics, start=len(obs.messages), what="metrics")
                frames0 = first.json()["frames"]
                await obs.wait(
                    lambda m: is_metrics(m) and m.json()["frames"] >= frames0 + 5,
                    start=len(obs.messages),
                    what="5 more frames",
                )
                events = await asyncio.to_thread(peer.received)
                assert note_ons(events[mark:]) == 0

                # start: it plays again.
                before = note_ons(events)
                await publish(obs, {"action": "start"})
                await heard(peer, lambda ev: note_ons(ev) >= before + 3, "chords after start")

                # panic: CC123 (all notes off) on all 16 channels.
                await publish(obs, {"action": "panic"})
                await heard(
                    peer,
                    lambda ev: (
                        {m[0] for _, m in ev if m[1:] == bytes([123, 0])} >= set(range(0xB0, 0xC0))
                    ),
                    "CC123 on every channel",
                )

                # Rejected commands are explained; the music goes on.
                start = await publish(obs, b"\xff not json")
                err = await obs.wait(
                    lambda m: m.topic == f"{PREFIX}/error", start=start, what="error for garbage"
                )
                assert "not UTF-8" in err.json()["error"]
                start = await publish(
                    obs, {"action": "load_model", "path": str(tmp_path / "nope"), "id": "m1"}
                )
                err = await obs.wait(
                    lambda m: m.topic == f"{PREFIX}/error",
                    start=start,
                    what="error for a missing model",
                )
                assert err.json()["id"] == "m1" and "load_model refused" in err.json()["error"]
                start = await publish(obs, {"action": "set", "temperature": 0.5})
                await obs.wait(
                    status_with(temperature=0.5, model=str(tiny_model)),
                    start=start,
                    what="temperature 0.5, old model",
                )
                last = await obs.wait(is_metrics, start=len(obs.messages), what="metrics")
                late_before = last.json()["late_frames"]

            # The broker goes away and comes back: frames stay on time meanwhile.
            playing_before = note_ons(await asyncio.to_thread(peer.received))
            broker.kill()
            await heard(
                peer,
                lambda ev: note_ons(ev) >= playing_before + 3,
                "chords while the broker is down",
            )
            await asyncio.to_thread(broker.start)
            async with Observer(broker, f"{PREFIX}/#") as obs:
                await obs.wait(status_with(online=True, temperature=0.5), what="status again")
                # The restarted broker kept nothing; the daemon republished its status retained.
                async with Observer(broker, f"{PREFIX}/status") as late:
                    status = await late.wait(status_with(online=True), what="retained status")
                    assert status.retain
                metrics = await obs.wait(
                    lambda m: is_metrics(m) and m.json()["mqtt"]["reconnects"] == 1,
                    what="metrics after reconnect",
                )
                data = metrics.json()
                print(
                    f"\nreconnect (client's figure): {data['mqtt']['last_reconnect_s']:.3f} s;"
                    f" late frames across the outage: {data['late_frames'] - late_before}"
                )
                assert data["late_frames"] == late_before
                # Subscriptions are back: commands work again.
                start = await publish(obs, {"action": "set", "mode": "accompany"})
                await obs.wait(status_with(mode="accompany"), start=start, what="accompany")

                # Clean exit: offline, retained; every note released.
                assert await asyncio.to_thread(daemon.stop) == 0
                offline = await obs.wait(
                    lambda m: m.topic == f"{PREFIX}/status" and m.json() == {"online": False},
                    what="offline on exit",
                )
                assert offline.json() == {"online": False}
            # Every note-on the daemon sent got its note-off: its journal of what it played.
            # (The wire copy isn't compared note for note: on a loaded machine a Python JACK
            # client that misses a cycle loses that cycle's events; the count is printed.)
            journal = session_journal(daemon)
            assert note_ons(journal) > 0
            assert sounding(journal) == set()
            events = await asyncio.to_thread(peer.received)
            print(f"machine messages: journal {len(journal)}, heard by the peer {len(events)}")

        asyncio.run(body())
