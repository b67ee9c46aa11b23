"""Vocabulary: chord token ↔ id, counts, content hash, OOV mapping, JSON save/load.

Id 0 is ``"<unk>"`` (every chord the vocabulary doesn't know), id 1 is ``"e"`` (silence);
the other tokens follow by descending training count, ties in token order, so a vocabulary
built from the same counts always gets the same ids and the same hash.

Nearest known token (:meth:`Vocab.nearest`), used where a model needs a known input token
for a chord it has never seen (live input, priming): the distance is the number of pitches
to add or remove (size of the symmetric difference of the pitch sets). Ties go to the
candidate sharing more pitch classes (a chord heard an octave away is still the same
harmony), then to the more frequent token. A chord that sounds never maps to silence while
the vocabulary has any other token. This keeps every held key that the vocabulary
can keep and never invents a harmony the player didn't touch. The last
:data:`NEAREST_CACHE_SIZE` answers are remembered (a daemon meets new chords for as long as a
musician plays, so the memory must stay bounded).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from musicgend.core.tokens import SILENCE, is_token, pitches_from_token, token_from_pitches
from musicgend.errors import VocabError

UNK = "<unk>"
UNK_ID = 0
SILENCE_ID = 1
FORMAT = "musicgend-vocab"
FORMAT_VERSION = 1
NEAREST_CACHE_SIZE = 4096
"""Answers of :meth:`Vocab.nearest` kept (least recently used first out): about 2.6 MB. A
chord not seen before costs ~0.15 ms at 20,000 tokens."""


def _pitch_matrix(tokens: Sequence[str]) -> np.ndarray:
    matrix = np.zeros((len(tokens), 128), dtype=bool)
    for i, token in enumerate(tokens):
        if token != UNK:
            matrix[i, list(pitches_from_token(token))] = True
    return matrix


class _NearestTable:
    """Each token's pitches, pitch classes and count rank, for :meth:`Vocab.nearest`."""

    UNK_DISTANCE = 1_000  # farther than any chord (at most 256 pitches apart)
    SILENCE_DISTANCE = 500  # a chord that sounds maps to silence only when nothing else is

    def __init__(self, tokens: Sequence[str], counts: Sequence[int]) -> None:
        self.matrix = _pitch_matrix(tokens)
        self.sizes = self.matrix.sum(axis=1, dtype=np.int64)
        self.pitch_classes = np.zeros((len(tokens), 12), dtype=bool)
        for octave in range(0, 128, 12):
            block = self.matrix[:, octave : octave + 12]
            self.pitch_classes[:, : block.shape[1]] |= block
        count = np.asarray(counts, dtype=np.int64)
        self.rarity = count.max() - count  # 0 for the most frequent token
        self.rarity_span = int(self.rarity.max()) + 1

    def nearest(self, key: frozenset[int]) -> int:
        """The first id in order of distance ↑, shared pitch classes ↓, count ↓."""
        pitches = sorted(key)
        distance = self.sizes + len(pitches) - 2 * self.matrix[:, pitches].sum(axis=1)
        distance[UNK_ID] = self.UNK_DISTANCE
        if pitches and len(distance) > 2:
            distance[SILENCE_ID] = self.SILENCE_DISTANCE
        classes = sorted({p % 12 for p in pitches})
        unshared = 12 - self.pitch_classes[:, classes].sum(axis=1)
        score = (distance * 13 + unshared) * self.rarity_span + self.rarity
        return int(np.argmin(score))


def _nearest_lookup(
    index: Mapping[str, int], tokens: Sequence[str], counts: Sequence[int]
) -> Callable[[frozenset[int]], int]:
    """A cached ``nearest`` for one vocabulary (a closure: the cache holds no reference to
    the :class:`Vocab`, so a dropped vocabulary is freed at once, with no reference cycle)."""
    table: _NearestTable | None = None

    @functools.lru_cache(maxsize=NEAREST_CACHE_SIZE)
    def nearest(key: frozenset[int]) -> int:
        nonlocal table
        exact = index.get(token_from_pitches(key))
        if exact is not None:
            return exact
        if table is None:
            table = _NearestTable(tokens, counts)
        return table.nearest(key)

    return nearest


