"""Piece memory: music repeats itself, further back than the model's window (pure, small).

The network sees 50 frames (10 s). A chorale's second section often repeats its first, a
player returns to a phrase minutes later: the frames that followed the last time are the
best guess of what follows now. :class:`PieceMemory` keeps the piece's frames so far and
finds the longest stretch just played, of 1, 2, 4, … or 256 frames, that was played
before; its :class:`Recall` is the frame that followed that earlier stretch.

The model's distribution and the recall are mixed (a cache, as in cache language models)::

    p(chord) = (1 − m) · p_model(chord) + m · [chord = recalled chord]

where ``m`` (:class:`MemoryWeights`) depends on how long the matched stretch is and on
whether the recalled chord holds the chord sounding now or changes it, tuned by maximum
likelihood on a model's validation pieces (:func:`fit_weights`). A longer match is more
often right: on the bundled model's validation chorales a match of 8 or 16 frames named the
next frame 92–100 % of the time, a match of one frame 9 % (a change) to 33 % (a hold).

Matching costs a few dictionary look-ups per frame (a rolling polynomial hash of each
stretch, checked frame by frame on a hit), whatever the length of the history;
``capacity_frames`` bounds what is kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from musicgend.core.tokens import PitchSet

MATCH_LENGTHS = tuple(2**i for i in range(9))
"""Lengths of the stretches looked up, in frames: 1, 2, 4, … 256 (51 s at fs 5)."""
LEVELS = len(MATCH_LENGTHS)
MAX_WEIGHT = 0.99
"""The largest share a recall may take: the network always keeps 1 % of the probability."""
MIN_BUCKET_FRAMES = 20
"""A (length, hold or change) bucket with fewer validation frames takes the weight of the
next shorter length instead of one fitted to a handful of frames."""

_MOD = (1 << 61) - 1
_BASE = 1_000_003
_POWERS = tuple(pow(_BASE, n, _MOD) for n in MATCH_LENGTHS)


@dataclass(frozen=True)
class Recall:
    """The frame that followed the last earlier occurrence of the longest stretch matched."""

    chord: PitchSet
    frames: int
    """Length of the matched stretch (one of :data:`MATCH_LENGTHS`)."""

    @property
    def level(self) -> int:
        """Index of :attr:`frames` in :data:`MATCH_LENGTHS`."""
        return self.frames.bit_length() - 1


class PieceMemory:
    """The frames of a piece so far, and the longest earlier match of its latest frames.

    ``capacity_frames``: the most recent frames kept (``None``: all); older ones are
    forgotten one by one, so the daemon's memory stays bounded in a session of any length.
    """

    __slots__ = ("_base", "_capacity", "_ends", "_frames", "_prefix", "_start")

    def __init__(self, capacity_frames: int | None = None) -> None:
        if capacity_frames is not None and capacity_frames < 2:
            raise ValueError(f"capacity_frames must be >= 2, got {capacity_frames}")
        self._capacity = capacity_frames
        self.clear()

    def clear(self) -> None:
        """Forget every frame."""
        self._frames: list[PitchSet] = []
        self._prefix: list[int] = [0]  # rolling hash of the frames before each position
        # per length: stretch hash → absolute position of the frame that followed it last
        self._ends: list[dict[int, int]] = [{} for _ in MATCH_LENGTHS]
        self._start = 0  # absolute position of self._frames[0]
        self._base = 0  # oldest absolute position still remembered

    def __len__(self) -> int:
        return self._start + len(self._frames) - self._base

    @property
    def _end(self) -> int:
        return self._start + len(self._frames)

    def _hash(self, begin: int, level: int) -> int:
        """Hash of the stretch of ``MATCH_LENGTHS[level]`` frames from absolute ``begin``."""
        s = begin - self._start
        e = s + MATCH_LENGTHS[level]
        return (self._prefix[e] - self._prefix[s] * _POWERS[level]) % _MOD

    def push(self, frame: PitchSet) -> None:
        """Add the next frame."""
        self._push(frame, None)
        if self._capacity is not None:
            while len(self) > self._capacity:
                self._forget_oldest()

    def extend(self, frames: Iterable[PitchSet]) -> None:
        for frame in frames:
            self.push(frame)

    def _push(self, frame: PitchSet, undo: list[tuple[int, int, int | None]] | None) -> None:
        t = self._end
        for level, length in enumerate(MATCH_LENGTHS):
            if t - length < self._base:
                break
            key = self._hash(t - length, level)
            ends = self._ends[level]
            if undo is not None:
                undo.append((level, key, ends.get(key)))
            ends[key] = t
        key = hash(frame) & 0xFFFF_FFFF_FFFF
        self._frames.append(frame)
        self._prefix.append((self._prefix[-1] * _BASE + key + 1) % _MOD)

    def _forget_oldest(self) -> None:
        base = self._base
        for level, length in enumerate(MATCH_LENGTHS):
            successor = base + length
            if successor >= self._end:
                break
            key = self._hash(base, level)
            if self._ends[level].get(key) == successor:
                del self._ends[level][key]
        self._base = base + 1
        drop = self._base - self._start
        if drop >= 1024 and drop * 2 >= len(self._frames):
            del self._frames[:drop], self._prefix[:drop]
            self._start = self._base

    def recall(self, then: Sequence[PitchSet] = ()) -> Recall | None:
        """The recall after the frames so far, followed by ``then`` (frames not yet
        pushed: the daemon's provisional frame); ``None`` when not even the latest frame
        was played before."""
        if not then:
            return self._recall()
        undo: list[tuple[int, int, int | None]] = []
        for frame in then:
            self._push(frame, undo)
        try:
            return self._recall()
        finally:
            del self._frames[-len(then) :], self._prefix[-len(then) :]
            for level, key, old in reversed(undo):
                if old is None:
                    del self._ends[level][key]
                else:
                    self._ends[level][key] = old

    def _recall(self) -> Recall | None:
        n = self._end
        found: Recall | None = None
        for level, length in enumerate(MATCH_LENGTHS):
            if n - length - 1 < self._base:
                break
            key = self._hash(n - length, level)
            j = self._ends[level].get(key)
            if j is None or j - length < self._base:
                break
            s = self._start
            if self._frames[j - length - s : j - s] != self._frames[n - length - s : n - s]:
                break  # a hash collision
            found = Recall(self._frames[j - s], length)
        return found


def recalls(frames: Sequence[PitchSet]) -> list[Recall | None]:
    """Each frame's recall from the frames before it (the first frame's is ``None``)."""
    memory = PieceMemory()
    out: list[Recall | None] = []
    for frame in frames:
        out.append(memory.recall())
        memory.push(frame)
    return out


@dataclass(frozen=True)
class MemoryWeights:
    """The recall's share ``m`` of the probability, by matched length: ``hold`` when the
    recalled chord is the one sounding now, ``change`` when it is another."""

    hold: tuple[float, ...]
    change: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("hold", "change"):
            values = getattr(self, name)
            if len(values) != LEVELS:
                raise ValueError(f"memory weights: {name!r} needs {LEVELS} numbers")
            for v in values:
                if not isinstance(v, int | float) or not (0.0 <= v <= MAX_WEIGHT):
                    raise ValueError(
                        f"memory weights: {name!r} holds {v!r}; each must be in [0, {MAX_WEIGHT}]"
                    )

    def weight(self, recall: Recall | None, prev: PitchSet | None) -> float:
        """``m`` for a frame: 0 without a recall."""
        if recall is None:
            return 0.0
        table = self.hold if recall.chord == (prev or frozenset()) else self.change
        return float(table[recall.level])

    def shares(self, level: np.ndarray, holds: np.ndarray) -> np.ndarray:
        """``m`` per frame from recall length indices (−1: no recall) and hold flags."""
        level = np.asarray(level)
        table = np.array([self.change, self.hold], dtype=np.float64)
        out = table[np.asarray(holds, dtype=np.int64), np.maximum(level, 0)]
        return np.where(level >= 0, out, 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "match_frames": list(MATCH_LENGTHS),
            "hold": list(self.hold),
            "change": list(self.change),
        }

    @classmethod
    def from_json(cls, data: Any) -> MemoryWeights:
        """Raises ValueError naming the problem."""
        if not isinstance(data, Mapping):
            raise ValueError("expected a JSON object")
        if list(data.get("match_frames", ())) != list(MATCH_LENGTHS):
            raise ValueError(f"'match_frames' must be {list(MATCH_LENGTHS)}")
        try:
            hold, change = data["hold"], data["change"]
        except KeyError as exc:
            raise ValueError(f"missing key {exc.args[0]!r}") from None
        if not isinstance(hold, list) or not isinstance(change, list):
            raise ValueError("'hold' and 'change' must be lists of numbers")
        if any(isinstance(v, bool) for v in (*hold, *change)):
            raise ValueError("'hold' and 'change' must be lists of numbers")
        return cls(tuple(hold), tuple(change))


@dataclass(frozen=True)
class FrameEvidence:
    """Each frame's recall from its piece's earlier frames (``None``: none), its length
    index (−1: none), whether it holds the previous frame's chord and whether it is the
    frame's chord: what scoring and tuning need from the memory."""

    recalled: list[Recall | None]
    level: np.ndarray
    holds: np.ndarray
    hit: np.ndarray

    @property
    def has(self) -> np.ndarray:
        """Whether each frame has a recall."""
        return self.level >= 0


