"""The per-pitch sampler: the sampler's settings as pitch biases (fake heads, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from musicgend.core.pitchhead import PITCHES, PitchHead
from musicgend.core.pitchsampler import PitchSampler, key_of
from musicgend.core.sampler import SamplerParams

C_MAJOR = [frozenset({60, 64, 67}), frozenset({62, 65, 71}), frozenset({60, 64, 67})]


def flat_head(live: range, logit: float = -1.0) -> tuple[PitchHead, np.ndarray]:
    """Each pitch of ``live`` sounds with σ(logit) on its own; the others never do.
    Returns the head and head inputs with the copy gate shut."""
    zeros = np.zeros((PITCHES, 3), dtype=np.float32)
    bias = np.full(PITCHES, -40.0, dtype=np.float32)
    bias[list(live)] = logit
    head = PitchHead(zeros, zeros, bias)
    inputs = np.zeros(head.params_width, dtype=np.float32)
    inputs[-1] = -40.0
    return head, inputs


def params(**kw: float) -> SamplerParams:
    neutral = SamplerParams.seed().model_dump()
    return SamplerParams(**{**neutral, **kw})


def draws(sampler: PitchSampler, inputs, prev, context, n: int = 2000) -> list[frozenset[int]]:
    out = []
    for _ in range(n):
        sampler.reset()
        out.append(sampler.sample(inputs, prev, context))
    return out


def test_key_of_the_context() -> None:
    assert key_of(C_MAJOR) == 0
    assert key_of([frozenset()]) is None
    assert key_of([frozenset({p + 7 for p in f}) for f in C_MAJOR]) == 7


def test_the_key_bias_keeps_draws_in_the_context_key() -> None:
    head, inputs = flat_head(range(60, 72))
    outside = {61, 63, 66, 68, 70}

    def share_outside(penalty: float) -> float:
        s = PitchSampler(head, params(scale_penalty=penalty), seed=1)
        chords = draws(s, inputs, None, C_MAJOR)
        return sum(len(c & outside) for c in chords) / max(1, sum(len(c) for c in chords))

    assert share_outside(1.0) == pytest.approx(5 / 12, abs=0.05)
    assert share_outside(0.05) < 0.05
    assert share_outside(0.0) == 0.0


def test_the_short_note_penalty_keeps_fresh_notes() -> None:
    head, inputs = flat_head(range(60, 66))
    context = [frozenset({60}), frozenset({60, 62})]  # 62 began in the last frame

    def kept(penalty: float, pitch: int) -> float:
        s = PitchSampler(head, params(short_note_penalty=penalty), seed=2)
        return float(np.mean([pitch in c for c in draws(s, inputs, context[-1], context)]))

    assert kept(0.1, 62) > kept(1.0, 62) + 0.4
    assert kept(0.1, 60) == pytest.approx(kept(1.0, 60), abs=0.05)  # not fresh: no change


def test_hold_bias_min_hold_and_silence() -> None:
    head, inputs = flat_head(range(60, 64))
    inputs = inputs.copy()
    inputs[-1] = 0.0  # gate 0.5
    prev = frozenset({60, 62})
    held = PitchSampler(head, params(hold_bias=50.0), seed=3)
    assert np.mean([c == prev for c in draws(held, inputs, prev, [prev], 500)]) > 0.95
    never = PitchSampler(head, params(hold_bias=0.0, silence_bias=0.0), seed=3)
    chords = draws(never, inputs, prev, [prev], 500)
    assert all(c for c in chords)  # no silence
    assert np.mean([c == prev for c in chords]) < 0.2  # only when the NADE draws it
    steady = PitchSampler(head, params(hold_bias=0.0, min_hold_frames=3), seed=4)
    got = [steady.sample(inputs, prev, [prev]) for _ in range(2)]
    assert got == [prev, prev]  # held for three frames counting the one that sounds


def test_temperature_zero_is_deterministic_and_nan_is_refused() -> None:
    head, inputs = flat_head(range(60, 66), logit=1.0)  # each pitch more likely on than off
    s = PitchSampler(head, params(temperature=0.0), seed=0)
    first = s.sample(inputs, None, [])
    assert first == frozenset(range(60, 66))
    assert all(s.sample(inputs, None, []) == first for _ in range(5))
    with pytest.raises(ValueError, match="NaN"):
        s.sample(np.full_like(inputs, np.nan), None, [])


def test_the_piece_memory_plays_its_recall_at_its_share() -> None:
    """With memory weights, the recall is played with probability ``memory · m``; the
    ``memory`` setting scales it, 0 turns it off; without weights or a recall nothing
    changes; at temperature 0 the recall is played when it holds half the mass or more."""
    from musicgend.core.memory import LEVELS, MemoryWeights, Recall

    head, inputs = flat_head(range(60, 72))
    recall = Recall(frozenset({40, 43}), 16)  # a chord the head never draws
    w = MemoryWeights((0.0,) * LEVELS, (0.8,) * LEVELS)

    def share(weights: MemoryWeights | None, given: Recall | None = recall, **kw: float) -> float:
        s = PitchSampler(head, params(**kw), seed=4, memory=weights)
        chords = []
        for _ in range(2000):
            s.reset()
            chords.append(s.sample(inputs, None, C_MAJOR, given))
        return sum(c == recall.chord for c in chords) / len(chords)

    assert share(w) == pytest.approx(0.8, abs=0.03)
    assert share(w, memory=0.5) == pytest.approx(0.4, abs=0.03)
    assert share(w, memory=0.0) == 0.0
    assert share(None) == 0.0
    assert share(w, None) == 0.0
    assert share(w, temperature=0.0) == 1.0
    assert share(w, temperature=0.0, memory=0.5) == 0.0
    # the hold table applies when the recall is the chord that sounds
    s = PitchSampler(head, params(), seed=4, memory=w)
    assert s.recall_share(Recall(frozenset({60}), 4), frozenset({60})) == 0.0
    assert s.recall_share(recall, frozenset({60})) == pytest.approx(0.8)
