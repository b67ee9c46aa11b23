"""The daemon as a subprocess on a private JACK server, judged by a SEPARATE JACK client:
output on the 200 ms grid, every note-on gets its note-off, SIGTERM → CC123 on all channels,
exit 0 and a session .mid whose human track is what was played; malformed bytes and a flood
neither crash nor stall it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mido
import pytest

from musicgend.service.bench import frames_lost_by
from tests.jackutil import JackPeer, jack_server, jack_shm_kb, wait_until

ROOT = Path(__file__).resolve().parents[2]
FRAME_FRAMES = 48000 // 5  # JACK frames per 200 ms frame (the test server runs at 48 kHz)

pytestmark = [pytest.mark.jack, pytest.mark.tf, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.model.conftest import save_tiny_artifact

    return save_tiny_artifact(tmp_path_factory.mktemp("model") / "tiny", seed=5)


class Daemon:
    def __init__(
        self,
        model: Path,
        session_dir: Path,
        *extra: str,
        command: tuple[str, ...] = (sys.executable, "-m", "musicgend", "run"),
        cwd: Path = ROOT,
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MUSICGEND_")}
        args = ["--backend", "jack", "--model", str(model), "--runtime", "numpy"]
        args += ["--connect-in", "^peer:out$", "--connect-out", "^peer:in$"]
        args += ["--session-dir", str(session_dir), *extra]
        self.proc = subprocess.Popen(
            [*command, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.err: list[str] = []
        threading.Thread(
            target=self._read, args=(self.proc.stdout, self.lines), daemon=True
        ).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True).start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def line(self, prefix: str) -> str:
        return next(x for x in self.lines if x.startswith(prefix))

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited {self.proc.returncode}:\n" + "\n".join(self.err))
            return any(x.startswith("ready:") for x in self.lines)

        wait_until(ready, 60.0, what="the daemon's ready line")

    def terminate(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def daemon_and_peer(
    model: Path, session_dir: Path, *extra: str, **how: object
) -> Iterator[tuple[Daemon, JackPeer]]:
    with jack_server(), JackPeer("peer") as peer:
        daemon = Daemon(model, session_dir, *extra, **how)  # type: ignore[arg-type]
        try:
            daemon.wait_ready()
            wait_until(
                lambda: peer.connections("peer:in") and peer.connections("peer:out"),
                10.0,
                what="auto-connection to the peer",
            )
            yield daemon, peer
        finally:
            if daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait()


def notes(events: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    return [(t, m) for t, m in events if len(m) == 3 and m[0] & 0xF0 in (0x80, 0x90)]


def still_sounding(events: list[tuple[int, bytes]]) -> set[tuple[int, int]]:
    """(channel, pitch) of every note-on in ``events`` without a later note-off."""
    on: set[tuple[int, int]] = set()
    for _, m in notes(events):
        key = (m[0] & 0x0F, m[1])
        if m[0] & 0xF0 == 0x90 and m[2] > 0:
            on.add(key)
        else:
            on.discard(key)
    return on


def test_output_on_the_grid_notes_released_and_sigterm_cleans_up(
    tiny_model: Path, tmp_path: Path
) -> None:
    played = [
        bytes([0x90, 60, 90]),
        bytes([0x90, 64, 80]),
        bytes([0x80, 60, 0]),
        bytes([0x90, 67, 70]),
        bytes([0x80, 64, 0]),
        bytes([0x80, 67, 0]),
    ]
    metrics_out = tmp_path / "metrics.json"
    with daemon_and_peer(tiny_model, tmp_path, "--metrics-out", str(metrics_out)) as (
        daemon,
        peer,
    ):
        peer.send(played, per_cycle=1)
        # the machine plays: wait for note traffic in at least 8 distinct frames
        wait_until(lambda: len({t for t, _ in notes(peer.received())}) >= 8, 20.0, what="8 frames")
        assert daemon.terminate() == 0
        events = peer.received()
        slips = peer.slips()

    # on the grid: every frame's messages share one JACK time, k × 200 ms apart. The daemon
    # keeps time by the wall clock, as a sound card does; the dummy driver's clock loses what
    # it wakes late by, so frames after such a slip come that much early in JACK time.
    # (note-ons only: the release at stop, note-offs, may even span two cycles)
    grid = sorted({t for t, m in notes(events) if m[0] & 0xF0 == 0x90 and m[2] > 0})

    # (tolerance: a cycle written late, a period or two; 4 × 256 frames)
    offsets = []
    start = grid[0] - frames_lost_by(slips, grid[0])
    for t in grid:
        offset = (t + frames_lost_by(slips, t) - start) % FRAME_FRAMES
        offsets.append(min(offset, FRAME_FRAMES - offset))
    assert len(grid) >= 2 and max(offsets) <= 1024, (offsets, slips)
    # every note-on has its note-off, and the stop sends CC64=0 and CC123 on all channels
    assert still_sounding(events) == set()
    ccs = [m for _, m in events if m[0] & 0xF0 == 0xB0]
    assert {(m[0] & 0x0F) for m in ccs if m[1] == 123} == set(range(16))
    assert {(m[0] & 0x0F) for m in ccs if m[1] == 64 and m[2] == 0} == set(range(16))
    # the daemon's own count of what it wrote: what the peer got, and nothing left on
    metrics = json.loads(metrics_out.read_text())
    ons = sum(1 for _, m in notes(events) if m[0] & 0xF0 == 0x90 and m[2] > 0)
    assert metrics["midi"]["note_ons_sent"] == ons > 0
    assert metrics["midi"]["note_offs_sent"] == len(notes(events)) - ons
    assert metrics["midi"]["sent"] == len(events)
    assert metrics["midi"]["note_ons_while_on_sent"] == 0  # a key is released before a re-strike
    assert metrics["notes_sounding"] == [] and metrics["notes_released_by_ports"] == []
    # the session .mid: its human track is exactly what was played
    midi_path = Path(daemon.line("session written: ").removeprefix("session written: "))
    mid = mido.MidiFile(midi_path)
    human = next(t for t in mid.tracks if t.name == "human")
    heard = [bytes(m.bytes()) for m in human if not m.is_meta]
    assert [bytes([m[0] & 0xF0 if m[0] & 0xF0 == 0x80 else m[0], m[1], m[2]]) for m in played] == [
        bytes([h[0] & 0xF0 if h[0] & 0xF0 == 0x80 else h[0], h[1], h[2]]) for h in heard
    ]
    machine = next(t for t in mid.tracks if t.name == "machine")
    assert any(m.type == "note_on" and m.velocity > 0 for m in machine)


def test_the_readme_run_script_and_a_closed_terminal(tiny_model: Path, tmp_path: Path) -> None:
    """scripts/run-daemon.sh run from elsewhere takes paths as ``musicgend run`` does (relative
    to where it runs); SIGHUP (the terminal closed) stops it as cleanly as SIGTERM."""
    script = (str(ROOT / "scripts" / "run-daemon.sh"),)
    with daemon_and_peer(tiny_model, Path("sessions"), command=script, cwd=tmp_path) as (
        daemon,
        peer,
    ):
        peer.send([bytes([0x90, 60, 90]), bytes([0x90, 67, 80])], per_cycle=1)
        wait_until(lambda: len({t for t, _ in notes(peer.received())}) >= 4, 20.0, what="4 frames")
        assert daemon.terminate(signal.SIGHUP) == 0, "\n".join(daemon.err)
        events = peer.received()
    assert still_sounding(events) == set()
    ccs = [m for _, m in events if m[0] & 0xF0 == 0xB0]
    assert {(m[0] & 0x0F) for m in ccs if m[1] == 123} == set(range(16))
    written = Path(daemon.line("session written: ").removeprefix("session written: "))
    assert (tmp_path / written).is_file() and written.parts[0] == "sessions"
    assert any("SIGHUP: stopping" in line for line in daemon.err)


def test_malformed_bytes_and_a_flood_neither_crash_nor_stall_it(
    tiny_model: Path, tmp_path: Path
) -> None:
    with daemon_and_peer(tiny_model, tmp_path) as (daemon, peer):
        bad = [b"\x90\x3c", b"\x3c\x40", b"\xf0\x01\x02", b"\x90\x80\x40", b"\xf4", b"\xb0\x40"]
        flood = [bytes([0x90 | (i % 16), 40 + i % 40, 1 + i % 100]) for i in range(3000)]
        flood += [bytes([0x80 | (i % 16), 40 + i % 40, 0]) for i in range(3000)]
        peer.send(bad + flood, per_cycle=500)
        peer.received(clear=True)
        # still ticking afterwards: note traffic in 5 more frames
        wait_until(
            lambda: len({t for t, _ in notes(peer.received())}) >= 5,
            20.0,
            what="frames after the flood",
        )
        assert daemon.proc.poll() is None
        assert daemon.terminate() == 0


def test_the_model_loads_before_any_port_appears(tiny_model: Path, tmp_path: Path) -> None:
    """Loading a model holds the GIL for tens of ms at a time, and an active JACK client's
    process callback (Python) needs it every period: so the daemon loads first and opens its
    ports after. A model that fails to load ends it with that error, and no port of it ever
    shows (they did for as long as the load took, when the ports came first)."""
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    (bad / "weights.npz").write_bytes(b"not a zip file")
    with jack_server(), JackPeer("peer") as peer:
        daemon = Daemon(bad, tmp_path / "sessions")
        seen: set[str] = set()
        polls = 0
        while daemon.proc.poll() is None:
            ports = peer.ports()
            seen.update(
                p for p in ports["sources"] + ports["destinations"] if p.startswith("musicgend:")
            )
            polls += 1
            time.sleep(0.002)
        daemon.proc.wait()
    err = "\n".join(daemon.err)
    assert daemon.proc.returncode != 0
    assert "weights.npz" in err and "Traceback" not in err, err
    assert polls > 10  # it was watched while it started
    assert not seen


@pytest.mark.parametrize("lock", [False, True], ids=["default", "lock_jack_memory"])
def test_the_jack_servers_memory_is_locked_only_when_asked(
    tiny_model: Path, tmp_path: Path, lock: bool
) -> None:
    """By default the daemon maps only the pages of JACK's shared memory it uses and locks
    next to none (jackd keeps it locked); ``midi.lock_jack_memory = true`` locks it all, as
    the peer, a JACK client like any other, does wherever it may."""
    config = tmp_path / "musicgend.toml"
    config.write_text(f"[midi]\nlock_jack_memory = {str(lock).lower()}\n")
    with daemon_and_peer(tiny_model, tmp_path, "--config", str(config)) as (daemon, peer):
        peer.send([bytes([0x90, 60, 90]), bytes([0x80, 60, 0])], per_cycle=1)
        wait_until(lambda: len({t for t, _ in notes(peer.received())}) >= 3, 20.0, what="3 frames")
        ours, theirs = jack_shm_kb(daemon.proc.pid), jack_shm_kb(peer.pid)
        assert daemon.terminate() == 0
    assert ours["Size"] > 30_000 and ours["Size"] == theirs["Size"], (ours, theirs)
    if lock:
        assert ours["Locked"] == theirs["Locked"], (ours, theirs)
    else:
        # (the small control segments still fit the daemon's 8 MiB memlock limit)
        assert ours["Locked"] < ours["Size"] // 100 and ours["Rss"] < ours["Size"] // 4, ours
        assert any("not locked here" in line for line in daemon.err), daemon.err
