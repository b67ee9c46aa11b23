"""The daemon's MIDI ports on a real private JACK server, driven by a separate client process."""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from musicgend.errors import MidiPortError
from musicgend.io.midi import MidiPorts, PortConfig, open_ports
from tests.jackutil import JackPeer, await_until, jackd

pytestmark = pytest.mark.jack

__all__ = ["jackd"]  # the fixture, re-exported for pytest

NOTE_ON = bytes([0x90, 60, 100])
NOTE_OFF = bytes([0x80, 60, 0])


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), 60))


async def next_events(ports: MidiPorts, n: int, timeout_s: float = 5.0) -> list[Any]:
    return [await asyncio.wait_for(ports.get(), timeout_s) for _ in range(n)]


def test_ports_appear_with_their_names_to_another_client(jackd: Any) -> None:
    async def main() -> None:
        cfg = PortConfig(client_name="mgtest", in_port="keys-in", out_port="chords-out")
        with open_ports(cfg) as ports, JackPeer("observer") as peer:
            listed = peer.ports()
            assert "mgtest:keys-in" in listed["destinations"]
            assert "mgtest:chords-out" in listed["sources"]
            assert ports.in_port_name == "mgtest:keys-in"
            assert ports.out_port_name == "mgtest:chords-out"
        with JackPeer("observer2") as peer:
            listed = peer.ports()
            assert not [p for p in listed["sources"] + listed["destinations"] if "mgtest" in p]

    run(main)


def test_client_name_taken_is_a_clear_error(jackd: Any) -> None:
    async def main() -> None:
        with (
            open_ports(PortConfig()),
            pytest.raises(MidiPortError, match="is taken"),
            open_ports(PortConfig()),
        ):
            pass

    run(main)


def test_no_server_is_a_clear_error(jackd: Any) -> None:
    jackd.stop()

    async def main() -> None:
        with pytest.raises(MidiPortError, match="no JACK server"), open_ports(PortConfig()):
            pass

    run(main)


def test_input_from_a_separate_client_reaches_the_queue_with_arrival_times(jackd: Any) -> None:
    async def main() -> None:
        with open_ports(PortConfig()) as ports, JackPeer("keys") as peer:
            peer.connect(peer.out_port, ports.in_port_name)
            before_ns = time.monotonic_ns()
            played = [NOTE_ON, bytes([0xB0, 64, 127]), NOTE_OFF, bytes([0xE0, 0, 64])]
            peer.send(played, per_cycle=1)
            events = await next_events(ports, len(played))
            after_ns = time.monotonic_ns()
            assert [e.data for e in events] == played
            times = [e.arrival_ns for e in events]
            assert times == sorted(times)
            assert len(set(times)) == len(times)  # one per JACK cycle: distinct times
            assert before_ns - 10_000_000 <= times[0] and times[-1] <= after_ns
            assert ports.counters.received == len(played)

    run(main)


def test_malformed_input_is_dropped_and_counted(jackd: Any) -> None:
    async def main() -> None:
        cfg = PortConfig(max_sysex_bytes=16)
        with open_ports(cfg) as ports, JackPeer("keys") as peer:
            peer.connect(peer.out_port, ports.in_port_name)
            bad = [
                bytes([0x3C, 0x40]),  # running status: no status byte
                bytes([0x90, 60]),  # truncated note-on
                bytes([0x90, 60, 100, 7]),  # too long
                bytes([0xF4]),  # undefined status
                bytes([0x90, 0x80, 0x10]),  # status byte among data bytes
                bytes([0xF0, 1, 2, 3]),  # unterminated sysex
            ]
            big_sysex = bytes([0xF0, *range(20), 0xF7])
            small_sysex = bytes([0xF0, 0x7E, 0x7F, 0x06, 0x01, 0xF7])
            peer.send([*bad, big_sysex, small_sysex, NOTE_ON], per_cycle=3)
            events = await next_events(ports, 2)
            assert [e.data for e in events] == [small_sysex, NOTE_ON]
            await await_until(lambda: ports.counters.dropped_malformed == len(bad))
            c = ports.counters
            assert (c.received, c.dropped_malformed, c.dropped_sysex) == (2, len(bad), 1)

    run(main)


