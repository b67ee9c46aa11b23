"""Per-window inference time of every runtime, side by side in one run, plus process start-up.

For each vocabulary size: build the network of the chosen config with random weights (biases
too), save it as an artifact (with its LiteRT export), then time one ``(1, W)`` window per call
on each runtime — Keras ``predict``, eager ``model(x)``, ``tf.function``, ``tf.function`` with
XLA, LiteRT (XNNPACK), NumPy — after checking that each gives Keras's probabilities. Then
start fresh processes that load the artifact with a TensorFlow-free runtime (and one with
TensorFlow + Keras) and report start → first inference and steady RSS.

    .venv/bin/python bench/inference.py                      # seed config, V = 2000 and 6500
    .venv/bin/python bench/inference.py --vocab 6500 --json bench/results/inference-cpu.json

Then (``litert exports``) the float32 and the dynamic-range int8 LiteRT export of the same
weights, on 1 and 2 interpreter threads, timed interleaved in one loop (each round calls every
variant once on the same window, in a random order), so a busy machine slows all alike.
``--model DIR`` runs only that comparison, on a copy of a real model directory:

    .venv/bin/python bench/inference.py --model models/default --calls 2000

``--models DIR...`` compares model directories as the daemon runs them: the shipped LiteRT
export on one thread, then the draw of the next chord (for a per-pitch model the NumPy head),
timed separately, interleaved, on windows of a real piece (``--prime FILE.mid``):

    .venv/bin/python bench/inference.py --models models/default OLD --prime bwv1.6.mid

Prints p50/p99 ms per runtime and ratios to the fastest; no assertions on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicgend.core.spelling import PitchPrior  # noqa: E402
from musicgend.core.vocab import Vocab  # noqa: E402
from musicgend.machine import machine_info  # noqa: E402
from musicgend.model.config import preset  # noqa: E402

# calls per runtime: the slow reference paths get fewer
REPS = {
    "keras": 30,
    "eager": 5,
    "tf": 150,
    "tf-xla": 300,
    "litert": 300,
    "litert-1t": 300,
    "litert-int8": 300,
    "litert-int8-1t": 300,
    "numpy-blas2": 100,
    "numpy": 300,
}
ORDER = tuple(REPS)
"""``litert-1t``: LiteRT with 1 thread (``litert`` uses 2); ``litert-int8``: the export with
dynamic-range int8 weights; ``numpy-blas2``: the NumPy pass with OpenBLAS left at 2 threads
(``numpy`` uses 1)."""
TOLERANCE = 1e-5
INT8_TOLERANCE = 0.1
"""int8 weights move the probabilities by design (a few 1e-2 at most on the bundled model);
this bound only catches a broken export. Quality: ``musicgend evaluate --runtime litert``."""


def synthetic_vocab(size: int) -> Vocab:
    """``size`` tokens: <unk>, silence, then distinct chords (content doesn't affect timing)."""
    counts: dict[str, int] = {"e": 10_000}
    rng = np.random.default_rng(0)
    while len(counts) < size - 1:
        n = int(rng.integers(1, 5))
        chord = sorted({int(p) for p in rng.integers(36, 84, size=n)})
        counts[",".join(map(str, chord))] = int(rng.integers(2, 1000))
    return Vocab.from_counts(counts, min_count=1)


def build_artifact(vocab_size: int, config_name: str, out: Path) -> Path:
    from musicgend.model.artifact import save_artifact
    from musicgend.model.bigru import build_model

    vocab = synthetic_vocab(vocab_size)
    config = preset(config_name)
    model = build_model(len(vocab), config)
    rng = np.random.default_rng(1)
    model.set_weights(
        [rng.normal(0, 0.1, size=w.shape).astype(np.float32) for w in model.get_weights()]
    )
    prior = PitchPrior(np.full(128, 0.05))
    return save_artifact(out, model, vocab, config, prior, {"bench": "random weights"})


def stats_ms(times_ms: list[float] | np.ndarray, digits: int | None = None) -> dict[str, float]:
    """p50, p99 and mean of call times in ms (rounded to ``digits`` when given)."""
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p99 = np.percentile(t, [50, 99])
    out = {"p50_ms": float(p50), "p99_ms": float(p99), "mean_ms": float(t.mean())}
    return out if digits is None else {k: round(v, digits) for k, v in out.items()}


def time_calls(fn, x: np.ndarray, reps: int) -> list[float]:
    for i in range(min(3, reps)):
        fn(x[i % len(x)])
    times_ms = []
    for i in range(reps):
        t0 = time.perf_counter_ns()
        fn(x[i % len(x)])
        times_ms.append((time.perf_counter_ns() - t0) / 1e6)
    return times_ms


def int8_copy(path: Path, tmp: Path) -> Path:
    """A copy of the model directory ``path`` in ``tmp`` with an int8 LiteRT export (made
    once; imports TensorFlow)."""
    import shutil

    from musicgend.model.artifact import export_tflite

    out = tmp / f"{path.name}-int8"
    if not out.exists():
        shutil.copytree(path, out)
        export_tflite(out, quantize="int8")
    return out


def bench_runtimes(path: Path, reps_scale: float, tmp: Path) -> dict[str, dict[str, float]]:
    from musicgend.model.artifact import load_artifact
    from musicgend.model.runtime import (
        LiteRTPredictor,
        NumpyPredictor,
        Predictor,
        load_predictor,
        random_windows,
    )

    art = load_artifact(path)
    x = random_windows(art, 16, seed=2)
    reference = np.asarray(art.keras_model()(x[:4], training=False))
    int8 = load_artifact(int8_copy(path, tmp))
    results: dict[str, dict[str, float]] = {}
    for name in ORDER:
        predictor: Predictor
        if name == "numpy-blas2":
            predictor = NumpyPredictor(art, blas_threads=2)
        elif name.startswith("litert"):
            source = int8 if "int8" in name else art
            predictor = LiteRTPredictor(source, threads=1 if name.endswith("-1t") else 2)
        else:
            predictor = load_predictor(art, name)
        diff = float(np.abs(predictor.predict_batch(x[:4]) - reference).max())
        if diff > (INT8_TOLERANCE if "int8" in name else TOLERANCE):
            raise SystemExit(f"{name}: probabilities differ from Keras by {diff:.2e}")
        reps = max(5, int(REPS[name] * reps_scale))
        t = np.asarray(time_calls(predictor.predict, x, reps))
        results[name] = {
            **stats_ms(t),
            "calls": reps,
            "max_abs_diff_vs_keras": diff,
        }
        r = results[name]
        print(
            f"  {name:11s} p50 {r['p50_ms']:8.2f} ms   p99 {r['p99_ms']:8.2f} ms"
            f"   ({reps} calls, max |Δp| {diff:.1e})",
            flush=True,
        )
    return results


def bench_litert_exports(path: Path, calls: int, tmp: Path) -> dict[str, object]:
    """float32 vs int8 LiteRT export of one model, 1 and 2 threads, timed interleaved."""
    from musicgend.model.artifact import load_artifact
    from musicgend.model.runtime import LiteRTPredictor, random_windows

    art = load_artifact(path)
    if art.tflite_path is None or art.litert_quantize != "none":
        raise SystemExit(f"{path}: needs a float32 LiteRT export (musicgend model export-litert)")
    int8 = load_artifact(int8_copy(path, tmp))
    variants = {
        f"{label}/{threads}t": LiteRTPredictor(source, threads=threads)
        for label, source in (("float32", art), ("int8", int8))
        for threads in (1, 2)
    }
    names = list(variants)
    rng = np.random.default_rng(3)
    x = random_windows(art, 64, seed=3)
    reference = variants[names[0]].predict_batch(x)
    times: dict[str, list[float]] = {name: [] for name in names}
    for k in range(calls + 20):
        window = x[k % len(x)]
        for j in rng.permutation(len(names)):
            predictor = variants[names[j]]
            t0 = time.perf_counter_ns()
            predictor.predict(window)
            if k >= 20:
                times[names[j]].append((time.perf_counter_ns() - t0) / 1e6)
    base = float(np.percentile(times[names[0]], 50))
    out: dict[str, object] = {"model": str(path), "calls": calls, "load_average": os.getloadavg()}
    for name in names:
        probs = variants[name].predict_batch(x)
        timing = stats_ms(times[name])
        p50, p99 = timing["p50_ms"], timing["p99_ms"]
        diff = float(np.abs(probs - reference).max())
        out[name] = {
            **timing,
            "p50_ratio_to_float32_1t": p50 / base,
            "max_abs_diff_vs_float32": diff,
            "top1_agreement_vs_float32": float(
                np.mean(probs.argmax(axis=1) == reference.argmax(axis=1))
            ),
        }
        print(
            f"  litert {name:11s} p50 {p50:6.3f} ms   p99 {p99:6.3f} ms   "
            f"p50 ×{p50 / base:.2f}   max |Δp| vs float32 {diff:.1e}",
            flush=True,
        )
    print(f"  ({calls} calls each, interleaved; load average {os.getloadavg()})")
    return out


def bench_models(paths: list[Path], calls: int, prime: Path | None) -> dict[str, object]:
    """Model directories as the daemon runs them: the shipped LiteRT export on 1 thread, then
    the draw of the next chord (a per-pitch model's head runs in NumPy). Interleaved: each
    round calls every model once on the same context (a real piece's windows with ``prime``).
    """
    from musicgend.core.pitchsampler import PitchSampler
    from musicgend.core.sampler import Sampler
    from musicgend.core.window import WindowReader
    from musicgend.io.midifile import read_piece
    from musicgend.model.artifact import load_artifact
    from musicgend.model.runtime import LiteRTPredictor, pitch_head

    rng = np.random.default_rng(5)
    arts = [load_artifact(p) for p in paths]
    if prime is not None:
        frames = list(read_piece(prime, arts[0].config.fs).frames)
    else:
        frames = [frozenset({60, 64, 67}), frozenset({62, 65, 69}), frozenset({59, 62, 67})] * 40
    window = arts[0].config.window_frames
    contexts = [frames[max(0, i - window) : i] for i in range(1, len(frames) + 1)]
    runs = []
    for art in arts:
        predictor = LiteRTPredictor(art, threads=1)
        head = pitch_head(art)
        reader = WindowReader(art.vocab, art.config.pitch_input)
        windows = [reader.window(window, c).array() for c in contexts]
        sampler = (
            PitchSampler(head, seed=0) if head is not None else Sampler(seed=0, vocab=art.vocab)
        )
        runs.append((str(art.path), predictor, head, sampler, windows))
    times = {name: {"infer": [], "draw": []} for name, *_ in runs}
    for k in range(calls + 20):
        j = k % len(contexts)
        for r in rng.permutation(len(runs)):
            name, predictor, head, sampler, windows = runs[r]
            t0 = time.perf_counter_ns()
            out = predictor.predict(windows[j])
            t1 = time.perf_counter_ns()
            prev = contexts[j][-1]
            if head is not None:
                sampler.sample(out, prev, contexts[j])
            else:
                sampler.sample(out.astype(np.float64), int(windows[j][-1]), windows[j])
            t2 = time.perf_counter_ns()
            if k >= 20:
                times[name]["infer"].append((t1 - t0) / 1e6)
                times[name]["draw"].append((t2 - t1) / 1e6)
    out: dict[str, object] = {"calls": calls, "prime": str(prime), "load_average": os.getloadavg()}
    for name, t in times.items():
        infer, draw = np.asarray(t["infer"]), np.asarray(t["draw"])
        total = infer + draw
        parts = (("inference", infer), ("draw", draw), ("total", total))
        row = {part: stats_ms(v) for part, v in parts}
        out[name] = row
        print(
            f"  {name}: inference p50 {row['inference']['p50_ms']:.3f} p99 "
            f"{row['inference']['p99_ms']:.3f} ms, draw p50 {row['draw']['p50_ms']:.3f} p99 "
            f"{row['draw']['p99_ms']:.3f} ms, total p99 {row['total']['p99_ms']:.3f} ms",
            flush=True,
        )
    print(f"  ({calls} rounds, interleaved; load average {os.getloadavg()})")
    return out


STARTUP_CODE = """
import json, os, sys, time
t0 = float(sys.argv[3])
import numpy as np
from musicgend.model.runtime import load_predictor, random_windows
p = load_predictor(sys.argv[1], sys.argv[2])
w = random_windows(p.artifact, 1)[0]
p.predict(w)
first_s = time.time() - t0
for _ in range(20):
    p.predict(w)
rss_kb = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS'))
print(json.dumps({"first_inference_s": first_s, "rss_mb": rss_kb / 1024,
                  "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def bench_startup(path: Path, runtime: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", STARTUP_CODE, str(path), runtime, repr(time.time())],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=300,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[2000, 6500])
    parser.add_argument("--config", default="seed")
    parser.add_argument("--reps-scale", type=float, default=1.0, help="scale the call counts")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--model", type=Path, help="only the LiteRT float32 vs int8 comparison, on this model"
    )
    parser.add_argument("--calls", type=int, default=2000, help="calls per LiteRT export")
    parser.add_argument(
        "--models",
        type=Path,
        nargs="+",
        help="only compare these model directories as the daemon runs them (export + draw)",
    )
    parser.add_argument("--prime", type=Path, help="--models: windows from this .mid file")
    args = parser.parse_args()

    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    report: dict[str, object] = {
        "benchmark": "per-window inference (batch 1)",
        "config": args.config,
        "machine": {
            **machine_info(),
            "gpus": gpus,
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
        },
        "tolerance_vs_keras": TOLERANCE,
        "load_average_at_start": os.getloadavg(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.models:
            print("models as the daemon runs them (LiteRT, 1 thread, + draw), interleaved …")
            report["models"] = bench_models(args.models, args.calls, args.prime)
            args.vocab = []
        elif args.model is not None:
            print(f"{args.model}: LiteRT float32 vs int8, interleaved …", flush=True)
            report["litert_exports"] = bench_litert_exports(args.model, args.calls, Path(tmp))
            args.vocab = []
        for v in args.vocab:
            print(f"{args.config} config, vocab {v}: building and exporting …", flush=True)
            path = build_artifact(v, args.config, Path(tmp) / f"v{v}")
            timings = bench_runtimes(path, args.reps_scale, Path(tmp))
            exports = bench_litert_exports(
                path, max(20, int(args.calls * args.reps_scale)), Path(tmp)
            )
            best = min(timings, key=lambda k: timings[k]["p50_ms"])
            ratios = {k: t["p50_ms"] / timings[best]["p50_ms"] for k, t in timings.items()}
            print(f"  p50 relative to the fastest ({best}): ", end="")
            print(", ".join(f"{k} {r:.1f}×" for k, r in ratios.items()))
            print(
                f"  keras predict / numpy: {ratios['keras'] / ratios['numpy']:.1f}×, "
                f"keras predict / litert: {ratios['keras'] / ratios['litert']:.1f}×, "
                f"litert / numpy: {ratios['litert'] / ratios['numpy']:.2f}×"
            )
            startup = {rt: bench_startup(path, rt) for rt in ("litert", "numpy", "tf")}
            for rt, s in startup.items():
                print(
                    f"  process with {rt:6s}: start → first inference"
                    f" {s['first_inference_s']:.2f} s, RSS {s['rss_mb']:.0f} MB,"
                    f" TensorFlow imported: {s['tensorflow_imported']}"
                )
            report["runs"].append(  # type: ignore[attr-defined]
                {
                    "vocab_size": v,
                    "runtimes": timings,
                    "fastest": best,
                    "p50_ratio_to_fastest": ratios,
                    "litert_exports": exports,
                    "startup": startup,
                }
            )
    report["load_average_at_end"] = os.getloadavg()
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
