"""An hour of the daemon under load (see musicgend/service/soak.py): a separate JACK client
plays chorales, bursts and silences, MQTT commands every few seconds, a model swap every 10
minutes, a CPU hog. Saves JSON and a PNG under bench/results/. Ctrl-C stops early and still
writes what was measured.

    .venv/bin/python bench/soak.py [--minutes 60] [--model models/default] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from musicgend.config import BUNDLED_MODEL_DIR
from musicgend.service.soak import SoakOptions, format_summary, soak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to run")
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL_DIR)
    parser.add_argument("--json", action="store_true", help="print the JSON result")
    args = parser.parse_args()
    report, path = soak(SoakOptions(args.model, args.minutes), Path(__file__).parent / "results")
    print(json.dumps(report, indent=1) if args.json else format_summary(report))
    print(f"saved {path} and {path.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
