from __future__ import annotations

import pytest

from musicgend.core.clock import NS_PER_S, FakeClock, FrameGrid


def test_deadlines_are_absolute_and_do_not_drift() -> None:
    grid = FrameGrid.from_fs(t0_ns=123, fs=5)
    assert grid.frame_ns == 200_000_000
    assert grid.deadline_ns(0) == 123
    # one hour of frames lands exactly one hour later
    assert grid.deadline_ns(5 * 3600) == 123 + 3600 * NS_PER_S


def test_frame_at_and_next_frame() -> None:
    grid = FrameGrid(t0_ns=1000, frame_ns=100)
    assert grid.frame_at(1000) == 0
    assert grid.frame_at(1099) == 0
    assert grid.frame_at(1100) == 1
    assert grid.frame_at(999) == -1
    assert grid.next_frame(1000) == 1
    assert grid.next_frame(1099) == 1
    assert grid.seconds(1000 + NS_PER_S) == pytest.approx(1.0)


def test_bad_grids_are_rejected() -> None:
    with pytest.raises(ValueError, match="frame_ns"):
        FrameGrid(0, 0)
    with pytest.raises(ValueError, match="fs"):
        FrameGrid.from_fs(0, 7)


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(10)
    assert clock.now_ns() == 10
    assert clock.wait_until_ns(50) is True
    assert clock.now_ns() == 50
    clock.wait_until_ns(20)  # a past deadline returns at once
    assert clock.now_ns() == 50
    assert clock.advance_ns(5) == 55
    assert clock.waits == [50, 20]
    with pytest.raises(ValueError):
        clock.advance_ns(-1)
    with pytest.raises(ValueError):
        clock.set_ns(0)
