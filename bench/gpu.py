"""The model on a GPU: per-window inference and training throughput on Keras 3's JAX backend,
side by side with the daemon's CPU runtimes on the same machine, in one run.

The network is the project's own (:func:`musicgend.model.bigru.build_model`, weights set from
the artifact's ``weights.npz``), run by Keras 3 on JAX instead of TensorFlow: it needs only
``jax`` (``jax[cuda13]`` for an NVIDIA GPU) and ``keras``, no TensorFlow. Keras on JAX
compiles the same network through the same compiler as the ``tf-xla`` runtime and ``musicgend
train`` (XLA), so its figures say what a GPU does for this model.

Parts (``--parts``, default all):

- ``inference``: one ``(1, W)`` window per call, as the daemon calls it, on every JAX device
  (GPU first, then CPU): a jitted forward (window sent to the device, result copied back) and
  Keras ``predict`` (default device only, few calls); beside them on this machine's CPU the
  NumPy runtime (1 BLAS thread) and the artifact's LiteRT export (1 thread, the daemon's
  default), timed interleaved (each round calls every variant once on the same window, in a
  random order). Each float32 path is first checked against the NumPy runtime.
- ``batched``: windows/s of the jitted forward for ``--batches`` on every JAX device.
- ``training``: windows/s of training each of ``--train-configs`` (default ``seed``, with
  ``--vocab`` tokens, and ``roll``, the bundled model's) on synthetic batches: Keras
  ``train_on_batch`` with XLA (the step ``model.fit`` runs), Adam, the loss ``musicgend
  train`` minimises (a per-pitch head's, :func:`musicgend.model.bigru.pitch_log_prob`, first
  checked against the NumPy head), for ``--train-batches``, on the default device (the GPU
  where there is one).

    KERAS_BACKEND=jax python bench/gpu.py --model models/default --json bench/results/gpu.json

Prints p50/p99 ms and windows/s with ratios; no assertions on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import inference  # noqa: E402  (its timing summary, shared)
from musicgend.core.pitchhead import PITCHES  # noqa: E402
from musicgend.machine import machine_info  # noqa: E402

TOLERANCE = 1e-4
"""float32 on another backend and device: summation order differs, nothing else may."""

Window = np.ndarray
Forward = Callable[[Window], np.ndarray]


def stats_ms(times_ms: list[float]) -> dict[str, float]:
    return {**inference.stats_ms(times_ms, digits=4), "calls": len(times_ms)}


def run_for(step: Callable[[int], object], seconds: float) -> tuple[int, float]:
    """Call ``step(0)``, ``step(1)``, … until ``seconds`` have passed: (calls, seconds taken)."""
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        step(n)
        n += 1
    return n, elapsed


def jax_forward(model: Any, device: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A jitted forward of ``model`` with its weights committed to ``device``: takes a host
    batch of windows, returns the host array (the copy back is part of the call)."""
    import jax

    trainable = [jax.device_put(v.value, device) for v in model.trainable_variables]
    frozen = [jax.device_put(v.value, device) for v in model.non_trainable_variables]

    @jax.jit
    def forward(trainable, frozen, x):
        out, _ = model.stateless_call(trainable, frozen, x, training=False)
        return out

    def call(x: np.ndarray) -> np.ndarray:
        return np.asarray(forward(trainable, frozen, jax.device_put(x, device)))

    return call


def device_label(device: Any) -> str:
    return f"jax-{device.platform}"


def load_model(path: Path) -> tuple[Any, Any]:
    """The artifact and its Keras network (JAX backend) with the artifact's weights."""
    from musicgend.model.artifact import load_artifact

    art = load_artifact(path)
    return art, art.keras_model()


def jax_devices(with_cpu: bool) -> list[Any]:
    """Every JAX device of the default backend, then (``with_cpu``) the CPU if that isn't it."""
    import jax

    extra = with_cpu and jax.default_backend() != "cpu"
    return jax.devices() + (jax.devices("cpu") if extra else [])


