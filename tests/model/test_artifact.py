"""Artifact save → load round trip, and a clear ModelError for every kind of bad artifact."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from musicgend.core.vocab import Vocab
from musicgend.errors import ModelError
from musicgend.model.artifact import (
    METADATA_JSON,
    TFLITE,
    WEIGHTS_H5,
    WEIGHTS_NPZ,
    load_artifact,
    numpy_weights,
    save_artifact,
    set_numpy_weights,
    weight_shapes,
)
from musicgend.model.config import ModelConfig
from musicgend.model.runtime import NumpyPredictor
from tests.model.conftest import build_tiny, tiny_prior

pytestmark = pytest.mark.tf


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def _rehash(path: Path, name: str) -> None:
    """Make metadata.json's checksum agree with a tampered file (corruption past the hash)."""
    meta = json.loads((path / METADATA_JSON).read_text())
    meta["files"][name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    (path / METADATA_JSON).write_text(json.dumps(meta))


def _window(vocab_size: int, n: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, size=(n, width), dtype=np.int32)


@pytest.mark.parametrize("tied", [False, True], ids=["dense-out", "tied-out"])
@pytest.mark.parametrize("copy_gate", [False, True], ids=["softmax", "copy-gate"])
def test_round_trip_gives_identical_probabilities(tmp_path, copy_gate, tied):
    model, vocab, config = build_tiny(copy_gate, seed=3, tied=tied)
    path = save_artifact(
        tmp_path / "m", model, vocab, config, tiny_prior(), {"epochs": 2}, export_tflite=False
    )
    art = load_artifact(path)
    assert art.config == config
    assert art.vocab.tokens == vocab.tokens
    assert np.allclose(art.pitch_prior.probs, tiny_prior().probs)
    assert art.training == {"epochs": 2}
    assert art.metadata["vocab_hash"] == vocab.hash
    assert art.tflite_path is None
    x = _window(len(vocab), 4, config.window_frames)
    expected = np.asarray(model(x, training=False))
    again = np.asarray(art.keras_model()(x, training=False))
    assert np.array_equal(expected, again)


def test_tied_output_shares_the_embedding_matrix(tmp_path):
    """One embedding matrix (no output kernel), and the tie survives save → load."""
    model, vocab, config = build_tiny(copy_gate=True, seed=5, tied=True)
    shapes = weight_shapes(config, len(vocab))
    assert "logits.kernel" not in shapes
    assert shapes["tied_projection.kernel"] == (config.dense_units, config.embed_dim)
    assert model.count_params() == sum(int(np.prod(s)) for s in shapes.values())
    arrays = numpy_weights(model, config)
    assert {k: v.shape for k, v in arrays.items()} == shapes

    path = save_artifact(
        tmp_path / "m", model, vocab, config, tiny_prior(), {}, export_tflite=False
    )
    art = load_artifact(path)
    loaded = art.keras_model()
    embedding = loaded.get_layer("embedding")
    (matrix,) = embedding.get_weights()
    embedding.set_weights([matrix + np.linspace(-1.0, 1.0, matrix.size).reshape(matrix.shape)])
    # Only the embedding layer changed; NumPy reads E for input and output alike, so Keras
    # agrees with it only if its output layer reads the same (loaded, then edited) matrix.
    art.weights = numpy_weights(loaded, config)
    x = _window(len(vocab), 3, config.window_frames, seed=1)
    expected = NumpyPredictor(art).predict_batch(x)
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), expected, atol=1e-6)


def test_tied_output_dim_must_equal_embed_dim():
    with pytest.raises(ValueError, match=r"tied_output_dim \(6\) must equal embed_dim \(8\)"):
        ModelConfig(embed_dim=8, tied_output_dim=6)
    assert ModelConfig().tied_output_dim == 0  # the seed has a plain Dense output


