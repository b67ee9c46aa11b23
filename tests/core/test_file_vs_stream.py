"""The crucial equality: the same notes give the same frames three ways.

Random notes (and sustain-pedal CC64, and an unrelated CC) are written to a real .mid file
with pretty_midi, then:

(a) the seed's method: ``PrettyMIDI(path).get_piano_roll(fs=5) > 0`` per non-drum
    instrument, OR-ed;
(b) ``musicgend.io.midifile.read_piece`` (the training path);
(c) the notes pretty_midi reads back from that file, sent as a timestamped note-on/off/CC
    stream through ``core.pianoroll.StreamQuantiser`` frame by frame, as live input is.

All three must agree frame for frame. The stream is built from the notes read back because
pretty_midi rounds times to ticks when it writes. One known, documented divergence is kept
out of the generated files: a pedal still down when a file ends is ignored by pretty_midi
(it applies a pedal on release only) but holds live, where nobody knows it will never be
released; so every generated pedal is released.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musicgend.core.pianoroll import PEDAL_CC, StreamQuantiser
from musicgend.errors import MidiFileError
from musicgend.io.midifile import read_piece
from tests.conftest import TrackSpec, write_midi

FS = 5

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pretty_midi

# times in ms, plus exact frame edges (k / 5 s), where off-by-one errors live
times_s = st.one_of(
    st.integers(0, 4000).map(lambda ms: ms / 1000), st.integers(0, 20).map(lambda k: k / FS)
)
durations_s = st.one_of(
    st.just(0.0),
    st.integers(1, 1500).map(lambda ms: ms / 1000),
    st.integers(1, 5).map(lambda k: k / FS),
)


@st.composite
def instruments(draw: st.DrawFn) -> TrackSpec:
    raw = draw(
        st.lists(
            st.tuples(times_s, durations_s, st.integers(55, 67), st.integers(1, 127)), max_size=14
        )
    )
    # One key can't be down twice at once: drop a note that overlaps an earlier one of the
    # same pitch (touching is fine and is kept: off and on at the same time).
    notes: list[tuple[float, float, int, int]] = []
    free_from_s: dict[int, float] = {}
    for start_s, length_s, pitch, velocity in sorted(raw):
        if start_s < free_from_s.get(pitch, 0.0):
            continue
        notes.append((start_s, start_s + length_s, pitch, velocity))
        free_from_s[pitch] = start_s + length_s
    pedal = draw(
        st.lists(st.tuples(times_s, st.sampled_from([0, 10, 63, 64, 90, 127])), max_size=6)
    )
    controls = [(t, PEDAL_CC, v) for t, v in sorted(pedal)]
    down = False
    for _, _, value in controls:
        down = value >= 64
    if down:  # release the pedal (see the module docstring), strictly after the last
        # pedal event: pretty_midi may reorder events of one instant when it writes
        controls.append((controls[-1][0] + 0.05 + draw(durations_s), PEDAL_CC, 0))
    if draw(st.booleans()):
        controls.append((draw(times_s), 1, draw(st.integers(0, 127))))  # mod wheel: no effect
    return TrackSpec(notes=notes, controls=controls, is_drum=draw(st.integers(0, 5)) == 0)


def seed_frames(pm, first_track_only: bool = False) -> list[frozenset[int]]:
    """(a) The seed's piano roll, non-drum instruments OR-ed."""
    melodic = [inst for inst in pm.instruments if not inst.is_drum]
    if first_track_only:
        melodic = melodic[:1]
    rolls = [inst.get_piano_roll(fs=FS) > 0 for inst in melodic]
    length = max((r.shape[1] for r in rolls), default=0)
    merged = np.zeros((128, length), dtype=bool)
    for roll in rolls:
        merged[:, : roll.shape[1]] |= roll
    return [frozenset(np.flatnonzero(merged[:, k]).tolist()) for k in range(length)]


def stream_frames(pm, n_frames: int, inclusive: bool) -> list[frozenset[int]]:
    """(c) One StreamQuantiser per non-drum instrument (a MIDI channel), frames OR-ed."""
    merged = [frozenset[int]()] * n_frames
    for inst in pm.instruments:
        if inst.is_drum:
            continue
        # at one instant: note-offs, then controllers, then note-ons
        events = sorted(
            [(float(n.start), 2, n.pitch, n.velocity) for n in inst.notes]
            + [(float(n.end), 0, n.pitch, 0) for n in inst.notes]
            + [(float(c.time), 1, c.number, c.value) for c in inst.control_changes]
        )
        q, i = StreamQuantiser(FS), 0
        for k in range(n_frames):
            now_s = (k + 1) / FS
            while i < len(events) and (
                events[i][0] < now_s or (inclusive and events[i][0] == now_s)
            ):
                time_s, kind, a, b = events[i]
                if kind == 0:
                    q.note_off(time_s, a)
                elif kind == 1:
                    q.control_change(time_s, a, b)
                else:
                    q.note_on(time_s, a, b)
                i += 1
            merged[k] = merged[k] | q.frame(k, now_s)
    return merged


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("file_vs_stream")


@settings(max_examples=150)
@given(st.lists(instruments(), min_size=1, max_size=3), st.booleans())
def test_file_and_stream_give_the_seeds_frames(work_dir, tracks, inclusive):
    path = write_midi(work_dir / "random.mid", *tracks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = pretty_midi.PrettyMIDI(str(path))
    expected = seed_frames(pm)

    if not expected:
        with pytest.raises(MidiFileError):
            read_piece(path, FS)
    else:
        assert list(read_piece(path, FS).frames) == expected
    assert stream_frames(pm, len(expected), inclusive) == expected

    first = seed_frames(pm, first_track_only=True)
    melodic = [inst for inst in pm.instruments if not inst.is_drum]
    if first and melodic[0].notes:
        assert list(read_piece(path, FS, first_track_only=True).frames) == first
    else:
        with pytest.raises(MidiFileError):
            read_piece(path, FS, first_track_only=True)


def test_one_player_with_pedal_example(tmp_path):
    """A hand-checked case: pedal down in frame 1, up in frame 5; 62 is shorter than a frame
    and crosses no edge, so it never enters the roll and the pedal can't hold it."""
    path = write_midi(
        tmp_path / "pedal.mid",
        TrackSpec(
            notes=[(0.0, 0.4, 60), (0.4, 0.45, 62), (0.5, 0.9, 64), (0.7, 0.85, 67)],
            controls=[(0.3, 64, 127), (1.05, 64, 0)],
        ),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = pretty_midi.PrettyMIDI(str(path))
    expected = [{60}, {60}, {60, 64}, {60, 64, 67}, {60, 64, 67}]
    assert seed_frames(pm) == expected
    assert list(read_piece(path).frames) == expected
    assert stream_frames(pm, 5, inclusive=False) == expected
