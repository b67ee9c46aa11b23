"""Fast inference of a model artifact: one window → next-token probabilities
(for a per-pitch model, ``config.output = "pitch"``: the head's input vector, see
:mod:`musicgend.core.pitchhead`, whose own arrays every runtime takes from ``weights.npz``).
A window is ``window_frames`` token ids, or for a model reading pitches (``config.input =
"pitches"``) ``window_frames`` multi-hot rows of 128 (:class:`musicgend.core.window.WindowReader`
makes either from chords).

Runtimes (all give the same probabilities within float32 round-off; ``bench/inference.py``
measures them side by side):

``numpy``   pure NumPy forward pass from ``weights.npz`` (float16 weights are widened to
            float32 once, at load); never imports TensorFlow.
``litert``  the artifact's ``model.tflite`` in the ai-edge-litert interpreter (XNNPACK);
            never imports TensorFlow.
``tf``      ``tf.function`` around the Keras model (``tf-xla``: with ``jit_compile=True``).
``keras``   ``model.predict`` (slow per call; for reference).
``eager``   ``model(x)`` eagerly (slowest; for reference).
``auto``    ``litert`` when the artifact has a LiteRT export (and ai-edge-litert is
            installed), else ``numpy``; also where there is a GPU. On 2 CPU cores LiteRT and
            NumPy are within a few percent of each other and about 25× faster than
            ``model.predict``. One window per call doesn't pay on a GPU: the BiGRU is 300
            small sequential steps, each a kernel launch (``bench/gpu.py`` on an H100: the
            bundled model's XLA forward took 3.5 / 5.0 ms p50 / p99 per window, LiteRT 1.3 /
            1.4 ms on this project's 2-core AVX-512 CPU). ``tf`` and ``tf-xla`` use a GPU where
            TensorFlow sees one, and batched scoring (``musicgend evaluate``) does.

A predictor is not thread-safe: use it from one thread (the engine's inference worker).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from musicgend.core.pitchhead import PITCHES, PitchHead
from musicgend.errors import ModelError
from musicgend.model.artifact import Artifact, load_artifact

RuntimeName = Literal["auto", "numpy", "litert", "tf", "tf-xla", "keras", "eager"]
RUNTIMES: tuple[str, ...] = get_args(RuntimeName)
TF_RUNTIMES = frozenset({"tf", "tf-xla", "keras", "eager"})


class Predictor(ABC):
    """Next-token probabilities for windows of ``window_frames`` token ids (or pitch rows)."""

    runtime: str = ""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.window_frames = artifact.config.window_frames
        self.vocab_size = len(artifact.vocab)
        self.output_width = output_width(artifact)
        self.pitch_input = artifact.config.pitch_input
        self.window_shape: tuple[int, ...] = (
            (self.window_frames, PITCHES) if self.pitch_input else (self.window_frames,)
        )
        """One window: ``(W,)`` int ids or ``(W, 128)`` multi-hot rows."""

    def predict(self, window: np.ndarray) -> np.ndarray:
        """One window (:attr:`window_shape`) → probabilities ``(V,)`` (float32, sum 1), or a
        per-pitch model's head inputs ``(output_width,)``."""
        x = np.asarray(window)
        if x.shape != self.window_shape:
            raise ValueError(f"expected a window of shape {self.window_shape}, got {x.shape}")
        return self.predict_batch(x[None])[0]

    def predict_batch(self, windows: np.ndarray) -> np.ndarray:
        """Windows ``(N, *window_shape)`` → ``(N, output_width)`` float32 (probabilities)."""
        x = np.asarray(windows)
        if x.shape[1:] != self.window_shape:
            shape = ", ".join(map(str, self.window_shape))
            raise ValueError(f"expected windows of shape (N, {shape}), got {x.shape}")
        if self.pitch_input:
            return self._run(x.astype(np.float32, copy=False))
        if x.size and (x.min() < 0 or x.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in 0..{self.vocab_size - 1}")
        return self._run(x.astype(np.int32, copy=False))

    @abstractmethod
    def _run(self, x: np.ndarray) -> np.ndarray: ...


def output_width(artifact: Artifact) -> int:
    """What a model returns per window: the vocabulary size, or the per-pitch head's input
    width."""
    cfg = artifact.config
    return cfg.pitch_params_width if cfg.output == "pitch" else len(artifact.vocab)


def random_windows(artifact: Artifact, count: int, seed: int = 0) -> np.ndarray:
    """``count`` random windows of the kind the model reads (for benchmarks and checks):
    token ids 1..V-1, or rows of 0-4 random pitches in 36..83 (``input = "pitches"``)."""
    rng = np.random.default_rng(seed)
    frames = artifact.config.window_frames
    if not artifact.config.pitch_input:
        return rng.integers(1, len(artifact.vocab), size=(count, frames), dtype=np.int32)
    return random_pitch_rows(rng, count * frames).reshape(count, frames, PITCHES)


def random_pitch_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    """``(count, 128)`` float32 rows of 0-4 random pitches in 36..83 (duplicates merge)."""
    rows = np.zeros((count, PITCHES), dtype=np.float32)
    for row, size in zip(rows, rng.integers(0, 5, size=count), strict=True):
        row[rng.integers(36, 84, size=size)] = 1.0
    return rows


def pitch_head(artifact: Artifact) -> PitchHead | None:
    """The per-pitch head of a ``pitch`` model (from ``weights.npz``), else None."""
    if artifact.config.output != "pitch":
        return None
    return PitchHead.from_weights(artifact.weights)


# -- NumPy -----------------------------------------------------------------------------------


_BLAS_PREFIXES = ("scipy_openblas", "openblas")
_BLAS_SUFFIXES = ("64_", "")


def set_blas_threads(threads: int) -> bool:
    """Set the thread count of the OpenBLAS that NumPy loaded (process-wide).

    The NumPy forward pass is ~150 tiny matmuls per window: with more than one BLAS thread,
    every call wakes and joins helper threads, which costs far more than it saves, and on a
    busy machine (the daemon beside a synthesizer) it was 8× slower in our measurements.
    Returns False when no OpenBLAS is found (then nothing changes).
    """
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            libs = sorted({line.split()[-1] for line in maps if "openblas" in line.lower()})
    except OSError:
        return False
    for lib_path in libs:
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError:
            continue
        for prefix in _BLAS_PREFIXES:
            for suffix in _BLAS_SUFFIXES:
                fn = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if fn is not None:
                    fn(ctypes.c_int(threads))
                    return True
    return False


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class NumpyPredictor(Predictor):
    """Keras 3 BiGRU semantics in NumPy (``reset_after=True``, gates z, r, h).

    A tied output reuses the embedding matrix E: ``logits = (d @ W_proj + b_proj) @ E.T + b``.

    Each layer projects its whole input for both directions with one matmul; the forward and
    backward recurrences then advance together, one batched ``(2, N, U) @ (2, U, 3U)``
    matmul per step. ``blas_threads`` (default 1, see :func:`set_blas_threads`) is applied
    process-wide when the predictor is made; ``None`` leaves BLAS alone.
    """

    runtime = "numpy"

    def __init__(self, artifact: Artifact, blas_threads: int | None = 1) -> None:
        super().__init__(artifact)
        if blas_threads is not None:
            set_blas_threads(blas_threads)
        w = artifact.weights
        cfg = artifact.config
        self.units = cfg.gru_units
        self.alpha = np.float32(cfg.leaky_relu_alpha)
        self.embedding: np.ndarray | None = None if cfg.pitch_input else w["embedding"]
        self.input_projection: tuple[np.ndarray, np.ndarray] | None = None
        if cfg.pitch_input:  # x @ kernel + bias instead of an embedding lookup
            self.input_projection = (w["input_projection.kernel"], w["input_projection.bias"])
        self.layers: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for i in range(cfg.gru_layers):
            f, b = f"bigru_{i}.fwd", f"bigru_{i}.bwd"
            kernel = np.concatenate([w[f"{f}.kernel"], w[f"{b}.kernel"]], axis=1)
            in_bias = np.concatenate([w[f"{f}.bias"][0], w[f"{b}.bias"][0]])
            recurrent = np.stack([w[f"{f}.recurrent_kernel"], w[f"{b}.recurrent_kernel"]])
            rec_bias = np.stack([w[f"{f}.bias"][1], w[f"{b}.bias"][1]])[:, None, :]
            self.layers.append((kernel, in_bias, recurrent, rec_bias))
        self.dense = (w["dense.kernel"], w["dense.bias"])
        self.pitch_params: tuple[np.ndarray, np.ndarray] | None = None
        self.tied_projection: tuple[np.ndarray, np.ndarray] | None = None
        self.copy_gate: tuple[np.ndarray, np.ndarray] | None = None
        if cfg.output == "pitch":  # the head's inputs: d @ kernel + bias
            self.pitch_params = (w["pitch_params.kernel"], w["pitch_params.bias"])
            return
        if cfg.tied_output_dim:  # logits = (d @ W_proj + b_proj) @ E.T + b_out
            self.tied_projection = (w["tied_projection.kernel"], w["tied_projection.bias"])
            self.logits = (w["embedding"].T, w["logits.bias"])
        else:
            self.logits = (w["logits.kernel"], w["logits.bias"])
        if cfg.copy_gate:
            self.copy_gate = (w["copy_gate.kernel"], w["copy_gate.bias"])

    def _bigru(
        self, x: np.ndarray, layer: tuple[np.ndarray, ...], return_sequences: bool
    ) -> np.ndarray:
        kernel, in_bias, recurrent, rec_bias = layer
        n, steps, _ = x.shape
        u = self.units
        proj = (x.reshape(n * steps, -1) @ kernel + in_bias).reshape(n, steps, 2, 3 * u)
        # (steps, 2, n, 3u): at step t the forward direction reads t, the backward W-1-t.
        xs = np.stack([proj[:, :, 0], proj[:, ::-1, 1]], axis=0).transpose(2, 0, 1, 3).copy()
        h = np.zeros((2, n, u), dtype=np.float32)
        outs = np.empty((steps, 2, n, u), dtype=np.float32) if return_sequences else None
        for t in range(steps):
            hp = np.matmul(h, recurrent) + rec_bias
            xt = xs[t]
            zr = _sigmoid(xt[..., : 2 * u] + hp[..., : 2 * u])
            z, r = zr[..., :u], zr[..., u:]
            cand = np.tanh(xt[..., 2 * u :] + r * hp[..., 2 * u :])
            h = cand + z * (h - cand)
            if outs is not None:
                outs[t] = h
        if outs is None:
            return np.concatenate([h[0], h[1]], axis=-1)
        seq = np.concatenate([outs[:, 0], outs[::-1, 1]], axis=-1)  # (steps, n, 2u)
        return seq.transpose(1, 0, 2)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.input_projection is not None:
            h = x @ self.input_projection[0] + self.input_projection[1]
        else:
            assert self.embedding is not None
            h = self.embedding[x]
        for i, layer in enumerate(self.layers):
            h = self._bigru(h, layer, return_sequences=i < len(self.layers) - 1)
        d = h @ self.dense[0] + self.dense[1]
        d = np.where(d > 0, d, self.alpha * d)
        if self.pitch_params is not None:
            out = d @ self.pitch_params[0] + self.pitch_params[1]
            return out.astype(np.float32, copy=False)
        features = d
        if self.tied_projection is not None:
            features = d @ self.tied_projection[0] + self.tied_projection[1]
        logits = features @ self.logits[0] + self.logits[1]
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = e / e.sum(axis=-1, keepdims=True)
        if self.copy_gate is not None:
            gate = _sigmoid(d @ self.copy_gate[0] + self.copy_gate[1])
            probs *= 1.0 - gate
            probs[np.arange(len(x)), x[:, -1]] += gate[:, 0]
        return probs.astype(np.float32, copy=False)


# -- LiteRT ----------------------------------------------------------------------------------


class LiteRTPredictor(Predictor):
    """The artifact's ``model.tflite`` (batch 1) in ai-edge-litert; batches run row by row.

    It keeps the artifact without its float32 weight arrays (:meth:`Artifact.without_weights`):
    the interpreter has its own copy, and a daemon loaded from a directory would otherwise
    hold both (11 MB for the bundled model).
    """

    runtime = "litert"

    def __init__(self, artifact: Artifact, threads: int = 2) -> None:
        super().__init__(artifact.without_weights())
        path = artifact.tflite_path
        if path is None:
            raise ModelError(
                f"{artifact.path}: the model has no LiteRT export (model.tflite); add one "
                f"with `musicgend model export-litert {artifact.path}`, or use the numpy runtime"
            )
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ModelError(f"the litert runtime needs ai-edge-litert ({exc})") from None
        try:
            self._interp = Interpreter(model_path=str(path), num_threads=threads)
            self._interp.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"{path}: LiteRT can't load the model ({exc})") from None
        (inp,) = self._interp.get_input_details()
        (out,) = self._interp.get_output_details()
        if tuple(inp["shape"]) != (1, *self.window_shape) or tuple(out["shape"]) != (
            1,
            self.output_width,
        ):
            shape = ", ".join(map(str, self.window_shape))
            raise ModelError(
                f"{path}: LiteRT model maps {tuple(inp['shape'])} → {tuple(out['shape'])}, "
                f"expected (1, {shape}) → (1, {self.output_width})"
            )
        self._in, self._out = inp["index"], out["index"]

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((len(x), self.output_width), dtype=np.float32)
        for i in range(len(x)):
            self._interp.set_tensor(self._in, x[i : i + 1])
            self._interp.invoke()
            out[i] = self._interp.get_tensor(self._out)[0]
        return out


