"""Sampler properties: never <unk>, seeded, greedy/top-k/top-p/hold/min-hold semantics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from musicgend.core.sampler import Sampler, SamplerParams, scale_table


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


# -- key bias --------------------------------------------------------------------------------

# C major triad, an F# alone, C major + F#, a G major triad, a D major triad (F#)
_KEY_TOKENS = ["<unk>", "e", "48,52,55", "54", "48,54", "55,59,62", "50,54,57"]


class _Tokens:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens


def test_key_table_counts_pitches_outside_each_scale():
    table = scale_table(_Tokens(_KEY_TOKENS))
    c_major, g_major = 0, 7
    assert table.outside[c_major].tolist() == [0, 0, 0, 1, 1, 0, 1]
    assert table.outside[g_major].tolist() == [0, 0, 0, 0, 0, 0, 0]
    assert scale_table(_Tokens(_KEY_TOKENS)) is not table  # another vocabulary object
    vocab = _Tokens(_KEY_TOKENS)
    assert scale_table(vocab) is scale_table(vocab)  # computed once per vocabulary


def test_detected_key_follows_the_context():
    table = scale_table(_Tokens(_KEY_TOKENS))
    assert table.key([1] * 50) is None  # silence: no key
    c_context = [2] * 40 + [5] * 10  # C major chords, a little G major
    assert table.key(c_context) == 0
    g_context = [5] * 20 + [6] * 20 + [2] * 10  # G and D major: F# is in, so G major
    assert table.key(g_context) == 7


def test_out_of_scale_tokens_lose_the_penalty_factor_per_pitch():
    probs = np.array([0.0, 0.2, 0.2, 0.2, 0.2, 0.1, 0.1])
    vocab = _Tokens(_KEY_TOKENS)
    context = [2] * 50  # C major
    n = 20_000
    params = SamplerParams(top_p=1.0, hold_bias=1.0, scale_penalty=0.25)
    s = Sampler(params, seed=3, vocab=vocab)
    draws = np.bincount([s.sample(probs, None, context) for _ in range(n)], minlength=7)
    weights = probs * 0.25 ** np.array([0, 0, 0, 1, 1, 0, 1])
    np.testing.assert_allclose(draws / n, weights / weights.sum(), atol=0.01)
    # in G major nothing is out of scale: the plain distribution
    s = Sampler(params, seed=3)
    g_context = [5] * 20 + [6] * 20 + [2] * 10  # G major (see above)
    draws = np.bincount([s.sample(probs, None, g_context, vocab) for _ in range(n)], minlength=7)
    np.testing.assert_allclose(draws / n, probs, atol=0.01)


def test_key_bias_is_seeded_and_off_in_the_seed_settings():
    probs = np.array([0.0, 0.2, 0.2, 0.2, 0.2, 0.1, 0.1])
    vocab = _Tokens(_KEY_TOKENS)
    params = SamplerParams(top_p=1.0, hold_bias=1.0, min_hold_frames=1, scale_penalty=0.3)

    def run(seed: int) -> list[int]:
        s, context, out = Sampler(params, seed=seed, vocab=vocab), [2] * 50, []
        for _ in range(100):
            out.append(s.sample(probs, context[-1], context))
            context = [*context[1:], out[-1]]
        return out

    assert run(4) == run(4) != run(5)
    assert SamplerParams.seed().scale_penalty == 1.0
    # off: the context and vocabulary change nothing
    off = SamplerParams(scale_penalty=1.0)
    a = [Sampler(off, seed=1).sample(probs, 2) for _ in range(20)]
    b = [Sampler(off, seed=1, vocab=vocab).sample(probs, 2, [2] * 50) for _ in range(20)]
    assert a == b
    with pytest.raises(ValueError, match="vocabulary"):
        Sampler(params, seed=0).sample(probs, 2, [2] * 50)


def test_engine_passes_scale_penalty_to_the_sampler():
    from musicgend.service.engine import EngineParams, default_sampler

    params = EngineParams().updated(scale_penalty=0.2)
    sampler = default_sampler(params)
    assert isinstance(sampler, Sampler)
    assert sampler.params.scale_penalty == 0.2
    assert params.public()["scale_penalty"] == 0.2
    with pytest.raises(ValueError, match="scale_penalty"):
        EngineParams(scale_penalty=1.5)


def test_scale_table_cache_does_not_keep_a_vocabulary_alive() -> None:
    import gc
    import weakref

    from musicgend.core.vocab import Vocab

    vocab = Vocab.build([["60,64,67", "62,65,69", "e"]])
    table = scale_table(vocab)
    assert scale_table(vocab) is table  # cached while alive
    ref = weakref.ref(vocab)
    del vocab
    gc.collect()
    assert ref() is None  # a swapped-out model's vocabulary can be freed


_NOTE_TOKENS = ["<unk>", "e", "60", "60,64", "64", "64,67", "60,64,67", "67"]


def test_tables_know_each_tokens_pitches_and_the_notes_just_begun():
    table = scale_table(_Tokens(_NOTE_TOKENS))
    assert table.token_pitches(6).tolist() == [60, 64, 67]
    assert table.token_pitches(0).tolist() == []  # <unk> names no pitches
    assert table.token_pitches(99).tolist() == []
    assert table.fresh_pitches([2, 6]).tolist() == [64, 67]  # 60 held, 64 and 67 struck
    assert table.fresh_pitches([1, 3]).tolist() == [60, 64]
    assert table.fresh_pitches([6, 0]).tolist() == []  # an unknown chord: nothing known
    assert table.fresh_pitches([3]).tolist() == [60, 64]
    # tokens ending 64 and 67: e, 60 both; 60,64 / 64 / 60,64,67's siblings fewer
    assert table.ending_counts(np.array([64, 67])).tolist() == [2, 2, 2, 1, 1, 0, 0, 1]


def test_short_note_penalty_weighs_tokens_by_the_fresh_notes_they_end():
    probs = np.full(len(_NOTE_TOKENS), 1.0 / (len(_NOTE_TOKENS) - 1))
    probs[0] = 0.0
    vocab = _Tokens(_NOTE_TOKENS)
    params = SamplerParams(
        top_p=1.0, hold_bias=1.0, scale_penalty=1.0, short_note_penalty=0.5, min_hold_frames=1
    )
    context = [1] * 48 + [2, 6]  # 60 held; 64 and 67 just struck
    n = 30_000
    s = Sampler(params, seed=2, vocab=vocab)
    draws = np.bincount([s.sample(probs, None, context) for _ in range(n)], minlength=8)
    weights = probs * 0.5 ** np.array([2, 2, 2, 1, 1, 0, 0, 1])
    np.testing.assert_allclose(draws / n, weights / weights.sum(), atol=0.01)
    # nothing struck in the last frame (the chord held): no penalty
    s = Sampler(params, seed=2, vocab=vocab)
    held = [1] * 48 + [6, 6]
    draws = np.bincount([s.sample(probs, None, held) for _ in range(n)], minlength=8)
    np.testing.assert_allclose(draws / n, probs, atol=0.01)
    # 0 forbids ending a fresh note at all
    zero = Sampler(params.model_copy(update={"short_note_penalty": 0.0}), seed=2, vocab=vocab)
    assert {zero.sample(probs, None, context) for _ in range(200)} <= {5, 6}
    assert SamplerParams.seed().short_note_penalty == 1.0
    with pytest.raises(ValueError, match="vocabulary"):
        Sampler(params, seed=0).sample(probs, None, context)


def test_engine_passes_short_note_penalty_and_a_negative_hold_bias_to_the_sampler():
    from musicgend.service.engine import EngineParams, cc_value, default_sampler

    params = EngineParams().updated(short_note_penalty=0.3, hold_bias=-1.0)
    sampler = default_sampler(params)
    assert isinstance(sampler, Sampler)
    assert sampler.params.short_note_penalty == 0.3
    assert sampler.params.hold_bias == pytest.approx(np.exp(-1.0))
    assert params.public()["short_note_penalty"] == 0.3
    # the daemon's defaults are the sampler's (hold bias in log units)
    default = default_sampler(EngineParams())
    assert isinstance(default, Sampler)
    assert default.params.hold_bias == pytest.approx(SamplerParams().hold_bias, rel=0.01)
    assert default.params.short_note_penalty == SamplerParams().short_note_penalty
    assert cc_value("hold_bias", 0) == -5.0 and cc_value("hold_bias", 127) == 5.0
    with pytest.raises(ValueError, match="short_note_penalty"):
        EngineParams(short_note_penalty=1.5)
    with pytest.raises(ValueError, match="hold_bias"):
        EngineParams(hold_bias=-11.0)
