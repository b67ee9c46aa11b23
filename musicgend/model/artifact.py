"""A model artifact: one directory with everything a model needs, checked when loaded.

Files (all names fixed)::

    model.weights.h5   Keras weights (``model.save_weights``), for training / ``keras_model()``
    weights.npz        the same weights as plain NumPy arrays (stable names, see
                       :func:`weight_shapes`), for the TensorFlow-free NumPy runtime
    model.tflite       LiteRT export, batch 1 (optional: checkpoints may skip it)
    vocab.json         :meth:`Vocab.dumps`
    config.json        :class:`ModelConfig`
    pitch_prior.json   the 128 per-pitch probabilities of p_spell
    metadata.json      format/version, vocab hash and size, sha256 of every other file,
                       musicgend version, creation time, and the caller's ``training`` dict

:func:`save_artifact` writes into a temporary sibling directory and renames it into place,
so a reader never sees a half-written model; an existing model directory is replaced only
after the new one is complete. :func:`load_artifact` imports no TensorFlow: it checks every
file (presence, checksum, JSON, vocab hash, weight shapes against config and vocab) and
raises :class:`~musicgend.errors.ModelError` naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from musicgend import __version__
from musicgend.core.spelling import PitchPrior
from musicgend.core.vocab import Vocab
from musicgend.errors import ModelError, VocabError
from musicgend.model.config import ModelConfig

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

REQUIRED_FILES = (WEIGHTS_H5, WEIGHTS_NPZ, VOCAB_JSON, CONFIG_JSON, PITCH_PRIOR_JSON)
"""Files every artifact has besides ``metadata.json``; ``model.tflite`` is optional."""


# -- weights as NumPy arrays ----------------------------------------------------------------


def weight_shapes(config: ModelConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the arrays in ``weights.npz`` for a config and vocab size.

    GRU arrays follow Keras 3 (``reset_after=True``): kernel ``(in, 3U)`` and recurrent
    kernel ``(U, 3U)`` with gate columns in the order z, r, h; bias ``(2, 3U)`` (input bias,
    recurrent bias). A tied output (``tied_output_dim``) has no ``logits.kernel``: its
    logits are ``(h @ tied_projection.kernel + tied_projection.bias) @ embedding.T +
    logits.bias``.
    """
    u = config.gru_units
    shapes: dict[str, tuple[int, ...]] = {"embedding": (vocab_size, config.embed_dim)}
    width = config.embed_dim
    for i in range(config.gru_layers):
        for d in ("fwd", "bwd"):
            shapes[f"bigru_{i}.{d}.kernel"] = (width, 3 * u)
            shapes[f"bigru_{i}.{d}.recurrent_kernel"] = (u, 3 * u)
            shapes[f"bigru_{i}.{d}.bias"] = (2, 3 * u)
        width = 2 * u
    shapes["dense.kernel"] = (width, config.dense_units)
    shapes["dense.bias"] = (config.dense_units,)
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


def numpy_weights(model: keras.Model, config: ModelConfig) -> dict[str, np.ndarray]:
    """The weights of a :func:`~musicgend.model.bigru.build_model` network, by stable name."""
    out: dict[str, np.ndarray] = {}
    out["embedding"] = np.asarray(model.get_layer("embedding").get_weights()[0])
    for i in range(config.gru_layers):
        bidir = model.get_layer(f"bigru_{i}")
        for d, sub in (("fwd", bidir.forward_layer), ("bwd", bidir.backward_layer)):
            cell = sub.cell
            out[f"bigru_{i}.{d}.kernel"] = np.asarray(cell.kernel.numpy())
            out[f"bigru_{i}.{d}.recurrent_kernel"] = np.asarray(cell.recurrent_kernel.numpy())
            out[f"bigru_{i}.{d}.bias"] = np.asarray(cell.bias.numpy())
    dense = ("dense",) + (("tied_projection",) if config.tied_output_dim else ("logits",))
    for name in dense + (("copy_gate",) if config.copy_gate else ()):
        kernel, bias = model.get_layer(name).get_weights()
        out[f"{name}.kernel"] = np.asarray(kernel)
        out[f"{name}.bias"] = np.asarray(bias)
    if config.tied_output_dim:
        (out["logits.bias"],) = (np.asarray(w) for w in model.get_layer("logits").get_weights())
    return {k: v.astype(np.float32, copy=False) for k, v in out.items()}


# -- LiteRT export ---------------------------------------------------------------------------


