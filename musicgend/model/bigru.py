"""Keras 3 builder of the seed BiGRU (and its improved variants).

Input: ``(batch, window_frames)`` int32 token ids, or with ``input = "pitches"``
``(batch, window_frames, 128)`` float32 multi-hot pitch rows (read through a ``Dense`` named
``input_projection`` instead of the ``embedding``). Output: ``(batch, vocab)`` probabilities
(softmax, or with ``copy_gate`` a mixture of the softmax and a one-hot "repeat the last
input token" expert, weighted by a learned sigmoid gate). With ``tied_output_dim`` the
logits are ``Dense(tied_output_dim)(h) @ E.T + bias``, E being the embedding matrix.

With ``output = "pitch"`` the output is the per-pitch head's input vector
``(batch, pitch_units + 129)`` (:mod:`musicgend.core.pitchhead`); the head's own weights sit
in the :class:`PitchHead` layer, which passes that vector through unchanged and gives
training its log-likelihood (:func:`pitch_log_prob`).

The network is always rebuilt from its :class:`ModelConfig` by :func:`build_model` (weights
are saved with ``save_weights``), never from a Keras model config.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from musicgend.core.pitchhead import PITCHES
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


@keras.saving.register_keras_serializable(package="musicgend")
class TiedLogits(layers.Layer):
    """``x @ E.T + bias``, where E ``(vocab, dim)`` is an :class:`~keras.layers.Embedding`'s matrix.

    The layer owns only ``bias``; E stays the embedding layer's variable (referenced, not
    tracked), so ``save_weights``/``load_weights`` and exports see it once and the tie holds.
    """

    def __init__(self, embedding: layers.Embedding, **kwargs: object) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "_tied_embedding", embedding)  # bypass Keras tracking
        self.vocab_size = embedding.input_dim
        self.dim = embedding.output_dim

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[-1] != self.dim:
            raise ValueError(f"TiedLogits expects inputs of width {self.dim}, got {input_shape}")
        self.bias = self.add_weight(shape=(self.vocab_size,), initializer="zeros", name="bias")

    def call(self, x):
        embeddings = self._tied_embedding.embeddings
        return ops.matmul(x, ops.transpose(embeddings)) + self.bias

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.vocab_size)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "vocab_size": self.vocab_size, "dim": self.dim}


@keras.saving.register_keras_serializable(package="musicgend")
class PitchHead(layers.Layer):
    """Holds the per-pitch head's weights ``w_in``, ``v_out`` ``(128, units)`` and ``bias``
    ``(128,)``; its call passes the head's input vector through (inference reads the
    weights from ``weights.npz``, see :class:`musicgend.core.pitchhead.PitchHead`)."""

    def __init__(self, units: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        init = keras.initializers.RandomNormal(stddev=0.05)
        self.w_in = self.add_weight(shape=(PITCHES, self.units), initializer=init, name="w_in")
        self.v_out = self.add_weight(shape=(PITCHES, self.units), initializer=init, name="v_out")
        # most pitches are silent most of the time: start every pitch at p ≈ 0.02
        self.bias = self.add_weight(
            shape=(PITCHES,), initializer=keras.initializers.Constant(-4.0), name="bias"
        )

    def call(self, params):
        return params

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "units": self.units}


def pitch_log_prob(head: PitchHead, params, prev, chord):
    """``ln p(chord)`` per row in Keras ops, so on any backend (the same formula as
    :meth:`musicgend.core.pitchhead.PitchHead.log_prob`); ``prev`` and ``chord`` are
    ``(N, 128)`` float 0/1."""
    u = head.units
    base, stay, gate = params[:, :u], params[:, u : u + PITCHES], params[:, u + PITCHES]
    contrib = chord[:, :, None] * head.w_in[None]
    a = base[:, None, :] + _sum_below(contrib)
    logits = ops.einsum("npu,pu->np", ops.sigmoid(a), head.v_out) + head.bias + stay * prev
    lp_nade = ops.sum(
        chord * ops.log_sigmoid(logits) + (1.0 - chord) * ops.log_sigmoid(-logits), axis=-1
    )
    lp_rest = ops.log_sigmoid(-gate) + lp_nade
    same = ops.all(ops.equal(chord, prev), axis=-1)
    held = ops.logsumexp(ops.stack([ops.log_sigmoid(gate), lp_rest]), axis=0)
    return ops.where(same, held, lp_rest)


def _sum_below(x):
    """Exclusive cumulative sum over axis 1 (row ``p`` sums the rows below ``p``).

    On TensorFlow its own exclusive ``cumsum``: under XLA the padded form rounds the
    gradients differently (by ~1e-9), and the bundled model's training is reproducible bit
    for bit (models/MODEL_CARD.md)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.cumsum(x, axis=1, exclusive=True)
    return ops.cumsum(ops.pad(x[:, :-1], [(0, 0), (1, 0), (0, 0)]), axis=1)


def build_model(vocab_size: int, config: ModelConfig | None = None) -> keras.Model:
    """The network for a vocabulary of ``vocab_size`` tokens; ``config`` defaults to seed."""
    config = config or ModelConfig()
    if config.pitch_input:
        inputs = keras.Input((config.window_frames, PITCHES), dtype="float32", name="pitches")
        x = layers.Dense(config.embed_dim, name="input_projection")(inputs)
    else:
        inputs = keras.Input((config.window_frames,), dtype="int32", name="token_ids")
        embedding = layers.Embedding(vocab_size, config.embed_dim, name="embedding")
        x = embedding(inputs)
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
    if config.output == "pitch":
        params = layers.Dense(config.pitch_params_width, name="pitch_params")(h)
        out = PitchHead(config.pitch_units, name="pitch_head")(params)
        return keras.Model(inputs, out, name=f"musicgend_{config.name}")
    if config.tied_output_dim:
        projected = layers.Dense(config.tied_output_dim, name="tied_projection")(h)
        logits = TiedLogits(embedding, name="logits")(projected)
    else:
        logits = layers.Dense(vocab_size, name="logits")(h)
    if config.copy_gate:
        gate = layers.Dense(1, activation="sigmoid", name="copy_gate")(h)
        probs = CopyMix(vocab_size, name="probs")(logits, gate, inputs)
    else:
        probs = layers.Softmax(name="probs")(logits)
    return keras.Model(inputs, probs, name=f"musicgend_{config.name}")
