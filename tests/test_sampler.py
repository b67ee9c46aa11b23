"""Sampler properties: never <unk>, seeded, greedy/top-k/top-p/hold/min-hold semantics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from musicgend.core.sampler import Sampler, SamplerParams


def _probs(v: int = 50, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).dirichlet(np.full(v, 0.3)).astype(np.float32)
    return p


def _draws(params: SamplerParams, probs: np.ndarray, n: int, prev: int | None = None) -> np.ndarray:
    s = Sampler(params, seed=1)
    out = []
    for _ in range(n):
        s.reset()
        out.append(s.sample(probs, prev))
    return np.asarray(out)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    top_k=st.integers(0, 20),
    top_p=st.floats(0.05, 1.0),
    hold_bias=st.floats(0.0, 10.0),
    prev=st.one_of(st.none(), st.integers(0, 39)),
)
def test_never_unk_and_always_a_valid_id(seed, temperature, top_k, top_p, hold_bias, prev):
    probs = _probs(40, seed)
    probs[0] = 0.9  # the model loves <unk>
    params = SamplerParams(temperature=temperature, top_k=top_k, top_p=top_p, hold_bias=hold_bias)
    s = Sampler(params, seed=seed)
    for _ in range(5):
        token = s.sample(probs, prev)
        assert 1 <= token < 40
        prev = token


def test_same_seed_same_sequence_different_seed_differs():
    probs = _probs()
    s1, s2, s3 = Sampler(seed=5), Sampler(seed=5), Sampler(seed=6)
    seq1 = [s1.sample(probs, None) for _ in range(50)]
    seq2 = [s2.sample(probs, None) for _ in range(50)]
    seq3 = [s3.sample(probs, None) for _ in range(50)]
    assert seq1 == seq2 != seq3


def test_plain_sampling_follows_the_distribution():
    probs = np.array([0.3, 0.1, 0.2, 0.4])  # <unk> excluded: 1/7, 2/7, 4/7
    draws = _draws(SamplerParams.seed(), probs, 7000)
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [0, 1 / 7, 2 / 7, 4 / 7], atol=0.02)


def test_greedy_and_top_k_1_pick_the_argmax():
    probs = _probs(seed=3)
    probs[0] = 1.0
    best = int(np.argmax(probs[1:])) + 1
    for params in (SamplerParams(temperature=0.0), SamplerParams(top_k=1, hold_bias=1.0)):
        assert set(_draws(params, probs, 30)) == {best}


def test_top_k_keeps_only_the_k_most_likely():
    probs = _probs(100, seed=4)
    allowed = set(np.argsort(-probs[1:])[:5] + 1)
    draws = _draws(SamplerParams(top_k=5, top_p=1.0, hold_bias=1.0), probs, 500)
    assert set(draws) <= allowed
    assert len(set(draws)) >= 3


@pytest.mark.parametrize("v", [10, 6500])
def test_top_p_keeps_the_smallest_set_reaching_p(v):
    probs = _probs(v, seed=5)
    probs[0] = 0.0
    probs /= probs.sum()
    order = np.argsort(-probs)
    cum = np.cumsum(probs[order])
    nucleus = set(order[: int(np.searchsorted(cum, 0.8)) + 1])
    draws = _draws(SamplerParams(top_p=0.8, hold_bias=1.0), probs, 3000)
    assert set(draws) <= nucleus
    assert len(set(draws)) >= min(len(nucleus), 5) // 2


def test_temperature_sharpens_and_flattens():
    probs = np.array([0.0, 0.6, 0.3, 0.1])
    cold = np.bincount(_draws(SamplerParams(temperature=0.3, top_p=1, hold_bias=1), probs, 2000))
    hot = np.bincount(_draws(SamplerParams(temperature=3.0, top_p=1, hold_bias=1), probs, 2000))
    assert cold[1] / 2000 > 0.85
    assert hot[1] / 2000 < 0.5


def test_hold_bias_repeats_the_previous_token():
    probs = np.array([0.0, 0.1, 0.45, 0.45])
    plain = _draws(SamplerParams(top_p=1, hold_bias=1.0), probs, 2000, prev=1)
    held = _draws(SamplerParams(top_p=1, hold_bias=9.0), probs, 2000, prev=1)
    assert 0.07 < np.mean(plain == 1) < 0.13
    assert 0.45 < np.mean(held == 1) < 0.55  # 0.9 / (0.9 + 0.9)
    never = _draws(SamplerParams(top_p=1, hold_bias=0.0), probs, 500, prev=1)
    assert not np.any(never == 1)


def test_silence_bias():
    probs = np.array([0.0, 0.5, 0.5])
    quiet = _draws(SamplerParams(top_p=1, hold_bias=1, silence_bias=0.0), probs, 200)
    assert not np.any(quiet == 1)


def test_min_hold_frames_keeps_each_chord_at_least_n_frames():
    probs = np.full(30, 1 / 29)
    probs[0] = 0.0
    s = Sampler(SamplerParams(top_p=1.0, hold_bias=0.0, min_hold_frames=3), seed=2)
    seq = [5]
    for _ in range(60):
        seq.append(s.sample(probs, seq[-1]))
    runs = np.diff(np.flatnonzero(np.diff([-1, *seq, -1])))
    # hold_bias 0 forbids a repeat once the run is long enough: every run is exactly 3
    assert set(runs[1:-1].tolist()) == {3}


def test_nothing_but_unk_keeps_the_previous_token():
    probs = np.zeros(10)
    probs[0] = 1.0
    assert Sampler(seed=0).sample(probs, 4) == 4
    assert Sampler(seed=0).sample(probs, None) == 1
    with pytest.raises(ValueError, match="NaN"):
        Sampler(seed=0).sample(np.full(10, np.nan), 4)


def test_params_are_validated():
    with pytest.raises(ValidationError):
        SamplerParams(top_p=0.0)
    with pytest.raises(ValidationError):
        SamplerParams(temperature=-1)
    with pytest.raises(ValidationError):
        SamplerParams(bogus=1)  # type: ignore[call-arg]
