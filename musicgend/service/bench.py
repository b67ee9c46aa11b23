"""``musicgend bench``: the daemon's real-time figures, measured from outside.

One run starts a private JACK server (dummy driver), and for each condition (idle, then
with a CPU-heavy process spinning on the other core) starts ``musicgend run`` as a
subprocess, plays human notes into it at random moments from a separate JACK client (this
process), records its output with JACK frame times, stops it with SIGTERM and reads the
metrics it writes on exit. Reported (nothing is asserted):

* ``frame_latency_ms``: decision latency, tick deadline → that frame's messages written;
* ``late_frames`` (no result at the tick), ``stale_frames`` (result from slightly older input);
* ``inference_ms``: per-call time in the daemon, and per runtime measured here side by side;
* ``jitter_ms``: onsets of the daemon's frames as a separate JACK client sees them (absolute
  JACK frame time plus what the dummy driver's clock lost before each, :class:`ClockSlips`:
  the wall clock, which a sound card's clock follows and the daemon keeps time by),
  residuals against the 200 ms grid fitted robustly to each minute (the soak's method),
  leaving out the first :data:`WARM_UP_S` seconds (``jitter_all_ms`` keeps them);
  ``jitter_jack_frames_ms``: the same on JACK frame time as it is; ``clock_slips``: how often
  and how much the dummy driver's clock lost; ``jitter_single_grid_ms``: all onsets against
  one least-squares line for the run; ``midi.xruns``: JACK cycles overrun;
* ``cpu_steal_s``: CPU time the hypervisor gave to other machines during the condition;
* ``rss_mb`` of the daemon, and ``private_mb``: the part only it holds (RSS also counts
  shared libraries and the pages of the JACK server's shared memory it maps: ~2 MB by
  default; all of it, ~40 MB with the embedded server's ``--port-max 64``, ~102 MB with
  jackd's default, with ``midi.lock_jack_memory = true``, as libjack locks it in a client);
* ``ports_ready_s``: process start → its ports visible in JACK;
* ``load_avg``: the machine's 1-minute load average before and after each condition.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from musicgend.errors import MusicgendError
from musicgend.machine import machine_info

FRAME_S = 0.2
CLIENT = "musicgend"
WARM_UP_S = 5.0
"""``jitter_ms`` leaves out the onsets of the daemon's first seconds: the model load and the
first frames' set-up hold up JACK's process callback (the server reports overruns, counted
in ``midi.xruns``, and its frame clock loses that time, shifting every later onset)."""
JITTER_METHOD = (
    "residuals of the onsets a separate JACK client records (JACK frame time, plus the time "
    "the dummy driver's frame clock lost before each, measured by that client: the wall "
    "clock, as a sound card keeps it) against a 200 ms grid fitted robustly to each stretch "
    f"of at most 60 s, from {WARM_UP_S:g} s after the first onset (jitter_all_ms: from the "
    "first onset; jitter_jack_frames_ms: JACK frame time as it is); jitter_single_grid_ms: "
    "all onsets against one least-squares line for the whole condition"
)


def _pcts(values: Any) -> dict[str, float | None]:
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(a, [50, 99])
    return {
        "p50": round(float(p50), 4),
        "p99": round(float(p99), 4),
        "max": round(float(a.max()), 4),
    }


def inference_times(model: Path, runtimes: list[str], calls: int = 300) -> dict[str, Any]:
    """Per-call inference time of each runtime on random windows (this process)."""
    from musicgend.model.runtime import load_predictor, random_windows

    out: dict[str, Any] = {}
    for name in runtimes:
        try:
            threads = int(name.split(":")[1]) if ":" in name else 1
            predictor = load_predictor(model, name.split(":")[0], threads=threads)
        except MusicgendError as exc:
            out[name] = {"error": str(exc)}
            continue
        windows = random_windows(predictor.artifact, calls + 20)
        times = []
        for i, w in enumerate(windows):
            t0 = time.perf_counter_ns()
            predictor.predict(w)
            if i >= 20:
                times.append((time.perf_counter_ns() - t0) / 1e6)
        out[name] = _pcts(times)
    return out


def onset_jitter_ms(frame_times: list[int], rate_hz: int) -> dict[str, Any]:
    """Residuals of onset times (JACK frames) against a fitted 200 ms grid, in ms.

    Grid indices are counted from consecutive gaps (the dummy driver's frame clock is not
    locked to the monotonic clock, so over minutes absolute rounding would slip a frame);
    the least-squares line then absorbs offset and rate difference.
    """
    if len(frame_times) < 3:
        return {"p50": None, "p99": None, "max": None, "onsets": len(frame_times)}
    t = (np.asarray(frame_times, dtype=np.float64) - frame_times[0]) / rate_hz
    k = np.concatenate([[0.0], np.cumsum(np.round(np.diff(t) / FRAME_S))])
    slope, offset = np.polyfit(k, t, 1)
    residual_ms = np.abs(t - (slope * k + offset)) * 1e3
    result = _pcts(residual_ms)
    result["onsets"] = len(frame_times)
    result["grid_ms"] = round(float(slope) * 1e3, 6)
    return result


def stretch_onset_jitter_ms(frame_times: list[int], rate_hz: int) -> dict[str, Any]:
    """Residuals of onset times (JACK frames) against a 200 ms grid fitted robustly to each
    stretch of at most a minute (:func:`musicgend.service.soak.stretch_jitter`), in ms."""
    from musicgend.service.soak import stretch_jitter

    times_s = [t / rate_hz for t in frame_times]
    _, residual_ms, stretches = stretch_jitter(times_s, [])
    result: dict[str, Any] = dict(_pcts(residual_ms))  # no onsets: None figures
    result["onsets"] = len(frame_times)
    result["stretches"] = stretches
    return result


class ClockSlips:
    """Where a JACK server's frame clock lost time against the wall clock, from a client's
    process callback: each cycle's start in wall time (``CLOCK_MONOTONIC``, as JACK's own
    clock) minus its frame count. A step up of more than half a period that holds for
    :attr:`HOLD_CYCLES` cycles is time lost (a step that falls back is a late cycle, not a
    loss). The dummy driver is a timer: it loses what it wakes late by (a sound card's clock
    doesn't), and wall-clock output lands that much earlier in frames from then on."""

    HOLD_CYCLES = 16

    def __init__(self, rate_hz: int) -> None:
        self.ns_per_frame = 1e9 / rate_hz
        self.slips: list[tuple[int, int]] = []  # (frame, frames lost there)
        self._base_ns: float | None = None
        self._step: tuple[int, float, int] | None = None  # (frame, lowest lag since, cycles)

    def cycle(self, frame: int, frames_since_start: int, nframes: int, now_ns: int) -> None:
        """Call first thing in each process callback (``last_frame_time``,
        ``frames_since_cycle_start``, the callback's ``frames``, ``time.monotonic_ns()``)."""
        lag_ns = now_ns - (frame + frames_since_start) * self.ns_per_frame
        base = self._base_ns
        if base is None or lag_ns < base:
            self._base_ns, self._step = lag_ns, None
            return
        if lag_ns - base <= nframes * self.ns_per_frame / 2:
            self._step = None  # back on the old line: that was a late cycle
            return
        step = self._step
        if step is None:
            self._step = (frame, lag_ns, 1)
            return
        at, low_ns, cycles = step[0], min(step[1], lag_ns), step[2] + 1
        if cycles < self.HOLD_CYCLES:
            self._step = (at, low_ns, cycles)
            return
        self.slips.append((at, round((low_ns - base) / self.ns_per_frame)))
        self._base_ns, self._step = low_ns, None

    def lost_by(self, frame: int) -> int:
        """Frames lost up to ``frame``."""
        return frames_lost_by(self.slips, frame)


def frames_lost_by(slips: list[tuple[int, int]], frame: int) -> int:
    """Frames a clock lost up to ``frame``, from :attr:`ClockSlips.slips` (also as another
    process reported them)."""
    return sum(n for f, n in slips if f <= frame)


def slips_summary(slips: list[tuple[int, int]], rate_hz: int) -> dict[str, Any]:
    """``clock_slips`` of a report: how many steps the clock lost time in, and how much."""
    return {"count": len(slips), "lost_ms": round(sum(n for _, n in slips) * 1e3 / rate_hz, 3)}


class Peer:
    """A separate JACK client: records the daemon's output with frame times, plays notes."""

    def __init__(self, server: str, name: str = "mgbench") -> None:
        import jack

        self.client = jack.Client(name, no_start_server=True, servername=server)
        self.inport = self.client.midi_inports.register("in")
        self.outport = self.client.midi_outports.register("out")
        self.events: list[tuple[int, bytes]] = []
        self.to_send: deque[bytes] = deque()
        self.lock = threading.Lock()
        self.clock = ClockSlips(self.client.samplerate)
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames: int) -> None:
        now_ns = time.monotonic_ns()
        base = self.client.last_frame_time
        self.clock.cycle(base, self.client.frames_since_cycle_start, frames, now_ns)
        for offset, data in self.inport.incoming_midi_events():
            self.events.append((base + offset, bytes(data)))
        self.outport.clear_buffer()
        while self.to_send:
            self.outport.write_midi_event(0, self.to_send.popleft())

    def wait_port(self, name: str, timeout_s: float) -> float | None:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.client.get_ports(name):
                return time.monotonic() - start
            time.sleep(0.002)
        return None

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until something is connected to both of our ports (the daemon's patterns)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.client.get_all_connections(self.inport) and self.client.get_all_connections(
                self.outport
            ):
                return True
            time.sleep(0.01)
        return False

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect both ways; retried while the daemon's client is still activating."""
        import jack

        deadline = time.monotonic() + timeout_s
        pairs = [(f"{CLIENT}:out", "mgbench:in"), ("mgbench:out", f"{CLIENT}:in")]
        while pairs:
            try:
                self.client.connect(*pairs[0])
                pairs.pop(0)
            except jack.JackError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


