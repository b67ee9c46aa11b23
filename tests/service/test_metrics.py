"""The engine's metric buffers: fixed memory, oldest-first reads, exact "since last read"."""

from __future__ import annotations

import numpy as np
import pytest

from musicgend.service.engine import EngineMetrics, SampleRing, percentiles_ms


def test_ring_keeps_the_last_samples_oldest_first() -> None:
    ring = SampleRing(4)
    assert len(ring) == 0 and ring.values().tolist() == []
    for v in range(1, 4):
        ring.append(v)
    assert len(ring) == 3 and ring.values().tolist() == [1, 2, 3]
    for v in range(4, 8):
        ring.append(v)
    assert len(ring) == 4 and ring.values().tolist() == [4, 5, 6, 7]


def test_take_new_hands_out_each_sample_once_and_at_most_capacity() -> None:
    ring = SampleRing(5)
    for v in (10, 20, 30):
        ring.append(v)
    assert ring.take_new().tolist() == [10, 20, 30]
    assert ring.take_new().tolist() == []
    ring.append(40)
    assert ring.take_new().tolist() == [40]
    for v in range(50, 120, 10):  # 7 samples into 5 places: the two oldest are gone
        ring.append(v)
    assert ring.take_new().tolist() == [70, 80, 90, 100, 110]
    assert ring.values().tolist() == [70, 80, 90, 100, 110]  # reading doesn't consume values


def test_ring_memory_is_fixed() -> None:
    ring = SampleRing(1000)
    before = ring._samples.nbytes
    for v in range(10_000):
        ring.append(v)
    assert ring._samples.nbytes == before == 8000
    with pytest.raises(ValueError):
        SampleRing(0)


def test_metrics_read_latencies_in_ms_and_percentiles_match_numpy() -> None:
    metrics = EngineMetrics()
    samples = np.random.default_rng(0).integers(50_000, 3_000_000, size=1234)
    for v in samples.tolist():
        metrics.latency_ns.append(v)
        metrics.inference_ns.append(v * 2)
    new = metrics.take_unread_latency_ms()
    assert new == [round(v / 1e6, 4) for v in samples.tolist()]
    assert metrics.take_unread_latency_ms() == []
    snap = metrics.snapshot()["frame_latency_ms"]
    assert snap["p50"] == pytest.approx(np.percentile(samples, 50) / 1e6, abs=1e-4)
    assert snap["p99"] == pytest.approx(np.percentile(samples, 99) / 1e6, abs=1e-4)
    assert snap["max"] == pytest.approx(samples.max() / 1e6, abs=1e-4)
    inference_max = metrics.snapshot()["inference_ms"]["max"]
    assert inference_max == pytest.approx(2 * samples.max() / 1e6, abs=1e-4)
    assert percentiles_ms(np.array([], dtype=np.int64)) == {"p50": None, "p99": None, "max": None}
