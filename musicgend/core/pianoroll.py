"""The one quantiser: notes → frames at ``fs`` → chord tokens. Training and live use it.

It reproduces the seed's method, ``pretty_midi.Instrument.get_piano_roll(fs) > 0`` per
instrument, OR-ed over the chosen instruments, with the same arithmetic:

* a note sounds in frames ``int(start_s * fs) .. int(end_s * fs) - 1`` (so a note shorter
  than one frame that doesn't cross a frame boundary vanishes, as in the seed);
* the sustain pedal (CC64 ≥ 64 down, < 64 up) keeps every pitch that sounded at or after
  the pedal-down frame sounding until the pedal-up frame;
* an instrument lasts ``int(fs * end_s)`` frames, ``end_s`` being its last note end or
  controller/pitch-bend time.

Pitch bends are deliberately not applied: pretty_midi smears a bent roll into neighbouring
rows, which would invent pitches that no key holds. A chord token is the set of held keys.

The module is pure: files are turned into :class:`Track` values by ``training.dataset`` /
the CLI, live events by :class:`StreamQuantiser`; both end up in :func:`track_frames`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from musicgend.core.tokens import PitchSet, token_from_pitches

DEFAULT_FS = 5
"""Frames per second of the seed (one frame = 0.2 s)."""

PEDAL_CC = 64
PEDAL_THRESHOLD = 64


@dataclass(frozen=True, slots=True)
class Note:
    """One sounding note: ``pitch`` from ``start_s`` to ``end_s`` (seconds from time zero)."""

    start_s: float
    end_s: float
    pitch: int
    velocity: int = 64


@dataclass(frozen=True, slots=True)
class ControlChange:
    """A controller event; only CC64 (sustain) changes the frames."""

    time_s: float
    number: int
    value: int


@dataclass(frozen=True, slots=True)
class Track:
    """One instrument's notes and controllers, in the order the file or player gave them.

    ``end_s`` is the instrument's end time (last note end, controller or bend); ``None``
    means "derive it from notes and controllers".
    """

    notes: tuple[Note, ...]
    controls: tuple[ControlChange, ...] = ()
    is_drum: bool = False
    end_s: float | None = None
    name: str = ""

    def end_time_s(self) -> float:
        if self.end_s is not None:
            return self.end_s
        times = [n.end_s for n in self.notes] + [c.time_s for c in self.controls]
        return max(times, default=0.0)


def pedal_spans(controls: Iterable[ControlChange], fs: int) -> list[tuple[int, int]]:
    """Frame spans ``[down, up)`` where the sustain pedal is held, as pretty_midi sees them.

    A pedal still down at the end of the controller list gives no span (pretty_midi
    only applies a pedal when it is released).
    """
    spans: list[tuple[int, int]] = []
    down_frame = 0
    is_down = False
    for cc in controls:
        if cc.number != PEDAL_CC:
            continue
        now_frame = int(cc.time_s * fs)
        pressed = cc.value >= PEDAL_THRESHOLD
        if not is_down and pressed:
            down_frame, is_down = now_frame, True
        elif is_down and not pressed:
            spans.append((down_frame, now_frame))
            is_down = False
    return spans


def track_frames(
    track: Track,
    fs: int = DEFAULT_FS,
    n_frames: int | None = None,
    start_frame: int = 0,
    open_pedal_from_frame: int | None = None,
) -> list[set[int]]:
    """The sounding pitches of frames ``start_frame .. n_frames - 1`` of one track.

    ``n_frames`` defaults to the seed's ``int(fs * end_s)``. ``open_pedal_from_frame`` treats
    the pedal as held from that frame on (live input whose pedal is not yet released).
    """
    if n_frames is None:
        n_frames = int(fs * track.end_time_s()) if track.notes else 0
    spans = pedal_spans(track.controls, fs)
    if open_pedal_from_frame is not None:
        spans.append((open_pedal_from_frame, n_frames))
    spans = [(max(down, 0), min(up, n_frames)) for down, up in spans if up > start_frame]
    # A pedal held since before start_frame needs the frames from its down frame on.
    base = min([start_frame, *(down for down, _ in spans)])
    frames: list[set[int]] = [set() for _ in range(max(n_frames - base, 0))]
    if track.is_drum or not frames:
        return frames[start_frame - base :]
    for note in track.notes:
        lo = max(int(note.start_s * fs), base)
        hi = min(int(note.end_s * fs), n_frames)
        for k in range(lo, hi):
            frames[k - base].add(note.pitch)
    for down, up in spans:
        held: set[int] = set()
        for k in range(down, up):
            held |= frames[k - base]
            frames[k - base] = set(held)
    return frames[start_frame - base :]


def merge_frames(per_track: Sequence[Sequence[set[int]]]) -> list[PitchSet]:
    """OR the frames of several tracks; the result is as long as the longest track."""
    length = max((len(f) for f in per_track), default=0)
    merged: list[set[int]] = [set() for _ in range(length)]
    for frames in per_track:
        for k, pitches in enumerate(frames):
            merged[k] |= pitches
    return [frozenset(p) for p in merged]


def select_tracks(tracks: Sequence[Track], first_track_only: bool = False) -> list[Track]:
    """The tracks that make tokens: every non-drum track, or only the first non-drum one."""
    melodic = [t for t in tracks if not t.is_drum]
    return melodic[:1] if first_track_only else melodic


def frames_from_tracks(
    tracks: Sequence[Track], fs: int = DEFAULT_FS, first_track_only: bool = False
) -> list[PitchSet]:
    """Pitch sets per frame of a whole piece (the chosen tracks merged)."""
    chosen = select_tracks(tracks, first_track_only)
    return merge_frames([track_frames(t, fs) for t in chosen])


def tokens_from_frames(frames: Iterable[Iterable[int]]) -> list[str]:
    return [token_from_pitches(f) for f in frames]


def tokens_from_tracks(
    tracks: Sequence[Track], fs: int = DEFAULT_FS, first_track_only: bool = False
) -> list[str]:
    """Chord tokens of a piece: the seed's ``get_piano_roll(fs) > 0`` turned into tokens."""
    return tokens_from_frames(frames_from_tracks(tracks, fs, first_track_only))


