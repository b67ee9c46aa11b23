"""LiteRT export with dynamic-range int8 weights (`musicgend model export-litert --quantize`);
the LiteRT predictor holds no float32 weight arrays besides the interpreter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from musicgend.cli import app
from musicgend.errors import ModelError
from musicgend.model.artifact import (
    METADATA_JSON,
    TFLITE,
    compact_artifact,
    load_artifact,
    save_artifact,
)
from musicgend.model.runtime import load_predictor
from tests.model.conftest import randomize, tiny_config, tiny_prior, tiny_vocab

pytestmark = pytest.mark.tf


def _int8_tensors(tflite: Path) -> int:
    """int8 tensors in every subgraph (the GRU loops' bodies are subgraphs of their own)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(tflite))
    int8 = 9  # tflite schema TensorType.INT8
    return sum(1 for graph in model.subgraphs for t in graph.tensors if t.type == int8)


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory) -> Path:
    """A float32 model with 32 GRU units: its larger matrices (≥ 1024 elements, the
    converter's threshold) get quantised; the tiny models' would all stay float."""
    from musicgend.model.bigru import build_model

    vocab = tiny_vocab()
    config = tiny_config(copy_gate=True, tied=True).model_copy(update={"gru_units": 32})
    model = build_model(len(vocab), config)
    randomize(model, seed=5, scale=0.15)
    return save_artifact(
        tmp_path_factory.mktemp("int8") / "m", model, vocab, config, tiny_prior(), {"epochs": 0}
    )


def _windows(vocab_size: int, width: int) -> np.ndarray:
    x = np.random.default_rng(3).integers(0, vocab_size, size=(8, width), dtype=np.int32)
    x[1, -4:] = x[1, -5]  # a held chord: the copy gate's case
    return x


def test_export_litert_int8_round_trip(small_artifact, tmp_path):
    path = tmp_path / "m"
    shutil.copytree(small_artifact, path)
    float_bytes = (path / TFLITE).read_bytes()
    assert load_artifact(path).litert_quantize == "none"
    assert json.loads((path / METADATA_JSON).read_text())["litert_quantize"] == "none"
    runner = CliRunner()

    result = runner.invoke(app, ["model", "export-litert", str(path), "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    assert "with LiteRT export, int8 dynamic-range" in result.output
    art = load_artifact(path)
    assert art.litert_quantize == "int8"
    assert json.loads((path / METADATA_JSON).read_text())["litert_quantize"] == "int8"
    int8_bytes = (path / TFLITE).read_bytes()
    assert len(int8_bytes) < 0.7 * len(float_bytes)  # small arrays stay float32
    assert _int8_tensors(path / TFLITE) > 0

    # The daemon's and evaluate's loader take it; probabilities stay close to float32's.
    predictor = load_predictor(path)
    assert predictor.runtime == "litert"
    x = _windows(len(art.vocab), art.config.window_frames)
    quantised = predictor.predict_batch(x)
    exact = load_predictor(art, "numpy").predict_batch(x)
    np.testing.assert_allclose(quantised.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(quantised, exact, atol=2e-2)
    assert float(np.abs(quantised - exact).max()) > 1e-5  # the float export: ≤ 1e-6
    # evaluate scores what the daemon plays: the int8 export, not the float weights
    from musicgend.training.evaluate import scoring_runtime

    assert scoring_runtime(art) == "litert"

    # compact keeps the int8 export as it is; with new weights it re-exports it as int8.
    assert compact_artifact(path).litert_quantize == "int8"
    assert (path / TFLITE).read_bytes() == int8_bytes
    result = runner.invoke(app, ["model", "compact", str(path), "--float16"])
    assert result.exit_code == 0, result.output
    assert "float16 weights, with LiteRT export, int8 dynamic-range" in result.output
    assert load_artifact(path).litert_quantize == "int8"
    assert _int8_tensors(path / TFLITE) > 0

    # export-litert without --quantize builds the float32 export again.
    result = runner.invoke(app, ["model", "export-litert", str(path)])
    assert result.exit_code == 0, result.output
    art = load_artifact(path)
    assert art.litert_quantize == "none" and _int8_tensors(path / TFLITE) == 0
    assert scoring_runtime(art) == "tf"  # float export: batched TensorFlow, same probabilities
    np.testing.assert_allclose(
        load_predictor(art, "litert").predict_batch(x),
        load_predictor(art, "numpy").predict_batch(x),
        atol=1e-6,
    )


def test_bad_quantisation_is_a_clear_error(small_artifact, tmp_path):
    path = tmp_path / "m"
    shutil.copytree(small_artifact, path)
    before = (path / TFLITE).read_bytes()
    result = CliRunner().invoke(app, ["model", "export-litert", str(path), "--quantize", "int4"])
    assert result.exit_code == 1
    assert isinstance(result.exception, ModelError)
    assert "unknown LiteRT quantisation 'int4'; choose one of none, int8" in str(result.exception)
    with pytest.raises(ModelError, match="needs the LiteRT export kept"):
        compact_artifact(path, litert=False, litert_quantize="int8")
    assert (path / TFLITE).read_bytes() == before

    meta = json.loads((path / METADATA_JSON).read_text())
    meta["litert_quantize"] = "int2"
    (path / METADATA_JSON).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"metadata.json: litert_quantize 'int2' is not one of"):
        load_artifact(path)


def test_litert_predictor_keeps_no_weight_arrays(small_artifact):
    art = load_artifact(small_artifact)
    predictor = load_predictor(art, "litert")
    assert predictor.artifact.weights == {}
    assert predictor.artifact.vocab is art.vocab and predictor.artifact.config == art.config
    assert art.weights  # the caller's artifact is left as it was
    with pytest.raises(ModelError, match="loaded without its weight arrays"):
        predictor.artifact.keras_model()
