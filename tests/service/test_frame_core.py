"""FrameCore step by step: no threads, no clock, no sleeps."""

from __future__ import annotations

import random

import pytest

from musicgend.core.clock import FrameGrid
from musicgend.core.modes import CallResponseSettings, Mode
from musicgend.core.tokens import pitches_from_token, token_from_pitches
from musicgend.core.voicing import VoicingSettings, note_off, note_on
from musicgend.service.engine import EngineParams, FrameCore, cc_value
from tests.service.fakes import ArgmaxSampler, model, pitch_model

F = 200_000_000  # ns per frame
C, DM, G = "60,64,67", "62,65,69", "59,62,67"


def make_core(script: list[str], **kw) -> tuple[FrameCore, object]:
    m, predictor = model(script)
    core = FrameCore(m, FrameGrid(0, F), ArgmaxSampler, **kw)
    core.start_at(1)
    return core, predictor


def frame(core: FrameCore, compute: bool = True) -> list:
    """One frame the way the engine runs it: compute ahead, tick, push."""
    k = core.next_frame
    if compute:
        job = core.job()
        assert job is not None
        core.offer(FrameCore.compute(job))
    messages = core.tick(k)
    core.after_tick(k)
    return messages


def test_computed_chord_is_played_on_the_tick_offs_before_ons() -> None:
    core, _ = make_core([C, DM])
    assert frame(core) == [note_on(0, 60, 80), note_on(0, 64, 80), note_on(0, 67, 80)]
    assert frame(core) == [
        note_off(0, 60),
        note_off(0, 64),
        note_off(0, 67),
        note_on(0, 62, 80),
        note_on(0, 65, 80),
        note_on(0, 69, 80),
    ]
    assert core.metrics.frames == 2
    assert core.metrics.late_frames == 0


def test_no_result_at_the_tick_holds_and_counts_a_late_frame() -> None:
    core, _ = make_core([C])
    frame(core)
    assert frame(core, compute=False) == []  # holds C
    assert core.voicer.chord == pitches_from_token(C)
    assert core.metrics.late_frames == 1


def test_a_result_after_its_tick_is_dropped_not_played() -> None:
    core, _ = make_core([C, DM])
    job = core.job()
    assert job is not None
    core.tick(1)  # the tick came first
    core.after_tick(1)
    assert core.offer(FrameCore.compute(job)) is False
    assert core.metrics.late_results == 1
    assert core.metrics.late_frames == 1
    assert core.voicer.sounding == frozenset()


def test_input_after_the_snapshot_makes_the_result_stale_but_on_time() -> None:
    core, _ = make_core([C, DM])
    job = core.job()
    assert job is not None
    result = FrameCore.compute(job)
    core.on_input(50_000_000, (0x90, 72, 100))  # arrives while frame 0 is in progress
    core.offer(result)
    assert core.tick(1)  # still played
    assert core.metrics.stale_frames == 1


def test_window_holds_human_and_machine_of_each_frame() -> None:
    core, predictor = make_core([C])
    vocab = core.model.vocab
    # human holds the D minor triad through frame 1 (t = 0.2 .. 0.4 s)
    for p in (62, 65, 69):
        core.on_input(F + 1_000_000, (0x90, p, 90))
    frame(core)  # tick 1: machine plays C during frame 1
    for p in (62, 65, 69):
        core.on_input(2 * F + 10_000_000, (0x80, p, 0))
    frame(core)  # tick 2: frame 1 goes into the window
    window = core.window.array()
    both = pitches_from_token(C) | {62, 65, 69}
    assert window[-1] == vocab.nearest(both)
    # the job computed ahead for frame 2 saw the provisional frame 1 (keys held to its end)
    assert predictor.windows[1][-1] == vocab.nearest(both)


def test_solo_ignores_the_human_in_the_window() -> None:
    core, _ = make_core([C], params=EngineParams(mode=Mode.SOLO))
    core.on_input(F + 1, (0x90, 50, 90))
    frame(core)
    frame(core)
    assert core.window.array()[-1] == core.model.vocab.id(C)
    assert core.history[-1] == pitches_from_token(C)  # what a model swap re-reads


def test_echo_of_own_output_is_not_heard() -> None:
    core, _ = make_core([C])
    messages = frame(core)
    for m in messages:
        core.note_sent(F, m)
    accepted, _ = core.on_input(F + 5_000_000, (0x90, 60, 80))  # loop-back, 5 ms later
    assert not accepted
    accepted, _ = core.on_input(F + 6_000_000, (0x80, 60, 0))  # its release
    assert not accepted
    assert core.metrics.echo_dropped == 2
    assert core.quantiser.held_pitches == frozenset()
    accepted, _ = core.on_input(F + 60_000_000, (0x90, 60, 80))  # the human, later
    assert accepted
    assert core.quantiser.held_pitches == {60}
    # a player striking the machine's pitch at the same moment is no echo: another velocity
    accepted, _ = core.on_input(F + 2_000_000, (0x90, 64, 97))
    assert accepted
    assert core.metrics.echo_dropped == 2