def _hog() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run_condition(
    model: Path, frames: int, server: str, rate_hz: int, hog: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    """One daemon run of ``frames`` frames; returns its figures."""
    from musicgend.service.soak import cpu_steal_s

    load_before = round(os.getloadavg()[0], 2)
    steal_before = cpu_steal_s()
    peer = Peer(server)
    hog_proc = _hog() if hog else None
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="musicgend-bench-") as tmp:
        metrics_file = Path(tmp) / "metrics.json"
        env = dict(os.environ, JACK_DEFAULT_SERVER=server)
        started = time.monotonic()
        daemon = subprocess.Popen(
            daemon_command(model, Path(tmp), metrics_file),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            ready_s = peer.wait_port(f"{CLIENT}:out", 30.0)
            if ready_s is None:
                raise MusicgendError("the daemon's ports did not appear within 30 s")
            ports_ready_s = time.monotonic() - started
            peer.connect()
            log(f"  daemon ports ready after {ports_ready_s:.2f} s; running {frames} frames")
            end = time.monotonic() + frames * FRAME_S + 1.0
            held: list[int] = []
            while time.monotonic() < end:
                # the "human": a note on or off every 0.05..0.45 s, at random phases
                time.sleep(float(rng.uniform(0.05, 0.45)))
                if held and (len(held) > 2 or rng.random() < 0.5):
                    peer.to_send.append(bytes([0x80, held.pop(0), 0]))
                else:
                    pitch = int(rng.integers(48, 72))
                    held.append(pitch)
                    peer.to_send.append(bytes([0x90, pitch, 90]))
            for pitch in held:
                peer.to_send.append(bytes([0x80, pitch, 0]))
            rss = _rss_mb(daemon.pid)
            private = _private_mb(daemon.pid)
            on_grid = len(peer.events)  # what comes after SIGTERM (note-offs, CC123) isn't
            daemon.send_signal(signal.SIGTERM)
            output, _ = daemon.communicate(timeout=30)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            if hog_proc is not None:
                hog_proc.kill()
                hog_proc.wait()
            peer.close()
        if daemon.returncode != 0 or not metrics_file.exists():
            raise MusicgendError(f"daemon exited {daemon.returncode}: {output[-2000:]}")
        metrics = json.loads(metrics_file.read_text())
    onsets = sorted({t for t, data in peer.events[:on_grid] if data[0] & 0xF0 in (0x80, 0x90)})
    cc123 = sum(1 for _, data in peer.events if data[0] & 0xF0 == 0xB0 and data[1] == 123)
    # on the wall clock, as a sound card would have it: JACK frames plus what the dummy
    # driver's clock lost before each onset
    slips = peer.clock.slips
    onsets_wall = [t + peer.clock.lost_by(t) for t in onsets]
    first = next(
        (i for i, t in enumerate(onsets_wall) if t - onsets_wall[0] >= WARM_UP_S * rate_hz),
        len(onsets_wall),
    )
    steady, steady_frames = onsets_wall[first:], onsets[first:]
    return {
        "frames": metrics["frames"],
        "frame_latency_ms": metrics["frame_latency_ms"],
        "late_frames": metrics["late_frames"],
        "stale_frames": metrics["stale_frames"],
        "late_results": metrics["late_results"],
        "missed_ticks": metrics["missed_ticks"],
        "inference_ms_daemon": metrics["inference_ms"],
        "midi": metrics.get("midi"),
        "jitter_ms": stretch_onset_jitter_ms(steady, rate_hz),
        "jitter_all_ms": stretch_onset_jitter_ms(onsets_wall, rate_hz),
        "jitter_single_grid_ms": onset_jitter_ms(onsets_wall, rate_hz),
        "jitter_jack_frames_ms": stretch_onset_jitter_ms(steady_frames, rate_hz),
        "clock_slips": slips_summary(slips, rate_hz),
        "rss_mb": rss,
        "private_mb": private,
        "ports_ready_s": round(ports_ready_s, 3),
        "cc123_channels_at_stop": cc123,
        "priority": metrics.get("priority"),
        "runtime": metrics.get("runtime"),
        "exit_code": daemon.returncode,
        "load_avg": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "cpu_steal_s": _steal_since(steal_before),
    }


def _steal_since(before: float | None) -> float | None:
    from musicgend.service.soak import cpu_steal_s

    after = cpu_steal_s()
    return None if before is None or after is None else round(after - before, 3)


def _rss_mb(pid: int) -> float | None:
    from musicgend.service.runtime import rss_mb

    return rss_mb(pid)


def _private_mb(pid: int) -> float | None:
    from musicgend.service.runtime import private_mb

    return private_mb(pid)


def daemon_command(model: Path, session_dir: Path, metrics_out: Path, *extra: str) -> list[str]:
    """``musicgend run`` on JACK with ``model`` as a subprocess command line (the benchmarks
    run the daemon exactly as a user would)."""
    return [
        *(sys.executable, "-m", "musicgend", "run", "--backend", "jack"),
        *("--model", str(model), "--session-dir", str(session_dir)),
        *("--metrics-out", str(metrics_out), *extra),
    ]


def run_bench(
    model: Path,
    frames: int = 3000,
    runtimes: list[str] | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """The whole benchmark; returns the JSON-able result (DESIGN §4 keys at top level)."""
    from musicgend.io.jackserver import EmbeddedJack

    if not (model / "metadata.json").exists():
        raise MusicgendError(f"{model}: not a model directory (pass --model DIR)")
    os.environ.setdefault("JACK_NO_AUDIO_RESERVATION", "1")
    rate_hz = 48000
    log(f"inference per runtime ({model})")
    per_runtime = inference_times(model, runtimes or ["numpy", "litert:1", "litert:2"])
    conditions: dict[str, Any] = {}
    # the daemon's own embedded-server settings: jackd -R (falls back to -r), --port-max 64
    server_cm = EmbeddedJack(rate_hz=rate_hz, period_frames=128, set_environment=False)
    with server_cm as server:
        for name, hog in (("idle", False), ("cpu_hog", True)):
            log(f"condition {name}")
            conditions[name] = run_condition(model, frames, server.name, rate_hz, hog, log)
        realtime, port_max = server.realtime, server.port_max
    worst_p99 = max(c["frame_latency_ms"]["p99"] or 0.0 for c in conditions.values())
    idle = conditions["idle"]
    return {
        "frame_latency_ms": idle["frame_latency_ms"],
        "late_frames": idle["late_frames"],
        "inference_ms": {**per_runtime, "daemon": idle["inference_ms_daemon"]},
        "rss_mb": idle["rss_mb"],
        "private_mb": idle["private_mb"],
        "jitter_ms": idle["jitter_ms"],
        "jitter_method": JITTER_METHOD,
        "ports_ready_s": idle["ports_ready_s"],
        "conditions": conditions,
        "goals": {
            "frame_latency_p99_ms_le_1": worst_p99 <= 1.0,
            "late_frames_0": all(c["late_frames"] == 0 for c in conditions.values()),
            "jitter_p99_ms_le_1": all(
                (c["jitter_ms"]["p99"] or 99) <= 1.0 for c in conditions.values()
            ),
            "rss_mb_le_100": all((c["rss_mb"] or 999) <= 100 for c in conditions.values()),
            "private_mb_le_100": all((c["private_mb"] or 999) <= 100 for c in conditions.values()),
            "ports_ready_s_le_1": all(c["ports_ready_s"] <= 1.0 for c in conditions.values()),
        },
        "frames_per_condition": frames,
        "jack": {
            "rate_hz": rate_hz,
            "period_frames": 128,
            "realtime": realtime,
            "port_max": port_max,
        },
        "model": str(model),
        "machine": machine_info(),
        "python": platform.python_version(),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def format_summary(result: dict[str, Any]) -> str:
    lines = []
    for name, c in result["conditions"].items():
        lat, jit = c["frame_latency_ms"], c["jitter_ms"]
        inf = c["inference_ms_daemon"]
        lines.append(
            f"{name:8s} frames {c['frames']:5d}  decision p50 {lat['p50']} p99 {lat['p99']} "
            f"max {lat['max']} ms  late {c['late_frames']} stale {c['stale_frames']}  "
            f"inference p50 {inf['p50']} p99 {inf['p99']} ms  jitter p50 {jit['p50']} "
            f"p99 {jit['p99']} max {jit['max']} ms (one grid: p99 "
            f"{c['jitter_single_grid_ms']['p99']} ms)  rss {c['rss_mb']} MB "
            f"(private {c.get('private_mb')} MB)  ports {c['ports_ready_s']} s  "
            f"runtime {c.get('runtime')}  load {c.get('load_avg')}  cpu steal "
            f"{c.get('cpu_steal_s')} s  JACK xruns {(c.get('midi') or {}).get('xruns')}"
        )
    for name, figures in result["inference_ms"].items():
        lines.append(f"inference {name:9s} {figures}")
    lines.append(f"goals: {result['goals']}")
    return "\n".join(lines)


def save_result(result: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"latency-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return path
