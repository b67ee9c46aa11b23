"""Every inference runtime gives Keras's probabilities; the TF-free ones never import TF."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from musicgend.errors import ModelError
from musicgend.model.artifact import load_artifact, save_artifact
from musicgend.model.runtime import RUNTIMES, choose_runtime, load_predictor
from tests.model.conftest import build_tiny, tiny_prior


def _windows(art, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(11)
    x = rng.integers(0, len(art.vocab), size=(n, art.config.window_frames), dtype=np.int32)
    x[0, :] = 1  # all silence, like a fresh window
    x[1, -3:] = x[1, -4]  # a held chord: the copy gate's case
    return x


@pytest.mark.tf
@pytest.mark.parametrize("tied", [False, True], ids=["dense-out", "tied-out"])
@pytest.mark.parametrize("copy_gate", [False, True], ids=["softmax", "copy-gate"])
def test_every_runtime_matches_keras(request, copy_gate, tied):
    fixture = "tiny_tied_artifacts" if tied else "tiny_artifacts"
    art = load_artifact(request.getfixturevalue(fixture)[copy_gate])
    assert bool(art.config.tied_output_dim) == tied
    x = _windows(art)
    reference = np.asarray(art.keras_model()(x, training=False))
    assert reference.shape == (len(x), len(art.vocab))
    for runtime in RUNTIMES:
        predictor = load_predictor(art, runtime)
        batch = predictor.predict_batch(x)
        assert batch.dtype == np.float32
        np.testing.assert_allclose(batch, reference, atol=1e-6, err_msg=runtime)
        one = predictor.predict(x[1])
        assert one.shape == (len(art.vocab),)
        np.testing.assert_allclose(one, reference[1], atol=1e-6, err_msg=runtime)
        np.testing.assert_allclose(one.sum(), 1.0, atol=1e-5)


@pytest.mark.tf
@pytest.mark.parametrize("name", ["seed", "musicgend"])
def test_numpy_runtime_matches_keras_on_the_seed_shape(tmp_path, name):
    """Full-size layers (3 × BiGRU 128, window 50; dense or tied output) with random weights."""
    from musicgend.model.bigru import build_model
    from musicgend.model.config import PRESETS
    from tests.model.conftest import randomize, tiny_vocab

    vocab, config = tiny_vocab(), PRESETS[name]
    model = build_model(len(vocab), config)
    randomize(model, seed=2, scale=0.1)
    path = save_artifact(tmp_path / "m", model, vocab, config, tiny_prior(), {})
    x = _windows(load_artifact(path), n=3)
    reference = np.asarray(model(x, training=False))
    for runtime in ("numpy", "litert"):
        out = load_predictor(path, runtime).predict_batch(x)
        np.testing.assert_allclose(out, reference, atol=1e-5, err_msg=runtime)


@pytest.mark.parametrize("runtime", ["numpy", "litert", "auto"])
def test_tf_free_runtimes_never_import_tensorflow(tiny_artifacts, runtime):
    code = (
        "import sys, numpy as np; from musicgend.model.runtime import load_predictor; "
        f"p = load_predictor({str(tiny_artifacts[True])!r}, {runtime!r}); "
        "p.predict(np.ones(p.window_frames, dtype=np.int32)); "
        "print(p.runtime, sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    name, imported = out.stdout.strip().split(" ", 1)
    assert imported == "[]"
    assert name == ("litert" if runtime == "auto" else runtime)


def test_auto_without_litert_export_is_numpy(tmp_path, tiny_artifacts):
    art = load_artifact(tiny_artifacts[False])
    assert choose_runtime(art) == "litert"
    model, vocab, config = build_tiny()
    path = save_artifact(
        tmp_path / "m", model, vocab, config, tiny_prior(), {}, export_tflite=False
    )
    assert choose_runtime(load_artifact(path)) == "numpy"
    assert load_predictor(path).runtime == "numpy"
    with pytest.raises(ModelError, match=r"no LiteRT export .*musicgend model export-litert"):
        load_predictor(path, "litert")


def test_bad_runtime_and_bad_windows(tiny_artifacts):
    with pytest.raises(ModelError, match=r"unknown runtime 'cuda'"):
        load_predictor(tiny_artifacts[False], "cuda")
    predictor = load_predictor(tiny_artifacts[False], "numpy")
    w = predictor.window_frames
    with pytest.raises(ValueError, match=r"shape \(12,\)"):
        predictor.predict(np.ones(w + 1, dtype=np.int32))
    with pytest.raises(ValueError, match=r"token ids must lie in"):
        predictor.predict(np.full(w, predictor.vocab_size, dtype=np.int32))
    with pytest.raises(ValueError, match=r"shape \(N, 12\)"):
        predictor.predict_batch(np.ones((2, 3), dtype=np.int32))
