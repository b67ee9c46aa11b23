"""The rolling window of the last N token ids that the model sees, left-padded with silence."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from musicgend.core.vocab import SILENCE_ID

WINDOW_FRAMES = 50
"""The seed's context: 50 frames = 10 s at 5 frames per second."""


class RollingWindow:
    """Fixed-size window of token ids; the newest id is last.

    A new window is all silence (the seed's left padding with ``"e"``).
    """

    __slots__ = ("_buf", "size")

    def __init__(
        self, size: int = WINDOW_FRAMES, pad_id: int = SILENCE_ID, initial: Iterable[int] = ()
    ) -> None:
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.size = size
        self._buf = np.full(size, pad_id, dtype=np.int32)
        for token_id in initial:
            self.push(token_id)

    def push(self, token_id: int) -> None:
        """Append the newest id; the oldest falls out."""
        self._buf[:-1] = self._buf[1:]
        self._buf[-1] = token_id

    def replace_last(self, token_id: int) -> None:
        """Overwrite the newest id (a frame whose input changed after it was pushed)."""
        self._buf[-1] = token_id

    def array(self) -> np.ndarray:
        """A copy of the window, shape ``(size,)``, dtype int32, oldest first."""
        return self._buf.copy()

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        return iter(self._buf.tolist())


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
