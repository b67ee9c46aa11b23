"""Transposition augmentation: a piece's frames shifted by whole semitones.

``transpositions(frames)`` gives the 12 keys ``-5 .. +6`` semitones (shift 0 included, the
piece itself). A shift that would push any pitch of the piece out of MIDI range 0..127 is
left out for that piece, so every copy is a real transposition of the whole piece.
Vocabulary building and training both use this, so they see the same copies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from musicgend.core.tokens import MAX_PITCH, MIN_PITCH, PitchSet

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
