"""The daemon: ports, engine, session and MQTT as one asyncio ``TaskGroup``.

:func:`run_daemon` is what ``musicgend run`` calls. It

1. picks the MIDI backend (``auto``: a running JACK server, else ALSA, else a private JACK
   server with the dummy driver that lives as long as the daemon);
2. loads the model on the fastest TensorFlow-free runtime (``auto``);
3. opens the ports, starts the session journal, and runs the engine, the input pump, MQTT
   (when configured) and the systemd watchdog as tasks of one ``TaskGroup``;
4. on SIGTERM/SIGINT/SIGHUP/SIGQUIT (:data:`STOP_SIGNALS`; a closed terminal sends SIGHUP):
   note-off for every sounding note, CC64 = 0 and CC123 on all 16
   channels, waits until JACK has written them, finalises the session (.mid) and returns 0.
   A stop that hangs logs every thread's stack, and once the session is written it is
   bounded (:class:`StopWatchdog`).
   SIGUSR1 (and MQTT ``panic``) sends the same messages without stopping. An exception in
   any task takes the same path (and is re-raised).

systemd: ``READY=1`` once the ports exist and the first frame is scheduled; ``STATUS=``
every few seconds; ``WATCHDOG=1`` only while frames come on time (see
:meth:`Engine.frames_on_time`), so a stalled engine gets restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from musicgend.errors import ConfigError, ModelError, MusicgendError

if TYPE_CHECKING:
    from musicgend.config import Settings
    from musicgend.core.clock import FrameGrid, MidiClockFollower
    from musicgend.core.modes import CallResponseSettings
    from musicgend.core.voicing import VoicingSettings
    from musicgend.io.midi import MidiPorts
    from musicgend.service.engine import Engine, EngineParams, FrameCore, LoadedModel

# Start-up order (see serve()): the model loads first, in a worker thread that also imports
# NumPy and the engine; the ports open only after it, so a Python JACK process callback never
# waits on a long-held GIL. This module and the CLI import nothing heavy themselves
# (tests/service/test_imports.py), which keeps a model error quick to report.

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0005
"""The GIL hand-over interval in the daemon: the tick thread and JACK's process callback
never wait long for a thread that runs Python code."""


M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter number for the most arenas (malloc.h)."""


def one_malloc_arena() -> bool:
    """Let every thread allocate from glibc's main heap: ``mallopt(M_ARENA_MAX, 1)``.

    Call it before the threads start. By default each thread that allocates gets an arena of
    its own (up to 8 per CPU), and a model loaded in one worker thread leaves, once freed,
    holes that the next load, in another thread's arena, can't reuse: loading the bundled
    model 16 times in a thread pool, as the daemon swaps models, RSS wandered between 73 and
    89 MB; with one arena it stayed at 74 MB (measured). Small blocks still come from each
    thread's cache without taking a lock.
    False where there is no glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return bool(mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(1)))


def raise_priority(priority: int = 5) -> str:
    """Run this thread, and every thread it starts later (they inherit), under SCHED_FIFO.

    With the GIL shared by the tick thread, the inference worker, the event loop and JACK's
    process callback, a normal-priority thread preempted by a busy process while it holds the
    GIL delays the tick by a whole scheduler slice; giving them all a real-time priority
    avoids that. Falls back to ``nice -10``, then to nothing, where not permitted (systemd:
    ``LimitRTPRIO=`` / ``CPUSchedulingPolicy=``). Returns what it got. Once per thread: a
    second call returns the first result (``nice`` would otherwise add up).
    """
    thread = threading.get_ident()
    if thread not in _priorities:
        _priorities[thread] = _set_priority(priority)
    return _priorities[thread]


_priorities: dict[int, str] = {}


def _set_priority(priority: int) -> str:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return "fifo"
    except (AttributeError, OSError):
        pass
    try:
        os.nice(-10)
        return "nice-10"
    except OSError:
        return "normal"


STOP_DUMP_S = 10.0
"""A stop still running this long after the signal logs every thread's stack."""

STOP_EXIT_S = 15.0
"""Once the notes are off and the session is written, the process ends within this long
(closing the ports may take up to twice :data:`musicgend.io.midi.CLOSE_WAIT_S`)."""

STOP_STUCK_EXIT_CODE = 70
"""Exit status when the stop had to be forced (``EX_SOFTWARE``): the session was written and
the notes released, but some part of the clean-up did not end (its stack is in the log)."""