def test_config_and_weights_disagree_on_the_tied_output(tiny_artifacts, tmp_path):
    path = _copy(tiny_artifacts[False], tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["tied_output_dim"] = config["embed_dim"]
    (path / "config.json").write_text(json.dumps(config))
    _rehash(path, "config.json")
    with pytest.raises(ModelError, match=r"weights.npz: missing weight arrays tied_projection"):
        load_artifact(path)
    config["tied_output_dim"] = config["embed_dim"] + 1
    (path / "config.json").write_text(json.dumps(config))
    _rehash(path, "config.json")
    with pytest.raises(ModelError, match=r"config.json: invalid config .*must equal embed_dim"):
        load_artifact(path)


def test_saved_artifact_has_every_file_and_checksums(tiny_artifacts):
    path = tiny_artifacts[True]
    meta = json.loads((path / METADATA_JSON).read_text())
    assert meta["format"] == "musicgend-model"
    assert meta["weights_dtype"] == "float32"
    assert set(meta["files"]) == {
        WEIGHTS_NPZ,
        TFLITE,
        "vocab.json",
        "config.json",
        "pitch_prior.json",
    }
    for name, digest in meta["files"].items():
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == digest
    assert load_artifact(path).tflite_path == path / TFLITE


def test_save_replaces_an_existing_model_and_leaves_no_temp_dirs(tmp_path):
    model, vocab, config = build_tiny(seed=1)
    target = tmp_path / "m"
    save_artifact(target, model, vocab, config, tiny_prior(), {"run": 1}, export_tflite=False)
    save_artifact(target, model, vocab, config, tiny_prior(), {"run": 2}, export_tflite=False)
    assert load_artifact(target).training == {"run": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_save_refuses_to_replace_a_foreign_directory(tmp_path):
    model, vocab, config = build_tiny()
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.txt").write_text("do not delete")
    with pytest.raises(ModelError, match="refusing to replace"):
        save_artifact(target, model, vocab, config, tiny_prior(), {}, export_tflite=False)
    assert (target / "thesis.txt").read_text() == "do not delete"


def test_save_rejects_a_vocab_of_the_wrong_size(tmp_path):
    model, _, config = build_tiny()
    small = Vocab.from_counts({"e": 3, "60": 2})
    with pytest.raises(ModelError, match="vocab has 3"):
        save_artifact(tmp_path / "m", model, small, config, tiny_prior(), {}, export_tflite=False)


def test_missing_directory_and_not_a_directory(tmp_path):
    with pytest.raises(ModelError, match="no such model directory"):
        load_artifact(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="not a directory"):
        load_artifact(tmp_path / "file")


@pytest.mark.parametrize("name", [WEIGHTS_NPZ, "vocab.json", "config.json", TFLITE])
def test_missing_file(tiny_artifacts, tmp_path, name):
    path = _copy(tiny_artifacts[False], tmp_path)
    (path / name).unlink()
    with pytest.raises(ModelError, match=rf"{name}: missing"):
        load_artifact(path)


def test_not_a_model_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"metadata.json: missing"):
        load_artifact(tmp_path / "empty")


def test_corrupt_metadata_json(tiny_artifacts, tmp_path):
    path = _copy(tiny_artifacts[False], tmp_path)
    (path / METADATA_JSON).write_text('{"format": "musicgend-model", ')
    with pytest.raises(ModelError, match=r"metadata.json: not valid JSON"):
        load_artifact(path)


def test_truncated_weights_fail_the_checksum(tiny_artifacts, tmp_path):
    path = _copy(tiny_artifacts[False], tmp_path)
    data = (path / WEIGHTS_NPZ).read_bytes()
    (path / WEIGHTS_NPZ).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=rf"{WEIGHTS_NPZ}: checksum mismatch"):
        load_artifact(path)


def test_keras_weights_are_set_by_name_one_to_one(tiny_tied_artifacts):
    """The npz is the only weights file: every Keras weight gets exactly one array."""
    art = load_artifact(tiny_tied_artifacts[True])
    assert not (art.path / WEIGHTS_H5).exists()
    model = art.keras_model()
    for name, value in numpy_weights(model, art.config).items():
        assert np.array_equal(value, art.weights[name]), name
    before = [np.array(w) for w in model.get_weights()]
    missing = {k: v for k, v in art.weights.items() if k != "logits.bias"}
    with pytest.raises(ModelError, match=r"w.npz: missing weight arrays logits.bias"):
        set_numpy_weights(model, art.config, missing, "w.npz")
    with pytest.raises(ModelError, match=r"unexpected weight arrays logits.kernel"):
        set_numpy_weights(model, art.config, {**art.weights, "logits.kernel": np.zeros(3)})
    wrong = {**art.weights, "dense.bias": np.zeros(art.config.dense_units + 1)}
    with pytest.raises(ModelError, match=r"dense.bias has shape \(11,\), the network needs"):
        set_numpy_weights(model, art.config, wrong)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_legacy_h5_artifact_still_loads(tiny_artifacts, tmp_path):
    """Older artifacts list a model.weights.h5 beside the npz: checked, never needed."""
    path = _copy(tiny_artifacts[False], tmp_path)
    art = load_artifact(path)
    art.keras_model().save_weights(str(path / WEIGHTS_H5))
    _rehash(path, WEIGHTS_H5)
    meta = json.loads((path / METADATA_JSON).read_text())
    del meta["weights_dtype"]  # not recorded before float16 existed
    (path / METADATA_JSON).write_text(json.dumps(meta))
    legacy = load_artifact(path)
    assert legacy.weights_dtype == "float32"
    x = _window(len(art.vocab), 2, art.config.window_frames)
    assert np.array_equal(legacy.keras_model()(x), art.keras_model()(x))
    (path / WEIGHTS_H5).write_bytes(b"truncated")
    with pytest.raises(ModelError, match=rf"{WEIGHTS_H5}: checksum mismatch"):
        load_artifact(path)