def test_call_response_stops_at_once_when_the_human_plays() -> None:
    call = CallResponseSettings(silence_frames=1, answer_frames=10)
    core, _ = make_core([C], params=EngineParams(mode=Mode.CALL_RESPONSE), call=call)
    assert frame(core) == []  # tick 1: nothing heard yet, no answer
    core.on_input(F + 1, (0x90, 62, 90))
    core.on_input(F + 50_000_000, (0x80, 62, 0))
    assert frame(core) == []  # tick 2: frame 1 had the human: listening
    assert frame(core)  # tick 3: frame 2 silent → answers
    t = 3 * F + 1_000
    accepted, messages = core.on_input(t, (0x90, 64, 90))
    assert accepted
    assert messages == [note_off(0, 60), note_off(0, 64), note_off(0, 67)]
    assert frame(core) == []


def test_cc_bindings_change_parameters() -> None:
    core, _ = make_core([C], cc_bindings={21: "temperature", 22: "mode", 23: "density"})
    core.on_input(0, (0xB0, 21, 127))
    assert core.params.temperature == pytest.approx(2.0)
    frame(core)
    _, messages = core.on_input(F + 1, (0xB0, 22, 127))
    assert core.params.mode == Mode.SOLO
    assert messages == [note_off(0, 60), note_off(0, 64), note_off(0, 67)]  # mode change
    core.on_input(F + 2, (0xB0, 23, 0))
    assert core.params.density == 0.0
    assert core.voicer.settings.density == 0.0
    assert cc_value("mode", 0) == Mode.ACCOMPANY
    assert cc_value("mode", 64) == Mode.CALL_RESPONSE
    with pytest.raises(ValueError):
        FrameCore(core.model, core.grid, ArgmaxSampler, cc_bindings={21: "volume"})


def test_set_params_checks_values() -> None:
    core, _ = make_core([C])
    with pytest.raises(ValueError, match="temperature"):
        core.set_params(temperature=0)
    with pytest.raises(ValueError, match="unknown parameter"):
        core.set_params(volume=3)
    with pytest.raises(ValueError, match="unknown mode"):
        core.set_params(mode="jazz")
    core.set_params(mode="call-response", top_p=0.5, seed=3)
    assert core.params.mode == Mode.CALL_RESPONSE
    assert core.sampler.params.top_p == 0.5  # type: ignore[attr-defined]


def test_a_refused_setting_changes_nothing() -> None:
    def picky(params: EngineParams) -> ArgmaxSampler:
        if params.temperature > 5:
            raise ValueError("too hot for this sampler")
        return ArgmaxSampler(params)

    core, _ = make_core([C])
    core._sampler_factory = picky
    frame(core)
    before = (core.params, core.voicer.settings, core.modes.mode, core.sampler)
    with pytest.raises(ValueError, match="too hot"):
        core.set_params(mode="solo", density=0.0, temperature=6)
    assert (core.params, core.voicer.settings, core.modes.mode, core.sampler) == before
    core.set_params(density=0.5)  # and the next setting applies as usual
    assert core.voicer.settings.density == 0.5


def test_parameters_take_their_whole_documented_range() -> None:
    from musicgend.service.engine import default_sampler, pitch_sampler
    from tests.service.fakes import pitch_model

    params = EngineParams()
    for hold_bias in (-10.0, 10.0):  # the config's, MQTT's and the CC's bounds
        bias = params.updated(hold_bias=hold_bias)
        default_sampler(bias)
        pitch_sampler(pitch_model([{60}])[0], bias)
    assert params.updated(seed=2**63 - 1).seed == 2**63 - 1  # exact, not through a float
    assert params.updated(top_k=10**6).top_k == 10**6
    assert params.updated(seed=3).updated(seed=None).seed is None
    core, _ = make_core([C])
    core.set_params(seed=3)
    seeded = core._rng
    core.set_params(seed=None)  # the voicer's draws are unseeded again too
    assert core._rng is not seeded and core.params.seed is None
    assert params.updated(top_k=4.0).top_k == 4
    with pytest.raises(ValueError, match="must be an integer"):
        params.updated(top_k=4.5)
    with pytest.raises(ValueError, match="finite"):
        params.updated(temperature=float("nan"))
    with pytest.raises(ValueError, match="out of range"):
        params.updated(temperature=10**400)
    with pytest.raises(ValueError, match="top_k must be in"):
        params.updated(top_k=10**7)


