"""`musicgend bench`: the DESIGN §4 JSON keys from a real (short) run, and the jitter measure.

Figures are printed by the benchmark, never asserted as timings here (machines are shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musicgend.service.bench import ClockSlips, onset_jitter_ms, stretch_onset_jitter_ms
from tests.conftest import run_musicgend

RATE = 48000


def _frames(times_s: np.ndarray) -> list[int]:
    return [round(float(t) * RATE) for t in times_s]


def test_jitter_per_stretch_ignores_a_slowly_wandering_clock_but_sees_a_late_onset() -> None:
    k = np.arange(3000)
    t = 0.2 * k + 2e-3 * np.sin(2 * np.pi * k / 3000)  # ±2 ms over ten minutes
    one_grid = onset_jitter_ms(_frames(t), RATE)
    per_stretch = stretch_onset_jitter_ms(_frames(t), RATE)
    assert one_grid["p99"] > 1.0  # the wander counted as jitter
    assert per_stretch["p99"] < 0.2  # within each minute the grid is nearly a line
    assert per_stretch["onsets"] == 3000 and per_stretch["stretches"] == 10
    t[1234] += 0.004  # one onset 4 ms late
    assert stretch_onset_jitter_ms(_frames(t), RATE)["max"] == pytest.approx(4.0, abs=0.3)
    assert stretch_onset_jitter_ms([], RATE)["p99"] is None


@pytest.mark.jack
@pytest.mark.tf
@pytest.mark.slow
def test_bench_json_has_the_contract_keys(tmp_path: Path) -> None:
    from tests.model.conftest import save_tiny_artifact

    model = save_tiny_artifact(tmp_path / "tiny", seed=4)
    out = tmp_path / "results"
    # 40 frames (8 s): onsets remain after jitter_ms leaves out WARM_UP_S (5 s) from the
    # first, also on a slow host where the first onset comes a few frames in
    result = run_musicgend(
        "bench", "--json", "--frames", "40", "--model", model, "--out-dir", out, timeout_s=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report["frame_latency_ms"]) == {"p50", "p99", "max"}
    assert isinstance(report["late_frames"], int)
    assert {"numpy", "litert:1", "litert:2", "daemon"} <= set(report["inference_ms"])
    assert report["rss_mb"] > 0
    for name in ("idle", "cpu_hog"):
        condition = report["conditions"][name]
        assert condition["frames"] >= 20 and condition["exit_code"] == 0
        assert condition["cc123_channels_at_stop"] == 16
        assert condition["jitter_ms"]["onsets"] > 0
        assert "p99" in condition["jitter_single_grid_ms"]
        # the first seconds are left out of jitter_ms, kept in jitter_all_ms
        assert condition["jitter_all_ms"]["onsets"] > condition["jitter_ms"]["onsets"]
        assert condition["midi"]["xruns"] >= 0 and condition["midi"]["sent"] > 0
    saved = list(out.glob("latency-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text()) == report


def _cycles(meter: ClockSlips, count: int, late_frames: int = 0, lost_from: int = -1) -> None:
    """``count`` cycles of 128 frames at 48 kHz, the callback ``2 + late_frames`` frames into
    every 10th cycle (2 into the others); from cycle ``lost_from`` on the server's clock has
    lost 3 ms (its cycles start that much later in wall time)."""
    ns_per_frame = 1e9 / 48000
    for i in range(count):
        start_ns = i * 128 * ns_per_frame + (3_000_000 if 0 <= lost_from <= i else 0)
        since = 2 + (late_frames if i % 10 == 0 else 0)
        meter.cycle(i * 128, since, 128, round(start_ns + since * ns_per_frame))


def test_clock_slips_counts_lasting_losses_not_late_cycles() -> None:
    meter = ClockSlips(48000)
    _cycles(meter, 100)
    assert meter.slips == []
    # callbacks that run late into their cycle (JACK reports how far): no step at all
    meter = ClockSlips(48000)
    _cycles(meter, 100, late_frames=100)
    assert meter.slips == []
    # the clock loses 3 ms at cycle 40 and keeps that: one slip of 144 frames there
    meter = ClockSlips(48000)
    _cycles(meter, 100, late_frames=100, lost_from=40)
    assert meter.slips == [(40 * 128, 144)]
    assert meter.lost_by(39 * 128) == 0 and meter.lost_by(99 * 128) == 144


def test_clock_slips_ignores_a_step_that_falls_back() -> None:
    meter = ClockSlips(48000)
    period_ns = 128 * 1e9 / 48000
    for i in range(100):
        blip_ns = 2_000_000 if 30 <= i < 35 else 0  # five cycles stamped late, then not
        meter.cycle(i * 128, 0, 128, round(i * period_ns) + blip_ns)
    assert meter.slips == []


def test_engine_memory_script_runs_and_reports(tmp_path: Path) -> None:
    """bench/engine_memory.py on the bundled model, a few frames and two swaps."""
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "memory.json"
    args = ["--frames", "40", "--every", "10", "--swap-every", "10", "--trace", "--json", out]
    result = subprocess.run(
        [sys.executable, root / "bench" / "engine_memory.py", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [row["frame"] for row in report["checkpoints"]] == [0, 10, 20, 30, 40]
    assert all(row["rss_mb"] > 0 and row["traced_mb"] >= 0 for row in report["checkpoints"])
    assert report["largest_growth"] and report["nearest_ms_per_new_chord"] > 0