@dataclass
class Vocab:
    """An immutable token ↔ id mapping with training counts."""

    tokens: tuple[str, ...]
    counts: tuple[int, ...]
    fs: int = 5
    min_count: int = 1
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _nearest: Callable[[frozenset[int]], int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.tokens) < 2 or self.tokens[UNK_ID] != UNK or self.tokens[SILENCE_ID] != SILENCE:
            raise VocabError(f"a vocabulary starts with {UNK!r}, {SILENCE!r}")
        if len(self.counts) != len(self.tokens):
            raise VocabError("a vocabulary needs one count per token")
        if len(set(self.tokens)) != len(self.tokens):
            raise VocabError("a vocabulary has a duplicate token")
        bad = [t for t in self.tokens[1:] if not is_token(t)]
        if bad:
            raise VocabError(f"not a chord token: {bad[0]!r}")
        self._index = {t: i for i, t in enumerate(self.tokens)}
        self._nearest = _nearest_lookup(self._index, self.tokens, self.counts)

    # -- building -----------------------------------------------------------------------
    @classmethod
    def build(
        cls, token_streams: Iterable[Iterable[str]], min_count: int = 1, fs: int = 5
    ) -> Vocab:
        """A vocabulary of every token seen at least ``min_count`` times.

        Rarer tokens are counted under ``"<unk>"``, so the model learns to keep mass there.
        """
        counter: Counter[str] = Counter()
        for stream in token_streams:
            counter.update(stream)
        return cls.from_counts(counter, min_count=min_count, fs=fs)

    @classmethod
    def from_counts(cls, counter: Mapping[str, int], min_count: int = 1, fs: int = 5) -> Vocab:
        if min_count < 1:
            raise VocabError(f"min_count must be >= 1, got {min_count}")
        unk_count = 0
        kept: list[tuple[str, int]] = []
        for token, count in counter.items():
            if token in (UNK, SILENCE):
                continue
            if count >= min_count:
                kept.append((token, count))
            else:
                unk_count += count
        kept.sort(key=lambda tc: (-tc[1], tc[0]))
        tokens = (UNK, SILENCE, *(t for t, _ in kept))
        counts = (unk_count + counter.get(UNK, 0), counter.get(SILENCE, 0), *(c for _, c in kept))
        return cls(tokens, counts, fs=fs, min_count=min_count)

    # -- mapping ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index and token != UNK

    def id(self, token: str) -> int:
        """The id of ``token``, ``UNK_ID`` when the vocabulary doesn't know it."""
        return self._index.get(token, UNK_ID)

    def ids(self, tokens: Iterable[str]) -> list[int]:
        return [self._index.get(t, UNK_ID) for t in tokens]

    def token(self, token_id: int) -> str:
        return self.tokens[token_id]

    def nearest(self, pitches: Iterable[int]) -> int:
        """The id of the known chord closest to ``pitches`` (see the module docstring)."""
        return self._nearest(frozenset(pitches))

    def __reduce__(self) -> tuple[Any, ...]:
        # the lookup's cache is a closure: a copy builds its own rather than pickling it
        return (type(self), (self.tokens, self.counts, self.fs, self.min_count))

    # -- identity -----------------------------------------------------------------------
    @property
    def hash(self) -> str:
        """sha256 of the ordered token list and fs: equal hashes mean equal id mappings."""
        payload = json.dumps({"fs": self.fs, "tokens": list(self.tokens)}, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "fs": self.fs,
            "min_count": self.min_count,
            "hash": self.hash,
            "tokens": list(self.tokens),
            "counts": list(self.counts),
        }

    @classmethod
    def from_json(cls, data: Any) -> Vocab:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise VocabError(f"not a musicgend vocabulary (expected format {FORMAT!r})")
        if data.get("version") != FORMAT_VERSION:
            raise VocabError(f"unsupported vocabulary version {data.get('version')!r}")
        try:
            vocab = cls(
                tuple(data["tokens"]),
                tuple(int(c) for c in data["counts"]),
                fs=int(data["fs"]),
                min_count=int(data.get("min_count", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VocabError(f"vocabulary is malformed: {exc}") from None
        if data.get("hash") != vocab.hash:
            raise VocabError("vocabulary hash does not match its tokens (file edited or corrupt)")
        return vocab

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    @classmethod
    def loads(cls, text: str) -> Vocab:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VocabError(f"vocabulary is not valid JSON: {exc}") from None
        return cls.from_json(data)
