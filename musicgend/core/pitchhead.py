"""The per-pitch output head: a chord's probability without a vocabulary (pure NumPy).

A vocabulary model gives an unknown chord ``p(<unk>) × p_spell`` (DESIGN.md §4), and one
test frame in ten is a chord the vocabulary lacks. The pitch head gives every set of pitches
its own probability, from the same encoder's output::

    p(chord) = g · [chord = previous chord] + (1 − g) · p_nade(chord)

``g`` is a copy gate (the chord held), and ``p_nade`` is a NADE (Larochelle & Murray 2011)
over the 128 MIDI pitches, low to high: pitch ``i`` sounds with probability
``σ(l_i)``, ``l_i = b_i + v_i · σ(a_i) + s_i · prev_i``, where ``a_i = base + Σ_{j<i} x_j w_j``
sums the input vectors of the pitches already chosen below it, and ``s_i · prev_i`` lets
the context decide how strongly a pitch that sounds now goes on sounding.

The encoder produces, per window, one vector of ``units + 128 + 1`` numbers:
``[base (units) | stay s (128) | gate logit (1)]``; the head's own weights are ``w_in``
``(128, units)``, ``v_out`` ``(128, units)`` and ``bias`` ``(128,)``.

Drawing a chord is exact ancestral sampling, but it does not step through all 128 pitches:
``a`` changes only when a pitch is chosen, so one matrix-vector product gives the
probabilities of every remaining pitch at once, and the next chosen pitch (or "no more") is
drawn from their first-success distribution. A chord of ``n`` pitches costs ``n + 1``
products (about 20 µs each), not 128 steps.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

PITCHES = 128
MODE_SEARCH_EXPANSIONS = 4096
"""How many partial chords :meth:`PitchHead.best_change` may expand per row."""
_DONE = -1
WEIGHT_NAMES = ("pitch_head.w_in", "pitch_head.v_out", "pitch_head.bias")
"""The head's arrays in a model's weights (``weights.npz``)."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


@dataclass(frozen=True)
class StepBias:
    """How a draw departs from the model (all neutral by default).

    ``pitch_logit`` ``(128,)`` is added to every pitch's logit (key bias, short-note
    penalty); ``temperature`` divides the logits and the gate's logit (0: the most likely
    choice at every step); ``hold`` multiplies the copy gate's weight; ``silence``
    multiplies the weight of the empty chord from the NADE; ``top_k`` / ``top_p`` cut each
    step's choice ("which pitch next, or none") to its most likely options.
    """

    pitch_logit: np.ndarray | None = None
    temperature: float = 1.0
    hold: float = 1.0
    silence: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


NEUTRAL = StepBias()


