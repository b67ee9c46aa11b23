"""Transposition augmentation of whole pieces."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from musicgend.core.augment import TRANSPOSITIONS, pitch_range, transpose_frames, transpositions

frames_strategy = st.lists(st.frozensets(st.integers(0, 127), max_size=6), max_size=30)


def test_twelve_keys_once_each():
    assert list(TRANSPOSITIONS) == list(range(-5, 7))
    assert {s % 12 for s in TRANSPOSITIONS} == set(range(12))


@given(frames_strategy)
def test_transpositions_are_the_in_range_shifts_of_the_whole_piece(frames):
    copies = dict(transpositions(frames))
    bounds = pitch_range(frames)
    for shift in TRANSPOSITIONS:
        fits = bounds is None or (bounds[0] + shift >= 0 and bounds[1] + shift <= 127)
        assert (shift in copies) == fits
        if fits:
            assert copies[shift] == [frozenset(p + shift for p in f) for f in frames]
            assert copies[shift] == transpose_frames(frames, shift)
        else:
            assert transpose_frames(frames, shift) is None
    assert list(copies) == sorted(copies)


@given(frames_strategy, st.integers(-20, 20))
def test_transposing_back_gives_the_piece(frames, shift):
    moved = transpose_frames(frames, shift)
    if moved is not None:
        assert len(moved) == len(frames)
        assert transpose_frames(moved, -shift) == [frozenset(f) for f in frames]


def test_out_of_range_shifts_are_left_out_for_that_piece_only():
    high = [frozenset({60}), frozenset({125})]
    assert [s for s, _ in transpositions(high)] == [-5, -4, -3, -2, -1, 0, 1, 2]
    low = [frozenset({3, 40})]
    assert [s for s, _ in transpositions(low)] == [-3, -2, -1, 0, 1, 2, 3, 4, 5, 6]
    silent = [frozenset(), frozenset()]
    assert [s for s, _ in transpositions(silent)] == list(TRANSPOSITIONS)
    assert dict(transpositions(silent))[3] == silent


def test_custom_range_and_identity():
    frames = [frozenset({60, 64}), frozenset()]
    assert list(transpositions(frames, [0])) == [(0, frames)]
    assert [s for s, _ in transpositions(frames, range(-12, 13, 12))] == [-12, 0, 12]
