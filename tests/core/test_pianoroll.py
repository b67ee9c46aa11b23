"""The quantiser's rules on hand-made notes (pure; no files)."""

from __future__ import annotations

from musicgend.core.pianoroll import (
    ControlChange,
    Note,
    StreamQuantiser,
    Track,
    frames_from_tracks,
    pedal_spans,
    tokens_from_tracks,
    track_frames,
)


def test_frames_follow_int_of_start_and_end():
    # 0.1..0.5 s → frames int(0.5)=0 .. int(2.5)-1=1
    assert track_frames(Track((Note(0.1, 0.5, 60),))) == [{60}, {60}]
    # a note shorter than a frame that doesn't cross an edge vanishes (as in the seed)
    assert track_frames(Track((Note(0.05, 0.15, 60), Note(0.0, 1.0, 40)))) == [{40}] * 5
    # one that crosses an edge sounds in the frame where it started
    assert track_frames(Track((Note(0.15, 0.25, 61), Note(0.0, 0.6, 40)))) == [
        {40, 61},
        {40},
        {40},
    ]


def test_pedal_holds_what_sounded_since_it_went_down():
    notes = (Note(0.0, 0.2, 60), Note(0.4, 0.6, 64), Note(1.0, 1.4, 67))
    pedal = (ControlChange(0.3, 64, 127), ControlChange(1.2, 64, 0))
    frames = track_frames(Track(notes, pedal))
    assert frames == [{60}, set(), {64}, {64}, {64}, {64, 67}, {67}]
    assert pedal_spans(pedal, 5) == [(1, 6)]
    # a pedal never released changes nothing (pretty_midi applies it on release only)
    assert track_frames(Track(notes, pedal[:1])) == [{60}, set(), {64}, set(), set(), {67}, {67}]


def test_other_controllers_only_extend_the_end():
    track = Track((Note(0.0, 0.2, 60),), (ControlChange(0.8, 1, 30),))
    assert track_frames(track) == [{60}, set(), set(), set()]


def test_drums_are_left_out_and_first_track_only_picks_the_first_melodic_track():
    drums = Track((Note(0.0, 2.0, 36),), is_drum=True)
    piano = Track((Note(0.0, 0.4, 60),))
    bass = Track((Note(0.0, 0.6, 40),))
    assert tokens_from_tracks([drums, piano, bass]) == ["40,60", "40,60", "40"]
    assert tokens_from_tracks([drums, piano, bass], first_track_only=True) == ["60", "60"]
    assert frames_from_tracks([drums]) == []


def test_stream_quantiser_live_example():
    q = StreamQuantiser()
    q.note_on(0.05, 60, 90)
    assert q.frame(0, now_s=0.2) == {60}  # still held: sounds up to now
    q.note_on(0.3, 64, 90)
    q.note_off(0.35, 60)  # int(0.35 * 5) = 1: 60 sounded in frame 0 only
    assert q.frame(1, now_s=0.4) == {64}
    q.control_change(0.5, 64, 127)  # pedal down in frame 2
    assert q.frame(2, now_s=0.6) == {64}
    q.note_off(0.7, 64)
    assert q.frame(3, now_s=0.8) == {64}  # held by the pedal
    q.control_change(0.85, 64, 0)
    assert q.frame(4, now_s=1.0) == set()
    q.note_on(1.0, 67, 0)  # velocity 0 = note-off of nothing
    assert q.held_pitches == frozenset()


def test_stream_quantiser_forgets_finished_notes():
    q = StreamQuantiser()
    for k in range(500):
        q.note_on(k / 5 + 0.01, 60 + k % 12, 80)
        q.note_off(k / 5 + 0.15, 60 + k % 12)
        assert q.frame(k, now_s=(k + 1) / 5) == set()  # too short to cross an edge
    assert len(q._notes) <= 2


def test_all_notes_off_releases_keys_and_pedal():
    q = StreamQuantiser()
    q.control_change(0.0, 64, 100)
    q.note_on(0.1, 60, 80)
    q.all_notes_off(0.5)
    assert q.held_pitches == frozenset()
    assert q.frame(0, 0.2) == {60} and q.frame(1, 0.4) == {60}
    assert q.frame(2, 0.6) == set()
