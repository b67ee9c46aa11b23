"""Session logs → a MIDI corpus that ``musicgend train --data`` and ``vocab build`` read.

``musicgend session export SESSION_DIR... -o OUT_DIR [--track human|machine|both]``.

What is read. Each argument is a session directory (:mod:`musicgend.io.session`) or a
directory holding session directories (e.g. the session root). A finished or recovered
session is read from its ``session.mid``; a session that was killed and not yet recovered
(a journal, no ``session.mid``) is rebuilt from its journal in memory, exactly as
``musicgend session recover`` would, without writing into the session directory (it may be
the live session of a running daemon).

What is written. The chosen track (``human``, the default: what the player played;
``machine``: what musicgend answered; ``both``: the two in one file, which the quantiser
merges into one chord stream) of every session, cut at silences of at least ``gap_s``
seconds (default 10 s; 0 = never) into separate pieces, each shifted by whole seconds so
that it starts within a second of its first note (a whole second is a whole number of
frames at any integer fs, so the frame grid stays where it was). Files are named
``<session>-<track>[-<part>].mid``. A part whose notes make no chord frame at the model's
5 frames per second is left out.

Nothing is overwritten. A file already there with the same bytes is the same export
(re-running the command is harmless and adds no duplicate, which would leak one piece
across the train/validation split); a different file of that name makes the new one
``…-2.mid``, ``…-3.mid``.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from musicgend.core.pianoroll import DEFAULT_FS, frames_from_tracks
from musicgend.errors import SessionError
from musicgend.io.midifile import _pretty_midi, tracks_from_pretty_midi
from musicgend.io.session import (
    JOURNAL_NAME,
    MIDI_NAME,
    bad_lines_summary,
    read_journal,
    session_midi_bytes,
)
from musicgend.outputs import check_dir

TrackChoice = Literal["human", "machine", "both"]
TRACK_CHOICES: tuple[str, ...] = get_args(TrackChoice)
DEFAULT_GAP_S = 10.0
"""Silences at least this long cut a session into separate pieces."""


@dataclass(frozen=True)
class SessionSource:
    """One session directory and where its music comes from."""

    directory: Path
    from_journal: bool
    """No ``session.mid`` yet (killed, not recovered): rebuilt from ``journal.jsonl``."""

    @property
    def name(self) -> str:
        return self.directory.name


@dataclass
class ExportReport:
    """What :func:`export_sessions` did."""

    written: list[Path] = field(default_factory=list)
    existing: list[Path] = field(default_factory=list)
    """Identical files already in the output directory (kept, not duplicated)."""
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    """Sessions (or parts) with nothing to export, and why."""
    failed: list[tuple[Path, str]] = field(default_factory=list)
    """Sessions that could not be read, and why."""
    sessions: int = 0

    @property
    def usable(self) -> int:
        return len(self.written) + len(self.existing)

    def summary(self, out_dir: Path) -> str:
        return (
            f"exported {len(self.written)} file(s) from {self.sessions} session(s), "
            f"{len(self.existing)} already there, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed -> {out_dir}"
        )


def _is_session_dir(path: Path) -> bool:
    return (path / MIDI_NAME).is_file() or (path / JOURNAL_NAME).is_file()


def find_sessions(paths: Sequence[str | Path]) -> list[SessionSource]:
    """The session directories named by ``paths`` (each a session directory, or a directory
    holding session directories), in order. Checked before anything is written: a missing
    path, a file, or a directory holding no session raises :class:`SessionError`."""
    if not paths:
        raise SessionError("no session directory given")
    found: list[SessionSource] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise SessionError(f"{path}: no such session directory")
        if not path.is_dir():
            raise SessionError(f"{path}: not a directory (a session is a directory)")
        if _is_session_dir(path):
            candidates = [path]
        else:
            candidates = sorted(p for p in path.iterdir() if p.is_dir() and _is_session_dir(p))
            if not candidates:
                raise SessionError(
                    f"{path}: not a session directory (no {MIDI_NAME} or {JOURNAL_NAME}) "
                    "and holds none"
                )
        for directory in candidates:
            key = directory.resolve()
            if key in seen:
                continue
            seen.add(key)
            found.append(SessionSource(directory, not (directory / MIDI_NAME).is_file()))
    return found


def load_session_midi(source: SessionSource, on_note: Callable[[str], None] | None = None) -> Any:
    """The session as a ``pretty_midi.PrettyMIDI`` (from its .mid, or its journal; unreadable
    journal lines that were skipped are passed to ``on_note``)."""
    pretty_midi = _pretty_midi()
    if source.from_journal:
        where = source.directory / JOURNAL_NAME
        journal = read_journal(where)
        if journal.bad_lines and on_note is not None:
            on_note(f"note: {where}: {bad_lines_summary(journal.bad_lines)}")
        payload, _ = session_midi_bytes(journal)
    else:
        where = source.directory / MIDI_NAME
        try:
            payload = where.read_bytes()
        except OSError as exc:
            raise SessionError(f"{where}: can't read ({exc.strerror or exc})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pretty_midi.PrettyMIDI(io.BytesIO(payload))
    except Exception as exc:  # pretty_midi/mido raise many types on corrupt data
        hint = ""
        if (source.directory / JOURNAL_NAME).is_file():
            hint = f"; rebuild it with `musicgend session recover {source.directory}`"
        raise SessionError(
            f"{where}: corrupt MIDI data ({exc or type(exc).__name__}){hint}"
        ) from None


def _sound_spans(instruments: Iterable[Any]) -> list[tuple[float, float]]:
    """Merged ``[start, end)`` times where something sounds (notes, and sustain-pedal holds
    that begin while a note sounds or catch a note)."""
    spans = [(float(n.start), float(n.end)) for inst in instruments for n in inst.notes]
    for inst in instruments:
        down: float | None = None
        for cc in sorted(inst.control_changes, key=lambda c: c.time):
            if cc.number != 64:
                continue
            if cc.value >= 64 and down is None:
                down = float(cc.time)
            elif cc.value < 64 and down is not None:
                if any(s < cc.time and e > down for s, e in spans):
                    spans.append((down, float(cc.time)))
                down = None
    spans.sort()
    merged: list[tuple[float, float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def split_at_gaps(spans: Sequence[tuple[float, float]], gap_s: float) -> list[tuple[float, float]]:
    """``(start, end)`` of each part: sounding spans joined across silences shorter than
    ``gap_s`` (``gap_s`` <= 0: one part)."""
    parts: list[tuple[float, float]] = []
    for start, end in spans:
        if parts and (gap_s <= 0 or start - parts[-1][1] < gap_s):
            parts[-1] = (parts[-1][0], max(parts[-1][1], end))
        else:
            parts.append((start, end))
    return parts


def _cut(instruments: Sequence[Any], start_s: float, end_s: float) -> Any:
    """A new PrettyMIDI (120 BPM, 960 ticks per beat, like the session .mid) with the
    events of ``instruments`` in ``[start_s, end_s]``, shifted by whole seconds."""
    pretty_midi = _pretty_midi()
    shift = float(int(start_s))
    out = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=120.0)
    for inst in instruments:
        new = pretty_midi.Instrument(inst.program, is_drum=inst.is_drum, name=inst.name)
        new.notes = [
            pretty_midi.Note(n.velocity, n.pitch, n.start - shift, n.end - shift)
            for n in inst.notes
            if start_s <= n.start and n.end <= end_s + 1e-9
        ]
        # controllers inside the part; a pedal pressed before it is restated at its start
        pedal_down = False
        for cc in sorted(inst.control_changes, key=lambda c: c.time):
            if cc.time < start_s and cc.number == 64:
                pedal_down = cc.value >= 64
        if pedal_down:
            new.control_changes.append(pretty_midi.ControlChange(64, 127, start_s - shift))
        new.control_changes.extend(
            pretty_midi.ControlChange(cc.number, cc.value, cc.time - shift)
            for cc in inst.control_changes
            if start_s <= cc.time <= end_s
        )
        new.pitch_bends = [
            pretty_midi.PitchBend(b.pitch, b.time - shift)
            for b in inst.pitch_bends
            if start_s <= b.time <= end_s
        ]
        if new.notes:
            out.instruments.append(new)
    return out


def _midi_bytes(pm: Any) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.write(buf)
    return buf.getvalue()


def _write_unique(out_dir: Path, stem: str, payload: bytes) -> tuple[Path, bool]:
    """Write ``payload`` as ``stem.mid`` (or ``stem-2.mid``…); an identical file already
    there is returned instead. Returns (path, written)."""
    for n in range(1, 10_000):
        path = out_dir / (f"{stem}.mid" if n == 1 else f"{stem}-{n}.mid")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                if path.is_file() and path.read_bytes() == payload:
                    return path, False
            except OSError:
                pass
            continue
        except OSError as exc:
            raise SessionError(f"{path}: can't write ({exc.strerror or exc})") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise SessionError(f"{path}: can't write ({exc.strerror or exc})") from None
        return path, True
    raise SessionError(f"{out_dir}: no free file name for {stem}.mid")


def export_session(
    source: SessionSource,
    out_dir: Path,
    track: TrackChoice,
    gap_s: float,
    report: ExportReport,
    on_note: Callable[[str], None] | None = None,
) -> None:
    """Export one session's chosen track(s) into ``out_dir``, recording what happened."""
    note = on_note or (lambda _line: None)
    pm = load_session_midi(source, on_note)
    names = ("human", "machine") if track == "both" else (track,)
    chosen = [inst for inst in pm.instruments if inst.name in names]
    if not any(inst.notes for inst in chosen):
        what = "no notes" if track == "both" else f"no {track} notes"
        report.skipped.append((source.directory, what))
        note(f"skipped {source.directory}: {what}")
        return
    parts = split_at_gaps(_sound_spans(chosen), gap_s)
    for k, (start_s, end_s) in enumerate(parts, start=1):
        piece = _cut(chosen, start_s, end_s)
        frames = frames_from_tracks(tracks_from_pretty_midi(piece), DEFAULT_FS)
        label = f"{source.directory} part {k} ({start_s:.1f}-{end_s:.1f} s)"
        if not any(frames):
            report.skipped.append((source.directory, f"part {k}: too short for a chord frame"))
            note(f"skipped {label}: too short to make a chord frame")
            continue
        stem = f"{source.name}-{track}" + (f"-{k}" if len(parts) > 1 else "")
        path, written = _write_unique(out_dir, stem, _midi_bytes(piece))
        (report.written if written else report.existing).append(path)
        if not written:
            note(f"kept {path}: the same export is already there")


