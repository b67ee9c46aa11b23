from __future__ import annotations

import itertools

import pytest

from musicgend.core.clock import NS_PER_S, FakeClock, FrameGrid, MidiClockFollower


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


# -- tempo grid ------------------------------------------------------------------------------


def test_tempo_grid_changes_spacing_from_a_frame_on_and_keeps_earlier_deadlines() -> None:
    from musicgend.core.clock import FrameGrid, frame_ns_for_bpm

    grid = FrameGrid(t0_ns=1000, frame_ns=200_000_000)
    assert grid.deadline_ns(10) == 1000 + 10 * 200_000_000
    grid.set_frame_ns(frame_ns_for_bpm(120), from_frame=10)  # 12 ticks at 120 BPM: 250 ms
    assert grid.frame_ns == 250_000_000
    assert grid.deadline_ns(9) == 1000 + 9 * 200_000_000  # unchanged
    assert grid.deadline_ns(10) == 1000 + 10 * 200_000_000
    assert grid.deadline_ns(14) == 1000 + 10 * 200_000_000 + 4 * 250_000_000
    t = grid.deadline_ns(12) + 125_000_000  # half-way through frame 12
    assert grid.frame_at(t) == 12
    assert grid.position(t) == pytest.approx(12.5)
    assert grid.seconds(t) == pytest.approx(12.5 / 5)  # frame time at the nominal 5 fps
    assert grid.frame_at(grid.deadline_ns(5) + 1) == 5  # the old stretch still maps back
    with pytest.raises(ValueError, match="bpm"):
        frame_ns_for_bpm(500)


# -- MIDI clock follower ---------------------------------------------------------------------

TICK_NS = 20_000_000


def _follow(f: MidiClockFollower, first_ns: int, count: int, tick_ns: int = TICK_NS) -> list:
    starts = []
    for i in range(count):
        s = f.on_tick(first_ns + i * tick_ns)
        if s is not None:
            starts.append(s)
    return starts


def test_follower_counts_frames_of_12_ticks_from_start() -> None:
    f = MidiClockFollower(12)
    assert f.state == "stopped"
    assert _follow(f, 0, 5) == []  # ticks while stopped only set the tempo
    f.on_message(100 * TICK_NS, b"\xfa")
    starts = _follow(f, 101 * TICK_NS, 25)
    assert [(s.frame, s.t_ns) for s in starts] == [
        (1, 101 * TICK_NS),
        (2, 113 * TICK_NS),
        (3, 125 * TICK_NS),
    ]
    assert f.bpm == pytest.approx(125.0)  # 20 ms ticks
    assert f.frame_ns == 12 * TICK_NS
    # 25 ticks seen; after 11 more the next tick starts frame 4, and it is foreseen
    _follow(f, 126 * TICK_NS, 11)
    assert f.next_tick_starts_frame
    assert f.predict_next_tick_ns() == 137 * TICK_NS


def test_follower_stop_continue_and_song_position() -> None:
    f = MidiClockFollower(12)
    f.on_message(0, b"\xfa")
    _follow(f, TICK_NS, 18)  # frame 1, frame 2 half-way (song tick 18)
    f.on_message(19 * TICK_NS, b"\xfc")
    assert f.state == "stopped"
    pos = f.position(19 * TICK_NS)
    assert _follow(f, 20 * TICK_NS, 3) == []  # stopped: no frames
    assert f.position(30 * TICK_NS) == pos  # frame time stands still
    f.on_message(40 * TICK_NS, b"\xfb")  # Continue at song tick 18: 6 more to a boundary
    starts = _follow(f, 41 * TICK_NS, 7)
    assert [(s.frame, s.t_ns) for s in starts] == [(3, 47 * TICK_NS)]
    # Song Position Pointer: sixteenths (6 ticks); 2 sixteenths = tick 12, a boundary
    f.on_message(60 * TICK_NS, b"\xfc")
    f.on_message(61 * TICK_NS, bytes([0xF2, 2, 0]))
    f.on_message(62 * TICK_NS, b"\xfb")
    starts = _follow(f, 63 * TICK_NS, 2)
    assert [s.frame for s in starts] == [4]
    assert starts[0].t_ns == 63 * TICK_NS
    # Start always restarts at a boundary on the next tick
    f.on_message(70 * TICK_NS, b"\xfa")
    assert [s.frame for s in _follow(f, 71 * TICK_NS, 1)] == [5]


def test_follower_infers_lost_ticks_and_reports_clock_loss() -> None:
    f = MidiClockFollower(12, loss_timeout_ns=500_000_000)
    f.on_message(0, b"\xfa")
    times = [TICK_NS * (1 + i) for i in range(30) if i != 11]  # tick 11 never arrives
    starts = [s for t in times if (s := f.on_tick(t)) is not None]
    assert [s.frame for s in starts] == [1, 2, 3]
    assert starts[1].t_ns == 13 * TICK_NS  # the boundary stays on the band's beat
    assert f.missed_ticks == 1
    last = times[-1]
    assert not f.check_loss(last + 400_000_000)
    assert f.check_loss(last + 500_000_000)
    assert f.state == "lost" and f.losses == 1
    assert not f.check_loss(last + 900_000_000)  # reported once
    f.on_tick(last + 1_000_000_000)
    assert f.state == "running"
    # a stopped clock is never "lost", and Continue restarts the loss timer
    f.on_message(last + 1_010_000_000, b"\xfc")
    assert not f.check_loss(last + 5_000_000_000)
    f.on_message(last + 5_000_000_000, b"\xfb")
    assert not f.check_loss(last + 5_100_000_000)


