"""Chord tokens: canonical form, round trips, transposition."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from musicgend.core.tokens import (
    SILENCE,
    is_token,
    pitches_from_token,
    token_from_pitches,
    transpose_pitches,
    transpose_token,
)
from musicgend.errors import TokenError

pitch_sets = st.frozensets(st.integers(0, 127), max_size=12)


@given(pitch_sets)
def test_pitch_set_round_trips_through_its_token(pitches):
    token = token_from_pitches(pitches)
    assert is_token(token)
    assert pitches_from_token(token) == pitches
    assert (token == SILENCE) == (not pitches)


@given(st.lists(st.integers(0, 127), max_size=20))
def test_token_is_sorted_unique_and_independent_of_order(pitches):
    token = token_from_pitches(pitches)
    assert token == token_from_pitches(reversed(pitches))
    if pitches:
        assert [int(p) for p in token.split(",")] == sorted(set(pitches))


@given(pitch_sets)
def test_token_round_trips_through_its_pitch_set(pitches):
    token = token_from_pitches(pitches)
    assert token_from_pitches(pitches_from_token(token)) == token


def test_examples():
    assert token_from_pitches([67, 60, 64, 60]) == "60,64,67"
    assert token_from_pitches([]) == SILENCE == "e"
    assert pitches_from_token("e") == frozenset()
    assert pitches_from_token("0,127") == {0, 127}


@pytest.mark.parametrize(
    "bad", ["", " 60", "60 ", "64,60", "60,60", "060", "+60", "128", "-1", "e,60", "60,,64", "x"]
)
def test_non_canonical_tokens_are_rejected(bad):
    assert not is_token(bad)
    with pytest.raises(TokenError):
        pitches_from_token(bad)


@pytest.mark.parametrize("bad", [[128], [-1], [60.5], [True], ["60"]])
def test_bad_pitches_are_rejected(bad):
    with pytest.raises(TokenError):
        token_from_pitches(bad)


@given(pitch_sets, st.integers(-130, 130))
def test_transposition_round_trips_or_refuses_out_of_range(pitches, shift):
    token = token_from_pitches(pitches)
    moved = transpose_token(token, shift)
    in_range = all(0 <= p + shift <= 127 for p in pitches)
    assert (moved is not None) == in_range
    assert (transpose_pitches(pitches, shift) is not None) == in_range
    if moved is not None:
        assert pitches_from_token(moved) == {p + shift for p in pitches}
        assert transpose_token(moved, -shift) == token


def test_silence_transposes_to_silence():
    assert transpose_token(SILENCE, 7) == SILENCE
    assert transpose_token(SILENCE, -200) == SILENCE
