"""``musicgend model tune-memory``: fit a model's piece-memory weights on its validation pieces.

The weights (:class:`~musicgend.core.memory.MemoryWeights`) say how much of the probability
the recall takes, by matched length and by hold or change. They are fitted by maximum
likelihood on the validation split saved with the model, from the head's probabilities as
``evaluate`` scores them (the same runtime), and written to the model's ``memory.json``
with the checksum of the weights they were fitted for. The test split is never read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from musicgend.core.memory import MemoryWeights, evidence, fit_weights, mixed_log_prob
from musicgend.errors import CorpusError, ModelError
from musicgend.text import count, none_could_be_read
from musicgend.training.evaluate import (
    LOG_FLOOR,
    _batches,
    _close,
    _pitch_rows,
    _split_files,
    read_pieces,
    scoring_runtime,
)


@dataclass(frozen=True)
class TuneResult:
    path: Path
    weights: MemoryWeights
    pieces: int
    frames: int
    nll_without: float
    nll_with: float
    runtime: str

    def summary(self) -> str:
        return (
            f"{self.path}: piece memory tuned on {count(self.pieces, 'validation piece')} "
            f"({count(self.frames, 'frame')}, {self.runtime}): validation NLL "
            f"{self.nll_without:.3f} → {self.nll_with:.3f} nats/frame"
        )


def tune_memory(
    model_dir: str | Path,
    data_dir: str | Path,
    *,
    runtime: str = "auto",
    batch_size: int = 256,
    progress_factory: Callable[[int], Any] | None = None,
) -> TuneResult:
    """Fit and write ``memory.json`` for the model at ``model_dir``, whose training data
    (with the validation pieces of its saved split) lies in ``data_dir``."""
    from musicgend.model.artifact import WEIGHTS_NPZ, compact_artifact, load_artifact
    from musicgend.model.runtime import load_predictor, pitch_head

    artifact = load_artifact(model_dir)
    head = pitch_head(artifact)
    if head is None:
        raise ModelError(
            f"{model_dir}: a piece memory needs a per-pitch model (config output 'pitch'); "
            f"this one is {artifact.config.name!r}"
        )
    split = artifact.training.get("split")
    if not isinstance(split, dict) or not split.get("val"):
        raise ModelError(f"{model_dir}: no validation split saved with the model")
    files = _split_files(Path(data_dir), split["val"], "validation")
    cfg = artifact.config
    val = read_pieces(files, artifact.vocab, artifact.pitch_prior, cfg.fs, cfg.first_track_only)
    if not val.pieces:
        path, reason = val.skipped[0]
        raise CorpusError(none_could_be_read(len(files), f"{path}: {reason}"))
    if val.skipped:
        path, reason = val.skipped[0]
        raise CorpusError(f"{path}: {reason} (a validation piece must be readable to tune on)")
    predictor = load_predictor(
        artifact, scoring_runtime(artifact) if runtime == "auto" else runtime
    )
    prev_rows, chord_rows = _pitch_rows(val.pieces)
    log_p = np.empty(len(prev_rows))
    start = 0
    n_batches = math.ceil(len(log_p) / batch_size)
    try:
        with progress_factory(n_batches) if progress_factory else nullcontext() as bar:
            for x, y in _batches(val.pieces, cfg.window_frames, batch_size, predictor.pitch_input):
                params = np.asarray(predictor.predict_batch(x))
                span = slice(start, start + len(y))
                lp = head.log_prob(params, prev_rows[span], chord_rows[span])
                log_p[span] = np.maximum(lp, LOG_FLOOR)
                start += len(y)
                if bar is not None:
                    bar.advance()
        used = predictor.runtime
    finally:
        _close(predictor)
    ev = evidence([p.frames for p in val.pieces])
    weights, counts = fit_weights(ev, np.exp(log_p))
    shares = weights.shares(ev.level, ev.holds)
    nll_with = float(-np.maximum(mixed_log_prob(log_p, shares, ev.hit), LOG_FLOOR).mean())
    nll_without = float(-log_p.mean())
    memory = {
        "weights": weights.to_json(),
        "weights_sha256": artifact.metadata["files"][WEIGHTS_NPZ],
        "tuned_on": {
            "split": "val",
            "pieces": len(val.pieces),
            "frames": len(log_p),
            "runtime": used,
            "frames_per_bucket": counts,
            "nll_without_memory": round(nll_without, 6),
            "nll_with_memory": round(nll_with, 6),
        },
    }
    compact_artifact(artifact.path, memory=memory)
    return TuneResult(
        artifact.path, weights, len(val.pieces), len(log_p), nll_without, nll_with, used
    )