def bench_inference(path: Path, calls: int, predict_calls: int, with_cpu: bool) -> dict[str, Any]:
    import jax

    from musicgend.errors import ModelError
    from musicgend.model.runtime import LiteRTPredictor, NumpyPredictor, random_windows

    art, model = load_model(path)
    windows = random_windows(art, 64, seed=0)
    numpy_rt = NumpyPredictor(art, blas_threads=1)
    reference = numpy_rt.predict_batch(windows[:8])

    variants: dict[str, Forward] = {}
    checks: dict[str, float] = {}
    for device in jax_devices(with_cpu):
        fn = jax_forward(model, device)
        label = device_label(device)
        diff = float(np.max(np.abs(fn(windows[:8]) - reference)))
        checks[label] = diff
        if diff > TOLERANCE:
            raise SystemExit(f"{label} differs from the NumPy runtime by {diff:.2e}")
        variants[label] = fn
    variants["numpy-cpu"] = numpy_rt.predict_batch
    if art.tflite_path is not None:
        try:
            lite = LiteRTPredictor(art, threads=1)
        except ModelError as exc:  # no ai-edge-litert here: report why it's absent
            print(f"  litert skipped: {exc}")
        else:
            variants["litert-cpu-1t"] = lite.predict_batch

    for fn in variants.values():  # warm-up: compilation, allocations
        for i in range(5):
            fn(windows[i : i + 1])
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    rnd = random.Random(0)
    for i in range(calls):
        x = windows[i % len(windows)][None]
        rnd.shuffle(order)
        for name in order:
            t0 = time.perf_counter_ns()
            variants[name](x)
            times[name].append((time.perf_counter_ns() - t0) / 1e6)
    result = {name: stats_ms(t) for name, t in times.items()}

    predict_times = []
    for i in range(predict_calls + 3):
        t0 = time.perf_counter_ns()
        model.predict(windows[i % len(windows)][None], verbose=0)
        if i >= 3:
            predict_times.append((time.perf_counter_ns() - t0) / 1e6)
    result[f"keras-predict-{jax.default_backend()}"] = stats_ms(predict_times)

    fastest = min(r["p50_ms"] for r in result.values())
    for r in result.values():
        r["p50_vs_fastest"] = round(r["p50_ms"] / fastest, 2)
    return {
        "model": str(path),
        "config": art.config.name,
        "output": art.config.output,
        "vocab_size": len(art.vocab),
        "max_abs_diff_vs_numpy": checks,
        "runtimes": result,
    }


def bench_batched(path: Path, batches: list[int], seconds: float, with_cpu: bool) -> dict[str, Any]:
    from musicgend.model.runtime import random_windows

    art, model = load_model(path)
    out: dict[str, Any] = {}
    for device in jax_devices(with_cpu):
        fn = jax_forward(model, device)
        rows = {}
        for batch in batches:
            x = random_windows(art, batch, seed=batch)
            fn(x)  # compile for this shape
            n, elapsed = run_for(lambda _, fn=fn, x=x: fn(x), seconds)
            rows[str(batch)] = {
                "windows_per_s": round(n * batch / elapsed, 1),
                "ms_per_call": round(elapsed / n * 1e3, 3),
                "calls": n,
            }
        out[device_label(device)] = rows
    return out


def synthetic_batches(config: Any, vocab_size: int, batch: int, count: int, seed: int) -> list:
    """``count`` random ``(x, y)`` training batches of the kind ``config`` trains on: token ids
    or rows of 0-4 pitches in 36..83 (``input = "pitches"``); next-token ids, or for a
    per-pitch head ``(previous chord, next chord)`` side by side as ``(batch, 256)`` with the
    chord held on 40 % of rows (the Bach training windows hold on about as many)."""
    from musicgend.model.runtime import random_pitch_rows

    rng = np.random.default_rng(seed)
    frames = config.window_frames
    out = []
    for _ in range(count):
        if config.pitch_input:
            x: np.ndarray = random_pitch_rows(rng, batch * frames).reshape(batch, frames, PITCHES)
            prev = x[:, -1]
        else:
            x = rng.integers(1, vocab_size, size=(batch, frames), dtype=np.int32)
            prev = random_pitch_rows(rng, batch)
        if config.output == "pitch":
            held = rng.random((batch, 1)) < 0.4
            y = np.concatenate([prev, np.where(held, prev, random_pitch_rows(rng, batch))], axis=1)
        else:
            y = rng.integers(1, vocab_size, size=batch, dtype=np.int32)
        out.append((x, y))
    return out


def check_pitch_loss(model: Any, head: Any, x: np.ndarray, y: np.ndarray) -> float:
    """The largest difference between the per-pitch loss on this backend and the NumPy
    head's ``-ln p(chord)`` (stops the run above 1e-3)."""
    import keras

    from musicgend.core.pitchhead import PitchHead
    from musicgend.model.bigru import pitch_log_prob

    out = model(x, training=False)
    got = keras.ops.convert_to_numpy(pitch_log_prob(head, out, y[:, :PITCHES], y[:, PITCHES:]))
    numpy_head = PitchHead(
        *(keras.ops.convert_to_numpy(w) for w in (head.w_in, head.v_out, head.bias))
    )
    want = numpy_head.log_prob(
        keras.ops.convert_to_numpy(out), y[:, :PITCHES] > 0, y[:, PITCHES:] > 0
    )
    diff = float(np.max(np.abs(got - want)))
    if diff > 1e-3:
        raise SystemExit(f"the per-pitch loss differs from the NumPy head's by {diff:.2e}")
    return diff


