from __future__ import annotations

import pytest

from musicgend.core.voicing import (
    Voicer,
    VoicingSettings,
    note_off,
    note_on,
    panic_messages,
    place_pitches,
)


def test_change_sends_offs_then_ons_and_keeps_common_tones() -> None:
    v = Voicer(VoicingSettings(channel=2, velocity=90))
    assert v.step({60, 64, 67}) == [note_on(2, 60, 90), note_on(2, 64, 90), note_on(2, 67, 90)]
    msgs = v.step({60, 65, 69})
    assert msgs == [note_off(2, 64), note_off(2, 67), note_on(2, 65, 90), note_on(2, 69, 90)]
    assert v.step({60, 65, 69}) == []  # held, no re-strike
    assert v.release() == [note_off(2, 60), note_off(2, 65), note_off(2, 69)]
    assert v.sounding == frozenset()


def test_every_note_on_gets_a_note_off() -> None:
    import random

    rng = random.Random(0)
    v = Voicer(VoicingSettings(max_voices=3, density=0.7, max_hold_frames=4))
    on: set[int] = set()
    for _ in range(500):
        chord = set(rng.sample(range(40, 90), rng.randint(0, 5)))
        for status, pitch, vel in v.step(chord, rng.random()):
            if status & 0xF0 == 0x90 and vel > 0:
                assert pitch not in on
                on.add(pitch)
            else:
                on.remove(pitch)
        assert on == set(v.sounding)
        assert len(on) <= 3
    for _status, pitch, _ in v.release():
        on.remove(pitch)
    assert on == set()


def test_range_transpose_and_cap() -> None:
    s = VoicingSettings(transpose=12, low=48, high=72, max_voices=3)
    # 42→54, 72, 76→64, 79→67, 83→71; keep bass 54, top 72, then inner from the top: 71
    assert place_pitches({30, 60, 64, 67, 71}, s) == frozenset({54, 71, 72})
    assert place_pitches({60}, VoicingSettings(max_voices=1)) == frozenset({60})
    assert place_pitches({60, 64, 67}, VoicingSettings(max_voices=1)) == frozenset({67})
    assert place_pitches({10, 120}, VoicingSettings(low=36, high=84)) == frozenset({46, 84})


def test_density_holds_and_max_hold_releases() -> None:
    v = Voicer(VoicingSettings(density=0.5, max_hold_frames=3))
    assert v.step({60}, draw=0.9) == []  # change refused: hold silence
    assert v.step({60}, draw=0.1) == [note_on(0, 60, 80)]
    assert v.step({62}, draw=0.6) == []  # hold 60
    assert v.step({62}, draw=0.6) == []
    assert v.step({62}, draw=0.6) == [note_off(0, 60)]  # sounded 3 frames: released
    assert v.sounding == frozenset()


def test_channel_change_releases_on_the_old_channel() -> None:
    v = Voicer()
    v.step({60})
    assert v.configure(VoicingSettings(channel=5)) == [note_off(0, 60)]
    assert v.step({60}) == [note_on(5, 60, 80)]
    assert v.configure(VoicingSettings(channel=5, velocity=10, density=0.3)) == []


def test_panic_covers_sounding_notes_and_all_channels() -> None:
    v = Voicer(VoicingSettings(channel=3))
    v.step({60, 64})
    msgs = v.panic()
    assert msgs[:2] == [note_off(3, 60), note_off(3, 64)]
    ccs = msgs[2:]
    assert len(ccs) == 32
    assert {(m[0] & 0x0F) for m in ccs} == set(range(16))
    assert {(m[1], m[2]) for m in ccs} == {(64, 0), (123, 0)}
    assert v.sounding == frozenset()
    assert panic_messages() == ccs


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channel": 16},
        {"velocity": 0},
        {"low": 60, "high": 65},
        {"max_voices": 0},
        {"density": 1.5},
        {"transpose": 99},
        {"max_hold_frames": 0},
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, int | float]) -> None:
    with pytest.raises(ValueError):
        VoicingSettings(**kwargs)  # type: ignore[arg-type]
