"""Drawing the next chord from a per-pitch model (pure, seeded): the sampler's settings,
applied to pitches instead of vocabulary tokens.

The same :class:`~musicgend.core.sampler.SamplerParams` as for a vocabulary model, in the
per-pitch head's terms (:class:`~musicgend.core.pitchhead.StepBias`):

* ``temperature`` divides every pitch logit and the copy gate's logit (0: the most likely
  choice at every step);
* key bias: the best-fitting major/minor scale of the context (every sounding pitch of the
  window, :func:`~musicgend.core.musicstats.best_scale`) lowers the logit of each pitch
  outside it by ``ln(1 / scale_penalty)``; as for tokens, every pitch outside the key
  weighs a chord down by about ``scale_penalty``;
* short-note penalty: each pitch begun in the last frame of the context (sounding there,
  not in the frame before) has its logit raised by ``ln(1 / short_note_penalty)``, so a
  chord that would end it weighs about ``short_note_penalty`` as much;
* ``hold_bias`` multiplies the copy gate's weight (the previous chord, held);
  ``silence_bias`` the weight of the empty chord;
* ``top_k`` / ``top_p`` cut each step's choice ("which pitch next, or none");
* ``min_hold_frames`` keeps the sounding chord for that many frames, counted from the
  ``prev`` chord given (live input that changes the chord restarts the count);
* ``memory`` scales the share of a model's piece memory
  (:class:`~musicgend.core.memory.MemoryWeights`): with probability ``memory · m`` the
  recalled chord is played as it is (the biases above shape the model's draw only; at
  temperature 0 the recall is played when ``memory · m`` ≥ 0.5, when it is the mixture's
  most likely chord).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from musicgend.core.memory import MemoryWeights, Recall
from musicgend.core.musicstats import SCALES, best_scale, piano_roll
from musicgend.core.pitchhead import PITCHES, PitchHead, StepBias
from musicgend.core.sampler import SamplerParams
from musicgend.core.tokens import PitchSet

_LOGIT_CAP = 50.0
"""A penalty of 0 (or a bias of ∞) moves a logit by this much: the pitch is then certain."""


def _log_ratio(penalty: float) -> float:
    """``ln(1 / penalty)``, capped (a penalty of 0 forbids)."""
    return _LOGIT_CAP if penalty <= 0.0 else min(-math.log(penalty), _LOGIT_CAP)


def key_of(frames: Sequence[PitchSet]) -> int | None:
    """The best-fitting scale's tonic for a context of frames; None if it is all silence."""
    profile = np.zeros(12)
    for frame in frames:
        for pitch in frame:
            profile[pitch % 12] += 1
    if not profile.any():
        return None
    return best_scale(profile)[0]


class PitchSampler:
    """Draws chords (pitch sets) with a seeded :class:`numpy.random.Generator`."""

    __slots__ = ("_rng", "_run", "_run_frames", "head", "memory", "params")

    def __init__(
        self,
        head: PitchHead,
        params: SamplerParams | None = None,
        seed: int | None = 0,
        memory: MemoryWeights | None = None,
    ):
        self.head = head
        self.params = params or SamplerParams()
        self.memory = memory
        self._rng = np.random.default_rng(seed)
        self._run: PitchSet | None = None
        self._run_frames = 0

    def reseed(self, seed: int | None) -> None:
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Forget the current chord's run length."""
        self._run, self._run_frames = None, 0

    def step_bias(self, context: Sequence[PitchSet]) -> StepBias:
        """The :class:`StepBias` these settings give for a context (oldest frame first)."""
        p = self.params
        logit = np.zeros(PITCHES)
        if p.scale_penalty != 1.0:
            tonic = key_of(context)
            if tonic is not None:
                outside = ~np.tile(SCALES[tonic], PITCHES // 12 + 1)[:PITCHES]
                logit[outside] -= _log_ratio(p.scale_penalty)
        if p.short_note_penalty != 1.0 and context:
            last = context[-1]
            before = context[-2] if len(context) > 1 else frozenset()
            fresh = [pitch for pitch in last if pitch not in before]
            logit[fresh] += _log_ratio(p.short_note_penalty)
        return StepBias(
            pitch_logit=logit if logit.any() else None,
            temperature=p.temperature,
            hold=p.hold_bias,
            silence=p.silence_bias,
            top_k=p.top_k,
            top_p=p.top_p,
        )

    def sample(
        self,
        head_inputs: np.ndarray,
        prev: PitchSet | None,
        context: Sequence[PitchSet],
        recall: Recall | None = None,
    ) -> PitchSet:
        """The next chord, given the model's head inputs for the window, the chord that
        sounds now (``None``: nothing yet), the window's frames (oldest first) and the
        piece memory's recall (used only with the model's :attr:`memory` weights)."""
        if not np.all(np.isfinite(head_inputs)):
            raise ValueError("the model's outputs contain NaN or infinity")
        if prev is not None:
            if prev != self._run:
                self._run, self._run_frames = prev, 1
            if self._run_frames < self.params.min_hold_frames:
                return self._emit(prev)
        else:
            self.reset()
        share = self.recall_share(recall, prev)
        if share > 0.0 and recall is not None:
            if self.params.temperature == 0.0:
                if share >= 0.5:
                    return self._emit(recall.chord)
            elif self._rng.random() < share:
                return self._emit(recall.chord)
        before = piano_roll([prev or ()])[0]
        chord = self.head.sample(head_inputs, before, self._rng, self.step_bias(context))
        return self._emit(frozenset(int(p) for p in np.flatnonzero(chord)))

    def recall_share(self, recall: Recall | None, prev: PitchSet | None) -> float:
        """The probability of playing the recall: ``memory · m`` (0 without memory)."""
        if self.memory is None or recall is None or self.params.memory == 0.0:
            return 0.0
        return self.params.memory * self.memory.weight(recall, prev)

    def _emit(self, chord: PitchSet) -> PitchSet:
        if chord == self._run:
            self._run_frames += 1
        else:
            self._run, self._run_frames = chord, 1
        return chord
