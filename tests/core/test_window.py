"""RollingWindow and training_windows: the seed's 50-frame context, left-padded with 'e'."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from musicgend.core.vocab import SILENCE_ID
from musicgend.core.window import WINDOW_FRAMES, RollingWindow, training_windows

ids_strategy = st.lists(st.integers(0, 500), max_size=80)


def test_defaults():
    window = RollingWindow()
    assert len(window) == WINDOW_FRAMES == 50
    assert window.array().tolist() == [SILENCE_ID] * 50
    assert window.array().dtype == np.int32


@given(ids_strategy, st.integers(1, 12))
def test_window_holds_the_last_ids_left_padded(ids, size):
    window = RollingWindow(size)
    for i in ids:
        window.push(i)
    expected = ([SILENCE_ID] * size + ids)[-size:]
    assert window.array().tolist() == expected
    assert list(window) == expected
    assert RollingWindow(size, initial=ids).array().tolist() == expected


@given(ids_strategy, st.integers(1, 12))
def test_training_windows_match_the_live_window(ids, size):
    x, y = training_windows(ids, size)
    assert x.shape == (len(ids), size) and y.shape == (len(ids),)
    assert y.tolist() == ids
    window = RollingWindow(size)
    for t, token_id in enumerate(ids):
        assert x[t].tolist() == window.array().tolist()  # what the model saw before t
        window.push(token_id)


def test_replace_last_and_copy_semantics():
    window = RollingWindow(3, initial=[5, 6])
    snapshot = window.array()
    window.replace_last(9)
    assert window.array().tolist() == [SILENCE_ID, 5, 9]
    assert snapshot.tolist() == [SILENCE_ID, 5, 6]  # array() is a copy


def test_custom_pad_and_bad_size():
    assert training_windows([3], 2, pad_id=7)[0].tolist() == [[7, 7]]
    with pytest.raises(ValueError):
        RollingWindow(0)
