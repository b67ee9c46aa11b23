"""Keras 3 builder of the seed BiGRU (and its improved variants).

Input: ``(batch, window_frames)`` int32 token ids. Output: ``(batch, vocab)`` probabilities
(softmax, or with ``copy_gate`` a mixture of the softmax and a one-hot "repeat the last
input token" expert, weighted by a learned sigmoid gate).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from musicgend.model.config import ModelConfig


@keras.saving.register_keras_serializable(package="musicgend")
class CopyMix(layers.Layer):
    """``gate * onehot(last_token) + (1 - gate) * softmax(logits)``."""

    def __init__(self, vocab_size: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.vocab_size = vocab_size

    def call(self, logits, gate, token_ids):
        probs = ops.softmax(logits, axis=-1)
        last = ops.one_hot(token_ids[:, -1], self.vocab_size, dtype=probs.dtype)
        return gate * last + (1.0 - gate) * probs

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "vocab_size": self.vocab_size}


def build_model(vocab_size: int, config: ModelConfig | None = None) -> keras.Model:
    """The network for a vocabulary of ``vocab_size`` tokens; ``config`` defaults to seed."""
    config = config or ModelConfig()
    token_ids = keras.Input((config.window_frames,), dtype="int32", name="token_ids")
    x = layers.Embedding(vocab_size, config.embed_dim, name="embedding")(token_ids)
    if config.embed_dropout:
        x = layers.Dropout(config.embed_dropout, name="embed_dropout")(x)
    for i in range(config.gru_layers):
        last = i == config.gru_layers - 1
        x = layers.Bidirectional(
            layers.GRU(config.gru_units, return_sequences=not last), name=f"bigru_{i}"
        )(x)
        if config.gru_dropout:
            x = layers.Dropout(config.gru_dropout, name=f"gru_dropout_{i}")(x)
    h = layers.Dense(config.dense_units, name="dense")(x)
    h = layers.LeakyReLU(negative_slope=config.leaky_relu_alpha, name="leaky_relu")(h)
    logits = layers.Dense(vocab_size, name="logits")(h)
    if config.copy_gate:
        gate = layers.Dense(1, activation="sigmoid", name="copy_gate")(h)
        probs = CopyMix(vocab_size, name="probs")(logits, gate, token_ids)
    else:
        probs = layers.Softmax(name="probs")(logits)
    return keras.Model(token_ids, probs, name=f"musicgend_{config.name}")