def test_follower_frame_time_never_goes_back_or_past_the_frame_in_progress() -> None:
    f = MidiClockFollower(12, fs=5.0)
    f.on_message(0, b"\xfa")
    _follow(f, TICK_NS, 13)  # frame 2 started at tick 13
    t2 = 13 * TICK_NS
    assert f.position(t2) == pytest.approx(2.0)
    assert f.position(t2 + 6 * TICK_NS) == pytest.approx(2.5)
    assert f.position(t2 + 60 * TICK_NS) < 3.0  # the boundary only comes with its tick
    assert f.position(t2) >= 2.5  # never back
    assert f.seconds(t2 + 60 * TICK_NS) == pytest.approx(f.position(t2 + 60 * TICK_NS) / 5)


def test_one_early_tick_does_not_halve_the_period_and_a_lasting_change_is_followed() -> None:
    f = MidiClockFollower(12)
    f.on_message(0, b"\xfa")
    _follow(f, TICK_NS, 30)
    # a late JACK cycle stamps two ticks 1 ms apart, then the ticks come on time again
    t = 31 * TICK_NS
    f.on_tick(t - TICK_NS + 1_000_000)  # really due at 30 * TICK_NS ... stamped late
    f.on_tick(t)
    starts = _follow(f, 32 * TICK_NS, 48)
    assert f.tick_ns == pytest.approx(TICK_NS, rel=0.01)
    assert f.missed_ticks == 0
    # frames keep coming every 12 ticks (an early tick taken as the period made every later
    # tick look like two: frames every 6 ticks)
    gaps = [b.t_ns - a.t_ns for a, b in itertools.pairwise(starts)]
    assert gaps == [12 * TICK_NS] * len(gaps) and len(starts) >= 3
    # the tempo really halves: after a couple of ticks read as lost ones, it is followed
    t = 80 * TICK_NS
    for k in range(1, 12):
        f.on_tick(t + k * 2 * TICK_NS)
    assert f.tick_ns == pytest.approx(2 * TICK_NS, rel=0.05)


def _starts(f: MidiClockFollower, times: list[int]) -> list[tuple[int, int]]:
    return [(s.frame, s.t_ns) for t in times if (s := f.on_tick(t)) is not None]


def test_a_tick_delivered_twice_is_counted_once() -> None:
    # a stalled sender's JACK cycle read again: the same tick twice, 0-3 ms apart
    for repeat_ns in (0, 100_000, 3_000_000):
        f = MidiClockFollower(12)
        f.on_message(0, b"\xfa")
        times = [k * TICK_NS for k in range(1, 40)]
        times.insert(20, 20 * TICK_NS + repeat_ns)
        assert _starts(f, times) == [
            (1, TICK_NS),
            (2, 13 * TICK_NS),
            (3, 25 * TICK_NS),
            (4, 37 * TICK_NS),
        ]
        assert (f.duplicate_ticks, f.missed_ticks) == (1, 0)
        assert f.tick_ns == pytest.approx(TICK_NS)


@pytest.mark.parametrize("late_tick", [20, 25])  # 25 starts frame 3
@pytest.mark.parametrize("late_by", [0.5, 0.8, 0.98])  # of a tick
def test_a_tick_stamped_late_is_not_taken_for_a_lost_one(late_tick: int, late_by: float) -> None:
    # a stalled JACK cycle: one tick stamped up to a period late, the next one on time. The
    # long gap first reads as a lost tick; the next tick, far too early, is that one.
    f = MidiClockFollower(12)
    f.on_message(0, b"\xfa")
    times = [k * TICK_NS for k in range(1, 50)]
    times[late_tick - 1] += round(late_by * TICK_NS)
    starts = _starts(f, times)
    assert [s[0] for s in starts] == [1, 2, 3, 4, 5]
    # every boundary on its tick: frame 3 on tick 25, late or not, at most a tick early
    for frame, t_ns in starts:
        due_ns = (1 + 12 * (frame - 1)) * TICK_NS
        assert due_ns - TICK_NS <= t_ns <= due_ns + (late_by * TICK_NS if frame == 3 else 0)
    assert starts[-1][1] == 49 * TICK_NS
    assert f.missed_ticks == 0
    assert f.tick_ns == pytest.approx(TICK_NS, rel=0.1)


def test_ticks_really_lost_still_count_when_the_next_one_comes_on_time() -> None:
    f = MidiClockFollower(12)
    f.on_message(0, b"\xfa")
    times = [k * TICK_NS for k in range(1, 50) if k not in (20, 30, 31)]
    starts = _starts(f, times)
    assert starts == [
        (1, TICK_NS),
        (2, 13 * TICK_NS),
        (3, 25 * TICK_NS),
        (4, 37 * TICK_NS),
        (5, 49 * TICK_NS),
    ]
    assert f.missed_ticks == 3
