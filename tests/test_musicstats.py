"""Music statistics on hand-made frames with known answers."""

from __future__ import annotations

import pytest

from musicgend.core.musicstats import corpus_stats, format_comparison, frame_stats, goals, ratios

# C held 3 frames with E added for one frame, a rest, then G for 2 frames.
FRAMES = [{60}, {60}, {60, 64}, set(), {67}, {67}]


def test_hand_made_sequence():
    s = frame_stats(FRAMES, fs=5)
    assert s.frames == 6
    assert s.seconds == pytest.approx(1.2)
    assert s.notes == 3
    assert s.pitches_per_frame == pytest.approx(6 / 5)
    assert s.onsets_per_second == pytest.approx(3 / 1.2)
    assert s.repeat_share == pytest.approx(2 / 5)
    assert s.short_note_share == pytest.approx(1 / 3)  # the E
    assert s.scale_consistency == 1.0
    assert s.key == "C major / A minor"


def test_a_note_re_struck_after_a_gap_is_two_notes_and_fs_scales_time():
    s = frame_stats([{60}, set(), {60}], fs=10)
    assert s.notes == 2
    assert s.short_note_share == 1.0
    assert s.onsets_per_second == pytest.approx(2 / 0.3)
    assert s.repeat_share == 0.0


def test_scale_consistency_picks_the_best_key():
    chromatic = [{60 + i} for i in range(12)]
    assert frame_stats(chromatic).scale_consistency == pytest.approx(7 / 12)
    # A harmonic-minor line: G# is outside every natural scale that holds A C E F D B
    a_minor = [{69}, {71}, {72}, {74}, {76}, {77}, {80}, {81}]
    s = frame_stats(a_minor)
    assert s.scale_consistency == pytest.approx(7 / 8)
    assert s.key == "C major / A minor"
    # octaves don't matter; only onsets count (a held F# counts once)
    assert frame_stats([{42}, {42}, {42}, {55}, {57}, {72}]).key == "G major / E minor"


def test_silence_and_empty():
    s = frame_stats([set(), set(), set()])
    assert (s.notes, s.pitches_per_frame, s.onsets_per_second) == (0, 0.0, 0.0)
    assert s.repeat_share == 1.0
    empty = frame_stats([])
    assert empty.frames == 0 and empty.repeat_share == 0.0


def test_corpus_pools_counts():
    other = [{62, 65, 69}] * 4
    pooled = corpus_stats([FRAMES, other])
    assert pooled.pieces == 2
    assert pooled.frames == 10
    assert pooled.notes == 3 + 3
    assert pooled.pitches_per_frame == pytest.approx((6 + 12) / (5 + 4))
    assert pooled.repeat_share == pytest.approx((2 + 3) / (5 + 3))
    assert pooled.short_note_share == pytest.approx(1 / 6)
    assert pooled.key == "various"


def test_ratios_goals_and_table():
    corpus = corpus_stats([FRAMES, [{62, 65, 69}] * 4])
    same = ratios(corpus, corpus)
    assert all(v == pytest.approx(1.0) for v in same.values())
    assert all(goals(corpus, corpus).values())
    scattered = frame_stats([{60 + (i * 5) % 24} for i in range(20)])
    flags = goals(scattered, corpus)
    assert not flags["short_note_share"] and not flags["repeat_share"]
    table = format_comparison(scattered, corpus)
    assert "short_note_share" in table and "MISS" in table and "corpus: 2 pieces" in table
    assert "corpus" not in format_comparison(scattered).splitlines()[0]
    one = format_comparison(frame_stats([{60}] * 5), corpus_stats([[{60}] * 5]))
    assert one.splitlines()[-2:] == [
        "generated: 1.0 s, 1 note, C major / A minor",
        "corpus: 1 piece, 1 s, 1 note",
    ]
