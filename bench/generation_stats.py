"""Generation statistics of a model under several sampling settings, next to the corpus's.

For tuning the sampler defaults against the seed's weakness ("too many scattered notes"):
each setting generates ``--seconds`` of music from the seed's prime with several seeds;
the pooled statistics are compared with the corpus's (pitches per non-silent frame,
onsets/s, repeat share, short-note share, scale consistency — see core/musicstats.py)
and checked against the issue's goals.

    .venv/bin/python bench/generation_stats.py --model models/default --data /tmp/bach
    .venv/bin/python bench/generation_stats.py --model M --data D --grid default \\
        --json bench/results/generation-stats.json

For one setting, ``musicgend generate --model M -o x.mid --stats-against D`` does the same.

Beside the goals it prints ``long_repeat_share``: the share of frames that go on
repeating a stretch of at least 16 frames (3.2 s) heard before in the same piece, exactly
as it went on then (:mod:`musicgend.core.memory`). Bach repeats whole sections; a
model with a piece memory could also fall into loops of its own: this shows which.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicgend.core.memory import recalls  # noqa: E402
from musicgend.core.musicstats import (  # noqa: E402
    COMPARED,
    corpus_stats,
    goals,
    ratios,
)
from musicgend.core.sampler import SamplerParams  # noqa: E402
from musicgend.io.midifile import find_midi_files, iter_pieces  # noqa: E402
from musicgend.model.artifact import load_artifact  # noqa: E402
from musicgend.model.runtime import load_predictor  # noqa: E402
from musicgend.text import count  # noqa: E402
from musicgend.training.generate import generate_frames, reference_stats  # noqa: E402

LONG_MATCH_FRAMES = 16


def long_repeat_share(pieces: list[list[frozenset[int]]]) -> float:
    """Share of frames that continue a stretch of ``LONG_MATCH_FRAMES`` or more frames
    heard before in the same piece as it went on then."""
    hits = total = 0
    for frames in pieces:
        for frame, r in zip(frames, recalls(frames), strict=True):
            total += 1
            hits += r is not None and r.frames >= LONG_MATCH_FRAMES and r.chord == frame
    return hits / max(1, total)


def _hold_short_key_t(
    rows: list[tuple[float, float, float, float]],
) -> list[tuple[str, SamplerParams]]:
    """Settings of hold bias, short-note penalty, scale penalty and temperature."""
    return [
        (
            f"h{h:g} s{s:g} k{k:g} T{t:g}",
            SamplerParams(hold_bias=h, short_note_penalty=s, scale_penalty=k, temperature=t),
        )
        for h, s, k, t in rows
    ]


GRIDS: dict[str, list[tuple[str, SamplerParams]]] = {
    "default": [
        ("seed (plain softmax)", SamplerParams.seed()),
        ("defaults", SamplerParams()),
        ("p0.9 hold1", SamplerParams(top_p=0.9, hold_bias=1.0)),
        ("p0.9 hold2", SamplerParams(top_p=0.9, hold_bias=2.0)),
        ("p0.9 hold4", SamplerParams(top_p=0.9, hold_bias=4.0)),
        ("p0.8 hold2", SamplerParams(top_p=0.8, hold_bias=2.0)),
        ("p0.9 hold2 min2", SamplerParams(top_p=0.9, hold_bias=2.0, min_hold_frames=2)),
        ("T0.8 p0.9 hold2", SamplerParams(temperature=0.8, top_p=0.9, hold_bias=2.0)),
    ],
    "key": [
        ("seed (plain softmax)", SamplerParams.seed()),
        ("defaults", SamplerParams()),
        *[
            (
                f"T{t:g} p{p:g} h{h:g} m{m} k{k:g}",
                SamplerParams(
                    temperature=t, top_p=p, hold_bias=h, min_hold_frames=m, scale_penalty=k
                ),
            )
            for t, p, h, m, k in [
                (1.0, 1.0, 1.0, 1, 0.3),
                (1.0, 0.9, 1.0, 1, 0.3),
                (1.0, 0.9, 1.5, 1, 0.3),
                (1.0, 0.9, 1.0, 2, 0.3),
                (0.9, 0.95, 1.0, 1, 0.3),
                (1.0, 1.0, 1.0, 1, 0.1),
                (1.0, 1.0, 1.0, 1, 0.15),
                (1.05, 1.0, 1.0, 1, 0.1),
                (1.0, 0.98, 1.0, 1, 0.1),
                (1.05, 1.0, 1.0, 1, 0.05),
                (1.1, 1.0, 1.0, 1, 0.1),
                (1.0, 1.0, 0.7, 1, 0.05),
            ]
        ],
    ],
    "notes": [
        ("seed (plain softmax)", SamplerParams.seed()),
        ("defaults", SamplerParams()),
        ("key bias only", SamplerParams(hold_bias=1.0, short_note_penalty=1.0)),
        *_hold_short_key_t(
            [
                (1.0, 0.45, 0.15, 1.0),
                (0.5, 0.45, 0.15, 1.0),
                (0.3, 0.3, 0.15, 1.0),
                (0.3, 0.5, 0.15, 1.0),
                (0.2, 0.45, 0.15, 1.0),
                (0.3, 0.45, 0.3, 1.0),
                (0.3, 0.45, 0.15, 1.1),
            ]
        ),
    ],
    # around the per-pitch model's defaults (its copy gate holds about as often as Bach)
    "pitch": [
        ("seed (plain softmax)", SamplerParams.seed()),
        ("defaults", SamplerParams()),
        ("key bias only", SamplerParams(hold_bias=1.0, short_note_penalty=1.0)),
        *_hold_short_key_t(
            [
                (1.0, 0.45, 0.15, 1.0),
                (0.8, 0.45, 0.15, 1.0),
                (1.2, 0.45, 0.15, 1.0),
                (1.0, 0.6, 0.15, 1.0),
                (1.0, 0.3, 0.15, 1.0),
                (0.8, 0.6, 0.15, 1.0),
                (1.0, 0.45, 0.1, 1.0),
                (1.0, 0.45, 0.15, 1.1),
            ]
        ),
    ],
    # the piece memory (a model with ``memory.json``): on, scaled, off
    "memory": [
        ("seed (plain softmax)", SamplerParams.seed()),
        ("seed, memory off", SamplerParams.seed().model_copy(update={"memory": 0.0})),
        ("defaults", SamplerParams()),
        ("defaults, memory 0.5", SamplerParams(memory=0.5)),
        ("defaults, memory off", SamplerParams(memory=0.0)),
    ],
    # around the defaults for the bundled model that reads pitches (``roll`` preset): under
    # the key bias it holds chords a little more often than Bach, and a milder short-note
    # penalty than the ``pitch`` preset's 0.45 evens that out
    "roll": [
        ("seed (plain softmax)", SamplerParams.seed()),
        ("defaults", SamplerParams()),
        ("key bias only", SamplerParams(hold_bias=1.0, short_note_penalty=1.0)),
        *_hold_short_key_t(
            [
                (0.8, 0.6, 0.15, 1.0),
                (0.7, 0.6, 0.15, 1.0),
                (0.9, 0.6, 0.15, 1.0),
                (0.8, 0.75, 0.15, 1.0),
                (1.0, 0.45, 0.15, 1.0),
                (0.8, 0.6, 0.2, 1.0),
                (0.8, 0.45, 0.15, 1.0),
                (0.8, 1.0, 0.15, 1.0),
            ]
        ),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="corpus MIDI dirs")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, default=3, help="generations per setting")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="default")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    artifact = load_artifact(args.model)
    predictor = load_predictor(artifact, args.runtime)
    fs = artifact.config.fs
    t0 = time.perf_counter()
    corpus = reference_stats(
        args.data, fs, lambda path, reason: print(f"skipped {path}: {reason}", file=sys.stderr)
    )
    print(
        f"corpus: {count(corpus.pieces, 'piece')}, {corpus.seconds:.0f} s "
        f"({time.perf_counter() - t0:.1f} s to read)",
        flush=True,
    )
    corpus_frames = [
        list(p.frames)
        for p in iter_pieces(find_midi_files(args.data), fs, artifact.config.first_track_only)
        if not isinstance(p, Exception)
    ]
    corpus_repeats = long_repeat_share(corpus_frames)
    print(f"corpus long_repeat_share {corpus_repeats:.3f}")
    n_frames = round(args.seconds * fs)
    header = f"{'setting':22s}" + "".join(f"{name[:16]:>18s}" for name in COMPARED) + "  goals"
    print(header)
    print(f"{'corpus':22s}" + "".join(f"{getattr(corpus, n):18.3f}" for n in COMPARED))
    rows = []
    for label, params in GRIDS[args.grid]:
        pieces = []
        for seed in range(args.seeds):
            _, _, frames, _ = generate_frames(
                artifact, predictor, n_frames, seed=seed, params=params
            )
            pieces.append(frames)
        stats = corpus_stats(pieces, fs)
        r, ok = ratios(stats, corpus), goals(stats, corpus)
        repeats = long_repeat_share(pieces)
        cells = "".join(f"{getattr(stats, n):9.3f} ({r[n]:4.2f})" for n in COMPARED)
        print(
            f"{label:22s}{cells}  {sum(ok.values())}/{len(ok)}  long repeats {repeats:.3f}",
            flush=True,
        )
        rows.append(
            {
                "setting": label,
                "sampler": params.model_dump(),
                "stats": stats.to_dict(),
                "ratios": r,
                "goals": ok,
                "long_repeat_share": repeats,
            }
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "model": str(args.model),
            "model_training": artifact.training,
            "data": [str(d) for d in args.data],
            "seconds_per_generation": args.seconds,
            "seeds": args.seeds,
            "runtime": predictor.runtime,
            "corpus": corpus.to_dict(),
            "corpus_long_repeat_share": corpus_repeats,
            "settings": rows,
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