def test_a_flood_overflows_the_bounded_queue_without_blocking(jackd: Any) -> None:
    async def main() -> None:
        cfg = PortConfig(queue_size=64)
        n = 4000
        with open_ports(cfg) as ports, JackPeer("flood") as peer:
            peer.connect(peer.out_port, ports.in_port_name)
            flood = [bytes([0x90, i % 128, 1 + i % 127]) for i in range(n)]
            # 100 per 5.3 ms cycle: 19,000 messages/s, 19 times a MIDI cable's most, and a
            # rate whose callbacks a slow 2-core host still takes in within each cycle
            peer.send(flood, per_cycle=100)
            # Nobody reads the queue: everything beyond its bound is dropped and counted.
            await await_until(
                lambda: ports.counters.received + ports.counters.dropped_overflow == n,
                what="every flooded message received or counted as dropped",
            )
            c = ports.counters
            assert c.received == ports.queue.qsize() <= 64
            assert c.dropped_overflow == n - c.received > 0
            # The port still works: drain, play one more note, get it.
            while not ports.queue.empty():
                ports.queue.get_nowait()
            peer.send([NOTE_OFF])
            (event,) = await next_events(ports, 1)
            assert event.data == NOTE_OFF

    run(main)


def test_output_is_placed_at_its_time_not_on_the_period_grid(jackd: Any) -> None:
    """20 ms spacing is 960 frames: not a multiple of the 256-frame period, so a sender that
    writes at the start of each cycle would be off by ≥ 64 frames on most messages."""

    async def main() -> None:
        with open_ports(PortConfig()) as ports, JackPeer("recorder") as peer:
            peer.connect(ports.out_port_name, peer.in_port)
            spacing_ns = 20_000_000
            start_ns = time.monotonic_ns() + 50_000_000
            notes = [bytes([0x90, 48 + k, 90]) for k in range(12)]
            for k, note in enumerate(notes):
                ports.send(note, at_ns=start_ns + k * spacing_ns)
            await await_until(lambda: len(peer.received()) == len(notes), what="12 notes")
            got = peer.received()
            assert [d for _, d in got] == notes
            frames = [f for f, _ in got]
            spacing_frames = spacing_ns * peer.samplerate // 1_000_000_000
            errors = [abs(f - (frames[0] + k * spacing_frames)) for k, f in enumerate(frames)]
            assert statistics.median(errors) <= 8, errors
            assert sum(e <= 32 for e in errors) >= len(errors) - 2, errors
            c = ports.counters
            assert (c.sent, c.note_ons_sent, c.note_offs_sent) == (len(notes), len(notes), 0)
            assert ports.sounding() == [(1, 48 + k) for k in range(12)]
            assert [d for _, d in ports.echo.recent()] == notes
            ports.send_many([bytes([0x80, 48, 0]), bytes([0x90, 49, 0]), bytes([0xB0, 123, 0])])
            await await_until(lambda: ports.counters.sent == len(notes) + 3, what="2 releases")
            assert ports.counters.note_offs_sent == 2
            assert ports.sounding() == [(1, 48 + k) for k in range(2, 12)]
            # the last resort at a stop: a note-off for each of them, and the peer gets them
            await await_until(lambda: len(peer.received()) == len(notes) + 3, what="all 15")
            peer.received(clear=True)
            assert ports.release_sounding() == [(1, 48 + k) for k in range(2, 12)]
            await await_until(lambda: len(peer.received()) == 10, what="10 note-offs")
            assert sorted(d for _, d in peer.received()) == [
                bytes([0x80, 48 + k, 0]) for k in range(2, 12)
            ]
            assert ports.sounding() == [] and ports.release_sounding() == []

    run(main)


def test_pattern_connections_follow_a_port_that_comes_and_goes(jackd: Any) -> None:
    async def main() -> None:
        cfg = PortConfig(connect_in=r"^keys:out$", connect_out=r"^keys:in$")
        with open_ports(cfg) as ports:
            assert ports.connections() == {"in": [], "out": []}
            for round_ in range(2):  # appears later; then unplugged and back
                with JackPeer("keys") as peer:
                    await await_until(
                        lambda: ports.connections() == {"in": ["keys:out"], "out": ["keys:in"]},
                        what="auto-connection to keys",
                    )
                    peer.send([NOTE_ON])
                    (event,) = await next_events(ports, 1)
                    assert event.data == NOTE_ON
                    ports.send(NOTE_OFF)
                    await await_until(lambda: peer.received(), what="note-off at the peer")
                    assert ports.counters.connections == 2 * (round_ + 1)
                await await_until(lambda: ports.connections() == {"in": [], "out": []})

    run(main)


