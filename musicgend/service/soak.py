"""``musicgend bench soak``: the daemon under an hour of realistic load, measured from outside.

One run starts, each as its own process:

* a private JACK server (dummy driver) and a private ``mosquitto`` on a free loopback port;
* the daemon (``musicgend run``) with MQTT control, metrics published every second;
* the **player**: a separate JACK client (``python -m musicgend.service.soak player``) that
  loops a stream built from Bach chorales (music21's, read with the project's MIDI reader):
  a phrase of each chorale, a burst of fast notes, then a silence the daemon answers in
  call-and-response mode. It records every event the daemon sends back with its JACK frame
  time, and pairs of (monotonic ns, JACK frame) to put them on the soak's time axis;
* a CPU-heavy process pinned to the last CPU.

This process is the MQTT controller: a command every :data:`COMMAND_INTERVAL_S` (cycling
``set`` temperature, mode and ``bpm``; a refusal, e.g. ``bpm`` on a daemon without tempo
control, is counted, not fatal) and a ``load_model`` every 10 minutes (half the run when
shorter), alternating between the model and a copy of it, so the daemon really reloads. It
samples the daemon's RSS, private memory and open file descriptors from ``/proc``.

At the end (or on Ctrl-C, SIGINT/SIGTERM) the player releases its notes, the daemon is
stopped with SIGTERM, and the report is computed per 5-minute window and overall: frames,
late frames, dropped input and decision latency (the daemon's metrics), onset jitter (the
player's recording), stuck notes (note-ons the player never saw released; each is checked
against the note-ons and note-offs the daemon wrote to its port, to tell a daemon that never
released a note from a release lost on the way), RSS and fds.
JSON goes to ``<out-dir>/soak-<UTC start>.json``, a PNG of latency, jitter and memory over
time next to it.

:func:`soak` runs the measurement in a child process in a session of its own, so that a
Ctrl-C in the terminal reaches only this process, which then stops the run in order (a
terminal's SIGINT would otherwise hit jackd, mosquitto and the daemon at once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import getpass
import itertools
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from musicgend.core.pianoroll import Track
from musicgend.errors import MusicgendError
from musicgend.io.midi import WrittenNotes
from musicgend.machine import machine_info
from musicgend.service.bench import _pcts, frames_lost_by, slips_summary

WINDOW_S = 300.0
"""Report window: 5 minutes."""
COMMAND_INTERVAL_S = 5.0
SWAP_INTERVAL_S = 600.0
SAMPLE_INTERVAL_S = 5.0
"""RSS and open file descriptors of the daemon are read this often."""
REPLY_WAIT_S = 3.0
"""A command is refused when the daemon's error topic says so within this time."""
FRAME_S = 0.2
STRETCH_MAX_S = 60.0
"""Jitter: each constant-tempo stretch is fitted in pieces of at most this long."""
TEMPO_GUARD_S = 0.5
"""Jitter: onsets this soon after a tempo change are left out (the change takes a frame)."""
LATE_ONSET_MS = 5.0
"""An onset this far off its grid counts as a late onset (seen by the player; the daemon's
``late_frames`` only counts frames without a result at the tick)."""
LOG_TAIL_CHARS = 16_000
"""How much of the daemon's log a report keeps when the daemon did not end cleanly or logged
a warning (room for the stop watchdog's thread stacks)."""
WARNED = re.compile(r"^(WARNING|ERROR) ", re.MULTILINE)
"""A warning or error line in the daemon's log (its format: level first)."""
RATE_HZ = 48000
PERIOD_FRAMES = 128
PLAYER = "mgsoak"
INSTANCE = "soak"
TEMPERATURES = (0.8, 1.0, 1.2)
MODES = ("accompany", "call-response", "solo")
BPMS = (140.0, 150.0, 160.0)
"""Frames of 0.214, 0.2 and 0.1875 s (a frame is an eighth note: 30 / bpm seconds)."""
JITTER_METHOD = (
    "residuals of the daemon's frame onsets (first note-on of a frame, JACK frame time seen "
    "by the player plus the time the dummy driver's clock lost before it, measured by the "
    "player: the wall clock, as a sound card keeps it; frames that only release notes left "
    "out) against a robust line grid "
    "fitted to each constant-tempo stretch "
    f"(split at every bpm command the daemon did not refuse, {TEMPO_GUARD_S:g} s after it "
    f"skipped, at most {STRETCH_MAX_S:g} s per fit)"
)
LATENCY_SCOPE = (
    "decision latency (tick deadline to that frame's messages written) of every frame: the "
    "daemon's metrics messages (every second) carry each frame's latency once "
    "(frame_latency_new_ms), so a window's percentiles are exactly its own frames' (placed by "
    "the time their message arrived, to within a second)"
)


def latency_samples(
    series: Sequence[tuple[float, dict[str, Any]]], start_s: float, end_s: float, last: bool
) -> list[float]:
    """The decision latencies (ms) the metrics messages in [start_s, end_s) carried (and
    every later one when ``last``)."""
    out: list[float] = []
    for t_s, data in series:
        if start_s <= t_s < end_s or (last and t_s >= end_s):
            out.extend(float(x) for x in data.get("frame_latency_new_ms") or ())
    return out


# -- the player's stream (pure) ------------------------------------------------------------

PHRASE_S = 20.0
BURST_NOTES = 32
BURST_STEP_S = 0.03
BURST_NOTE_S = 0.025
SILENCE_S = 4.0
"""Longer than the call-and-response silence (1 s), so the daemon answers."""
_SCALE = (0, 2, 4, 5, 7, 9, 11, 12, 14, 16)


def build_stream(
    pieces: Sequence[Sequence[Track]], seed: int = 0, phrase_s: float = PHRASE_S
) -> tuple[list[tuple[float, bytes]], float]:
    """One cycle of what the player plays: per piece, its first ``phrase_s`` seconds, a burst
    of fast notes and a silence. Returns ``(time_s, message)`` pairs in playing order (a
    note-off before a note-on at the same time) and the cycle's length in seconds."""
    rng = np.random.default_rng(seed)
    timed: list[tuple[float, int, bytes]] = []
    t = 0.0

    def note(start_s: float, end_s: float, pitch: int, velocity: int) -> None:
        end_s = max(end_s, start_s + 0.01)
        timed.append((start_s, 1, bytes([0x90, pitch, max(1, min(127, velocity))])))
        timed.append((end_s, 0, bytes([0x80, pitch, 0])))

    for tracks in pieces:
        notes = sorted(
            (n for track in tracks if not track.is_drum for n in track.notes),
            key=lambda n: n.start_s,
        )
        if not notes:
            continue
        first = notes[0].start_s
        for n in notes:
            if n.start_s - first < phrase_s:
                end = min(n.end_s - first, phrase_s)
                note(t + n.start_s - first, t + end, n.pitch, n.velocity)
        t += phrase_s
        base = int(rng.integers(55, 67))
        for i in range(BURST_NOTES):
            pitch = base + _SCALE[int(rng.integers(len(_SCALE)))]
            note(t + i * BURST_STEP_S, t + i * BURST_STEP_S + BURST_NOTE_S, pitch, 100)
        t += BURST_NOTES * BURST_STEP_S + SILENCE_S
    if not timed:
        raise MusicgendError("no notes to play in the soak's chorales")
    timed.sort(key=lambda e: (e[0], e[1]))
    return [(time_s, data) for time_s, _, data in timed], t


# -- analysis (pure) -------------------------------------------------------------------------


