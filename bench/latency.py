"""Real-time figures of the daemon: decision latency, late frames, inference, onset jitter,
RSS, ports ready (see musicgend/service/bench.py). Saves JSON under bench/results/.

    .venv/bin/python bench/latency.py [--frames 3000] [--model models/default]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from musicgend.config import BUNDLED_MODEL_DIR
from musicgend.service.bench import format_summary, run_bench, save_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=3000, help="frames per condition")
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL_DIR)
    parser.add_argument("--json", action="store_true", help="print the JSON result")
    args = parser.parse_args()
    result = run_bench(args.model, args.frames)
    path = save_result(result, Path(__file__).resolve().parent / "results")
    print(json.dumps(result, indent=1) if args.json else format_summary(result))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
