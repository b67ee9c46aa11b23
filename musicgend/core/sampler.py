"""Drawing the next chord token from the model's probabilities (pure, seeded).

One call, in this order:

1. ``<unk>`` (id 0) gets probability 0: it names no chord, so it can't be played.
2. Temperature: ``p ** (1 / T)`` (the same as dividing the logits by ``T``); ``T = 0`` is greedy.
3. Key bias (``scale_penalty < 1``, given the context window and the vocabulary): the
   pitch-class profile of the context (every sounding pitch of every frame the model sees,
   human and machine alike) picks the best-fitting of the 24 major / natural-minor scales
   (:func:`musicgend.core.musicstats.best_scale`, the scale-consistency definition); each
   token's weight is multiplied by ``scale_penalty ** (its pitches outside that scale)``.
   A silent context biases nothing.
4. Short-note penalty (note level): each pitch that began in the last frame of the context
   (sounding there, not in the frame before) and that a token would end multiplies the
   token's weight by ``short_note_penalty``: a note just struck tends to last more than one
   frame, while the other voices stay free to move.
5. Hold bias: the previous token's weight is multiplied by ``hold_bias`` (> 1 favours holding
   the chord, the cure for "too many scattered notes"); ``silence_bias`` does the same for
   silence (< 1 plays denser).
6. Top-k, then top-p (nucleus: the smallest set of most likely tokens whose share of the
   remaining mass reaches ``top_p``); the draw is from what is left, renormalised.
7. Minimum hold (anti-flicker): while the chord that sounds has lasted fewer than
   ``min_hold_frames`` frames, it is kept. The run length is counted by the sampler from the
   ``prev_id`` it is given, so live input that changes the chord restarts the count.

If nothing is left to draw (a model that puts all its mass on ``<unk>``), the previous token
is kept (silence if there is none).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from musicgend.core.musicstats import SCALES, best_scale
from musicgend.core.sampling_defaults import (
    DEFAULT_HOLD_BIAS,
    DEFAULT_SCALE_PENALTY,
    DEFAULT_SHORT_NOTE_PENALTY,
)
from musicgend.core.tokens import pitches_from_token

UNK_ID = 0
SILENCE_ID = 1
_PRESELECT = (64, 512)
"""Top-p first looks among this many most likely tokens; a full sort only when they don't
reach ``top_p``. Keeps a draw from V ≈ 6500 tokens under 100 µs."""
_THRESHOLDS = (1e-3, 1e-5)
"""Before that, top-p tries the tokens above these shares of the nucleus mass: one
comparison over the vocabulary instead of a partition (V = 20,000: ~30 µs instead of ~150)."""
_TABLE_CACHE_SIZE = 4
MAX_BIAS = 1e5
"""The largest hold/silence factor: the daemon's log-scale hold bias goes up to 10 (e^10 ≈
22,026)."""


class _HasTokens(Protocol):
    @property
    def tokens(self) -> Sequence[str]: ...


class ScaleTable:
    """Per vocabulary, computed once: each token's pitch-class counts ``(V, 12)``, its
    number of pitches outside each of the 12 scale sets ``(12, V)``, and which tokens hold
    each pitch (compressed: the ids holding pitch ``p`` are
    ``holders[holder_start[p]:holder_start[p + 1]]``)."""

    __slots__ = (
        "_factors",
        "holder_start",
        "holders",
        "outside",
        "pc_counts",
        "pitch_start",
        "pitches",
    )

    def __init__(self, tokens: Sequence[str]) -> None:
        pc = np.zeros((len(tokens), 12), dtype=np.float64)
        token_ids: list[int] = []
        token_pitches: list[int] = []
        counts = np.zeros(len(tokens), dtype=np.int64)
        for i, token in enumerate(tokens):
            if i != UNK_ID:
                for pitch in sorted(pitches_from_token(token)):
                    pc[i, pitch % 12] += 1
                    token_ids.append(i)
                    token_pitches.append(pitch)
                    counts[i] += 1
        self.pc_counts = pc
        self.outside = ((~SCALES).astype(np.int64) @ pc.T.astype(np.int64)).astype(np.int16)
        ids = np.asarray(token_ids, dtype=np.int32)
        by_pitch = np.asarray(token_pitches, dtype=np.int16)
        self.pitches = by_pitch  # token i's pitches: pitches[pitch_start[i]:pitch_start[i + 1]]
        self.pitch_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        order = np.argsort(by_pitch, kind="stable")
        self.holders = ids[order]
        self.holder_start = np.searchsorted(by_pitch[order], np.arange(129)).astype(np.int64)
        self._factors: tuple[float, np.ndarray] | None = None

    def token_pitches(self, token_id: int) -> np.ndarray:
        """The pitches of a token id (none for ``<unk>`` or an id outside the vocabulary)."""
        if not 0 <= token_id < len(self.pitch_start) - 1:
            return self.pitches[:0]
        return self.pitches[self.pitch_start[token_id] : self.pitch_start[token_id + 1]]

    def fresh_pitches(self, context_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Pitches of the context's last frame that its frame before lacks (notes just begun)."""
        if len(context_ids) < 1:
            return self.pitches[:0]
        last = self.token_pitches(int(context_ids[-1]))
        if len(context_ids) < 2 or len(last) == 0:
            return last
        return np.setdiff1d(last, self.token_pitches(int(context_ids[-2])), assume_unique=True)

    def ending_counts(self, pitches: np.ndarray) -> np.ndarray:
        """``(V,)``: how many of ``pitches`` each token lacks (would end)."""
        held = np.zeros(len(self.pc_counts), dtype=np.int16)
        for pitch in pitches:
            held[self.holders[self.holder_start[pitch] : self.holder_start[pitch + 1]]] += 1
        return len(pitches) - held

    def key(self, context_ids: np.ndarray | Sequence[int]) -> int | None:
        """The best-fitting scale's tonic for a window of ids; None if it is all silence."""
        ids = np.asarray(context_ids, dtype=np.int64)
        ids = ids[(ids >= 0) & (ids < len(self.pc_counts))]
        profile = self.pc_counts[ids].sum(axis=0)
        if not profile.any():
            return None
        return best_scale(profile)[0]

    def factors(self, penalty: float) -> np.ndarray:
        """``(12, V)``: ``penalty ** outside`` (the last penalty's table is kept)."""
        cached = self._factors
        if cached is None or cached[0] != penalty:
            powers = penalty ** np.arange(int(self.outside.max(initial=0)) + 1, dtype=np.float64)
            cached = (penalty, powers[self.outside])
            self._factors = cached
        return cached[1]


