"""Shared test helpers: small REAL .mid files written with pretty_midi, and hypothesis settings.

Helpers (import them: ``from tests.conftest import TrackSpec, write_midi, write_chords``):

- :func:`write_midi` writes tracks of ``(start_s, end_s, pitch[, velocity])`` notes plus
  controllers (e.g. CC64 sustain) to a real .mid file.
- :func:`write_chords` writes a chord progression held for whole frames, e.g.
  ``write_chords(path, [({60, 64, 67}, 3), (set(), 1), ({62}, 2)])`` gives exactly the
  tokens ``60,64,67 ×3, e, 62 ×2`` through ``read_piece`` at fs=5.
- :func:`write_not_midi`, :func:`write_truncated`: bad input files.

Fixtures: ``make_midi`` / ``make_chords`` (the same, writing under ``tmp_path``) and
``chord_corpus``: a directory of three small pieces (known frames in ``CHORD_CORPUS``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "musicgend",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("ci", parent=settings.get_profile("musicgend"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "musicgend")

RESOLUTION = 480
"""Ticks per quarter note of the files we write. At 120 bpm a frame edge (k / 5 s) is then
a whole number of ticks and reads back exactly; pretty_midi's default of 220 reads about
one frame edge in six back a hair early, which moves a note end into the previous frame."""

NoteSpec = tuple[float, float, int] | tuple[float, float, int, int]
"""``(start_s, end_s, pitch)`` or ``(start_s, end_s, pitch, velocity)``."""


@dataclass(frozen=True)
class TrackSpec:
    """One instrument of a test file."""

    notes: Sequence[NoteSpec] = ()
    is_drum: bool = False
    program: int = 0
    controls: Sequence[tuple[float, int, int]] = ()
    """``(time_s, number, value)``, e.g. ``(1.0, 64, 127)`` for pedal down at 1 s."""
    name: str = ""


def _pretty_midi():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pretty_midi
    return pretty_midi


def write_midi(path: str | Path, *tracks: TrackSpec | Sequence[NoteSpec]) -> Path:
    """Write the tracks (a plain note list is one piano track) to a real .mid file."""
    pretty_midi = _pretty_midi()
    pm = pretty_midi.PrettyMIDI(resolution=RESOLUTION)
    for spec in tracks:
        track = spec if isinstance(spec, TrackSpec) else TrackSpec(notes=spec)
        inst = pretty_midi.Instrument(track.program, is_drum=track.is_drum, name=track.name)
        for note in track.notes:
            start_s, end_s, pitch = note[0], note[1], note[2]
            velocity = note[3] if len(note) > 3 else 80  # type: ignore[misc]
            inst.notes.append(pretty_midi.Note(velocity, pitch, start_s, end_s))
        for time_s, number, value in track.controls:
            inst.control_changes.append(pretty_midi.ControlChange(number, value, time_s))
        pm.instruments.append(inst)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.write(str(path))
    return path


def chord_notes(
    chords: Sequence[tuple[Iterable[int], int]], fs: int = 5, offset_s: float = 0.01
) -> list[NoteSpec]:
    """Notes holding each chord for its number of frames, starting ``offset_s`` after the
    frame edge (so no time lands on an edge); an empty chord is a rest."""
    notes: list[NoteSpec] = []
    frame = 0
    for chord, length in chords:
        for pitch in sorted(set(chord)):
            notes.append((frame / fs + offset_s, (frame + length) / fs + offset_s, pitch))
        frame += length
    return notes


def chord_frames(chords: Sequence[tuple[Iterable[int], int]]) -> list[frozenset[int]]:
    """The frames :func:`write_chords` gives back (trailing rests make no frames)."""
    frames = [frozenset(chord) for chord, length in chords for _ in range(length)]
    while frames and not frames[-1]:
        frames.pop()
    return frames


def write_chords(
    path: str | Path, chords: Sequence[tuple[Iterable[int], int]], fs: int = 5, **track: object
) -> Path:
    """A one-track file holding each chord for whole frames (see :func:`chord_frames`)."""
    return write_midi(path, TrackSpec(notes=chord_notes(chords, fs), **track))  # type: ignore[arg-type]


def write_not_midi(path: str | Path, text: str = "these are my notes, not MIDI\n") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_truncated(path: str | Path, source: str | Path, keep: float = 0.5) -> Path:
    """The first ``keep`` share of a real .mid file (header intact, last track cut short)."""
    data = Path(source).read_bytes()
    path = Path(path)
    path.write_bytes(data[: max(14, int(len(data) * keep))])
    return path


C_MAJOR = frozenset({60, 64, 67})
F_MAJOR = frozenset({60, 65, 69})
G_MAJOR = frozenset({59, 62, 67})

CHORD_CORPUS: dict[str, list[tuple[frozenset[int], int]]] = {
    "cadence.mid": [(C_MAJOR, 4), (F_MAJOR, 2), (G_MAJOR, 2), (C_MAJOR, 4)],
    "melody.mid": [(frozenset({72}), 1), (frozenset({74}), 1), (frozenset(), 2), (C_MAJOR, 3)],
    "sub/low.mid": [(frozenset({36, 48}), 5), (G_MAJOR, 1), (frozenset({36, 48}), 2)],
}
"""The pieces of the ``chord_corpus`` fixture: 12 + 7 + 8 = 27 frames, 2 of them silent."""


@pytest.fixture
def make_midi(tmp_path: Path) -> Callable[..., Path]:
    """``make_midi("a.mid", [(0.0, 1.0, 60)], TrackSpec(...))`` → path under ``tmp_path``."""

    def make(name: str, *tracks: TrackSpec | Sequence[NoteSpec]) -> Path:
        return write_midi(tmp_path / name, *tracks)

    return make


@pytest.fixture
def make_chords(tmp_path: Path) -> Callable[..., Path]:
    """``make_chords("a.mid", [({60, 64, 67}, 3), ...])`` → path under ``tmp_path``."""

    def make(name: str, chords: Sequence[tuple[Iterable[int], int]], **track: object) -> Path:
        return write_chords(tmp_path / name, chords, **track)

    return make


@pytest.fixture
def chord_corpus(tmp_path: Path) -> Path:
    """A directory with the three small pieces of :data:`CHORD_CORPUS` (one in a subfolder)."""
    root = tmp_path / "corpus"
    for name, chords in CHORD_CORPUS.items():
        write_chords(root / name, chords)
    return root


ROOT = Path(__file__).resolve().parents[1]


def run_musicgend(
    *args: object, timeout_s: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: a real process from the repository root, no stdin, wide
    terminal columns; ``env`` adds to (or overrides) the environment."""
    return subprocess.run(
        [sys.executable, "-m", "musicgend", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        stdin=subprocess.DEVNULL,
    )
