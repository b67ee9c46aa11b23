"""The per-pitch head: probabilities that sum to one, draws that follow them, the best guess."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from musicgend.core.musicstats import piano_roll
from musicgend.core.pitchhead import PITCHES, PitchHead, StepBias

LIVE = list(range(60, 65))  # the only pitches the test head lets sound


def make_head(units: int = 6, seed: int = 0) -> PitchHead:
    rng = np.random.default_rng(seed)
    bias = np.full(PITCHES, -40.0)
    bias[LIVE] = rng.normal(0.0, 1.0, len(LIVE))
    return PitchHead(
        rng.normal(0, 1.5, (PITCHES, units)), rng.normal(0, 1.5, (PITCHES, units)), bias
    )


def make_params(head: PitchHead, n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1.0, (n, head.params_width)).astype(np.float32)


def all_chords() -> list[tuple[int, ...]]:
    return [c for r in range(len(LIVE) + 1) for c in itertools.combinations(LIVE, r)]


def test_probabilities_of_every_chord_sum_to_one() -> None:
    head = make_head()
    params = make_params(head, 3)
    chords = all_chords()
    for row in range(3):
        for prev in ([], [60, 62], [61, 63, 64]):
            p = head.log_prob(
                np.repeat(params[row : row + 1], len(chords), axis=0),
                piano_roll([prev] * len(chords)),
                piano_roll(chords),
            )
            assert np.exp(p).sum() == pytest.approx(1.0, abs=1e-6)


def test_log_prob_matches_a_pitch_by_pitch_computation() -> None:
    head = make_head()
    params = make_params(head, 1)
    base, stay, gate = head.split(params)
    prev = piano_roll([[60, 64]])
    chord = piano_roll([[61, 64]])
    a = base[0].astype(np.float64)
    lp = 0.0
    for i in range(PITCHES):
        logit = head.v_out[i] @ (1 / (1 + np.exp(-a))) + head.bias[i] + stay[0, i] * prev[0, i]
        p_on = 1 / (1 + np.exp(-logit))
        lp += np.log(p_on if chord[0, i] else 1 - p_on)
        if chord[0, i]:
            a += head.w_in[i]
    g = 1 / (1 + np.exp(-gate[0]))
    expected = np.log(1 - g) + lp  # the chord differs from prev: no copy mass
    assert head.log_prob(params, prev, chord)[0] == pytest.approx(expected, rel=1e-5)


def test_holding_the_chord_adds_the_copy_gate() -> None:
    head = make_head()
    params = make_params(head, 1)
    prev = piano_roll([[62]])
    params_no_copy = params.copy()
    params_no_copy[0, -1] = -50.0  # gate ≈ 0
    params_all_copy = params.copy()
    params_all_copy[0, -1] = 50.0  # gate ≈ 1
    assert head.log_prob(params_all_copy, prev, prev)[0] == pytest.approx(0.0, abs=1e-9)
    assert head.log_prob(params_all_copy, prev, piano_roll([[61]]))[0] < -40
    assert head.log_prob(params, prev, prev)[0] > head.log_prob(params_no_copy, prev, prev)[0]


def test_draws_follow_the_probabilities() -> None:
    head = make_head()
    params = make_params(head, 1)[0]
    prev = piano_roll([[60, 63]])[0]
    rng = np.random.default_rng(7)
    n = 20000
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(n):
        chord = tuple(np.flatnonzero(head.sample(params, prev, rng)).tolist())
        counts[chord] = counts.get(chord, 0) + 1
    chords = all_chords()
    expected = np.exp(
        head.log_prob(
            np.repeat(params[None], len(chords), 0),
            piano_roll([prev.nonzero()[0]] * len(chords)),
            piano_roll(chords),
        )
    )
    observed = np.array([counts.get(c, 0) / n for c in chords])
    assert set(counts) <= set(chords)
    assert np.abs(observed - expected).max() < 0.015


def test_biases_move_the_draws() -> None:
    head = make_head()
    params = make_params(head, 1)[0]
    prev = piano_roll([[60]])[0]
    params = params.copy()
    params[-1] = -50.0  # no copy: the NADE decides

    def share_with(pitch: int, bias: StepBias) -> float:
        rng = np.random.default_rng(3)
        return float(np.mean([head.sample(params, prev, rng, bias)[pitch] for _ in range(3000)]))

    plain = share_with(62, StepBias())
    push = np.zeros(PITCHES)
    push[62] = 4.0
    assert share_with(62, StepBias(pitch_logit=push)) > plain + 0.1
    push[62] = -8.0
    assert share_with(62, StepBias(pitch_logit=push)) < 0.01

    def silent_share(bias: StepBias) -> float:
        rng = np.random.default_rng(5)
        return float(np.mean([not head.sample(params, prev, rng, bias).any() for _ in range(3000)]))

    assert silent_share(StepBias(silence=0.0)) == 0.0
    assert silent_share(StepBias(silence=50.0)) > silent_share(StepBias())


def test_hold_and_temperature_zero() -> None:
    head = make_head()
    params = make_params(head, 1)[0].copy()
    prev = piano_roll([[61, 64]])[0]
    params[-1] = 0.0  # gate 0.5
    rng = np.random.default_rng(0)
    held = np.mean(
        [
            np.array_equal(head.sample(params, prev, rng, StepBias(hold=0.0)), prev)
            for _ in range(2000)
        ]
    )
    always = [
        np.array_equal(head.sample(params, prev, rng, StepBias(hold=1e6)), prev) for _ in range(200)
    ]
    assert held < 0.5 and all(always)
    greedy = [head.sample(params, prev, rng, StepBias(temperature=0.0, hold=0.0)) for _ in range(5)]
    assert all(np.array_equal(greedy[0], g) for g in greedy)


def _every_chord_log_prob(head: PitchHead, params: np.ndarray, prev: np.ndarray) -> np.ndarray:
    chords = all_chords()
    return head.log_prob(
        np.repeat(params[None], len(chords), 0),
        np.repeat(prev[None], len(chords), 0),
        piano_roll(chords),
    )


@pytest.mark.parametrize("gate", [-3.0, 0.0, 1.5])
def test_best_guess_is_the_argmax_over_every_chord(gate: float) -> None:
    head = make_head()
    chords = piano_roll(all_chords())
    for prev_pitches in ([], [60, 62], [61, 63, 64]):
        params = make_params(head, 12, seed=11)
        params[:, -1] = gate
        prev = piano_roll([prev_pitches] * 12)
        best = head.best(params, prev)
        changed = head.best_change(params, prev)
        for row in range(12):
            lp = _every_chord_log_prob(head, params[row], prev[row])
            assert np.array_equal(best[row], chords[int(np.argmax(lp))])
            other = np.any(chords != prev[row], axis=1)
            assert np.array_equal(changed[row], chords[other][int(np.argmax(lp[other]))])
    # with the gate at 1 the previous chord is the answer
    params[:, -1] = 50.0
    assert np.array_equal(head.best(params, prev), prev)


def test_best_change_never_names_the_previous_chord_and_stops_when_told() -> None:
    head = make_head()
    params = make_params(head, 6, seed=5)
    prev = head.best_change(params, piano_roll([[]] * 6))  # each row's own favourite
    changed = head.best_change(params, prev)
    assert not np.any(np.all(changed == prev, axis=1))
    # a search cut short still answers with a chord it found, never the previous one
    short = head.best_change(params, prev, max_expansions=1)
    assert not np.any(np.all(short == prev, axis=1))
    assert head.best_change(params[:0], prev[:0]).shape == (0, PITCHES)
    exact = head.best(params, prev, changed)
    assert np.array_equal(exact, head.best(params, prev))


def test_bad_shapes_are_refused() -> None:
    head = make_head()
    with pytest.raises(ValueError, match="head inputs"):
        head.split(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="128, units"):
        PitchHead(np.zeros((12, 4)), np.zeros((12, 4)), np.zeros(128))


def test_hold_probability_is_the_gate() -> None:
    head = make_head()
    params = make_params(head, 6, seed=5)
    _, _, gate = head.split(params)
    np.testing.assert_allclose(head.hold_prob(params), 1 / (1 + np.exp(-gate.astype(float))))
