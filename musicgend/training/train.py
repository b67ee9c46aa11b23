"""The training loop: GradientTape step in ``tf.function``, validation NLL, best checkpoint,
resumable state, early stopping, seeded determinism, optional multi-worker training.

Loop: the seed's way (``tf.GradientTape`` inside ``tf.function``), measured against
``model.fit`` on the same tf.data by ``bench/training.py`` (the tape loop was faster on this
machine). The step runs under a ``tf.distribute`` strategy — the default one, or
``MultiWorkerMirroredStrategy`` from ``TF_CONFIG`` with ``distributed=True`` — so one code
path serves both.

Files: the best epoch's model goes to ``out_dir`` (:func:`~musicgend.model.artifact.save_artifact`,
replaced atomically on every improvement, re-saved at the end with the full metadata, the
LiteRT export and ``loss_curve.png``). The resumable state lives beside it, in
``<parent>/.<name>.train-state`` (``save_artifact`` replaces ``out_dir`` wholesale): all model
variables (dropout seed states included), the optimizer's variables, the epoch, history,
early-stopping counters, the run's options and command lines, written to a new directory and
swapped in after every epoch. The shuffle order of an epoch depends only on ``(seed, epoch)``, so an
interrupted-and-resumed run retraces the uninterrupted one; Ctrl-C or SIGKILL loses at most
the epoch in progress. The state is removed when training ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
from pydantic import ValidationError

from musicgend.core.vocab import UNK_ID
from musicgend.errors import ConfigError, CorpusError, MusicgendError, TrainingError
from musicgend.model.config import ModelConfig, preset
from musicgend.progress import is_tty, progress
from musicgend.text import count
from musicgend.training.dataset import (
    AUGMENT_MODES,
    Split,
    TrainingData,
    WindowIndex,
    load_corpus,
    prepare,
    window_dataset,
)

if TYPE_CHECKING:  # pragma: no cover
    import keras

STATE_FORMAT = "musicgend-train-state"
STATE_VERSION = 1
LOSS_CURVE_PNG = "loss_curve.png"
NLL_EPS = 1e-7
"""Probabilities are clipped to [NLL_EPS, 1] before the log (Keras' epsilon)."""
EVAL_BATCH = 512

RESUMABLE_FIXED = {
    "data_dir": "--data",
    "config": "--config",
    "batch_size": "--batch-size",
    "learning_rate": "--learning-rate",
    "lr_schedule": "--lr-schedule",
    "augment_transpose": "--augment-transpose",
    "augment_mode": "--augment-mode",
    "seed": "--seed",
    "max_pieces": "--max-pieces",
    "distributed": "--distributed",
    "jit_compile": "--xla",
    "base_model": "--from",
    "keep_vocab": "--keep-vocab",
}
"""Options a resumed run must share with the interrupted one, and their command-line names."""
LR_SCHEDULES = ("constant", "cosine")
NEGATED = {"--augment-transpose": "--no-augment-transpose", "--xla": "--no-xla"}
"""The flags that have an off form on the command line."""


@dataclass
class TrainOptions:
    """Everything that defines a training run."""

    data_dir: Path
    out_dir: Path
    config: ModelConfig = field(default_factory=lambda: preset("seed"))
    epochs: int = 50
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    """``constant``, or ``cosine``: from ``learning_rate`` down to 0 over ``epochs``."""
    augment_transpose: bool = False
    augment_mode: str = "random"
    """With ``augment_transpose``: ``random`` (one key per window and epoch) or ``expand``."""
    patience: int = 5
    seed: int = 0
    distributed: bool = False
    max_pieces: int | None = None
    jit_compile: bool = False
    """XLA-compile the train step (single worker only)."""
    deterministic: bool = True
    """``tf.config.experimental.enable_op_determinism()``."""
    base_model: Path | None = None
    """Fine-tune this model (:mod:`musicgend.training.finetune`); its config replaces
    ``config``."""
    keep_vocab: bool = False
    """With ``base_model``: keep its vocabulary as it is (add no chords)."""

    def __post_init__(self) -> None:
        # absolute, so that a resumed run finds them from any working directory
        self.data_dir, self.out_dir = Path(self.data_dir).absolute(), Path(self.out_dir).absolute()
        if self.base_model is not None:
            self.base_model = Path(self.base_model).absolute()
        for name in ("epochs", "batch_size", "seed"):
            value = getattr(self, name)
            if value < (0 if name == "seed" else 1):
                raise TrainingError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.patience < 0:
            raise TrainingError(f"--patience must be >= 0, got {self.patience}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise TrainingError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainingError(
                f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if self.augment_mode not in AUGMENT_MODES:
            raise TrainingError(
                f"--augment-mode must be one of {', '.join(AUGMENT_MODES)}, "
                f"got {self.augment_mode!r}"
            )

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["data_dir"], out["out_dir"] = str(self.data_dir), str(self.out_dir)
        out["config"] = self.config.model_dump()
        out["base_model"] = None if self.base_model is None else str(self.base_model)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainOptions:
        data = dict(data)
        data["config"] = ModelConfig.model_validate(data["config"])
        data.setdefault("augment_mode", "expand")  # states written before the modes existed
        return cls(**data)


@dataclass
class TrainResult:
    out_dir: Path | None
    """The model directory (``None`` on a non-chief worker)."""
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_nll: float
    stopped_early: bool
    wall_s: float
    windows_per_s: float
    weights_sha256: str
    """Digest of the saved model's weights (the best epoch's, float32, in ``model.weights``
    order; ``final_weights_sha256`` in the metadata): equal on every worker of one run."""
    fine_tune: dict[str, Any] | None = None
    """The lineage of a fine-tune (``training.fine_tune`` in the model's metadata)."""


# -- state directory ---------------------------------------------------------------------


def state_dir_for(out_dir: Path) -> Path:
    """Where the resumable state of a run writing ``out_dir`` lives."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.train-state"


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def _swap_in(new: Path, target: Path) -> None:
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        shutil.rmtree(old)


def _complete_state(path: Path) -> bool:
    return (path / "state.json").is_file()


def find_state(out_dir: Path) -> Path | None:
    """The newest complete state directory of ``out_dir``'s run, if any."""
    target = state_dir_for(out_dir)
    for candidate in (target, target.with_name(target.name + ".old")):
        if _complete_state(candidate):
            return candidate
    return None


def write_state(
    target: Path, info: dict[str, Any], model_vars: list[np.ndarray], opt_vars: list[np.ndarray]
) -> None:
    """Write the state atomically: a new directory, fsynced, swapped in; state.json last."""
    new = target.with_name(target.name + ".new")
    if new.exists():
        shutil.rmtree(new)
    new.mkdir(parents=True)
    with (new / "model.npz").open("wb") as f:
        np.savez(f, *model_vars)
    with (new / "optimizer.npz").open("wb") as f:
        np.savez(f, *opt_vars)
    (new / "state.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    for name in ("model.npz", "optimizer.npz", "state.json"):
        _fsync_file(new / name)
    _swap_in(new, target)


STATE_KEYS: dict[str, type | tuple[type, ...]] = {
    "epoch": int,
    "history": list,
    "best_epoch": int,
    "best_val_nll": (int, float),
    "bad_epochs": int,
    "wall_s": (int, float),
    "started": str,
    "options": dict,
    "split": dict,
    "vocab_hash": str,
}
"""The keys of ``state.json`` a resumed run needs, with their JSON types."""
OPTIONAL_STATE_KEYS: dict[str, type] = {"command": list, "resume_commands": list}
"""Keys that states written by older versions lack, with their JSON types."""


def read_state_info(path: Path) -> dict[str, Any]:
    """``state.json`` of the state directory ``path``, checked (:class:`TrainingError` with
    the reason when it is damaged, incomplete or of another format)."""

    def unreadable(reason: object) -> TrainingError:
        return TrainingError(f"{path}: training state is unreadable (state.json: {reason})")

    try:
        text = (path / "state.json").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise unreadable(reason) from None
    try:
        info = json.loads(text)
    except ValueError as exc:
        raise unreadable(f"not valid JSON: {exc}") from None
    if not isinstance(info, dict):
        raise unreadable("not a JSON object")
    if "format" not in info:
        raise unreadable("no 'format'")
    if info.get("format") != STATE_FORMAT or info.get("version") != STATE_VERSION:
        raise TrainingError(f"{path}: not a musicgend training state of this version")
    for key, kind in {**STATE_KEYS, **OPTIONAL_STATE_KEYS}.items():
        if key not in info:
            if key in OPTIONAL_STATE_KEYS:
                continue
            raise unreadable(f"no {key!r}")
        value = info[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise unreadable(f"{key!r} is {type(value).__name__}")
    try:
        TrainOptions.from_json(info["options"])
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise unreadable(f"options.config.{loc}: {first['msg']}") from None
    except (TypeError, ValueError, KeyError, TrainingError) as exc:
        raise unreadable(f"bad options: {exc}") from None
    return info


def read_state(path: Path) -> tuple[dict[str, Any], list[np.ndarray], list[np.ndarray]]:
    info = read_state_info(path)
    try:
        model_vars = _state_arrays(path / "model.npz")
        opt_vars = _state_arrays(path / "optimizer.npz")
    except (OSError, ValueError, KeyError) as exc:
        raise TrainingError(f"{path}: training state is unreadable ({exc})") from None
    return info, model_vars, opt_vars


def _state_arrays(file: Path) -> list[np.ndarray]:
    from musicgend.model.artifact import read_npz

    try:
        arrays = read_npz(file)
    except ValueError as exc:
        raise ValueError(f"{file.name}: {exc}") from None
    try:
        return [arrays[f"arr_{i}"] for i in range(len(arrays))]
    except KeyError as exc:
        raise ValueError(f"{file.name}: no array {exc}") from None


# -- helpers -----------------------------------------------------------------------------


def device_description() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = []
        for gpu in gpus:
            details = tf.config.experimental.get_device_details(gpu)
            names.append(str(details.get("device_name", gpu.name)))
        return "GPU: " + ", ".join(names)
    return f"CPU ({os.cpu_count()} cores)"


def weights_digest(arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def plot_loss_curve(history: list[dict[str, Any]], best_epoch: int, path: Path) -> Path:
    """Train and validation NLL per epoch as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    ax.plot(epochs, [h["train_nll"] for h in history], "o-", label="train NLL")
    ax.plot(epochs, [h["val_nll"] for h in history], "s-", label="validation NLL")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats per frame)")
    ax.set_title("musicgend training")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


@dataclass(frozen=True)
class Cluster:
    """A checked ``TF_CONFIG`` (:func:`check_tf_config`)."""

    workers: tuple[str, ...]
    """The ``host:port`` of every worker."""
    index: int
    """This process's place among them; worker 0 is the chief, which writes the model and
    the training state."""

    @property
    def chief(self) -> bool:
        return self.index == 0


def check_tf_config() -> Cluster:
    """The cluster of a valid ``TF_CONFIG`` (TrainingError, one per fault, otherwise): a JSON
    object whose ``cluster.worker`` is a non-empty list of ``host:port`` strings (no other
    task types) and whose ``task`` is ``{"type": "worker", "index": i}`` with i a worker."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise TrainingError("--distributed needs TF_CONFIG (cluster and task) in the environment")
    try:
        tf_config = json.loads(text)
    except ValueError as exc:
        raise TrainingError(f"TF_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(tf_config, dict):
        raise TrainingError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    cluster = tf_config.get("cluster")
    if not isinstance(cluster, dict) or "worker" not in cluster:
        raise TrainingError("TF_CONFIG: 'cluster' must be an object with a 'worker' list")
    others = sorted(set(cluster) - {"worker"})
    if others:
        raise TrainingError(f"TF_CONFIG: only 'worker' tasks are supported, not {others[0]!r}")
    workers = cluster["worker"]
    if not isinstance(workers, list) or not workers:
        raise TrainingError("TF_CONFIG: cluster.worker must be a non-empty list of host:port")
    for address in workers:
        host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
        if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise TrainingError(f"TF_CONFIG: worker {address!r} is not host:port")
    task = tf_config.get("task")
    if not isinstance(task, dict) or task.get("type") != "worker":
        raise TrainingError('TF_CONFIG: \'task\' must be {"type": "worker", "index": N}')
    index = task.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(workers):
        raise TrainingError(
            f"TF_CONFIG: task.index must be 0..{len(workers) - 1} "
            f"(one of the {len(workers)} workers), got {index!r}"
        )
    return Cluster(tuple(workers), index)


def make_strategy(cluster: Cluster | None, stream: TextIO | None = None) -> Any:
    """MultiWorkerMirroredStrategy for ``cluster`` (TF_CONFIG as :func:`check_tf_config`
    found it), or with ``None`` the default strategy."""
    import tensorflow as tf

    if cluster is None:
        return tf.distribute.get_strategy()
    workers = cluster.workers
    if len(workers) > 1:
        print(
            f"waiting for the {len(workers)} workers of TF_CONFIG: {', '.join(workers)}",
            file=stream or sys.stderr,
            flush=True,
        )
    # The constructor waits for every worker holding the GIL, so no Python signal handler
    # runs until they are all there: Ctrl-C did nothing. Nothing is written before this
    # point, so SIGINT may simply end the process while it waits.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL) if main else None
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (ValueError, RuntimeError) as exc:
        raise TrainingError(f"can't start multi-worker training: {exc}") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if main:
        # TensorFlow's coordination service takes SIGTERM as a preemption notice and does
        # nothing else with it (this loop has no PreemptionCheckpointHandler): a worker
        # ignored SIGTERM. From here on it stops training like Ctrl-C does.
        signal.signal(signal.SIGTERM, _interrupt)
    return strategy


def steps_per_epoch(n_windows: int, workers: int, global_batch: int) -> int:
    """Training steps per epoch: whole global batches of each worker's share of windows."""
    return (n_windows // workers) // (global_batch // workers)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


# -- the loop ----------------------------------------------------------------------------


class Loop:
    """Model, optimizer and compiled steps under one strategy."""

    def __init__(
        self,
        strategy: Any,
        vocab_size: int,
        options: TrainOptions,
        *,
        global_batch: int,
        total_steps: int = 0,
    ) -> None:
        """``total_steps``: the run's steps (epochs × steps per epoch), which a learning-rate
        schedule other than ``constant`` spans."""
        import keras
        import tensorflow as tf

        from musicgend.model.bigru import build_model, pitch_log_prob

        self.strategy = strategy
        self.replicas = int(strategy.num_replicas_in_sync)
        self.global_batch = global_batch
        rate: Any = options.learning_rate
        if options.lr_schedule == "cosine":
            if total_steps < 1:
                raise ValueError("a cosine learning-rate schedule needs the run's total steps")
            rate = keras.optimizers.schedules.CosineDecay(options.learning_rate, total_steps)
        with strategy.scope():
            self.model: keras.Model = build_model(vocab_size, options.config)
            self.optimizer = keras.optimizers.Adam(rate)
            self.optimizer.build(self.model.trainable_variables)
        model, optimizer = self.model, self.optimizer
        self.per_pitch = options.config.output == "pitch"
        self.pitch_input = options.config.pitch_input
        head = model.get_layer("pitch_head") if self.per_pitch else None

        def nll(y, out):
            if head is not None:  # y: (previous pitches, target pitches)
                return -pitch_log_prob(head, out, y[0], y[1])
            p = tf.gather(out, tf.cast(y, tf.int32), batch_dims=1)
            return -tf.math.log(tf.clip_by_value(p, NLL_EPS, 1.0))

        def hits(y, out):
            if head is not None:  # the head's best guess needs a search: not in training
                return tf.zeros(tf.shape(out)[:1])
            right = tf.equal(tf.argmax(out, -1, output_type=tf.int32), y)
            # an <unk> target is never right: the argmax <unk> names no chord
            return tf.cast(right & tf.not_equal(y, UNK_ID), tf.float32)

        def replica_train(x, y):
            with tf.GradientTape() as tape:
                per_example = nll(y, model(x, training=True))
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return tf.reduce_sum(per_example)

        def replica_eval(x, y, w):
            out = model(x, training=False)
            return tf.stack(
                [tf.reduce_sum(nll(y, out) * w), tf.reduce_sum(hits(y, out) * w), tf.reduce_sum(w)]
            )

        sum_ = tf.distribute.ReduceOp.SUM
        jit = options.jit_compile and not options.distributed

        @tf.function(jit_compile=jit)
        def train_step(x, y):
            return strategy.reduce(sum_, strategy.run(replica_train, args=(x, y)), axis=None)

        @tf.function(reduce_retracing=True)
        def eval_step(x, y, w):
            return strategy.reduce(sum_, strategy.run(replica_eval, args=(x, y, w)), axis=None)

        self.train_step, self.eval_step = train_step, eval_step

    # variables as arrays (state save/restore)
    def model_arrays(self) -> list[np.ndarray]:
        return [np.asarray(v.numpy()) for v in self.model.variables]

    def weight_arrays(self) -> list[np.ndarray]:
        """The weights (no optimizer or dropout-seed state): what the model directory saves
        and :func:`weights_digest` digests."""
        return [np.asarray(w.numpy()) for w in self.model.weights]

    def learning_rate(self) -> float:
        """The rate of the next step (the schedule's value after the steps taken)."""
        import keras

        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    def optimizer_arrays(self) -> list[np.ndarray]:
        return [np.asarray(v.numpy()) for v in self.optimizer.variables]

    def restore(self, model_vars: list[np.ndarray], opt_vars: list[np.ndarray]) -> None:
        pairs = [(self.model.variables, model_vars), (self.optimizer.variables, opt_vars)]
        for variables, arrays in pairs:
            if len(variables) != len(arrays) or any(
                tuple(v.shape) != a.shape for v, a in zip(variables, arrays, strict=True)
            ):
                raise TrainingError("the training state does not fit this model (shapes differ)")
        for variables, arrays in pairs:
            for v, a in zip(variables, arrays, strict=True):
                v.assign(a)

    def train_batches(
        self,
        positions: np.ndarray,
        index: WindowIndex,
        shift_table: np.ndarray | None = None,
        shift_rows: np.ndarray | None = None,
    ) -> Iterator[Any]:
        """This epoch's batches; each worker takes an equal share of ``positions`` (and of
        ``shift_rows``, the transposition of each window, see :func:`window_dataset`)."""
        global_batch = self.global_batch

        def dataset_fn(ctx):
            n, i = ctx.num_input_pipelines, ctx.input_pipeline_id
            share = len(positions) // n
            mine = positions[i::n][:share]
            rows = None if shift_rows is None else shift_rows[i::n][:share]
            per_replica = ctx.get_per_replica_batch_size(global_batch)
            return window_dataset(
                index,
                mine,
                per_replica,
                drop_remainder=True,
                shift_table=shift_table,
                shift_rows=rows,
                pitch_input=self.pitch_input,
            )

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def evaluate(self, index: WindowIndex) -> tuple[float, float | None]:
        """Validation (NLL nats per window, top-1) over every window of ``index``.

        Top-1 follows ``musicgend evaluate``'s rule (:mod:`musicgend.training.evaluate`): a
        window is right only when the argmax id is its target's and that target is not
        ``<unk>`` (a chord the vocabulary lacks is never right, even when ``<unk>`` is the
        argmax). The NLL is over the vocabulary's ids (``<unk>`` without evaluate's
        p_spell).

        A per-pitch model's NLL is that of the chord itself (unknown chords included, as
        ``musicgend evaluate`` scores it); its top-1 needs a search per window and is left
        to ``musicgend evaluate`` (None here).

        Each worker scores an equal-length share (padded with zero-weight windows), so all
        workers run the same number of steps and get the same reduced figures.
        """
        positions = index.positions

        def dataset_fn(ctx):
            n, i = ctx.num_input_pipelines, ctx.input_pipeline_id
            per = -(-len(positions) // n)
            mine = positions[i::n]
            w = np.zeros(per, dtype=np.float32)
            w[: len(mine)] = 1.0
            pos = np.concatenate([mine, np.full(per - len(mine), positions[0])])
            return window_dataset(
                index,
                pos,
                EVAL_BATCH,
                drop_remainder=False,
                weights=w,
                pitch_input=self.pitch_input,
            )

        total = np.zeros(3)
        for x, y, w in self.strategy.distribute_datasets_from_function(dataset_fn):
            total += self.eval_step(x, y, w).numpy()
        top1 = None if self.per_pitch else float(total[1] / total[2])
        return float(total[0] / total[2]), top1


def _seed_everything(seed: int, deterministic: bool) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def _as_typed(option: str, value: Any) -> str:
    """An option's value as the command line gives it: ``--batch-size 64``, ``--no-xla``,
    ``--config seed`` (a config by its name), ``without --max-pieces``."""
    if value is None or value is False:
        return NEGATED.get(option, f"without {option}")
    if value is True:
        return option
    return f"{option} {value.name if isinstance(value, ModelConfig) else value}"


def _check_resumable(saved: TrainOptions, given: TrainOptions, explicit: set[str]) -> None:
    for name, option in RESUMABLE_FIXED.items():
        ours, theirs = getattr(given, name), getattr(saved, name)
        if name in explicit and ours != theirs:
            now, was = _as_typed(option, ours), _as_typed(option, theirs)
            raise TrainingError(
                f"{now} differs from the interrupted run"
                + (f" ({was})" if was != now else "")  # two configs of one name
                + "; a resumed run keeps its settings"
            )


def _check_best_model(out_dir: Path, best_epoch: int) -> None:
    """A resumed run needs the model its best epoch so far saved (it is the result unless a
    later epoch does better)."""
    from musicgend.model.artifact import load_artifact

    try:
        load_artifact(out_dir)
    except MusicgendError as exc:
        reason = str(exc).removeprefix(f"{out_dir}: ")
        raise TrainingError(
            f"{out_dir}: the model of the best epoch so far (epoch {best_epoch}) is missing "
            f"or damaged ({reason}); the run can't be resumed: start a new training"
        ) from None


def _epoch_line(h: dict[str, Any], epochs: int, best: bool, show_rate: bool = False) -> str:
    top1 = "" if h["val_top1"] is None else f"  val_top1 {100 * h['val_top1']:.1f}%"
    rate = f"  lr {h['learning_rate']:.2e}" if show_rate else ""
    return (
        f"epoch {int(h['epoch'])}/{epochs}  train_nll {h['train_nll']:.4f}  "
        f"val_nll {h['val_nll']:.4f}{top1}{rate}  "
        f"{h['windows_per_s']:.0f} windows/s  {h['epoch_s']:.1f} s" + ("  *best" if best else "")
    )


@contextlib.contextmanager
def _worker_dir(chief: bool, out_dir: Path) -> Iterator[Path]:
    """The chief writes ``out_dir``; other workers write a temporary directory, then drop it."""
    if chief:
        yield out_dir
        return
    tmp = Path(tempfile.mkdtemp(prefix="musicgend-worker-"))
    try:
        yield tmp / out_dir.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train(
    options: TrainOptions,
    *,
    resume: bool = False,
    explicit: set[str] | None = None,
    command: list[str] | None = None,
    stream: TextIO | None = None,
) -> TrainResult:
    """Train (or resume training) a model; see the module docstring.

    ``explicit`` names the options the user gave on a resumed run (they must match the
    saved ones, except ``epochs`` and ``patience``, which may change). ``command`` (default
    ``sys.argv``) goes to the metadata as ``command``; a resumed run keeps the first run's
    there and lists its own, after any earlier resume's, as ``resume_commands``.
    """
    stream = stream or sys.stderr
    out_dir = options.out_dir
    out_existed = out_dir.exists()
    state_info: dict[str, Any] | None = None
    saved_vars: tuple[list[np.ndarray], list[np.ndarray]] | None = None
    if resume:
        found = find_state(out_dir)
        if found is None:
            raise TrainingError(f"{out_dir}: no interrupted training to resume")
        state_info, model_vars, opt_vars = read_state(found)
        saved = TrainOptions.from_json(state_info["options"])
        _check_resumable(saved, options, explicit or set())
        if saved.lr_schedule != "constant" and options.epochs != saved.epochs:
            raise TrainingError(
                f"--epochs {options.epochs} differs from the interrupted run (--epochs "
                f"{saved.epochs}), whose --lr-schedule {saved.lr_schedule} spans its epochs; "
                "a resumed run keeps them"
            )
        saved.epochs, saved.patience = options.epochs, options.patience
        saved.out_dir = out_dir
        options = saved
        saved_vars = (model_vars, opt_vars)
    # TF_CONFIG is read here only, before any work (a resumed run is distributed as saved)
    cluster = check_tf_config() if options.distributed else None
    chief = cluster is None or cluster.chief

    if state_info is not None:
        if chief and state_info["best_epoch"] > 0:
            _check_best_model(out_dir, state_info["best_epoch"])
    elif chief:
        if find_state(out_dir) is not None:
            raise TrainingError(
                f"{out_dir}: an interrupted training of this model exists; "
                "continue it with --resume or choose another --out"
            )
        if out_dir.exists() and not out_dir.is_dir():
            raise TrainingError(f"{out_dir}: is a file, not a directory; choose a new --out")
        if out_dir.exists() and any(out_dir.iterdir()):
            raise TrainingError(f"{out_dir}: exists and is not empty; choose a new --out")

    base = None
    if options.base_model is not None:
        from musicgend.training.finetune import load_base

        base = load_base(options.base_model)
        options = dataclasses.replace(options, config=base.config)

    # MultiWorkerMirroredStrategy must exist before any TensorFlow op runs.
    strategy = make_strategy(cluster, stream)
    import tensorflow as tf

    _seed_everything(options.seed, options.deterministic)
    split = Split.from_json(state_info["split"]) if state_info else None
    corpus = load_corpus(
        options.data_dir,
        seed=options.seed,
        fs=options.config.fs,
        first_track_only=options.config.first_track_only,
        max_pieces=options.max_pieces,
        split=split,
        stream=stream,
    )
    finetune = None
    if base is not None:
        from musicgend.training.finetune import plan_finetune

        finetune = plan_finetune(base, corpus, options.augment_transpose, options.keep_vocab)
    data: TrainingData = prepare(
        corpus,
        options.config,
        augment_transpose=options.augment_transpose,
        augment_mode=options.augment_mode,
        vocab=finetune.vocab if finetune else None,
        pitch_prior=finetune.pitch_prior if finetune else None,
    )
    if state_info and state_info["vocab_hash"] != data.vocab.hash:
        raise CorpusError(
            f"{options.data_dir}: the corpus changed since the interrupted run "
            "(its vocabulary differs); start a new training"
        )
    replicas = int(strategy.num_replicas_in_sync)
    if options.batch_size % replicas:
        raise TrainingError(
            f"--batch-size {options.batch_size} must be a multiple of the {replicas} replicas"
        )
    workers = len(cluster.workers) if cluster is not None else 1
    steps = steps_per_epoch(len(data.train), workers, options.batch_size)
    if steps < 1:
        raise TrainingError(
            f"only {len(data.train)} training windows: fewer than one batch of "
            f"{options.batch_size}; lower --batch-size or add data"
        )
    loop = Loop(
        strategy,
        len(data.vocab),
        options,
        global_batch=options.batch_size,
        total_steps=options.epochs * steps,
    )

    history: list[dict[str, Any]] = []
    best_epoch, best_val, bad_epochs, wall_before = 0, math.inf, 0, 0.0
    best_digest = ""
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    command = command if command is not None else list(sys.argv)
    resume_commands: list[list[str]] = []
    if state_info:
        # the run's command is its first one, with which its settings were given; each
        # resume adds its own (a state of an older version has no command: this one's then)
        resume_commands = [*state_info.get("resume_commands", []), command]
        command = state_info.get("command", command)
    lineage: dict[str, Any] | None = None
    if finetune is not None:
        lineage = state_info.get("fine_tune") if state_info else None
        if lineage is None:
            from musicgend.model.artifact import set_numpy_weights

            set_numpy_weights(loop.model, options.config, finetune.initial_weights())
            lineage = finetune.lineage(options.data_dir, command)
            lineage["val_nll_before"], lineage["val_top1_before"] = loop.evaluate(data.val)
            print(
                f"fine-tuning {finetune.base.path}: {count(len(finetune.added), 'chord')} added "
                f"to its {len(finetune.base.vocab)} tokens; validation NLL before "
                f"{lineage['val_nll_before']:.4f}",
                file=stream,
                flush=True,
            )
    if state_info and saved_vars:
        loop.restore(*saved_vars)
        history = state_info["history"]
        best_epoch, best_val = state_info["best_epoch"], state_info["best_val_nll"]
        bad_epochs, wall_before = state_info["bad_epochs"], state_info["wall_s"]
        started = state_info["started"]
        best_digest = str(state_info.get("best_weights_sha256") or "")
        print(f"resuming after epoch {state_info['epoch']}", file=stream, flush=True)
    start_epoch = len(history) + 1

    base_meta = {
        "command": command,
        **({"resume_commands": resume_commands} if resume_commands else {}),
        "data_dir": str(options.data_dir.resolve()),
        "options": options.to_json(),
        "split": corpus.split.to_json(),
        "data": data.summary(),
        "started": started,
        "tensorflow": tf.__version__,
        "device": device_description(),
        "workers": workers,
        "loop": "GradientTape step in tf.function" + (" (XLA)" if options.jit_compile else ""),
    }
    if lineage is not None:
        base_meta["fine_tune"] = lineage

    def metadata(wall_s: float) -> dict[str, Any]:
        trained = sum(h["windows"] for h in history)
        train_s = sum(h["epoch_s"] for h in history)
        return {
            **base_meta,
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "best_val_nll": best_val,
            "best_val_top1": history[best_epoch - 1]["val_top1"] if best_epoch else None,
            "history": history,
            "wall_s": round(wall_s, 2),
            "windows_per_s": round(trained / train_s, 1) if train_s else None,
        }

    state_target = state_dir_for(out_dir)
    t_run = time.perf_counter()
    epochs = options.epochs
    tty = is_tty(stream)
    with _worker_dir(chief, out_dir) as artifact_dir:
        from musicgend.model.artifact import load_artifact, save_artifact

        def patience_spent() -> bool:
            return options.patience > 0 and bad_epochs >= options.patience

        epoch, kept = start_epoch, len(history)
        try:
            for epoch in range(start_epoch, epochs + 1):
                if patience_spent():
                    break
                perm = data.train.epoch_permutation(options.seed, epoch)
                table, rows = None, None
                if data.transpose is not None:
                    table = data.transpose.table
                    shifts = data.transpose.epoch_shifts(options.seed, epoch)
                    rows = data.transpose.rows(shifts)[perm]
                t0 = time.perf_counter()
                sums = []
                batches = loop.train_batches(data.train.positions[perm], data.train, table, rows)
                if tty:
                    with progress(steps, f"epoch {epoch}/{epochs}", stream) as bar:
                        for x, y in batches:
                            sums.append(loop.train_step(x, y))
                            bar.advance()
                else:
                    for x, y in batches:
                        sums.append(loop.train_step(x, y))
                windows = steps * options.batch_size
                train_nll = float(np.sum([s.numpy() for s in sums])) / windows
                epoch_s = time.perf_counter() - t0
                val_nll, val_top1 = loop.evaluate(data.val)
                if not math.isfinite(train_nll) or not math.isfinite(val_nll):
                    raise TrainingError(
                        f"epoch {epoch}: the loss became {train_nll} / {val_nll}; "
                        "lower --learning-rate"
                    )
                h = {
                    "epoch": epoch,
                    "train_nll": train_nll,
                    "val_nll": val_nll,
                    "val_top1": val_top1,
                    "windows": windows,
                    "epoch_s": round(epoch_s, 3),
                    "windows_per_s": round(windows / epoch_s, 1),
                    "learning_rate": loop.learning_rate(),
                }
                history.append(h)
                improved = val_nll < best_val
                if improved:
                    best_epoch, best_val, bad_epochs = epoch, val_nll, 0
                    best_digest = weights_digest(loop.weight_arrays())
                    save_artifact(
                        artifact_dir,
                        loop.model,
                        data.vocab,
                        options.config,
                        data.pitch_prior,
                        metadata(wall_before + time.perf_counter() - t_run),
                        export_tflite=False,
                    )
                else:
                    bad_epochs += 1
                if chief:
                    write_state(
                        state_target,
                        {
                            "format": STATE_FORMAT,
                            "version": STATE_VERSION,
                            "epoch": epoch,
                            "history": history,
                            "best_epoch": best_epoch,
                            "best_val_nll": best_val,
                            "bad_epochs": bad_epochs,
                            "wall_s": wall_before + time.perf_counter() - t_run,
                            "started": started,
                            "command": command,
                            "resume_commands": resume_commands,
                            "options": options.to_json(),
                            "split": corpus.split.to_json(),
                            "vocab_hash": data.vocab.hash,
                            "fine_tune": lineage,
                            "best_weights_sha256": best_digest,
                        },
                        loop.model_arrays(),
                        loop.optimizer_arrays(),
                    )
                kept = epoch
                print(
                    _epoch_line(h, epochs, improved, options.lr_schedule != "constant"),
                    file=stream,
                    flush=True,
                )
        except KeyboardInterrupt:
            where = f"in epoch {epoch}" if len(history) < epoch else f"after epoch {epoch}"
            if kept == 0:
                if chief and not resume and out_dir.exists():
                    # a model saved in epoch 1 just before the interruption, without a state
                    # to resume it (out_dir was new or empty): drop it, so that the same
                    # command starts again
                    shutil.rmtree(out_dir, ignore_errors=True)
                    shutil.rmtree(state_target, ignore_errors=True)  # this run's own
                    if out_existed:
                        out_dir.mkdir()
                raise TrainingError(
                    f"interrupted {where}, before the first epoch completed; nothing is kept: "
                    "start the training again"
                ) from None
            raise TrainingError(
                f"interrupted {where}; the state after epoch {kept} is kept: "
                f"continue with `musicgend train --out {out_dir} --resume`"
            ) from None
        stopped_early = patience_spent() and len(history) < epochs

        if stopped_early:
            print(
                f"early stop: validation NLL has not improved for {count(bad_epochs, 'epoch')}",
                file=stream,
                flush=True,
            )
        if not best_digest:  # a state saved before the digest was kept in it
            best_digest = weights_digest(
                [np.asarray(w.numpy()) for w in load_artifact(artifact_dir).keras_model().weights]
            )
        wall_s = wall_before + time.perf_counter() - t_run
        meta = metadata(wall_s)
        meta["stopped_early"] = stopped_early
        # the weights saved in the model directory (the best epoch's), not the last epoch's
        meta["final_weights_sha256"] = best_digest
        best = load_artifact(artifact_dir)
        with tempfile.TemporaryDirectory(prefix="musicgend-card-") as tmp:
            extra: dict[str, str | Path] = {}
            if lineage is not None:
                from musicgend.training.finetune import MODEL_CARD, model_card

                card = Path(tmp) / MODEL_CARD
                card.write_text(model_card(meta), encoding="utf-8")
                extra[MODEL_CARD] = card
            save_artifact(
                artifact_dir,
                best.keras_model(),
                best.vocab,
                best.config,
                best.pitch_prior,
                meta,
                export_tflite=True,
                extra_files=extra,
            )
        plot_loss_curve(history, best_epoch, artifact_dir / LOSS_CURVE_PNG)
    if chief:
        shutil.rmtree(state_target, ignore_errors=True)
    return TrainResult(
        out_dir if chief else None,
        history,
        best_epoch,
        best_val,
        stopped_early,
        wall_s,
        meta["windows_per_s"] or 0.0,
        best_digest,
        lineage,
    )


def load_model_config(name_or_path: str) -> ModelConfig:
    """A preset by name (``seed``, ``musicgend``, ``pitch``) or a ModelConfig JSON file."""
    path = Path(name_or_path)
    if path.suffix.lower() != ".json":
        return preset(name_or_path)
    try:
        return ModelConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: can't read ({exc.strerror or exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ConfigError(f"{path}: invalid model config at {loc}: {first['msg']}") from None


@contextlib.contextmanager
def out_dir_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``out_dir`` for a training run: a second run into the same
    directory is refused while this one lives (the kernel drops the lock when the process
    ends, however it ends). The lock file is removed at the end."""
    import fcntl

    target = out_dir.resolve()  # `--out .` locks the directory's own name
    lock_path = target.parent / f".{target.name}.lock"
    with contextlib.suppress(OSError):  # else os.open below says why
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise TrainingError(f"{out_dir}: can't create {lock_path} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = lock_path.read_text(encoding="ascii", errors="replace").strip() or "?"
            except OSError:  # it ended just now
                holder = "?"
            raise TrainingError(
                f"{out_dir}: another training writes there now (process {holder}); wait for "
                "it, or choose another --out"
            ) from None
        # the file may have been removed by a run that just ended: lock the one in place
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        os.close(fd)


def cli_train(out_dir: Path, resume: bool, given: dict[str, Any]) -> str:
    """The ``musicgend train`` command: options from the CLI (only those given), a summary."""
    explicit = set(given)
    values = dict(given)
    if values.get("keep_vocab") and values.get("base_model") is None and not resume:
        raise TrainingError("--keep-vocab is for fine-tuning: give the base model with --from")
    if values.get("base_model") is not None:
        if "config" in values:
            raise TrainingError("--config can't be combined with --from (the base model's is kept)")
        if not resume:
            from musicgend.training.finetune import DEFAULTS

            for name, value in DEFAULTS.items():
                values.setdefault(name, value)
    if "config" in values:
        values["config"] = load_model_config(values["config"])
    if "data_dir" not in values:
        if not resume:
            raise TrainingError("--data is required (unless --resume)")
        values["data_dir"] = Path(".")  # replaced by the saved run's data directory
    options = TrainOptions(out_dir=out_dir, **values)
    if resume:
        found = find_state(out_dir)
        if found is None:
            raise TrainingError(f"{out_dir}: no interrupted training to resume")
        saved = TrainOptions.from_json(read_state_info(found)["options"])
        options.epochs = int(given.get("epochs", saved.epochs))
        options.patience = int(given.get("patience", saved.patience))
        distributed = saved.distributed  # a resumed run keeps its settings
    else:
        distributed = options.distributed
    # workers of one distributed run share --out (only the chief writes it): no lock there
    lock = contextlib.nullcontext() if distributed else out_dir_lock(out_dir)
    with lock:
        result = train(options, resume=resume, explicit=explicit)
    where = result.out_dir if result.out_dir is not None else "(worker: nothing saved)"
    stop = ", stopped early" if result.stopped_early else ""
    if result.fine_tune is not None:
        ft = result.fine_tune
        where = (
            f"{where} (fine-tuned from {ft['base_model']}, "
            f"{count(ft['added_tokens'], 'chord')} added; "
            f"val NLL before {ft['val_nll_before']:.4f})"
        )
    return (
        f"best epoch {result.best_epoch}/{len(result.history)}{stop}: "
        f"val NLL {result.best_val_nll:.4f} nats/frame; {result.windows_per_s:.0f} windows/s; "
        f"{result.wall_s:.1f} s; weights sha256 {result.weights_sha256[:16]}; model {where}"
    )