def native_threads() -> str:
    """This process's kernel threads, one line each: id, name and what it waits in."""
    lines = []
    try:
        tids = sorted(os.listdir("/proc/self/task"), key=int)
    except OSError:
        return "  (no /proc)"
    for tid in tids:
        fields = []
        for name in ("comm", "wchan"):
            try:
                with open(f"/proc/self/task/{tid}/{name}", encoding="utf-8") as fh:
                    fields.append(fh.read().strip() or "-")
            except OSError:
                fields.append("?")
        lines.append(f"  {tid} {fields[0]} waiting in {fields[1]}")
    return "\n".join(lines)


class StopWatchdog:
    """Bounds the daemon's stop, and says where it hangs when it does.

    :meth:`stopping` (a stop began): if the process still runs :data:`STOP_DUMP_S` later,
    every thread's stack is logged (Python's, by :mod:`faulthandler`, and the kernel's view of
    each native thread). :meth:`finished` (notes released, session written, so nothing is
    lost by ending): if the process still runs :data:`STOP_EXIT_S` later, the stacks are
    logged and the process ends with :data:`STOP_STUCK_EXIT_CODE`. Before :meth:`finished`
    nothing is forced: a long session is still being written (and systemd's
    ``TimeoutStopSec=`` bounds that).

    For a process that ends after the stop (``musicgend run``): its thread is a daemon thread
    and is never disarmed, so a hang at interpreter exit (a thread join) is caught too.
    """

    def __init__(
        self,
        dump_after_s: float = STOP_DUMP_S,
        exit_after_s: float = STOP_EXIT_S,
        exit_code: int = STOP_STUCK_EXIT_CODE,
    ) -> None:
        self.dump_after_s = dump_after_s
        self.exit_after_s = exit_after_s
        self.exit_code = exit_code
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None

    def stopping(self) -> None:
        """The stop began (a signal, or a task that failed). Idempotent."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._watch, name="musicgend-stop-watchdog", daemon=True
            )
            self._thread.start()

    def finished(self) -> None:
        """The notes are off and the session is written: from now on the exit is bounded."""
        self.stopping()
        self._finished.set()

    def _watch(self) -> None:
        if not self._finished.wait(self.dump_after_s):
            self._dump(f"still stopping {self.dump_after_s:g} s after the stop began")
        self._finished.wait()
        time.sleep(self.exit_after_s)  # the process normally ends during this sleep
        self._dump(
            f"the notes are off and the session is written, but the process did not end "
            f"within {self.exit_after_s:g} s; exiting with status {self.exit_code}"
        )
        os._exit(self.exit_code)

    @staticmethod
    def _dump(reason: str) -> None:
        import faulthandler

        log.error("%s; thread stacks follow (most recent call first)", reason)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        names = "\n".join(
            f"  0x{t.ident or 0:016x} {t.name}{' (daemon)' if t.daemon else ''}"
            for t in threading.enumerate()
        )
        print(f"Python threads:\n{names}", file=sys.stderr, flush=True)
        print(f"native threads:\n{native_threads()}", file=sys.stderr, flush=True)


class _Stop(Exception):
    """Raised inside the task group to end it on a stop signal."""


def load_model(path: Path, runtime: str = "auto", threads: int = 1) -> LoadedModel:
    """A model directory on the chosen runtime, as the engine needs it.

    ``threads``: LiteRT interpreter threads (NumPy always runs on one BLAS thread). One is
    the daemon's default: it shares the cores with JACK and the synthesizer, and a second
    interpreter thread made calls slower, not faster, on the 2-core reference machine
    (README, "Where the time goes").
    """
    from musicgend.model.runtime import load_predictor, pitch_head
    from musicgend.service.engine import LoadedModel

    path = Path(path)
    if not path.is_dir():
        raise ModelError(
            f"{path}: model directory not found (train one with `musicgend train`, "
            "or pass --model DIR)"
        )
    predictor = load_predictor(path, runtime, threads=threads)
    artifact = predictor.artifact
    if artifact.config.window_frames < 1:
        raise ModelError(f"{path}: bad window size {artifact.config.window_frames}")
    return LoadedModel(
        predictor,
        artifact.vocab,
        str(path),
        predictor.runtime,
        pitch_head(artifact),
        artifact.config.pitch_input,
        artifact.memory,
    )


def voicing_from(settings: Settings) -> VoicingSettings:
    from musicgend.core.voicing import VoicingSettings

    midi = settings.midi
    try:
        return VoicingSettings(
            channel=midi.channel - 1,
            velocity=midi.velocity,
            transpose=midi.transpose,
            low=midi.lowest_pitch,
            high=midi.highest_pitch,
            density=settings.engine.density,
        )
    except ValueError as exc:
        raise ConfigError(f"midi: {exc}") from None


def params_from(settings: Settings) -> EngineParams:
    from musicgend.core.modes import Mode
    from musicgend.service.engine import EngineParams

    e = settings.engine
    return EngineParams(
        mode=Mode.parse(e.mode),
        temperature=e.temperature,
        top_p=e.top_p,
        top_k=e.top_k,
        density=e.density,
        hold_bias=e.hold_bias,
        seed=e.seed,
        scale_penalty=e.scale_penalty,
        short_note_penalty=e.short_note_penalty,
        memory=e.memory,
    )


def call_from(settings: Settings) -> CallResponseSettings:
    from musicgend.core.modes import CallResponseSettings

    cr = settings.engine.call_response
    fs = settings.clock.fs
    return CallResponseSettings(
        silence_frames=max(1, math.ceil(cr.silence_s * fs - 1e-9)),
        answer_frames=max(1, math.ceil(cr.answer_s * fs - 1e-9)),
    )


def build_timeline(settings: Settings, t0_ns: int) -> FrameGrid | MidiClockFollower:
    """The frame clock the settings ask for: an internal grid (5 frames per second, or
    ``clock.bpm``), or a follower of incoming MIDI clock."""
    from musicgend.core.clock import (
        NS_PER_S,
        FrameGrid,
        MidiClockFollower,
        frame_ns_for_bpm,
    )

    clock = settings.clock
    if clock.source == "midi":
        return MidiClockFollower(
            clock.ticks_per_frame, round(clock.loss_timeout_s * NS_PER_S), fs=clock.fs
        )
    if clock.bpm is None:
        frame_ns = NS_PER_S // clock.fs
    else:
        frame_ns = frame_ns_for_bpm(clock.bpm, clock.ticks_per_frame)
    return FrameGrid(t0_ns, frame_ns, fs=clock.fs)


def build_core(settings: Settings, model: LoadedModel, t0_ns: int) -> FrameCore:
    """The engine's frame logic configured from the settings."""
    from musicgend.core.window import WINDOW_FRAMES
    from musicgend.service.engine import FrameCore, default_sampler

    return FrameCore(
        model,
        build_timeline(settings, t0_ns),
        default_sampler,
        params=params_from(settings),
        voicing=voicing_from(settings),
        call=call_from(settings),
        cc_bindings={number: name for name, number in settings.engine.cc.items()},
        window_frames=model.window_frames or WINDOW_FRAMES,
    )