_tables: dict[int, tuple[weakref.ref[_HasTokens], ScaleTable]] = {}


def scale_table(vocab: _HasTokens) -> ScaleTable:
    """The :class:`ScaleTable` of a vocabulary (cached for the last few vocabularies that
    are still alive: the cache never keeps a swapped-out model's vocabulary in memory)."""
    hit = _tables.get(id(vocab))
    if hit is not None and hit[0]() is vocab:
        return hit[1]
    table = ScaleTable(vocab.tokens)
    for key in [k for k, (ref, _) in _tables.items() if ref() is None]:
        del _tables[key]
    while len(_tables) >= _TABLE_CACHE_SIZE:
        _tables.pop(next(iter(_tables)))
    _tables[id(vocab)] = (weakref.ref(vocab), table)
    return table


class SamplerParams(BaseModel):
    """Sampling settings (validated; the MQTT ``set`` command and the CLI fill them).

    The defaults were tuned with ``bench/generation_stats.py`` on the bundled model (``--grid
    pitch``, see ``bench/results/generation-stats.json`` and ``models/MODEL_CARD.md``): the
    key bias keeps the harmony in key, the short-note penalty keeps fresh notes from being
    cut after one frame, and no hold bias is needed (the ``musicgend`` vocabulary preset's
    copy gate holds more often than Bach: ``hold_bias`` 0.3 suits it, ``--grid notes``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    temperature: float = Field(1.0, ge=0.0, le=10.0)
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens; 0 = all")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus mass; 1 = all")
    hold_bias: float = Field(DEFAULT_HOLD_BIAS, ge=0.0, le=MAX_BIAS)
    silence_bias: float = Field(1.0, ge=0.0, le=MAX_BIAS)
    min_hold_frames: int = Field(1, ge=1, le=100)
    short_note_penalty: float = Field(
        DEFAULT_SHORT_NOTE_PENALTY,
        ge=0.0,
        le=1.0,
        description="weight × per note begun in the last frame that a token would end; 1 = off",
    )
    scale_penalty: float = Field(
        DEFAULT_SCALE_PENALTY,
        ge=0.0,
        le=1.0,
        description="weight × per pitch outside the context's key; 1 = off",
    )
    memory: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="share × of the piece memory's recall, as tuned for the model; 0 = off",
    )

    @classmethod
    def seed(cls) -> SamplerParams:
        """The seed's sampling: a plain draw from the softmax (``<unk>`` still excluded)."""
        return cls(
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            hold_bias=1.0,
            silence_bias=1.0,
            min_hold_frames=1,
            scale_penalty=1.0,
            short_note_penalty=1.0,
        )


