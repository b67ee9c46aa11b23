"""Shared helpers for tests that need a real JACK server and a separate MIDI client.

- :func:`jack_server` / the ``jackd`` fixture: a private ``jackd -n <unique> -d dummy -r 48000
  -p 256`` (``JACK_NO_AUDIO_RESERVATION=1``), ready to accept clients, with
  ``JACK_DEFAULT_SERVER`` set in ``os.environ`` while it runs; stopped cleanly afterwards.
  The yielded :class:`~musicgend.io.jackserver.EmbeddedJack` has ``stop()``/``start()``/
  ``kill()`` to restart the server under the same name.
- :class:`JackPeer`: a JACK MIDI client in a SEPARATE process (this file run as a script)
  with an input and an output port. It records every incoming event with its absolute JACK
  frame time (cycle start + offset: frame-accurate, for jitter measurements) and plays raw
  byte strings, valid or not, as many per cycle as asked.
- :func:`jack_shm_kb`: how much of the JACK server's shared memory a process maps and locks.
- :func:`wait_until` / :func:`await_until`: poll a condition with a timeout (never a blind
  sleep); the second from a coroutine.

Use from another test module: ``from tests.jackutil import JackPeer, jackd, wait_until``.
"""

from __future__ import annotations

import heapq
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import pytest

RATE_HZ = 48000
PERIOD_FRAMES = 256


@contextmanager
def jack_server(name: str | None = None) -> Iterator[Any]:
    """A private dummy JACK server; ``os.environ["JACK_DEFAULT_SERVER"]`` names it inside."""
    from musicgend.io.jackserver import EmbeddedJack

    os.environ["JACK_NO_AUDIO_RESERVATION"] = "1"
    with EmbeddedJack(name, rate_hz=RATE_HZ, period_frames=PERIOD_FRAMES) as server:
        yield server


@pytest.fixture
def jackd() -> Iterator[Any]:
    """Pytest fixture around :func:`jack_server`."""
    with jack_server() as server:
        yield server


def jack_shm_kb(pid: int) -> dict[str, int]:
    """Size, Rss and Locked (kB) of the JACK server segments ``pid`` maps, from its smaps
    (``/dev/shm/jack-<uid>-<n>``; not the server registry or its lock database)."""
    totals = {"Size": 0, "Rss": 0, "Locked": 0}
    inside = False
    with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as fh:
        for line in fh:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
                name = fields[5] if len(fields) > 5 else ""
                inside = name.startswith("/dev/shm/jack-") and "registry" not in name
            elif inside and fields[0].rstrip(":") in totals:
                totals[fields[0].rstrip(":")] += int(fields[1])
    return totals


