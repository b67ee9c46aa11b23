"""Drawing the next chord token from the model's probabilities (pure, seeded).

One call, in this order:

1. ``<unk>`` (id 0) gets probability 0: it names no chord, so it can't be played.
2. Temperature: ``p ** (1 / T)`` (the same as dividing the logits by ``T``); ``T = 0`` is greedy.
3. Hold bias: the previous token's weight is multiplied by ``hold_bias`` (> 1 favours holding
   the chord, the cure for "too many scattered notes"); ``silence_bias`` does the same for
   silence (< 1 plays denser).
4. Top-k, then top-p (nucleus: the smallest set of most likely tokens whose share of the
   remaining mass reaches ``top_p``); the draw is from what is left, renormalised.
5. Minimum hold (anti-flicker): while the chord that sounds has lasted fewer than
   ``min_hold_frames`` frames, it is kept. The run length is counted by the sampler from the
   ``prev_id`` it is given, so live input that changes the chord restarts the count.

If nothing is left to draw (a model that puts all its mass on ``<unk>``), the previous token
is kept (silence if there is none).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

UNK_ID = 0
SILENCE_ID = 1
_PRESELECT = (64, 512)
"""Top-p first looks among this many most likely tokens; a full sort only when they don't
reach ``top_p``. Keeps a draw from V ≈ 6500 tokens under 100 µs."""


class SamplerParams(BaseModel):
    """Sampling settings (validated; the MQTT ``set`` command and the CLI fill them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(1.0, ge=0.0, le=10.0)
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens; 0 = all")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus mass; 1 = all")
    hold_bias: float = Field(2.0, ge=0.0, le=1000.0)
    silence_bias: float = Field(1.0, ge=0.0, le=1000.0)
    min_hold_frames: int = Field(1, ge=1, le=100)

    @classmethod
    def seed(cls) -> SamplerParams:
        """The seed's sampling: a plain draw from the softmax (``<unk>`` still excluded)."""
        return cls(temperature=1.0, top_k=0, top_p=1.0, hold_bias=1.0, min_hold_frames=1)


class Sampler:
    """Draws token ids with a seeded :class:`numpy.random.Generator`.

    Keeps the run length of the current chord for ``min_hold_frames``; call :meth:`reset`
    when the stream restarts.
    """

    __slots__ = ("_rng", "_run_frames", "_run_id", "params")

    def __init__(self, params: SamplerParams | None = None, seed: int | None = 0) -> None:
        self.params = params or SamplerParams()
        self._rng = np.random.default_rng(seed)
        self._run_id = -1
        self._run_frames = 0

    def reseed(self, seed: int | None) -> None:
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Forget the current chord's run length."""
        self._run_id, self._run_frames = -1, 0

    def sample(self, probs: np.ndarray, prev_id: int | None = None) -> int:
        """The next token id given the model's probabilities ``(V,)`` and the previous id."""
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

    def _nucleus(self, w: np.ndarray, pool: np.ndarray | None, total: float) -> np.ndarray:
        """Ids of the nucleus within ``pool`` (``None``: all ids)."""
        values = w if pool is None else w[pool]
        n = len(values)
        target = self.params.top_p * (total if pool is None else float(values.sum()))
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