class Sampler:
    """Draws token ids with a seeded :class:`numpy.random.Generator`.

    Keeps the run length of the current chord for ``min_hold_frames``; call :meth:`reset`
    when the stream restarts. The key bias needs the vocabulary (here or per call) and the
    context window (per call).
    """

    __slots__ = ("_rng", "_run_frames", "_run_id", "params", "vocab")

    def __init__(
        self,
        params: SamplerParams | None = None,
        seed: int | None = 0,
        vocab: _HasTokens | None = None,
    ) -> None:
        self.params = params or SamplerParams()
        self.vocab = vocab
        self._rng = np.random.default_rng(seed)
        self._run_id = -1
        self._run_frames = 0

    def reseed(self, seed: int | None) -> None:
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Forget the current chord's run length."""
        self._run_id, self._run_frames = -1, 0

    def sample(
        self,
        probs: np.ndarray,
        prev_id: int | None = None,
        context_ids: np.ndarray | Sequence[int] | None = None,
        vocab: _HasTokens | None = None,
    ) -> int:
        """The next token id given the model's probabilities ``(V,)``, the previous id and
        the window the model saw (``context_ids``, for the key bias; ``vocab`` overrides the
        sampler's)."""
        p = self.params
        vocab_size = probs.shape[0]
        prev = int(prev_id) if prev_id is not None and 0 < prev_id < vocab_size else -1
        has_prev = prev > 0
        if has_prev:
            if prev != self._run_id:
                self._run_id, self._run_frames = prev, 1
            if self._run_frames < p.min_hold_frames:
                return self._emit(prev)
        else:
            self.reset()

        w = np.array(probs, dtype=np.float64)
        w[UNK_ID] = 0.0
        if p.temperature not in (0.0, 1.0):
            np.power(w, 1.0 / p.temperature, out=w)
        if p.scale_penalty != 1.0 and context_ids is not None:
            self._key_bias(w, context_ids, vocab or self.vocab)
        if p.short_note_penalty != 1.0 and context_ids is not None:
            self._short_note_bias(w, context_ids, vocab or self.vocab)
        if has_prev and p.hold_bias != 1.0:
            w[prev] *= p.hold_bias
        if p.silence_bias != 1.0 and vocab_size > SILENCE_ID:
            w[SILENCE_ID] *= p.silence_bias
        total = float(w.sum())
        if not total > 0.0 or not np.isfinite(total):
            if not np.all(np.isfinite(probs)):
                raise ValueError("probabilities contain NaN or infinity")
            return self._emit(prev if has_prev else SILENCE_ID)
        if p.temperature == 0.0:
            return self._emit(int(np.argmax(w)))

        candidates = None  # None: every token
        if 0 < p.top_k < vocab_size:
            candidates = np.argpartition(w, vocab_size - p.top_k)[vocab_size - p.top_k :]
        if p.top_p < 1.0:
            candidates = self._nucleus(w, candidates, total)
        if candidates is None:
            cum = np.cumsum(w)
            return self._emit(self._draw(cum))
        cum = np.cumsum(w[candidates])
        return self._emit(int(candidates[self._draw(cum)]))

    @staticmethod
    def _table(w: np.ndarray, vocab: _HasTokens | None, what: str) -> ScaleTable:
        if vocab is None:
            raise ValueError(f"the {what} needs the vocabulary")
        table = scale_table(vocab)
        if len(table.pc_counts) != len(w):
            raise ValueError(
                f"probabilities for {len(w)} tokens, but the vocabulary has {len(table.pc_counts)}"
            )
        return table

    def _key_bias(
        self, w: np.ndarray, context_ids: np.ndarray | Sequence[int], vocab: _HasTokens | None
    ) -> None:
        table = self._table(w, vocab, "key bias (scale_penalty < 1)")
        tonic = table.key(context_ids)
        if tonic is not None:
            w *= table.factors(self.params.scale_penalty)[tonic]

    def _short_note_bias(
        self, w: np.ndarray, context_ids: np.ndarray | Sequence[int], vocab: _HasTokens | None
    ) -> None:
        table = self._table(w, vocab, "short-note penalty (short_note_penalty < 1)")
        fresh = table.fresh_pitches(context_ids)
        if len(fresh):
            powers = self.params.short_note_penalty ** np.arange(len(fresh) + 1, dtype=np.float64)
            w *= powers[table.ending_counts(fresh)]

    def _nucleus(self, w: np.ndarray, pool: np.ndarray | None, total: float) -> np.ndarray:
        """Ids of the nucleus within ``pool`` (``None``: all ids)."""
        values = w if pool is None else w[pool]
        n = len(values)
        target = self.params.top_p * (total if pool is None else float(values.sum()))
        for share in _THRESHOLDS:  # the tokens above a weight; if they reach top_p, so does
            above = np.flatnonzero(values >= share * target)  # the nucleus, a prefix of them
            sub = values[above]
            if len(above) > 4096:
                break
            if float(sub.sum()) >= target:
                order = np.argsort(-sub, kind="stable")
                cut = int(np.searchsorted(np.cumsum(sub[order]), target, side="left")) + 1
                chosen = above[order[:cut]]
                return chosen if pool is None else pool[chosen]
        for m in _PRESELECT:  # usually the nucleus is among the few most likely tokens
            if n <= m:
                break
            part = np.argpartition(values, n - m)[n - m :]
            sub = values[part]
            if float(sub.sum()) >= target:
                order = np.argsort(-sub)
                cut = int(np.searchsorted(np.cumsum(sub[order]), target, side="left")) + 1
                chosen = part[order[:cut]]
                return chosen if pool is None else pool[chosen]
        ordered = np.sort(values)[::-1]
        cut = int(np.searchsorted(np.cumsum(ordered), target, side="left")) + 1
        threshold = ordered[min(cut, n) - 1]
        chosen = np.flatnonzero(values >= threshold)  # ties at the boundary all stay
        return chosen if pool is None else pool[chosen]

    def _draw(self, cum: np.ndarray) -> int:
        index = int(np.searchsorted(cum, self._rng.random() * cum[-1], side="right"))
        return min(index, len(cum) - 1)

    def _emit(self, token_id: int) -> int:
        if token_id == self._run_id:
            self._run_frames += 1
        else:
            self._run_id, self._run_frames = token_id, 1
        return token_id
