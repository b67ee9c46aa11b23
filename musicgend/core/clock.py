"""The frame grid and the clock interface the engine runs on.

Frame ``k`` starts at the absolute deadline ``t0_ns + k × frame_ns``. Deadlines are never
computed by adding up sleeps, so the grid cannot drift: after an hour frame 18 000 is due
exactly one hour after ``t0_ns``.

With an internal tempo (``--bpm``) the spacing may change at a frame boundary
(:class:`FrameGrid` then is piecewise even, still absolute). With ``--clock midi`` frames follow
the band's MIDI clock (:class:`MidiClockFollower`: a frame is ``ticks_per_frame`` ticks of
24 per quarter note). Either way the quantiser sees *frame time*: a position in frames,
divided by the nominal frame rate, so the same quantiser code serves every clock.

This module is pure. The real clock (``time.monotonic_ns`` plus a precise wait) lives in
:mod:`musicgend.service.engine`; tests drive the engine with :class:`FakeClock`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

NS_PER_S = 1_000_000_000
TICKS_PER_QUARTER = 24  # MIDI clock
DEFAULT_TICKS_PER_FRAME = 12  # an eighth note: 0.2 s at 150 BPM, the seed's 5 frames/s
MIN_BPM = 20.0
MAX_BPM = 300.0

# MIDI real-time and common messages the clock follower reads
CLOCK_TICK = 0xF8
CLOCK_START = 0xFA
CLOCK_CONTINUE = 0xFB
CLOCK_STOP = 0xFC
SONG_POSITION = 0xF2
CLOCK_STATUSES = frozenset({CLOCK_TICK, CLOCK_START, CLOCK_CONTINUE, CLOCK_STOP, SONG_POSITION})


def frame_ns_for_bpm(bpm: float, ticks_per_frame: int = DEFAULT_TICKS_PER_FRAME) -> int:
    """The length of a frame of ``ticks_per_frame`` MIDI clock ticks at ``bpm``."""
    if not MIN_BPM <= bpm <= MAX_BPM:
        raise ValueError(f"bpm must be in [{MIN_BPM:g}, {MAX_BPM:g}], got {bpm}")
    if ticks_per_frame <= 0:
        raise ValueError(f"ticks_per_frame must be > 0, got {ticks_per_frame}")
    return round(60 * NS_PER_S * ticks_per_frame / (bpm * TICKS_PER_QUARTER))


def bpm_for_frame_ns(frame_ns: float, ticks_per_frame: int = DEFAULT_TICKS_PER_FRAME) -> float:
    """The tempo at which a frame of ``ticks_per_frame`` ticks lasts ``frame_ns``."""
    return 60 * NS_PER_S * ticks_per_frame / (frame_ns * TICKS_PER_QUARTER)


class FrameTimeline(Protocol):
    """What the engine's frame logic needs from a frame clock."""

    @property
    def fs(self) -> float:
        """Nominal frames per second: the quantiser's frame rate."""
        ...

    @property
    def frame_ns(self) -> int:
        """The current length of a frame."""
        ...

    def frame_at(self, t_ns: int) -> int: ...

    def seconds(self, t_ns: int) -> float:
        """Frame time: the position of ``t_ns`` in frames divided by :attr:`fs`."""
        ...


@dataclass(frozen=True, slots=True)
class _Segment:
    first_frame: int
    t0_ns: int  # deadline of first_frame
    frame_ns: int