def tflite_bytes(model: keras.Model, window_frames: int) -> bytes:
    """A LiteRT flatbuffer of ``model`` for one ``(1, window_frames)`` int32 window.

    Builtin ops only: the model is wrapped in a fixed-shape ``tf.function``, frozen, and
    converted from the concrete function (``from_keras_model`` would emit TensorList ops
    that the PyPI interpreter can't run).
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    @tf.function(input_signature=[tf.TensorSpec([1, window_frames], tf.int32, name="token_ids")])
    def serve(token_ids):
        return model(token_ids, training=False)

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
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


def save_artifact(
    out_dir: str | Path,
    model: keras.Model,
    vocab: Vocab,
    config: ModelConfig,
    pitch_prior: PitchPrior,
    metadata: Mapping[str, Any] | None = None,
    *,
    export_tflite: bool = True,
) -> Path:
    """Write a complete model directory at ``out_dir`` atomically and return its path.

    ``metadata`` (JSON-serialisable; e.g. data, split, epochs, losses) is stored under
    ``"training"`` in ``metadata.json``. ``export_tflite=False`` skips the LiteRT export
    (a few seconds) — meant for per-epoch checkpoints. An existing ``out_dir`` is replaced
    only if it is empty or a musicgend model directory; the old one is removed after the
    new one is in place.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_artifact_dir(out_dir):
        raise ModelError(
            f"{out_dir}: refusing to replace a directory that is not a musicgend model"
        )
    expected_vocab = model.output_shape[-1]
    if expected_vocab != len(vocab):
        raise ModelError(f"model outputs {expected_vocab} tokens but the vocab has {len(vocab)}")
    try:
        training = json.loads(json.dumps(dict(metadata or {})))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"training metadata is not JSON-serialisable: {exc}") from None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_weights(str(tmp / WEIGHTS_H5))
        _fsync(tmp / WEIGHTS_H5)
        with (tmp / WEIGHTS_NPZ).open("wb") as f:
            np.savez(f, **numpy_weights(model, config))  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        if export_tflite:
            with (tmp / TFLITE).open("wb") as f:
                f.write(tflite_bytes(model, config.window_frames))
                f.flush()
                os.fsync(f.fileno())
        _write_text(tmp / VOCAB_JSON, vocab.dumps())
        _write_text(tmp / CONFIG_JSON, config.model_dump_json(indent=1))
        _write_text(tmp / PITCH_PRIOR_JSON, json.dumps({"probs": pitch_prior.to_list()}))
        files = {
            name: _sha256(tmp / name) for name in (*REQUIRED_FILES, TFLITE) if (tmp / name).exists()
        }
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "musicgend_version": __version__,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "vocab_hash": vocab.hash,
            "vocab_size": len(vocab),
            "config_name": config.name,
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

    @property
    def training(self) -> dict[str, Any]:
        """The training metadata the trainer stored (data, split, epochs, …)."""
        value = self.metadata.get("training", {})
        return value if isinstance(value, dict) else {}

    @property
    def tflite_path(self) -> Path | None:
        """``model.tflite`` if this artifact has a LiteRT export, else ``None``."""
        return self.path / TFLITE if TFLITE in self.metadata["files"] else None

    def keras_model(self) -> keras.Model:
        """Build the Keras network and load ``model.weights.h5`` (imports TensorFlow)."""
        from musicgend.model.bigru import build_model

        model = build_model(len(self.vocab), self.config)
        try:
            model.load_weights(str(self.path / WEIGHTS_H5))
        except Exception as exc:  # h5py / Keras raise many types on bad files
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(
                f"{self.path / WEIGHTS_H5}: can't load Keras weights ({reason})"
            ) from None
        return model


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
    return meta


def _check_files(path: Path, files: Mapping[str, str]) -> None:
    for name in REQUIRED_FILES:
        if name not in files:
            raise ModelError(f"{path / METADATA_JSON}: no checksum for required file {name}")
    for name, digest in files.items():
        if "/" in name or name.startswith("."):
            raise ModelError(f"{path / METADATA_JSON}: bad file name {name!r}")
        file = path / name
        if not file.is_file():
            raise ModelError(f"{file}: missing")
        try:
            actual = _sha256(file)
        except OSError as exc:
            raise ModelError(f"{file}: can't read ({exc.strerror or exc})") from None
        if actual != digest:
            raise ModelError(f"{file}: checksum mismatch (file corrupt or replaced)")


def _load_npz(file: Path, config: ModelConfig, vocab_size: int) -> dict[str, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k], dtype=np.float32) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelError(f"{file}: can't load weights ({exc})") from None
    expected = weight_shapes(config, vocab_size)
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise ModelError(f"{file}: missing weight arrays {', '.join(missing)}")
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise ModelError(f"{file}: unexpected weight arrays {', '.join(extra)} for config.json")
    emb_rows = arrays["embedding"].shape[0]
    if emb_rows != vocab_size:
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


def load_artifact(path: str | Path) -> Artifact:
    """Load and check a model directory (no TensorFlow). Raises :class:`ModelError`."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model directory")
    if not path.is_dir():
        raise ModelError(f"{path}: not a directory (a model is a directory)")
    meta = _load_metadata(path)
    _check_files(path, meta["files"])

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

    weights = _load_npz(path / WEIGHTS_NPZ, config, len(vocab))
    return Artifact(path, config, vocab, prior, meta, weights)


def export_tflite(path: str | Path) -> Path:
    """Add (or redo) the LiteRT export of an existing artifact, atomically. Needs TensorFlow."""
    art = load_artifact(path)
    model = art.keras_model()
    return save_artifact(
        art.path, model, art.vocab, art.config, art.pitch_prior, art.training, export_tflite=True
    )
