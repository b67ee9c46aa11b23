"""The piece memory: matching against a brute-force search, bounded memory, the weights and
their fit (pure, no model)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from musicgend.core.memory import (
    LEVELS,
    MATCH_LENGTHS,
    MAX_WEIGHT,
    MIN_BUCKET_FRAMES,
    FrameEvidence,
    MemoryWeights,
    PieceMemory,
    Recall,
    evidence,
    fit_weights,
    mixed_log_prob,
    mixture_choice,
    recalls,
)

A, B, C, D = (frozenset({60}), frozenset({62, 65}), frozenset({64, 67, 72}), frozenset())


def brute_recall(frames: list[frozenset[int]], base: int = 0) -> Recall | None:
    """The definition: the longest stretch length L of MATCH_LENGTHS whose last L frames
    were played before (within frames[base:]), and the frame after its latest occurrence."""
    n = len(frames)
    found = None
    for length in MATCH_LENGTHS:
        suffix = frames[n - length :] if length <= n else None
        best = None
        for end in range(n - 2, base + length - 2, -1):  # earlier stretch ends at `end`
            if frames[end - length + 1 : end + 1] == suffix:
                best = end
                break
        if best is None:
            break
        found = Recall(frames[best + 1], length)
    return found


@pytest.mark.parametrize("alphabet", [2, 3, 5])
def test_recall_is_the_longest_latest_match(alphabet: int) -> None:
    rng = random.Random(alphabet)
    chords = [A, B, C, D, frozenset({48, 52})][:alphabet]
    frames: list[frozenset[int]] = []
    memory = PieceMemory()
    lengths = set()
    for _ in range(700):
        got = memory.recall()
        assert got == brute_recall(frames)
        lengths.add(None if got is None else got.frames)
        # random frames, then a 64-frame phrase over and over (long matches), then random
        copy = 300 < len(frames) < 650 or (len(frames) > 650 and rng.random() < 0.7)
        frame = frames[-64] if copy else rng.choice(chords)
        memory.push(frame)
        frames.append(frame)
    assert len(memory) == 700
    assert max(x for x in lengths if x is not None) == 256


def test_no_recall_for_a_frame_never_played_before() -> None:
    memory = PieceMemory()
    assert memory.recall() is None
    memory.extend([A, B, A])
    assert memory.recall() == Recall(B, 1)
    memory.push(C)
    assert memory.recall() is None
    assert recalls([A, B, A, B]) == [None, None, None, Recall(B, 1)]


def test_a_provisional_frame_is_recalled_from_and_forgotten() -> None:
    frames = [A, B, C, A, B, A, B, C, C, A]
    memory, reference = PieceMemory(), PieceMemory()
    for i, frame in enumerate(frames):
        ahead = frames[i : i + 2]
        expected = PieceMemory()
        expected.extend(frames[:i] + ahead)
        assert memory.recall(ahead) == expected.recall()
        memory.push(frame)
        reference.push(frame)
        assert memory.recall() == reference.recall()


def test_capacity_forgets_the_oldest_frames_one_by_one() -> None:
    rng = random.Random(7)
    frames = [rng.choice([A, B, C, D]) for _ in range(3000)]
    memory = PieceMemory(capacity_frames=100)
    for i, frame in enumerate(frames):
        memory.push(frame)
        kept = frames[max(0, i + 1 - 100) : i + 1]
        if i % 37 == 0 or i > 2900:
            assert memory.recall() == brute_recall(kept), i
    assert len(memory) == 100
    assert sum(len(ends) for ends in memory._ends) <= 100 * LEVELS
    assert len(memory._frames) < 100 + 1024 + 1


def test_a_long_phrase_is_recalled_after_the_window() -> None:
    """A phrase of 60 frames played again a minute later: the recall follows it."""
    rng = random.Random(3)
    phrase = [frozenset(rng.sample(range(48, 72), 3)) for _ in range(60)]
    filler = [frozenset({36 + i % 12}) for i in range(300)]
    memory = PieceMemory()
    memory.extend(phrase + filler + phrase[:40])
    got = memory.recall()
    assert got == Recall(phrase[40], 32)


def test_capacity_must_hold_something() -> None:
    with pytest.raises(ValueError, match="capacity_frames"):
        PieceMemory(capacity_frames=1)


def weights(hold: float = 0.5, change: float = 0.25) -> MemoryWeights:
    return MemoryWeights((hold,) * LEVELS, (change,) * LEVELS)


def test_weight_by_length_and_by_hold_or_change() -> None:
    w = MemoryWeights(tuple(i / 10 for i in range(LEVELS)), tuple(i / 20 for i in range(LEVELS)))
    assert w.weight(None, A) == 0.0
    assert w.weight(Recall(A, 8), A) == pytest.approx(0.3)  # holds the chord that sounds
    assert w.weight(Recall(B, 8), A) == pytest.approx(0.15)
    assert w.weight(Recall(D, 1), None) == 0.0  # silence held after nothing
    shares = w.shares(np.array([-1, 3, 3]), np.array([False, True, False]))
    assert shares.tolist() == pytest.approx([0.0, 0.3, 0.15])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "JSON object"),
        ({"hold": [0] * LEVELS, "change": [0] * LEVELS}, "match_frames"),
        ({"match_frames": list(MATCH_LENGTHS), "hold": [0] * LEVELS}, "missing key 'change'"),
        ({"match_frames": list(MATCH_LENGTHS), "hold": [0] * 3, "change": [0] * LEVELS}, "9"),
        (
            {"match_frames": list(MATCH_LENGTHS), "hold": [1.0] * LEVELS, "change": [0] * LEVELS},
            "each must be in",
        ),
        (
            {"match_frames": list(MATCH_LENGTHS), "hold": [True] * LEVELS, "change": [0] * LEVELS},
            "numbers",
        ),
        ({"match_frames": list(MATCH_LENGTHS), "hold": "0", "change": [0] * LEVELS}, "lists"),
    ],
)
def test_bad_weights_are_refused_with_the_reason(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MemoryWeights.from_json(data)


def test_weights_round_trip_through_json() -> None:
    w = weights(0.125, 0.5)
    assert MemoryWeights.from_json(w.to_json()) == w


def test_mixed_log_prob() -> None:
    lp = np.array([math.log(0.2), math.log(0.2), -math.inf])
    m = np.array([0.5, 0.5, 0.0])
    hit = np.array([True, False, False])
    out = mixed_log_prob(lp, m, hit)
    assert out[0] == pytest.approx(math.log(0.5 * 0.2 + 0.5))
    assert out[1] == pytest.approx(math.log(0.5 * 0.2))
    assert out[2] == -math.inf


def test_fit_finds_the_maximum_likelihood_share() -> None:
    """Where the model gives the frame's chord probability 0.1 and the recall is right on
    70 % of 200 frames, ``m`` maximises Σ ln((1 − m)·0.1 + m·hit); a bucket with too few
    frames takes the shorter length's weight; ``m`` is capped."""
    n = 200
    hit = np.arange(n) < 140
    level = np.full(n, 2)
    frames = n + MIN_BUCKET_FRAMES - 1 + 50
    ev = FrameEvidence(
        [None] * frames,  # the recalled chords: fitting reads only the arrays
        np.concatenate([level, [3] * (MIN_BUCKET_FRAMES - 1), [4] * 50]),
        np.zeros(frames, dtype=bool),
        np.concatenate([hit, [False] * (MIN_BUCKET_FRAMES - 1), [True] * 50]),
    )
    fitted, counts = fit_weights(ev, np.full(frames, 0.1))
    grid = np.linspace(0, 0.99, 9901)
    ll = [np.log((1 - g) * 0.1 + g * hit).sum() for g in grid]
    assert fitted.change[2] == pytest.approx(grid[int(np.argmax(ll))], abs=2e-4)
    assert fitted.change[3] == fitted.change[2]
    assert fitted.change[4] == MAX_WEIGHT
    assert fitted.change[:2] == (0.0, 0.0)
    assert fitted.hold == (0.0,) * LEVELS
    assert counts["change"][2:5] == [n, MIN_BUCKET_FRAMES - 1, 50]


