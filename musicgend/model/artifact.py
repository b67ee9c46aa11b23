"""A model artifact: one directory with everything a model needs, checked when loaded.

Files (all names fixed)::

    weights.npz        THE weights: plain NumPy arrays with stable names (see
                       :func:`weight_shapes`), float32 or float16 (``weights_dtype`` in the
                       metadata); every runtime loads them as float32, Keras included
                       (:meth:`Artifact.keras_model` sets them by name)
    model.tflite       LiteRT export of those weights, batch 1 (optional); float32, or
                       with dynamic-range int8 weights (``litert_quantize`` in the metadata)
    vocab.json         :meth:`Vocab.dumps`
    config.json        :class:`ModelConfig`
    pitch_prior.json   the 128 per-pitch probabilities of p_spell
    memory.json        the piece memory's weights (optional, per-pitch models;
                       :mod:`musicgend.core.memory`), tuned for these very weights
                       (``weights_sha256``) by ``musicgend model tune-memory``
    metadata.json      format/version, vocab hash and size, weights dtype, the LiteRT
                       export's quantisation, sha256 of every other file, musicgend version,
                       creation time (``created_utc``; a rewrite by :func:`compact_artifact`
                       keeps it and adds ``rewritten_utc``), and the caller's ``training``
                       dict

Extra files (e.g. ``loss_curve.png``) may sit beside them; :func:`save_artifact` carries
the ones it is given (``extra_files``) and lists their checksums too. Artifacts written
before the npz became the only weights file also hold ``model.weights.h5`` (the same
arrays for Keras): it is checked like any listed file but never read, and
:func:`compact_artifact` drops it.

A float16 artifact *is* its rounded weights: loading one and saving it again gives the
same ``weights.npz`` bit for bit, and its LiteRT export is built from the rounded values,
so all runtimes agree with each other as closely as for float32.

:func:`save_artifact` writes into a temporary sibling directory and renames it into place,
so a reader never sees a half-written model; an existing model directory is replaced only
after the new one is complete. :func:`load_artifact` imports no TensorFlow: it checks every
file (presence, checksum, JSON, vocab hash, weight shapes against config and vocab) and
raises :class:`~musicgend.errors.ModelError` naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from pydantic import ValidationError

from musicgend import __version__
from musicgend.core.memory import MemoryWeights
from musicgend.core.pitchhead import PITCHES
from musicgend.core.spelling import PitchPrior
from musicgend.core.vocab import Vocab
from musicgend.errors import ModelError, VocabError
from musicgend.model.config import ModelConfig

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    import keras

FORMAT = "musicgend-model"
FORMAT_VERSION = 1

WEIGHTS_H5 = "model.weights.h5"
WEIGHTS_NPZ = "weights.npz"
TFLITE = "model.tflite"
VOCAB_JSON = "vocab.json"
CONFIG_JSON = "config.json"
PITCH_PRIOR_JSON = "pitch_prior.json"
METADATA_JSON = "metadata.json"
MEMORY_JSON = "memory.json"

REQUIRED_FILES = (WEIGHTS_NPZ, VOCAB_JSON, CONFIG_JSON, PITCH_PRIOR_JSON)
"""Files every artifact has besides ``metadata.json``; ``model.tflite`` and
``memory.json`` are optional."""
OWN_FILES = frozenset({*REQUIRED_FILES, TFLITE, MEMORY_JSON, METADATA_JSON, WEIGHTS_H5})
"""Names an artifact writes itself (``model.weights.h5``: older artifacts only)."""

WeightsDtype = Literal["float32", "float16"]
WEIGHTS_DTYPES: tuple[str, ...] = get_args(WeightsDtype)

LitertQuantize = Literal["none", "int8"]
"""How ``model.tflite`` holds the weights: ``none`` float32; ``int8`` dynamic-range
quantisation (weight matrices int8 with one scale per output channel, activations float32;
XNNPACK quantises each activation per call and multiplies in int8). On the bundled model
``int8`` took 0.6× the time per call with 1 thread and changed the test NLL by 0.01 %; its
probabilities differ from the float runtimes by up to a few 1e-2 (README, "Where the time
goes")."""
LITERT_QUANTIZE: tuple[str, ...] = get_args(LitertQuantize)


# -- weights as NumPy arrays ----------------------------------------------------------------


def weight_shapes(config: ModelConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the arrays in ``weights.npz`` for a config and vocab size.

    GRU arrays follow Keras 3 (``reset_after=True``): kernel ``(in, 3U)`` and recurrent
    kernel ``(U, 3U)`` with gate columns in the order z, r, h; bias ``(2, 3U)`` (input bias,
    recurrent bias). A tied output (``tied_output_dim``) has no ``logits.kernel``: its
    logits are ``(h @ tied_projection.kernel + tied_projection.bias) @ embedding.T +
    logits.bias``. A model reading pitches (``input = "pitches"``) has an
    ``input_projection`` ``(128, embed_dim)`` instead of the ``embedding``.
    """
    u = config.gru_units
    shapes: dict[str, tuple[int, ...]] = (
        {
            "input_projection.kernel": (PITCHES, config.embed_dim),
            "input_projection.bias": (config.embed_dim,),
        }
        if config.pitch_input
        else {"embedding": (vocab_size, config.embed_dim)}
    )
    width = config.embed_dim
    for i in range(config.gru_layers):
        for d in ("fwd", "bwd"):
            shapes[f"bigru_{i}.{d}.kernel"] = (width, 3 * u)
            shapes[f"bigru_{i}.{d}.recurrent_kernel"] = (u, 3 * u)
            shapes[f"bigru_{i}.{d}.bias"] = (2, 3 * u)
        width = 2 * u
    shapes["dense.kernel"] = (width, config.dense_units)
    shapes["dense.bias"] = (config.dense_units,)
    if config.output == "pitch":
        shapes["pitch_params.kernel"] = (config.dense_units, config.pitch_params_width)
        shapes["pitch_params.bias"] = (config.pitch_params_width,)
        shapes["pitch_head.w_in"] = (PITCHES, config.pitch_units)
        shapes["pitch_head.v_out"] = (PITCHES, config.pitch_units)
        shapes["pitch_head.bias"] = (PITCHES,)
        return shapes
    if config.tied_output_dim:
        # logits = (h @ tied_projection.kernel + tied_projection.bias) @ embedding.T + logits.bias
        shapes["tied_projection.kernel"] = (config.dense_units, config.tied_output_dim)
        shapes["tied_projection.bias"] = (config.tied_output_dim,)
    else:
        shapes["logits.kernel"] = (config.dense_units, vocab_size)
    shapes["logits.bias"] = (vocab_size,)
    if config.copy_gate:
        shapes["copy_gate.kernel"] = (config.dense_units, 1)
        shapes["copy_gate.bias"] = (1,)
    return shapes


def _weight_variables(model: keras.Model, config: ModelConfig) -> list[tuple[str, Any]]:
    """``(npz name, Keras variable)`` for a :func:`~musicgend.model.bigru.build_model` network."""
    pairs: list[tuple[str, Any]] = []
    if config.pitch_input:
        layer = model.get_layer("input_projection")
        pairs += [("input_projection.kernel", layer.kernel), ("input_projection.bias", layer.bias)]
    else:
        pairs.append(("embedding", model.get_layer("embedding").embeddings))
    for i in range(config.gru_layers):
        bidir = model.get_layer(f"bigru_{i}")
        for d, sub in (("fwd", bidir.forward_layer), ("bwd", bidir.backward_layer)):
            cell = sub.cell
            pairs.append((f"bigru_{i}.{d}.kernel", cell.kernel))
            pairs.append((f"bigru_{i}.{d}.recurrent_kernel", cell.recurrent_kernel))
            pairs.append((f"bigru_{i}.{d}.bias", cell.bias))
    if config.output == "pitch":
        for name in ("dense", "pitch_params"):
            layer = model.get_layer(name)
            pairs.append((f"{name}.kernel", layer.kernel))
            pairs.append((f"{name}.bias", layer.bias))
        head = model.get_layer("pitch_head")
        pairs += [
            ("pitch_head.w_in", head.w_in),
            ("pitch_head.v_out", head.v_out),
            ("pitch_head.bias", head.bias),
        ]
        return pairs
    dense = ("dense",) + (("tied_projection",) if config.tied_output_dim else ("logits",))
    for name in dense + (("copy_gate",) if config.copy_gate else ()):
        layer = model.get_layer(name)
        pairs.append((f"{name}.kernel", layer.kernel))
        pairs.append((f"{name}.bias", layer.bias))
    if config.tied_output_dim:
        pairs.append(("logits.bias", model.get_layer("logits").bias))
    return pairs


def numpy_weights(model: keras.Model, config: ModelConfig) -> dict[str, np.ndarray]:
    """The weights of a :func:`~musicgend.model.bigru.build_model` network, by stable name."""
    return {
        name: np.asarray(var.numpy(), dtype=np.float32)
        for name, var in _weight_variables(model, config)
    }


def set_numpy_weights(
    model: keras.Model, config: ModelConfig, arrays: Mapping[str, np.ndarray], source: str = ""
) -> None:
    """The inverse of :func:`numpy_weights`: set every weight of ``model`` from ``arrays``.

    Every Keras weight must get exactly one array of its shape and every array must be used,
    else :class:`ModelError` (naming ``source``, e.g. the npz file) and nothing is changed.
    Arrays are cast to float32.
    """
    where = f"{source}: " if source else ""
    pairs = _weight_variables(model, config)
    names = [name for name, _ in pairs]
    by_var = {id(var): name for name, var in pairs}
    unmapped = [v.path for v in model.weights if id(v) not in by_var]
    if unmapped or len(by_var) != len(pairs) or len(pairs) != len(model.weights):
        raise ModelError(
            f"{where}the Keras network's weights don't map one-to-one onto weight arrays"
            + (f" (no array for {', '.join(unmapped)})" if unmapped else "")
        )
    missing = sorted(set(names) - set(arrays))
    if missing:
        raise ModelError(f"{where}missing weight arrays {', '.join(missing)}")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise ModelError(f"{where}unexpected weight arrays {', '.join(extra)}")
    values = []
    for name, var in pairs:
        value = np.asarray(arrays[name], dtype=np.float32)
        if value.shape != tuple(var.shape):
            raise ModelError(
                f"{where}{name} has shape {value.shape}, the network needs {tuple(var.shape)}"
            )
        values.append(value)
    for (_, var), value in zip(pairs, values, strict=True):
        var.assign(value)


def keras_model_from_arrays(
    config: ModelConfig, vocab_size: int, arrays: Mapping[str, np.ndarray], source: str = ""
) -> keras.Model:
    """Build the network (imports Keras and its backend, TensorFlow unless ``KERAS_BACKEND``
    names another) and set its weights from ``arrays``."""
    from musicgend.model.bigru import build_model

    model = build_model(vocab_size, config)
    set_numpy_weights(model, config, arrays, source)
    return model


def round_weights(
    arrays: Mapping[str, np.ndarray], weights_dtype: WeightsDtype
) -> dict[str, np.ndarray]:
    """The arrays as stored in ``weights.npz`` for ``weights_dtype`` (float16: rounded)."""
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ModelError(
            f"unknown weights dtype {weights_dtype!r}; choose one of {', '.join(WEIGHTS_DTYPES)}"
        )
    dtype = np.dtype(weights_dtype)
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        stored = np.asarray(value).astype(dtype)
        if not np.all(np.isfinite(stored)):
            raise ModelError(f"weight array {name} has values outside the {weights_dtype} range")
        out[name] = stored
    return out


# -- LiteRT export ---------------------------------------------------------------------------


def tflite_bytes(
    model: keras.Model, config: ModelConfig, quantize: LitertQuantize = "none"
) -> bytes:
    """A LiteRT flatbuffer of ``model`` for one window: ``(1, window_frames)`` int32 token
    ids, or ``(1, window_frames, 128)`` float32 pitch rows (``input = "pitches"``).

    Builtin ops only: the model is wrapped in a fixed-shape ``tf.function``, frozen, and
    converted from the concrete function (``from_keras_model`` would emit TensorList ops
    that the PyPI interpreter can't run). The weights are exported as they are in
    ``model``: for a float16 artifact, pass a model holding the rounded weights
    (:func:`save_artifact` does). They stay float32 in the flatbuffer: with float16
    weights (``Optimize.DEFAULT`` + ``supported_types=[tf.float16]``, half the size) LiteRT's
    CPU kernels gave probabilities up to 1e-5 off the other runtimes.

    ``quantize="int8"``: dynamic-range quantisation (``Optimize.DEFAULT`` without a
    representative dataset; see :data:`LitertQuantize`). The converter leaves arrays of fewer
    than 1024 elements float32, so a very small model's export stays all float.
    """
    if quantize not in LITERT_QUANTIZE:
        raise ModelError(
            f"unknown LiteRT quantisation {quantize!r}; choose one of {', '.join(LITERT_QUANTIZE)}"
        )
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = (
        tf.TensorSpec([1, config.window_frames, PITCHES], tf.float32, name="pitches")
        if config.pitch_input
        else tf.TensorSpec([1, config.window_frames], tf.int32, name="token_ids")
    )

    @tf.function(input_signature=[spec])
    def serve(window):
        return model(window, training=False)

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return bytes(converter.convert())
    except Exception as exc:  # the converter raises many types
        raise ModelError(f"LiteRT export failed: {exc}") from None


# -- saving ------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_text(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_artifact_dir(path: Path) -> bool:
    try:
        data = json.loads((path / METADATA_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` with fixed member order and timestamps: equal arrays, equal bytes."""
    with path.open("wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(
                    buf, np.ascontiguousarray(arrays[name]), allow_pickle=False
                )
                zf.writestr(
                    zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue()
                )
        f.flush()
        os.fsync(f.fileno())


def _check_extra_files(extra_files: Mapping[str, str | Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name, source in extra_files.items():
        if not name or "/" in name or name.startswith(".") or name in OWN_FILES:
            raise ModelError(f"extra file name {name!r}: not allowed in a model directory")
        source = Path(source)
        if not source.is_file():
            raise ModelError(f"{source}: extra file missing or not a regular file")
        out[name] = source
    return out


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_artifact_dir(out_dir):
        raise ModelError(
            f"{out_dir}: refusing to replace a directory that is not a musicgend model"
        )


def save_artifact(
    out_dir: str | Path,
    model: keras.Model,
    vocab: Vocab,
    config: ModelConfig,
    pitch_prior: PitchPrior,
    metadata: Mapping[str, Any] | None = None,
    *,
    weights_dtype: WeightsDtype = "float32",
    export_tflite: bool = True,
    litert_quantize: LitertQuantize = "none",
    extra_files: Mapping[str, str | Path] | None = None,
) -> Path:
    """Write a complete model directory at ``out_dir`` atomically and return its path.

    ``metadata`` (JSON-serialisable; e.g. data, split, epochs, losses) is stored under
    ``"training"`` in ``metadata.json``. ``weights_dtype="float16"`` stores the weights
    rounded to float16 (half the size); the LiteRT export is then built from the rounded
    weights. ``export_tflite=False`` skips the LiteRT export (a few seconds; ``auto`` then
    picks the NumPy runtime); ``litert_quantize="int8"`` quantises it (see
    :data:`LitertQuantize`). ``extra_files`` maps names in the model directory to files
    to copy there (e.g. ``{"loss_curve.png": path}``; the sources may lie in ``out_dir``
    itself); their checksums are listed too. An existing ``out_dir`` is replaced only if it
    is empty or a musicgend model directory; the old one is removed after the new one is
    in place.
    """
    out_dir = Path(out_dir)
    _check_target(out_dir)
    expected_vocab = None if config.pitch_input else model.get_layer("embedding").input_dim
    if expected_vocab is not None and expected_vocab != len(vocab):
        raise ModelError(f"the model knows {expected_vocab} tokens but the vocab has {len(vocab)}")
    stored = round_weights(numpy_weights(model, config), weights_dtype)
    tflite: bytes | None = None
    if export_tflite:
        if weights_dtype != "float32":
            model = keras_model_from_arrays(config, len(vocab), stored)
        tflite = tflite_bytes(model, config, litert_quantize)
    return _write_artifact(
        out_dir,
        stored,
        vocab,
        config,
        pitch_prior,
        metadata,
        weights_dtype=weights_dtype,
        tflite=tflite,
        litert_quantize=litert_quantize,
        extra_files=extra_files or {},
    )


def _write_artifact(
    out_dir: Path,
    stored: Mapping[str, np.ndarray],
    vocab: Vocab,
    config: ModelConfig,
    pitch_prior: PitchPrior,
    metadata: Mapping[str, Any] | None,
    *,
    weights_dtype: WeightsDtype,
    tflite: bytes | None,
    litert_quantize: LitertQuantize,
    extra_files: Mapping[str, str | Path],
    created_utc: str | None = None,
    memory: Mapping[str, Any] | None = None,
) -> Path:
    """Write the files into a temporary sibling of ``out_dir`` and rename it into place.

    ``created_utc``: the creation time of the model a rewrite keeps (the metadata then
    records the rewrite as ``rewritten_utc``); ``None`` for a new model, created now.
    ``memory``: the contents of ``memory.json``; its ``weights_sha256`` must be the new
    ``weights.npz``'s (else nothing is replaced).
    """
    _check_target(out_dir)
    extras = _check_extra_files(extra_files)
    try:
        training = json.loads(json.dumps(dict(metadata or {})))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"training metadata is not JSON-serialisable: {exc}") from None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_npz(tmp / WEIGHTS_NPZ, stored)
        if memory is not None:
            if memory.get("weights_sha256") != _sha256(tmp / WEIGHTS_NPZ):
                raise ModelError(
                    f"{out_dir}: the piece memory was tuned for other weights; "
                    f"run `musicgend model tune-memory {out_dir}` again"
                )
            _write_text(tmp / MEMORY_JSON, json.dumps(dict(memory), indent=1))
        if tflite is not None:
            with (tmp / TFLITE).open("wb") as f:
                f.write(tflite)
                f.flush()
                os.fsync(f.fileno())
        _write_text(tmp / VOCAB_JSON, vocab.dumps())
        _write_text(tmp / CONFIG_JSON, config.model_dump_json(indent=1))
        _write_text(tmp / PITCH_PRIOR_JSON, json.dumps({"probs": pitch_prior.to_list()}))
        for name, source in extras.items():
            shutil.copyfile(source, tmp / name)
            _fsync(tmp / name)
        files = {
            name: _sha256(tmp / name)
            for name in (*REQUIRED_FILES, TFLITE, MEMORY_JSON, *sorted(extras))
            if (tmp / name).exists()
        }
        now = datetime.now(UTC).isoformat(timespec="seconds")
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "musicgend_version": __version__,
            "created_utc": created_utc or now,
            **({"rewritten_utc": now} if created_utc else {}),
            "vocab_hash": vocab.hash,
            "vocab_size": len(vocab),
            "config_name": config.name,
            "weights_dtype": weights_dtype,
            **({"litert_quantize": litert_quantize} if tflite is not None else {}),
            "files": files,
            "training": training,
        }
        _write_text(tmp / METADATA_JSON, json.dumps(meta, indent=1))
        os.chmod(tmp, 0o755)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an old ``target`` is moved aside first, removed last."""
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        old.rmdir()
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():
            log.warning("couldn't remove the previous copy %s: remove it by hand", old)


# -- loading -----------------------------------------------------------------------------------


@dataclass
class Artifact:
    """A checked model directory. Weights as arrays are loaded; Keras only on demand."""

    path: Path
    config: ModelConfig
    vocab: Vocab
    pitch_prior: PitchPrior
    metadata: dict[str, Any]
    weights: dict[str, np.ndarray] = field(repr=False)
    damaged: tuple[tuple[str, str], ...] = ()
    """Listed files found missing or damaged that the caller tolerated (name, problem)."""
    memory_file: dict[str, Any] | None = None
    """``memory.json`` as read (weights, how they were tuned), if the model has one."""

    @property
    def memory(self) -> MemoryWeights | None:
        """The piece memory's weights (checked when loaded), or None."""
        if self.memory_file is None:
            return None
        return MemoryWeights.from_json(self.memory_file["weights"])

    @property
    def training(self) -> dict[str, Any]:
        """The training metadata the trainer stored (data, split, epochs, …)."""
        value = self.metadata.get("training", {})
        return value if isinstance(value, dict) else {}

    @property
    def tflite_path(self) -> Path | None:
        """``model.tflite`` if this artifact has a LiteRT export, else ``None``."""
        return self.path / TFLITE if TFLITE in self.metadata["files"] else None

    @property
    def weights_dtype(self) -> WeightsDtype:
        """How ``weights.npz`` stores the weights (``weights`` are float32 either way)."""
        value: WeightsDtype = self.metadata.get("weights_dtype", "float32")
        return value

    @property
    def litert_quantize(self) -> LitertQuantize:
        """How ``model.tflite`` holds its weights (``none`` for artifacts without the key)."""
        value: LitertQuantize = self.metadata.get("litert_quantize", "none")
        return value

    @property
    def extra_files(self) -> dict[str, Path]:
        """Regular files in the directory that the artifact doesn't write itself."""
        return {
            p.name: p
            for p in sorted(self.path.iterdir())
            if p.name not in OWN_FILES and not p.name.startswith(".") and p.is_file()
        }

    def without_weights(self) -> Artifact:
        """This artifact without its weight arrays (~4 bytes a parameter), for a runtime that
        reads only ``model.tflite``; its :meth:`keras_model` then raises ModelError. A
        per-pitch head's own arrays (``pitch_head.*``, 0.1 MB) stay: they run in NumPy."""
        head = {k: v for k, v in self.weights.items() if k.startswith("pitch_head.")}
        return replace(self, weights=head)

    def keras_model(self) -> keras.Model:
        """Build the Keras network with the weights of ``weights.npz`` (imports Keras and its
        backend, see :func:`keras_model_from_arrays`)."""
        if "dense.kernel" not in self.weights:
            raise ModelError(f"{self.path}: loaded without its weight arrays (LiteRT only)")
        return keras_model_from_arrays(
            self.config, len(self.vocab), self.weights, str(self.path / WEIGHTS_NPZ)
        )


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ModelError(f"{path}: missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"{path}: can't read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None


def _load_metadata(path: Path) -> dict[str, Any]:
    meta = _read_json(path / METADATA_JSON)
    where = path / METADATA_JSON
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{where}: not a musicgend model (expected format {FORMAT!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ModelError(f"{where}: unsupported model format version {meta.get('version')!r}")
    files = meta.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise ModelError(f"{where}: 'files' must map file names to sha256 checksums")
    for key in ("vocab_hash", "vocab_size"):
        if key not in meta:
            raise ModelError(f"{where}: missing key {key!r}")
    dtype = meta.setdefault("weights_dtype", "float32")  # older artifacts: float32
    if dtype not in WEIGHTS_DTYPES:
        raise ModelError(
            f"{where}: weights_dtype {dtype!r} is not one of {', '.join(WEIGHTS_DTYPES)}"
        )
    quantize = meta.setdefault("litert_quantize", "none")  # older artifacts: float32
    if quantize not in LITERT_QUANTIZE:
        raise ModelError(
            f"{where}: litert_quantize {quantize!r} is not one of {', '.join(LITERT_QUANTIZE)}"
        )
    return meta


def _check_files(
    path: Path, files: Mapping[str, str], tolerate: Collection[str] = ()
) -> list[tuple[str, str]]:
    """Check every listed file; returns (name, problem) of those in ``tolerate`` that are
    missing or don't match (the others raise :class:`ModelError`)."""
    for name in REQUIRED_FILES:
        if name not in files:
            raise ModelError(f"{path / METADATA_JSON}: no checksum for required file {name}")
    damaged: list[tuple[str, str]] = []
    for name, digest in files.items():
        if "/" in name or name.startswith("."):
            raise ModelError(f"{path / METADATA_JSON}: bad file name {name!r}")
        file = path / name
        problem = None
        if not file.is_file():
            problem = "missing"
        else:
            try:
                if _sha256(file) != digest:
                    problem = "checksum mismatch (file corrupt or replaced)"
            except OSError as exc:
                problem = f"can't read ({exc.strerror or exc})"
        if problem is None:
            continue
        if name not in tolerate:
            hint = ""
            if name == TFLITE:
                hint = (
                    f"; `musicgend model export-litert {path}` rebuilds it, "
                    f"`musicgend model compact {path} --no-litert` drops it"
                )
            elif name == MEMORY_JSON:
                hint = (
                    f"; `musicgend model tune-memory {path} --data DIR` tunes it again, "
                    f"`musicgend model compact {path}` drops it"
                )
            elif name not in REQUIRED_FILES:
                hint = f"; `musicgend model compact {path}` takes it off the model's file list"
            raise ModelError(f"{file}: {problem}{hint}")
        damaged.append((name, problem))
    return damaged


def read_npz(file: Path) -> dict[str, np.ndarray]:
    """Every array in an ``.npz`` archive, never unpickling anything.

    Raises :class:`OSError` when the file can't be opened and :class:`ValueError` with a plain
    reason when it is not an intact ``.npz`` archive of arrays (NumPy's own texts for random bytes
    talk about pickles; a bare ``.npy`` or a non-array member would slip through).
    """
    with file.open("rb") as f:
        if not zipfile.is_zipfile(f):
            size = f.seek(0, os.SEEK_END)
            raise ValueError("empty file (0 bytes)" if size == 0 else "not an .npz archive")
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as data:
                arrays = {}
                for name in data.files:
                    try:
                        value = data[name]
                    except ValueError as exc:  # e.g. an array of Python objects
                        raise ValueError(f"{name!r}: {exc}") from None
                    if not isinstance(value, np.ndarray):
                        raise ValueError(f"{name!r} is not a NumPy array")
                    arrays[name] = value
        except ValueError:
            raise
        except Exception as exc:  # zipfile, zlib and the .npy reader raise many types
            raise ValueError(f"corrupt archive ({str(exc) or type(exc).__name__})") from None
    return arrays


def _load_npz(
    file: Path, config: ModelConfig, vocab_size: int, weights_dtype: str
) -> dict[str, np.ndarray]:
    try:
        raw = read_npz(file)
    except OSError as exc:
        raise ModelError(f"{file}: can't read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ModelError(f"{file}: not a readable weights file ({exc})") from None
    for name, value in raw.items():
        if value.dtype != np.dtype(weights_dtype):
            raise ModelError(
                f"{file}: {name} is {value.dtype}, metadata.json says weights_dtype {weights_dtype}"
            )
    arrays = {k: v.astype(np.float32) for k, v in raw.items()}
    expected = weight_shapes(config, vocab_size)
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise ModelError(f"{file}: missing weight arrays {', '.join(missing)}")
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise ModelError(f"{file}: unexpected weight arrays {', '.join(extra)} for config.json")
    emb_rows = arrays["embedding"].shape[0] if "embedding" in arrays else None
    if emb_rows is not None and emb_rows != vocab_size:
        raise ModelError(
            f"{file}: weights are for a vocabulary of {emb_rows} tokens, "
            f"but vocab.json has {vocab_size}"
        )
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise ModelError(
                f"{file}: {name} has shape {arrays[name].shape}, config.json implies {shape}"
            )
        if not np.all(np.isfinite(arrays[name])):
            raise ModelError(f"{file}: {name} holds NaN or infinite values")
    return arrays


def load_artifact(path: str | Path, *, tolerate: Collection[str] = ()) -> Artifact:
    """Load and check a model directory (no TensorFlow). Raises :class:`ModelError`.

    ``tolerate``: listed files that may be missing or damaged (a rewrite that rebuilds or
    drops them); such a file is left out of the artifact's ``metadata["files"]`` and named in
    :attr:`Artifact.damaged`."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model directory")
    if not path.is_dir():
        raise ModelError(f"{path}: not a directory (a model is a directory)")
    meta = _load_metadata(path)
    damaged = _check_files(path, meta["files"], tolerate)
    meta["files"] = {k: v for k, v in meta["files"].items() if k not in dict(damaged)}

    try:
        config = ModelConfig.model_validate(_read_json(path / CONFIG_JSON))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ModelError(f"{path / CONFIG_JSON}: invalid config at {loc}: {first['msg']}") from None

    try:
        vocab = Vocab.loads((path / VOCAB_JSON).read_text(encoding="utf-8"))
    except (VocabError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path / VOCAB_JSON}: {exc}") from None
    if vocab.hash != meta["vocab_hash"]:
        raise ModelError(
            f"{path / VOCAB_JSON}: vocabulary hash {vocab.hash[:12]}… does not match the "
            f"model's {str(meta['vocab_hash'])[:12]}… (wrong vocab for these weights)"
        )
    if len(vocab) != meta["vocab_size"]:
        raise ModelError(
            f"{path / VOCAB_JSON}: {len(vocab)} tokens, metadata says {meta['vocab_size']}"
        )
    if vocab.fs != config.fs:
        raise ModelError(f"{path / VOCAB_JSON}: fs={vocab.fs} but config.json says fs={config.fs}")

    prior_data = _read_json(path / PITCH_PRIOR_JSON)
    probs = prior_data.get("probs") if isinstance(prior_data, dict) else None
    if (
        not isinstance(probs, list)
        or len(probs) != 128
        or not all(isinstance(p, int | float) and 0.0 <= p <= 1.0 for p in probs)
    ):
        raise ModelError(f"{path / PITCH_PRIOR_JSON}: expected 'probs': 128 numbers in [0, 1]")
    prior = PitchPrior(probs)

    weights = _load_npz(path / WEIGHTS_NPZ, config, len(vocab), meta["weights_dtype"])
    memory = _load_memory(path, config, meta["files"])
    return Artifact(path, config, vocab, prior, meta, weights, tuple(damaged), memory)


def _load_memory(
    path: Path, config: ModelConfig, files: Mapping[str, str]
) -> dict[str, Any] | None:
    if MEMORY_JSON not in files:
        return None
    file = path / MEMORY_JSON
    data = _read_json(file)
    if config.output != "pitch":
        raise ModelError(f"{file}: a piece memory needs a per-pitch model (config output 'pitch')")
    if not isinstance(data, dict):
        raise ModelError(f"{file}: expected a JSON object")
    try:
        MemoryWeights.from_json(data.get("weights"))
    except ValueError as exc:
        raise ModelError(f"{file}: {exc}") from None
    if data.get("weights_sha256") != files[WEIGHTS_NPZ]:
        raise ModelError(
            f"{file}: tuned for other weights than {WEIGHTS_NPZ}; "
            f"run `musicgend model tune-memory {path}` again"
        )
    return data


@dataclass(frozen=True)
class CompactResult:
    """What :func:`compact_artifact` did."""

    path: Path
    bytes_before: int
    bytes_after: int
    weights_dtype: WeightsDtype
    litert: bool
    litert_quantize: LitertQuantize = "none"
    notes: tuple[str, ...] = ()
    """Damaged files met: rebuilt, dropped or carried as they were."""

    def summary(self) -> str:
        litert = "no LiteRT export"
        if self.litert:
            litert = "with LiteRT export" + (
                ", int8 dynamic-range" if self.litert_quantize == "int8" else ""
            )
        notes = "".join(f"; {note}" for note in self.notes)
        return (
            f"{self.path}: {_mb(self.bytes_before)} → {_mb(self.bytes_after)} "
            f"({self.weights_dtype} weights, {litert}){notes}"
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def compact_artifact(
    path: str | Path,
    *,
    weights_dtype: WeightsDtype | None = None,
    litert: bool | None = None,
    litert_quantize: LitertQuantize | None = None,
    memory: Mapping[str, Any] | None = None,
) -> CompactResult:
    """Rewrite a model directory in place, atomically, as the current format writes it.

    ``weights_dtype``: ``None`` keeps the stored dtype; ``"float16"`` rounds the weights.
    ``litert``: ``None`` keeps a LiteRT export if there is one, ``True`` (re-)exports it,
    ``False`` drops it. ``litert_quantize``: ``None`` keeps the export's quantisation,
    else the export is built (again) that way (with ``litert=False``: an error). A legacy
    ``model.weights.h5`` is dropped; every other file in the directory (e.g.
    ``loss_curve.png``) is kept, the training metadata and ``created_utc`` too (the rewrite's
    time goes to ``rewritten_utc``). TensorFlow is imported only when
    a LiteRT export must be built (added, or its weights or quantisation changed).
    ``memory``: a new ``memory.json`` (:func:`musicgend.training.memory.tune_memory`);
    otherwise the piece memory is kept while the weights stay as they are, and dropped
    (with a note) when they are rounded to float16.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # rewrite the model the link points to; the link stays
    meta_files = _load_metadata(path)["files"] if path.is_dir() else {}
    # a rewrite may meet a damaged extra (e.g. loss_curve.png) or the LiteRT export it is
    # about to rebuild or drop: those are carried as they are, rebuilt or dropped
    tolerate = {name for name in meta_files if name not in OWN_FILES} | {WEIGHTS_H5, MEMORY_JSON}
    if litert is not None:
        tolerate.add(TFLITE)
    art = load_artifact(path, tolerate=tolerate)
    _check_rewritable(art.path)
    odd = sorted(
        p.name
        for p in art.path.iterdir()
        if p.name not in OWN_FILES and p.name not in art.extra_files
    )
    if odd:  # directories, hidden files, …: a rewrite would lose them
        raise ModelError(f"{art.path}: can't carry {', '.join(odd)} over; move them out first")
    before = _dir_bytes(art.path)
    dtype: WeightsDtype = weights_dtype or art.weights_dtype
    if dtype == "float32" and art.weights_dtype == "float16":
        raise ModelError(
            f"{art.path}: the weights are float16; widening them to float32 would only "
            "double the size"
        )
    if memory is not None and art.config.output != "pitch":
        raise ModelError(
            f"{art.path}: a piece memory needs a per-pitch model (config output 'pitch')"
        )
    if litert is False and litert_quantize is not None:
        raise ModelError(f"{art.path}: a LiteRT quantisation needs the LiteRT export kept")
    if litert_quantize is not None and litert_quantize not in LITERT_QUANTIZE:
        raise ModelError(
            f"unknown LiteRT quantisation {litert_quantize!r}; "
            f"choose one of {', '.join(LITERT_QUANTIZE)}"
        )
    stored = round_weights(art.weights, dtype)
    old = art.tflite_path
    want_litert = (old is not None or litert_quantize is not None) if litert is None else litert
    quantize: LitertQuantize = litert_quantize or art.litert_quantize
    tflite: bytes | None = None
    if want_litert:
        if (
            litert is None
            and old is not None
            and dtype == art.weights_dtype
            and quantize == art.litert_quantize
        ):
            tflite = old.read_bytes()  # built from these very weights, this very way
        else:
            model = keras_model_from_arrays(art.config, len(art.vocab), stored)
            tflite = tflite_bytes(model, art.config, quantize)
    notes = [_damage_note(name, problem, tflite is not None) for name, problem in art.damaged]
    if memory is None and art.memory_file is not None:
        if dtype == art.weights_dtype:
            memory = art.memory_file
        else:
            notes.append(
                f"{MEMORY_JSON} dropped (tuned for the {art.weights_dtype} weights; "
                f"`musicgend model tune-memory {art.path}` tunes it again)"
            )
    _write_artifact(
        art.path,
        stored,
        art.vocab,
        art.config,
        art.pitch_prior,
        art.training,
        weights_dtype=dtype,
        tflite=tflite,
        litert_quantize=quantize,
        extra_files=art.extra_files,
        created_utc=art.metadata.get("created_utc"),
        memory=memory,
    )
    load_artifact(art.path)
    return CompactResult(
        art.path,
        before,
        _dir_bytes(art.path),
        dtype,
        tflite is not None,
        quantize,
        tuple(notes),
    )


def _damage_note(name: str, problem: str, litert: bool) -> str:
    if name == TFLITE:
        return f"{name} {'rebuilt' if litert else 'dropped'} ({problem})"
    if name == MEMORY_JSON:
        return f"{name} dropped ({problem}; `musicgend model tune-memory` tunes it again)"
    if problem == "missing":
        return f"{name} taken off the file list (missing)"
    return f"{name} kept as it is now ({problem})"


def _check_rewritable(path: Path) -> None:
    """A model directory is rewritten beside itself and renamed into place: refuse one the
    owner made read-only, or whose parent can't be written, before any work."""
    if not path.stat().st_mode & stat.S_IWUSR or not os.access(path, os.W_OK):
        raise ModelError(f"{path}: the model directory is read-only (make it writable first)")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ModelError(
            f"{path}: can't write in {path.parent} (the model is rewritten beside itself)"
        )


def export_tflite(path: str | Path, quantize: LitertQuantize = "none") -> Path:
    """Add (or redo) the LiteRT export of an existing artifact, atomically. Needs TensorFlow."""
    return compact_artifact(path, litert=True, litert_quantize=quantize).path
