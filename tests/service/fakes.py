"""Fakes for engine unit tests: a predictor that favours chosen tokens, an argmax sampler,
a recording MIDI output, and a clock the test steps frame by frame."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from musicgend.core.memory import MemoryWeights
from musicgend.core.pitchhead import PITCHES, PitchHead
from musicgend.core.tokens import token_from_pitches
from musicgend.core.vocab import Vocab
from musicgend.core.voicing import MidiBytes
from musicgend.service.engine import EngineParams, LoadedModel

CHORDS = [{60, 64, 67}, {62, 65, 69}, {59, 62, 67}, {60}, {48, 60}, {57, 60, 64}]


def small_vocab() -> Vocab:
    counts = {"e": 10}
    for i, chord in enumerate(CHORDS):
        counts[token_from_pitches(chord)] = 20 - i
    return Vocab.from_counts(counts)


class ScriptedPredictor:
    """Puts almost all mass on ``script[n % len]`` for the n-th call; records windows."""

    def __init__(self, vocab: Vocab, script: list[str]) -> None:
        self.vocab = vocab
        self.script = script
        self.calls = 0
        self.windows: list[np.ndarray] = []

    def predict(self, window: np.ndarray) -> np.ndarray:
        self.windows.append(window.copy())
        probs = np.full(len(self.vocab), 1e-6)
        probs[self.vocab.id(self.script[self.calls % len(self.script)])] = 1.0
        self.calls += 1
        return probs / probs.sum()


class ArgmaxSampler:
    def __init__(self, params: EngineParams) -> None:
        self.params = params

    def sample(self, probs: np.ndarray, prev_id: int, context_ids: object, vocab: object) -> int:
        return int(np.argmax(probs))


def model(script: list[str], name: str = "fake") -> tuple[LoadedModel, ScriptedPredictor]:
    vocab = small_vocab()
    predictor = ScriptedPredictor(vocab, script)
    return LoadedModel(predictor, vocab, name, "fake"), predictor


class RecordingOut:
    def __init__(self) -> None:
        self.sent: list[tuple[MidiBytes, int | None]] = []
        self.lock = threading.Lock()

    def send(self, data: bytes | Sequence[int], at_ns: int | None = None) -> None:
        with self.lock:
            self.sent.append((tuple(data), at_ns))

    def messages(self) -> list[MidiBytes]:
        with self.lock:
            return [m for m, _ in self.sent]


class StepClock:
    """``wait_until_ns`` blocks until the test has released time up to the deadline."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._allowed = start_ns
        self._cond = threading.Condition()
        self.stopped = False
        self.waiting_for: int | None = None

    def now_ns(self) -> int:
        with self._cond:
            return self._now

    def release_until(self, t_ns: int) -> None:
        with self._cond:
            self._allowed = max(self._allowed, t_ns)
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self.stopped = True
            self._cond.notify_all()

    def wait_until_ns(self, deadline_ns: int) -> bool:
        with self._cond:
            self.waiting_for = deadline_ns
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.stopped or self._allowed >= deadline_ns, 10.0)
            if self.stopped:
                return False
            self._now = max(self._now, deadline_ns)
            self.waiting_for = None
            return True

    def wait_waiting(self, deadline_ns: int, timeout_s: float = 5.0) -> bool:
        """Block the test until the tick thread waits for ``deadline_ns``."""
        with self._cond:
            return self._cond.wait_for(lambda: self.waiting_for == deadline_ns, timeout_s)


def forcing_head(units: int = 4) -> PitchHead:
    """A per-pitch head whose NADE weights are zero: each pitch's chance is its bias alone
    (which :class:`ScriptedHeadPredictor` sets per call)."""
    zeros = np.zeros((PITCHES, units), dtype=np.float32)
    return PitchHead(zeros, zeros, np.full(PITCHES, -30.0, dtype=np.float32))


class ScriptedHeadPredictor:
    """For a per-pitch model: head inputs that make ``script[n % len]`` (pitch sets) all but
    certain on the n-th call, whatever sounded before (copy gate shut)."""

    def __init__(self, head: PitchHead, script: list[set[int]]) -> None:
        self.head = head
        self.script = script
        self.calls = 0
        self.windows: list[np.ndarray] = []

    def predict(self, window: np.ndarray) -> np.ndarray:
        self.windows.append(window.copy())
        out = np.zeros(self.head.params_width, dtype=np.float32)
        chord = self.script[self.calls % len(self.script)]
        self.calls += 1
        out[-1] = -60.0  # the copy gate shut
        self.head.bias[:] = -30.0  # the head's only free parameter: set per call
        self.head.bias[list(chord)] = 60.0
        return out


def pitch_model(
    script: list[set[int]], pitch_input: bool = False, memory: MemoryWeights | None = None
) -> tuple[LoadedModel, ScriptedHeadPredictor]:
    """A per-pitch model playing ``script``; ``pitch_input``: one reading pitches;
    ``memory``: its piece memory's weights."""
    vocab = small_vocab()
    head = forcing_head()
    predictor = ScriptedHeadPredictor(head, script)
    loaded = LoadedModel(predictor, vocab, "fake-pitch", "fake", head, pitch_input, memory)
    return loaded, predictor
