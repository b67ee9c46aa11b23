"""``musicgend demo``: hear (and see) the daemon without a keyboard.

Starts a private JACK server (dummy driver), the daemon (``musicgend run`` as a subprocess)
and, as the "human", a separate JACK client in this process that plays a Bach chorale (the
first music21 chorale exported with the project's own exporter, or any .mid given) into the
daemon in real time. Then it stops the daemon with SIGTERM, which writes the session .mid
(tracks ``human`` and ``machine``), draws its piano roll as a PNG and, when ``fluidsynth`` and
a General MIDI soundfont are installed, renders a WAV.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from musicgend.errors import MusicgendError

SOUNDFONTS = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/default-GM.sf2"),
)
PLAYER = "musicgend-demo"


@dataclass
class DemoResult:
    source_midi: Path
    session_midi: Path
    png: Path
    wav: Path | None


def chorale_midi(out_dir: Path) -> Path:
    """The first Bach chorale of music21's corpus as .mid (the project's exporter)."""
    from musicgend.training.corpus import bach_chorale_sources, export_score

    sources = bach_chorale_sources()
    if not sources:
        raise MusicgendError("music21 holds no Bach chorales; pass a .mid with --midi")
    target = out_dir / sources[0].filename
    if not target.exists():
        export_score(sources[0].path, target)
    return target


def midi_events(path: Path, seconds: float) -> list[tuple[float, bytes]]:
    """(time in s, raw bytes) of every channel message in the file, up to ``seconds``;
    notes still on at the cut are released there."""
    from musicgend.io.midifile import read_midi_file

    mid = read_midi_file(path)
    events: list[tuple[float, bytes]] = []
    sounding: set[tuple[int, int]] = set()
    t = 0.0
    for msg in mid:
        t += msg.time
        if t > seconds:
            break
        if msg.is_meta or msg.type not in ("note_on", "note_off", "control_change"):
            continue
        data = bytes(msg.bytes())
        key = (data[0] & 0x0F, data[1])
        if msg.type == "note_on" and msg.velocity > 0:
            sounding.add(key)
        elif msg.type in ("note_on", "note_off"):
            sounding.discard(key)
        events.append((t, data))
    end = min(t, seconds)
    events += [(end, bytes([0x80 | ch, p, 0])) for ch, p in sorted(sounding)]
    if not any(d[0] & 0xF0 == 0x90 for _, d in events):
        raise MusicgendError(f"{path}: no notes to play")
    return events


def _play(peer: object, events: list[tuple[float, bytes]], start: float) -> None:
    queue = peer.to_send  # type: ignore[attr-defined]
    for t, data in events:
        delay = start + t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        queue.append(data)


def run_demo(
    out_dir: Path,
    model: Path,
    midi: Path | None = None,
    seconds: float = 30.0,
    log: Callable[[str], None] = lambda s: print(s, flush=True),
) -> DemoResult:
    from musicgend.io.jackserver import EmbeddedJack
    from musicgend.plot import plot_midi
    from musicgend.service.bench import Peer

    out_dir.mkdir(parents=True, exist_ok=True)
    source = midi if midi is not None else chorale_midi(out_dir)
    events = midi_events(source, seconds)
    os.environ.setdefault("JACK_NO_AUDIO_RESERVATION", "1")
    with EmbeddedJack(period_frames=128) as server:
        log(f"private JACK server {server.name}; starting the daemon")
        env = dict(os.environ, JACK_DEFAULT_SERVER=server.name)
        command = [sys.executable, "-m", "musicgend", "run", "--backend", "jack"]
        command += ["--model", str(model), "--session-dir", str(out_dir / "sessions")]
        command += ["--connect-in", f"^{PLAYER}:out$", "--connect-out", f"^{PLAYER}:in$"]
        daemon = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        err: list[str] = []
        for stream, into in ((daemon.stdout, lines), (daemon.stderr, err)):
            threading.Thread(target=lambda s=stream, i=into: i.extend(s), daemon=True).start()
        peer = Peer(server.name, name=PLAYER)

        def not_started() -> MusicgendError:
            return MusicgendError("the daemon did not start:\n" + "".join(err[-20:]))

        try:
            if peer.wait_port("musicgend:in", 60.0) is None:
                raise not_started()
            peer.wait_connected(10.0)
            # Play once it is ready and its first frames came out: the engine's warm-up
            # runs after the ports open, and JACK's thread in the daemon, which needs
            # Python every period, may miss a cycle's notes meanwhile on a slow CPU.
            deadline = time.monotonic() + 60.0
            while not any(x.startswith("ready:") for x in lines):
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise not_started()
                time.sleep(0.02)
            deadline = time.monotonic() + 5.0  # (a model that starts silent: play anyway)
            while len({t for t, _ in peer.events}) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            log(f"playing {source.name} ({events[-1][0]:.0f} s) into the daemon")
            _play(peer, events, time.monotonic() + 0.5)
            time.sleep(2.0)  # let the machine answer the last phrase
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            peer.close()
    written = [x for x in lines if x.startswith("session written: ")]
    if daemon.returncode != 0 or not written:
        raise MusicgendError(
            f"the daemon exited {daemon.returncode} without a session:\n" + "".join(err[-20:])
        )
    session_midi = Path(written[0].removeprefix("session written: ").strip())
    png = plot_midi(session_midi, session_midi.with_suffix(".png"), title="musicgend demo")
    wav = render_wav(session_midi)
    return DemoResult(source, session_midi, png, wav)


def render_wav(midi: Path) -> Path | None:
    """``fluidsynth`` + a GM soundfont → WAV next to the .mid; None when either is missing."""
    exe = shutil.which("fluidsynth")
    font = next((f for f in SOUNDFONTS if f.exists()), None)
    if exe is None or font is None:
        return None
    wav = midi.with_suffix(".wav")
    proc = subprocess.run(
        [exe, "-ni", "-g", "0.8", "-F", str(wav), "-r", "44100", str(font), str(midi)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 or not wav.exists():
        raise MusicgendError(f"fluidsynth failed: {proc.stderr[-500:]}")
    return wav