@dataclass
class StreamQuantiser:
    """Live input → the same frames as the file path would give for the same notes.

    Feed note-on/off and CC64 events with their time in seconds since time zero, in
    time order; ask for frame ``k`` once the clock has passed ``(k + 1) / fs``. Notes
    still held count as sounding up to "now"; a pedal still down counts as held.
    Finished notes that can't touch future frames are forgotten, so memory stays bounded.
    """

    fs: int = DEFAULT_FS
    _open: dict[int, tuple[float, int]] = field(default_factory=dict)
    _notes: list[Note] = field(default_factory=list)
    _controls: list[ControlChange] = field(default_factory=list)
    _pedal_down_s: float | None = None
    _forget_before_frame: int = 0

    def note_on(self, time_s: float, pitch: int, velocity: int) -> None:
        """A key goes down. Velocity 0 is a note-off, as in MIDI."""
        if velocity == 0:
            self.note_off(time_s, pitch)
            return
        if pitch in self._open:  # re-struck without release: close the old note first
            self.note_off(time_s, pitch)
        self._open[pitch] = (time_s, velocity)

    def note_off(self, time_s: float, pitch: int) -> None:
        started = self._open.pop(pitch, None)
        if started is not None:
            self._notes.append(Note(started[0], time_s, pitch, started[1]))

    def control_change(self, time_s: float, number: int, value: int) -> None:
        if number != PEDAL_CC:
            return
        self._controls.append(ControlChange(time_s, number, value))
        if value >= PEDAL_THRESHOLD and self._pedal_down_s is None:
            self._pedal_down_s = time_s
        elif value < PEDAL_THRESHOLD:
            self._pedal_down_s = None

    def all_notes_off(self, time_s: float) -> None:
        """Release every held key and the pedal (e.g. the input device went away)."""
        for pitch in list(self._open):
            self.note_off(time_s, pitch)
        if self._pedal_down_s is not None:
            self.control_change(time_s, PEDAL_CC, 0)

    @property
    def held_pitches(self) -> frozenset[int]:
        return frozenset(self._open)

    def frame(self, k: int, now_s: float) -> PitchSet:
        """Pitches sounding in frame ``k`` given everything heard up to ``now_s``.

        Frames must be asked for in non-decreasing order of ``k``.
        """
        notes = [*self._notes] + [
            Note(start, max(now_s, start), p, v) for p, (start, v) in self._open.items()
        ]
        open_from = None
        if self._pedal_down_s is not None:
            open_from = int(self._pedal_down_s * self.fs)
        track = Track(tuple(notes), tuple(self._controls))
        (pitches,) = track_frames(
            track, self.fs, k + 1, start_frame=k, open_pedal_from_frame=open_from
        )
        self._forget(k)
        return frozenset(pitches)

    def _forget(self, k: int) -> None:
        """Drop notes and pedal events that can no longer affect frames ``>= k``."""
        if self._pedal_down_s is not None:
            return  # a held pedal may still extend any note it covers
        if any(int(c.time_s * self.fs) > k for c in self._controls):
            return  # a pedal span that reaches past k is still in the list
        self._controls.clear()
        self._notes = [n for n in self._notes if int(n.end_s * self.fs) > k]