class FrameGrid:
    """Absolute frame deadlines: frame ``k`` is due at ``t0_ns + k * frame_ns``, and the
    spacing may change at a frame boundary (an internal tempo, ``--bpm``).

    ``set_frame_ns(frame_ns, from_frame)`` keeps every deadline up to ``from_frame`` and
    spaces the later ones by ``frame_ns``; deadlines still never come from added-up sleeps.
    Frame time (:meth:`seconds`) runs at the nominal ``fs`` (default: the first spacing's
    frames per second) whatever the tempo, so the quantiser cuts frames exactly on these
    deadlines. Safe to read from one thread while another changes the tempo (segments are
    replaced, never mutated).
    """

    MAX_SEGMENTS = 16

    def __init__(self, t0_ns: int, frame_ns: int = NS_PER_S // 5, fs: float | None = None) -> None:
        if frame_ns <= 0:
            raise ValueError(f"frame_ns must be > 0, got {frame_ns}")
        self._fs = NS_PER_S / frame_ns if fs is None else fs
        self._segments: tuple[_Segment, ...] = (_Segment(0, t0_ns, frame_ns),)

    @classmethod
    def from_fs(cls, t0_ns: int, fs: int) -> FrameGrid:
        """The grid of ``fs`` frames per second starting at ``t0_ns``."""
        if fs <= 0 or NS_PER_S % fs:
            raise ValueError(f"fs must divide one second in whole nanoseconds, got {fs}")
        return cls(t0_ns, NS_PER_S // fs)

    @property
    def fs(self) -> float:
        return self._fs

    @property
    def t0_ns(self) -> int:
        return self._segments[0].t0_ns

    @property
    def frame_ns(self) -> int:
        return self._segments[-1].frame_ns

    def _by_frame(self, k: int) -> _Segment:
        segments = self._segments
        for seg in reversed(segments):
            if k >= seg.first_frame:
                return seg
        return segments[0]

    def _by_time(self, t_ns: int) -> _Segment:
        segments = self._segments
        for seg in reversed(segments):
            if t_ns >= seg.t0_ns:
                return seg
        return segments[0]

    def set_frame_ns(self, frame_ns: int, from_frame: int) -> None:
        """Frames from ``from_frame`` on last ``frame_ns`` (earlier deadlines stay)."""
        if frame_ns <= 0:
            raise ValueError(f"frame_ns must be > 0, got {frame_ns}")
        start_ns = self.deadline_ns(from_frame)
        kept = [s for s in self._segments if s.first_frame < from_frame]
        kept.append(_Segment(from_frame, start_ns, frame_ns))
        self._segments = tuple(kept[-self.MAX_SEGMENTS :])

    def deadline_ns(self, k: int) -> int:
        seg = self._by_frame(k)
        return seg.t0_ns + (k - seg.first_frame) * seg.frame_ns

    def frame_at(self, t_ns: int) -> int:
        seg = self._by_time(t_ns)
        return seg.first_frame + (t_ns - seg.t0_ns) // seg.frame_ns

    def next_frame(self, t_ns: int) -> int:
        return self.frame_at(t_ns) + 1

    def position(self, t_ns: int) -> float:
        """``t_ns`` in frames (fractional) since frame 0."""
        seg = self._by_time(t_ns)
        return seg.first_frame + (t_ns - seg.t0_ns) / seg.frame_ns

    def seconds(self, t_ns: int) -> float:
        return self.position(t_ns) / self._fs


@dataclass(frozen=True, slots=True)
class FrameStart:
    """Frame ``frame`` started on the MIDI clock tick received at ``t_ns``."""

    frame: int
    t_ns: int


ODD_GAPS_TOLERATED = 2
"""Tick intervals far from the period (2-4 times it, or under 0.6 of it) in a row that are
read as transport trouble; from the next one on they are the band's new tempo."""


DUPLICATE_TICK_FRACTION = 0.25
"""A tick this soon after the last (as a fraction of the period) is the same tick delivered
twice, while such intervals are still read as transport trouble (:data:`ODD_GAPS_TOLERATED`)."""


class MidiClockFollower:
    """Frames from incoming MIDI clock: one frame per ``ticks_per_frame`` ticks.

    Frames are numbered from 1 and only go up (Start, Continue and Song Position move the
    song position, i.e. where the next frame boundary falls, not the frame count). Start
    (0xFA) makes the next tick song position 0, a frame boundary; Continue (0xFB) resumes
    from the song position; Stop (0xFC) stops; Song Position Pointer (0xF2, in sixteenths)
    sets the song position. Ticks while stopped only update the tempo estimate. No tick for
    ``loss_timeout_ns`` while running is a clock loss (:meth:`check_loss`); it ends with the
    next tick. Pure: every method takes the time it happens at.
    """

    def __init__(
        self,
        ticks_per_frame: int = DEFAULT_TICKS_PER_FRAME,
        loss_timeout_ns: int = NS_PER_S // 2,
        fs: float = 5.0,
    ) -> None:
        if ticks_per_frame <= 0:
            raise ValueError(f"ticks_per_frame must be > 0, got {ticks_per_frame}")
        self.ticks_per_frame = ticks_per_frame
        self.loss_timeout_ns = loss_timeout_ns
        self._fs = fs
        self.running = False
        self.lost = False
        self.song_tick = 0  # ticks since song position 0
        self.frame = 0  # frames started so far
        self.frame_start_ns: int | None = None
        self.last_tick_ns: int | None = None
        self._alive_ns: int | None = None  # the last tick, Start or Continue
        self.tick_ns: float | None = None  # smoothed tick period
        self.ticks = 0
        self.missed_ticks = 0  # inferred from gaps
        self._odd_gaps = 0  # consecutive intervals far from the period (early or 2-4x long)
        self._owed = 0  # ticks the last gap was taken to have lost, that may yet come late
        self.duplicate_ticks = 0  # ticks delivered twice, not counted
        self._resync = False
        self.losses = 0
        self._position_frozen = 0.0
        self._last_position = 0.0

    # -- messages ----------------------------------------------------------------------------
    def on_message(self, t_ns: int, data: bytes | list[int]) -> FrameStart | None:
        """Feed a clock-related message; returns the frame a tick started, if any."""
        status = data[0]
        if status == CLOCK_TICK:
            return self.on_tick(t_ns)
        if status == CLOCK_START:
            self.song_tick = 0
            self._run(t_ns)
        elif status == CLOCK_CONTINUE:
            self._run(t_ns)
        elif status == CLOCK_STOP:
            self._position_frozen = self.position(t_ns)
            self.running = False
            self.lost = False
        elif status == SONG_POSITION and len(data) >= 3:
            sixteenths = (data[1] & 0x7F) | ((data[2] & 0x7F) << 7)
            self.song_tick = sixteenths * (TICKS_PER_QUARTER // 4)
        return None

    def _run(self, t_ns: int) -> None:
        self._position_frozen = self.position(t_ns)
        self.running = True
        self.lost = False
        self._alive_ns = t_ns
        self.frame_start_ns = None  # the frame in progress ends at the next boundary
        self._resync = True  # the interval up to the next tick spans the pause: no tempo

    def on_tick(self, t_ns: int) -> FrameStart | None:
        last = self.last_tick_ns
        missed = 0
        counted = True
        resync, self._resync = self._resync, False
        if last is not None and t_ns - last < self.loss_timeout_ns and not resync:
            interval = float(t_ns - last)
            dt: float | None = interval  # what the tempo estimate takes from it
            if self.tick_ns is not None and self.running:
                # One odd interval is the transport's, not the band's: a gap of 2-4 periods
                # means ticks got lost on the way (a busy sender or an overrun JACK cycle),
                # so they are counted and the frame boundaries stay on the beat; a tick far
                # too early leaves the period as it was. Only when odd intervals keep coming
                # is it the tempo: an early tick once taken as the period made every later
                # tick look like two.
                n = round(interval / self.tick_ns)
                early = interval < 0.6 * self.tick_ns
                odd = early or 2 <= n <= 4
                self._odd_gaps = self._odd_gaps + 1 if odd else 0
                if not (odd and self._odd_gaps <= ODD_GAPS_TOLERATED):
                    self._owed = 0
                elif n >= 2:
                    missed = n - 1
                    dt = interval / n
                    self._owed = missed
                else:
                    # An early tick that is no new tick: the one a gap was taken to have
                    # lost, stamped late (a stalled JACK cycle), or one delivered twice (a
                    # stalled sender's cycle read again). Counted, either would move every
                    # later frame boundary a tick early.
                    if self._owed > 0:
                        self._owed -= 1
                        self.missed_ticks -= 1
                        counted = False
                    elif interval < DUPLICATE_TICK_FRACTION * self.tick_ns:
                        self.duplicate_ticks += 1
                        self._alive_ns = t_ns
                        return None  # the next interval is measured from the first copy
                    dt = None
            # follow tempo changes within a few ticks, smooth a sender's jitter
            if dt is not None and dt > 0:
                self.tick_ns = dt if self.tick_ns is None else 0.6 * self.tick_ns + 0.4 * dt
        self.last_tick_ns = self._alive_ns = t_ns
        self.ticks += 1
        if not self.running or not counted:
            return None
        self.lost = False
        self.missed_ticks += missed
        start: FrameStart | None = None
        for j in range(missed, -1, -1):  # the missed ticks first, at their likely times
            boundary = self.song_tick % self.ticks_per_frame == 0
            self.song_tick += 1
            if boundary:
                at_ns = round(t_ns - j * (self.tick_ns or 0))
                self._position_frozen = float(self.frame + 1)
                self.frame += 1
                self.frame_start_ns = at_ns
                start = FrameStart(self.frame, at_ns)
        return start

    def check_loss(self, now_ns: int) -> bool:
        """True once when a running clock has been silent for ``loss_timeout_ns``."""
        if not self.running or self.lost:
            return False
        since = self._alive_ns
        if since is None or now_ns - since < self.loss_timeout_ns:
            return False
        self._position_frozen = self.position(now_ns)
        self.lost = True
        self.losses += 1
        return True

    # -- prediction ----------------------------------------------------------------------------
    @property
    def next_tick_starts_frame(self) -> bool:
        return self.running and self.song_tick % self.ticks_per_frame == 0

    def predict_next_tick_ns(self) -> int | None:
        if self.last_tick_ns is None or self.tick_ns is None:
            return None
        return round(self.last_tick_ns + self.tick_ns)

    @property
    def bpm(self) -> float | None:
        if self.tick_ns is None:
            return None
        return 60 * NS_PER_S / (self.tick_ns * TICKS_PER_QUARTER)

    @property
    def state(self) -> str:
        return "lost" if self.lost else "running" if self.running else "stopped"

    # -- frame time ----------------------------------------------------------------------------
    @property
    def fs(self) -> float:
        return self._fs

    @property
    def frame_ns(self) -> int:
        if self.tick_ns is None:
            return round(NS_PER_S / self._fs)
        return round(self.tick_ns * self.ticks_per_frame)

    def position(self, t_ns: int) -> float:
        """Frames (fractional) at ``t_ns``: never goes back, never runs past the frame in
        progress (a boundary only comes with its tick), frozen while stopped or lost."""
        pos = self._position_frozen
        start = self.frame_start_ns
        if self.running and not self.lost and start is not None and t_ns > start:
            pos = self.frame + min((t_ns - start) / self.frame_ns, 0.999)
        pos = max(pos, self._last_position)
        self._last_position = pos
        return pos

    def frame_at(self, t_ns: int) -> int:
        return int(self.position(t_ns))

    def seconds(self, t_ns: int) -> float:
        return self.position(t_ns) / self._fs


class Clock(Protocol):
    """What the engine needs from a clock: monotonic now, and a wait until a deadline."""

    def now_ns(self) -> int: ...

    def wait_until_ns(self, deadline_ns: int) -> bool:
        """Block until ``deadline_ns``; False if the wait was interrupted (stop requested)."""
        ...


class FakeClock:
    """A clock that only moves when told to. ``wait_until_ns`` jumps to the deadline."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now_ns = start_ns
        self.waits: list[int] = []

    def now_ns(self) -> int:
        return self._now_ns

    def advance_ns(self, delta_ns: int) -> int:
        if delta_ns < 0:
            raise ValueError("a clock does not go backwards")
        self._now_ns += delta_ns
        return self._now_ns

    def set_ns(self, t_ns: int) -> None:
        if t_ns < self._now_ns:
            raise ValueError("a clock does not go backwards")
        self._now_ns = t_ns

    def wait_until_ns(self, deadline_ns: int) -> bool:
        self.waits.append(deadline_ns)
        self._now_ns = max(self._now_ns, deadline_ns)
        return True