class Notifier:
    """sd_notify when running under systemd (``$NOTIFY_SOCKET``); otherwise nothing."""

    def __init__(self) -> None:
        self._notifier: Any = None
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()
        usec = os.environ.get("WATCHDOG_USEC")
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() else None

    def notify(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)


@dataclass
class DaemonInfo:
    """What a running daemon tells its caller (the CLI prints it, tests read it)."""

    backend: str = ""
    embedded_server: str | None = None
    in_port: str = ""
    out_port: str = ""
    session_dir: Path | None = None
    session_midi: Path | None = None
    ports_ready_s: float | None = None
    runtime: str = ""
    metrics: dict[str, Any] | None = None


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory of a process in MiB (Linux ``/proc``), None where unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def private_mb(pid: int | str = "self") -> float | None:
    """Memory only this process holds (USS: ``Private_Clean + Private_Dirty`` from
    ``/proc/PID/smaps_rollup``) in MiB; None where unknown.

    RSS also counts shared pages: shared libraries and the pages of the JACK server's
    shared memory this process maps (all ~40 MB of it with ``--port-max 64`` where libjack
    may lock it: ``midi.lock_jack_memory``).
    """
    total_kb = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total_kb += int(line.split()[1])
    except (OSError, ValueError):
        return None
    return round(total_kb / 1024, 1)


@contextlib.contextmanager
def _backend(requested: str, info: DaemonInfo) -> Iterator[str]:
    from musicgend.io.jackserver import EmbeddedJack, resolve_backend

    choice = resolve_backend(requested)  # type: ignore[arg-type]
    info.backend = choice.backend
    log.info("MIDI backend %s (%s)", choice.backend, choice.reason)
    if not choice.embedded:
        yield choice.backend
        return
    os.environ.setdefault("JACK_NO_AUDIO_RESERVATION", "1")
    with EmbeddedJack(period_frames=128) as server:
        info.embedded_server = server.name
        yield choice.backend


