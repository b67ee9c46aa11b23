"""Tiny real models for artifact/runtime/generation tests (built once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from musicgend.core.spelling import PitchPrior
from musicgend.core.tokens import token_from_pitches
from musicgend.core.vocab import Vocab
from musicgend.model.config import ModelConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def tiny_vocab() -> Vocab:
    """A vocabulary of silence plus 30 chords around middle C, with made-up counts."""
    rng = np.random.default_rng(7)
    counts: dict[str, int] = {"e": 50}
    for i in range(30):
        root = 55 + i % 12
        chord = {root, root + 4, root + 7} if i % 3 else {root}
        counts[token_from_pitches(chord)] = int(rng.integers(2, 40))
    counts["90,91,92"] = 1  # rarer than min_count: counted under <unk>
    return Vocab.from_counts(counts, min_count=2)


def tiny_config(copy_gate: bool = False, tied: bool = False) -> ModelConfig:
    return ModelConfig(
        name="tiny",
        window_frames=12,
        embed_dim=8,
        gru_units=6,
        gru_layers=2,
        dense_units=10,
        copy_gate=copy_gate,
        tied_output_dim=8 if tied else 0,
    )


def tiny_prior() -> PitchPrior:
    probs = np.full(128, 0.01)
    probs[55:80] = 0.2
    return PitchPrior(probs)


def randomize(model, seed: int = 0, scale: float = 0.4) -> None:
    """Random weights everywhere (biases too), so every parameter matters in comparisons.

    Full-size layers need a smaller ``scale``: with 128 units, N(0, 0.4) recurrent weights
    make the GRUs chaotic and float32 round-off grows into different outputs.
    """
    rng = np.random.default_rng(seed)
    model.set_weights(
        [rng.normal(0.0, scale, size=w.shape).astype(np.float32) for w in model.get_weights()]
    )


def build_tiny(copy_gate: bool = False, seed: int = 0, tied: bool = False):
    from musicgend.model.bigru import build_model

    vocab = tiny_vocab()
    config = tiny_config(copy_gate, tied)
    model = build_model(len(vocab), config)
    randomize(model, seed)
    return model, vocab, config


def build_tiny_pitch(seed: int = 0, pitch_input: bool = False):
    """A tiny per-pitch model (``output: "pitch"``) with random weights; ``pitch_input``:
    one that reads its window as pitches (``input: "pitches"``)."""
    from musicgend.model.bigru import build_model

    vocab = tiny_vocab()
    config = ModelConfig.model_validate(
        {
            **tiny_config().model_dump(),
            "name": "tiny-roll" if pitch_input else "tiny-pitch",
            "output": "pitch",
            "pitch_units": 5,
            "input": "pitches" if pitch_input else "token",
        }
    )
    model = build_model(len(vocab), config)
    randomize(model, seed, scale=0.3)
    return model, vocab, config


def _save_tiny_artifacts(root: Path, tied: bool) -> dict[bool, Path]:
    from musicgend.model.artifact import save_artifact

    out: dict[bool, Path] = {}
    for copy_gate in (False, True):
        model, vocab, config = build_tiny(copy_gate, seed=int(copy_gate) + 2 * tied, tied=tied)
        out[copy_gate] = save_artifact(
            root / f"tiny-{int(copy_gate)}{'-tied' * tied}",
            model,
            vocab,
            config,
            tiny_prior(),
            {"epochs": 0, "note": "random weights"},
        )
    return out


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> dict[bool, Path]:
    """Saved tiny artifacts (with LiteRT export), keyed by copy_gate."""
    return _save_tiny_artifacts(tmp_path_factory.mktemp("artifacts"), tied=False)


@pytest.fixture(scope="session")
def tiny_tied_artifacts(tmp_path_factory) -> dict[bool, Path]:
    """Like ``tiny_artifacts`` with a weight-tied output (``tied_output_dim``)."""
    return _save_tiny_artifacts(tmp_path_factory.mktemp("tied-artifacts"), tied=True)


def save_tiny_artifact(
    out_dir: Path, seed: int = 0, pitch: bool = False, pitch_input: bool = False
) -> Path:
    """A tiny random-weight model directory for daemon tests (the daemon never imports TF);
    ``pitch``: a per-pitch model; ``pitch_input``: one that reads pitches."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from musicgend.model.artifact import save_artifact

    if pitch or pitch_input:
        model, vocab, config = build_tiny_pitch(seed, pitch_input)
    else:
        model, vocab, config = build_tiny(False, seed=seed)
    return save_artifact(out_dir, model, vocab, config, tiny_prior(), {})
