"""Engine with its real tick thread and worker, driven by a clock the test steps."""

from __future__ import annotations

import asyncio
import contextlib

from musicgend.core.clock import FrameGrid
from musicgend.core.voicing import note_off, note_on
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
        new, _ = model([G], name="new")
        engine = Engine(core, out, clock=clock, loader=lambda path: new)
        task = asyncio.create_task(engine.run())
        assert await asyncio.to_thread(clock.wait_waiting, F)
        await _wait(lambda: core.result is not None)
        clock.release_until(F)
        assert await asyncio.to_thread(clock.wait_waiting, 2 * F)
        engine.set_params(mode="solo", temperature=0.5)
        assert engine.status()["params"]["temperature"] == 0.5
        engine.panic()
        panic = out.messages()[-32:]
        assert {(s & 0xF0, d1) for s, d1, _ in panic} == {(0xB0, 64), (0xB0, 123)}
        engine.stop()
        assert engine.status()["playing"] is False
        engine.start()
        await engine.load_model("/anywhere")
        await _wait(lambda: core.result is not None)
        clock.release_until(2 * F)
        assert await asyncio.to_thread(clock.wait_waiting, 3 * F)
        assert engine.status()["model"] == "new"
        task.cancel()
        clock.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
