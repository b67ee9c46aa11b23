"""The engine's memory over many frames, without JACK or a clock: does anything grow?

Drives the daemon's frame logic (``FrameCore``, as ``musicgend run`` builds it, with the
model's default runtime) as fast as it computes: random playing into it (chords of 1-3 new
keys, releases), a temperature and mode change every 25 frames, a model swap (the same
directory loaded again) every ``--swap-every`` frames, freed heap handed back after each swap
as the daemon does. Prints RSS, private memory and (with ``--trace``) Python's traced heap
every ``--every`` frames, then the cost of ``Vocab.nearest`` for chords it hasn't seen.

    .venv/bin/python bench/engine_memory.py --frames 15000 --trace --json OUT.json

With ``--trace`` the largest growths between the first checkpoint after the second swap and
the end are listed by where they were allocated. Frames run ~4× slower under tracing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicgend.service.runtime import one_malloc_arena, private_mb, rss_mb  # noqa: E402

MODES = ("accompany", "call-response", "solo")
NS_PER_FRAME = 200_000_000


def play(core: Any, rng: random.Random, held: set[int], t_ns: int) -> None:
    """Some releases and up to three new keys in this frame."""
    for pitch in sorted(held):
        if rng.random() < 0.5:
            core.on_input(t_ns + 1_000, [0x80, pitch, 0])
            held.discard(pitch)
    for _ in range(rng.randint(0, 3)):
        pitch = rng.randint(48, 80)
        core.on_input(t_ns + 2_000, [0x90, pitch, rng.randint(30, 110)])
        held.add(pitch)


def nearest_cost_ms(vocab: Any, chords: int = 400) -> float:
    """ms per ``Vocab.nearest`` call for chords a fresh copy of ``vocab`` hasn't seen."""
    vocab = type(vocab)(vocab.tokens, vocab.counts, vocab.fs, vocab.min_count)  # empty cache
    vocab.nearest({1})  # builds its tables
    rng = random.Random(7)
    fresh = [frozenset(rng.sample(range(30, 95), rng.randint(1, 8))) for _ in range(chords)]
    t0 = time.perf_counter()
    for chord in fresh:
        vocab.nearest(chord)
    return (time.perf_counter() - t0) / chords * 1e3


def run(model_dir: Path, frames: int, every: int, swap_every: int, trace: bool) -> dict[str, Any]:
    from musicgend.core.clock import FrameGrid
    from musicgend.service.engine import FrameCore, default_sampler, return_freed_memory
    from musicgend.service.runtime import load_model

    model = load_model(model_dir)
    model.warm_up()
    core = FrameCore(model, FrameGrid(0, NS_PER_FRAME), default_sampler)
    core.start_at(1)
    del model  # the core holds the model in use, as in the daemon
    rng = random.Random(0)
    held: set[int] = set()
    if trace:
        tracemalloc.start(8)
    gc.freeze()  # as the daemon does after start-up
    baseline = None
    rows = []
    t0 = time.perf_counter()
    for i in range(frames + 1):
        k = core.next_frame
        t_ns = k * NS_PER_FRAME
        if rng.random() < 0.6:
            play(core, rng, held, t_ns)
        if i % 25 == 0:
            core.set_params(temperature=rng.choice((0.8, 1.0, 1.2)), mode=rng.choice(MODES))
        job = core.job()
        if job is not None:
            core.offer(FrameCore.compute(job))
        for message in core.tick(k):
            core.note_sent(t_ns, message)
        core.after_tick(k)
        if i and i % swap_every == 0:
            core.pending_model = load_model(model_dir)  # the next tick swaps, as in the daemon
        if i and i % swap_every == 1:
            gc.collect()
            return_freed_memory()
        if i % every == 0:
            row = {"frame": i, "rss_mb": rss_mb(), "private_mb": private_mb()}
            if trace:
                row["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / 1e6, 2)
                if baseline is None and i >= 2 * swap_every:  # past the first swap's dust
                    baseline = tracemalloc.take_snapshot()
            rows.append(row)
            print("  " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    result: dict[str, Any] = {
        "model": str(model_dir),
        "frames": frames,
        "swap_every": swap_every,
        "frames_per_s": round(frames / (time.perf_counter() - t0), 1),
        "checkpoints": rows,
    }
    if trace and baseline is not None:
        growth = tracemalloc.take_snapshot().compare_to(baseline, "traceback")[:8]
        result["largest_growth"] = [
            {
                "kib": round(s.size_diff / 1024, 1),
                "count": s.count_diff,
                "where": s.traceback.format()[-4:],
            }
            for s in growth
        ]
        tracemalloc.stop()
    result["nearest_ms_per_new_chord"] = round(nearest_cost_ms(core.model.vocab), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--frames", type=int, default=15_000)
    parser.add_argument("--every", type=int, default=3_000, help="checkpoint interval (frames)")
    parser.add_argument("--swap-every", type=int, default=3_000)
    parser.add_argument("--trace", action="store_true", help="also trace Python's heap")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if min(args.frames, args.every, args.swap_every) < 1:
        parser.error("--frames, --every and --swap-every must be at least 1")
    one_malloc_arena()  # as the daemon, before any thread starts
    print(f"engine memory: {args.model}, {args.frames} frames", flush=True)
    result = run(args.model, args.frames, args.every, args.swap_every, args.trace)
    first, last = result["checkpoints"][0], result["checkpoints"][-1]
    print(f"RSS {first['rss_mb']} → {last['rss_mb']} MB, {result['frames_per_s']} frames/s")
    for row in result.get("largest_growth", []):
        print(f"  {row['kib']:+.1f} KiB ({row['count']:+d} blocks) at {row['where'][-1].strip()}")
    print(f"Vocab.nearest: {result['nearest_ms_per_new_chord']} ms per chord not seen before")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
