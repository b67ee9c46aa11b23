"""The frame grid and the clock interface the engine runs on.

Frame ``k`` starts at the absolute deadline ``t0_ns + k × frame_ns``. Deadlines are never
computed by adding up sleeps, so the grid cannot drift: after an hour frame 18 000 is due
exactly one hour after ``t0_ns``.

This module is pure. The real clock (``time.monotonic_ns`` plus a precise wait) lives in
:mod:`musicgend.service.engine`; tests drive the engine with :class:`FakeClock`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class FrameGrid:
    """Absolute frame deadlines: frame ``k`` is due at ``t0_ns + k * frame_ns``."""

    t0_ns: int
    frame_ns: int = NS_PER_S // 5

    def __post_init__(self) -> None:
        if self.frame_ns <= 0:
            raise ValueError(f"frame_ns must be > 0, got {self.frame_ns}")

    @classmethod
    def from_fs(cls, t0_ns: int, fs: int) -> FrameGrid:
        """The grid of ``fs`` frames per second starting at ``t0_ns``."""
        if fs <= 0 or NS_PER_S % fs:
            raise ValueError(f"fs must divide one second in whole nanoseconds, got {fs}")
        return cls(t0_ns, NS_PER_S // fs)

    @property
    def fs(self) -> float:
        return NS_PER_S / self.frame_ns

    def deadline_ns(self, k: int) -> int:
        """When frame ``k`` starts (and its chord is due)."""
        return self.t0_ns + k * self.frame_ns

    def frame_at(self, t_ns: int) -> int:
        """The frame that time ``t_ns`` falls in (negative before ``t0_ns``)."""
        return (t_ns - self.t0_ns) // self.frame_ns

    def next_frame(self, t_ns: int) -> int:
        """The first frame whose deadline is strictly after ``t_ns``."""
        return self.frame_at(t_ns) + 1

    def seconds(self, t_ns: int) -> float:
        """``t_ns`` in seconds since ``t0_ns`` (the quantiser's time axis)."""
        return (t_ns - self.t0_ns) / NS_PER_S


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
