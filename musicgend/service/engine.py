"""The real-time engine: one chord per frame, computed ahead, committed on the tick.

Frame ``k`` starts at the absolute deadline ``t0 + k × 200 ms``. At that tick the machine
changes from its chord of frame ``k - 1`` to its chord of frame ``k``: note-offs for pitches
that stop, then note-ons for pitches that start (:mod:`musicgend.core.voicing`).

The chord of frame ``k`` is sampled from the model's answer to the window of frames
``..k-1``. Frame ``k - 1`` is only complete at tick ``k``, so the engine computes ahead:

1. right after tick ``k - 1`` it snapshots the window with a *provisional* frame ``k - 1``
   (keys held now are assumed held to the end of the frame) and runs inference + sampling
   in a dedicated worker thread (:class:`FrameCore.compute` is pure computation);
2. every input event that changes the frames bumps a version number; when the worker is
   done and the version moved, it computes again with the new snapshot ("recompute only if
   input arrives late");
3. at tick ``k`` a dedicated tick thread, woken on the absolute deadline, takes the result
   prepared for frame ``k``, voices it and writes the messages. Decision latency is the time
   from the deadline to the last message of the frame written.

A result computed from an older version is still played (it is on time and misses at most
the last few milliseconds of input); it is counted as ``stale_frames``. When no result for
frame ``k`` is ready at the tick, the machine holds what it plays and ``late_frames`` counts
it; a result that arrives after its tick is dropped (``late_results``), never played late.
The asyncio loop never waits for the worker or the tick thread.

Echo guard: an incoming note-on that repeats a note-on the engine sounded within
``echo_window_ns`` (30 ms): same status byte (channel), pitch and velocity, is dropped with
its note-off, so a routing loop that feeds the output back into the input doesn't teach the
model its own playing (Notochord does the same). Matching the velocity too keeps a player
who strikes the machine's pitch at the same moment from being taken for an echo.

Every note-on gets its note-off: on chord changes, mode changes, model swaps, stop, panic,
and in ``finally`` when the tick thread or the engine task fails.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from musicgend.core.clock import (
    CLOCK_STATUSES,
    NS_PER_S,
    Clock,
    FrameGrid,
    FrameTimeline,
    MidiClockFollower,
    bpm_for_frame_ns,
    frame_ns_for_bpm,
)
from musicgend.core.memory import MemoryWeights, PieceMemory, Recall
from musicgend.core.modes import CallResponseSettings, Mode, ModeMachine
from musicgend.core.pianoroll import PEDAL_CC, StreamQuantiser
from musicgend.core.sampling_defaults import (
    DEFAULT_SCALE_PENALTY,
    DEFAULT_SHORT_NOTE_PENALTY,
    LOG_HOLD_BIAS,
)
from musicgend.core.tokens import PitchSet, pitches_from_token
from musicgend.core.vocab import SILENCE_ID, UNK_ID, Vocab
from musicgend.core.voicing import MidiBytes, Voicer, VoicingSettings
from musicgend.core.window import WINDOW_FRAMES, WindowReader
from musicgend.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    from musicgend.core.pitchhead import PitchHead
    from musicgend.core.pitchsampler import PitchSampler
    from musicgend.core.sampler import SamplerParams

log = logging.getLogger(__name__)

ECHO_WINDOW_NS = 30_000_000
FIRST_FRAME_LEAD_NS = 50_000_000
LATENCY_SAMPLES = 20_000
ACTIVE_SENSING = 0xFE
SENSING_TIMEOUT_NS = 450_000_000
"""MIDI 1.0: a receiver that has heard Active Sensing and then nothing for 300 ms treats the
connection as lost and ends every note; 150 ms more here for the input's way through USB,
JACK periods and the event loop (a false alarm would drop keys a player holds)."""
SENSING_STEADY_NS = 400_000_000
"""The check starts after two keep-alives this close: a steady sender, not a stray one."""
MAX_TOP_K = 1_000_000
"""``top_k`` at most (any value above the vocabulary's size keeps every chord)."""
MEMORY_FRAMES = 3_000
"""Frames the piece memory keeps: the last 10 minutes at fs 5 (about 4 MB at most, 30 µs a
frame; `bench/piece_memory.py`)."""


# -- seams ---------------------------------------------------------------------------------


class Predictor(Protocol):
    """One forward pass: a window (token ids ``(window,) int32``, or pitch rows ``(window,
    128)`` for a model reading pitches) → ``(V,)`` probabilities or a head's inputs."""

    def predict(self, window: np.ndarray) -> np.ndarray: ...


class TokenSampler(Protocol):
    """Draws the next token id from probabilities (``prev_id``: the chord that sounds;
    ``context_ids``: the window the model saw; ``vocab``: the model's, for the key bias)."""

    def sample(
        self, probs: np.ndarray, prev_id: int, context_ids: np.ndarray, vocab: Vocab
    ) -> int: ...


class MidiOut(Protocol):
    """The output port (:class:`musicgend.io.midi.MidiPorts`). Never blocks. ``at_ns``
    (monotonic clock) is when the message is meant to sound; None = now."""

    def send(self, data: bytes | Sequence[int], at_ns: int | None = None) -> None: ...


class EventLog(Protocol):
    """The session journal (:class:`musicgend.io.session.SessionRecorder`). Never blocks."""

    def human(self, data: bytes, t_ns: int) -> None: ...

    def machine(self, data: bytes, t_ns: int) -> None: ...


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for the engine: its predictor, vocabulary and a name for status;
    ``head`` for a per-pitch model (its predictor returns the head's inputs, and its chords
    are drawn by :class:`~musicgend.core.pitchsampler.PitchSampler`); ``pitch_input`` for a
    model that reads its window as pitches (``reader`` fills its window either way)."""

    predictor: Predictor
    vocab: Vocab
    name: str
    runtime: str = ""
    head: PitchHead | None = None
    pitch_input: bool = False
    memory: MemoryWeights | None = None
    """The piece memory's weights (a per-pitch model tuned with ``tune-memory``)."""
    reader: WindowReader = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reader", WindowReader(self.vocab, self.pitch_input))

    @property
    def window_frames(self) -> int | None:
        """The frames of context the model reads (None where its predictor doesn't say)."""
        frames = getattr(self.predictor, "window_frames", None)
        return frames if isinstance(frames, int) else None

    def warm_up(self, window_frames: int = WINDOW_FRAMES) -> None:
        """One inference, the vocabulary's nearest-chord table and the sampler's tables for
        this vocabulary, before the model's first tick (building the sampler's tables is a
        Python loop over the vocabulary, ~0.1 s at 20,000 tokens: at the first frame it held
        up JACK's process callback long enough for the server to report overruns)."""
        from musicgend.core.sampler import scale_table

        out = self.predictor.predict(self.reader.window(window_frames).array())
        if not self.pitch_input:  # a model reading pitches never needs the nearest chord
            self.vocab.nearest({60, 61, 62, 63, 64})
        if self.head is not None:
            from musicgend.core.pitchsampler import PitchSampler

            PitchSampler(self.head).sample(out, frozenset({60, 64}), [frozenset({60, 64})])
        else:
            scale_table(self.vocab)


@dataclass(frozen=True)
class EngineParams:
    """Everything about playing that can change while the engine runs."""

    mode: Mode = Mode.ACCOMPANY
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    density: float = 1.0
    hold_bias: float = LOG_HOLD_BIAS
    seed: int | None = None
    scale_penalty: float = DEFAULT_SCALE_PENALTY
    short_note_penalty: float = DEFAULT_SHORT_NOTE_PENALTY
    memory: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.temperature <= 10.0:
            raise ValueError(f"temperature must be in (0, 10], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be in [0, {MAX_TOP_K}], got {self.top_k}")
        if not 0.0 <= self.density <= 1.0:
            raise ValueError(f"density must be in [0, 1], got {self.density}")
        if not -10.0 <= self.hold_bias <= 10.0:
            raise ValueError(f"hold_bias must be in [-10, 10], got {self.hold_bias}")
        for name in ("scale_penalty", "short_note_penalty", "memory"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def updated(self, **changes: Any) -> EngineParams:
        """A copy with ``changes`` applied and checked; unknown names raise ValueError."""
        unknown = sorted(set(changes) - set(self.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r}")
        if "mode" in changes and not isinstance(changes["mode"], Mode):
            changes["mode"] = Mode.parse(str(changes["mode"]))
        for name in (
            "temperature",
            "top_p",
            "density",
            "hold_bias",
            "scale_penalty",
            "short_note_penalty",
            "memory",
        ):
            if name in changes:
                changes[name] = _number(name, changes[name], float)
        if "top_k" in changes:
            changes["top_k"] = _number("top_k", changes["top_k"], int)
        if changes.get("seed") is not None:
            changes["seed"] = _number("seed", changes["seed"], int)
        return replace(self, **changes)

    def public(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "density": self.density,
            "hold_bias": self.hold_bias,
            "seed": self.seed,
            "scale_penalty": self.scale_penalty,
            "short_note_penalty": self.short_note_penalty,
            "memory": self.memory,
        }


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return kind(value)
    except OverflowError:
        raise ValueError(f"{name} is out of range ({len(str(value))} digits)") from None


CC_PARAMS = ("temperature", "top_p", "top_k", "density", "hold_bias", "mode")
_MODES = tuple(Mode)


def cc_value(param: str, value: int) -> Any:
    """A controller value 0..127 as a parameter value.

    temperature 0.05..2.0, top_p 0.01..1, top_k 0..127 (0 = off), density 0..1,
    hold_bias −5..5, mode: thirds of the range → accompany, call-response, solo.
    """
    x = max(0, min(127, value)) / 127
    if param == "temperature":
        return 0.05 + 1.95 * x
    if param == "top_p":
        return max(0.01, x)
    if param == "top_k":
        return max(0, min(127, value))
    if param == "density":
        return x
    if param == "hold_bias":
        return 10.0 * x - 5.0
    if param == "mode":
        return _MODES[min(len(_MODES) - 1, value * len(_MODES) // 128)]
    raise ValueError(f"parameter {param!r} can't be bound to a CC (choose from {CC_PARAMS})")


def sampler_params(params: EngineParams) -> SamplerParams:
    """The sampler's settings for these parameters. ``hold_bias`` is in log-probability
    units here (0 = none, < 0 changes chords more often); the sampler takes the factor
    ``exp(hold_bias)``. The other settings (minimum hold, silence bias) are the sampler's
    defaults."""
    from musicgend.core.sampler import SamplerParams

    return SamplerParams(
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        hold_bias=float(np.exp(params.hold_bias)),
        scale_penalty=params.scale_penalty,
        short_note_penalty=params.short_note_penalty,
        memory=params.memory,
    )


def default_sampler(params: EngineParams) -> TokenSampler:
    """:class:`musicgend.core.sampler.Sampler` for these parameters (:func:`sampler_params`)."""
    from musicgend.core.sampler import Sampler

    return Sampler(sampler_params(params), seed=params.seed)


def pitch_sampler(model: LoadedModel, params: EngineParams) -> PitchSampler | None:
    """A per-pitch model's :class:`PitchSampler` for these parameters (else None)."""
    if model.head is None:
        return None
    from musicgend.core.pitchsampler import PitchSampler

    return PitchSampler(model.head, sampler_params(params), seed=params.seed, memory=model.memory)


# -- metrics --------------------------------------------------------------------------------


def percentiles_ms(samples_ns: np.ndarray) -> dict[str, float | None]:
    """p50, p99 (linear between ranks, as ``np.percentile``) and max, in ms.

    Not ``np.percentile``: its first call imports ``numpy.ma``, and an import during play
    holds the GIL for tens of milliseconds, so the JACK thread misses cycles (MIDI clock ticks
    came twice or not at all, measured)."""
    values = np.sort(samples_ns.astype(np.int64, copy=False))
    if values.size == 0:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.interp(
        [0.5 * (values.size - 1), 0.99 * (values.size - 1)], np.arange(values.size), values
    )
    return {
        "p50": round(float(p50) / 1e6, 4),
        "p99": round(float(p99) / 1e6, 4),
        "max": round(float(values.max()) / 1e6, 4),
    }


class SampleRing:
    """The last ``capacity`` samples (int64) in one fixed array: memory doesn't grow with the
    samples (a deque of ints grew by ~36 bytes a sample for the first hour), and a read
    cursor hands out every sample appended since the last :meth:`take_new`.

    One thread appends, others read: :meth:`append` writes the value before it counts it, so
    a reader never sees a sample that isn't there yet."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a ring holds at least one sample")
        self._samples = np.zeros(capacity, dtype=np.int64)
        self._written = 0  # samples ever appended
        self._taken = 0  # samples handed out by take_new (or overwritten before)

    def append(self, value: int) -> None:
        self._samples[self._written % len(self._samples)] = value
        self._written += 1

    def __len__(self) -> int:
        return min(self._written, len(self._samples))

    def _since(self, start: int, end: int) -> np.ndarray:
        start = max(start, end - len(self._samples))
        return self._samples[np.arange(start, end) % len(self._samples)]

    def values(self) -> np.ndarray:
        """The samples held, oldest first (a copy)."""
        return self._since(0, self._written)

    def take_new(self) -> np.ndarray:
        """The samples appended since the last call, oldest first (at most ``capacity``: older
        ones were overwritten)."""
        end = self._written
        new = self._since(self._taken, end)
        self._taken = end
        return new


@dataclass
class EngineMetrics:
    """Counters and recent timings. Written by the tick/worker threads, read anywhere."""

    frames: int = 0
    late_frames: int = 0
    stale_frames: int = 0
    late_results: int = 0
    missed_ticks: int = 0
    inference_errors: int = 0
    echo_dropped: int = 0
    input_events: int = 0
    ignored_input: int = 0
    recomputes: int = 0
    latency_ns: SampleRing = field(default_factory=lambda: SampleRing(LATENCY_SAMPLES))
    """Decision latencies; :meth:`take_unread_latency_ms` reads those not handed out yet."""
    inference_ns: SampleRing = field(default_factory=lambda: SampleRing(LATENCY_SAMPLES))
    last_tick_ns: int = 0
    last_frame_late: bool = False
    clock_losses: int = 0
    input_losses: int = 0
    """Active Sensing stopped (a cable pulled): the player's held keys were released."""

    def take_unread_latency_ms(self) -> list[float]:
        """Every decision latency since the previous call, oldest first, in ms (so that a
        reader can compute exact percentiles over any stretch of time)."""
        return [round(v / 1e6, 4) for v in self.latency_ns.take_new().tolist()]

    def snapshot(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "frame_latency_ms": percentiles_ms(self.latency_ns.values()),
            "inference_ms": percentiles_ms(self.inference_ns.values()),
            "late_frames": self.late_frames,
            "stale_frames": self.stale_frames,
            "late_results": self.late_results,
            "missed_ticks": self.missed_ticks,
            "inference_errors": self.inference_errors,
            "input_events": self.input_events,
            "echo_dropped": self.echo_dropped,
            "ignored_input": self.ignored_input,
            "recomputes": self.recomputes,
            "clock_losses": self.clock_losses,
            "input_losses": self.input_losses,
        }


# -- the frame logic (no threads, no clock: testable step by step) -------------------------


@dataclass(frozen=True)
class Job:
    """A snapshot to compute: the window that predicts ``frame``."""

    frame: int
    version: int
    window: np.ndarray
    prev_id: int
    """The token sampler's previous chord as a token id (−1 for a per-pitch model, which
    draws from ``prev_chord``)."""
    model: LoadedModel
    sampler: TokenSampler
    prev_chord: PitchSet = frozenset()
    """The chord that sounds (a per-pitch model's previous chord)."""
    context: tuple[PitchSet, ...] = ()
    """The window's chords, oldest first (per-pitch models: key and short-note bias)."""
    pitch_sampler: PitchSampler | None = None
    recall: Recall | None = None
    """The piece memory's recall after the window (models with a memory)."""


@dataclass(frozen=True)
class Result:
    frame: int
    version: int
    chord: PitchSet
    model: LoadedModel
    infer_ns: int


SamplerFactory = Callable[[EngineParams], TokenSampler]


class FrameCore:
    """The engine's state and its frame logic. Not thread-safe: :class:`Engine` locks it.

    Frame indices are absolute grid frames. :meth:`tick` commits frame ``k`` and
    :meth:`job` snapshots the window that predicts the next frame.
    """

    def __init__(
        self,
        model: LoadedModel,
        grid: FrameTimeline,
        sampler_factory: SamplerFactory,
        params: EngineParams | None = None,
        voicing: VoicingSettings | None = None,
        call: CallResponseSettings | None = None,
        cc_bindings: Mapping[int, str] | None = None,
        window_frames: int = WINDOW_FRAMES,
        echo_window_ns: int = ECHO_WINDOW_NS,
        metrics: EngineMetrics | None = None,
        on_params: Callable[[EngineParams], None] | None = None,
    ) -> None:
        self.model = model
        self.grid = grid
        self.params = params or EngineParams()
        self._sampler_factory = sampler_factory
        self.sampler = sampler_factory(self.params)
        self.pitch_sampler = pitch_sampler(model, self.params)
        base_voicing = voicing or VoicingSettings()
        self.voicer = Voicer(replace(base_voicing, density=self.params.density))
        self.modes = ModeMachine(self.params.mode, call)
        self.cc_bindings = dict(cc_bindings or {})
        for number, name in self.cc_bindings.items():
            if name not in CC_PARAMS or not 0 <= number <= 119:
                raise ValueError(f"bad CC binding {number} → {name!r}")
        self.window_frames = window_frames
        self.echo_window_ns = echo_window_ns
        self.metrics = metrics or EngineMetrics()
        self.on_params = on_params
        self.quantiser = StreamQuantiser(fs=round(grid.fs))
        self._rng = random.Random(self.params.seed)
        # the window's frames as chords (it holds them as ids or rows): a swap re-reads them
        self.history: collections.deque[PitchSet] = collections.deque(maxlen=window_frames)
        # every frame of the last 10 minutes, for the piece memory (models that have one)
        self.memory = PieceMemory(capacity_frames=MEMORY_FRAMES)
        self.window = model.reader.window(window_frames)
        self.next_frame = 0
        self.frame_done = -1  # last frame pushed into the window
        self.machine_prev: PitchSet = frozenset()  # the model chord of frame next_frame - 1
        self.version = 0
        self.result: Result | None = None
        self.playing = True
        self.clock_running = True  # False while the MIDI clock is stopped or lost
        self.pending_model: LoadedModel | None = None
        self._last_input_s = 0.0
        self._onset_frames: collections.deque[int] = collections.deque(maxlen=64)
        self._sent_on_ns: dict[tuple[int, int, int], int] = {}  # (status, pitch, velocity)
        self._echo_open: set[int] = set()
        self._pending_human: PitchSet = frozenset()
        self._sensing = False  # the input sends Active Sensing steadily
        self._sensing_ns: int | None = None  # the last keep-alive's time
        self._heard_ns = 0  # when the input last sent anything

    # -- input ------------------------------------------------------------------------------
    def start_at(self, frame: int) -> None:
        """The first frame to commit (frames before it are silence in the window)."""
        self.next_frame = frame
        self.frame_done = frame - 2
        self.version += 1

    def heard(self, t_ns: int) -> None:
        """The input sent something (any message, MIDI clock included)."""
        self._heard_ns = max(self._heard_ns, t_ns)

    def on_input(self, t_ns: int, message: Sequence[int]) -> tuple[bool, list[MidiBytes]]:
        """A human message. Returns (log it: not an echo, messages to send at once)."""
        if not message:
            return False, []
        self.heard(t_ns)
        if message[0] == ACTIVE_SENSING:  # a keep-alive, not music: not logged
            last = self._sensing_ns
            self._sensing_ns = t_ns
            if last is not None and 0 <= t_ns - last <= SENSING_STEADY_NS:
                self._sensing = True
            return False, []
        status = message[0] & 0xF0
        if status in (0x80, 0x90) and len(message) >= 3:
            pitch, velocity = message[1] & 0x7F, message[2] & 0x7F
            is_on = status == 0x90 and velocity > 0
            if is_on:
                sent = self._sent_on_ns.get((message[0], pitch, velocity))
                if sent is not None and 0 <= t_ns - sent <= self.echo_window_ns:
                    self._echo_open.add(pitch)
                    self.metrics.echo_dropped += 1
                    return False, []
            elif pitch in self._echo_open:  # the release of an echoed note
                self._echo_open.discard(pitch)
                self.metrics.echo_dropped += 1
                return False, []
            t_s = self._time_s(t_ns)
            self.metrics.input_events += 1
            self.version += 1
            if not is_on:
                self.quantiser.note_off(t_s, pitch)
                return True, []
            self.quantiser.note_on(t_s, pitch, velocity)
            self._onset_frames.append(self.grid.frame_at(t_ns))
            if self.modes.human_note_on():
                return True, self.voicer.release()
            return True, []
        if status == 0xB0 and len(message) >= 3:
            number, value = message[1] & 0x7F, message[2] & 0x7F
            self.metrics.input_events += 1
            if number == PEDAL_CC:
                self.quantiser.control_change(self._time_s(t_ns), number, value)
                self.version += 1
            name = self.cc_bindings.get(number)
            if name is not None:
                return True, self.set_params(**{name: cc_value(name, value)})
            return True, []
        self.metrics.ignored_input += 1
        return True, []

    def check_input_alive(self, now_ns: int) -> bool:
        """Active Sensing (MIDI 1.0): once the input sends it steadily, more than
        :data:`SENSING_TIMEOUT_NS` of nothing at all means the connection was lost (a cable
        pulled with keys down): every key and the pedal the player held are released, so the
        model no longer hears them held.
        Returns True when that happened (watching resumes once the keep-alive is steady
        again)."""
        if not self._sensing or now_ns - self._heard_ns <= SENSING_TIMEOUT_NS:
            return False
        self._sensing = False
        self._sensing_ns = None
        self.metrics.input_losses += 1
        self.quantiser.all_notes_off(self._time_s(self._heard_ns + SENSING_TIMEOUT_NS))
        self.version += 1
        return True

    def _time_s(self, t_ns: int) -> float:
        # the quantiser needs time order and non-negative times
        self._last_input_s = max(self._last_input_s, self.grid.seconds(t_ns))
        return self._last_input_s

    # -- control ----------------------------------------------------------------------------
    def set_params(self, **changes: Any) -> list[MidiBytes]:
        """Apply parameter changes (checked); returns note-offs if the mode changed."""
        params = self.params.updated(**changes)
        sampler_keys = (
            "temperature",
            "top_p",
            "top_k",
            "hold_bias",
            "seed",
            "scale_penalty",
            "short_note_penalty",
            "memory",
        )
        if any(getattr(params, k) != getattr(self.params, k) for k in sampler_keys):
            # built before anything changes: a refused setting leaves everything as it was
            sampler = self._sampler_factory(params)
            pitch = pitch_sampler(self.model, params)
            self.sampler, self.pitch_sampler = sampler, pitch
        messages: list[MidiBytes] = []
        if params.mode != self.params.mode and self.modes.set_mode(params.mode):
            messages = self.voicer.release()
        if params.density != self.params.density:
            self.voicer.configure(replace(self.voicer.settings, density=params.density))
        if params.seed != self.params.seed:
            self._rng = random.Random(params.seed)  # None: seeded from the OS again
        self.params = params
        self.version += 1
        if self.on_params is not None:
            self.on_params(params)
        return messages

    def configure_voicing(self, settings: VoicingSettings) -> list[MidiBytes]:
        self.version += 1
        return self.voicer.configure(replace(settings, density=self.params.density))

    def release(self) -> list[MidiBytes]:
        self.version += 1
        return self.voicer.release()

    def panic(self) -> list[MidiBytes]:
        self.version += 1
        return self.voicer.panic()

    def set_playing(self, playing: bool) -> list[MidiBytes]:
        self.playing = playing
        self.version += 1
        return [] if playing else self.voicer.release()

    def set_clock_running(self, running: bool) -> list[MidiBytes]:
        """The MIDI clock stopped or was lost (silence at once), or runs again."""
        self.clock_running = running
        self.version += 1
        return [] if running else self.voicer.release()

    # -- computing ahead --------------------------------------------------------------------
    def _human_frame(self, k: int) -> PitchSet:
        # "now" = just past the end of frame k: keys still down count as held through it
        end_s = (k + 1) / self.quantiser.fs + 1e-6
        return self.quantiser.frame(k, end_s)

    def _frame_chord(self, human: PitchSet, machine: PitchSet) -> PitchSet:
        return (human | machine) if self.modes.hears_human else machine

    def job(self) -> Job | None:
        """The snapshot that predicts ``next_frame`` (None before the window is ready)."""
        k = self.next_frame - 1  # the frame still in progress
        if self.frame_done != k - 1:
            return None
        chord = self._frame_chord(self._human_frame(k), self.voicer.chord)
        provisional = self.model.reader.encode(chord)
        window = self.window.array()
        window[:-1] = window[1:]
        window[-1] = provisional
        if self.pitch_sampler is None:
            prev_id = self.model.vocab.nearest(self.voicer.chord)
            return Job(self.next_frame, self.version, window, prev_id, self.model, self.sampler)
        history = list(self.history)
        history = history[max(0, len(history) - (self.window_frames - 1)) :]
        recall = self.memory.recall((chord,)) if self.model.memory is not None else None
        return Job(
            self.next_frame,
            self.version,
            window,
            -1,
            self.model,
            self.sampler,
            self.voicer.chord,
            (*history, chord),
            self.pitch_sampler,
            recall,
        )

    @staticmethod
    def compute(job: Job) -> Result:
        """Inference and sampling for a job (runs in the worker thread; pure computation)."""
        t0 = time.perf_counter_ns()
        out = job.model.predictor.predict(job.window)
        infer_ns = time.perf_counter_ns() - t0
        if job.pitch_sampler is not None:
            try:
                chord = job.pitch_sampler.sample(out, job.prev_chord, job.context, job.recall)
            except ValueError:  # NaN from the model: play silence rather than noise
                chord = frozenset()
            return Result(job.frame, job.version, chord, job.model, infer_ns)
        probs = np.asarray(out, dtype=np.float64)
        probs = probs.copy()
        probs[UNK_ID] = 0.0  # <unk> names no chord: it can't be played
        total = probs.sum()
        if not np.isfinite(total) or total <= 0:
            token_id = SILENCE_ID
        else:
            token_id = int(
                job.sampler.sample(probs / total, job.prev_id, job.window, job.model.vocab)
            )
        if token_id == UNK_ID or not 0 <= token_id < len(job.model.vocab):
            token_id = SILENCE_ID
        chord = pitches_from_token(job.model.vocab.token(token_id))
        return Result(job.frame, job.version, chord, job.model, infer_ns)

    def offer(self, result: Result) -> bool:
        """A finished result. Kept if it is for the frame to come, else dropped as late."""
        self.metrics.inference_ns.append(result.infer_ns)
        if result.frame != self.next_frame or result.model is not self.model:
            self.metrics.late_results += 1
            return False
        if self.result is None or result.version >= self.result.version:
            self.result = result
        return True

    # -- the tick ---------------------------------------------------------------------------
    def tick(self, k: int) -> list[MidiBytes]:
        """Commit frame ``k``: decide and voice its chord. Cheap: no inference here."""
        if k < self.next_frame:
            raise ValueError(f"frame {k} was already committed (next is {self.next_frame})")
        if k > self.next_frame:  # the tick thread missed frames: they stay as they were
            self.metrics.missed_ticks += k - self.next_frame
            self._catch_up(k)
        messages: list[MidiBytes] = []
        swapped = self.pending_model is not None
        if self.pending_model is not None:
            messages += self.voicer.release()
            self._swap(self.pending_model)
            self.pending_model = None
        human_prev = self._human_frame(k - 1)
        active = bool(human_prev) or (k - 1) in self._onset_frames
        plays = self.modes.end_frame(active) and self.playing and self.clock_running
        result, self.result = self.result, None
        self.metrics.frames += 1
        late = False
        if result is not None and result.frame != k:
            result = None
        if not plays:
            messages += self.voicer.release()
        elif result is None:
            late = not swapped  # right after a swap the pause is on purpose
            self.metrics.late_frames += late
            messages += self.voicer.step(self.voicer.chord, 0.0)  # hold (max-hold applies)
        else:
            if result.version != self.version:
                self.metrics.stale_frames += 1
            messages += self.voicer.step(result.chord, self._rng.random())
        self.metrics.last_frame_late = late
        self._pending_human = human_prev
        self.next_frame = k + 1
        return messages

    def after_tick(self, k: int) -> None:
        """Push frame ``k - 1`` into the window (after the messages are out)."""
        if self.frame_done < k - 1:
            chord = self._frame_chord(self._pending_human, self.machine_prev)
            self.window.push(self.model.reader.encode(chord))
            self.history.append(chord)
            self.memory.push(chord)
            self.frame_done = k - 1
        self.machine_prev = self.voicer.chord
        self.version += 1

    def _catch_up(self, k: int) -> None:
        while self.frame_done < k - 2:
            j = self.frame_done + 1
            human = self._human_frame(j)
            chord = self._frame_chord(human, self.machine_prev)
            self.window.push(self.model.reader.encode(chord))
            self.history.append(chord)
            self.memory.push(chord)
            self.frame_done = j
        self.next_frame = k
        self.result = None

    def note_sent(self, t_ns: int, message: MidiBytes) -> None:
        """Remember the machine's note-ons (``t_ns``: when they sound), for the echo guard."""
        if message[0] & 0xF0 == 0x90 and message[2] > 0:
            self._sent_on_ns[(message[0], message[1], message[2])] = t_ns

    # -- model swap -------------------------------------------------------------------------
    def _swap(self, model: LoadedModel) -> None:
        self.model = model
        self.pitch_sampler = pitch_sampler(model, self.params)
        self.result = None
        self.window = model.reader.window(self.window_frames, self.history)
        self.version += 1


# -- the control interface other parts (MQTT, CLI) use ---------------------------------------


class EngineControl(Protocol):
    """What the MQTT control (and anything else) may do with a running engine.

    All methods are called from the asyncio loop thread and return quickly.
    ``set_params`` raises ``ValueError`` naming the parameter on a bad value; ``load_model``
    raises :class:`~musicgend.errors.ModelError` on a bad model (the old one keeps playing).
    """

    def start(self) -> None:
        """Resume playing (the engine starts playing by default)."""
        ...

    def stop(self) -> None:
        """Stop playing: release every note; input is still heard and logged."""
        ...

    def panic(self) -> None:
        """Note-off for every sounding note, CC64 = 0 and CC123 on all 16 channels."""
        ...

    def set_params(self, **params: Any) -> None:
        """Change ``mode``, ``temperature``, ``top_p``, ``top_k``, ``density``,
        ``hold_bias``, ``seed``, ``scale_penalty``, ``short_note_penalty``, ``memory``."""
        ...

    async def load_model(self, path: str | Path) -> None:
        """Load a model directory and swap it in at the next frame boundary."""
        ...

    def status(self) -> dict[str, Any]:
        """``online``, ``playing``, ``mode``, ``model``, ``runtime``, ``params``,
        ``session``."""
        ...

    def metrics(self) -> dict[str, Any]:
        """Frame latency percentiles, late frames, dropped input and more counters."""
        ...


ModelLoader = Callable[[Path], LoadedModel]


class MonotonicClock:
    """``time.monotonic_ns`` and a precise wait: sleep until shortly before the deadline,
    then spin. ``stop`` interrupts a wait."""

    def __init__(self, stop: threading.Event | None = None, spin_ns: int = 1_000_000) -> None:
        self.stop = stop or threading.Event()
        self.spin_ns = spin_ns

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def wait_until_ns(self, deadline_ns: int) -> bool:
        while True:
            remaining = deadline_ns - time.monotonic_ns()
            if remaining <= 0:
                return not self.stop.is_set()
            if remaining > self.spin_ns:
                if self.stop.wait((remaining - self.spin_ns) / NS_PER_S):
                    return False
            elif self.stop.is_set():
                return False


def return_freed_memory() -> bool:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``; ctypes releases the
    GIL meanwhile). False where there is no glibc."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False
    trim(0)
    return True


def _try_realtime_priority() -> str:
    """Give the calling thread SCHED_FIFO if allowed; returns what it got."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (AttributeError, OSError):
        return "normal"
    return "fifo"


class Engine:
    """Runs a :class:`FrameCore` in real time: a tick thread commits frames on their
    deadlines, one worker thread computes ahead, the asyncio loop feeds input and control.

    Use :meth:`run` as a task; :meth:`feed` for every incoming message. Implements
    :class:`EngineControl`.
    """

    def __init__(
        self,
        core: FrameCore,
        out: MidiOut,
        *,
        clock: Clock | None = None,
        journal: EventLog | None = None,
        loader: ModelLoader | None = None,
        session_info: Callable[[], Any] | None = None,
        port_counters: Callable[[], Any] | None = None,
        port_sounding: Callable[[], list[tuple[int, int]]] | None = None,
        follower: MidiClockFollower | None = None,
        ticks_per_frame: int = 12,
        on_status: Callable[[], None] | None = None,
        freeze_startup_heap: bool = False,
    ) -> None:
        self.core = core
        self.freeze_startup_heap = freeze_startup_heap
        """Move what exists after the warm-up out of the garbage collector's sight (the
        daemon: one process, one engine)."""
        self.follower = follower
        """Set: frames follow incoming MIDI clock; None: the internal clock (``core.grid``)."""
        self.ticks_per_frame = ticks_per_frame
        self.on_status = on_status
        """Called in the loop thread when the status changed on its own (clock lost/back, a
        model swapped in)."""
        # MIDI clock: frames to commit, (frame, sound at ns, decided after the tick at ns)
        self._commits: collections.deque[tuple[int, int, int]] = collections.deque()
        self._commit_cv = threading.Condition()
        self._committed_upto = 0
        self._last_at_ns = 0  # the latest time a message was scheduled for
        self.port_counters = port_counters
        self.port_sounding = port_sounding
        """``(channel, pitch)`` of the notes written to the port on and not yet off."""
        self.out = out
        self._stop = threading.Event()
        self.clock: Clock = clock or MonotonicClock(self._stop)
        self.journal = journal
        self.loader = loader
        self.session_info = session_info
        self.lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="musicgend-infer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight = False
        self._rerun = False
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._done: asyncio.Event | None = None
        self.priority = "normal"
        self.online = False
        self.messages_sent = 0
        self._trim_tasks: set[asyncio.Task[None]] = set()

    # -- sending ----------------------------------------------------------------------------
    def _send_locked(self, messages: list[MidiBytes], at_ns: int | None = None) -> int:
        """Write messages (lock held); returns the time the last one was written. Messages
        "for now" go after anything already scheduled for later (a note-off never overtakes
        its note-on)."""
        if at_ns is None:
            if self._last_at_ns > self.clock.now_ns():
                at_ns = self._last_at_ns
        elif at_ns > self._last_at_ns:
            self._last_at_ns = at_ns
        for message in messages:
            self.out.send(message, at_ns)
        self.messages_sent += len(messages)
        now = self.clock.now_ns()
        sounds_ns = now if at_ns is None else max(now, at_ns)
        for message in messages:
            self.core.note_sent(sounds_ns, message)
        return now

    def _journal_machine(self, t_ns: int, messages: list[MidiBytes]) -> None:
        if self.journal is not None:
            for message in messages:
                self.journal.machine(bytes(message), t_ns)

    def _emit(self, messages: list[MidiBytes]) -> None:
        """Send messages from the loop thread (lock held by the caller)."""
        if messages:
            t = self._send_locked(messages)
            # logged when they sound: after notes still scheduled ahead (MIDI clock)
            self._journal_machine(max(t, self._last_at_ns), messages)

    # -- input ------------------------------------------------------------------------------
    def feed(self, t_ns: int, message: Sequence[int]) -> None:
        """One incoming message with its monotonic receive time (loop thread)."""
        if message and message[0] in CLOCK_STATUSES:
            self.core.heard(t_ns)
            if self.follower is not None:
                self._on_clock(t_ns, message)
            return  # clock is timing, not music: not journalled, not quantised
        with self.lock:
            accepted, immediate = self.core.on_input(t_ns, message)
            self._emit(immediate)
        if accepted and self.journal is not None:
            self.journal.human(bytes(message), t_ns)
        if accepted:
            self._schedule()

    # -- MIDI clock (loop thread) ------------------------------------------------------------
    def _on_clock(self, t_ns: int, message: Sequence[int]) -> None:
        follower = self.follower
        assert follower is not None
        with self.lock:
            was = follower.state
            start = follower.on_message(t_ns, bytes(message))
            now = follower.state
            if now != was:
                self._emit(self.core.set_clock_running(now == "running"))
                log.info("MIDI clock %s", now)
            commits: list[tuple[int, int, int]] = []
            if start is not None and start.frame > self._committed_upto:
                # a boundary that was not foreseen (first tick after Start/Continue)
                commits.append((start.frame, t_ns, t_ns))
            if follower.next_tick_starts_frame:
                predicted = follower.predict_next_tick_ns()
                if predicted is not None and predicted > t_ns:
                    # place the next frame's notes on the tick that starts it (the port
                    # places a message its output latency after the time it is given)
                    at_ns = max(t_ns, predicted - self._output_latency_ns())
                    commits.append((follower.frame + 1, at_ns, t_ns))
            for commit in commits:
                self._committed_upto = commit[0]
        if commits:
            with self._commit_cv:
                self._commits.extend(commits)
                self._commit_cv.notify()
        if now != was and self.on_status is not None:
            self.on_status()

    def _output_latency_ns(self) -> int:
        latency = getattr(self.out, "output_latency_ns", 0)
        return latency if isinstance(latency, int) else 0

    def _check_clock_loss(self) -> None:
        follower = self.follower
        assert follower is not None
        with self.lock:
            if not follower.check_loss(self.clock.now_ns()):
                return
            self.core.metrics.clock_losses += 1
            self._emit(self.core.set_clock_running(False))
        log.warning(
            "MIDI clock lost (no tick for %.1f s): silent until it returns",
            follower.loss_timeout_ns / NS_PER_S,
        )
        if self.on_status is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.on_status)

    # -- computing ahead --------------------------------------------------------------------
    def _schedule(self) -> None:
        if self._loop is None or self._stop.is_set():
            return
        if self._inflight:
            self._rerun = True
            return
        with self.lock:
            job = self.core.job()
        if job is None:
            return
        self._inflight = True
        self._rerun = False
        future = self._executor.submit(FrameCore.compute, job)
        loop = self._loop
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._on_result, f, job))

    def _on_result(self, future: Future[Result], job: Job) -> None:
        self._inflight = False
        try:
            result = future.result()
        except Exception:
            self.core.metrics.inference_errors += 1
            log.exception("inference failed for frame %d", job.frame)
            return
        with self.lock:
            kept = self.core.offer(result)
            moved = self.core.version != result.version or self.core.next_frame != result.frame
        if (kept and moved) or self._rerun:
            if kept:
                self.core.metrics.recomputes += 1
            self._schedule()

    def _after_tick(self) -> None:
        with self.lock:
            lost = self.core.check_input_alive(self.clock.now_ns())
        if lost:
            log.warning(
                "the input stopped sending Active Sensing (disconnected?): the player's held "
                "keys are released"
            )
        self._schedule()

    # -- the tick thread --------------------------------------------------------------------
    def _commit(self, k: int, at_ns: int, cause_ns: int) -> None:
        """Commit frame ``k``: its messages sound at ``at_ns``; latency counts from
        ``cause_ns`` (the deadline, or the clock tick that announced the frame)."""
        metrics = self.core.metrics
        with self.lock:
            messages = self.core.tick(k)
            sent_ns = self._send_locked(messages, at_ns)
        metrics.latency_ns.append(sent_ns - cause_ns)
        metrics.last_tick_ns = sent_ns
        self._journal_machine(at_ns, messages)
        with self.lock:
            self.core.after_tick(k)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._after_tick)

    def _tick_loop(self, first_frame: int) -> None:
        self.priority = _try_realtime_priority()
        loop = self._loop
        assert loop is not None
        try:
            if self.follower is None:
                self._internal_ticks(first_frame)
            else:
                self._midi_ticks()
        except BaseException as exc:
            self._failure = exc
            log.exception("tick thread failed")
        finally:
            with contextlib.suppress(Exception), self.lock:
                self._emit(self.core.release())
            if self._done is not None:
                loop.call_soon_threadsafe(self._done.set)

    def _internal_ticks(self, first_frame: int) -> None:
        grid = self.core.grid
        if not isinstance(grid, FrameGrid):
            raise TypeError(f"the internal clock needs a frame grid, got {type(grid).__name__}")
        k = first_frame
        while not self._stop.is_set():
            deadline = grid.deadline_ns(k)
            if not self.clock.wait_until_ns(deadline):
                break
            self._commit(k, deadline, deadline)
            k += 1
            now = self.clock.now_ns()
            if now >= grid.deadline_ns(k + 1):
                k = grid.frame_at(now)  # overslept past a whole frame

    def _midi_ticks(self) -> None:
        poll_s = 0.02  # how often clock loss is checked while no frame is due
        while not self._stop.is_set():
            with self._commit_cv:
                if not self._commits:
                    self._commit_cv.wait(poll_s)
                item = self._commits.popleft() if self._commits else None
            if item is None:
                self._check_clock_loss()
                continue
            k, at_ns, cause_ns = item
            if k < self.core.next_frame:
                continue
            # a port that sends at once (ALSA): wait for the tick's time here
            waits = not getattr(self.out, "schedules_output", True)
            if waits and not self.clock.wait_until_ns(at_ns):
                break
            self._commit(k, at_ns, cause_ns)

    async def run(self) -> None:
        """Run until cancelled or :meth:`close`. On any exit every machine note is released."""
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        await asyncio.to_thread(self.core.model.warm_up, self.core.window_frames)
        if self.freeze_startup_heap:
            # What start-up made (modules, the model, the tables) stays for good: frozen, it
            # is no longer walked by a full collection during play (one over start-up's
            # ~50 000 objects held the GIL for 14-20 ms, measured; the JACK thread waits).
            gc.freeze()
        if self.follower is None:
            # leave the first frame time to compute (a tick due at once would be late)
            soon_ns = self.clock.now_ns() + FIRST_FRAME_LEAD_NS
            first = max(1, self.core.grid.frame_at(soon_ns) + 1)
        else:
            first = self.follower.frame + 1
            if not self.follower.running:
                self.core.set_clock_running(False)
        with self.lock:
            self.core.start_at(first)
            self._committed_upto = first - 1
        self.online = True
        self._thread = threading.Thread(
            target=self._tick_loop, args=(first,), name="musicgend-tick", daemon=True
        )
        self._thread.start()
        self._schedule()
        self._trim(self._trim_after_start())
        try:
            await self._done.wait()
            if self._failure is not None:
                raise RuntimeError("the engine's tick thread failed") from self._failure
        finally:
            self.online = False
            await self.aclose()

    async def aclose(self) -> None:
        """Stop the tick thread and release the machine's notes (idempotent)."""
        self._stop.set()
        for task in list(self._trim_tasks):
            task.cancel()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            await asyncio.to_thread(thread.join, 5.0)
        with self.lock:
            self._emit(self.core.release())
        self._executor.shutdown(wait=False, cancel_futures=True)

    def shutdown_messages(self) -> list[MidiBytes]:
        """Panic messages for the final stop (note-offs, CC64 = 0, CC123 × 16); sent too."""
        with self.lock:
            messages = self.core.panic()
            self._emit(messages)
        return messages

    # -- EngineControl ----------------------------------------------------------------------
    def start(self) -> None:
        with self.lock:
            self._emit(self.core.set_playing(True))
        self._schedule()

    def stop(self) -> None:
        with self.lock:
            self._emit(self.core.set_playing(False))

    def panic(self) -> None:
        with self.lock:
            self._emit(self.core.panic())
        self._schedule()

    def set_params(self, **params: Any) -> None:
        """Apply parameter changes (and ``bpm``) together: one that is refused (ValueError)
        leaves everything as it was."""
        bpm = params.pop("bpm", None)
        frame_ns = None if bpm is None else self._frame_ns_for(bpm)
        with self.lock:
            if params:
                self._emit(self.core.set_params(**params))
            if frame_ns is not None:
                self._set_frame_ns(frame_ns)
        self._schedule()

    def _frame_ns_for(self, bpm: Any) -> int:
        """The internal clock's frame length (``ticks_per_frame`` ticks) for ``bpm``, checked
        without changing anything. With MIDI clock the band's tempo rules: ValueError."""
        if self.follower is not None:
            raise ValueError("bpm follows the incoming MIDI clock (clock source 'midi')")
        if not isinstance(self.core.grid, FrameGrid):
            raise ValueError("this engine's frame grid has a fixed tempo")
        return frame_ns_for_bpm(_number("bpm", bpm, float), self.ticks_per_frame)

    def _set_frame_ns(self, frame_ns: int) -> None:
        grid = self.core.grid
        assert isinstance(grid, FrameGrid)
        grid.set_frame_ns(frame_ns, from_frame=self.core.next_frame)

    def clock_status(self) -> dict[str, Any]:
        follower = self.follower
        if follower is None:
            frame_ns = self.core.grid.frame_ns
            return {
                "source": "internal",
                "state": "running",
                "bpm": round(bpm_for_frame_ns(frame_ns, self.ticks_per_frame), 3),
                "frame_ms": round(frame_ns / 1e6, 3),
                "ticks_per_frame": self.ticks_per_frame,
            }
        bpm = follower.bpm
        return {
            "source": "midi",
            "state": follower.state,
            "bpm": None if bpm is None else round(bpm, 3),
            "frame_ms": round(follower.frame_ns / 1e6, 3),
            "ticks_per_frame": follower.ticks_per_frame,
            "ticks_lost": follower.missed_ticks,
            "ticks_repeated": follower.duplicate_ticks,
        }

    async def load_model(self, path: str | Path) -> None:
        if self.loader is None:
            raise ValueError("this engine has no model loader")
        model = await asyncio.to_thread(self.loader, Path(path))
        frames = model.window_frames
        if frames is not None and frames != self.core.window_frames:
            raise ModelError(
                f"{path}: the model reads {frames} frames of context, the one playing "
                f"{self.core.window_frames}; a model with another window needs a restart "
                "(musicgend run --model)"
            )
        await asyncio.to_thread(model.warm_up, self.core.window_frames)
        if not model.pitch_input:
            # the swap maps the recent chords into the new vocabulary at a tick: look them
            # up now, so that the tick only meets the few chords played since
            with self.lock:
                recent = list(self.core.history)
            await asyncio.to_thread(lambda: [model.vocab.nearest(chord) for chord in recent])
        with self.lock:
            self.core.pending_model = model
        self._trim(self._after_swap(model))

    def _trim(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a memory trim in the background, referenced until it ends (a swap may start
        while the start-up trim still waits)."""
        task = asyncio.create_task(work, name="trim")
        self._trim_tasks.add(task)
        task.add_done_callback(self._trim_tasks.discard)

    async def _trim_after_start(self, frames: int = 5) -> None:
        """Once the first ``frames`` frames are out (at most 10 s), hand back to the OS what
        the model load, the warm-up and the first frames' set-up (the sampler's vocabulary
        tables) freed: glibc keeps it otherwise (11 MB RSS with the bundled model, measured)."""
        frame_s = self.core.grid.frame_ns / NS_PER_S
        for _ in range(int(10 / frame_s)):
            if self.core.metrics.frames >= frames or self._stop.is_set():
                break
            await asyncio.sleep(frame_s)
        await asyncio.to_thread(return_freed_memory)

    async def _after_swap(self, model: LoadedModel) -> None:
        """Once ``model`` is swapped in (at a tick): report the new status, and once the old
        model is out of every in-flight job, hand its memory back to the OS (glibc keeps
        freed arenas otherwise: 40-60 MB more RSS after a swap, measured)."""
        frame_s = self.core.grid.frame_ns / NS_PER_S
        loop = asyncio.get_running_loop()
        give_up_s = loop.time() + 10.0
        while self.core.model is not model and not self._stop.is_set() and loop.time() < give_up_s:
            await asyncio.sleep(frame_s / 4)
        if self.core.model is model and self.on_status is not None:
            self.on_status()
        await asyncio.sleep(2 * frame_s)
        await asyncio.to_thread(return_freed_memory)

    def status(self) -> dict[str, Any]:
        core = self.core
        return {
            "online": self.online,
            "playing": core.playing,
            "mode": core.params.mode.value,
            "model": core.model.name,
            "runtime": core.model.runtime,
            "params": core.params.public(),
            "clock": self.clock_status(),
            "session": None if self.session_info is None else self.session_info(),
        }

    def metrics(self) -> dict[str, Any]:
        """The counters and percentiles, plus ``frame_latency_new_ms``: every decision
        latency since the previous call (the MQTT metrics messages carry each once)."""
        data = self.core.metrics.snapshot()
        data["frame_latency_new_ms"] = self.core.metrics.take_unread_latency_ms()
        data["priority"] = self.priority
        data["dropped_input"] = 0
        if self.port_counters is not None:
            c = self.port_counters()
            data["dropped_input"] = c.dropped_malformed + c.dropped_sysex + c.dropped_overflow
            data["midi"] = c.as_dict()
        if self.port_sounding is not None:
            data["notes_sounding"] = [list(key) for key in self.port_sounding()]
        return data

    def frames_on_time(self, within_ns: int | None = None) -> bool:
        """True while ticks keep coming and the last frame was not late (for the watchdog)."""
        m = self.core.metrics
        window = within_ns if within_ns is not None else 2 * self.core.grid.frame_ns
        if self._stop.is_set():
            return False
        follower = self.follower
        if follower is not None and (not follower.running or follower.lost):
            # waiting for the band's clock is on purpose; a dead tick thread is not
            return self._thread is not None and self._thread.is_alive()
        if m.frames == 0:
            return False
        return self.clock.now_ns() - m.last_tick_ns <= window and not m.last_frame_late
