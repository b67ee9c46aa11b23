"""The daemon's MIDI ports: JACK (JACK-Client) and ALSA (python-rtmidi).

One client (default ``musicgend``) with a virtual input ``in`` and output ``out``:

- **Input** crosses from the MIDI thread to asyncio with ``loop.call_soon_threadsafe`` into a
  bounded :class:`asyncio.Queue` of :class:`InputEvent` (raw bytes + arrival time on the
  ``time.monotonic_ns()`` clock). Every message is validated (:func:`check_message`):
  malformed, truncated, unknown or running-status messages are dropped and counted, so is
  sysex larger than ``PortConfig.max_sysex_bytes``. When the consumer falls behind, messages
  are dropped and counted, never queued without bound, and the MIDI thread never blocks.
- **Output**: :meth:`MidiPorts.send` never blocks. On JACK each message is placed in the
  JACK cycle at the frame that corresponds to its time (``at_ns``, default: the moment of the
  call) plus one period and :data:`JACK_SEND_MARGIN_NS`, so a separate client sees the same
  spacing as the calls had, not the period grid. On ALSA it is sent at once.
- **Auto-connect**: ``connect_in``/``connect_out`` are regular expressions (``re.search``)
  matched against the full names of other clients' ports; matching ports are connected and
  watched: a port that appears later, or disappears and comes back, is connected again
  (JACK: port registration callback + a rescan every second; ALSA: rescan every second).
- **JACK server loss**: noticed by the shutdown callback, or by a watchdog when no process
  cycle ran for ``PortConfig.watchdog_s`` and the server no longer answers; the ports object
  keeps its queue, counters and echo history, polls for the server and re-creates and
  re-connects its ports when it is back (``counters.reconnects``).
- **Echo guard data**: :class:`EchoGuard` remembers what was sent recently; the engine decides
  whether an incoming message that matches is an echo.

Closing sends nothing (the engine sends its note-offs before) and joins every thread it
started, waiting at most :data:`CLOSE_WAIT_S` for each: a backend that does not answer (a
JACK server that never confirms the client's deactivation) is logged and left to drop the
client when the process ends, so that a stop never hangs on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from types import TracebackType
from typing import Any

from musicgend.errors import MidiPortError
from musicgend.io.jackserver import (
    JACK_CLIENT_LOCK,
    Backend,
    jack_running,
    jack_server_listening,
    jack_server_name,
    quiet_libjack,
)

log = logging.getLogger(__name__)

DEFAULT_CLIENT_NAME = "musicgend"
DEFAULT_MAX_SYSEX_BYTES = 4096
DEFAULT_QUEUE_SIZE = 1024


# -- validation ---------------------------------------------------------------------------


class Check(Enum):
    """Verdict of :func:`check_message`."""

    OK = "ok"
    MALFORMED = "malformed"
    SYSEX_TOO_LARGE = "sysex_too_large"


# Length of each complete message by status byte; 0 = sysex (variable); absent = undefined.
_LENGTH: dict[int, int] = {}
for _status in range(0x80, 0xF0):
    _LENGTH[_status] = 2 if 0xC0 <= _status <= 0xDF else 3
_LENGTH.update(
    {0xF0: 0, 0xF1: 2, 0xF2: 3, 0xF3: 2, 0xF6: 1, 0xF8: 1, 0xFA: 1, 0xFB: 1, 0xFC: 1, 0xFE: 1}
)
_LENGTH[0xFF] = 1  # system reset


def check_message(data: bytes, max_sysex_bytes: int = DEFAULT_MAX_SYSEX_BYTES) -> Check:
    """Whether ``data`` is exactly one complete, well-formed MIDI message.

    Rejected as MALFORMED: empty input; a leading data byte (running status: every message
    must carry its own status byte); undefined status bytes (F4 F5 F9 FD), a stray F7; a
    message shorter or longer than its status requires; a status byte among the data bytes;
    sysex without the closing F7. A sysex message longer than ``max_sysex_bytes`` (F0 and F7
    included) is SYSEX_TOO_LARGE.
    """
    if not data:
        return Check.MALFORMED
    status = data[0]
    expected = _LENGTH.get(status)
    if expected is None:  # data byte first (running status), F4/F5/F7/F9/FD
        return Check.MALFORMED
    if expected == 0:
        if len(data) < 2 or data[-1] != 0xF7:
            return Check.MALFORMED
        if any(b & 0x80 for b in data[1:-1]):
            return Check.MALFORMED
        if len(data) > max_sysex_bytes:
            return Check.SYSEX_TOO_LARGE
        return Check.OK
    if len(data) != expected:
        return Check.MALFORMED
    if any(b & 0x80 for b in data[1:]):
        return Check.MALFORMED
    return Check.OK


# -- public value types -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputEvent:
    """One validated incoming message: raw bytes and arrival time (``time.monotonic_ns()``).

    On JACK the arrival time is the JACK cycle's start plus the event's frame offset, so it is
    frame-accurate; on ALSA it is the moment the MIDI thread received it."""

    data: bytes
    arrival_ns: int


@dataclass(slots=True)
class MidiCounters:
    """What happened on the ports since they were opened (snapshot: ``MidiPorts.counters``)."""

    received: int = 0  # valid messages put into the input queue
    dropped_malformed: int = 0
    dropped_sysex: int = 0  # sysex over the size limit
    dropped_overflow: int = 0  # input queue full (consumer too slow)
    sent: int = 0  # messages written to the output port
    note_ons_sent: int = 0  # of those, note-ons (velocity > 0)
    note_offs_sent: int = 0  # of those, note-offs (0x8n, or 0x9n with velocity 0)
    note_ons_while_on_sent: int = 0  # note-ons for a key written on and not yet off
    sent_late: int = 0  # JACK: written later than their time + one period + the margin
    dropped_output: int = 0  # send() while the backend was down, or output buffer full
    connections: int = 0  # connections made by pattern (including re-connections)
    server_losses: int = 0  # JACK server went away
    reconnects: int = 0  # ports re-created after the server came back
    xruns: int = 0  # JACK: cycles the server reported as overrun (its clock lost that time)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class WrittenNotes:
    """The note-ons and note-offs written to the output port, and the keys they leave on.

    Kept by the thread that writes (JACK's process callback, ALSA's sender; the soak reads
    what its player received the same way), one flag per channel and pitch, read the way a
    synth reads them: a note-on turns its key on, a note-off turns it off. A note a listener
    never saw released can then be told apart: still on here, the daemon never released it;
    off here, the release was written and lost on the way (a JACK cycle the server
    dropped)."""

    __slots__ = ("_on", "note_offs", "note_ons", "note_ons_while_on")

    def __init__(self) -> None:
        self.note_ons = 0
        self.note_offs = 0
        self.note_ons_while_on = 0
        """Note-ons for a key already on: a re-strike without its note-off first."""
        self._on = bytearray(16 * 128)

    def record(self, data: bytes) -> None:
        """Count one written message (anything but a 3-byte note message is ignored)."""
        if len(data) != 3:
            return
        kind = data[0] & 0xF0
        if kind == 0x90 and data[2]:
            self.note_ons += 1
            key = (data[0] & 0x0F) << 7 | data[1] & 0x7F
            self.note_ons_while_on += self._on[key]
            self._on[key] = 1
        elif kind in (0x80, 0x90):
            self.note_offs += 1
            self._on[(data[0] & 0x0F) << 7 | data[1] & 0x7F] = 0

    def forget_keys(self) -> None:
        """Every key off, counts kept (the port's server went away with what it was sent)."""
        self._on = bytearray(16 * 128)

    def sounding(self) -> list[tuple[int, int]]:
        """``(channel 1–16, pitch)`` of every key written on and not written off since."""
        return [((i >> 7) + 1, i & 0x7F) for i, on in enumerate(self._on) if on]


@dataclass(frozen=True, slots=True)
class PortConfig:
    """How to open the daemon's ports."""

    backend: Backend = "jack"
    client_name: str = DEFAULT_CLIENT_NAME
    in_port: str = "in"
    out_port: str = "out"
    connect_in: str | None = None  # regex over other clients' source ports
    connect_out: str | None = None  # regex over other clients' destination ports
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_sysex_bytes: int = DEFAULT_MAX_SYSEX_BYTES
    rescan_s: float = 1.0  # pattern rescan / server poll interval
    watchdog_s: float = 1.0  # JACK: no process cycle for this long → probe the server
    echo_window_ns: int = 30_000_000

    def __post_init__(self) -> None:
        for key in ("connect_in", "connect_out"):
            pattern = getattr(self, key)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise MidiPortError(
                        f"{key}: invalid regular expression {pattern!r}: {exc}"
                    ) from exc
        if self.queue_size < 1:
            raise MidiPortError(f"queue_size must be ≥ 1, got {self.queue_size}")
        if not self.client_name or ":" in self.client_name:
            raise MidiPortError(f"client name {self.client_name!r} must be non-empty without ':'")


@dataclass(frozen=True, slots=True)
class PortList:
    """MIDI ports of a backend. ``sources`` send MIDI (use with ``--connect-in``),
    ``destinations`` receive it (use with ``--connect-out``)."""

    backend: Backend
    sources: list[str] = field(default_factory=list)
    destinations: list[str] = field(default_factory=list)


class EchoGuard:
    """Remembers (time, bytes) of recently sent messages so that the engine can tell its own
    output coming back through a routing loop from what the human played.

    :meth:`is_echo` is True when the same bytes were sent within ``window_ns`` before
    ``arrival_ns``; the match is consumed, so one sent message explains at most one echo.
    Thread-safe."""

    def __init__(self, window_ns: int = 30_000_000, capacity: int = 512) -> None:
        self.window_ns = window_ns
        self._sent: deque[tuple[int, bytes]] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def note_sent(self, data: bytes, t_ns: int) -> None:
        with self._lock:
            self._sent.append((t_ns, data))

    def is_echo(self, data: bytes, arrival_ns: int) -> bool:
        with self._lock:
            oldest_ns = arrival_ns - self.window_ns
            while self._sent and self._sent[0][0] < oldest_ns:
                self._sent.popleft()
            for i, (t_ns, sent) in enumerate(self._sent):
                if sent == data and t_ns <= arrival_ns + self.window_ns:
                    del self._sent[i]
                    return True
        return False

    def recent(self) -> list[tuple[int, bytes]]:
        with self._lock:
            return list(self._sent)


# -- input bridge (MIDI thread → asyncio) -------------------------------------------------


class _InputBridge:
    """Hands batches of raw events from a MIDI thread to the event loop, bounded.

    The MIDI thread calls :meth:`hand`; events handed but not yet taken by the loop are
    capped at ``limit`` (beyond: dropped and counted in the thread), and the asyncio queue
    itself is bounded (``put_nowait``; full → dropped and counted)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: PortConfig) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[InputEvent] = asyncio.Queue(maxsize=config.queue_size)
        self.limit = config.queue_size
        self.max_sysex_bytes = config.max_sysex_bytes
        self.handed = 0  # written by the MIDI thread only
        self.taken = 0  # written by the loop only
        self.thread_overflow = 0  # MIDI thread only
        self.received = 0
        self.dropped_malformed = 0
        self.dropped_sysex = 0
        self.loop_overflow = 0

    def room(self) -> int:
        return self.limit - (self.handed - self.taken)

    def hand(self, batch: list[tuple[bytes, int]]) -> None:
        """From the MIDI thread: never blocks."""
        room = self.room()
        if len(batch) > room:
            self.thread_overflow += len(batch) - max(room, 0)
            batch = batch[: max(room, 0)]
            if not batch:
                return
        self.handed += len(batch)
        try:
            self.loop.call_soon_threadsafe(self._deliver, batch)
        except RuntimeError:  # loop closed
            self.handed -= len(batch)
            self.thread_overflow += len(batch)

    def _deliver(self, batch: list[tuple[bytes, int]]) -> None:
        self.taken += len(batch)
        for data, arrival_ns in batch:
            verdict = check_message(data, self.max_sysex_bytes)
            if verdict is Check.MALFORMED:
                self.dropped_malformed += 1
            elif verdict is Check.SYSEX_TOO_LARGE:
                self.dropped_sysex += 1
            else:
                try:
                    self.queue.put_nowait(InputEvent(data, arrival_ns))
                except asyncio.QueueFull:
                    self.loop_overflow += 1
                else:
                    self.received += 1


# -- ports --------------------------------------------------------------------------------


class MidiPorts(ABC):
    """The daemon's virtual MIDI input and output. Use as a context manager, opened from the
    thread that runs the event loop (or pass ``loop``).

    ``await ports.get()`` (or ``ports.queue``) yields :class:`InputEvent`; ``ports.send(data)``
    emits raw bytes; ``ports.counters`` is a :class:`MidiCounters` snapshot; ``ports.echo`` is
    the :class:`EchoGuard` fed by every :meth:`send`.
    """

    backend: Backend

    def __init__(self, config: PortConfig, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config
        self._loop_arg = loop
        self._bridge: _InputBridge | None = None
        self.echo = EchoGuard(config.echo_window_ns)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.close_abandoned = False
        """True when :meth:`close` left the backend's client to the end of the process (the
        backend did not answer within :data:`CLOSE_WAIT_S`)."""
        # supervisor-thread counters
        self._connections = 0
        self._server_losses = 0
        self._reconnects = 0
        # send-side counters (caller's thread) and MIDI-thread counters
        self._dropped_output = 0
        self._rt_sent = 0
        self._rt_notes = WrittenNotes()
        self._rt_late = 0
        self._rt_dropped_output = 0
        self._rt_xruns = 0
        self._in_re = re.compile(config.connect_in) if config.connect_in else None
        self._out_re = re.compile(config.connect_out) if config.connect_out else None

    # public API

    @property
    def queue(self) -> asyncio.Queue[InputEvent]:
        return self._require_bridge().queue

    async def get(self) -> InputEvent:
        return await self._require_bridge().queue.get()

    @property
    def in_port_name(self) -> str:
        """Full name of the input port as other clients see it."""
        return f"{self.config.client_name}:{self.config.in_port}"

    @property
    def out_port_name(self) -> str:
        return f"{self.config.client_name}:{self.config.out_port}"

    @property
    def connected(self) -> bool:
        """True while the ports exist on the backend (False while a JACK server is away)."""
        return self._ready.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block (not from the event loop!) until the ports exist again; False on timeout."""
        return self._ready.wait(timeout_s)

    schedules_output = False
    """True where :meth:`send` places a message at its ``at_ns`` (JACK); False where it goes
    out at once (ALSA), so a caller with a time in the future waits for it first."""

    @property
    def output_latency_ns(self) -> int:
        """How much later than its ``at_ns`` a message is placed (JACK: one period plus
        :data:`JACK_SEND_MARGIN_NS`; a message meant to land exactly on an input event's time
        is sent this much earlier)."""
        return 0

    @property
    def counters(self) -> MidiCounters:
        b = self._bridge
        c = MidiCounters(
            sent=self._rt_sent,
            note_ons_sent=self._rt_notes.note_ons,
            note_offs_sent=self._rt_notes.note_offs,
            note_ons_while_on_sent=self._rt_notes.note_ons_while_on,
            sent_late=self._rt_late,
            dropped_output=self._dropped_output + self._rt_dropped_output,
            connections=self._connections,
            server_losses=self._server_losses,
            reconnects=self._reconnects,
            xruns=self._rt_xruns,
        )
        if b is not None:
            c.received = b.received
            c.dropped_malformed = b.dropped_malformed
            c.dropped_sysex = b.dropped_sysex
            c.dropped_overflow = b.thread_overflow + b.loop_overflow
        return c

    def send(self, data: bytes | Sequence[int], at_ns: int | None = None) -> None:
        """Emit one raw message; never blocks. ``at_ns`` (``time.monotonic_ns()`` clock,
        default now) is when it is meant to sound: JACK places it at that time plus one
        period; ALSA sends at once. While the backend is down the message is dropped and
        counted. Bytes are not validated here: the engine builds them."""
        payload = bytes(data)
        t_ns = time.monotonic_ns() if at_ns is None else at_ns
        if not self._ready.is_set():
            self._dropped_output += 1
            return
        self.echo.note_sent(payload, t_ns)
        self._send(payload, t_ns)

    def send_many(
        self, messages: Iterable[bytes | Sequence[int]], at_ns: int | None = None
    ) -> None:
        """:meth:`send` each message with the same time (one frame's note-offs then note-ons)."""
        t_ns = time.monotonic_ns() if at_ns is None else at_ns
        for message in messages:
            self.send(message, t_ns)

    def sounding(self) -> list[tuple[int, int]]:
        """``(channel 1–16, pitch)`` of the notes written on and not yet written off
        (:class:`WrittenNotes`; empty after a clean stop's note-offs went out)."""
        return self._rt_notes.sounding()

    def release_sounding(self) -> list[tuple[int, int]]:
        """Send a note-off for every note :meth:`sounding` lists (the last resort at a stop:
        whatever its sender forgot, no note written on stays on). Returns those notes."""
        keys = self.sounding()
        self.send_many(bytes([0x80 | (channel - 1), pitch, 0]) for channel, pitch in keys)
        return keys

    def connections(self) -> dict[str, list[str]]:
        """Current connections of our ports: {"in": [sources], "out": [destinations]}."""
        return self._connections_now()

    # lifecycle

    def __enter__(self) -> MidiPorts:
        loop = self._loop_arg or asyncio.get_running_loop()
        self._bridge = _InputBridge(loop, self.config)
        self._open()
        self._ready.set()
        self._thread = threading.Thread(
            target=self._supervise, name=f"midi-{self.backend}-supervisor", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the supervisor thread and close the ports. Sends nothing. Idempotent.

        Bounded: a supervisor that does not end within :data:`CLOSE_WAIT_S` (stuck in a
        backend call, such as a JACK client opening against a server that never answers)
        is logged with its stack and left behind (a daemon thread: it does not hold up the
        process's exit); so is a client whose closing the backend does not answer within
        that time (:attr:`close_abandoned`)."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(CLOSE_WAIT_S)
            if thread.is_alive():
                log.error(
                    "the MIDI supervisor thread did not end within %.0f s; left behind. "
                    "Its stack:\n%s",
                    CLOSE_WAIT_S,
                    thread_stack(thread),
                )
        self._ready.clear()  # after the supervisor: a re-open it just made no longer counts
        self._close_backend()

    # backend hooks

    def _require_bridge(self) -> _InputBridge:
        if self._bridge is None:
            raise MidiPortError("MIDI ports are not open (use them as a context manager)")
        return self._bridge

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _close_backend(self) -> None: ...

    @abstractmethod
    def _send(self, data: bytes, t_ns: int) -> None: ...

    @abstractmethod
    def _supervise(self) -> None: ...

    @abstractmethod
    def _connections_now(self) -> dict[str, list[str]]: ...


CLOSE_WAIT_S = 5.0
"""How long :meth:`MidiPorts.close` waits for its supervisor thread, and for the backend to
close its client (JACK: the server's answer)."""


def thread_stack(thread: threading.Thread) -> str:
    """Where ``thread`` is now (its Python stack, innermost call last), for a log message."""
    import sys
    import traceback

    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return "  (no Python frame: the thread has ended)"
    return "".join(traceback.format_stack(frame)).rstrip()


JACK_SEND_MARGIN_NS = 4_000_000
"""On JACK a message for ``at_ns`` is placed one period plus this much later, so that one
handed over up to this late still lands on its frame: with one period alone, the margin was
anything from 0 to a period, and of 3000 frames (128-frame periods, 2.7 ms) 68 wrote some
messages late, a period or more off the grid: the onset jitter's 1 % tail (decision latency
p99 0.9 ms, max 4.9 ms, measured)."""


class JackMidiPorts(MidiPorts):
    """Ports on a JACK server (the one named by ``$JACK_DEFAULT_SERVER``), one JACK client
    with a MIDI input and output. The process callback runs in JACK's thread and needs the
    GIL briefly each period; keep ``sys.getswitchinterval()`` small (≤ 1 ms) in the daemon so
    it never waits long."""

    backend: Backend = "jack"

    def __init__(self, config: PortConfig, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, loop)
        self._client: Any = None
        self._inport: Any = None
        self._outport: Any = None
        self._server = jack_server_name()
        self._out_queue: deque[tuple[int, bytes]] = deque()
        self._heap: list[tuple[int, int, bytes]] = []
        self._seq = itertools.count()
        self._lost = threading.Event()
        self._last_cycle_ns = 0
        self._ns_per_frame = 0.0
        self._ports_changed = threading.Event()
        self._shutdown_reason = ""
        # Clients whose server died. Never jack_client_close()d: libjack 1.9.21 segfaults
        # there (seen both right after the shutdown callback and at garbage collection).
        # Their threads end by themselves (tested); the objects stay referenced so that
        # the cffi callbacks outlive anything that might still call them.
        self._dead_clients: list[Any] = []
        # Native threads that libjack started for the current client: after a server loss
        # no new client is opened until they have ended (a client opened while they wind
        # down can wait forever on a libjack mutex).
        self._client_tids: frozenset[int] = frozenset()

    schedules_output = True

    @property
    def output_latency_ns(self) -> int:
        client = self._client
        if client is None:
            return 0
        try:
            return round(client.blocksize * self._ns_per_frame) + JACK_SEND_MARGIN_NS
        except Exception:  # the server just went away
            return 0

    # JACK client lifecycle (supervisor thread or __enter__)

    def _open(self) -> None:
        with JACK_CLIENT_LOCK:
            self._open_locked()
        self._connect_matching()

    def _open_locked(self) -> None:
        import jack

        quiet_libjack()
        tids_before = _native_thread_ids()
        try:
            client = jack.Client(
                self.config.client_name,
                use_exact_name=True,
                no_start_server=True,
                servername=self._server,
            )
        except jack.JackOpenError as exc:
            if jack_running(self._server):
                raise MidiPortError(
                    f"JACK client name {self.config.client_name!r} is taken on server "
                    f"{self._server!r} (is another musicgend running?)"
                ) from exc
            raise MidiPortError(
                f"no JACK server {self._server!r} is running (start one, or use --backend auto)"
            ) from exc
        try:
            self._inport = client.midi_inports.register(self.config.in_port)
            self._outport = client.midi_outports.register(self.config.out_port)
            self._ns_per_frame = 1e9 / client.samplerate
            self._heap.clear()
            self._out_queue.clear()
            self._lost.clear()
            client.set_process_callback(self._process)
            client.set_shutdown_callback(self._on_shutdown)
            client.set_xrun_callback(self._on_xrun)
            client.set_port_registration_callback(self._on_port_registration, only_available=False)
            self._last_cycle_ns = time.monotonic_ns()
            self._client = client
            client.activate()
            self._client_tids = _native_thread_ids() - tids_before
        except jack.JackError as exc:
            self._client = None
            client.close()
            raise MidiPortError(f"can't create JACK MIDI ports: {exc}") from exc

    def _close_backend(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        lost = self._lost.is_set()

        def close_client() -> None:
            with JACK_CLIENT_LOCK:
                with contextlib.suppress(Exception):
                    if not lost:
                        client.deactivate()
                with contextlib.suppress(Exception):
                    client.close()

        # jack_deactivate waits for the server's answer, and a server busy with another
        # client can keep it waiting: two hour-long soaks ended with a stop that never did
        # (in the second, the stop watchdog's stacks showed the main thread in
        # jack_deactivate, reading the server's socket). The stop must not depend on it.
        closer = threading.Thread(target=close_client, name="jack-client-close", daemon=True)
        closer.start()
        closer.join(CLOSE_WAIT_S)
        if closer.is_alive():
            self.close_abandoned = True
            log.warning(
                "JACK server %r did not answer within %.0f s while client %r was closing; "
                "left to the server, which drops the client when this process ends. "
                "Where it waits:\n%s",
                self._server,
                CLOSE_WAIT_S,
                self.config.client_name,
                thread_stack(closer),
            )

    # JACK callbacks (JACK threads: no JACK API calls except port buffers)

    def _on_shutdown(self, status: Any, reason: str) -> None:
        # Flags only: this runs in a JACK thread that is about to end.
        self._shutdown_reason = reason
        self._ready.clear()
        self._lost.set()
        self._wake.set()

    def _on_xrun(self, delayed_usecs: float) -> None:
        self._rt_xruns += 1

    def _on_port_registration(self, port: Any, register: bool) -> None:
        if register:
            self._ports_changed.set()
            self._wake.set()

    def _process(self, nframes: int) -> None:
        client = self._client
        if client is None:
            # activate() may run the first cycle before _client is assigned
            return
        now_ns = time.monotonic_ns()
        ns_per_frame = self._ns_per_frame
        cycle_start_ns = now_ns - int(client.frames_since_cycle_start * ns_per_frame)
        self._last_cycle_ns = now_ns
        bridge = self._bridge
        batch = [
            (bytes(buf), cycle_start_ns + int(offset * ns_per_frame))
            for offset, buf in self._inport.incoming_midi_events()
        ]
        if batch and bridge is not None:
            bridge.hand(batch)
        out = self._outport
        out.clear_buffer()
        heap = self._heap
        queue = self._out_queue
        while queue:
            t_ns, data = queue.popleft()
            heapq.heappush(heap, (t_ns, next(self._seq), data))
        if not heap:
            return
        latency_ns = nframes * ns_per_frame + JACK_SEND_MARGIN_NS
        last_offset = 0
        while heap:
            t_ns, _, data = heap[0]
            offset = round((t_ns + latency_ns - cycle_start_ns) / ns_per_frame)
            if offset >= nframes:
                break
            heapq.heappop(heap)
            if offset < 0:
                self._rt_late += 1
                offset = 0
            offset = max(offset, last_offset)
            try:
                out.write_midi_event(offset, data)
            except Exception:  # buffer full
                self._rt_dropped_output += 1
                continue
            last_offset = offset
            self._rt_sent += 1
            self._rt_notes.record(data)

    # send (caller's thread)

    def _send(self, data: bytes, t_ns: int) -> None:
        self._out_queue.append((t_ns, data))

    # connections

    def _own(self, name: str) -> bool:
        return name.startswith(self.config.client_name + ":")

    def _connect_matching(self) -> None:
        client = self._client
        if client is None or (self._in_re is None and self._out_re is None):
            return
        import jack

        jobs: list[tuple[re.Pattern[str], bool]] = []
        if self._in_re is not None:
            jobs.append((self._in_re, True))
        if self._out_re is not None:
            jobs.append((self._out_re, False))
        for pattern, into_us in jobs:
            try:
                candidates = client.get_ports(is_midi=True, is_output=into_us, is_input=not into_us)
                ours = self._inport if into_us else self._outport
                linked = {p.name for p in client.get_all_connections(ours)}
            except jack.JackError as exc:
                log.debug("port scan failed: %s", exc)
                continue
            for port in candidates:
                name = port.name
                if self._own(name) or name in linked or not pattern.search(name):
                    continue
                try:
                    if into_us:
                        client.connect(name, ours.name)
                    else:
                        client.connect(ours.name, name)
                except jack.JackError as exc:
                    log.debug("connect %s failed: %s", name, exc)
                    continue
                self._connections += 1
                pair = (name, ours.name) if into_us else (ours.name, name)
                log.info("connected %s → %s", *pair)

    def _connections_now(self) -> dict[str, list[str]]:
        client = self._client
        if client is None:
            return {"in": [], "out": []}
        return {
            "in": sorted(p.name for p in client.get_all_connections(self._inport)),
            "out": sorted(p.name for p in client.get_all_connections(self._outport)),
        }

    # supervisor thread

    def _server_alive(self) -> bool:
        if time.monotonic_ns() - self._last_cycle_ns < self.config.watchdog_s * 1e9:
            return True
        return jack_running(self._server)

    def _supervise(self) -> None:
        rescan_ns = int(self.config.rescan_s * 1e9)
        next_scan_ns = time.monotonic_ns() + rescan_ns
        poll_s = min(self.config.rescan_s, self.config.watchdog_s / 2, 0.25)
        while not self._stop.is_set():
            self._wake.wait(poll_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            if self._lost.is_set() or not self._server_alive():
                self._handle_loss()
                continue
            now_ns = time.monotonic_ns()
            if self._ports_changed.is_set() or now_ns >= next_scan_ns:
                self._ports_changed.clear()
                next_scan_ns = now_ns + rescan_ns
                try:
                    self._connect_matching()
                except Exception:
                    log.exception("auto-connect failed")

    def _handle_loss(self) -> None:
        self._ready.clear()
        self._lost.set()
        self._server_losses += 1
        log.warning(
            "JACK server %r lost (%s); waiting for it to come back",
            self._server,
            self._shutdown_reason or "no process cycle and no answer",
        )
        self._shutdown_reason = ""
        dead, self._client = self._client, None
        if dead is not None:
            import jack

            self._dead_clients.append((dead, self._inport, self._outport))
            dead._ptr = jack._ffi.NULL  # so that neither close() nor __del__ closes it
        self._rt_notes.forget_keys()  # what was written went with the server
        # Before any new JACK client is opened (the probe included): let the old server go
        # (its socket vanishes on a clean exit and refuses when it was killed; a client
        # opened against a server that is still shutting down waits on a handshake that
        # never ends) and let the lost client's libjack threads end. Both waits are bounded.
        settle_deadline_ns = time.monotonic_ns() + int(self.config.watchdog_s * 5e9)
        while not self._stop.is_set() and time.monotonic_ns() < settle_deadline_ns:
            if not jack_server_listening(self._server) and not (
                self._client_tids & _native_thread_ids()
            ):
                break
            self._stop.wait(0.05)
        else:
            if not self._stop.is_set():
                log.debug("old JACK server or client threads still there; re-opening anyway")
        self._client_tids = frozenset()
        while not self._stop.is_set():
            if jack_running(self._server):
                try:
                    self._open()
                except MidiPortError as exc:
                    log.debug("re-open failed: %s", exc)
                else:
                    self._reconnects += 1
                    self._ready.set()
                    log.warning("JACK server %r back; ports re-created", self._server)
                    return
            self._stop.wait(min(self.config.rescan_s, 0.25))


def _native_thread_ids() -> frozenset[int]:
    """The kernel thread ids of this process (Linux ``/proc``; empty where there is none)."""
    try:
        return frozenset(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:
        return frozenset()


class AlsaMidiPorts(MidiPorts):
    """Ports on the ALSA sequencer through python-rtmidi (one sequencer client per rtmidi
    object, all named ``client_name``). Pattern connections open an extra rtmidi object per
    matched port, re-scanned every ``rescan_s``. Output is sent at once (``at_ns`` ignored)."""

    backend: Backend = "alsa"

    def __init__(self, config: PortConfig, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, loop)
        self._in: Any = None
        self._out: Any = None
        self._linked_in: dict[str, Any] = {}
        self._linked_out: dict[str, Any] = {}
        self._send_lock = threading.Lock()

    def _api(self) -> int:
        import rtmidi

        if rtmidi.API_LINUX_ALSA not in rtmidi.get_compiled_api():
            raise MidiPortError("python-rtmidi was built without ALSA support")
        return int(rtmidi.API_LINUX_ALSA)

    def _new_in(self) -> Any:
        import rtmidi

        midi_in = rtmidi.MidiIn(self._api(), name=self.config.client_name)
        midi_in.ignore_types(sysex=False, timing=False, active_sense=False)
        midi_in.set_callback(self._on_message)
        return midi_in

    def _open(self) -> None:
        import rtmidi

        from musicgend.io.jackserver import ALSA_SEQ_DEVICE, alsa_sequencer_present

        if not alsa_sequencer_present():
            raise MidiPortError(f"no ALSA sequencer: {ALSA_SEQ_DEVICE} missing or not usable")
        try:
            self._in = self._new_in()
            self._in.open_virtual_port(self.config.in_port)
            self._out = rtmidi.MidiOut(self._api(), name=self.config.client_name)
            self._out.open_virtual_port(self.config.out_port)
        except rtmidi.RtMidiError as exc:
            self._close_backend()
            raise MidiPortError(f"can't open ALSA sequencer ports: {exc}") from exc
        self._connect_matching()

    def _on_message(self, event: tuple[list[int], float], _data: object = None) -> None:
        bridge = self._bridge
        if bridge is not None:
            bridge.hand([(bytes(event[0]), time.monotonic_ns())])

    def _send(self, data: bytes, t_ns: int) -> None:
        with self._send_lock:
            targets = [self._out, *self._linked_out.values()]
            for target in targets:
                if target is None:
                    continue
                try:
                    target.send_message(data)
                except Exception:
                    self._rt_dropped_output += 1
                    return
            self._rt_sent += 1
            self._rt_notes.record(data)

    def _own(self, name: str) -> bool:
        return name.startswith(self.config.client_name + ":")

    def _connect_matching(self) -> None:
        import rtmidi

        if self._in_re is not None:
            sources = rtmidi.MidiIn(self._api(), name=f"{self.config.client_name}-scan").get_ports()
            self._sync(sources, self._in_re, self._linked_in, inbound=True)
        if self._out_re is not None:
            dests = rtmidi.MidiOut(self._api(), name=f"{self.config.client_name}-scan").get_ports()
            with self._send_lock:
                self._sync(dests, self._out_re, self._linked_out, inbound=False)

    def _sync(
        self, names: list[str], pattern: re.Pattern[str], linked: dict[str, Any], inbound: bool
    ) -> None:
        import rtmidi

        present = set(names)
        for gone in [n for n in linked if n not in present]:
            with contextlib.suppress(Exception):
                linked.pop(gone).close_port()
        for index, name in enumerate(names):
            if name in linked or self._own(name) or not pattern.search(name):
                continue
            try:
                if inbound:
                    obj = self._new_in()
                    obj.open_port(index, self.config.in_port)
                else:
                    obj = rtmidi.MidiOut(self._api(), name=self.config.client_name)
                    obj.open_port(index, self.config.out_port)
            except rtmidi.RtMidiError as exc:
                log.debug("connect %s failed: %s", name, exc)
                continue
            linked[name] = obj
            self._connections += 1

    def _connections_now(self) -> dict[str, list[str]]:
        return {"in": sorted(self._linked_in), "out": sorted(self._linked_out)}

    def _supervise(self) -> None:
        while not self._stop.wait(self.config.rescan_s):
            if self._in_re is None and self._out_re is None:
                continue
            try:
                self._connect_matching()
            except Exception:
                log.exception("auto-connect failed")

    def _close_backend(self) -> None:
        with self._send_lock:
            objs = [self._in, self._out, *self._linked_in.values(), *self._linked_out.values()]
            self._in = self._out = None
            self._linked_in.clear()
            self._linked_out.clear()
        for obj in objs:
            if obj is None:
                continue
            with contextlib.suppress(Exception):
                if hasattr(obj, "cancel_callback"):
                    obj.cancel_callback()
            with contextlib.suppress(Exception):
                obj.close_port()
            with contextlib.suppress(Exception):
                obj.delete()


def open_ports(config: PortConfig, loop: asyncio.AbstractEventLoop | None = None) -> MidiPorts:
    """The ports object for ``config.backend`` (not yet open: use it in a ``with``)."""
    if config.backend == "jack":
        return JackMidiPorts(config, loop)
    if config.backend == "alsa":
        return AlsaMidiPorts(config, loop)
    raise MidiPortError(f"unknown MIDI backend {config.backend!r}; choose jack or alsa")


def list_ports(backend: Backend) -> PortList:
    """All MIDI ports the backend knows, by full name."""
    if backend == "jack":
        import jack

        quiet_libjack()
        server = jack_server_name()
        with JACK_CLIENT_LOCK:
            try:
                client = jack.Client("musicgend-ports", no_start_server=True, servername=server)
            except jack.JackError as exc:
                raise MidiPortError(f"no JACK server {server!r} is running") from exc
            try:
                return PortList(
                    "jack",
                    sorted(p.name for p in client.get_ports(is_midi=True, is_output=True)),
                    sorted(p.name for p in client.get_ports(is_midi=True, is_input=True)),
                )
            finally:
                client.close()
    if backend == "alsa":
        import rtmidi

        from musicgend.io.jackserver import ALSA_SEQ_DEVICE, alsa_sequencer_present

        if not alsa_sequencer_present():
            raise MidiPortError(f"no ALSA sequencer: {ALSA_SEQ_DEVICE} missing or not usable")
        if rtmidi.API_LINUX_ALSA not in rtmidi.get_compiled_api():
            raise MidiPortError("python-rtmidi was built without ALSA support")
        try:
            sources = rtmidi.MidiIn(rtmidi.API_LINUX_ALSA, name="musicgend-ports").get_ports()
            dests = rtmidi.MidiOut(rtmidi.API_LINUX_ALSA, name="musicgend-ports").get_ports()
        except rtmidi.RtMidiError as exc:
            raise MidiPortError(f"ALSA sequencer unavailable: {exc}") from exc
        return PortList("alsa", list(sources), list(dests))
    raise MidiPortError(f"unknown MIDI backend {backend!r}; choose jack or alsa")


def describe_ports(backend: str = "auto", as_json: bool = False) -> str:
    """Text for ``musicgend ports``: the backend's MIDI sources and destinations.

    ``auto`` lists a running JACK server's ports, else the ALSA sequencer's."""
    import json

    from musicgend.io.jackserver import alsa_sequencer_present

    chosen: Backend
    if backend == "auto":
        if jack_running():
            chosen = "jack"
        elif alsa_sequencer_present():
            chosen = "alsa"
        else:
            raise MidiPortError(
                f"no JACK server {jack_server_name()!r} running and no ALSA sequencer: no ports "
                "to list (musicgend run starts a private JACK server by itself)"
            )
    elif backend in ("jack", "alsa"):
        chosen = "jack" if backend == "jack" else "alsa"
    else:
        raise MidiPortError(f"unknown backend {backend!r}; choose auto, jack or alsa")
    found = list_ports(chosen)
    if as_json:
        payload = {
            "backend": found.backend,
            "sources": found.sources,
            "destinations": found.destinations,
        }
        return json.dumps(payload, indent=2) + "\n"
    where = f"JACK server {jack_server_name()!r}" if chosen == "jack" else "ALSA sequencer"
    lines = [f"backend: {chosen} ({where})", "sources (use with --connect-in):"]
    lines += [f"  {name}" for name in found.sources] or ["  (none)"]
    lines.append("destinations (use with --connect-out):")
    lines += [f"  {name}" for name in found.destinations] or ["  (none)"]
    return "\n".join(lines) + "\n"
