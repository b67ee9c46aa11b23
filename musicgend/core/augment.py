"""Transposition augmentation: a piece's frames shifted by whole semitones.

``transpositions(frames)`` gives the 12 keys ``-5 .. +6`` semitones (shift 0 included, the
piece itself). A shift that would push any pitch of the piece out of MIDI range 0..127 is
left out for that piece, so every copy is a real transposition of the whole piece.
Vocabulary building and training both use this, so they see the same copies.

For augmentation on the fly, :func:`id_shift_table` maps token ids to the ids of their
transpositions, and :func:`token_pitch_bounds` gives each token's pitch range (so a window's
valid shifts are known without looking at its tokens).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from musicgend.core.tokens import (
    MAX_PITCH,
    MIN_PITCH,
    PitchSet,
    pitches_from_token,
    token_from_pitches,
    transpose_pitches,
)

TRANSPOSITIONS = range(-5, 7)
"""The 12 shifts of the default augmentation: every key once, the original (0) included."""


def pitch_range(frames: Iterable[Iterable[int]]) -> tuple[int, int] | None:
    """The lowest and highest pitch of the frames; ``None`` when every frame is silent."""
    low, high = MAX_PITCH + 1, MIN_PITCH - 1
    for frame in frames:
        for p in frame:
            low, high = min(low, p), max(high, p)
    return None if high < low else (low, high)


def _fits(bounds: tuple[int, int] | None, shift: int) -> bool:
    return bounds is None or (bounds[0] + shift >= MIN_PITCH and bounds[1] + shift <= MAX_PITCH)


def transpose_frames(frames: Iterable[Iterable[int]], semitones: int) -> list[PitchSet] | None:
    """Every frame shifted by ``semitones``; ``None`` if any pitch would leave 0..127."""
    fixed = [frozenset(f) for f in frames]
    if not _fits(pitch_range(fixed), semitones):
        return None
    if semitones == 0:
        return fixed
    return [frozenset(p + semitones for p in f) for f in fixed]


def transpositions(
    frames: Sequence[Iterable[int]], semitones_range: Iterable[int] = TRANSPOSITIONS
) -> Iterator[tuple[int, list[PitchSet]]]:
    """``(shift, frames shifted by shift)`` for each shift that keeps the piece in 0..127."""
    fixed = [frozenset(f) for f in frames]
    bounds = pitch_range(fixed)
    for shift in semitones_range:
        if not _fits(bounds, shift):
            continue
        if shift == 0:
            yield shift, list(fixed)
        else:
            yield shift, [frozenset(p + shift for p in f) for f in fixed]


def id_shift_table(
    tokens: Sequence[str], unk_id: int = 0, semitones_range: Iterable[int] = TRANSPOSITIONS
) -> np.ndarray:
    """``table[k, i]``: the id of token ``tokens[i]`` shifted by the k-th shift (int32).

    ``tokens`` is a vocabulary in id order whose entry ``unk_id`` is the unknown token: it
    stays itself. A token whose shift leaves 0..127 or is not in ``tokens`` maps to
    ``unk_id``; silence maps to itself.
    """
    index = {t: i for i, t in enumerate(tokens)}
    shifts = list(semitones_range)
    table = np.full((len(shifts), len(tokens)), unk_id, dtype=np.int32)
    for i, token in enumerate(tokens):
        if i == unk_id:
            continue
        pitches = pitches_from_token(token)
        for k, shift in enumerate(shifts):
            moved = transpose_pitches(pitches, shift)
            if moved is not None:
                table[k, i] = index.get(token_from_pitches(moved), unk_id)
    return table


def token_pitch_bounds(tokens: Sequence[str], unk_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest pitch of every token (int16); silence and the unknown token get
    ``(MAX_PITCH, MIN_PITCH)``, so that they never restrict a shift."""
    low = np.full(len(tokens), MAX_PITCH, dtype=np.int16)
    high = np.full(len(tokens), MIN_PITCH, dtype=np.int16)
    for i, token in enumerate(tokens):
        if i == unk_id:
            continue
        pitches = pitches_from_token(token)
        if pitches:
            low[i], high[i] = min(pitches), max(pitches)
    return low, high