async def _pump_input(ports: MidiPorts, engine: Engine) -> None:
    while True:
        event = await ports.get()
        engine.feed(event.arrival_ns, event.data)


async def _wait_output_drained(ports: MidiPorts, sent_before: int, n: int) -> None:
    """Wait (at most 1 s) until the ports wrote ``n`` more messages."""
    deadline = time.monotonic() + 1.0
    while ports.counters.sent + ports.counters.dropped_output < sent_before + n:
        if time.monotonic() > deadline or not ports.connected:
            log.warning("not every final message was confirmed written")
            return
        await asyncio.sleep(0.005)


async def _supervise(engine: Engine, notifier: Notifier, ports: MidiPorts) -> None:
    """STATUS every 5 s, WATCHDOG=1 at half the watchdog interval while frames are on time."""
    interval_s = notifier.watchdog_s / 2 if notifier.watchdog_s else 1.0
    last_status = 0.0
    while True:
        await asyncio.sleep(interval_s)
        if notifier.watchdog_s and engine.frames_on_time() and ports.connected:
            notifier.notify("WATCHDOG=1")
        now = time.monotonic()
        if now - last_status >= 5.0:
            last_status = now
            m = engine.core.metrics
            lat = engine.metrics()["frame_latency_ms"]
            notifier.notify(
                f"STATUS=mode {engine.core.params.mode.value}, frames {m.frames}, "
                f"late {m.late_frames}, p99 {lat['p99']} ms"
            )


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
"""Each stops the daemon cleanly (notes off, session written, exit 0); one more while it
stops is logged and changes nothing (the stop watchdog bounds a stop that hangs)."""


def _on_stop_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    if stop.is_set():
        log.warning("%s: already stopping (notes off, session being written)", sig.name)
        return
    log.info("%s: stopping", sig.name)
    stop.set()


