"""Per-pitch models (``output: "pitch"``): config rules, the TensorFlow loss against the
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
def test_training_loss_is_the_numpy_heads_log_probability() -> None:
    import tensorflow as tf

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