def bench_training(
    config_name: str, vocab_size: int, batches: list[int], seconds: float
) -> dict[str, Any]:
    """Training windows/s of a fresh ``config_name`` network on synthetic batches: Keras
    ``train_on_batch`` with XLA, Adam, the loss ``musicgend train`` minimises (cross-entropy
    of the next token, or a per-pitch head's ``-ln p(chord)``)."""
    import jax
    import keras

    from musicgend.model.bigru import build_model, pitch_log_prob
    from musicgend.model.config import preset

    config = preset(config_name)
    # a network reading pitches has no vocabulary
    rows: dict[str, Any] = {
        "config": config.name,
        "vocab_size": None if config.pitch_input else vocab_size,
    }
    rows["device"] = jax.default_backend()
    for batch in batches:
        keras.utils.set_random_seed(0)
        model = build_model(vocab_size, config)
        if config.output == "pitch":
            head = model.get_layer("pitch_head")

            def loss(y, out, head=head):
                return -pitch_log_prob(head, out, y[:, :PITCHES], y[:, PITCHES:])

            if "loss_max_abs_diff_vs_numpy" not in rows:  # once: each batch's model is alike
                x, y = synthetic_batches(config, vocab_size, 16, 1, seed=0)[0]
                rows["loss_max_abs_diff_vs_numpy"] = check_pitch_loss(model, head, x, y)
        else:
            loss = keras.losses.SparseCategoricalCrossentropy()
        model.compile(optimizer=keras.optimizers.Adam(), loss=loss, jit_compile=True)
        data = synthetic_batches(config, vocab_size, batch, 8, seed=batch)
        first = float(model.train_on_batch(*data[0]))  # compiles
        for x, y in data[1:3]:
            model.train_on_batch(x, y)
        losses: list[float] = []

        def step(i: int, model=model, data=data, losses=losses) -> None:
            losses.append(float(model.train_on_batch(*data[i % 8])))

        n, elapsed = run_for(step, seconds)
        rows[str(batch)] = {
            "windows_per_s": round(n * batch / elapsed, 1),
            "ms_per_step": round(elapsed / n * 1e3, 3),
            "steps": n,
            "loss_first_last": [round(first, 4), round(losses[-1], 4)],
        }
    return rows


def machine() -> dict[str, Any]:
    import jax
    import keras

    info: dict[str, Any] = {
        "platform": platform.platform(),
        **machine_info(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "numpy": np.__version__,
        "devices": [f"{d.platform}:{getattr(d, 'device_kind', '?')}" for d in jax.devices()],
    }
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        info["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--parts", nargs="+", default=["inference", "batched", "training"])
    parser.add_argument("--calls", type=int, default=1000, help="interleaved rounds, batch 1")
    parser.add_argument("--predict-calls", type=int, default=50)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024, 8192])
    parser.add_argument("--train-batches", type=int, nargs="+", default=[64, 128, 512, 2048])
    parser.add_argument(
        "--train-configs",
        nargs="+",
        default=["seed", "roll"],
        help="training part: presets to train (roll: the bundled model's)",
    )
    parser.add_argument("--vocab", type=int, default=3000, help="training part: vocabulary")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput figure")
    parser.add_argument(
        "--no-jax-cpu",
        action="store_true",
        help="time JAX on the accelerator only (JAX's CPU thread pool then can't slow the "
        "NumPy and LiteRT figures beside it)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import jax
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit("bench/gpu.py runs Keras on JAX: set KERAS_BACKEND=jax")
    jax.config.update("jax_default_matmul_precision", "highest")  # float32, no TF32

    report: dict[str, Any] = {
        "benchmark": "the model on Keras 3's JAX backend (GPU where present) beside the "
        "daemon's CPU runtimes",
        "machine": machine(),
    }
    print(json.dumps(report["machine"], indent=1))
    if "inference" in args.parts:
        r = report["inference"] = bench_inference(
            args.model, args.calls, args.predict_calls, not args.no_jax_cpu
        )
        print(f"\nper-window inference, batch 1 ({r['model']}, {r['config']}, V={r['vocab_size']})")
        print(f"  max |diff| vs NumPy: {r['max_abs_diff_vs_numpy']}")
        for name, s in r["runtimes"].items():
            print(
                f"  {name:22s} p50 {s['p50_ms']:8.3f} ms  p99 {s['p99_ms']:8.3f} ms  "
                f"×{s['p50_vs_fastest']}"
            )
    if "batched" in args.parts:
        with_cpu = not args.no_jax_cpu
        r = report["batched"] = bench_batched(args.model, args.batches, args.seconds, with_cpu)
        print("\nbatched inference, windows/s")
        for label, rows in r.items():
            cells = "  ".join(f"b{b}: {v['windows_per_s']:.0f}" for b, v in rows.items())
            print(f"  {label:10s} {cells}")
    if "training" in args.parts:
        report["training"] = {}
        for name in args.train_configs:
            r = bench_training(name, args.vocab, args.train_batches, args.seconds)
            report["training"][name] = r
            vocab = "" if r["vocab_size"] is None else f", V={r['vocab_size']}"
            print(f"\ntraining throughput, {name} config{vocab}, on {r['device']}")
            if "loss_max_abs_diff_vs_numpy" in r:
                print(f"  loss max |diff| vs the NumPy head: {r['loss_max_abs_diff_vs_numpy']:.2e}")
            for b in args.train_batches:
                v = r[str(b)]
                print(
                    f"  batch {b:5d}: {v['windows_per_s']:9.1f} windows/s  "
                    f"({v['ms_per_step']:.2f} ms/step, loss {v['loss_first_last']})"
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