def wait_until(
    predicate: Callable[[], Any], timeout_s: float = 5.0, interval_s: float = 0.02, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or fail the test."""
    deadline_ns = time.monotonic_ns() + int(timeout_s * 1e9)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic_ns() > deadline_ns:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what or predicate}")
        time.sleep(interval_s)


async def await_until(
    predicate: Callable[[], Any], timeout_s: float = 5.0, interval_s: float = 0.02, what: str = ""
) -> Any:
    """:func:`wait_until` for coroutines: polls without blocking the event loop."""
    import asyncio

    deadline_ns = time.monotonic_ns() + int(timeout_s * 1e9)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic_ns() > deadline_ns:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what or predicate}")
        await asyncio.sleep(interval_s)


class JackPeer:
    """A separate-process JACK MIDI client named ``name`` with ports ``in`` and ``out``.

    ``send(messages)`` plays raw messages (bytes; may be malformed) from ``name:out``,
    ``per_cycle`` of them per JACK cycle; ``received()`` returns ``[(frame, bytes)]`` of what
    arrived on ``name:in`` (frame = absolute JACK frame time). Also ``connect``, ``ports``,
    ``connections``. ``close()`` quits it, ``kill()`` SIGKILLs it (its ports vanish)."""

    def __init__(self, name: str = "peer", server: str | None = None) -> None:
        self.name = name
        env = dict(os.environ)
        if server is not None:
            env["JACK_DEFAULT_SERVER"] = server
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "peer", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        hello = self._reply(15.0)
        self.samplerate: int = hello["samplerate"]
        self.blocksize: int = hello["blocksize"]
        self.in_port = f"{name}:in"
        self.out_port = f"{name}:out"

    @property
    def pid(self) -> int:
        """The peer process's id (tests freeze it with SIGSTOP)."""
        return self._proc.pid

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put("")

    def _reply(self, timeout_s: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            pytest.fail(f"JACK peer {self.name!r} did not answer within {timeout_s:g} s")
        if not line:
            err = self._proc.stderr.read() if self._proc.stderr else ""
            pytest.fail(f"JACK peer {self.name!r} exited: {err[-2000:]}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"JACK peer {self.name!r}: {reply['error']}")
        return reply

    def request(self, op: str, timeout_s: float = 10.0, **args: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self._proc.stdin.flush()
        return self._reply(timeout_s)

    def send(
        self, messages: Sequence[bytes], per_cycle: int = 64, wait: bool = True
    ) -> dict[str, Any]:
        """Play ``messages`` in order; with ``wait`` return once all were written."""
        return self.request(
            "send",
            messages=[m.hex() for m in messages],
            per_cycle=per_cycle,
            wait=wait,
            timeout_s=30.0,
        )

    def schedule(self, events: Sequence[tuple[int, bytes]]) -> None:
        """Play each message at its absolute JACK frame (frame-accurate; a frame already
        past is played at the start of the next cycle)."""
        self.request("schedule", events=[[int(f), m.hex()] for f, m in events])

    def received(self, clear: bool = False) -> list[tuple[int, bytes]]:
        events = self.request("received", clear=clear)["events"]
        return [(frame, bytes.fromhex(data)) for frame, data in events]

    def connect(self, source: str, destination: str) -> None:
        self.request("connect", source=source, destination=destination)

    def ports(self) -> dict[str, list[str]]:
        """{"sources": [...], "destinations": [...]} MIDI ports on the server."""
        return self.request("ports")

    def connections(self, port: str) -> list[str]:
        return list(self.request("connections", port=port)["ports"])

    def slips(self) -> list[tuple[int, int]]:
        """``[(frame, lost)]``: where the server's clock lost time against the wall clock, and
        how many frames (the dummy driver loses what it wakes late by; a sound card
        doesn't). Time scheduled by the wall clock lands that much earlier in frames after."""
        return [(int(f), int(n)) for f, n in self.request("slips")["slips"]]

    def frame_time(self) -> int:
        return int(self.request("frame_time")["frame"])

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self.request("quit", timeout_s=5.0)
            except Exception:
                self._proc.kill()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close_pipes()

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                with suppress(OSError):
                    pipe.close()
        self._reader.join(5)

    def __enter__(self) -> JackPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the peer process ---------------------------------------------------------------------


def _peer_main(name: str) -> None:  # pragma: no cover (runs in the subprocess)
    import jack

    from musicgend.service.bench import ClockSlips

    jack.set_error_function(lambda msg: None)
    jack.set_info_function(lambda msg: None)
    client = jack.Client(name, no_start_server=True, use_exact_name=True)
    inport = client.midi_inports.register("in")
    outport = client.midi_outports.register("out")
    lock = threading.Lock()
    received: list[tuple[int, str]] = []
    outgoing: list[bytes] = []
    timed: list[tuple[int, int, bytes]] = []  # heap of (frame, seq, message)
    state = {"per_cycle": 64, "written": 0, "seq": 0}
    drained = threading.Event()
    drained.set()

    clock = ClockSlips(client.samplerate)

    @client.set_process_callback
    def process(nframes: int) -> None:
        now_ns = time.monotonic_ns()
        base = client.last_frame_time
        clock.cycle(base, client.frames_since_cycle_start, nframes, now_ns)
        for offset, data in inport.incoming_midi_events():
            with lock:
                received.append((base + offset, bytes(data).hex()))
        outport.clear_buffer()
        with lock:
            batch = outgoing[: state["per_cycle"]]
            del outgoing[: len(batch)]
            empty = not outgoing
            due = []
            while timed and timed[0][0] < base + nframes:
                due.append(heapq.heappop(timed))
        for data in batch:  # offset 0 first: JACK wants events in time order
            with suppress(jack.JackError):
                outport.write_midi_event(0, data)
            state["written"] += 1
        for frame, _, data in due:
            with suppress(jack.JackError):
                outport.write_midi_event(max(0, frame - base), data)
        if empty and batch:
            drained.set()

    client.activate()
    out = sys.stdout

    def answer(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    answer({"ready": True, "samplerate": client.samplerate, "blocksize": client.blocksize})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.get("op")
        try:
            if op == "send":
                msgs = [bytes.fromhex(m) for m in cmd["messages"]]
                with lock:
                    state["per_cycle"] = int(cmd.get("per_cycle", 64))
                    if msgs:
                        drained.clear()
                    outgoing.extend(msgs)
                if cmd.get("wait", True) and not drained.wait(30):
                    answer({"error": "output not drained within 30 s"})
                    continue
                answer({"ok": True, "written": state["written"]})
            elif op == "schedule":
                with lock:
                    for frame, data in cmd["events"]:
                        state["seq"] += 1
                        heapq.heappush(timed, (int(frame), state["seq"], bytes.fromhex(data)))
                answer({"ok": True})
            elif op == "received":
                with lock:
                    events = list(received)
                    if cmd.get("clear"):
                        received.clear()
                answer({"events": events})
            elif op == "connect":
                client.connect(cmd["source"], cmd["destination"])
                answer({"ok": True})
            elif op == "ports":
                answer(
                    {
                        "sources": [p.name for p in client.get_ports(is_midi=True, is_output=True)],
                        "destinations": [
                            p.name for p in client.get_ports(is_midi=True, is_input=True)
                        ],
                    }
                )
            elif op == "connections":
                port = client.get_port_by_name(cmd["port"])
                answer({"ports": [p.name for p in client.get_all_connections(port)]})
            elif op == "slips":
                answer({"slips": list(clock.slips)})
            elif op == "frame_time":
                answer({"frame": client.frame_time})
            elif op == "quit":
                answer({"ok": True})
                break
            else:
                answer({"error": f"unknown op {op!r}"})
        except Exception as exc:
            answer({"error": f"{type(exc).__name__}: {exc}"})
    client.deactivate()
    client.close()


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) == 3 and sys.argv[1] == "peer":
        _peer_main(sys.argv[2])
    else:
        sys.exit("usage: jackutil.py peer NAME")
