"""``musicgend bench soak``: the pure parts (stream, stuck notes, onsets, grid fits with tempo
changes, windows, counters) with synthetic data; then a real 1-minute soak and a Ctrl-C'd one
(private jackd + mosquitto, the daemon and a separate JACK client as subprocesses). Figures
are printed, never asserted as timings."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from musicgend.core.pianoroll import Note, Track
from musicgend.errors import MusicgendError
from musicgend.io.midi import WrittenNotes
from musicgend.service.soak import (
    BURST_NOTES,
    CommandRecord,
    Measurements,
    build_report,
    build_stream,
    counter_delta,
    cpu_steal_s,
    format_summary,
    frame_onsets,
    grid_residuals_s,
    growth_per_hour,
    is_note_off,
    is_note_on,
    onset_jitter,
    steal_overlaps,
    stretch_jitter,
    stuck_notes,
    window_bounds,
)
from tests.conftest import ROOT, run_musicgend
from tests.jackutil import wait_until

CONTRACT = ("minutes", "frames", "late_frames", "stuck_notes", "dropped_input", "rss_mb")

# -- the player's stream ---------------------------------------------------------------------


def test_stream_plays_a_phrase_of_each_piece_then_a_burst_and_a_silence() -> None:
    piece = [Track((Note(1.0, 2.0, 60, 70), Note(1.5, 40.0, 64, 80), Note(30.0, 31.0, 67)))]
    events, cycle_s = build_stream([piece, piece], seed=3, phrase_s=10.0)
    ons = [(t, d) for t, d in events if is_note_on(d)]
    offs = [(t, d) for t, d in events if is_note_off(d)]
    assert len(ons) == len(offs) == 2 * (2 + BURST_NOTES)  # the note at 30 s is cut
    assert [t for t, _ in events] == sorted(t for t, _ in events)
    # the phrase starts at the first note, a held note is cut at the phrase's end
    assert ons[0] == (0.0, bytes([0x90, 60, 70]))
    assert (10.0, bytes([0x80, 64, 0])) in offs
    # per piece: phrase, burst, then silence: the cycle ends with nothing playing
    last_off = max(t for t, _ in offs)
    assert cycle_s - last_off >= 3.9
    assert cycle_s == pytest.approx(2 * (10.0 + BURST_NOTES * 0.03 + 4.0))


def test_stream_sends_a_note_off_before_a_note_on_at_the_same_time() -> None:
    piece = [Track((Note(0.0, 1.0, 60), Note(1.0, 2.0, 60)))]
    events, _ = build_stream([piece])
    at_one = [d for t, d in events if t == 1.0 and d[1] == 60]
    assert at_one == [bytes([0x80, 60, 0]), bytes([0x90, 60, 64])]


def test_stream_without_notes_is_an_error() -> None:
    with pytest.raises(MusicgendError, match="no notes"):
        build_stream([[Track(())]])


# -- stuck notes, onsets -----------------------------------------------------------------------


def test_stuck_notes_counts_note_ons_without_their_note_off() -> None:
    events = [
        (10, bytes([0x90, 60, 90])),
        (10, bytes([0x91, 60, 90])),  # another channel
        (12, bytes([0x90, 62, 90])),
        (20, bytes([0x80, 60, 0])),
        (21, bytes([0x90, 62, 0])),  # velocity 0 is a note-off
        (30, bytes([0xB1, 123, 0])),  # all notes off does not count as a note-off
    ]
    assert stuck_notes(events) == [(10, 1, 60)]
    assert stuck_notes([*events, (40, bytes([0x81, 60, 0]))]) == []


def test_frame_onsets_are_the_first_note_on_of_each_frame() -> None:
    events = [
        (1000, bytes([0x80, 60, 0])),
        (1003, bytes([0x90, 62, 90])),
        (1500, bytes([0xB0, 1, 3])),  # not a note: ignored
        (10600, bytes([0x90, 64, 90])),
        (20200, bytes([0x80, 64, 0])),  # a frame that only releases: starts nothing
        (29800, bytes([0x90, 65, 90])),
    ]
    assert frame_onsets(events, gap_frames=2400) == [1003, 10600, 29800]


# -- grids, tempo changes ----------------------------------------------------------------------


def _grid(n: int, period_s: float, start_s: float = 3.0, skip: int = 3) -> np.ndarray:
    """Onsets of ``n`` frames with every ``skip``-th frame silent (a held chord)."""
    k = np.asarray([i for i in range(n * skip // (skip - 1) + 1) if i % skip][:n], dtype=float)
    return start_s + k * period_s


def test_grid_residuals_absorb_offset_and_rate_and_see_the_jitter() -> None:
    t = _grid(200, 0.2) * 1.0003  # the other clock runs 300 ppm fast
    jitter_s = np.zeros(t.size)
    jitter_s[50], jitter_s[120] = 0.0004, -0.0002
    residual = grid_residuals_s(t + jitter_s)
    assert residual[50] == pytest.approx(0.0004, abs=2e-5)
    assert residual[120] == pytest.approx(0.0002, abs=2e-5)
    assert np.delete(residual, [50, 120]).max() < 2e-5


def test_one_late_frame_does_not_tilt_the_grid_for_its_neighbours() -> None:
    t = _grid(100, 0.2)
    t[-1] += 0.035  # the last frame 35 ms late
    residual = grid_residuals_s(t)
    assert residual[-1] == pytest.approx(0.035, abs=1e-4)
    assert residual[:-1].max() < 1e-6


def test_stretch_jitter_fits_each_tempo_separately() -> None:
    first = _grid(60, 0.2)  # 150 BPM
    change_s = first[-1] + 0.1
    second = change_s + 0.2 + _grid(80, 30 / 140, start_s=0.0)  # 140 BPM after the change
    onsets = np.concatenate([first, second])
    t, residual_ms, stretches = stretch_jitter(onsets, [change_s])
    assert stretches == 2
    assert t.size == onsets.size - 1  # the first frame after the change is within the guard
    assert residual_ms.max() < 1e-3
    # one grid across the change would not fit: the method matters
    _, unsplit_ms, _ = stretch_jitter(onsets, [], max_stretch_s=1e9)
    assert unsplit_ms.max() > 1.0


def test_stretch_jitter_fits_long_stretches_in_pieces() -> None:
    t, _, stretches = stretch_jitter(_grid(900, 0.2), [], max_stretch_s=60.0)
    assert stretches == 5  # 900 onsets in 2 of every 3 frames: 270 s
    assert t.size == 900


def test_stretch_jitter_without_onsets() -> None:
    t, residual, stretches = stretch_jitter([], [5.0])
    assert t.size == residual.size == stretches == 0


# -- windows, counters, the report -------------------------------------------------------------


def test_windows_are_five_minutes_and_a_short_run_has_one() -> None:
    assert window_bounds(60.0) == [(0.0, 60.0)]
    assert window_bounds(720.0) == [(0.0, 300.0), (300.0, 600.0), (600.0, 720.0)]
    # a run that took its 60 minutes and a few ms has twelve windows, not a 13th empty one
    assert window_bounds(3600.02)[-1] == (3300.0, 3600.02) and len(window_bounds(3600.02)) == 12
    assert window_bounds(600.0) == [(0.0, 300.0), (300.0, 600.0)]


def test_counter_delta_uses_the_last_sample_at_or_before_each_bound() -> None:
    series = [(0.5, {"frames": 10}), (150.0, {"frames": 760}), (301.0, {"frames": 1515})]
    assert counter_delta(series, "frames", 0.0, 300.0) == 750
    assert counter_delta(series, "frames", 300.0, 400.0) == 755
    assert counter_delta([], "frames", 0.0, 1.0) is None


def test_growth_per_hour_is_the_fitted_slope() -> None:
    samples = [(t, 50.0 + t / 3600 * 2.0) for t in range(0, 600, 5)]
    assert growth_per_hour(samples) == pytest.approx(2.0)
    assert growth_per_hour(samples[:1]) is None


def _metrics(t_s: float, frames: int, late: int, worst: float) -> tuple[float, dict[str, object]]:
    # a second's worth of frames: each message carries the latencies of its new frames
    counters = {"frames": frames, "late_frames": late, "dropped_input": 0}
    return t_s, {**counters, "frame_latency_new_ms": [0.1, 0.1, 0.1, 0.1, worst]}


def test_report_has_the_contract_keys_overall_and_per_window() -> None:
    rate = 48000
    m = Measurements(duration_s=420.0, stop_s=420.0, rate_hz=rate)
    m.metrics = [
        _metrics(t, int(t * 5), 1 if t > 310 else 0, 0.5 if t == 310 else 0.2)
        for t in range(0, 421, 1)
    ]
    m.final_metrics = _metrics(421, 2106, 1, 0.3)[1]
    # 12 MB while loading (first 5 s), then 3.6 MB/h
    m.resources = [
        (float(t), 60.0 + t / 1000 + (12.0 if t >= 5 else 0.0), 40.0, 21) for t in range(0, 421, 5)
    ]
    onsets = _grid(1000, 0.2, start_s=1.0)
    m.events = [(t, round(t * rate), bytes([0x90, 60, 80])) for t in onsets]
    # each chord ends when the next starts, on the same frame; the last one stays on
    m.events += [(t, round(t * rate), bytes([0x80, 60, 0])) for t in onsets[1:]]
    m.events.sort(key=lambda e: (e[1], is_note_on(e[2])))  # offs first, as the daemon sends
    m.commands = [CommandRecord("a", 5.0, "bpm", 150.0, "refused", "unknown field 'bpm'")]
    m.swaps = [CommandRecord("b", 302.5, "load_model", "/x", "accepted")]
    report = build_report(m, minutes_requested=7.0, window_s=300.0)
    for key in (*CONTRACT, "decision_latency_ms", "windows"):
        assert key in report
    assert report["minutes"] == 7.0
    assert report["frames"] == 2106 and report["late_frames"] == 1
    assert report["stuck_notes"] == 1  # the last note-on has no note-off
    assert report["rss_mb"]["growth_mb_per_hour"] > 5.0  # the whole run: loading included
    assert report["rss_mb"]["growth_mb_per_hour_after_first_window"] == pytest.approx(3.6)
    # exact over every frame, and per window over that window's frames only
    assert report["decision_latency_ms"] == {"p50": 0.1, "p99": 0.2, "max": 0.5}
    assert report["commands"]["refused_reasons"] == {"unknown field 'bpm'": 1}
    assert report["model_swaps"] == {"requested": 1, "done": 1, "refused": 0}
    windows = report["windows"]
    assert [w["minutes"] for w in windows] == [5.0, 2.0]
    assert [w["frames"] for w in windows] == [1500, 606]
    assert [w["late_frames"] for w in windows] == [0, 1]
    assert [w["stuck_notes"] for w in windows] == [0, 1]
    assert [w["model_swaps"] for w in windows] == [0, 1]
    assert [w["decision_latency_ms"]["max"] for w in windows] == [0.2, 0.5]
    for w in windows:
        assert set(CONTRACT) | {"decision_latency_ms"} <= set(w)
        assert w["jitter_ms"]["max"] < 0.01
    assert report["jitter_ms"]["onsets"] == 1000
    assert report["late_onsets"]["count"] == 0
    assert report["cpu_steal_s"] is None  # not sampled here


def test_a_stuck_note_is_told_apart_by_what_the_daemon_wrote() -> None:
    rate = 48000
    m = Measurements(duration_s=10.0, stop_s=10.0, rate_hz=rate)
    # the player got two note-ons and one note-off: (ch 1, 62) was never released
    m.events = [
        (1.0, rate, bytes([0x90, 60, 80])),
        (1.0, rate, bytes([0x90, 62, 80])),
        (2.0, 2 * rate, bytes([0x80, 60, 0])),
    ]
    # the daemon wrote the missing note-off (and one message more): lost on the way
    m.final_metrics = {
        "midi": {"sent": 5, "note_ons_sent": 2, "note_offs_sent": 2, "note_ons_while_on_sent": 0},
        "notes_sounding": [],
        "notes_released_by_ports": [],
    }
    report = build_report(m, minutes_requested=10 / 60, window_s=300.0)
    assert report["stuck"] == [{"channel": 1, "pitch": 62, "released_by_daemon": True}]
    out = report["output"]
    assert (out["note_ons"], out["note_offs"], out["stuck_released_by_daemon"]) == (2, 1, 1)
    assert out["daemon_written"] == {
        "messages": 5,
        "note_ons": 2,
        "note_offs": 2,
        "note_ons_while_on": 0,
    }
    assert out["lost_on_the_way"] == {"messages": 2, "note_ons": 0, "note_offs": 1}
    assert out["note_ons_while_on"] == 0
    assert report["goals"]["stuck_notes_0"] is False
    assert report["goals"]["daemon_released_every_note"] is True
    assert report["goals"]["engine_released_every_note"] is True
    assert "wrote the note-off of 1 of 1" in format_summary(report)

    # the engine forgot it, the ports' last resort released it at the stop
    m.final_metrics = {**m.final_metrics, "notes_released_by_ports": [[1, 62]]}
    report = build_report(m, minutes_requested=10 / 60, window_s=300.0)
    assert report["stuck"][0]["released_by_daemon"] is True
    assert report["goals"]["engine_released_every_note"] is False
    assert "released by the ports' last resort" in format_summary(report)

    # still on at the exit, never released by the daemon, whatever JACK did
    m.final_metrics = {**m.final_metrics, "notes_sounding": [[1, 62]]}
    m.final_metrics["notes_released_by_ports"] = []
    report = build_report(m, minutes_requested=10 / 60, window_s=300.0)
    assert report["stuck"][0]["released_by_daemon"] is False
    assert report["daemon"]["notes_sounding_at_exit"] == [[1, 62]]
    assert report["goals"]["daemon_released_every_note"] is False
    assert "written on and never off" in format_summary(report)

    # no final metrics (the daemon crashed): unknown, not guessed
    m.final_metrics = None
    report = build_report(m, minutes_requested=10 / 60, window_s=300.0)
    assert report["stuck"][0]["released_by_daemon"] is None
    assert report["output"]["lost_on_the_way"]["note_offs"] is None
    assert report["goals"]["daemon_released_every_note"] is False


def test_note_ons_for_a_key_already_on_are_counted() -> None:
    on, off = bytes([0x90, 60, 80]), bytes([0x80, 60, 0])
    events = [(1, on), (2, off), (3, on), (5, on), (6, off), (7, bytes([0x91, 60, 80]))]
    heard = WrittenNotes()
    for _, data in events:
        heard.record(data)
    assert heard.note_ons_while_on == 1  # frame 5: a note-off lost, or frame 3's note-on twice
    assert stuck_notes(events) == [(7, 1, 60)]  # channel 2's note, still on at the end
    m = Measurements(duration_s=2.0, stop_s=2.0, rate_hz=1)
    m.events = [(float(f) / 4, f, d) for f, d in events]
    m.final_metrics = {
        # it wrote a note-off after frame 3 and one after frame 7: both lost
        "midi": {"sent": 8, "note_ons_sent": 4, "note_offs_sent": 4, "note_ons_while_on_sent": 0},
        "notes_sounding": [],
        "notes_released_by_ports": [],
    }
    report = build_report(m, minutes_requested=2 / 60, window_s=300.0)
    out = report["output"]
    assert (report["stuck_notes"], out["note_ons_while_on"]) == (1, 1)
    assert out["lost_on_the_way"] == {"messages": 2, "note_ons": 0, "note_offs": 2}
    assert "for a key already on: 1 (the daemon wrote 0)" in format_summary(report)


def test_cpu_steal_is_read_from_proc_stat_and_matched_to_late_onsets(tmp_path: Path) -> None:
    import os

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 1000 3 0 1 250 0 0\ncpu0 50 2 25 500 1 0 0 125 0 0\n")
    assert cpu_steal_s(stat) == pytest.approx(250 / os.sysconf("SC_CLK_TCK"))
    stat.write_text("garbage\n")
    assert cpu_steal_s(stat) is None
    assert cpu_steal_s(tmp_path / "missing") is None
    steal = [(0.0, 1.0), (5.0, 1.0), (10.0, 1.2), (15.0, 1.2)]
    assert steal_overlaps(steal, [2.0, 7.0, 9.9, 12.0, 99.0]) == 2  # 7.0 and 9.9
    m = Measurements(duration_s=15.0, stop_s=15.0)
    m.steal = steal
    m.resources = [(t, 60.0, 40.0, 21) for t, _ in steal]
    report = build_report(m, minutes_requested=0.25, window_s=300.0)
    assert report["cpu_steal_s"] == pytest.approx(0.2)
    assert report["windows"][0]["cpu_steal_s"] == pytest.approx(0.2)

    assert "log_tail" not in report["daemon"]  # a clean end keeps no log
    m.error, m.daemon_exit = "the daemon did not exit within 60 s of SIGTERM", -9
    m.daemon_log_tail = "... stopping\n"
    report = build_report(m, minutes_requested=0.25, window_s=300.0)
    assert report["error"] == m.error
    assert report["daemon"]["exit_code"] == -9
    assert report["daemon"]["log_tail"] == "... stopping\n"


# -- real runs ---------------------------------------------------------------------------------


def _check_report(report: dict[str, object], out_dir: Path) -> None:
    for key in (*CONTRACT, "decision_latency_ms", "windows"):
        assert key in report, key
    assert set(report["rss_mb"]) >= {"start", "end"}  # type: ignore[arg-type]
    assert set(report["decision_latency_ms"]) == {"p50", "p99", "max"}  # type: ignore[arg-type]
    windows = report["windows"]
    assert isinstance(windows, list) and len(windows) == 1
    assert set(CONTRACT) | {"decision_latency_ms"} <= set(windows[0])
    # every note the daemon turned on it turned off. A release the player did not get was
    # written by the daemon and lost on the way: under the CPU hog the dummy JACK server
    # drops whole cycles now and then (its xruns), input and output alike.
    goals, out = report["goals"], report["output"]
    assert goals["daemon_released_every_note"], report["daemon"]  # type: ignore[index]
    assert goals["engine_released_every_note"], report["daemon"]  # type: ignore[index]
    assert out["stuck_released_by_daemon"] == report["stuck_notes"], report["stuck"]  # type: ignore[index]
    # the daemon strikes a key again only after its note-off. (The counts written minus
    # received are not asserted: under xruns JACK has also delivered messages twice.)
    assert out["daemon_written"]["note_ons_while_on"] == 0, out  # type: ignore[index]
    assert report["daemon"]["exit_code"] == 0  # type: ignore[index]
    jsons = list(out_dir.glob("soak-*.json"))
    assert len(jsons) == 1 and json.loads(jsons[0].read_text()) == report
    png = jsons[0].with_suffix(".png")
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.jack
@pytest.mark.mqtt
def test_one_minute_soak(tmp_path: Path) -> None:
    proc = run_musicgend(
        "bench", "soak", "--minutes", "1", "--json", "--out-dir", tmp_path, timeout_s=400
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    print(
        {k: report[k] for k in (*CONTRACT, "decision_latency_ms", "jitter_ms", "commands")},
        report["model_swaps"],
        report["open_fds"],
    )
    _check_report(report, tmp_path)
    assert report["late_frames"] == 0
    assert report["dropped_input"] == 0
    assert report["frames"] > 0 and report["windows"][0]["frames"] == report["frames"]
    assert report["minutes"] >= 1.0 and not report["interrupted"]
    assert report["model_swaps"]["requested"] == 1
    assert report["model_swaps"]["done"] == 1
    commands = report["commands"]
    assert commands["sent"] >= 10
    assert commands["accepted"] + commands["unconfirmed"] + commands["refused"] == commands["sent"]
    assert report["output"]["note_ons"] > 0
    assert report["input"]["notes_sent"] > 0


@pytest.mark.slow
@pytest.mark.jack
@pytest.mark.mqtt
def test_ctrl_c_stops_the_soak_cleanly_and_still_reports(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "musicgend",
            "bench",
            "soak",
            "--minutes",
            "5",
            "--json",
            "--out-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    err: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: err.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("soak running" in line for line in err), 120, 0.1, "the soak to run")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    assert proc.returncode == 130, "".join(err)[-3000:]
    report = json.loads(out)
    print({k: report[k] for k in CONTRACT}, report["output"])
    assert report["interrupted"] is True
    assert report["minutes"] < 5
    _check_report(report, tmp_path)


def test_jitter_adds_back_what_the_jack_clock_lost() -> None:
    """Onsets exact on the wall clock: after the dummy driver's clock lost 2 ms (96 frames)
    they sit 96 JACK frames early. The wall-clock jitter (the primary figure) is zero; the
    raw JACK-frame figure sees the step."""
    rate = 48000
    m = Measurements(duration_s=50.0, stop_s=50.0, rate_hz=rate)
    onsets = _grid(150, 0.2, start_s=1.0)  # 1.2 … 45.8 s
    slip_at = round(15.0 * rate)
    frames = [round(t * rate) - (96 if round(t * rate) >= slip_at else 0) for t in onsets]
    m.events = [(t, f, bytes([0x90, 60, 80])) for t, f in zip(onsets, frames, strict=True)]
    m.slips = [(slip_at - 96, 96)]
    m.resources = [(0.0, 60.0, 40.0, 21)]
    report = build_report(m, minutes_requested=50 / 60, window_s=300.0)
    assert report["jitter_ms"]["max"] < 0.05
    assert report["jitter_jack_frames_ms"]["max"] > 0.5
    assert report["clock_slips"] == {"count": 1, "lost_ms": 2.0}
    t_s, residual_ms, _ = onset_jitter(m)
    assert len(t_s) == len(residual_ms) == 150
    np.testing.assert_allclose(t_s, onsets)  # placed on the soak's time axis as recorded
