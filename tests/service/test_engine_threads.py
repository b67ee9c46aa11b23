"""Engine with its real tick thread and worker, driven by a clock the test steps."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys

import pytest

from musicgend.core.clock import FrameGrid
from musicgend.core.voicing import note_off, note_on
from musicgend.errors import ModelError
from musicgend.service.engine import Engine, FrameCore
from tests.service.fakes import ArgmaxSampler, RecordingOut, StepClock, model

F = 200_000_000
C, G = "60,64,67", "59,62,67"


class Journal:
    def __init__(self) -> None:
        self.events: list[tuple[str, bytes, int]] = []

    def human(self, data: bytes, t_ns: int) -> None:
        self.events.append(("h", data, t_ns))

    def machine(self, data: bytes, t_ns: int) -> None:
        self.events.append(("m", data, t_ns))


async def _wait(predicate, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.001)


def test_engine_commits_on_deadlines_and_releases_on_stop() -> None:
    async def scenario() -> None:
        m, _predictor = model([C, G])
        clock = StepClock(start_ns=F // 2)
        core = FrameCore(m, FrameGrid(0, F), ArgmaxSampler)
        out = RecordingOut()
        journal = Journal()
        engine = Engine(core, out, clock=clock, journal=journal)
        task = asyncio.create_task(engine.run())
        assert await asyncio.to_thread(clock.wait_waiting, F)  # first tick: frame 1
        await _wait(lambda: core.result is not None and core.result.frame == 1)
        engine.feed(F // 2 + 10, bytes([0x90, 50, 100]))  # the human, during frame 0
        await _wait(lambda: core.result is not None and core.result.version == core.version)
        clock.release_until(F)
        assert await asyncio.to_thread(clock.wait_waiting, 2 * F)
        await _wait(lambda: core.result is not None and core.result.frame == 2)
        clock.release_until(2 * F)
        assert await asyncio.to_thread(clock.wait_waiting, 3 * F)
        assert out.sent[:3] == [(note_on(0, p, 80), F) for p in (60, 64, 67)]  # at the deadline
        assert out.messages()[3:] == [
            note_off(0, 60),
            note_off(0, 64),
            note_on(0, 59, 80),
            note_on(0, 62, 80),
        ]
        assert core.metrics.late_frames == 0
        assert len(core.metrics.latency_ns) == 2
        assert engine.frames_on_time(within_ns=F)
        status = engine.status()
        assert status["online"] and status["mode"] == "accompany" and status["model"] == "fake"
        task.cancel()
        clock.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # the stop released everything that sounded
        assert out.messages()[-3:] == [note_off(0, 59), note_off(0, 62), note_off(0, 67)]
        assert ("h", bytes([0x90, 50, 100]), F // 2 + 10) in journal.events
        assert sum(1 for e in journal.events if e[0] == "m") == len(out.sent)
        assert engine.metrics()["frame_latency_ms"]["max"] is not None

    asyncio.run(scenario())


def test_engine_control_interface() -> None:
    async def scenario() -> None:
        m, _ = model([C])
        clock = StepClock(start_ns=F // 2)
        core = FrameCore(m, FrameGrid(0, F), ArgmaxSampler)
        out = RecordingOut()
        new, new_predictor = model([G], name="new")
        changes: list[str] = []

        def loader(path: object) -> object:
            return new

        engine = Engine(core, out, clock=clock, loader=loader, on_status=lambda: changes.append(1))
        task = asyncio.create_task(engine.run())
        assert await asyncio.to_thread(clock.wait_waiting, F)
        await _wait(lambda: core.result is not None)
        clock.release_until(F)
        assert await asyncio.to_thread(clock.wait_waiting, 2 * F)
        engine.set_params(mode="solo", temperature=0.5)
        assert engine.status()["params"]["temperature"] == 0.5
        # a refused set changes nothing, the tempo included
        frame_ns = core.grid.frame_ns
        for bad in ({"top_k": 10**400}, {"temperature": 0}, {"top_k": -1}):
            with pytest.raises(ValueError):
                engine.set_params(bpm=100, **bad)
        with pytest.raises(ValueError, match="bpm"):
            engine.set_params(bpm=1000, temperature=0.7)
        assert core.grid.frame_ns == frame_ns
        assert engine.status()["params"]["temperature"] == 0.5
        engine.panic()
        panic = out.messages()[-32:]
        assert {(s & 0xF0, d1) for s, d1, _ in panic} == {(0xB0, 64), (0xB0, 123)}
        engine.stop()
        assert engine.status()["playing"] is False
        engine.start()
        # a model reading another window length is refused before anything changes
        new_predictor.window_frames = 12  # type: ignore[attr-defined]
        with pytest.raises(ModelError, match="reads 12 frames of context, the one playing 50"):
            await engine.load_model("/short")
        assert core.pending_model is None
        del new_predictor.window_frames  # type: ignore[attr-defined]
        await engine.load_model("/anywhere")
        await _wait(lambda: core.result is not None)
        assert changes == []
        clock.release_until(2 * F)
        assert await asyncio.to_thread(clock.wait_waiting, 3 * F)
        assert engine.status()["model"] == "new"
        await _wait(lambda: changes == [1])  # the swap is announced (MQTT republishes status)
        task.cancel()
        clock.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_midi_clock_places_frames_on_their_ticks_stop_silences_loss_is_noticed() -> None:
    from musicgend.core.clock import MidiClockFollower

    tick_ns = 20_000_000  # 125 BPM: a frame (12 ticks) is 240 ms

    async def scenario() -> None:
        m, _ = model([C, G])
        clock = StepClock(start_ns=0)
        follower = MidiClockFollower(12, loss_timeout_ns=500_000_000)
        core = FrameCore(m, follower, ArgmaxSampler)
        out = RecordingOut()
        changes: list[str] = []
        engine = Engine(
            core, out, clock=clock, follower=follower, on_status=lambda: changes.append("x")
        )
        task = asyncio.create_task(engine.run())
        await _wait(lambda: engine.online)
        assert engine.status()["clock"]["state"] == "stopped"
        engine.feed(5, bytes([0xFA]))  # Start
        assert engine.status()["clock"]["state"] == "running"
        await _wait(lambda: core.result is not None)  # frame 1 is ready before its tick
        for i in range(36):  # three frames of ticks
            t = 10 + i * tick_ns
            clock.release_until(t)
            engine.feed(t, bytes([0xF8]))
            await _wait(lambda: not engine._commits)
            await _wait(lambda: core.result is not None or i % 12 != 10)  # noqa: B023
        await _wait(lambda: core.next_frame == 5)
        times = sorted({at for _, at in out.sent})
        # frame 1 starts on tick 0 (not foreseen: played at once, at the tick's time);
        # frames 2, 3 and 4 were placed ahead, on ticks 12, 24 and 36 (tick 35 announced 36)
        assert times[0] == 10
        assert set(times) <= {10 + k * 12 * tick_ns for k in range(4)}
        assert len(times) >= 2  # the argmax model alternates C and G: every frame changes
        assert core.metrics.late_frames == 0
        assert engine.status()["clock"]["bpm"] == 125.0
        # Stop: all notes off at once, after anything already scheduled
        n = len(out.sent)
        last_at = max(at for _, at in out.sent if at is not None)
        engine.feed(10 + 36 * tick_ns, bytes([0xFC]))
        released = out.sent[n:]
        assert released and all(msg[0] & 0xF0 == 0x80 for msg, _ in released)
        assert all(at is None or at >= last_at for _, at in released)
        assert engine.status()["clock"]["state"] == "stopped"
        # Continue, two ticks, then silence: lost after 0.5 s
        engine.feed(10 + 37 * tick_ns, bytes([0xFB]))
        engine.feed(10 + 38 * tick_ns, bytes([0xF8]))
        clock.release_until(10 + 38 * tick_ns + 600_000_000)
        clock._now = 10 + 38 * tick_ns + 600_000_000  # time passes without ticks
        await _wait(lambda: engine.status()["clock"]["state"] == "lost")
        assert core.metrics.clock_losses == 1
        assert engine.frames_on_time()  # waiting for the band is not a stall
        await _wait(lambda: len(changes) >= 4)  # start, stop, continue, lost
        with __import__("pytest").raises(ValueError, match="MIDI clock"):
            engine.set_params(bpm=120)
        task.cancel()
        clock.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_internal_tempo_changes_live_from_the_next_frame() -> None:
    from musicgend.core.clock import FrameGrid

    async def scenario() -> None:
        m, _ = model([C, G])
        clock = StepClock(start_ns=F // 2)
        grid = FrameGrid(0, F)
        core = FrameCore(m, grid, ArgmaxSampler)
        engine = Engine(core, RecordingOut(), clock=clock)
        task = asyncio.create_task(engine.run())
        assert await asyncio.to_thread(clock.wait_waiting, F)
        assert engine.status()["clock"] == {
            "source": "internal",
            "state": "running",
            "bpm": 150.0,
            "frame_ms": 200.0,
            "ticks_per_frame": 12,
        }
        engine.set_params(bpm=120)  # while the tick thread waits for frame 1
        clock.release_until(F)
        # frame 1 keeps its deadline; from frame 2 on a frame is 250 ms
        assert await asyncio.to_thread(clock.wait_waiting, F + 250_000_000)
        clock.release_until(F + 250_000_000)
        assert await asyncio.to_thread(clock.wait_waiting, F + 500_000_000)
        assert engine.status()["clock"]["bpm"] == 120.0
        for bad in (10, 1000, "fast", True):
            with __import__("pytest").raises(ValueError, match="bpm"):
                engine.set_params(bpm=bad)
        task.cancel()
        clock.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_midi_clock_on_a_port_that_sends_at_once_waits_for_the_tick() -> None:
    from musicgend.core.clock import MidiClockFollower

    class SendsAtOnce(RecordingOut):
        schedules_output = False

    tick_ns = 20_000_000

    async def scenario() -> None:
        m, _ = model([C, G])
        clock = StepClock(start_ns=0)
        follower = MidiClockFollower(12)
        core = FrameCore(m, follower, ArgmaxSampler)
        engine = Engine(core, SendsAtOnce(), clock=clock, follower=follower)
        task = asyncio.create_task(engine.run())
        await _wait(lambda: engine.online)
        engine.feed(0, bytes([0xFA]))
        for i in range(12):
            clock.release_until(10 + i * tick_ns)  # time passes with the ticks
            engine.feed(10 + i * tick_ns, bytes([0xF8]))
        await _wait(lambda: core.next_frame == 2)  # frame 1 started on tick 0
        # tick 11 announced frame 2 for tick 12: the tick thread waits for that time
        boundary = 10 + 12 * tick_ns
        assert await asyncio.to_thread(clock.wait_waiting, boundary)
        assert core.next_frame == 2
        clock.release_until(boundary)
        await _wait(lambda: core.next_frame == 3)
        task.cancel()
        clock.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


ARENAS_SCRIPT = """
import ctypes, sys, tempfile, threading
from musicgend.service.runtime import one_malloc_arena
if sys.argv[1] == "one":
    assert one_malloc_arena()
blocks = []
def allocate():
    blocks.append([bytearray(20_000) for _ in range(50)])  # glibc malloc, below mmap size
threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile(suffix=".xml") as f:
    fp = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp))
    libc.fclose(ctypes.c_void_p(fp))
    print(open(f.name).read().count("<heap nr="))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc arenas")
def test_one_malloc_arena_keeps_threads_on_the_main_heap() -> None:
    def heaps(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", ARENAS_SCRIPT, mode],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return int(out.stdout.strip())

    assert heaps("default") > 1  # glibc gives allocating threads arenas of their own
    assert heaps("one") == 1