# -- TensorFlow / Keras ----------------------------------------------------------------------


class KerasPredictor(Predictor):
    """The Keras model itself: ``mode`` is ``predict``, ``eager``, ``tf`` or ``tf-xla``."""

    def __init__(self, artifact: Artifact, mode: str = "tf") -> None:
        super().__init__(artifact)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        self.runtime = {"predict": "keras"}.get(mode, mode)
        self.mode = mode
        self.model = artifact.keras_model()
        self._fn: Any = None
        if mode in ("tf", "tf-xla"):
            model = self.model
            self._fn = tf.function(
                lambda x: model(x, training=False),
                input_signature=[
                    tf.TensorSpec(
                        [None, *self.window_shape], tf.float32 if self.pitch_input else tf.int32
                    )
                ],
                jit_compile=mode == "tf-xla",
                reduce_retracing=True,
            )

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.mode == "predict":
            out = self.model.predict(x, verbose=0)
        elif self.mode == "eager":
            out = self.model(x, training=False)
        else:
            out = self._fn(x)
        return np.asarray(out, dtype=np.float32)


# -- choosing --------------------------------------------------------------------------------


def choose_runtime(artifact: Artifact) -> str:
    """What ``auto`` means for this artifact on this machine (see the module docstring)."""
    if artifact.tflite_path is not None:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError:
            return "numpy"
        return "litert"
    return "numpy"


def load_predictor(
    artifact_or_path: Artifact | str | Path, runtime: str = "auto", *, threads: int = 2
) -> Predictor:
    """A predictor for a model artifact (or its directory) on the given runtime."""
    if runtime not in RUNTIMES:
        raise ModelError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    artifact = (
        artifact_or_path
        if isinstance(artifact_or_path, Artifact)
        else load_artifact(artifact_or_path)
    )
    if runtime == "auto":
        runtime = choose_runtime(artifact)
    if runtime == "numpy":
        return NumpyPredictor(artifact)
    if runtime == "litert":
        return LiteRTPredictor(artifact, threads=threads)
    return KerasPredictor(artifact, {"keras": "predict"}.get(runtime, runtime))
