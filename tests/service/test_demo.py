"""``musicgend demo``: a chorale played into the daemon on a private JACK server, the
session kept, drawn and (with fluidsynth) rendered."""

from __future__ import annotations

import shutil
from pathlib import Path

import mido
import pytest

from musicgend.errors import MidiFileError, MusicgendError
from musicgend.service.demo import SOUNDFONTS, midi_events
from tests.conftest import run_musicgend, write_midi

C_MAJOR = [(0.1, 1.5, 60), (0.1, 1.5, 64), (0.1, 1.5, 67), (1.5, 2.9, 62), (1.5, 4.0, 65)]


def test_the_events_played_are_the_file_cut_at_the_length_with_notes_released(
    tmp_path: Path,
) -> None:
    song = write_midi(tmp_path / "song.mid", C_MAJOR)
    events = midi_events(song, seconds=2.0)
    ons = [(round(t, 2), d[1]) for t, d in events if d[0] & 0xF0 == 0x90 and d[2] > 0]
    assert ons == [(0.1, 60), (0.1, 64), (0.1, 67), (1.5, 62), (1.5, 65)]
    # at 2 s the two notes still down are released: every note-on has its note-off
    offs = [(round(t, 2), d[1]) for t, d in events if d[0] & 0xF0 == 0x80 or d[2] == 0]
    assert sorted(p for _, p in offs) == [60, 62, 64, 65, 67]
    assert [t for t, p in offs if p in (62, 65)] == [2.0, 2.0]
    (tmp_path / "empty.mid").write_bytes(b"")
    with pytest.raises(MidiFileError, match="empty file"):
        midi_events(tmp_path / "empty.mid", 5.0)
    silent = write_midi(tmp_path / "silent.mid", [])
    with pytest.raises(MusicgendError, match="no notes to play"):
        midi_events(silent, 5.0)


@pytest.mark.jack
@pytest.mark.slow
def test_demo_plays_records_draws_and_renders(tmp_path: Path) -> None:
    song = write_midi(tmp_path / "song.mid", C_MAJOR)
    out = tmp_path / "demo"
    result = run_musicgend(
        "demo", "--out-dir", out, "--midi", song, "--seconds", "4", timeout_s=180
    )
    assert result.returncode == 0, result.stderr
    printed = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    assert Path(printed["played"].strip()) == song
    session = Path(printed["session"].strip())
    assert session.is_file() and session.is_relative_to(out / "sessions")
    tracks = {t.name: t for t in mido.MidiFile(session).tracks}
    human = [m for m in tracks["human"] if m.type == "note_on" and m.velocity > 0]
    heard = [m.note for m in human]
    # Nothing unplayed, nothing twice, most of it. Not all: a JACK client that misses a cycle
    # (an xrun: on a shared 2-core VM, ~1 a second while the hypervisor takes the CPU) loses
    # that cycle's events, seen here in 1 run of 8. Exact delivery: test_daemon_jack.py.
    assert len(set(heard)) == len(heard) >= 3 and set(heard) <= {60, 62, 64, 65, 67}, heard
    assert any(m.type == "note_on" and m.velocity > 0 for m in tracks["machine"])
    assert Path(printed["picture"].strip()).read_bytes()[:4] == b"\x89PNG"
    if shutil.which("fluidsynth") and any(f.exists() for f in SOUNDFONTS):
        wav = Path(printed["audio"].strip())
        assert wav.read_bytes()[:4] == b"RIFF" and wav.stat().st_size > 44
    else:
        assert "not rendered" in printed["audio"]