def evidence(frames_by_piece: Sequence[Sequence[PitchSet]]) -> FrameEvidence:
    """:class:`FrameEvidence` for pieces, frame by frame in order; each piece recalls from
    its own frames only."""
    recalled: list[Recall | None] = []
    level, holds, hit = [], [], []
    for frames in frames_by_piece:
        prev: PitchSet = frozenset()
        for frame, r in zip(frames, recalls(frames), strict=True):
            recalled.append(r)
            level.append(-1 if r is None else r.level)
            holds.append(r is not None and r.chord == prev)
            hit.append(r is not None and r.chord == frame)
            prev = frame
    return FrameEvidence(recalled, np.array(level, dtype=np.int64), np.array(holds), np.array(hit))


def _fit_one(hit: np.ndarray, p: np.ndarray, iterations: int = 500) -> float:
    """Maximum-likelihood ``m`` of ``Σ ln((1 − m) p + m · hit)`` (EM; concave in ``m``)."""
    m = 0.5
    for _ in range(iterations):
        mix = (1.0 - m) * p + m * hit
        resp = np.where(mix > 0, m * hit / np.where(mix > 0, mix, 1.0), 0.0)
        new = float(resp.mean())
        if abs(new - m) < 1e-10:
            m = new
            break
        m = new
    return min(max(m, 0.0), MAX_WEIGHT)


