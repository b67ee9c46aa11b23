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
can keep and never invents a harmony the player didn't touch.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
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


def _pitch_matrix(tokens: Sequence[str]) -> np.ndarray:
    matrix = np.zeros((len(tokens), 128), dtype=bool)
    for i, token in enumerate(tokens):
        if token != UNK:
            matrix[i, list(pitches_from_token(token))] = True
    return matrix


@dataclass
class Vocab:
    """An immutable token ↔ id mapping with training counts."""

    tokens: tuple[str, ...]
    counts: tuple[int, ...]
    fs: int = 5
    min_count: int = 1
    _index: dict[str, int] = field(init=False, repr=False)
    _nearest_cache: dict[frozenset[int], int] = field(init=False, repr=False)
    _matrix: np.ndarray | None = field(init=False, repr=False, default=None)

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
        self._nearest_cache = {}

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
        key = frozenset(pitches)
        cached = self._nearest_cache.get(key)
        if cached is not None:
            return cached
        exact = self._index.get(token_from_pitches(key))
        if exact is not None:
            result = exact
        else:
            if self._matrix is None:
                self._matrix = _pitch_matrix(self.tokens)
            target = np.zeros(128, dtype=bool)
            target[list(key)] = True
            distance = (self._matrix ^ target).sum(axis=1).astype(np.int64)
            target_pc = np.zeros(12, dtype=bool)
            target_pc[[p % 12 for p in key]] = True
            pc = np.zeros((len(self.tokens), 12), dtype=bool)
            for octave in range(0, 128, 12):
                block = self._matrix[:, octave : octave + 12]
                pc[:, : block.shape[1]] |= block
            shared_pc = (pc & target_pc).sum(axis=1).astype(np.int64)
            counts = np.asarray(self.counts, dtype=np.int64)
            distance[UNK_ID] = np.iinfo(np.int64).max // 4
            if key and len(self.tokens) > 2:
                distance[SILENCE_ID] = np.iinfo(np.int64).max // 8  # a played chord isn't silence
            # lexicographic: distance ↑, shared pitch classes ↓, count ↓
            order = np.lexsort((-counts, -shared_pc, distance))
            result = int(order[0])
        if len(self._nearest_cache) < 100_000:
            self._nearest_cache[key] = result
        return result

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
