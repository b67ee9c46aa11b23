"""``musicgend run --clock midi`` against a SEPARATE JACK client that sends MIDI clock at
exact JACK frames: the daemon's chords start on the ticks that begin frames, follow a tempo
change, Stop silences it with every note released, Continue brings it back, and a clock that
stops ticking is reported as lost on the MQTT status topic."""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import pytest

from tests.jackutil import wait_until
from tests.mqttutil import mosquitto_broker
from tests.service.test_daemon_jack import daemon_and_peer, notes, still_sounding, tiny_model

__all__ = ["tiny_model"]

pytestmark = [pytest.mark.jack, pytest.mark.mqtt, pytest.mark.tf, pytest.mark.slow]

RATE = 48_000
TICK, START, CONTINUE, STOP = b"\xf8", b"\xfa", b"\xfb", b"\xfc"
TICKS_PER_FRAME = 12


def tick_frames(bpm: float) -> int:
    return round(RATE * 60 / (bpm * 24))


def retained_status(url_port: int) -> dict[str, object]:
    out = subprocess.run(
        [
            *("mosquitto_sub", "-h", "127.0.0.1", "-p", str(url_port)),
            *("-t", "musicgend/default/status", "-C", "1", "-W", "5"),
        ],
        capture_output=True,
        text=True,
        timeout=15,
    )
    return json.loads(out.stdout) if out.stdout.strip() else {}


def test_follows_midi_clock_tempo_change_stop_continue_and_reports_loss(
    tiny_model: Path, tmp_path: Path
) -> None:
    with (
        mosquitto_broker() as broker,
        daemon_and_peer(
            tiny_model, tmp_path, "--clock", "midi", "--mode", "solo", "--mqtt-url", broker.url
        ) as (daemon, peer),
    ):
        wait_until(lambda: retained_status(broker.port).get("clock"), 10.0, what="status")
        assert retained_status(broker.port)["clock"]["state"] == "stopped"  # type: ignore[index]
        # the band: Start, 40 ticks... at 120 BPM, then 150 BPM; Stop; Continue at 150 BPM
        t0 = peer.frame_time() + RATE // 2
        events: list[tuple[int, bytes]] = [(t0, START)]
        boundaries: list[int] = []  # JACK frames of ticks that start a frame
        t = t0 + 10
        song_tick = 0

        def ticks(count: int, bpm: float) -> None:
            nonlocal t, song_tick
            for _ in range(count):
                if song_tick % TICKS_PER_FRAME == 0:
                    boundaries.append(t)
                events.append((t, TICK))
                song_tick += 1
                t += tick_frames(bpm)

        ticks(8 * TICKS_PER_FRAME, 120)  # 8 frames of 250 ms
        change = t
        ticks(8 * TICKS_PER_FRAME + 5, 150)  # 8 frames of 200 ms, then 5 ticks into the 9th
        stop_at = t
        events.append((stop_at, STOP))
        t += RATE  # one second stopped
        continue_at = t
        events.append((continue_at, CONTINUE))
        t += 10
        ticks(7 + 3 * TICKS_PER_FRAME, 150)  # the 9th frame's rest, then 3 frames
        boundaries.append(t)  # announced by the last tick (the daemon plays it on the beat)
        end = t
        peer.schedule(events)
        wait_until(lambda: peer.frame_time() > end + RATE // 4, 30.0, what="the clock played")

        # no more ticks: after 0.5 s the clock is lost, and MQTT status says so
        wait_until(
            lambda: (retained_status(broker.port).get("clock") or {}).get("state") == "lost",
            10.0,
            what="clock loss on MQTT status",
        )
        got = peer.received()
        assert daemon.terminate() == 0

    ons = sorted({f for f, m in notes(got) if m[0] & 0xF0 == 0x90 and m[2] > 0})
    assert ons, "the daemon played nothing"
    # Every note-on lies on a tick that starts a frame. Here the peer both sends the clock
    # and listens, a loop in the JACK graph, so one direction runs a cycle (256 frames) late:
    # on time means 256 frames after the tick. Tolerance: the dummy driver is a timer that
    # runs late on a loaded machine and catches up in whole periods.
    period = 256
    offsets = [f - min(boundaries, key=lambda b: abs(b - f)) for f in ons]
    assert all(abs(o - period) <= 4 * period for o in offsets), offsets
    assert statistics.median(abs(o - period) for o in offsets) <= period // 4, offsets
    assert any(f < change for f in ons) and any(change <= f < stop_at for f in ons)
    # Stop: everything released right away, nothing starts until Continue. Right away: the
    # rest of the cycle that brought Stop, the one the daemon writes in, and the loop's one
    # (a dummy driver that runs late and catches up leaves no time to react in a cycle, so
    # the release can land at the start of the cycle after).
    released_by = stop_at + 3 * period
    near_stop = [(f - stop_at, m.hex()) for f, m in notes(got) if abs(f - stop_at) < 8 * period]
    assert still_sounding([e for e in got if e[0] <= released_by]) == set(), near_stop
    assert not [f for f in ons if released_by < f < continue_at]
    assert any(f > continue_at for f in ons), "silent after Continue"
    assert still_sounding(got) == set()  # and nothing stuck at the end
