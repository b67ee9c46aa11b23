"""Reading .mid files: each kind of broken file gets its own clear reason."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from musicgend.errors import MidiFileError
from musicgend.io.midifile import read_piece, read_tracks
from tests.conftest import write_midi, write_truncated


def header(n_tracks: int) -> bytes:
    return b"MThd" + struct.pack(">IHHH", 6, 1, n_tracks, 480)


def reason(path: Path) -> str:
    with pytest.raises(MidiFileError) as info:
        read_tracks(path)
    assert str(path) in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty file (0 bytes)"),
        (b"MTh", "not a MIDI file (no 'MThd' header)"),
        (b"RIFF\x00\x00\x00\x06", "not a MIDI file (no 'MThd' header)"),
        (header(0), "no tracks (the 'MThd' header says 0)"),
        (header(1) + b"MTrk\x00\x00\x00\x00", "track 1 of 1 has no events"),
        (header(1), "corrupt or truncated MIDI data"),
        (b"MThd", "corrupt or truncated MIDI data"),
    ],
    ids=["empty", "short", "riff", "no-tracks", "empty-track", "missing-track", "bare-header"],
)
def test_broken_files_get_a_clear_reason(tmp_path, data, expected):
    path = tmp_path / "broken.mid"
    path.write_bytes(data)
    assert expected in reason(path)


def test_no_tracks_is_not_reported_as_corrupt(tmp_path):
    path = tmp_path / "notracks.mid"
    path.write_bytes(header(0))
    assert "corrupt" not in reason(path)
    assert "max()" not in reason(path)


def test_truncated_file_is_still_corrupt_or_truncated(tmp_path):
    whole = write_midi(tmp_path / "whole.mid", [(0.0, 1.0, 60), (1.0, 2.0, 64)])
    cut = write_truncated(tmp_path / "cut.mid", whole, 0.6)
    assert "corrupt or truncated MIDI data" in reason(cut)


def test_a_good_file_still_reads(tmp_path):
    path = write_midi(tmp_path / "good.mid", [(0.0, 1.0, 60), (0.0, 1.0, 64)])
    piece = read_piece(path, 5)
    assert piece.frames[0] == frozenset({60, 64})
    assert len(piece.frames) == 5
