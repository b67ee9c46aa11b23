"""Playing modes as pure state machines, fed once per frame and on every human note-on.

* ``accompany``: the machine plays every frame; the model hears human and machine together.
* ``call-response``: the machine listens while the human plays. After ``silence_frames``
  frames without the human it answers for at most ``answer_frames`` frames, then waits for
  the human to play again (one answer per call). A human note-on during an answer silences
  the machine at once, not at the next frame.
* ``solo``: the machine plays every frame from its own output only; the human is ignored
  by the model (but still logged).

Frame ``k`` is "human active" when a human pitch sounds in it or a human note-on falls in
it. :meth:`ModeMachine.end_frame` is told about frame ``k`` when it is complete and says
whether the machine plays frame ``k + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    ACCOMPANY = "accompany"
    CALL_RESPONSE = "call-response"
    SOLO = "solo"

    @classmethod
    def parse(cls, value: str) -> Mode:
        try:
            return cls(value.strip().lower().replace("_", "-"))
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown mode {value!r} (choose from {names})") from None


class CallState(StrEnum):
    LISTENING = "listening"
    ANSWERING = "answering"


@dataclass(frozen=True, slots=True)
class CallResponseSettings:
    silence_frames: int = 5
    """Frames of human silence before the machine answers (5 = 1 s at 5 fps)."""
    answer_frames: int = 20
    """Longest answer in frames (20 = 4 s at 5 fps)."""

    def __post_init__(self) -> None:
        if self.silence_frames < 1:
            raise ValueError(f"silence_frames must be >= 1, got {self.silence_frames}")
        if self.answer_frames < 1:
            raise ValueError(f"answer_frames must be >= 1, got {self.answer_frames}")


class ModeMachine:
    """Decides, frame by frame, whether the machine plays and what the model hears."""

    def __init__(
        self, mode: Mode = Mode.ACCOMPANY, call: CallResponseSettings | None = None
    ) -> None:
        self.call = call or CallResponseSettings()
        self.mode = mode
        self.state = CallState.LISTENING
        self.silent_frames = 0
        self.answered_frames = 0
        self.heard_call = False

    def set_mode(self, mode: Mode) -> bool:
        """Switch mode; True if it changed (the engine then releases the machine's notes)."""
        if mode == self.mode:
            return False
        self.mode = mode
        self.state = CallState.LISTENING
        self.silent_frames = 0
        self.answered_frames = 0
        self.heard_call = False
        return True

    @property
    def hears_human(self) -> bool:
        """Whether the human's pitches go into the model's window."""
        return self.mode != Mode.SOLO

    @property
    def answering(self) -> bool:
        return self.mode == Mode.CALL_RESPONSE and self.state == CallState.ANSWERING

    def human_note_on(self) -> bool:
        """A human key went down. True if the machine must fall silent right now."""
        if self.mode != Mode.CALL_RESPONSE:
            return False
        self.heard_call = True
        self.silent_frames = 0
        if self.state == CallState.ANSWERING:
            self.state = CallState.LISTENING
            self.answered_frames = 0
            return True
        return False

    def end_frame(self, human_active: bool) -> bool:
        """Frame ``k`` is complete; return whether the machine plays frame ``k + 1``."""
        if self.mode != Mode.CALL_RESPONSE:
            return True
        if human_active:
            self.heard_call = True
            self.silent_frames = 0
            self.state = CallState.LISTENING
            self.answered_frames = 0
            return False
        self.silent_frames += 1
        if self.state == CallState.LISTENING:
            if self.heard_call and self.silent_frames >= self.call.silence_frames:
                self.state = CallState.ANSWERING
                self.heard_call = False
                self.answered_frames = 0
            else:
                return False
        self.answered_frames += 1
        if self.answered_frames > self.call.answer_frames:
            self.state = CallState.LISTENING
            self.answered_frames = 0
            return False
        return True