def test_evidence_per_frame() -> None:
    pieces = [[A, B, A, B, B], [C, C, C]]  # each piece recalls from its own frames only
    ev = evidence(pieces)
    assert ev.level.tolist() == [-1, -1, -1, 0, 1, -1, -1, 0]
    assert ev.hit.tolist() == [False, False, False, True, False, False, False, True]
    assert ev.holds.tolist() == [False] * 7 + [True]
    assert ev.has.tolist() == [False, False, False, True, True, False, False, True]
    assert ev.recalled[3] == Recall(B, 1) and ev.recalled[7] == Recall(C, 1)
    with pytest.raises(ValueError, match="7 probabilities for 8 frames"):
        fit_weights(ev, np.full(7, 0.5))


def test_mixture_choice_picks_the_candidate_the_mixture_favours() -> None:
    """Three candidates per frame; the recall's share moves the choice to the recall
    (or to a candidate that is the recall) and does nothing where there is none."""
    lp = np.log(np.array([[0.5, 0.5, 0.5], [0.3, 0.3, 0.3], [0.1, 0.1, 1e-9]]))
    lp[2, 2] = -math.inf  # no recall in the last frame
    is_recall = [
        np.array([False, False, False]),
        np.array([False, True, False]),
        np.array([True, False, False]),
    ]
    share = np.array([0.5, 0.5, 0.9])
    assert mixture_choice(lp, is_recall, share).tolist() == [2, 1, 0]
    assert mixture_choice(lp, is_recall, np.zeros(3)).tolist() == [0, 0, 0]
