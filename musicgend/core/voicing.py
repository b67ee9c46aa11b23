"""Turn the machine's chord per frame into MIDI messages; the panic message list.

A chord change becomes note-offs for the pitches that stop, then note-ons for the pitches
that start; pitches held in both chords keep sounding (no re-strike). Messages are raw MIDI
bytes as tuples of ints, ready for any port.

Settings (:class:`VoicingSettings`):

* ``channel`` 0..15 and ``velocity`` 1..127 of every note the machine plays;
* ``transpose`` (semitones added to the model's chord), then the range ``low..high``: a
  pitch outside it moves by whole octaves into it (the harmony stays, the register obeys);
* ``max_voices``: at most this many pitches sound at once. A larger chord keeps its lowest
  and highest pitch (bass and melody), then inner pitches from the top down;
* ``density`` 0..1: the chance that a frame whose chord differs from what sounds is played.
  Otherwise the machine holds what it plays (fewer, longer chords; 1 = follow every frame,
  0 = never start anything new);
* ``max_hold_frames``: a chord held unchanged for this many frames is released (no note
  hangs forever, e.g. at density 0), as Notochord does after ~11 s.

The module is pure; the engine passes a uniform draw in ``[0, 1)`` for the density decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from musicgend.core.tokens import PitchSet

MidiBytes = tuple[int, ...]

NOTE_OFF = 0x80
NOTE_ON = 0x90
CONTROL_CHANGE = 0xB0
CC_SUSTAIN = 64
CC_ALL_NOTES_OFF = 123
CHANNELS = 16


@dataclass(frozen=True, slots=True)
class VoicingSettings:
    channel: int = 0
    velocity: int = 80
    transpose: int = 0
    low: int = 21
    high: int = 108
    max_voices: int = 8
    density: float = 1.0
    max_hold_frames: int = 55

    def __post_init__(self) -> None:
        if not 0 <= self.channel < CHANNELS:
            raise ValueError(f"channel must be 0..15, got {self.channel}")
        if not 1 <= self.velocity <= 127:
            raise ValueError(f"velocity must be 1..127, got {self.velocity}")
        if not (0 <= self.low <= 127 and 0 <= self.high <= 127 and self.high - self.low >= 11):
            raise ValueError(
                f"range {self.low}..{self.high} must lie in 0..127 and span at least an octave"
            )
        if not -48 <= self.transpose <= 48:
            raise ValueError(f"transpose must be -48..48 semitones, got {self.transpose}")
        if self.max_voices < 1:
            raise ValueError(f"max_voices must be >= 1, got {self.max_voices}")
        if not 0.0 <= self.density <= 1.0:
            raise ValueError(f"density must be 0..1, got {self.density}")
        if self.max_hold_frames < 1:
            raise ValueError(f"max_hold_frames must be >= 1, got {self.max_hold_frames}")


def note_on(channel: int, pitch: int, velocity: int) -> MidiBytes:
    return (NOTE_ON | channel, pitch, velocity)


def note_off(channel: int, pitch: int) -> MidiBytes:
    return (NOTE_OFF | channel, pitch, 0)


def panic_messages(sounding: Iterable[tuple[int, int]] = ()) -> list[MidiBytes]:
    """Note-off for every ``(channel, pitch)`` still sounding, then CC64 = 0 (sustain up)
    and CC123 (all notes off) on all 16 channels."""
    messages = [note_off(ch, p) for ch, p in sorted(set(sounding))]
    for ch in range(CHANNELS):
        messages.append((CONTROL_CHANGE | ch, CC_SUSTAIN, 0))
        messages.append((CONTROL_CHANGE | ch, CC_ALL_NOTES_OFF, 0))
    return messages


def place_pitches(pitches: Iterable[int], settings: VoicingSettings) -> PitchSet:
    """The model's chord as the machine plays it: transposed, folded into range, capped."""
    placed: set[int] = set()
    for pitch in pitches:
        p = pitch + settings.transpose
        while p < settings.low:
            p += 12
        while p > settings.high:
            p -= 12
        placed.add(p)
    if len(placed) <= settings.max_voices:
        return frozenset(placed)
    ordered = sorted(placed)
    if settings.max_voices == 1:
        return frozenset(ordered[-1:])
    kept = [ordered[0], ordered[-1]]
    inner = ordered[1:-1]
    kept.extend(inner[::-1][: settings.max_voices - 2])
    return frozenset(kept)


class Voicer:
    """The machine's sounding chord and the messages that change it.

    ``chord`` is the model's chord (model pitch space, what the model hears the machine
    play); ``sounding`` the pitches actually on after :func:`place_pitches`.
    """

    def __init__(self, settings: VoicingSettings | None = None) -> None:
        self.settings = settings or VoicingSettings()
        self.chord: PitchSet = frozenset()
        self.sounding: PitchSet = frozenset()
        self._channel = self.settings.channel
        self.held_frames = 0

    def configure(self, settings: VoicingSettings) -> list[MidiBytes]:
        """New settings. If channel or placement changes, the old notes are released."""
        old = self.settings
        self.settings = settings
        placement_changed = (old.channel, old.transpose, old.low, old.high, old.max_voices) != (
            settings.channel,
            settings.transpose,
            settings.low,
            settings.high,
            settings.max_voices,
        )
        return self.release() if placement_changed else []

    def _move_to(self, chord: PitchSet) -> list[MidiBytes]:
        target = place_pitches(chord, self.settings) if chord else frozenset()
        old_ch, new_ch = self._channel, self.settings.channel
        messages = [note_off(old_ch, p) for p in sorted(self.sounding - target)]
        if old_ch != new_ch:  # channel changed with notes on: release them all there
            messages += [note_off(old_ch, p) for p in sorted(self.sounding & target)]
            starts = target
        else:
            starts = target - self.sounding
        messages += [note_on(new_ch, p, self.settings.velocity) for p in sorted(starts)]
        if chord != self.chord:
            self.held_frames = 0
        self.chord, self.sounding, self._channel = chord, target, new_ch
        return messages

    def step(self, chord: Iterable[int], draw: float = 0.0) -> list[MidiBytes]:
        """One frame: move to ``chord`` (model pitches), subject to density and max hold.

        ``draw`` is a uniform number in ``[0, 1)``; a change is played when
        ``draw < density``.
        """
        wanted = frozenset(chord)
        self.held_frames += 1
        if wanted != self.chord and draw >= self.settings.density:
            wanted = self.chord  # density: hold what sounds
        if wanted and wanted == self.chord and self.held_frames >= self.settings.max_hold_frames:
            wanted = frozenset()  # held too long: release
        return self._move_to(wanted)

    def release(self) -> list[MidiBytes]:
        """Note-offs for everything the machine sounds (mode change, model swap, stop)."""
        return self._move_to(frozenset())

    def panic(self) -> list[MidiBytes]:
        """Note-off for every sounding note, CC64 = 0 and CC123 on all 16 channels."""
        sounding = [(self._channel, p) for p in self.sounding]
        self.chord, self.sounding, self.held_frames = frozenset(), frozenset(), 0
        return panic_messages(sounding)
