"""Transposition augmentation of whole pieces."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from musicgend.core.augment import (
    TRANSPOSITIONS,
    id_shift_table,
    pitch_range,
    token_pitch_bounds,
    transpose_frames,
    transpositions,
)

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


HAND_VOCAB = ("<unk>", "e", "60", "62", "60,64", "62,66", "127", "2,64", "66", "4,66")


def test_id_shift_table_maps_each_token_to_its_transposition():
    table = id_shift_table(HAND_VOCAB)
    assert table.shape == (12, len(HAND_VOCAB)) and table.dtype == np.int32
    row = {s: table[k] for k, s in enumerate(TRANSPOSITIONS)}
    np.testing.assert_array_equal(row[0], np.arange(len(HAND_VOCAB)))
    ids = {t: i for i, t in enumerate(HAND_VOCAB)}
    assert row[2][ids["60"]] == ids["62"]
    assert row[2][ids["60,64"]] == ids["62,66"]
    assert row[-2][ids["62,66"]] == ids["60,64"]
    assert row[6][ids["60"]] == ids["66"]
    assert row[2][ids["2,64"]] == ids["4,66"]
    assert (table[:, ids["<unk>"]] == 0).all()  # <unk> stays <unk>
    assert (table[:, ids["e"]] == ids["e"]).all()  # silence stays silence
    assert row[1][ids["60"]] == 0  # "61" is not in the vocabulary
    assert row[1][ids["127"]] == 0  # 128 is out of range
    assert row[-3][ids["2,64"]] == 0  # -1 is out of range


def test_token_pitch_bounds():
    low, high = token_pitch_bounds(HAND_VOCAB)
    assert (low[0], high[0]) == (127, 0) and (low[1], high[1]) == (127, 0)
    assert (low[7], high[7]) == (2, 64) and (low[6], high[6]) == (127, 127)