def is_note_on(data: bytes) -> bool:
    return len(data) == 3 and data[0] & 0xF0 == 0x90 and data[2] > 0


def is_note_off(data: bytes) -> bool:
    return len(data) == 3 and (data[0] & 0xF0 == 0x80 or (data[0] & 0xF0 == 0x90 and data[2] == 0))


def stuck_notes(events: Sequence[tuple[int, bytes]]) -> list[tuple[int, int, int]]:
    """``(frame of the note-on, channel, pitch)`` of every note still on after all events:
    a note-on that no note-off of the same channel and pitch followed (CC123 does not
    count: the issue asks for a note-off for every note-on)."""
    sounding: dict[tuple[int, int], int] = {}
    for frame, data in events:
        if is_note_on(data):
            sounding.setdefault((data[0] & 0x0F, data[1]), frame)
        elif is_note_off(data):
            sounding.pop((data[0] & 0x0F, data[1]), None)
    return sorted((frame, ch, pitch) for (ch, pitch), frame in sounding.items())


def frame_onsets(events: Sequence[tuple[int, bytes]], gap_frames: int) -> list[int]:
    """The JACK frame of each of the daemon's frames that starts notes: the first note-on of
    a run of note messages less than ``gap_frames`` apart (a frame's offs and ons go out
    together). Runs of note-offs only (a frame falling silent, or the immediate release when
    the mode changes) start nothing and are left out."""
    notes = sorted(
        (frame, is_note_on(data)) for frame, data in events if is_note_on(data) or is_note_off(data)
    )
    onsets: list[int] = []
    last = None
    found = False
    for frame, on in notes:
        if last is None or frame - last >= gap_frames:
            found = False
        if on and not found:
            onsets.append(frame)
            found = True
        last = frame
    return onsets


def grid_residuals_s(times_s: np.ndarray, nominal_period_s: float = FRAME_S) -> np.ndarray:
    """|onset − fitted grid| in seconds for onsets of one constant tempo (≥ 3 of them).

    The period is estimated from the gaps between neighbouring frames (the median gap
    within ±40 % of ``nominal_period_s``) and each onset gets its grid index by counting
    whole periods from the previous one. A line through (index, time) absorbs offset and the
    clocks' rate difference: a robust Theil–Sen line (median of pairwise slopes), then least
    squares on its inliers (residual ≤ max(0.5 ms, 4 × the median residual)), so a late
    frame shows as one large residual instead of tilting the grid for its neighbours.
    """
    gaps = np.diff(times_s)
    near = gaps[(gaps > 0.6 * nominal_period_s) & (gaps < 1.4 * nominal_period_s)]
    period = float(np.median(near)) if near.size else nominal_period_s
    index = np.concatenate([[0.0], np.cumsum(np.round(gaps / period))])
    i, j = np.triu_indices(index.size, 1)
    steps = index[j] - index[i]
    ok = steps > 0
    if not ok.any():
        return np.zeros(times_s.size)
    slope = float(np.median((times_s[j] - times_s[i])[ok] / steps[ok]))
    offset = float(np.median(times_s - slope * index))
    residual = np.abs(times_s - (slope * index + offset))
    inliers = residual <= max(0.5e-3, 4 * float(np.median(residual)))
    if np.unique(index[inliers]).size >= 2:
        slope, offset = np.polyfit(index[inliers], times_s[inliers], 1)
        residual = np.abs(times_s - (slope * index + offset))
    return np.asarray(residual)