def test_model_swap_happens_at_a_frame_boundary_with_note_offs() -> None:
    core, _ = make_core([C])
    frame(core)
    new, new_predictor = model([G], name="new")
    core.pending_model = new
    messages = frame(core)  # the old model's result is dropped; the new one starts clean
    assert messages == [note_off(0, 60), note_off(0, 64), note_off(0, 67)]
    assert core.model is new
    assert core.metrics.late_frames == 0
    assert frame(core) == [note_on(0, 59, 80), note_on(0, 62, 80), note_on(0, 67, 80)]
    assert new_predictor.calls == 1


def test_missed_ticks_catch_up_without_replaying() -> None:
    core, _ = make_core([C])
    frame(core)
    messages = core.tick(5)  # the tick thread overslept frames 2..4
    core.after_tick(5)
    assert messages == []
    assert core.metrics.missed_ticks == 3
    assert core.next_frame == 6
    assert core.frame_done == 4
    assert core.job() is not None


def test_every_note_on_gets_its_note_off_whatever_happens() -> None:
    rng = random.Random(1)
    vocab_tokens = [C, DM, G, "60", "48,60", "e"]
    core, _ = make_core(
        vocab_tokens, voicing=VoicingSettings(max_voices=2), params=EngineParams(density=0.7)
    )
    on: set[tuple[int, int]] = set()

    def apply(messages: list) -> None:
        for status, pitch, velocity in messages:
            key = (status & 0x0F, pitch)
            if status & 0xF0 == 0x90 and velocity:
                assert key not in on
                on.add(key)
            elif status & 0xF0 in (0x80, 0x90):
                on.discard(key)
            elif status & 0xF0 == 0xB0 and pitch == 123:
                on.difference_update({k for k in on if k[0] == status & 0x0F})

    for _ in range(300):
        k = core.next_frame
        r = rng.random()
        if r < 0.05:
            apply(core.set_params(mode=rng.choice(list(Mode))))
        elif r < 0.08:
            apply(core.panic())
        elif r < 0.1:
            apply(core.configure_voicing(VoicingSettings(channel=rng.randrange(16))))
        elif r < 0.3:
            t = core.grid.deadline_ns(k - 1) + rng.randrange(F)
            apply(core.on_input(t, (0x90, rng.randrange(50, 70), 80))[1])
        apply(frame(core, compute=rng.random() < 0.9))
        assert {p for _, p in on} == set(core.voicer.sounding)
    apply(core.release())
    assert on == set()


def test_unk_is_never_played() -> None:
    core, _ = make_core(["<unk>"])
    assert frame(core) == []
    assert core.voicer.chord == frozenset()
    assert token_from_pitches(core.voicer.chord) == "e"


def test_a_per_pitch_model_plays_chords_the_vocabulary_lacks() -> None:
    odd = {61, 66, 70}  # not in the fakes' vocabulary
    m, predictor = pitch_model([odd, {60, 64, 67}])
    core = FrameCore(m, FrameGrid(0, F), ArgmaxSampler, EngineParams(scale_penalty=1.0))
    core.start_at(1)
    assert core.pitch_sampler is not None
    assert frame(core) == [note_on(0, 61, 80), note_on(0, 66, 80), note_on(0, 70, 80)]
    assert core.voicer.chord == frozenset(odd)
    job = core.job()
    assert job is not None and job.prev_chord == frozenset(odd)
    assert job.context[-1] == frozenset(odd)  # the window's chords, newest last
    assert len(job.context) <= core.window_frames
    core.offer(FrameCore.compute(job))
    core.tick(core.next_frame)
    assert core.voicer.chord == frozenset({60, 64, 67})
    # settings reach the per-pitch sampler too
    core.set_params(temperature=0.5)
    assert core.pitch_sampler is not None and core.pitch_sampler.params.temperature == 0.5
    assert predictor.calls == 2


