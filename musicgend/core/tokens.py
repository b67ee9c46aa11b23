"""Chord tokens: a frame's sorted set of sounding pitches joined by ``","``, or ``"e"``.

This is the seed's token scheme: ``"60,64,67"`` is a C major triad, ``"e"`` is silence.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable

from musicgend.errors import TokenError

SILENCE = "e"
"""The token of a frame where nothing sounds."""

MIN_PITCH = 0
MAX_PITCH = 127

PitchSet = frozenset[int]


def _check_pitch(pitch: object) -> int:
    if isinstance(pitch, bool):
        raise TokenError(f"pitch must be an int, got {pitch!r}")
    try:
        value = operator.index(pitch)  # type: ignore[arg-type]
    except TypeError:
        raise TokenError(f"pitch must be an int, got {pitch!r}") from None
    if not MIN_PITCH <= value <= MAX_PITCH:
        raise TokenError(f"pitch {pitch} is outside MIDI range 0..127")
    return value


def token_from_pitches(pitches: Iterable[int]) -> str:
    """The token of a set of pitches: sorted, de-duplicated, comma-joined; ``"e"`` if empty."""
    unique = sorted({_check_pitch(p) for p in pitches})
    if not unique:
        return SILENCE
    return ",".join(str(p) for p in unique)


_PITCH = r"(?:0|[1-9][0-9]?|1[01][0-9]|12[0-7])"
_CANONICAL_FORM = re.compile(rf"{_PITCH}(?:,{_PITCH})*")
"""Plain ints 0..127 joined by commas (their order is checked apart)."""


def pitches_from_token(token: str) -> PitchSet:
    """The pitch set of a token. Raises :class:`TokenError` on anything but a canonical token."""
    if token == SILENCE:
        return frozenset()
    # The common case, fast (a model's vocabulary of 20 000 tokens is checked at every
    # load); anything else goes the long way, which says what is wrong.
    if isinstance(token, str) and _CANONICAL_FORM.fullmatch(token) is not None:
        pitches = [int(p) for p in token.split(",")]
        if pitches == sorted(set(pitches)):
            return frozenset(pitches)
    return _pitches_checked(token)


def _pitches_checked(token: str) -> PitchSet:
    if not isinstance(token, str) or not token:
        raise TokenError(f"not a chord token: {token!r}")
    parts = token.split(",")
    try:
        pitches = [int(p) for p in parts]
    except ValueError:
        raise TokenError(f"not a chord token: {token!r}") from None
    for p in pitches:
        _check_pitch(p)
    if any(str(p) != s for p, s in zip(pitches, parts, strict=True)) or pitches != sorted(
        set(pitches)
    ):
        raise TokenError(f"chord token is not canonical (sorted, unique, plain ints): {token!r}")
    return frozenset(pitches)


def is_token(token: str) -> bool:
    """True when ``token`` is a canonical chord token."""
    try:
        pitches_from_token(token)
    except TokenError:
        return False
    return True


def transpose_pitches(pitches: Iterable[int], semitones: int) -> PitchSet | None:
    """Shift every pitch by ``semitones``; ``None`` if any pitch would leave 0..127."""
    shifted = frozenset(p + semitones for p in pitches)
    if any(p < MIN_PITCH or p > MAX_PITCH for p in shifted):
        return None
    return shifted


def transpose_token(token: str, semitones: int) -> str | None:
    """Transpose a token by ``semitones``; ``None`` if a pitch would leave 0..127.

    Silence transposes to silence.
    """
    shifted = transpose_pitches(pitches_from_token(token), semitones)
    return None if shifted is None else token_from_pitches(shifted)
