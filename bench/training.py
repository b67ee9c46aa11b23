"""Training throughput (windows/s): musicgend's loop vs the seed's loop vs ``model.fit``,
side by side in one run, same network, same initial weights, same batches.

Contenders (each fed by the same ``training.dataset.window_dataset`` pipeline):

- ``seed-loop``: a faithful copy of the seed notebook's loop — ``tf.GradientTape`` inside
  ``tf.function``, ``SparseCategoricalCrossentropy`` on the softmax output, default Adam,
  a ``keras.metrics.Mean`` of the loss updated every step;
- ``musicgend``: :class:`musicgend.training.train.Loop` (the step ``musicgend train`` runs);
- ``musicgend-xla``: the same step with ``jit_compile=True`` (``musicgend train --xla``);
- ``fit``: ``model.compile(jit_compile=False)`` + ``model.fit``;
- ``fit-auto``: ``model.fit`` with Keras' default ``jit_compile="auto"`` (XLA where possible).

Rounds are interleaved (every contender runs a slice, then the next round), so load from
other processes hits all of them alike; the figure is the median over rounds. Data: windows
of real MIDI files with ``--data DIR`` (vocab from the files, min_count as the config), else
synthetic Zipf-distributed ids over ``--vocab`` tokens.

    .venv/bin/python bench/training.py --json bench/results/training-cpu.json
    .venv/bin/python bench/training.py --data /tmp/bach --batch 64 128 256

Prints windows/s and the ratio to the seed loop; no assertions on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=".*shuffle=True.*")

import numpy as np  # noqa: E402

from musicgend.machine import machine_info  # noqa: E402
from musicgend.model.config import preset  # noqa: E402
from musicgend.training.dataset import WindowIndex, load_corpus, prepare, window_dataset  # noqa: E402

CONTENDERS = ("seed-loop", "musicgend", "musicgend-xla", "fit", "fit-auto")


def synthetic_index(vocab: int, frames: int, window: int) -> WindowIndex:
    rng = np.random.default_rng(0)
    ids = np.minimum(rng.zipf(1.3, size=frames), vocab - 1).astype(np.int32)
    pieces = np.array_split(ids, max(1, frames // 300))
    return WindowIndex.from_sequences([p.tolist() for p in pieces], window)


def endless_dataset(index: WindowIndex, batch: int) -> Any:
    """The same tf.data pipeline ``musicgend train`` uses, over three shuffled epochs, repeated."""
    order = np.concatenate([index.epoch_order(0, epoch) for epoch in (1, 2, 3)])
    return window_dataset(index, order, batch, drop_remainder=True).repeat()


def make_contender(
    name: str, vocab_size: int, config: Any, weights: list[np.ndarray], batch: int, dataset: Any
) -> Callable[[Iterator[Any], int], None]:
    """A function ``run(batches, steps)`` that trains ``steps`` batches with one contender."""
    import keras
    import tensorflow as tf

    from musicgend.model.bigru import build_model
    from musicgend.training.train import Loop, TrainOptions

    if name.startswith("musicgend"):
        opts = TrainOptions(Path("."), Path("."), config, batch_size=batch)
        opts.jit_compile = name.endswith("xla")
        loop = Loop(tf.distribute.get_strategy(), vocab_size, opts, global_batch=batch)
        loop.model.set_weights(weights)

        def run_loop(batches: Iterator[Any], steps: int) -> None:
            out = None
            for _ in range(steps):
                x, y = next(batches)
                out = loop.train_step(x, y)
            assert out is not None
            float(out)

        return run_loop

    model = build_model(vocab_size, config)
    model.set_weights(weights)
    if name == "seed-loop":
        loss_object = keras.losses.SparseCategoricalCrossentropy()
        optimizer = keras.optimizers.Adam()
        train_loss = keras.metrics.Mean(name="train_loss")

        @tf.function
        def train_step(x, y):
            with tf.GradientTape() as tape:
                predictions = model(x)
                loss = loss_object(y, predictions)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            train_loss(loss)

        def run_seed(batches: Iterator[Any], steps: int) -> None:
            for _ in range(steps):
                x, y = next(batches)
                train_step(x, y)
            float(train_loss.result())

        return run_seed

    model.compile(
        keras.optimizers.Adam(),
        "sparse_categorical_crossentropy",
        jit_compile=False if name == "fit" else "auto",
    )

    def run_fit(batches: Iterator[Any], steps: int) -> None:
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)

    return run_fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="seed", help="model preset (default: seed)")
    ap.add_argument("--data", type=Path, help="MIDI directory for real windows")
    ap.add_argument("--max-pieces", type=int, default=60, help="pieces read from --data")
    ap.add_argument("--vocab", type=int, default=3000, help="synthetic vocabulary size")
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--windows", type=int, default=3072, help="windows per contender per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    from musicgend.model.bigru import build_model
    from musicgend.training.train import device_description

    config = preset(args.config)
    if args.data:
        corpus = load_corpus(args.data, seed=0, max_pieces=args.max_pieces)
        data = prepare(corpus, config)
        index, vocab_size = data.train, len(data.vocab)
        source = f"{args.data} ({len(corpus.train)} training pieces)"
    else:
        vocab_size = args.vocab
        index, source = synthetic_index(vocab_size, 40_000, config.window_frames), "synthetic"
    keras.utils.set_random_seed(0)
    weights = build_model(vocab_size, config).get_weights()
    print(
        f"config {config.name}, vocab {vocab_size}, data {source}, device {device_description()}, "
        f"TF {tf.__version__}"
    )
    results: dict[str, Any] = {}
    for batch in args.batch:
        steps = max(4, args.windows // batch)
        runners, streams = {}, {}
        for n in args.only:
            dataset = endless_dataset(index, batch)
            runners[n] = make_contender(n, vocab_size, config, weights, batch, dataset)
            streams[n] = iter(dataset)
        for name, run in runners.items():  # warm-up: trace / compile
            run(streams[name], 2)
        rates: dict[str, list[float]] = {n: [] for n in args.only}
        for _ in range(args.rounds):
            for name, run in runners.items():
                t0 = time.perf_counter()
                run(streams[name], steps)
                rates[name].append(steps * batch / (time.perf_counter() - t0))
        med = {n: statistics.median(r) for n, r in rates.items()}
        base = med.get("seed-loop") or max(med.values())
        print(f"batch {batch}: {steps} steps x {args.rounds} rounds per contender")
        for name in args.only:
            print(
                f"  {name:14s} {med[name]:8.0f} windows/s   x{med[name] / base:5.2f} vs seed loop"
                f"   (rounds: {', '.join(f'{r:.0f}' for r in rates[name])})"
            )
        results[str(batch)] = {
            n: {"windows_per_s": round(med[n], 1), "rounds": [round(r, 1) for r in rates[n]]}
            for n in args.only
        }
        results[str(batch)]["ratio_vs_seed_loop"] = {n: round(med[n] / base, 3) for n in args.only}
    if args.json:
        payload = {
            "benchmark": "training throughput, windows/s (median of interleaved rounds)",
            "config": config.model_dump(),
            "vocab_size": vocab_size,
            "data": source,
            "machine": {
                "device": device_description(),
                **machine_info(),
                "platform": platform.platform(),
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "load_avg_at_end": os.getloadavg(),
            },
            "windows_per_round": args.windows,
            "rounds": args.rounds,
            "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
