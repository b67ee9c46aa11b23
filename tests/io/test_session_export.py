"""``musicgend session export``: real session directories (written by SessionRecorder) → a
MIDI corpus that the training reader gives back frame for frame."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from musicgend.errors import OutputError, SessionError
from musicgend.io.midifile import find_midi_files, read_piece
from musicgend.io.session import JOURNAL_NAME, META_NAME, MIDI_NAME, SessionRecorder
from musicgend.io.session_export import export_sessions, split_at_gaps
from tests.conftest import chord_frames, run_musicgend

Chords = Sequence[tuple[Iterable[int], int]]
FRAME_NS = 200_000_000
OFFSET_NS = 10_000_000  # 10 ms after the frame edge, like tests.conftest.chord_notes

HUMAN: Chords = [({60, 64, 67}, 3), ({62, 65, 69}, 2), (set(), 1), ({59, 62, 67}, 4)]
MACHINE: Chords = [({48}, 2), ({43, 55}, 3)]


def play(rec: SessionRecorder, direction: str, chords: Chords, start_frame: int = 0) -> int:
    """Record note-ons/offs holding each chord for its frames; returns the next frame."""
    frame = start_frame
    channel = 0 if direction == "human" else 1
    for chord, length in chords:
        on_ns = rec.start_ns + frame * FRAME_NS + OFFSET_NS
        off_ns = on_ns + length * FRAME_NS
        for pitch in sorted(chord):
            rec.record(direction, bytes([0x90 | channel, pitch, 90]), on_ns)  # type: ignore[arg-type]
            rec.record(direction, bytes([0x80 | channel, pitch, 0]), off_ns)  # type: ignore[arg-type]
        frame += length
    return frame


def record_session(directory: Path, human: Chords = HUMAN, machine: Chords = MACHINE) -> Path:
    with SessionRecorder(directory=directory, metadata={"model": "test"}) as rec:
        play(rec, "human", human)
        play(rec, "machine", machine)
    return directory


def frames_of(path: Path) -> list[frozenset[int]]:
    return list(read_piece(path).frames)


def test_export_round_trip_gives_the_played_frames(tmp_path: Path) -> None:
    session = record_session(tmp_path / "sessions" / "s1")
    notes: list[str] = []
    report = export_sessions([session], tmp_path / "corpus", on_note=notes.append)
    assert [p.name for p in report.written] == ["s1-human.mid"]
    assert frames_of(report.written[0]) == chord_frames(HUMAN)
    assert notes == [] and not report.failed and not report.skipped

    machine = export_sessions([session], tmp_path / "m", track="machine").written
    assert [p.name for p in machine] == ["s1-machine.mid"]
    assert frames_of(machine[0]) == chord_frames(MACHINE)

    (both,) = export_sessions([session], tmp_path / "b", track="both").written
    machine_frames = chord_frames(MACHINE) + [frozenset()] * 5  # 10 human, 5 machine frames
    merged = [h | m for h, m in zip(chord_frames(HUMAN), machine_frames, strict=True)]
    assert frames_of(both) == merged


def test_a_killed_session_is_read_from_its_journal_without_touching_it(tmp_path: Path) -> None:
    session = record_session(tmp_path / "killed")
    # what a SIGKILL leaves: the journal without its end line, no .mid, no sidecar
    (session / MIDI_NAME).unlink()
    (session / META_NAME).unlink()
    journal = session / JOURNAL_NAME
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:-1]))
    before = sorted(p.name for p in session.iterdir())
    notes: list[str] = []
    report = export_sessions([session], tmp_path / "corpus", on_note=notes.append)
    assert frames_of(report.written[0]) == chord_frames(HUMAN)
    assert sorted(p.name for p in session.iterdir()) == before
    assert any("musicgend session recover" in n for n in notes)


def test_a_journal_with_an_unreadable_line_is_exported_with_a_note(tmp_path: Path) -> None:
    session = record_session(tmp_path / "killed")
    (session / MIDI_NAME).unlink()
    (session / META_NAME).unlink()
    journal = session / JOURNAL_NAME
    lines = journal.read_text().splitlines(keepends=True)[:-1]
    lines.insert(len(lines) - 1, "garbage\n")  # among the machine events
    journal.write_text("".join(lines))
    notes: list[str] = []
    report = export_sessions([session], tmp_path / "corpus", on_note=notes.append)
    assert frames_of(report.written[0]) == chord_frames(HUMAN)
    bad_line = len(lines) - 1
    expected = f"note: {journal}: 1 unreadable journal line skipped: line {bad_line}"
    assert expected in notes


def test_long_silences_cut_pieces_and_leading_silence_is_dropped(tmp_path: Path) -> None:
    first: Chords = [({60, 64, 67}, 5)]
    second: Chords = [({57, 60, 64}, 4)]
    with SessionRecorder(directory=tmp_path / "s") as rec:
        # 30 s of nothing, a phrase, 15 s of nothing, another phrase
        end = play(rec, "human", first, start_frame=150)
        play(rec, "human", second, start_frame=end + 75)
    report = export_sessions([tmp_path / "s"], tmp_path / "corpus", gap_s=10)
    assert [p.name for p in report.written] == ["s-human-1.mid", "s-human-2.mid"]
    assert frames_of(report.written[0]) == chord_frames(first)  # shifted by 30 whole seconds
    # the second part starts 15 s after the first ended: shifted to within a second
    assert frames_of(report.written[1])[-4:] == chord_frames(second)
    assert len(frames_of(report.written[1])) < 5 + 4
    whole = export_sessions([tmp_path / "s"], tmp_path / "whole", gap_s=0).written
    assert [p.name for p in whole] == ["s-human.mid"]


def test_split_at_gaps() -> None:
    spans = [(0.0, 1.0), (2.0, 3.0), (20.0, 21.0)]
    assert split_at_gaps(spans, 10) == [(0.0, 3.0), (20.0, 21.0)]
    assert split_at_gaps(spans, 0) == [(0.0, 21.0)]
    assert split_at_gaps(spans, 0.5) == spans


def test_never_overwrites_and_does_not_duplicate(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    record_session(root / "a")
    record_session(root / "b", human=[({50, 53}, 4)])
    (root / "empty").mkdir()
    with SessionRecorder(directory=root / "silent"):
        pass
    corpus = tmp_path / "corpus"
    notes: list[str] = []
    report = export_sessions([root], corpus, on_note=notes.append)  # the session root
    assert sorted(p.name for p in report.written) == ["a-human.mid", "b-human.mid"]
    assert report.sessions == 3  # a, b, silent ("empty" holds no session files)
    assert [str(d) for d, _ in report.skipped] == [str(root / "silent")]
    assert notes == [f"skipped {root / 'silent'}: no human notes"]

    again = export_sessions([root], corpus)
    assert again.written == [] and len(again.existing) == 2  # same bytes: kept once

    # a different session that happens to have the same name gets a new file name
    other = record_session(tmp_path / "elsewhere" / "a", human=[({70}, 3)])
    (new,) = export_sessions([other], corpus).written
    assert new.name == "a-human-2.mid"
    assert frames_of(corpus / "a-human.mid") == chord_frames(HUMAN)
    assert len(find_midi_files([corpus])) == 3


def test_errors_name_the_directory(tmp_path: Path) -> None:
    with pytest.raises(SessionError, match="no such session directory"):
        export_sessions([tmp_path / "nope"], tmp_path / "out")
    (tmp_path / "plain").mkdir()
    with pytest.raises(SessionError, match="not a session directory"):
        export_sessions([tmp_path / "plain"], tmp_path / "out")
    session = record_session(tmp_path / "s")
    with pytest.raises(SessionError, match="--track must be one of"):
        export_sessions([session], tmp_path / "out", track="drums")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"^/\S*/file is a file, not a directory$"):
        export_sessions([session], tmp_path / "file")
    with pytest.raises(OutputError, match=r"/file/c: .*/file is a file, not a directory$"):
        export_sessions([session], tmp_path / "file" / "c")
    for inside in (session, session / "corpus"):
        with pytest.raises(SessionError, match="is inside the session"):
            export_sessions([session], inside)
    assert not (session / "corpus").exists()
    assert not (tmp_path / "out").exists()  # nothing written on a bad argument

    (session / MIDI_NAME).write_bytes(b"MThd broken")
    report = export_sessions([session], tmp_path / "out")
    ((where, reason),) = report.failed
    assert where == session
    assert "corrupt MIDI data" in reason and "musicgend session recover" in reason


def test_cli_export_feeds_vocab_build(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    for i in range(3):
        record_session(root / f"s{i}")
    proc = run_musicgend("session", "export", root, "-o", tmp_path / "corpus", timeout_s=60)
    assert proc.returncode == 0, proc.stderr
    assert "exported 3 file(s) from 3 session(s)" in proc.stdout
    vocab = tmp_path / "vocab.json"
    proc = run_musicgend("vocab", "build", tmp_path / "corpus", "-o", vocab, timeout_s=60)
    assert proc.returncode == 0, proc.stderr
    assert "pieces        3 read" in proc.stdout

    proc = run_musicgend("session", "export", tmp_path / "missing", "-o", tmp_path / "c2")
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {tmp_path / 'missing'}: no such session directory"
