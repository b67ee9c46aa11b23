from __future__ import annotations

import pytest

from musicgend.core.modes import CallResponseSettings, CallState, Mode, ModeMachine


def test_accompany_and_solo_always_play() -> None:
    for mode in (Mode.ACCOMPANY, Mode.SOLO):
        m = ModeMachine(mode)
        assert all(m.end_frame(active) for active in (True, False, True))
        assert m.human_note_on() is False
    assert ModeMachine(Mode.ACCOMPANY).hears_human
    assert not ModeMachine(Mode.SOLO).hears_human


def test_call_response_answers_after_silence_for_a_bounded_time() -> None:
    m = ModeMachine(Mode.CALL_RESPONSE, CallResponseSettings(silence_frames=2, answer_frames=3))
    assert m.end_frame(False) is False  # nothing heard yet: no answer
    assert m.end_frame(False) is False
    plays = [m.end_frame(a) for a in [True, True, False, False, False, False, False, False]]
    # human plays 2 frames; after 2 silent frames it answers 3 frames, then waits
    assert plays == [False, False, False, True, True, True, False, False]
    assert m.state == CallState.LISTENING


def test_call_response_stops_at_once_when_the_human_plays() -> None:
    m = ModeMachine(Mode.CALL_RESPONSE, CallResponseSettings(silence_frames=1, answer_frames=10))
    m.end_frame(True)
    assert m.end_frame(False) is True
    assert m.answering
    assert m.human_note_on() is True
    assert not m.answering
    assert m.human_note_on() is False  # already listening
    assert m.end_frame(True) is False


def test_mode_switch_resets() -> None:
    m = ModeMachine(Mode.CALL_RESPONSE, CallResponseSettings(silence_frames=1))
    m.end_frame(True)
    m.end_frame(False)
    assert m.set_mode(Mode.SOLO) is True
    assert m.set_mode(Mode.SOLO) is False
    assert m.end_frame(True) is True
    assert m.set_mode(Mode.CALL_RESPONSE)
    assert m.state == CallState.LISTENING


def test_mode_parse() -> None:
    assert Mode.parse("Call_Response") == Mode.CALL_RESPONSE
    with pytest.raises(ValueError, match="unknown mode"):
        Mode.parse("jazz")
    with pytest.raises(ValueError):
        CallResponseSettings(silence_frames=0)