def export_sessions(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    track: str = "human",
    gap_s: float = DEFAULT_GAP_S,
    on_note: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export every session named by ``paths`` into the corpus directory ``out_dir``.

    Bad arguments (missing paths, no session, unknown track) raise :class:`SessionError`
    before anything is written; an output directory that can't be created or written (a
    file, a path through one, no permission) raises
    :class:`~musicgend.errors.OutputError` (:func:`musicgend.outputs.check_dir`). A session
    that can't be read is recorded in ``failed`` (and passed to ``on_note``) and the others
    go on.
    """
    if track not in TRACK_CHOICES:
        raise SessionError(f"--track must be one of {', '.join(TRACK_CHOICES)}, got {track!r}")
    if gap_s < 0:
        raise SessionError(f"--gap must be >= 0 seconds, got {gap_s}")
    sources = find_sessions(paths)
    out = Path(out_dir)
    inside = next(
        (s.directory for s in sources if out.resolve().is_relative_to(s.directory.resolve())), None
    )
    if inside is not None:
        raise SessionError(
            f"{out}: is inside the session {inside}; export the corpus to a directory of its own"
        )
    check_dir(out, "corpus directory", create=True)
    report = ExportReport(sessions=len(sources))
    for source in sources:
        try:
            export_session(source, out, track, gap_s, report, on_note)  # type: ignore[arg-type]
        except SessionError as exc:
            report.failed.append((source.directory, str(exc)))
            if on_note is not None:
                on_note(f"failed {source.directory}: {exc}")
        else:
            if source.from_journal and on_note is not None:
                on_note(
                    f"note: {source.directory} has no {MIDI_NAME} (killed?); read from its "
                    f"journal. `musicgend session recover {source.directory}` writes it."
                )
    return report