def stretch_jitter(
    onsets_s: Sequence[float],
    tempo_changes_s: Sequence[float],
    guard_s: float = TEMPO_GUARD_S,
    max_stretch_s: float = STRETCH_MAX_S,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Onset jitter with tempo changes: ``(onset times, residuals in ms, stretches fitted)``.

    Onsets are split at each tempo change (those within ``guard_s`` after it left out) and
    into pieces of at most ``max_stretch_s``; each piece of at least 3 onsets is fitted by
    :func:`grid_residuals_s`.
    """
    t = np.asarray(sorted(onsets_s), dtype=np.float64)
    if t.size == 0:
        return t, t, 0
    bounds = sorted(tempo_changes_s)
    starts = [float(t[0]) - 1.0, *bounds]
    ends = [*bounds, float(t[-1]) + 1.0]
    out_t: list[np.ndarray] = []
    out_r: list[np.ndarray] = []
    fitted = 0
    for start, end in zip(starts, ends, strict=True):
        lo = start + (guard_s if start in bounds else 0.0)
        stretch = t[(t >= lo) & (t < end)]
        while stretch.size:
            piece = stretch[stretch < stretch[0] + max_stretch_s]
            stretch = stretch[piece.size :]
            if piece.size >= 3:
                out_t.append(piece)
                out_r.append(grid_residuals_s(piece) * 1e3)
                fitted += 1
    if not out_t:
        return np.empty(0), np.empty(0), 0
    return np.concatenate(out_t), np.concatenate(out_r), fitted


def window_bounds(duration_s: float, window_s: float = WINDOW_S) -> list[tuple[float, float]]:
    """Consecutive windows covering ``[0, duration_s]``; the last may be shorter, but a
    remainder under a tenth of a window (at most 10 s: a 60-minute run that took 60 min and a
    few ms) joins the window before it. A run shorter than one window has one window."""
    if duration_s <= 0:
        return [(0.0, 0.0)]
    bounds = []
    start = 0.0
    while start < duration_s - 1e-9:
        bounds.append((start, min(start + window_s, duration_s)))
        start += window_s
    tail_s = bounds[-1][1] - bounds[-1][0]
    if len(bounds) > 1 and tail_s < min(10.0, window_s / 10):
        bounds[-2:] = [(bounds[-2][0], duration_s)]
    return bounds


def value_at(series: Sequence[tuple[float, Any]], t_s: float) -> Any:
    """The value of the last ``(time, value)`` sample at or before ``t_s`` (else the first)."""
    found = series[0][1] if series else None
    for time_s, value in series:
        if time_s > t_s:
            break
        found = value
    return found


def counter_delta(
    series: Sequence[tuple[float, dict[str, Any]]], key: str, start_s: float, end_s: float
) -> int | None:
    """Increase of the daemon's counter ``key`` from ``start_s`` to ``end_s``."""
    a, b = value_at(series, start_s), value_at(series, end_s)
    if a is None or b is None:
        return None
    return int(b.get(key, 0)) - int(a.get(key, 0))


def growth_per_hour(samples: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(time_s, value)`` samples, per hour (None for < 2)."""
    if len(samples) < 2:
        return None
    t = np.asarray([s[0] for s in samples])
    v = np.asarray([s[1] for s in samples])
    if np.ptp(t) <= 0:
        return None
    return round(float(np.polyfit(t, v, 1)[0]) * 3600, 2)


def percentiles_ms(values: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """p50, p99 and max (None when empty), rounded to 4 decimals."""
    return _pcts(values)


# -- measured data and the report ----------------------------------------------------------


@dataclass
class CommandRecord:
    id: str
    t_s: float
    action: str
    value: Any
    outcome: str = "pending"
    """``accepted`` (the status shows it), ``refused`` (an error named it), ``unconfirmed``."""
    reason: str | None = None


@dataclass
class Measurements:
    """Everything a soak run collects; times are seconds since the measurement started."""

    duration_s: float = 0.0
    metrics: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    final_metrics: dict[str, Any] | None = None
    resources: list[tuple[float, float | None, float | None, int | None]] = field(
        default_factory=list
    )
    """(t_s, rss_mb, private_mb, open fds)."""
    steal: list[tuple[float, float]] = field(default_factory=list)
    """(t_s, the machine's CPU steal time so far in seconds): time the hypervisor gave this
    virtual machine's CPUs to others, sampled with the resources."""
    commands: list[CommandRecord] = field(default_factory=list)
    swaps: list[CommandRecord] = field(default_factory=list)
    events: list[tuple[float, int, bytes]] = field(default_factory=list)
    """What the player received: (t_s, JACK frame, bytes)."""
    slips: list[tuple[int, int]] = field(default_factory=list)
    """Where the JACK server's clock lost time against the wall clock, as the player measured
    it (:class:`~musicgend.service.bench.ClockSlips`): (JACK frame, frames lost there)."""
    stop_s: float = 0.0
    """When the player stopped playing (the daemon was stopped after it)."""
    t0_mono_s: float = 0.0
    """``time.monotonic()`` at the start of the measurement (time zero)."""
    rate_hz: int = RATE_HZ
    player: dict[str, Any] = field(default_factory=dict)
    daemon_exit: int | None = None
    daemon_log_tail: str | None = None
    """The end of the daemon's own log when it did not end cleanly or logged a warning (its
    log lives in a temporary directory that is gone after the soak)."""
    interrupted: bool = False
    error: str | None = None


def _window_figures(
    m: Measurements, start_s: float, end_s: float, last: bool, stuck_s: Sequence[float]
) -> dict[str, Any]:
    series = list(m.metrics)
    if last and m.final_metrics is not None:
        series.append((end_s, m.final_metrics))
    res = [r for r in m.resources if start_s <= r[0] <= end_s] or m.resources[-1:]
    rss = [r[1] for r in res if r[1] is not None]
    fds = [r[3] for r in res if r[3] is not None]

    def inside(t_s: float) -> bool:
        return start_s <= t_s < end_s or (last and t_s >= end_s)

    commands = [c for c in m.commands if inside(c.t_s)]
    steal = [v for t_s, v in m.steal if start_s <= t_s <= end_s]
    return {
        "start_min": round(start_s / 60, 3),
        "minutes": round((end_s - start_s) / 60, 3),
        "frames": counter_delta(series, "frames", start_s, end_s),
        "late_frames": counter_delta(series, "late_frames", start_s, end_s),
        "stuck_notes": sum(1 for t_s in stuck_s if inside(t_s)),
        "dropped_input": counter_delta(series, "dropped_input", start_s, end_s),
        "rss_mb": {"start": rss[0] if rss else None, "end": rss[-1] if rss else None},
        "open_fds": {"start": fds[0] if fds else None, "end": fds[-1] if fds else None},
        "decision_latency_ms": percentiles_ms(latency_samples(series, start_s, end_s, last)),
        "commands": len(commands),
        "refused_commands": sum(1 for c in commands if c.outcome == "refused"),
        "model_swaps": sum(1 for s in m.swaps if inside(s.t_s)),
        "cpu_steal_s": round(steal[-1] - steal[0], 3) if len(steal) >= 2 else None,
    }


def onset_jitter(m: Measurements, wall_clock: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """The daemon's onset jitter: ``(soak seconds of each fitted onset, residuals in ms,
    stretches fitted)``.

    Onsets are placed by JACK frame time, which keeps the grid exact; with ``wall_clock``
    each also gets back the frames the JACK server's clock lost before it (``m.slips``): the
    dummy driver is a timer that loses what it wakes late by, while the daemon keeps time by
    the wall clock, as a sound card's clock does (see :class:`~musicgend.service.bench.
    ClockSlips`). The soak seconds only place onsets in report windows.
    """
    onset_frames = frame_onsets(
        [(frame, data) for t, frame, data in m.events if t <= m.stop_s], int(0.05 * m.rate_hz)
    )
    frame_to_s = {frame: t for t, frame, _ in m.events}

    def placed(frame: int) -> int:
        return frame + frames_lost_by(m.slips, frame) if wall_clock else frame

    at = {placed(f): frame_to_s[f] for f in onset_frames}  # placed() is strictly increasing
    t_frames, residual_ms, stretches = stretch_jitter(
        [placed(f) / m.rate_hz for f in onset_frames],
        [placed(f) / m.rate_hz for f in _changes_in_frames(m)],
    )
    residual_t = np.asarray([at[round(x * m.rate_hz)] for x in t_frames])
    return residual_t, residual_ms, stretches


def build_report(m: Measurements, *, minutes_requested: float, window_s: float) -> dict[str, Any]:
    """The soak's JSON (contract keys first; see the module docstring)."""
    duration_s = m.duration_s
    residual_t, residual_ms, stretches = onset_jitter(m)
    _, raw_ms, _ = onset_jitter(m, wall_clock=False)
    stuck = stuck_notes([(frame, data) for _, frame, data in m.events])
    frame_s = {frame: t for t, frame, _ in m.events}
    stuck_s = [frame_s[frame] for frame, _, _ in stuck]
    windows = []
    bounds = window_bounds(duration_s, window_s)
    for i, (start, end) in enumerate(bounds):
        last = i == len(bounds) - 1
        w = {"index": i, **_window_figures(m, start, end, last, stuck_s)}
        mask = (residual_t >= start) & ((residual_t < end) | last)
        w["jitter_ms"] = {**percentiles_ms(residual_ms[mask]), "onsets": int(mask.sum())}
        windows.append(w)
    overall = _window_figures(m, 0.0, duration_s, True, stuck_s)
    final = m.final_metrics or (m.metrics[-1][1] if m.metrics else {})
    rss = [(t, r) for t, r, _, _ in m.resources if r is not None]
    private = [p for _, _, p, _ in m.resources if p is not None]
    fds = [f for _, _, _, f in m.resources if f is not None]
    outcomes = Counter(c.outcome for c in m.commands)
    refusals = Counter(c.reason or "" for c in m.commands if c.outcome == "refused")
    by_action = Counter(c.action for c in m.commands)
    cc123 = {
        d[0] & 0x0F for _, _, d in m.events if len(d) == 3 and d[0] & 0xF0 == 0xB0 and d[1] == 123
    }
    late = overall["late_frames"]
    growth = growth_per_hour(rss)
    at_exit = m.final_metrics or {}  # not a snapshot from before the end: notes sound then
    notes = note_accounting(m.events, stuck, at_exit)
    return {
        "minutes": round(duration_s / 60, 3),
        "frames": overall["frames"],
        "late_frames": late,
        "stuck_notes": len(stuck),
        "dropped_input": overall["dropped_input"],
        "rss_mb": {
            "start": rss[0][1] if rss else None,
            "end": rss[-1][1] if rss else None,
            "growth_mb_per_hour": growth,
            # the same fit without the first window (loading, caches filling): the steady slope
            "growth_mb_per_hour_after_first_window": growth_per_hour(
                [(t, r) for t, r in rss if t >= window_s]
            ),
        },
        "decision_latency_ms": overall["decision_latency_ms"],
        "windows": windows,
        "minutes_requested": minutes_requested,
        "interrupted": m.interrupted,
        "error": m.error,
        "decision_latency_scope": LATENCY_SCOPE,
        "jitter_ms": {
            **percentiles_ms(residual_ms),
            "onsets": int(residual_ms.size),
            "stretches": stretches,
            "method": JITTER_METHOD,
        },
        "jitter_jack_frames_ms": {
            **percentiles_ms(raw_ms),
            "method": "as jitter_ms, on JACK frame time as it is (the dummy driver's lost "
            "time not added back)",
        },
        "clock_slips": slips_summary(m.slips, m.rate_hz),
        "late_onsets": {
            "threshold_ms": LATE_ONSET_MS,
            "count": int((residual_ms > LATE_ONSET_MS).sum()),
            "at_min": [round(float(t) / 60, 3) for t in residual_t[residual_ms > LATE_ONSET_MS]][
                :20
            ],
            "during_cpu_steal": steal_overlaps(
                m.steal, residual_t[residual_ms > LATE_ONSET_MS].tolist()
            ),
        },
        "cpu_steal_s": overall["cpu_steal_s"],
        "stale_frames": final.get("stale_frames"),
        "inference_ms": final.get("inference_ms"),
        "private_mb": {
            "start": private[0] if private else None,
            "end": private[-1] if private else None,
        },
        "open_fds": {
            "start": fds[0] if fds else None,
            "end": fds[-1] if fds else None,
            "max": max(fds) if fds else None,
        },
        "stuck": notes["stuck"][:20],
        "commands": {
            "sent": len(m.commands),
            "accepted": outcomes.get("accepted", 0),
            "unconfirmed": outcomes.get("unconfirmed", 0),
            "refused": outcomes.get("refused", 0),
            "refused_reasons": dict(refusals),
            "by_action": dict(by_action),
        },
        "model_swaps": {
            "requested": len(m.swaps),
            "done": sum(1 for s in m.swaps if s.outcome == "accepted"),
            "refused": sum(1 for s in m.swaps if s.outcome == "refused"),
        },
        "input": {
            **m.player,
            "daemon_input_events": final.get("input_events"),
            "daemon_echo_dropped": final.get("echo_dropped"),
            "daemon_ignored_input": final.get("ignored_input"),
        },
        "output": {
            "messages": len(m.events),
            "note_ons": notes["received"]["note_ons"],
            "note_offs": notes["received"]["note_offs"],
            "note_ons_while_on": notes["received"]["note_ons_while_on"],
            "cc123_channels_at_stop": len(cc123),
            "daemon_written": notes["written"],
            "lost_on_the_way": notes["lost_on_the_way"],
            "stuck_released_by_daemon": notes["stuck_released_by_daemon"],
        },
        "daemon": {
            "exit_code": m.daemon_exit,
            "runtime": final.get("runtime"),
            "priority": final.get("priority"),
            "missed_ticks": final.get("missed_ticks"),
            "late_results": final.get("late_results"),
            "jack_xruns": (final.get("midi") or {}).get("xruns"),
            "sent_late": (final.get("midi") or {}).get("sent_late"),
            "notes_sounding_at_exit": at_exit.get("notes_sounding"),
            "notes_released_by_ports": at_exit.get("notes_released_by_ports"),
            **({"log_tail": m.daemon_log_tail} if m.daemon_log_tail else {}),
        },
        "goals": {
            "late_frames_0": late == 0,
            "stuck_notes_0": not stuck,
            "daemon_released_every_note": at_exit.get("notes_sounding") == [],
            "engine_released_every_note": at_exit.get("notes_released_by_ports") == [],
            "rss_growth_le_5_mb_per_hour": growth is not None and growth <= 5.0,
        },
        "window_s": window_s,
    }


def note_accounting(
    events: Sequence[tuple[float, int, bytes]],
    stuck: Sequence[tuple[int, int, int]],
    final: dict[str, Any],
) -> dict[str, Any]:
    """The player's note-ons and note-offs next to the ones the daemon wrote to its port
    (its final metrics: ``midi`` counters and ``notes_sounding``), so that a stuck note is
    told apart: the daemon never wrote its note-off (``released_by_daemon`` false: a daemon
    bug), or wrote it and the player never got it (true: lost on the way, e.g. in a JACK
    cycle the server dropped). ``lost_on_the_way`` is written minus received, per kind: it is
    negative where JACK delivered messages twice (seen in runs with xruns),
    so only the per-note ``released_by_daemon`` settles a stuck note. None where the daemon's
    figures are missing (it crashed)."""
    heard = WrittenNotes()  # the player's side, read as the daemon's ports read their own
    for _, _, data in events:
        heard.record(data)
    # note-ons for a key already on: from the daemon (which writes none) a note-off lost
    # before the key was struck again, or a message JACK delivered twice
    received = {
        "note_ons": heard.note_ons,
        "note_offs": heard.note_offs,
        "note_ons_while_on": heard.note_ons_while_on,
    }
    midi = final.get("midi") or {}
    written: dict[str, int | None] = {
        "messages": midi.get("sent"),
        "note_ons": midi.get("note_ons_sent"),
        "note_offs": midi.get("note_offs_sent"),
        "note_ons_while_on": midi.get("note_ons_while_on_sent"),
    }
    seen = {"messages": len(events), "note_ons": heard.note_ons, "note_offs": heard.note_offs}
    lost = {key: None if (w := written[key]) is None else w - n for key, n in seen.items()}
    sounding = final.get("notes_sounding")
    still_on = None if sounding is None else {(int(ch), int(p)) for ch, p in sounding}
    rows = [
        {
            "channel": ch + 1,
            "pitch": p,
            "released_by_daemon": None if still_on is None else (ch + 1, p) not in still_on,
        }
        for _, ch, p in stuck
    ]
    return {
        "received": received,
        "written": written,
        "lost_on_the_way": lost,
        "stuck": rows,
        "stuck_released_by_daemon": (
            None if still_on is None else sum(1 for r in rows if r["released_by_daemon"])
        ),
    }


def _changes_in_frames(m: Measurements) -> list[int]:
    """JACK frames of the bpm commands the daemon did not refuse."""
    if len(m.events) < 2:
        return []
    t = np.asarray([e[0] for e in m.events])
    f = np.asarray([e[1] for e in m.events], dtype=np.float64)
    slope, offset = np.polyfit(t, f, 1) if np.ptp(t) > 0 else (m.rate_hz, f[0] - t[0] * m.rate_hz)
    return [
        round(slope * c.t_s + offset)
        for c in m.commands
        if c.action == "bpm" and c.outcome != "refused"
    ]


def format_summary(report: dict[str, Any]) -> str:
    lat, jit = report["decision_latency_ms"], report["jitter_ms"]
    cmd, swaps, rss = report["commands"], report["model_swaps"], report["rss_mb"]
    lines = [
        f"soak {report['minutes']} min{' (interrupted)' if report['interrupted'] else ''}: "
        f"frames {report['frames']}  late {report['late_frames']}  stuck notes "
        f"{report['stuck_notes']}  dropped input {report['dropped_input']}",
        f"decision latency p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} ms   "
        f"onset jitter p50 {jit['p50']} p99 {jit['p99']} max {jit['max']} ms "
        f"({jit['onsets']} onsets, {jit['stretches']} stretches; on JACK frame time as it is "
        f"p99 {report['jitter_jack_frames_ms']['p99']} ms, the server's clock lost "
        f"{report['clock_slips']['lost_ms']} ms in {report['clock_slips']['count']} steps)",
        f"rss {rss['start']} → {rss['end']} MB ({rss['growth_mb_per_hour']} MB/h; after the "
        f"first window {rss['growth_mb_per_hour_after_first_window']} MB/h)   "
        f"private {report['private_mb']['start']} → {report['private_mb']['end']} MB   "
        f"open fds {report['open_fds']['start']} → {report['open_fds']['end']}",
        f"late onsets (> {report['late_onsets']['threshold_ms']:g} ms off the grid, seen by "
        f"the player): {report['late_onsets']['count']} at {report['late_onsets']['at_min']} min "
        f"({report['late_onsets']['during_cpu_steal']} while the hypervisor stole CPU time; "
        f"steal {report['cpu_steal_s']} s in all)",
        f"commands {cmd['sent']} (accepted {cmd['accepted']}, unconfirmed "
        f"{cmd['unconfirmed']}, refused {cmd['refused']})   model swaps {swaps['done']}/"
        f"{swaps['requested']}",
    ]
    out = report["output"]
    if out["note_ons_while_on"] or any(out["lost_on_the_way"].values()):
        lines.append(
            f"written minus received (< 0 where JACK delivered messages twice): "
            f"{out['lost_on_the_way']}; note-ons the player got for a key already on: "
            f"{out['note_ons_while_on']} (the daemon wrote "
            f"{out['daemon_written']['note_ons_while_on']})"
        )
    if report["stuck_notes"]:
        lines.append(
            f"stuck notes: the daemon wrote the note-off of {out['stuck_released_by_daemon']} "
            f"of {report['stuck_notes']}; written but not received: "
            f"{out['lost_on_the_way']['note_offs']} note-offs, "
            f"{out['lost_on_the_way']['messages']} messages in all (JACK xruns "
            f"{report['daemon']['jack_xruns']})"
        )
    if report["daemon"]["notes_released_by_ports"]:
        lines.append(
            "the engine left notes on at the stop, released by the ports' last resort "
            f"(channel, pitch): {report['daemon']['notes_released_by_ports']}"
        )
    if report["daemon"]["notes_sounding_at_exit"]:
        lines.append(
            "the daemon exited with notes written on and never off (channel, pitch): "
            f"{report['daemon']['notes_sounding_at_exit']}"
        )
    for reason, n in cmd["refused_reasons"].items():
        lines.append(f"  refused ×{n}: {reason}")
    for w in report["windows"]:
        wl, wj = w["decision_latency_ms"], w["jitter_ms"]
        lines.append(
            f"  window {w['index']} [{w['start_min']:g} min +{w['minutes']:g}]: frames "
            f"{w['frames']} late {w['late_frames']} dropped {w['dropped_input']} stuck "
            f"{w['stuck_notes']}  latency p99 {wl['p99']} max {wl['max']} ms  jitter p99 "
            f"{wj['p99']} ms  rss {w['rss_mb']['end']} MB  fds {w['open_fds']['end']}"
        )
    lines.append(f"goals: {report['goals']}")
    if report.get("error"):
        lines.append(f"error: {report['error']}")
    return "\n".join(lines)


def plot_report(m: Measurements, report: dict[str, Any], path: Path) -> Path:
    """Decision latency, onset jitter, RSS and fds over time (PNG, matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_jit, ax_mem) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    points = [
        (t_s / 60, float(v))
        for t_s, data in m.metrics
        for v in data.get("frame_latency_new_ms") or ()
    ]
    if points:
        t, v = np.asarray(points).T
        ax_lat.plot(t, v, ".", markersize=2, label="each frame")
        ax_lat.set_yscale("log")
        ax_lat.legend(loc="upper left")
    ax_lat.set_ylabel("decision latency (ms)")
    ax_lat.set_title(
        f"musicgend soak: {report['minutes']} min, {report['frames']} frames, "
        f"{report['late_frames']} late, {report['stuck_notes']} stuck notes"
    )
    for s in m.swaps:
        for ax in (ax_lat, ax_jit, ax_mem):
            ax.axvline(s.t_s / 60, color="grey", alpha=0.4, linewidth=0.8)
    t_s, residual_ms, _ = onset_jitter(m)
    if t_s.size:
        ax_jit.plot(t_s / 60, residual_ms, ".", markersize=2)
    ax_jit.set_ylabel("onset jitter (ms)")
    res = [r for r in m.resources if r[1] is not None]
    if res:
        t = np.asarray([r[0] for r in res]) / 60
        ax_mem.plot(t, [r[1] for r in res], label="RSS")
        ax_mem.plot(t, [r[2] for r in res], label="private")
        ax_mem.legend(loc="upper left")
        ax_fd = ax_mem.twinx()
        ax_fd.plot(t, [r[3] for r in res], color="tab:red", alpha=0.5, label="open fds")
        ax_fd.set_ylabel("open fds", color="tab:red")
    ax_mem.set_ylabel("memory (MB)")
    ax_mem.set_xlabel("minutes (grey lines: model swaps)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- processes -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_mosquitto(directory: Path, timeout_s: float = 10.0) -> Iterator[int]:
    """``mosquitto`` on a free 127.0.0.1 port (anonymous, no persistence); yields the port."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise MusicgendError("mosquitto not found: install it (Debian: apt install mosquitto)")
    port = _free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"user {getpass.getuser()}\n"
    )
    with (directory / "mosquitto.log").open("wb") as log_file:
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log_file, stderr=log_file)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (directory / "mosquitto.log").read_text(errors="replace")
                    raise MusicgendError(f"mosquitto did not start: {log[-500:]}") from None
                time.sleep(0.02)
        yield port
    finally:
        _end(proc)


def _end(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout_s: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_hog() -> tuple[subprocess.Popen[bytes], int | None]:
    """A busy Python process pinned to the last CPU (None: only one CPU, not pinned)."""
    cpus = sorted(os.sched_getaffinity(0))
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    cpu = cpus[-1] if len(cpus) > 1 else None
    if cpu is not None:
        os.sched_setaffinity(proc.pid, {cpu})
    return proc, cpu


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class PlayerProcess:
    """The player (``python -m musicgend.service.soak player``) and its line protocol."""

    def __init__(self, server: str, midi: Sequence[Path], events_path: Path, seed: int) -> None:
        self.events_path = events_path
        command = [sys.executable, "-m", "musicgend.service.soak", "player", "--server", server]
        command += ["--events", str(events_path), "--seed", str(seed), *map(str, midi)]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, sink in (
            (self.proc.stdout, self._lines.put),
            (self.proc.stderr, self._err.append),
        ):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()
        self.hello = self._reply(30.0)

    @staticmethod
    def _pump(stream: IO[str], sink: Callable[[str], None]) -> None:
        for line in stream:
            sink(line)
        sink("")

    def _reply(self, timeout_s: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise MusicgendError(f"the soak player did not answer within {timeout_s:g} s") from None
        if not line:
            self.proc.wait(5)
            raise MusicgendError(f"the soak player exited: {''.join(self._err)[-1500:]}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise MusicgendError(f"soak player: {reply['error']}")
        return reply

    def request(self, op: str, timeout_s: float = 10.0, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return self._reply(timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(MusicgendError, OSError, ValueError):
                self.request("quit", timeout_s=10.0)
        _end(self.proc, timeout_s=5)

    def read_events(
        self,
    ) -> tuple[list[tuple[int, bytes]], list[tuple[int, int]], list[tuple[int, int]]]:
        """(frame, bytes) received, (monotonic ns, frame) clock pairs and (frame, frames
        lost) clock slips, from the file."""
        events: list[tuple[int, bytes]] = []
        syncs: list[tuple[int, int]] = []
        slips: list[tuple[int, int]] = []
        with contextlib.suppress(FileNotFoundError), self.events_path.open() as fh:
            for line in fh:
                parts = line.split()
                if len(parts) != 3:
                    continue  # a torn last line
                if parts[0] == "e":
                    events.append((int(parts[1]), bytes.fromhex(parts[2])))
                elif parts[0] == "s":
                    syncs.append((int(parts[1]), int(parts[2])))
                elif parts[0] == "l":
                    slips.append((int(parts[1]), int(parts[2])))
        return events, syncs, slips


def _player_main(server: str, events_path: Path, seed: int, midi: list[Path]) -> None:
    """The player process: plays the stream in a loop, records what comes back."""
    from musicgend.io.midifile import read_tracks
    from musicgend.service.bench import Peer

    out = sys.stdout

    def answer(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    stream, cycle_s = build_stream([read_tracks(p) for p in midi], seed)
    import jack

    jack.set_error_function(lambda msg: None)
    jack.set_info_function(lambda msg: None)
    peer = Peer(server, name=PLAYER)
    commands: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            commands.put(json.loads(line))
        commands.put(None)

    threading.Thread(target=read_stdin, daemon=True).start()
    answer({"ready": True, "cycle_s": round(cycle_s, 3), "port": peer.outport.name})
    held: Counter[int] = Counter()
    sent = notes = written = slips_written = 0
    playing = False
    t0_ns = 0
    index = 0
    next_flush_ns = time.monotonic_ns()
    with events_path.open("a") as fh:

        def flush() -> None:
            nonlocal written, slips_written
            new = peer.events[written:]
            written += len(new)
            fh.writelines(f"e {frame} {data.hex()}\n" for frame, data in new)
            slips = peer.clock.slips[slips_written:]
            slips_written += len(slips)
            fh.writelines(f"l {frame} {lost}\n" for frame, lost in slips)
            fh.write(f"s {time.monotonic_ns()} {peer.client.frame_time}\n")
            fh.flush()

        while True:
            now_ns = time.monotonic_ns()
            due_ns = next_flush_ns
            if playing:
                time_s, data = stream[index % len(stream)]
                event_ns = t0_ns + int(((index // len(stream)) * cycle_s + time_s) * 1e9)
                if event_ns <= now_ns:
                    peer.to_send.append(data)
                    sent += 1
                    if is_note_on(data):
                        notes += 1
                        held[data[1]] += 1
                    elif held[data[1]] > 0:
                        held[data[1]] -= 1
                    index += 1
                    continue
                due_ns = min(due_ns, event_ns)
            if now_ns >= next_flush_ns:
                flush()
                next_flush_ns = now_ns + 1_000_000_000
                continue
            try:
                cmd = commands.get(timeout=max(0.0, (due_ns - now_ns) / 1e9))
            except queue.Empty:
                continue
            op = None if cmd is None else cmd.get("op")
            if op == "wait_connected":
                answer({"connected": peer.wait_connected(float(cmd["within_s"]))})  # type: ignore[index]
            elif op == "play":
                playing, t0_ns, index = True, time.monotonic_ns(), 0
                answer({"playing": True})
            elif op == "stop":
                playing = False
                for pitch, count in sorted(held.items()):
                    for _ in range(count):
                        peer.to_send.append(bytes([0x80, pitch, 0]))
                        sent += 1
                held.clear()
                deadline = time.monotonic() + 5.0
                while peer.to_send and time.monotonic() < deadline:
                    time.sleep(0.002)
                answer({"stopped": True, "messages_sent": sent, "notes_sent": notes})
            elif op == "quit" or op is None:
                # let two more JACK cycles pass: the daemon's last messages are in
                start = peer.client.frame_time
                deadline = time.monotonic() + 2.0
                while peer.client.frame_time - start < 2 * peer.client.blocksize:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.002)
                flush()
                if op is not None:
                    answer({"quit": True, "events": written})
                break
            else:
                answer({"error": f"unknown op {op!r}"})
    peer.close()


# -- the run ---------------------------------------------------------------------------------


@dataclass
class SoakOptions:
    model: Path
    minutes: float = 60.0
    window_s: float = WINDOW_S
    command_interval_s: float = COMMAND_INTERVAL_S
    swap_interval_s: float = SWAP_INTERVAL_S
    chorales: int = 4
    seed: int = 0

    @property
    def duration_s(self) -> float:
        return self.minutes * 60

    def effective_swap_interval_s(self) -> float:
        """Every 10 minutes; a shorter run swaps once, halfway."""
        return min(self.swap_interval_s, self.duration_s / 2)


def chorale_files(directory: Path, count: int) -> list[Path]:
    """The first ``count`` music21 Bach chorales exported as .mid (the demo's source)."""
    from musicgend.training.corpus import bach_chorale_sources, export_score

    sources = bach_chorale_sources()[:count]
    if not sources:
        raise MusicgendError("music21 holds no Bach chorales (is its corpus installed?)")
    paths = []
    for source in sources:
        target = directory / source.filename
        export_score(source.path, target)
        paths.append(target)
    return paths


class _Controller:
    """The MQTT side: records metrics and status, sends commands, classifies replies."""

    def __init__(self, prefix: str, m: Measurements, t0: Callable[[], float]) -> None:
        self.prefix = prefix
        self.m = m
        self.since = t0
        self.online = asyncio.Event()
        self.status: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.changed = asyncio.Event()

    async def collect(self, client: Any) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            try:
                data = json.loads(bytes(message.payload))
            except (ValueError, TypeError):
                continue
            if topic.endswith("/metrics"):
                self.m.metrics.append((self.since(), data))
            elif topic.endswith("/status") and isinstance(data, dict):
                self.status = data
                if data.get("online"):
                    self.online.set()
            elif topic.endswith("/error") and isinstance(data, dict) and data.get("id"):
                self.errors[str(data["id"])] = str(data.get("error"))
            self.changed.set()

    async def send(self, client: Any, record: CommandRecord, payload: dict[str, Any]) -> None:
        await client.publish(f"{self.prefix}/cmd", json.dumps({**payload, "id": record.id}), qos=1)

    async def settle(self, record: CommandRecord, wait_s: float, shows: Callable[[], bool]) -> None:
        """Wait (at most ``wait_s``) for an error naming the command or a status showing it."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            if record.id in self.errors:
                record.outcome, record.reason = "refused", _short(self.errors[record.id])
                return
            if shows():
                record.outcome = "accepted"
                return
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                record.outcome = "unconfirmed"
                return
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


def _short(reason: str) -> str:
    """An error without the payload-specific value (so refusals group by kind)."""
    return reason.split(" = ")[0] if "unknown field" not in reason else reason


def _find(data: Any, key: str) -> Any:
    if isinstance(data, dict):
        if key in data:
            return data[key]
        for value in data.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None


def _shows(ctl: _Controller, key: str, value: Any) -> bool:
    return bool(_find(ctl.status, key) == value)


def _command_cycle() -> Iterator[tuple[str, Any, dict[str, Any]]]:
    i = 0
    while True:
        step = i // 3
        kind = i % 3
        if kind == 0:
            value: Any = TEMPERATURES[step % len(TEMPERATURES)]
            yield "temperature", value, {"action": "set", "temperature": value}
        elif kind == 1:
            value = MODES[step % len(MODES)]
            yield "mode", value, {"action": "set", "mode": value}
        else:
            value = BPMS[step % len(BPMS)]
            yield "bpm", value, {"action": "set", "bpm": value}
        i += 1


async def _measure(
    opts: SoakOptions,
    m: Measurements,
    port: int,
    daemon: subprocess.Popen[bytes],
    player: PlayerProcess,
    models: tuple[Path, Path],
    stop: asyncio.Event,
    log: Callable[[str], None],
) -> None:
    import aiomqtt

    prefix = f"musicgend/{INSTANCE}"
    loop = asyncio.get_running_loop()
    m.t0_mono_s = time.monotonic()

    def since() -> float:
        return time.monotonic() - m.t0_mono_s

    ctl = _Controller(prefix, m, since)
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="musicgend-soak-controller", timeout=10
    ) as client:
        await client.subscribe(f"{prefix}/#", qos=1)
        collector = asyncio.create_task(ctl.collect(client))
        try:
            ready = asyncio.create_task(ctl.online.wait())
            deadline = loop.time() + 60
            while not ready.done():
                if daemon.poll() is not None:
                    raise MusicgendError(f"the daemon exited with {daemon.returncode} at start")
                if loop.time() > deadline:
                    raise MusicgendError("the daemon did not come online on MQTT within 60 s")
                await asyncio.wait({ready}, timeout=0.1)
            connected = await asyncio.to_thread(
                functools.partial(player.request, "wait_connected", 40.0, within_s=30.0)
            )
            if not connected["connected"]:
                raise MusicgendError("the daemon did not connect to the player's ports")
            m.metrics.clear()
            m.t0_mono_s = time.monotonic()
            await asyncio.to_thread(player.request, "play")
            log(f"soak running for {opts.minutes:g} min (pid {daemon.pid})")
            await _schedule(opts, m, ctl, client, daemon, models, stop, since, log)
        finally:
            m.duration_s = since()
            m.stop_s = m.duration_s
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await collector


async def _schedule(
    opts: SoakOptions,
    m: Measurements,
    ctl: _Controller,
    client: Any,
    daemon: subprocess.Popen[bytes],
    models: tuple[Path, Path],
    stop: asyncio.Event,
    since: Callable[[], float],
    log: Callable[[str], None],
) -> None:
    commands = _command_cycle()
    swap_every_s = opts.effective_swap_interval_s()
    next_cmd = opts.command_interval_s
    ci = opts.command_interval_s
    swap_index = 1

    def swap_at(k: int) -> float:
        # half-way between two commands, so a tempo change never hides a swap's effect
        return (k * swap_every_s // ci) * ci + ci / 2

    next_swap = swap_at(swap_index)
    next_sample = 0.0
    next_log = 60.0
    pending: set[asyncio.Task[None]] = set()
    n = 0
    while True:
        now = since()
        if now >= opts.duration_s or stop.is_set():
            break
        if daemon.poll() is not None:
            m.error = f"the daemon exited with {daemon.returncode} during the soak"
            break
        if now >= next_sample:
            m.resources.append((now, _rss(daemon.pid), _private(daemon.pid), open_fds(daemon.pid)))
            _sample_steal(m, now)
            next_sample += SAMPLE_INTERVAL_S
        if now >= next_cmd:
            n += 1
            action, value, payload = next(commands)
            record = CommandRecord(f"soak-{n}", now, action, value)
            m.commands.append(record)
            await ctl.send(client, record, payload)
            task = asyncio.create_task(
                ctl.settle(record, REPLY_WAIT_S, functools.partial(_shows, ctl, action, value))
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_cmd += opts.command_interval_s
        if now >= next_swap:
            n += 1
            target = models[len(m.swaps) % 2 == 0]
            record = CommandRecord(f"soak-{n}", now, "load_model", str(target))
            m.swaps.append(record)
            await ctl.send(client, record, {"action": "load_model", "path": str(target)})
            task = asyncio.create_task(
                ctl.settle(record, 60.0, functools.partial(_shows, ctl, "model", str(target)))
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
            swap_index += 1
            next_swap = swap_at(swap_index)
        if now >= next_log:
            last = m.metrics[-1][1] if m.metrics else {}
            log(
                f"  {now / 60:.0f} min: frames {last.get('frames')} late "
                f"{last.get('late_frames')} p99 {(last.get('frame_latency_ms') or {}).get('p99')}"
                f" ms, rss {m.resources[-1][1] if m.resources else None} MB"
            )
            next_log += 60.0
        wake = min(next_cmd, next_swap, next_sample, next_log, opts.duration_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, min(wake - since(), 0.5)))
    m.resources.append((since(), _rss(daemon.pid), _private(daemon.pid), open_fds(daemon.pid)))
    _sample_steal(m, since())
    if pending:
        await asyncio.wait(pending, timeout=REPLY_WAIT_S + 1)
    for record in (*m.commands, *m.swaps):
        if record.outcome == "pending":
            record.outcome = "unconfirmed"


def _sample_steal(m: Measurements, t_s: float) -> None:
    value = cpu_steal_s()
    if value is not None:
        m.steal.append((t_s, value))


def cpu_steal_s(stat: Path = Path("/proc/stat")) -> float | None:
    """The machine's CPU steal time so far (all CPUs, seconds); None where unknown."""
    try:
        fields = stat.read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def steal_overlaps(steal: Sequence[tuple[float, float]], times_s: Sequence[float]) -> int:
    """How many of ``times_s`` fall in a sampling interval in which CPU steal time grew."""
    count = 0
    for t_s in times_s:
        for (a_s, a), (b_s, b) in itertools.pairwise(steal):
            if a_s <= t_s <= b_s:
                count += b > a
                break
    return count


def _rss(pid: int) -> float | None:
    from musicgend.service.runtime import rss_mb

    return rss_mb(pid)


def _private(pid: int) -> float | None:
    from musicgend.service.runtime import private_mb

    return private_mb(pid)


def _daemon_command(model: Path, port: int, tmp: Path) -> list[str]:
    from musicgend.service.bench import daemon_command

    return daemon_command(
        model,
        tmp / "sessions",
        tmp / "metrics.json",
        *("--mqtt-url", f"mqtt://127.0.0.1:{port}"),
        *("--connect-in", f"^{PLAYER}:out$", "--connect-out", f"^{PLAYER}:in$"),
    )


def run_soak(
    opts: SoakOptions,
    stop: asyncio.Event | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> tuple[Measurements, dict[str, Any]]:
    """The measurement itself, in this process (SIGINT/SIGTERM end it early, cleanly)."""
    from musicgend.io.jackserver import EmbeddedJack

    model = opts.model.resolve()
    if not (model / "metadata.json").exists():
        raise MusicgendError(f"{opts.model}: not a model directory (pass --model DIR)")
    m = Measurements()
    os.environ.setdefault("JACK_NO_AUDIO_RESERVATION", "1")
    with tempfile.TemporaryDirectory(prefix="musicgend-soak-") as tmp_name:
        tmp = Path(tmp_name)
        copy = tmp / "model-copy"
        shutil.copytree(model, copy)
        (tmp / "corpus").mkdir()
        midi = chorale_files(tmp / "corpus", opts.chorales)
        log(f"soak: {len(midi)} chorales, model {model} and its copy {copy}")
        with (
            EmbeddedJack(
                rate_hz=RATE_HZ, period_frames=PERIOD_FRAMES, set_environment=False
            ) as jackd,
            private_mosquitto(tmp) as port,
            contextlib.ExitStack() as stack,
        ):
            player = PlayerProcess(jackd.name, midi, tmp / "events.txt", opts.seed)
            stack.callback(player.close)
            env = {k: v for k, v in os.environ.items() if not k.startswith("MUSICGEND_")}
            env.update(
                JACK_DEFAULT_SERVER=jackd.name,
                MUSICGEND_MQTT__INSTANCE=INSTANCE,
                MUSICGEND_MQTT__METRICS_INTERVAL_S="1",
                MUSICGEND_CLOCK__BPM="150",
            )
            daemon_log = (tmp / "daemon.log").open("wb")
            stack.callback(daemon_log.close)
            daemon = subprocess.Popen(
                _daemon_command(model, port, tmp), env=env, stdout=daemon_log, stderr=daemon_log
            )
            stack.callback(_end, daemon, signal.SIGTERM, 60)
            hog, cpu = start_hog()
            stack.callback(_end, hog, signal.SIGKILL)
            log(f"soak: JACK {jackd.name}, mosquitto :{port}, CPU hog on CPU {cpu}")
            try:
                asyncio.run(_main(opts, m, port, daemon, player, (model, copy), stop, log))
            except MusicgendError as exc:
                m.error = str(exc)
            finally:
                _finish(m, daemon, player, tmp, log)
            daemon_log.flush()
            log_text = (tmp / "daemon.log").read_text(errors="replace")
            if m.error or WARNED.search(log_text):  # the stop watchdog's stacks follow an ERROR
                m.daemon_log_tail = log_text[-LOG_TAIL_CHARS:]
                if m.error and not m.metrics:
                    raise MusicgendError(f"{m.error}\ndaemon log:\n{m.daemon_log_tail[-2000:]}")
    report = build_report(m, minutes_requested=opts.minutes, window_s=opts.window_s)
    report.update(_context(model, cpu))
    return m, report


async def _main(
    opts: SoakOptions,
    m: Measurements,
    port: int,
    daemon: subprocess.Popen[bytes],
    player: PlayerProcess,
    models: tuple[Path, Path],
    stop: asyncio.Event | None,
    log: Callable[[str], None],
) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        if not stop.is_set():
            log("soak: stopping early (signal); writing what was measured")
            m.interrupted = True
            stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, interrupt)
    await _measure(opts, m, port, daemon, player, models, stop, log)


def _finish(
    m: Measurements,
    daemon: subprocess.Popen[bytes],
    player: PlayerProcess,
    tmp: Path,
    log: Callable[[str], None],
) -> None:
    """Release the player's notes, SIGTERM the daemon, collect what the player saw."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # finish in order
    try:
        with contextlib.suppress(MusicgendError):
            m.player = {
                k: v
                for k, v in player.request("stop").items()
                if k in ("messages_sent", "notes_sent")
            }
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            m.daemon_exit = daemon.wait(60)
        except subprocess.TimeoutExpired:
            m.error = m.error or "the daemon did not exit within 60 s of SIGTERM"
            daemon.kill()
            m.daemon_exit = daemon.wait()
        if m.daemon_exit != 0 and m.error is None:
            m.error = f"the daemon exited with {m.daemon_exit}"
        metrics_file = tmp / "metrics.json"
        if metrics_file.exists():
            m.final_metrics = json.loads(metrics_file.read_text())
        player.close()
        events, syncs, m.slips = player.read_events()
        m.events = _on_soak_time(events, syncs, m)
        log(f"soak: daemon exit {m.daemon_exit}; {len(events)} events recorded")
    finally:
        signal.signal(signal.SIGINT, previous)


def _on_soak_time(
    events: list[tuple[int, bytes]], syncs: list[tuple[int, int]], m: Measurements
) -> list[tuple[float, int, bytes]]:
    """Events with their time in soak seconds (JACK frames mapped by the player's pairs)."""
    if not events:
        return []
    if len(syncs) >= 2:
        mono = np.asarray([s[0] for s in syncs], dtype=np.float64) / 1e9
        frames = np.asarray([s[1] for s in syncs], dtype=np.float64)
        slope, offset = np.polyfit(frames, mono, 1)
    else:
        slope, offset = 1 / m.rate_hz, 0.0
    return [(float(slope * f + offset) - m.t0_mono_s, f, d) for f, d in events]


def _context(model: Path, cpu: int | None) -> dict[str, Any]:
    return {
        "model": str(model),
        "hog_cpu": cpu,
        "jack": {"rate_hz": RATE_HZ, "period_frames": PERIOD_FRAMES},
        "machine": machine_info(),
        "python": platform.python_version(),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# -- the launcher (Ctrl-C safe) ----------------------------------------------------------------


def soak(
    opts: SoakOptions,
    out_dir: Path,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> tuple[dict[str, Any], Path]:
    """Run a soak in a child process in a session of its own and return ``(report, json
    path)``. Ctrl-C here stops it in order and still writes what was measured; a third
    Ctrl-C kills the child's whole process group."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"soak-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    with tempfile.TemporaryDirectory(prefix="musicgend-soak-status-") as tmp:
        status = Path(tmp) / "status.json"
        command = [sys.executable, "-m", "musicgend.service.soak", "orchestrate"]
        command += ["--model", str(opts.model), "--minutes", repr(opts.minutes)]
        command += ["--window-s", repr(opts.window_s), "--out", str(path), "--status", str(status)]
        child = subprocess.Popen(command, start_new_session=True)
        interrupts = 0
        previous = signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGINT))
        while True:
            try:
                child.wait()
                break
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts < 3:
                    log("soak: stopping (the daemon gets SIGTERM; Ctrl-C twice more to abort)")
                    child.send_signal(signal.SIGINT)
                else:
                    log("soak: aborting")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.pid, signal.SIGKILL)
        signal.signal(signal.SIGTERM, previous)
        state = json.loads(status.read_text()) if status.exists() else {}
    if "error" in state:
        raise MusicgendError(state["error"])
    if not path.exists():
        raise MusicgendError(f"the soak failed (exit {child.returncode}); see the messages above")
    report: dict[str, Any] = json.loads(path.read_text())
    return report, path


def _orchestrate_main(args: argparse.Namespace) -> int:
    opts = SoakOptions(model=args.model, minutes=args.minutes, window_s=args.window_s)
    status: Path = args.status
    try:
        m, report = run_soak(opts)
    except MusicgendError as exc:
        status.write_text(json.dumps({"error": str(exc)}))
        return 1
    except KeyboardInterrupt:
        status.write_text(json.dumps({"error": "interrupted before the measurement started"}))
        return 1
    out: Path = args.out
    png = out.with_suffix(".png")
    report["png"] = png.name
    plot_report(m, report, png)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    status.write_text(json.dumps({"result": str(out)}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m musicgend.service.soak player|orchestrate ...`` (the soak's processes)."""
    parser = argparse.ArgumentParser(prog="musicgend.service.soak")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("player", help="the separate JACK client that plays and records")
    p.add_argument("--server", required=True)
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("midi", type=Path, nargs="+")
    o = sub.add_parser("orchestrate", help="one soak run (use `musicgend bench soak`)")
    o.add_argument("--model", type=Path, required=True)
    o.add_argument("--minutes", type=float, default=60.0)
    o.add_argument("--window-s", type=float, default=WINDOW_S)
    o.add_argument("--out", type=Path, required=True)
    o.add_argument("--status", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.role == "player":
        _player_main(args.server, args.events, args.seed, args.midi)
        return 0
    return _orchestrate_main(args)


if __name__ == "__main__":
    sys.exit(main())