def fit_weights(
    ev: FrameEvidence, p_model: np.ndarray
) -> tuple[MemoryWeights, dict[str, list[int]]]:
    """Weights that maximise the likelihood of the frames, given the model's probability of
    each frame's chord, and the frame count per bucket."""
    p = np.asarray(p_model, dtype=np.float64)
    if len(p) != len(ev.level):
        raise ValueError(f"{len(p)} probabilities for {len(ev.level)} frames")
    out: dict[str, list[float]] = {"hold": [], "change": []}
    counts: dict[str, list[int]] = {"hold": [], "change": []}
    for name, holds in (("hold", True), ("change", False)):
        for level in range(LEVELS):
            sel = (ev.level == level) & (ev.holds == holds)
            n = int(sel.sum())
            counts[name].append(n)
            if n < MIN_BUCKET_FRAMES:
                out[name].append(out[name][-1] if out[name] else 0.0)
            else:
                out[name].append(round(_fit_one(ev.hit[sel], p[sel]), 6))
    return MemoryWeights(tuple(out["hold"]), tuple(out["change"])), counts


def mixed_log_prob(lp_model: np.ndarray, m: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """``ln((1 − m) p_model + m · hit)`` per frame, from ``ln p_model``."""
    lp = np.asarray(lp_model, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    with np.errstate(divide="ignore"):
        kept = np.log1p(-m) + lp
        recalled = np.where(np.asarray(hit, dtype=bool), np.log(m), -math.inf)
    return np.logaddexp(kept, recalled)


def mixture_choice(
    lp_candidates: Sequence[np.ndarray] | np.ndarray,
    is_recall: Sequence[np.ndarray],
    share: np.ndarray,
) -> np.ndarray:
    """Per frame, the index of the candidate chord the mixture makes most likely:
    ``lp_candidates[k]`` is the model's ln p of candidate ``k`` (−inf where there is none),
    ``is_recall[k]`` whether it is the recalled chord, ``share`` the recall's ``m``."""
    scores = np.stack(
        [mixed_log_prob(lp, share, same) for lp, same in zip(lp_candidates, is_recall, strict=True)]
    )
    return np.asarray(scores.argmax(axis=0))