@pytest.mark.slow
@pytest.mark.parametrize(
    "how",
    ["kill", "stop"],
)
def test_ports_come_back_after_the_jack_server_restarts(jackd: Any, how: str) -> None:
    async def main() -> None:
        cfg = PortConfig(connect_in=r"^keys:out$")
        with open_ports(cfg) as ports:
            peer = JackPeer("keys")
            await await_until(lambda: ports.connections()["in"] == ["keys:out"])
            ports.send(NOTE_ON)  # left on when the server goes: forgotten with it
            await await_until(lambda: ports.sounding() == [(1, 60)], what="the note-on written")
            peer.kill()
            threads_before = _os_threads()  # ours: JACK's two, the supervisor, main
            getattr(jackd, how)()
            # the server is gone: noticed within 2 s
            await await_until(lambda: not ports.connected, timeout_s=2.0, what="loss noticed")
            ports.send(NOTE_ON)  # dropped while away
            assert ports.counters.dropped_output == 1
            jackd.start()
            await await_until(lambda: ports.connected, timeout_s=10.0, what="ports re-created")
            with JackPeer("keys") as peer:
                listed = peer.ports()
                assert "musicgend:in" in listed["destinations"]
                assert "musicgend:out" in listed["sources"]
                await await_until(lambda: ports.connections()["in"] == ["keys:out"])
                peer.send([NOTE_ON])
                (event,) = await next_events(ports, 1)
                assert event.data == NOTE_ON
            c = ports.counters
            assert (c.server_losses, c.reconnects) == (1, 1)
            assert (c.note_ons_sent, ports.sounding()) == (1, [])
            # the lost client's JACK threads ended: no thread per server loss (fewer is fine:
            # helper threads of the killed peer may still have been winding down before)
            await await_until(lambda: _os_threads() <= threads_before, what="old threads gone")

    run(main)


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_closing_leaves_no_threads_and_sends_nothing(jackd: Any) -> None:
    async def main() -> None:
        with JackPeer("recorder") as peer:
            python_before = set(threading.enumerate())
            os_before = _os_threads()
            with open_ports(PortConfig(connect_out=r"^recorder:in$")) as ports:
                await await_until(lambda: ports.connections()["out"] == ["recorder:in"])
                assert _os_threads() > os_before
            # OS threads (JACK's, the supervisor) are gone; Python only keeps inert
            # _DummyThread records of foreign threads that once ran a callback.
            await await_until(lambda: _os_threads() == os_before, what="JACK threads gone")
            left = [
                t
                for t in set(threading.enumerate()) - python_before
                if not isinstance(t, threading._DummyThread)
            ]
            assert left == []
            assert peer.received() == []

    run(main)


_CLOSER = """
import asyncio, logging, sys, time
from musicgend.io import midi
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
midi.CLOSE_WAIT_S = 1.0
async def main():
    cfg = midi.PortConfig(client_name="mgfrozen", connect_in="^frozen:out$",
                          connect_out="^frozen:in$")
    with midi.open_ports(cfg) as ports:
        while len(ports.connections()["in"]) + len(ports.connections()["out"]) < 2:
            await asyncio.sleep(0.02)
        print("connected", flush=True)
        sys.stdin.readline()
        t0 = time.monotonic()
    print(f"closed {time.monotonic() - t0:.2f} {ports.close_abandoned}", flush=True)
asyncio.run(main())
"""


def test_a_server_that_does_not_answer_the_close_does_not_hold_up_the_exit(jackd: Any) -> None:
    """A connected client that stopped answering (SIGSTOP) makes the server slow to let our
    client go (jack_deactivate waited ~4 s here; once, after an hour's soak, it never
    returned). The ports give up after CLOSE_WAIT_S and the process still exits at once."""
    import signal
    import subprocess
    import sys

    with JackPeer("frozen") as peer:
        closer = subprocess.Popen(
            [sys.executable, "-c", _CLOSER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert closer.stdout is not None and closer.stdin is not None
            assert closer.stdout.readline() == "connected\n"
            os.kill(peer.pid, signal.SIGSTOP)
            try:
                time.sleep(0.3)
                started = time.monotonic()
                closer.stdin.write("\n")
                closer.stdin.flush()
                out, err = closer.communicate(timeout=30)
                elapsed_s = time.monotonic() - started
            finally:
                os.kill(peer.pid, signal.SIGCONT)
        finally:
            if closer.poll() is None:
                closer.kill()
                closer.wait()
        assert closer.returncode == 0, err
        seconds, abandoned = out.split()[1:]
        assert abandoned == "True", err
        assert float(seconds) < 3.0
        assert elapsed_s < 10.0  # closing (1 s) and the interpreter's exit
        assert "did not answer within 1 s while client 'mgfrozen' was closing" in err
        assert "in close_client" in err  # where it waited