class PitchHead:
    """The head's weights and the three things done with them: score, draw, best guess."""

    __slots__ = ("bias", "units", "v_out", "w_in")

    def __init__(self, w_in: np.ndarray, v_out: np.ndarray, bias: np.ndarray) -> None:
        w_in = np.asarray(w_in, dtype=np.float32)
        v_out = np.asarray(v_out, dtype=np.float32)
        bias = np.asarray(bias, dtype=np.float32)
        if w_in.ndim != 2 or w_in.shape[0] != PITCHES or v_out.shape != w_in.shape:
            raise ValueError(
                f"pitch head weights must be (128, units) twice, got {w_in.shape}, {v_out.shape}"
            )
        if bias.shape != (PITCHES,):
            raise ValueError(f"pitch head bias must be (128,), got {bias.shape}")
        self.w_in, self.v_out, self.bias = w_in, v_out, bias
        self.units = int(w_in.shape[1])

    @classmethod
    def from_weights(cls, weights: Mapping[str, np.ndarray]) -> PitchHead:
        return cls(*(weights[name] for name in WEIGHT_NAMES))

    @property
    def params_width(self) -> int:
        """Width of the encoder's output vector that this head reads."""
        return self.units + PITCHES + 1

    def split(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(N, params_width)`` → base ``(N, units)``, stay ``(N, 128)``, gate logit ``(N,)``."""
        p = np.asarray(params, dtype=np.float32)
        if p.ndim != 2 or p.shape[1] != self.params_width:
            raise ValueError(
                f"expected head inputs of shape (N, {self.params_width}), got {p.shape}"
            )
        u = self.units
        return p[:, :u], p[:, u : u + PITCHES], p[:, u + PITCHES]

    # -- scoring -----------------------------------------------------------------------------

    def log_prob(self, params: np.ndarray, prev: np.ndarray, chords: np.ndarray) -> np.ndarray:
        """``ln p(chord)`` per row (float64): ``prev`` and ``chords`` are ``(N, 128)`` bool."""
        base, stay, gate = self.split(params)
        x = np.asarray(chords, dtype=np.float32)
        before = np.asarray(prev, dtype=bool)
        contrib = x[:, :, None] * self.w_in[None]  # (N, 128, units)
        a = base[:, None, :] + np.cumsum(contrib, axis=1) - contrib
        logits = np.einsum("npu,pu->np", _sigmoid(a), self.v_out) + self.bias
        logits = logits + stay * before
        logits = logits.astype(np.float64)
        lp_nade = np.where(x > 0, _log_sigmoid(logits), _log_sigmoid(-logits)).sum(axis=1)
        g = gate.astype(np.float64)
        lp_rest = _log_sigmoid(-g) + lp_nade
        same = np.all(np.asarray(chords, dtype=bool) == before, axis=1)
        return np.where(same, np.logaddexp(_log_sigmoid(g), lp_rest), lp_rest)

    # -- drawing -------------------------------------------------------------------------------

    def sample(
        self,
        params: np.ndarray,
        prev: np.ndarray,
        rng: np.random.Generator,
        bias: StepBias = NEUTRAL,
    ) -> np.ndarray:
        """One chord ``(128,)`` bool drawn for one window's head inputs ``(params_width,)``."""
        base, stay, gate = self.split(np.asarray(params)[None, :])
        before = np.asarray(prev, dtype=bool)
        greedy = bias.temperature == 0.0
        g = float(gate[0]) if greedy else float(gate[0]) / bias.temperature
        held = 0.5 * (1.0 + math.tanh(0.5 * g))  # the gate's sigmoid: no overflow at any logit
        copy_w, rest_w = bias.hold * held, 1.0 - held
        if greedy:
            if copy_w > rest_w:
                return before.copy()
        elif rng.random() * (copy_w + rest_w) < copy_w:
            return before.copy()
        return self._nade_draw(base[0], stay[0] * before, rng, bias)

    def _nade_draw(
        self, base: np.ndarray, stay: np.ndarray, rng: np.random.Generator, bias: StepBias
    ) -> np.ndarray:
        chord = np.zeros(PITCHES, dtype=bool)
        a = base.astype(np.float32, copy=True)
        offset = self.bias + stay
        scale = 1.0 if bias.temperature in (0.0, 1.0) else 1.0 / bias.temperature
        start = 0
        first = True
        while start < PITCHES:
            logits = self.v_out[start:] @ _sigmoid(a) + offset[start:]
            if scale != 1.0:
                logits = logits * scale
            if bias.pitch_logit is not None:
                logits = logits + bias.pitch_logit[start:]
            p = _sigmoid(logits.astype(np.float64))
            # first-success distribution: pitch j is the next one chosen, or none is
            survive = np.cumprod(1.0 - p)
            weights = np.empty(len(p) + 1)
            weights[0] = survive[-1]  # no more pitches
            weights[1] = p[0]
            weights[2:] = p[1:] * survive[:-1]
            if first and bias.silence != 1.0:
                weights[0] *= bias.silence
            first = False
            choice = self._choose(weights, rng, bias)
            if choice == 0:
                break
            pitch = start + choice - 1
            chord[pitch] = True
            a += self.w_in[pitch]
            start = pitch + 1
        return chord

    @staticmethod
    def _choose(weights: np.ndarray, rng: np.random.Generator, bias: StepBias) -> int:
        if bias.temperature == 0.0:
            return int(np.argmax(weights))
        if bias.top_k or bias.top_p < 1.0:
            order = np.argsort(-weights, kind="stable")
            keep = len(order) if not bias.top_k else min(bias.top_k, len(order))
            if bias.top_p < 1.0:
                cum = np.cumsum(weights[order])
                keep = min(keep, int(np.searchsorted(cum, bias.top_p * cum[-1])) + 1)
            kept = np.zeros_like(weights)
            kept[order[:keep]] = weights[order[:keep]]
            weights = kept
        cum = np.cumsum(weights)
        if not cum[-1] > 0.0:
            return 0
        return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)

    # -- best guess ----------------------------------------------------------------------------

    def best_change(
        self, params: np.ndarray, prev: np.ndarray, max_expansions: int = MODE_SEARCH_EXPANSIONS
    ) -> np.ndarray:
        """The most likely chord other than the previous one, per row ``(N, 128)`` bool: the
        head's guess for a frame where it is told that the chord changes.

        Exact: a best-first search over the NADE's choices ("the next pitch up, or no
        more"). A chord's probability only falls as pitches are added, so the first
        complete chord taken off the queue that is not the previous chord is the mode of
        the others. A row whose search passes ``max_expansions`` partial chords (a very
        flat distribution) gets the best chord found so far; for the model bundled at commit
        c67ab6e, on the Bach test split, a limit of 256 already gave the exact answer on
        every frame.
        """
        base, stay, _ = self.split(params)
        before = np.asarray(prev, dtype=bool)
        out = np.zeros((len(base), PITCHES), dtype=bool)
        for i in range(len(base)):
            held = tuple(int(p) for p in np.flatnonzero(before[i]))
            chord = self._mode_except(base[i], stay[i] * before[i], held, max_expansions)
            out[i, list(chord)] = True
        return out

    def _mode_except(
        self, base: np.ndarray, stay: np.ndarray, excluded: tuple[int, ...], max_expansions: int
    ) -> tuple[int, ...]:
        # Queue entries: (-log p, tie-break, next pitch to consider or _DONE, chord so far,
        # the parent's input sum, the pitch added to it or -1). A complete chord is queued
        # only when it is not the excluded one and beats every complete chord queued before;
        # a partial chord only when it could still beat them.
        queue: list[tuple[float, int, int, tuple[int, ...], np.ndarray, int]] = [
            (0.0, 0, 0, (), base.astype(np.float32), -1)
        ]
        pushed = expanded = 0
        floor, found = -math.inf, None  # the best complete chord queued so far, and its log p
        while queue and (expanded < max_expansions or found is None):
            neg_lp, _, start, chord, a, added = heapq.heappop(queue)
            if start == _DONE:
                return chord
            expanded += 1
            if added >= 0:
                a = a + self.w_in[added]
            logits = self.v_out[start:] @ _sigmoid(a) + self.bias[start:] + stay[start:]
            logits = logits.astype(np.float64)
            below = np.concatenate(([0.0], np.cumsum(_log_sigmoid(-logits))))  # none chosen yet
            lp = -neg_lp
            if chord != excluded and lp + below[-1] > floor:
                floor, found = lp + below[-1], chord
                pushed += 1
                heapq.heappush(queue, (-floor, pushed, _DONE, chord, a, -1))
            lp_next = lp + below[:-1] + _log_sigmoid(logits)
            for j in np.flatnonzero(lp_next >= floor):
                pitch = start + int(j)
                pushed += 1
                heapq.heappush(queue, (-lp_next[j], pushed, pitch + 1, (*chord, pitch), a, pitch))
        assert found is not None  # a chord other than the excluded one always exists
        return found

    def hold_prob(self, params: np.ndarray) -> np.ndarray:
        """The copy gate's probability of holding the previous chord, per row (float64)."""
        _, _, gate = self.split(params)
        return np.asarray(_sigmoid(gate.astype(np.float64)))

    def best(
        self, params: np.ndarray, prev: np.ndarray, changed: np.ndarray | None = None
    ) -> np.ndarray:
        """The most likely chord per row ``(N, 128)`` bool, exactly: the previous chord (the
        copy gate's mass plus the NADE's) or :meth:`best_change` (``changed`` when already
        computed), since every other chord has less than the latter."""
        return self.best_of_two(params, prev, changed)[0]

    def best_of_two(
        self, params: np.ndarray, prev: np.ndarray, changed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`best`, with what it compared: ``(best, changed, ln p(previous chord),
        ln p(changed))``."""
        before = np.asarray(prev, dtype=bool)
        if changed is None:
            changed = self.best_change(params, before)
        lp_prev = self.log_prob(params, before, before)
        lp_changed = self.log_prob(params, before, changed)
        chosen = np.where((lp_prev >= lp_changed)[:, None], before, changed)
        return chosen, changed, lp_prev, lp_changed
