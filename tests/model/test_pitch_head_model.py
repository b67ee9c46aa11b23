"""Per-pitch models (``output: "pitch"``): config rules, the training loss against the
NumPy head, the artifact round trip and every runtime, the head surviving a LiteRT-only load."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from musicgend.core.musicstats import piano_roll
from musicgend.core.pitchhead import PITCHES
from musicgend.model.artifact import load_artifact, save_artifact, weight_shapes
from musicgend.model.config import PRESETS, ModelConfig
from musicgend.model.runtime import RUNTIMES, load_predictor, output_width, pitch_head
from tests.model.conftest import build_tiny_pitch, tiny_prior


def test_the_pitch_head_has_its_own_copy_gate_and_no_softmax() -> None:
    with pytest.raises(ValidationError, match="own copy gate"):
        ModelConfig(output="pitch", copy_gate=True)
    with pytest.raises(ValidationError, match="own copy gate"):
        ModelConfig(output="pitch", embed_dim=8, tied_output_dim=8)
    shapes = weight_shapes(PRESETS["pitch"], 100)
    assert shapes["pitch_params.kernel"] == (256, 128 + PITCHES + 1)
    assert shapes["pitch_head.w_in"] == shapes["pitch_head.v_out"] == (PITCHES, 128)
    assert not any(name.startswith(("logits", "copy_gate")) for name in shapes)


@pytest.mark.tf
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_training_loss_is_the_numpy_heads_log_probability(backend, monkeypatch) -> None:
    """On TensorFlow the loss sums the pitches below with TF's exclusive cumsum; on other
    backends (``bench/gpu.py`` trains on JAX) with a padded cumsum in Keras ops. The second
    form is run here on TensorFlow tensors by naming another backend."""
    import keras
    import tensorflow as tf

    monkeypatch.setattr(keras.backend, "backend", lambda: backend)

    from musicgend.model.artifact import numpy_weights
    from musicgend.model.bigru import pitch_log_prob

    model, vocab, config = build_tiny_pitch(seed=1)
    head = pitch_head_from(numpy_weights(model, config))
    rng = np.random.default_rng(2)
    x = rng.integers(0, len(vocab), size=(6, config.window_frames)).astype(np.int32)
    out = np.asarray(model(x, training=False))
    chords = piano_roll([{60, 64, 67}, {61}, set(), {60, 64, 67}, {50, 90}, {62}])
    prev = piano_roll([{60, 64, 67}, {60}, set(), {59}, {50, 90}, {62}])
    tf_lp = pitch_log_prob(
        model.get_layer("pitch_head"),
        tf.constant(out),
        tf.constant(prev, tf.float32),
        tf.constant(chords, tf.float32),
    ).numpy()
    np.testing.assert_allclose(tf_lp, head.log_prob(out, prev, chords), rtol=1e-5, atol=1e-4)


def pitch_head_from(arrays):
    from musicgend.core.pitchhead import PitchHead

    return PitchHead.from_weights(arrays)


@pytest.mark.tf
def test_round_trip_every_runtime_and_a_litert_only_load(tmp_path) -> None:
    model, vocab, config = build_tiny_pitch(seed=3)
    path = save_artifact(tmp_path / "m", model, vocab, config, tiny_prior(), {})
    art = load_artifact(path)
    assert art.config == config
    assert output_width(art) == config.pitch_units + PITCHES + 1
    x = np.random.default_rng(4).integers(0, len(vocab), (5, config.window_frames))
    reference = np.asarray(model(x.astype(np.int32), training=False))
    for runtime in RUNTIMES:
        out = load_predictor(art, runtime).predict_batch(x)
        np.testing.assert_allclose(out, reference, atol=2e-5, err_msg=runtime)
    lite = load_predictor(art, "litert")
    assert "embedding" not in lite.artifact.weights  # the interpreter has its own copy
    head = pitch_head(lite.artifact)  # but the head runs in NumPy and is kept
    assert head is not None and head.units == config.pitch_units


# -- a model reading its window as pitches (``input: "pitches"``) -----------------------------


def random_rows(rng: np.random.Generator, n: int, frames: int) -> np.ndarray:
    """``n`` windows of ``frames`` random chords (0-4 pitches) as multi-hot rows."""
    rows = np.zeros((n, frames, PITCHES), dtype=np.float32)
    for i in range(n):
        for t in range(frames):
            rows[i, t, rng.integers(40, 90, size=rng.integers(0, 5))] = 1.0
    return rows


def test_pitch_input_needs_the_pitch_head_and_has_no_embedding() -> None:
    with pytest.raises(ValidationError, match="needs output 'pitch'"):
        ModelConfig(input="pitches")
    shapes = weight_shapes(PRESETS["roll"], 20_000)
    assert "embedding" not in shapes  # no per-token parameters: the vocabulary size is free
    assert shapes["input_projection.kernel"] == (PITCHES, 96)
    assert shapes == weight_shapes(PRESETS["roll"], 100)


@pytest.mark.tf
def test_pitch_input_round_trip_every_runtime(tmp_path) -> None:
    """Saved, loaded, and the same head inputs from every runtime, LiteRT's included; a
    window of token ids is refused with the shape the model wants."""
    model, vocab, config = build_tiny_pitch(seed=5, pitch_input=True)
    path = save_artifact(tmp_path / "m", model, vocab, config, tiny_prior(), {})
    art = load_artifact(path)
    assert art.config.pitch_input and "embedding" not in art.weights
    x = random_rows(np.random.default_rng(6), 5, config.window_frames)
    reference = np.asarray(model(x, training=False))
    for runtime in RUNTIMES:
        predictor = load_predictor(art, runtime)
        np.testing.assert_allclose(
            predictor.predict_batch(x), reference, atol=2e-5, err_msg=runtime
        )
        np.testing.assert_allclose(predictor.predict(x[1]), reference[1], atol=2e-5)
    with pytest.raises(ValueError, match=rf"\(N, {config.window_frames}, 128\)"):
        load_predictor(art, "numpy").predict_batch(np.zeros((2, config.window_frames), np.int32))


@pytest.mark.tf
def test_pitch_input_reads_unknown_chords_as_they_are(tmp_path) -> None:
    """Two chords the vocabulary lacks give different outputs (a token model reads both as
    their nearest known chord), and the daemon's reader gives the rows the model was fed."""
    from musicgend.core.window import WindowReader

    model, vocab, config = build_tiny_pitch(seed=7, pitch_input=True)
    path = save_artifact(tmp_path / "m", model, vocab, config, tiny_prior(), {})
    predictor = load_predictor(path, "numpy")
    reader = WindowReader(vocab, pitches=True)
    a, b = frozenset({30, 31}), frozenset({30, 32})
    assert vocab.nearest(a) == vocab.nearest(b)
    wa = reader.window(config.window_frames, [frozenset({60, 64, 67}), a]).array()
    wb = reader.window(config.window_frames, [frozenset({60, 64, 67}), b]).array()
    assert wa.shape == (config.window_frames, PITCHES)
    assert wa[-1, [30, 31]].tolist() == [1.0, 1.0] and wa[-1].sum() == 2 and not wa[:-2].any()
    assert not np.allclose(predictor.predict(wa), predictor.predict(wb))
