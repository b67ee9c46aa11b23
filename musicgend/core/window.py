"""The rolling window of the last N frames that the model sees, left-padded with silence.

A model reads its window either as token ids (``(N,)`` int32, the seed) or as the frames'
pitch sets, multi-hot rows ``(N, 128)`` float32 (``input = "pitches"``);
:class:`WindowReader` turns chords into the one its model reads, for the daemon, offline
generation and evaluation alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from musicgend.core.musicstats import piano_roll
from musicgend.core.pitchhead import PITCHES
from musicgend.core.tokens import PitchSet
from musicgend.core.vocab import SILENCE_ID, Vocab

WINDOW_FRAMES = 50
"""The seed's context: 50 frames = 10 s at 5 frames per second."""


class RollingWindow:
    """Fixed-size window of token ids, or with ``width`` of float32 rows (silence: zeros);
    the newest is last.

    A new window is all silence (the seed's left padding with ``"e"``).
    """

    __slots__ = ("_buf", "size")

    def __init__(
        self,
        size: int = WINDOW_FRAMES,
        pad_id: int = SILENCE_ID,
        initial: Iterable[int | np.ndarray] = (),
        *,
        width: int = 0,
    ) -> None:
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.size = size
        self._buf = (
            np.zeros((size, width), dtype=np.float32)
            if width
            else np.full(size, pad_id, dtype=np.int32)
        )
        for item in initial:
            self.push(item)

    def push(self, item: int | np.ndarray) -> None:
        """Append the newest id (or row); the oldest falls out."""
        self._buf[:-1] = self._buf[1:]
        self._buf[-1] = item

    def replace_last(self, item: int | np.ndarray) -> None:
        """Overwrite the newest id (a frame whose input changed after it was pushed)."""
        self._buf[-1] = item

    def array(self) -> np.ndarray:
        """A copy of the window, oldest first: ``(size,)`` int32 or ``(size, width)`` float32."""
        return self._buf.copy()

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Any]:
        """The ids (ints), or the rows (lists of floats), oldest first."""
        return iter(self._buf.tolist())


def multi_hot(chords: Sequence[Iterable[int]]) -> np.ndarray:
    """``(len(chords), 128)`` float32: 1 where a pitch sounds in that frame (the piano roll
    of :func:`musicgend.core.musicstats.piano_roll`, as the model reads it)."""
    return piano_roll(chords).astype(np.float32)


@dataclass(frozen=True)
class WindowReader:
    """How one model reads its window: ``vocab`` ids (a chord the vocabulary lacks is its
    nearest known chord, :meth:`Vocab.nearest`) or, with ``pitches``, multi-hot rows."""

    vocab: Vocab
    pitches: bool = False

    def encode(self, chord: PitchSet) -> int | np.ndarray:
        """One frame as the model reads it."""
        if self.pitches:
            return multi_hot([chord])[0]
        return self.vocab.nearest(chord)

    def window(self, size: int, chords: Iterable[PitchSet] = ()) -> RollingWindow:
        """A window of ``size`` frames holding ``chords`` (the newest last), silence before."""
        return RollingWindow(
            size, initial=(self.encode(c) for c in chords), width=PITCHES if self.pitches else 0
        )


def training_windows(
    ids: list[int], size: int = WINDOW_FRAMES, pad_id: int = SILENCE_ID
) -> tuple[np.ndarray, np.ndarray]:
    """Every (window → next id) pair of a piece: ``size`` ids before position t predict t.

    The first positions are left-padded with silence, as in the seed. Returns
    ``(x, y)`` with shapes ``(len(ids), size)`` and ``(len(ids),)``.
    """
    n = len(ids)
    padded = np.concatenate(
        [np.full(size, pad_id, dtype=np.int32), np.asarray(ids, dtype=np.int32)]
    )
    if n == 0:
        return np.zeros((0, size), dtype=np.int32), np.zeros((0,), dtype=np.int32)
    view = np.lib.stride_tricks.sliding_window_view(padded, size)[:n]
    return view.copy(), padded[size:].copy()


def pitch_windows(frames: Sequence[Iterable[int]], size: int = WINDOW_FRAMES) -> np.ndarray:
    """The windows of :func:`training_windows` as multi-hot rows: ``(len(frames), size, 128)``
    float32; window t holds frames ``t - size .. t - 1`` (silence before the piece)."""
    rows = np.concatenate([np.zeros((size, PITCHES), dtype=np.float32), multi_hot(frames)])
    n = len(frames)
    if n == 0:
        return np.zeros((0, size, PITCHES), dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(rows, (size, PITCHES))[:n, 0]
    return view.copy()