@contextlib.contextmanager
def _stopping_signals_logged() -> Iterator[None]:
    """After the event loop ends (the private JACK server's stop is left): a stop signal is
    logged instead of cutting the clean-up short; the previous handlers come back after."""

    def late(signum: int, _frame: object) -> None:
        log.warning("%s: already stopping", signal.Signals(signum).name)

    previous = {}
    try:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, late)
    except ValueError:  # not the main thread: nothing to protect here
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def serve(
    settings: Settings,
    info: DaemonInfo,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[DaemonInfo], None] | None = None,
    watchdog: StopWatchdog | None = None,
) -> None:
    """Run the daemon in the current loop until ``stop`` is set or a stop signal comes.

    ``watchdog``: told when the stop begins and when the session is written (see
    :class:`StopWatchdog`)."""
    from musicgend.io.midi import PortConfig, open_ports
    from musicgend.io.session import SessionRecorder

    started = time.monotonic()
    loop = asyncio.get_running_loop()
    log.info("scheduling: %s", raise_priority())
    stop = stop or asyncio.Event()
    notifier = Notifier()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _on_stop_signal, sig, stop)
    midi = settings.midi
    port_config = PortConfig(
        backend=info.backend,  # type: ignore[arg-type]
        client_name=midi.client_name,
        in_port=midi.in_port,
        out_port=midi.out_port,
        connect_in=midi.connect_in,
        connect_out=midi.connect_out,
        queue_size=midi.input_queue_size,
        max_sysex_bytes=midi.sysex_limit_bytes,
    )
    engine_settings = settings.engine
    # The model first, then the ports. Loading it (NumPy's import, the vocabulary, the
    # interpreter) holds the GIL for up to ~50 ms at a time, and an active JACK client's
    # process callback needs the GIL every period: with the ports open first, a start made
    # ~140 JACK xruns within a second (glitches in other clients' audio, input lost). For
    # the same reason the MQTT client is imported and the switch interval shortened before
    # the ports open.
    model = await asyncio.to_thread(
        load_model, engine_settings.model, engine_settings.runtime, engine_settings.threads
    )
    from musicgend.service.engine import Engine  # imported by load_model, in its thread

    if settings.mqtt.enabled:
        from musicgend.io.mqtt import MqttControl
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    with ExitStack() as stack:
        stack.callback(sys.setswitchinterval, old_interval)
        ports = stack.enter_context(open_ports(port_config, loop))
        info.in_port, info.out_port = ports.in_port_name, ports.out_port_name
        info.ports_ready_s = time.monotonic() - started

        info.runtime = model.runtime
        recorder: SessionRecorder | None = None
        if settings.session.enabled:
            recorder = SessionRecorder(
                settings.session.dir,
                {
                    "model": str(settings.engine.model),
                    "runtime": model.runtime,
                    "settings": settings.public_dict(),
                },
            )
            info.session_dir = recorder.start()
        core = build_core(settings, model, time.monotonic_ns())
        runtime_name = model.runtime
        del model  # the engine owns it: a live swap must be able to free it

        def session_info() -> str | None:
            return None if info.session_dir is None else str(info.session_dir)

        from musicgend.core.clock import MidiClockFollower

        engine = Engine(
            core,
            ports,
            journal=recorder,
            loader=lambda p: load_model(p, engine_settings.runtime, engine_settings.threads),
            session_info=session_info,
            port_counters=lambda: ports.counters,
            port_sounding=ports.sounding,
            follower=core.grid if isinstance(core.grid, MidiClockFollower) else None,
            ticks_per_frame=settings.clock.ticks_per_frame,
            freeze_startup_heap=True,
        )
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGUSR1, engine.panic)
        mqtt = None
        if settings.mqtt.enabled:
            mqtt = MqttControl(settings.mqtt, engine)
            engine.on_status = mqtt.notify_status
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(engine.run(), name="engine")
                tasks.create_task(_pump_input(ports, engine), name="midi-in")
                tasks.create_task(_supervise(engine, notifier, ports), name="watchdog")
                if mqtt is not None:
                    tasks.create_task(mqtt.run(), name="mqtt")

                async def until_stopped() -> None:
                    await stop.wait()
                    raise _Stop

                tasks.create_task(until_stopped(), name="stop")
                notifier.notify("READY=1")
                if on_ready is not None:
                    on_ready(info)
        except* _Stop:
            log.info("stopping")
        finally:
            notifier.notify("STOPPING=1")
            if watchdog is not None:
                watchdog.stopping()
            sent_before = ports.counters.sent + ports.counters.dropped_output
            engine_before = engine.messages_sent
            await engine.aclose()
            engine.shutdown_messages()
            await _wait_output_drained(ports, sent_before, engine.messages_sent - engine_before)
            # the last resort: a note-off for any note written on that the engine left on
            sent_before = ports.counters.sent + ports.counters.dropped_output
            left_on = ports.release_sounding()
            if left_on:
                log.error(
                    "notes written on and never off at the stop (channel, pitch): %s; "
                    "their note-offs sent now",
                    left_on,
                )
                await _wait_output_drained(ports, sent_before, len(left_on))
            info.metrics = engine.metrics()
            info.metrics["notes_released_by_ports"] = [list(key) for key in left_on]
            info.metrics["rss_mb"] = rss_mb()
            info.metrics["private_mb"] = private_mb()
            info.metrics["runtime"] = (
                f"litert:{engine_settings.threads}" if runtime_name == "litert" else runtime_name
            )
            if recorder is not None:
                info.session_midi = await asyncio.to_thread(recorder.close)
                log.info("session written to %s", info.session_midi)
            if watchdog is not None:
                watchdog.finished()


def run_daemon(
    settings: Settings,
    on_ready: Callable[[DaemonInfo], None] | None = None,
    watchdog: StopWatchdog | None = None,
) -> DaemonInfo:
    """``musicgend run``: start (with a private JACK server if needed), serve until a stop
    signal, clean up. Returns what happened (ports, session files). ``watchdog``: see
    :func:`serve` (``musicgend run`` passes one; a caller that lives on after the daemon
    should not, as it ends the process)."""
    info = DaemonInfo()
    # NumPy runs on one BLAS thread in the daemon (set_blas_threads); no idle pool either.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    one_malloc_arena()  # before any thread: model swaps then reuse freed memory
    late_signals = ExitStack()  # closed last, after the private JACK server's stop
    try:
        with late_signals, _backend(settings.midi.backend, info):
            if info.backend == "jack" and not settings.midi.lock_jack_memory:
                from musicgend.io.jackserver import forgo_jack_memory_lock

                log.info("JACK shared memory not locked here: %s", forgo_jack_memory_lock())
            try:
                asyncio.run(serve(settings, info, on_ready=on_ready, watchdog=watchdog))
            finally:
                late_signals.enter_context(_stopping_signals_logged())
    except* MusicgendError as group:
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return info
