"""Model configurations. ``seed`` is the original write-up's network, exactly.

This module imports no TensorFlow, so the daemon can read a model's config without it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from musicgend.core.tokens import MAX_PITCH


class ModelConfig(BaseModel):
    """Architecture and vocabulary settings, saved with every model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "seed"
    window_frames: int = Field(50, ge=1, le=1024)
    embed_dim: int = Field(100, ge=1)
    gru_units: int = Field(128, ge=1)
    gru_layers: int = Field(3, ge=1)
    dense_units: int = Field(256, ge=1)
    leaky_relu_alpha: float = Field(0.3, ge=0.0)
    embed_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    gru_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    copy_gate: bool = False
    """Mix a learned "repeat the previous chord" expert into the softmax."""
    tied_output_dim: int = Field(0, ge=0)
    """0: a plain ``Dense(vocab)`` output (seed). Otherwise the output reuses the embedding
    matrix E ``(vocab, embed_dim)``: ``logits = Dense(tied_output_dim)(h) @ E.T + bias``;
    must equal ``embed_dim`` (the shared size). The ``dense_units × vocab`` output matrix
    becomes ``dense_units × embed_dim``."""
    output: Literal["vocab", "pitch"] = "vocab"
    """``vocab``: a softmax over the vocabulary (seed). ``pitch``: the per-pitch head of
    :mod:`musicgend.core.pitchhead` (a NADE over the 128 pitches plus its own copy gate),
    which gives every chord a probability, also chords the vocabulary lacks; the vocabulary
    then only names the input tokens."""
    pitch_units: int = Field(128, ge=1)
    """Hidden units of the per-pitch head (``output = "pitch"``)."""
    input: Literal["token", "pitches"] = "token"
    """``token``: the window is token ids, read through an ``Embedding(vocab, embed_dim)``
    (seed). ``pitches``: the window is the frames' pitch sets as multi-hot rows ``(W, 128)``,
    read through a ``Dense(embed_dim)``: a chord the vocabulary lacks is read as it is, not
    as ``<unk>`` or its nearest known chord, and the network has no per-token parameters.
    Needs ``output = "pitch"`` (its copy gate compares pitch sets, not token ids)."""

    @property
    def pitch_input(self) -> bool:
        return self.input == "pitches"

    @property
    def pitch_params_width(self) -> int:
        """Width of the per-pitch head's input vector: base (``pitch_units``), one stay
        weight per MIDI pitch, the copy gate's logit."""
        return self.pitch_units + MAX_PITCH + 2

    min_count: int = Field(2, ge=1)
    """Training tokens seen fewer times map to ``<unk>``."""
    fs: int = Field(5, ge=1, le=100)
    first_track_only: bool = False
    activation_dtype: Literal["float32"] = "float32"

    @model_validator(mode="after")
    def _tied_size_is_the_embedding_size(self) -> ModelConfig:
        if self.tied_output_dim and self.tied_output_dim != self.embed_dim:
            raise ValueError(
                f"tied_output_dim ({self.tied_output_dim}) must equal embed_dim "
                f"({self.embed_dim}): a tied output reuses the embedding matrix"
            )
        return self

    @model_validator(mode="after")
    def _pitch_head_has_its_own_output(self) -> ModelConfig:
        if self.output == "pitch" and (self.copy_gate or self.tied_output_dim):
            raise ValueError(
                "output 'pitch' has its own copy gate and no vocabulary softmax: "
                "set copy_gate false and tied_output_dim 0"
            )
        return self

    @model_validator(mode="after")
    def _pitch_input_has_a_pitch_output(self) -> ModelConfig:
        if self.input == "pitches" and self.output != "pitch":
            raise ValueError(
                "input 'pitches' needs output 'pitch': a vocabulary softmax's copy gate "
                "repeats the last input token, and this input has none"
            )
        return self


PRESETS: dict[str, ModelConfig] = {
    # The write-up's network: Embedding(100) → 3 × BiGRU(128) → Dense(256)+LeakyReLU → softmax.
    "seed": ModelConfig(name="seed"),
    # The seed network plus what measurably helps on Bach (dropout, a copy gate), and a
    # weight-tied output so a large (transposition-augmented) vocabulary stays small.
    "musicgend": ModelConfig(
        name="musicgend",
        embed_dim=96,
        tied_output_dim=96,
        copy_gate=True,
        embed_dropout=0.1,
        gru_dropout=0.2,
        min_count=3,
    ),
    # The same encoder with the per-pitch head: no chord is unknown to its output.
    "pitch": ModelConfig(
        name="pitch",
        embed_dim=96,
        output="pitch",
        pitch_units=128,
        embed_dropout=0.1,
        gru_dropout=0.2,
        min_count=3,
    ),
    # The per-pitch model reading its window as pitches (multi-hot rows) instead of tokens.
    "roll": ModelConfig(
        name="roll",
        embed_dim=96,
        output="pitch",
        input="pitches",
        pitch_units=128,
        embed_dropout=0.1,
        gru_dropout=0.2,
        min_count=3,
    ),
}


def preset(name: str) -> ModelConfig:
    from musicgend.errors import ConfigError

    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model config {name!r}; choose one of {', '.join(PRESETS)}"
        ) from None
