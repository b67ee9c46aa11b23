"""The evaluation baselines on hand-made sequences with answers derived by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from musicgend.training.ngram import (
    FALLBACK_DISCOUNT,
    FrameStats,
    KneserNey,
    golden_section,
    kn_stats,
    tune_lambda,
    uniform_stats,
)

V = 4  # ids 0 (<unk>), 1 (e, the pad), 2, 3
SEQ = [2, 3, 2, 3, 2]


def test_kn_bigram_by_hand():
    """Bigram KN on 2 3 2 3 2 (padded: 1 | 2 3 2 3 2), V = 4.

    Bigrams ending at real positions: (1,2) ×1, (2,3) ×2, (3,2) ×2 → n1 = 1, n2 = 2,
    D2 = 1 / (1 + 4) = 1/5.
    Unigram continuation counts (distinct left neighbours): 2 ← {1, 3} = 2, 3 ← {2} = 1;
    total 3; n1 = 1, n2 = 1 → D1 = 1/3; γ1 = D1 · 2 / 3 = 2/9.
    P1(w) = max(c − 1/3, 0)/3 + 2/9 · 1/4:  P1 = [1/18, 1/18, 11/18, 5/18].
    Context 2 → {3: 2}: γ = 1/5 · 1/2 = 1/10.
    P(3|2) = (2 − 1/5)/2 + 1/10 · 5/18 = 9/10 + 1/36; P(2|2) = 11/180; P(0|2) = 1/180.
    Context 0 was never seen: P(·|0) = P1.
    """
    kn = KneserNey.fit([SEQ], order=2, vocab_size=V)
    assert kn.discounts == pytest.approx([1 / 3, 1 / 5])
    p1 = np.array([1, 1, 11, 5]) / 18
    np.testing.assert_allclose(kn.distribution([0]), p1)
    np.testing.assert_allclose(kn.distribution([2]), [1 / 180, 1 / 180, 11 / 180, 9 / 10 + 1 / 36])


def test_kn_trigram_by_hand():
    """Trigram KN on 2 3 2 3 2 (padded: 1 1 | 2 3 2 3 2), V = 4.

    Trigrams: (1,1,2) 1, (1,2,3) 1, (2,3,2) 2, (3,2,3) 1 → n1 = 3, n2 = 1, D3 = 3/5.
    Bigram continuation counts from the distinct trigrams: (1,2) 1, (2,3) 2, (3,2) 1
    → n1 = 2, n2 = 1, D2 = 1/2. Unigrams as in the bigram case: P1 = [1, 1, 11, 5] / 18.
    P2(·|3): {2: 1}, γ = 1/2 → P2(2|3) = 1/2 + 1/2 · 11/18 = 29/36, P2(3|3) = 5/36,
    P2(0|3) = P2(1|3) = 1/36.
    P3(·|2,3): {2: 2}, γ = 3/5 · 1/2 = 3/10 → P3(2|2,3) = 7/10 + 3/10 · 29/36 = 339/360,
    P3(3|2,3) = 3/10 · 5/36 = 15/360, P3(0|2,3) = P3(1|2,3) = 3/360.
    P2(·|2): {3: 2}, γ = 1/2 · 1/2 = 1/4 → P2(3|2) = 3/4 + 1/4 · 5/18 = 59/72.
    P3(3|1,2): {3: 1}, γ = 3/5 → 2/5 + 3/5 · 59/72 = 107/120.
    """
    kn = KneserNey.fit([SEQ], order=3, vocab_size=V)
    assert kn.discounts == pytest.approx([1 / 3, 1 / 2, 3 / 5])
    np.testing.assert_allclose(kn.distribution([2, 3]), np.array([3, 3, 339, 15]) / 360)
    assert kn.distribution([1, 2])[3] == pytest.approx(107 / 120)
    # A piece's start: the context is padded with silence (id 1).
    np.testing.assert_allclose(kn.distribution([2]), kn.distribution([1, 2]))
    np.testing.assert_allclose(kn.distribution([]), kn.distribution([1, 1]))


def test_kn_distributions_sum_to_one_and_stay_positive():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 12, size=int(rng.integers(5, 60))).tolist() for _ in range(20)]
    kn = KneserNey.fit(seqs, order=5, vocab_size=15)  # ids 12..14 never seen
    for _ in range(200):
        ctx = rng.integers(0, 15, size=int(rng.integers(0, 6))).tolist()
        p = kn.distribution(ctx)
        assert p.shape == (15,)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert (p > 0).all()
    for seq in seqs[:3]:  # seen contexts too
        for t in range(len(seq)):
            assert kn.distribution(seq[:t]).sum() == pytest.approx(1.0, abs=1e-12)


def test_kn_fallback_discount_and_bad_ids():
    # Every k-gram seen twice: no n1, the discount falls back so unseen ids keep mass.
    kn = KneserNey.fit([[2, 2], [2, 2]], order=1, vocab_size=3)
    assert kn.discounts == [FALLBACK_DISCOUNT]
    assert (kn.distribution([]) > 0).all()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        KneserNey.fit([[0, 7]], order=2, vocab_size=4)


def test_repeat_lambda_by_hand():
    """Ids 1 2 2 3 (previous ids 1 1 2 2: the first frame's previous is silence, id 1).

    Repeats at t = 0 and 2, so r = 1/2; with the uniform u = 1/4 the NLL is
    −½ ln(λ + (1 − λ)/4) − ½ ln((1 − λ)/4); its derivative vanishes where
    (3/4)(1 − λ) = λ + (1 − λ)/4, i.e. λ = 1/3. Top-1 (argmax = previous id) is right
    at t = 0 and 2: 1/2.
    """
    stats = uniform_stats([1, 2, 2, 3], V)
    np.testing.assert_array_equal(stats.prevs, [1, 1, 2, 2])
    lam, nll = tune_lambda(stats)
    assert lam == pytest.approx(1 / 3, abs=1e-5)
    expected = -(math.log(1 / 3 + (2 / 3) / 4) + math.log((2 / 3) / 4)) / 2
    assert nll == pytest.approx(expected, abs=1e-9)
    assert stats.correct(lam).mean() == 0.5
    # A repeated <unk> is never a right top-1 answer.
    unk = uniform_stats([0, 0], V)
    assert not unk.correct(0.5).any()
    np.testing.assert_allclose(np.exp(unk.log_probs(0.5)), [0.5 / 4, 0.5 + 0.5 / 4])


def test_mixture_matches_full_distribution():
    """FrameStats' per-frame answers equal those read off the full mixed distribution."""
    rng = np.random.default_rng(1)
    train = [rng.integers(0, 8, size=40).tolist() for _ in range(5)]
    kn = KneserNey.fit(train, order=3, vocab_size=9)
    piece = rng.integers(0, 9, size=30).tolist()
    stats = kn_stats(kn, piece)
    lam = 0.3
    history = [1, 1, *piece]
    for t, target in enumerate(piece):
        full = (1 - lam) * kn.distribution(history[t : t + 2])
        full[history[t + 1]] += lam
        assert full.sum() == pytest.approx(1.0)
        assert math.exp(stats.log_probs(lam)[t]) == pytest.approx(full[target])
        right = int(full.argmax()) == target and target != 0
        assert bool(stats.correct(lam)[t]) == right


def test_concat_and_golden_section():
    a = uniform_stats([1, 2], V)
    b = uniform_stats([3], V)
    both = FrameStats.concat([a, b])
    assert len(both) == 3
    np.testing.assert_array_equal(both.prevs, [1, 1, 1])
    assert len(FrameStats.concat([])) == 0
    assert golden_section(lambda x: (x - 0.7) ** 2, 0.0, 1.0, 1e-8) == pytest.approx(0.7, abs=1e-6)
    # A λ of 1 is allowed when every frame repeats.
    lam, _ = tune_lambda(uniform_stats([1, 1, 1], V))
    assert lam == 1.0