def test_npz_dtype_must_match_the_metadata(tiny_artifacts, tmp_path):
    path = _copy(tiny_artifacts[False], tmp_path)
    meta = json.loads((path / METADATA_JSON).read_text())
    meta["weights_dtype"] = "float16"
    (path / METADATA_JSON).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"weights.npz: \S+ is float32, metadata.json says"):
        load_artifact(path)
    meta["weights_dtype"] = "int8"
    (path / METADATA_JSON).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"weights_dtype 'int8' is not one of float32, float16"):
        load_artifact(path)


def _npy_bytes(value: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, value)
    return buf.getvalue()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _flip_last_byte_of_first_member(data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    end = start + info.compress_size - 1
    return data[:end] + bytes([data[end] ^ 0xFF]) + data[end + 1 :]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda good: np.random.default_rng(0).bytes(4000), r"not an \.npz archive"),
        (lambda good: b"PK\x03\x04 not really a zip", r"not an \.npz archive"),
        (lambda good: b"", r"empty file \(0 bytes\)"),
        (lambda good: good[: len(good) // 2], r"not an \.npz archive"),
        (lambda good: _npy_bytes(np.zeros(3, np.float32)), r"not an \.npz archive"),
        (lambda good: _zip_bytes({"embedding.npy": b"hello"}), r"'embedding' is not a NumPy"),
        (lambda good: _zip_bytes({"x.npy": _npy_bytes(np.array([{}]))}), r"'x': Object arrays"),
        (_flip_last_byte_of_first_member, r"corrupt archive \(Bad CRC-32"),
    ],
    ids=["random", "zip-magic", "empty", "half", "bare-npy", "not-array", "objects", "bad-crc"],
)
def test_corrupt_npz_with_matching_checksum(tiny_artifacts, tmp_path, make, reason):
    """Past the checksum, a weights file that is no intact npz of arrays says so plainly."""
    path = _copy(tiny_artifacts[False], tmp_path)
    (path / WEIGHTS_NPZ).write_bytes(make((path / WEIGHTS_NPZ).read_bytes()))
    _rehash(path, WEIGHTS_NPZ)
    with pytest.raises(ModelError, match=rf"{WEIGHTS_NPZ}: not a readable weights file") as info:
        load_artifact(path)
    assert re.search(reason, str(info.value)), str(info.value)
    assert "pickled" not in str(info.value)


def test_corrupt_config_json(tiny_artifacts, tmp_path):
    path = _copy(tiny_artifacts[False], tmp_path)
    (path / "config.json").write_text('{"gru_units": -3}')
    _rehash(path, "config.json")
    with pytest.raises(ModelError, match=r"config.json: invalid config at gru_units"):
        load_artifact(path)


def test_vocab_hash_mismatch(tiny_artifacts, tmp_path):
    """A vocab.json from another model (valid on its own) is caught by the hash."""
    path = _copy(tiny_artifacts[False], tmp_path)
    vocab = load_artifact(path).vocab
    other = Vocab(vocab.tokens[:2] + vocab.tokens[3:] + vocab.tokens[2:3], vocab.counts)
    (path / "vocab.json").write_text(other.dumps())
    _rehash(path, "vocab.json")
    with pytest.raises(ModelError, match=r"vocab.json: vocabulary hash .* does not match"):
        load_artifact(path)


def test_vocab_size_does_not_match_weights(tiny_artifacts, tmp_path):
    """Weights for another vocabulary size behind a self-consistent vocab and metadata."""
    path = _copy(tiny_artifacts[False], tmp_path)
    art = load_artifact(path)
    bigger = Vocab((*art.vocab.tokens, "100"), (*art.vocab.counts, 2))
    (path / "vocab.json").write_text(bigger.dumps())
    meta = json.loads((path / METADATA_JSON).read_text())
    meta["vocab_hash"], meta["vocab_size"] = bigger.hash, len(bigger)
    (path / METADATA_JSON).write_text(json.dumps(meta))
    _rehash(path, "vocab.json")
    with pytest.raises(ModelError, match=r"weights are for a vocabulary of \d+ tokens"):
        load_artifact(path)


def test_edited_vocab_json_is_caught(tiny_artifacts, tmp_path):
    path = _copy(tiny_artifacts[False], tmp_path)
    data = json.loads((path / "vocab.json").read_text())
    data["tokens"][2], data["tokens"][3] = data["tokens"][3], data["tokens"][2]
    (path / "vocab.json").write_text(json.dumps(data))
    _rehash(path, "vocab.json")
    with pytest.raises(ModelError, match=r"vocab.json: vocabulary hash does not match its tokens"):
        load_artifact(path)


def test_loading_imports_no_tensorflow(tiny_artifacts):
    code = (
        "import sys; from musicgend.model.artifact import load_artifact; "
        f"a = load_artifact({str(tiny_artifacts[True])!r}); "
        "assert a.weights['embedding'].shape[0] == len(a.vocab); "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
