"""What the piece memory costs the daemon per frame, and how much memory it holds.

Plays a long stream through :class:`~musicgend.core.memory.PieceMemory` as the engine does
(each frame: the recall with the provisional frame, then the push; capacity
``MEMORY_FRAMES``): the chorales one after another, then the same number of frames of
random four-note chords (nothing repeats: the most the memory ever holds). Prints the
per-frame time (p50 / p99 / max, µs) and the memory traced at the end of each stream
(Python objects the memory holds, its frames' chords included).

    .venv/bin/python bench/piece_memory.py --data /tmp/bach --json bench/results/piece-memory.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicgend.core.memory import PieceMemory  # noqa: E402
from musicgend.core.tokens import PitchSet  # noqa: E402
from musicgend.io.midifile import find_midi_files, iter_pieces  # noqa: E402
from musicgend.service.engine import MEMORY_FRAMES  # noqa: E402


def play(frames: list[PitchSet]) -> dict[str, float]:
    """Timed in one pass, memory traced in another (tracing slows every allocation)."""
    memory = PieceMemory(capacity_frames=MEMORY_FRAMES)
    times = np.empty(len(frames))
    for i, frame in enumerate(frames):
        t0 = time.perf_counter_ns()
        memory.recall((frame,))
        memory.push(frame)
        times[i] = time.perf_counter_ns() - t0
    del memory
    tracemalloc.start()
    memory = PieceMemory(capacity_frames=MEMORY_FRAMES)
    for frame in frames:
        memory.recall((frame,))
        memory.push(frame)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    us = times / 1e3
    return {
        "frames": len(frames),
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "max_us": float(us.max()),
        "held_mb": held / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="MIDI dirs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    music = [
        frame
        for p in iter_pieces(find_midi_files(args.data))
        if not isinstance(p, Exception)
        for frame in p.frames
    ]
    rng = random.Random(0)
    noise = [frozenset(rng.sample(range(36, 84), 4)) for _ in range(len(music))]
    report: dict[str, object] = {"capacity_frames": MEMORY_FRAMES}
    for name, frames in (("chorales", music), ("random chords", noise)):
        r = play(frames)
        report[name] = r
        print(
            f"{name:14s} {r['frames']} frames: {r['p50_us']:.1f} / {r['p99_us']:.1f} / "
            f"{r['max_us']:.0f} µs p50 / p99 / max per frame, {r['held_mb']:.1f} MB held"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
