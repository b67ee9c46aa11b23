"""Reading .mid files into the quantiser's :class:`~musicgend.core.pianoroll.Track` values.

Every failure becomes a :class:`~musicgend.errors.MidiFileError` naming the file and the
reason, so a corpus run can report it and go on with the other files.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from musicgend.core.pianoroll import (
    DEFAULT_FS,
    ControlChange,
    Note,
    Track,
    frames_from_tracks,
    select_tracks,
    tokens_from_frames,
)
from musicgend.core.tokens import PitchSet
from musicgend.errors import CorpusError, MidiFileError

if TYPE_CHECKING:
    import mido

MIDI_SUFFIXES = (".mid", ".midi", ".smf", ".kar")


def _pretty_midi():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pretty_midi
    return pretty_midi


def read_midi_file(path: str | Path) -> mido.MidiFile:
    """A .mid file parsed by mido, every track with events. Raises :class:`MidiFileError`
    with a clear reason (no such file, empty, no header, corrupt, no tracks…)."""
    path = Path(path)
    if not path.exists():
        raise MidiFileError(path, "no such file")
    if not path.is_file():
        raise MidiFileError(path, "not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MidiFileError(path, f"can't read: {exc.strerror or exc}") from None
    if not data:
        raise MidiFileError(path, "empty file (0 bytes)")
    if data[:4] != b"MThd":
        raise MidiFileError(path, "not a MIDI file (no 'MThd' header)")
    import mido

    try:
        # latin1 as pretty_midi reads text events when given a file name
        mid = mido.MidiFile(file=io.BytesIO(data), charset="latin1")
    except Exception as exc:  # mido raises many types on corrupt data
        reason = str(exc) or type(exc).__name__
        raise MidiFileError(path, f"corrupt or truncated MIDI data ({reason})") from None
    if not mid.tracks:
        raise MidiFileError(path, "no tracks (the 'MThd' header says 0)")
    empty = [i for i, track in enumerate(mid.tracks) if not track]
    if empty:
        raise MidiFileError(path, f"track {empty[0] + 1} of {len(mid.tracks)} has no events")
    return mid


def read_tracks(path: str | Path) -> list[Track]:
    """The tracks of a .mid file. Raises :class:`MidiFileError` with a clear reason."""
    path = Path(path)
    mid = read_midi_file(path)
    pretty_midi = _pretty_midi()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = pretty_midi.PrettyMIDI(mido_object=mid)
    except Exception as exc:  # pretty_midi raises many types on corrupt data
        reason = str(exc) or type(exc).__name__
        raise MidiFileError(path, f"corrupt or truncated MIDI data ({reason})") from None
    return tracks_from_pretty_midi(pm)


def tracks_from_pretty_midi(pm: object) -> list[Track]:
    """Convert a loaded ``pretty_midi.PrettyMIDI`` into tracks (no I/O)."""
    tracks = []
    for inst in pm.instruments:  # type: ignore[attr-defined]
        notes = tuple(
            Note(float(n.start), float(n.end), int(n.pitch), int(n.velocity)) for n in inst.notes
        )
        controls = tuple(
            ControlChange(float(c.time), int(c.number), int(c.value)) for c in inst.control_changes
        )
        tracks.append(
            Track(notes, controls, bool(inst.is_drum), float(inst.get_end_time()), inst.name)
        )
    return tracks


@dataclass(frozen=True)
class Piece:
    """One readable piece of a corpus: its file and its frames."""

    path: Path
    frames: tuple[PitchSet, ...]

    @property
    def tokens(self) -> list[str]:
        return tokens_from_frames(self.frames)


def read_piece(path: str | Path, fs: int = DEFAULT_FS, first_track_only: bool = False) -> Piece:
    """Read a .mid file into frames; a file with nothing to play is an error."""
    path = Path(path)
    tracks = read_tracks(path)
    if not tracks or not any(t.notes for t in tracks):
        raise MidiFileError(path, "no notes")
    if not any(t.notes for t in select_tracks(tracks, first_track_only)):
        if all(t.is_drum for t in tracks if t.notes):
            raise MidiFileError(path, "only drum tracks (drums make no chord tokens)")
        raise MidiFileError(path, "the first non-drum track has no notes")
    frames = frames_from_tracks(tracks, fs, first_track_only)
    if not frames:
        raise MidiFileError(path, "shorter than one frame")
    return Piece(path, tuple(frames))


def find_midi_files(dirs: Sequence[str | Path]) -> list[Path]:
    """Every MIDI file under the given directories (or files), sorted.

    Raises :class:`CorpusError` for a missing path or when nothing at all is found.
    """
    found: list[Path] = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise CorpusError(f"{d}: no such file or directory")
        if d.is_file():
            found.append(d)
            continue
        found.extend(
            p for p in sorted(d.rglob("*")) if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES
        )
    if not found:
        raise CorpusError(
            f"no MIDI files ({', '.join(MIDI_SUFFIXES)}) under {', '.join(map(str, dirs))}"
        )
    return found


def iter_pieces(
    paths: Sequence[Path], fs: int = DEFAULT_FS, first_track_only: bool = False
) -> Iterator[Piece | MidiFileError]:
    """Read each file in turn, yielding a :class:`Piece` or the error that file gave."""
    for path in paths:
        try:
            yield read_piece(path, fs, first_track_only)
        except MidiFileError as exc:
            yield exc