def test_a_model_reading_pitches_sees_the_chords_themselves() -> None:
    """Its window holds each frame's pitches as a row (the human's unknown chord and its own
    included, not their nearest known chord), also after a swap from a token model."""
    odd = {61, 66, 70}  # not in the fakes' vocabulary
    m, predictor = pitch_model([odd, {60, 64, 67}], pitch_input=True)
    core = FrameCore(m, FrameGrid(0, F), ArgmaxSampler, EngineParams(scale_penalty=1.0))
    core.start_at(1)
    core.on_input(int(0.5 * F), (0x90, 50, 90))  # the human plays 50 + 51 in frame 0
    core.on_input(int(0.6 * F), (0x90, 51, 90))
    frame(core)  # plays odd
    frame(core)
    last = predictor.windows[-1]
    assert last.shape == (core.window_frames, 128)
    held = {50, 51}
    assert set(last[-1].nonzero()[0]) == held | odd  # frame 1: the human's keys + odd
    assert set(last[-2].nonzero()[0]) == held  # frame 0: the human alone
    assert not last[:-2].any()  # silence before

    tokens, _ = model([C])
    core.pending_model = tokens
    frame(core, compute=False)
    assert core.window.array().dtype.kind == "i"  # the token model's window: ids again
    back, again = pitch_model([{60}], pitch_input=True)
    core.pending_model = back
    frame(core, compute=False)
    frame(core)
    window = again.windows[-1]
    assert set(window[-4].nonzero()[0]) == held | odd  # the history re-read as pitches


def test_active_sensing_that_stops_releases_the_players_keys() -> None:
    ms = 1_000_000
    core, _ = make_core([C])
    assert core.on_input(50 * ms, bytes([0x90, 60, 100])) == (True, [])
    assert core.on_input(60 * ms, bytes([0xB0, 64, 127])) == (True, [])  # pedal down
    # without Active Sensing a long silence is only a long silence
    assert not core.check_input_alive(5_000 * ms)
    # one stray keep-alive arms nothing; it is not music: not logged, not ignored input
    assert core.on_input(5_100 * ms, bytes([0xFE])) == (False, [])
    assert core.metrics.ignored_input == 0
    assert not core.check_input_alive(6_000 * ms)
    assert core.quantiser.held_pitches == {60}
    # a steady keep-alive (two within 400 ms) does
    core.on_input(6_100 * ms, bytes([0xFE]))
    core.on_input(6_350 * ms, bytes([0xFE]))
    assert not core.check_input_alive(6_750 * ms)  # 400 ms: still within the margin
    core.heard(6_750 * ms)  # MIDI clock counts as hearing from the input
    assert not core.check_input_alive(7_150 * ms)
    version = core.version
    assert core.check_input_alive(7_250 * ms)  # 500 ms of nothing: the cable is out
    assert core.quantiser.held_pitches == frozenset()
    assert core.metrics.input_losses == 1 and core.version > version
    assert core.metrics.snapshot()["input_losses"] == 1
    assert not core.check_input_alive(9_000 * ms)  # once; watching again when steady again
    core.on_input(9_100 * ms, bytes([0x90, 62, 90]))
    core.on_input(9_200 * ms, bytes([0xFE]))
    assert not core.check_input_alive(10_000 * ms)
    assert core.quantiser.held_pitches == {62}


def test_the_piece_memory_hears_every_frame_and_recalls_what_followed() -> None:
    """A model with a piece memory: every committed frame (the human's keys and the
    machine's chord) goes into the memory; the job carries the recall after the window
    with its provisional frame, and the sampler plays it at its share; ``memory = 0``
    plays the network alone."""
    from musicgend.core.memory import LEVELS, MemoryWeights, Recall

    sure = MemoryWeights((0.99,) * LEVELS, (0.99,) * LEVELS)
    a, b, c, x = {60}, {62}, {64}, {70}
    m, _ = pitch_model([a, b, c, a, b, x, x, x], memory=sure)
    params = EngineParams(scale_penalty=1.0, short_note_penalty=1.0, seed=1, memory=0.0)
    core = FrameCore(m, FrameGrid(0, F), ArgmaxSampler, params)
    core.start_at(1)
    for _ in range(5):  # a b c a b: the memory off, the script plays
        frame(core)
    assert core.voicer.chord == frozenset(b)
    assert len(core.memory) == 5  # frames 0 (silence) to 4
    core.set_params(memory=1.0)
    job = core.job()
    assert job is not None
    assert job.recall == Recall(frozenset(c), 2)  # "a b" was followed by c
    core.offer(FrameCore.compute(job))
    core.tick(core.next_frame)
    core.after_tick(core.next_frame - 1)
    assert core.voicer.chord == frozenset(c)  # the recall, not the script's x
    core.set_params(memory=0.0)
    frame(core)
    assert core.voicer.chord == frozenset(x)
    with pytest.raises(ValueError, match="memory must be in"):
        core.set_params(memory=1.5)


def test_a_model_without_memory_gets_no_recall() -> None:
    m, _ = pitch_model([{60}, {60}])
    core = FrameCore(m, FrameGrid(0, F), ArgmaxSampler, EngineParams())
    core.start_at(1)
    frame(core)
    frame(core)
    job = core.job()
    assert job is not None and job.recall is None
    assert len(core.memory) == 2  # it listens all the same: a model swap may bring weights
