"""How well can the next chord be named when the timing of each change is known?

Top-1 (DESIGN.md §4) is won on holds and lost on changes. ``musicgend evaluate`` reports a
per-pitch model's ``top1_changes_given_timing``: its most likely chord other than the
previous one, scored on the frames where the chord changes. This bench gives the same figure
for two count tables over the model's training split in all 12 keys, counted at changes
only, on the same test frames:

* ``successor_1``: the most frequent chord after the current chord;
* ``successor_2``: the most frequent chord after the last two distinct chords (the current
  one and the one before it), backing off to ``successor_1`` for a pair never seen.

``timing_oracle_top1`` is top-1 if every hold were right and the changes named at that
rate: what knowing *when* buys, once *what* is this good.

    .venv/bin/python bench/change_identity.py --model models/default --data /tmp/bach \\
        --json bench/results/change-identity.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicgend.core.augment import transpositions  # noqa: E402
from musicgend.core.tokens import PitchSet  # noqa: E402
from musicgend.io.midifile import read_piece  # noqa: E402
from musicgend.model.artifact import load_artifact  # noqa: E402

SILENCE: PitchSet = frozenset()
Context = tuple[PitchSet | None, PitchSet]


def _contexts(frames: Sequence[PitchSet]) -> list[tuple[Context, PitchSet]]:
    """Per frame: ((the distinct chord before the current one, the current one), the frame).

    The current chord of frame ``i`` is frame ``i - 1`` (silence before the first frame)."""
    out: list[tuple[Context, PitchSet]] = []
    current, before = SILENCE, None
    for frame in frames:
        out.append(((before, current), frame))
        if frame != current:
            current, before = frame, current
    return out


class SuccessorTables:
    """Counts of the chord that follows a change, by one and by two distinct chords."""

    def __init__(self) -> None:
        self.by_one: defaultdict[PitchSet, Counter[PitchSet]] = defaultdict(Counter)
        self.by_two: defaultdict[Context, Counter[PitchSet]] = defaultdict(Counter)

    def count(self, frames: Sequence[PitchSet]) -> None:
        for (before, current), frame in _contexts(frames):
            if frame != current:
                self.by_one[current][frame] += 1
                self.by_two[(before, current)][frame] += 1

    @staticmethod
    def _top(counts: Counter[PitchSet] | None) -> PitchSet | None:
        return counts.most_common(1)[0][0] if counts else None

    def guess(self, context: Context, order: int) -> PitchSet | None:
        one = self._top(self.by_one.get(context[1]))
        if order == 1:
            return one
        return self._top(self.by_two.get(context)) or one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--data", type=Path, required=True, help="the model's training data")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    artifact = load_artifact(args.model)
    split = artifact.training.get("split")
    if not isinstance(split, dict) or not split.get("test"):
        parser.error(f"{args.model}: no saved split in its metadata")
    fs, first_only = artifact.config.fs, artifact.config.first_track_only

    def frames_of(names: Sequence[str]) -> list[list[PitchSet]]:
        return [list(read_piece(args.data / n, fs, first_only).frames) for n in names]

    t0 = time.perf_counter()
    tables = SuccessorTables()
    for frames in frames_of(split["train"]):
        for _, shifted in transpositions(frames):
            tables.count(shifted)
    frames_n = changes = 0
    named = Counter[int]()
    for frames in frames_of(split["test"]):
        for context, frame in _contexts(frames):
            frames_n += 1
            if frame == context[1]:
                continue
            changes += 1
            for order in (1, 2):
                named[order] += tables.guess(context, order) == frame
    change_share = changes / frames_n
    report: dict[str, object] = {
        "model": str(args.model),
        "test_pieces": len(split["test"]),
        "frames": frames_n,
        "change_share": change_share,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    for order in (1, 2):
        rate = named[order] / changes
        oracle = (1 - change_share) + change_share * rate
        report[f"successor_{order}"] = {
            "top1_changes_given_timing": rate,
            "timing_oracle_top1": oracle,
        }
        print(
            f"successor_{order}: names {100 * rate:.1f} % of the {changes} changes "
            f"(top-1 {100 * oracle:.1f} % if every hold were right)"
        )
    print(f"{frames_n} test frames, {100 * change_share:.1f} % change")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
