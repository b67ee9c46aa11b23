"""Fine-tuning a trained model on new MIDI data (``musicgend train --from BASE_MODEL``).

The training loop is :func:`musicgend.training.train.train`; this module supplies what
differs from training from scratch:

* **The network and config are the base model's.** Its weights are the starting point.
* **The vocabulary is the base's, extended.** Chords that the base vocabulary lacks and that
  occur at least :data:`NEW_TOKEN_MIN_COUNT` times in the *training* pieces of the new data
  (after the same quantisation, at the base's fs; with ``--augment-transpose`` counted over
  the 12 keys as training does) are appended after the base's tokens, most frequent first,
  so every base id keeps its meaning. Rarer unknown chords stay ``<unk>``. With
  ``--keep-vocab`` nothing is added: the vocabulary (and its hash) stays the base's, every
  unknown chord stays ``<unk>``, and the network keeps its size.
* **New rows start as ``<unk>``.** Each added token's embedding row, output-layer column
  (untied output) and output bias are copies of ``<unk>``'s; with a tied output
  (``tied_output_dim``, the ``musicgend`` preset) the embedding row *is* the output row.
  The ``k`` added tokens and ``<unk>`` then share ``<unk>``'s probability: their biases are
  lowered by ``ln(k + 1)``. So before the first step the fine-tuned network reads its input
  exactly as the base did (an added chord looks like ``<unk>``) and gives every base token
  exactly the base's probability.
* **The pitch prior** (p_spell of unknown chords, saved with the model) is
  ``0.5 × base prior + 0.5 × the new training pieces' prior``: it follows the player's
  register without forgetting the base's.
* **Defaults** suit a small corpus: learning rate 3e-4, 5 epochs, early stop after 2 epochs
  without a better validation NLL (:data:`DEFAULTS`). The new data is split by piece
  80/10/10 like any corpus; the best epoch on its validation pieces is kept.
* **Lineage.** The model's metadata gets ``training.fine_tune`` (base model path and the
  sha256 of its ``metadata.json``, which lists the checksum of every base file; base vocab
  hash and size; the data directory; the command; the added tokens; the validation NLL
  before the first epoch) and the directory a ``MODEL_CARD.md`` saying the same in words.
  A fine-tune of a fine-tune keeps the chain (``base_lineage``).

The result is an ordinary model directory: the daemon's loader (NumPy or LiteRT, no
TensorFlow) and a live ``load_model`` swap take it like any other. Its LiteRT export is
built from the fine-tuned weights by the trainer's final save; the base's ``model.tflite``
is never copied, so a stale export can't be used.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from musicgend.core.pianoroll import tokens_from_frames
from musicgend.core.spelling import PitchPrior
from musicgend.core.vocab import SILENCE_ID, UNK, UNK_ID, Vocab
from musicgend.errors import ModelError, VocabError
from musicgend.model.config import ModelConfig
from musicgend.text import count

if TYPE_CHECKING:  # pragma: no cover
    from musicgend.model.artifact import Artifact
    from musicgend.training.dataset import Corpus

NEW_TOKEN_MIN_COUNT = 2
"""An unknown chord must occur this often in the new training pieces to get a token."""
PRIOR_BASE_SHARE = 0.5
"""Weight of the base model's pitch prior in the fine-tuned one."""
DEFAULTS: dict[str, Any] = {"epochs": 5, "learning_rate": 3e-4, "patience": 2}
"""Training options a fine-tune uses unless given."""
MODEL_CARD = "MODEL_CARD.md"


def load_base(path: str | Path) -> Artifact:
    """The base model, checked (no TensorFlow). A missing or corrupt one raises
    :class:`ModelError` saying it is the base model of a fine-tune."""
    from musicgend.model.artifact import load_artifact

    try:
        return load_artifact(path)
    except ModelError as exc:
        raise ModelError(f"base model (--from): {exc}") from None


def model_sha256(artifact: Artifact) -> str:
    """sha256 of the model's ``metadata.json`` (it lists the checksum of every file)."""
    from musicgend.model.artifact import METADATA_JSON

    return hashlib.sha256((artifact.path / METADATA_JSON).read_bytes()).hexdigest()


def extend_vocab(
    base: Vocab, token_streams: Iterable[Iterable[str]], min_count: int = NEW_TOKEN_MIN_COUNT
) -> tuple[Vocab, tuple[str, ...]]:
    """``base`` with the unknown tokens seen at least ``min_count`` times appended (most
    frequent first, ties in token order); returns the vocabulary and the added tokens."""
    counter: Counter[str] = Counter()
    for stream in token_streams:
        counter.update(t for t in stream if t not in base and t != UNK)
    new = sorted(
        ((t, c) for t, c in counter.items() if c >= min_count), key=lambda tc: (-tc[1], tc[0])
    )
    added = tuple(t for t, _ in new)
    try:
        vocab = Vocab(
            base.tokens + added,
            base.counts + tuple(c for _, c in new),
            fs=base.fs,
            min_count=base.min_count,
        )
    except VocabError as exc:
        raise VocabError(f"can't extend the base vocabulary: {exc}") from None
    return vocab, added


def extend_weights(
    arrays: Mapping[str, np.ndarray], config: ModelConfig, base_size: int, added: int
) -> dict[str, np.ndarray]:
    """The base weights for a vocabulary ``added`` tokens larger: each new embedding row,
    output column (untied) and output bias copied from ``<unk>``'s; ``<unk>``'s and the new
    biases lowered by ``ln(added + 1)`` so that they share ``<unk>``'s probability. A
    per-pitch model's output has no vocabulary: only its embedding grows."""
    from musicgend.model.artifact import weight_shapes

    expected = weight_shapes(config, base_size)
    for name, shape in expected.items():
        if name not in arrays or tuple(arrays[name].shape) != shape:
            got = tuple(arrays[name].shape) if name in arrays else "missing"
            raise VocabError(
                f"the base weights don't fit its vocabulary of {base_size} tokens "
                f"({name}: {got}, expected {shape})"
            )
    out = {k: np.array(v, dtype=np.float32) for k, v in arrays.items()}
    if not added or config.pitch_input:  # a model reading pitches has no per-token weights
        return out
    emb = out["embedding"]
    out["embedding"] = np.concatenate([emb, np.repeat(emb[UNK_ID : UNK_ID + 1], added, axis=0)])
    if config.output == "pitch":
        return out
    if not config.tied_output_dim:
        kernel = out["logits.kernel"]
        out["logits.kernel"] = np.concatenate(
            [kernel, np.repeat(kernel[:, UNK_ID : UNK_ID + 1], added, axis=1)], axis=1
        )
    bias = out["logits.bias"]
    share = np.float32(bias[UNK_ID] - math.log(added + 1))
    bias = np.concatenate([bias, np.full(added, share, dtype=np.float32)])
    bias[UNK_ID] = share
    out["logits.bias"] = bias
    return out


def blend_prior(
    base: PitchPrior, new: PitchPrior, base_share: float = PRIOR_BASE_SHARE
) -> PitchPrior:
    return PitchPrior(base_share * base.probs + (1.0 - base_share) * new.probs)


@dataclass(frozen=True)
class FineTune:
    """The base model and what a fine-tune on one corpus starts from."""

    base: Artifact
    vocab: Vocab
    added: tuple[str, ...]
    pitch_prior: PitchPrior
    keep_vocab: bool = False

    @property
    def config(self) -> ModelConfig:
        return self.base.config

    def initial_weights(self) -> dict[str, np.ndarray]:
        return extend_weights(self.base.weights, self.config, len(self.base.vocab), len(self.added))

    def lineage(self, data_dir: Path, command: Sequence[str]) -> dict[str, Any]:
        base = self.base
        return {
            "base_model": str(base.path.resolve()),
            "base_model_sha256": model_sha256(base),
            "base_vocab_hash": base.vocab.hash,
            "base_vocab_size": len(base.vocab),
            "base_config": base.config.name,
            "base_lineage": base.training.get("fine_tune"),
            "data_dir": str(Path(data_dir).resolve()),
            "command": list(command),
            "added_tokens": len(self.added),
            "added_token_list": list(self.added),
            "new_token_min_count": NEW_TOKEN_MIN_COUNT,
            "keep_vocab": self.keep_vocab,
            "vocab_size": len(self.vocab),
            "pitch_prior": f"{PRIOR_BASE_SHARE:g} x base + {1 - PRIOR_BASE_SHARE:g} x new data",
        }


def plan_finetune(
    base: Artifact, corpus: Corpus, augment_transpose: bool, keep_vocab: bool = False
) -> FineTune:
    """The extended vocabulary (the base's as it is with ``keep_vocab``) and blended prior
    for fine-tuning ``base`` on ``corpus``."""
    from musicgend.training.dataset import training_frames

    if base.vocab.tokens[SILENCE_ID] != "e" or base.vocab.fs != base.config.fs:
        raise VocabError(f"{base.path}: the base vocabulary doesn't fit its config")
    added: tuple[str, ...] = ()
    if keep_vocab:
        vocab = base.vocab
    else:
        frames = training_frames(corpus.train, augment_transpose)
        vocab, added = extend_vocab(base.vocab, (tokens_from_frames(f) for f in frames))
    new_prior = PitchPrior.from_frames(f for p in corpus.train for f in p.frames)
    return FineTune(base, vocab, added, blend_prior(base.pitch_prior, new_prior), keep_vocab)


# -- model card --------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "n/a"


def model_card(meta: Mapping[str, Any]) -> str:
    """``MODEL_CARD.md`` of a fine-tuned model from its training metadata."""
    ft = meta["fine_tune"]
    data = meta.get("data", {})
    opts = meta.get("options", {})
    split = meta.get("split", {})
    added = ft["added_token_list"]
    shown = ", ".join(f"`{t}`" for t in added[:20]) + (" …" if len(added) > 20 else "")
    command = " ".join(meta.get("command", []))
    resumes = "".join(f"; resumed with `{' '.join(c)}`" for c in meta.get("resume_commands", []))
    best = meta.get("best_epoch")
    before, after = ft.get("val_nll_before"), meta.get("best_val_nll")
    n_added = ft["added_tokens"]
    if ft.get("keep_vocab"):
        vocab_line = (
            f"The base's {ft['base_vocab_size']} tokens, kept as they are (`--keep-vocab`): "
            "chords the base lacks stay `<unk>`."
        )
    else:
        vocab_line = (
            f"The base's {ft['base_vocab_size']} tokens keep their ids; "
            f"{count(n_added, 'chord')} seen at least "
            f"{count(ft['new_token_min_count'], 'time')} in the training pieces "
            f"{'was' if n_added == 1 else 'were'} added ({ft['vocab_size']} tokens), "
            f"{'its row' if n_added == 1 else 'their rows'} initialised from `<unk>`"
            + (f": {shown}." if added else ".")
        )
    lines = [
        "# musicgend model card (fine-tuned)",
        "",
        f"Fine-tuned from `{ft['base_model']}` on `{ft['data_dir']}`.",
        "",
        "## Lineage",
        f"- Base model: `{ft['base_model']}` (metadata sha256 `{ft['base_model_sha256']}`, "
        f"config `{ft['base_config']}`, vocabulary of {ft['base_vocab_size']} tokens, "
        f"hash `{ft['base_vocab_hash'][:16]}…`)",
        "- Earlier fine-tunes of the base: "
        + ("yes (metadata: training.fine_tune.base_lineage)" if ft.get("base_lineage") else "none"),
        f"- Data: `{ft['data_dir']}`: {data.get('train_pieces', '?')} training, "
        f"{data.get('val_pieces', '?')} validation, {data.get('test_pieces', '?')} test pieces "
        f"(split by piece, seed {split.get('seed', '?')}); {data.get('train_frames', '?')} "
        "training frames",
        f"- Command: `{command}`{resumes}",
        f"- Created by musicgend on {meta.get('started', '?')}, {meta.get('device', '?')}",
        "",
        "## Vocabulary",
        vocab_line,
        f"Pitch prior (spelling of unknown chords): {ft['pitch_prior']}.",
        "",
        "## Training",
        f"- Epochs run: {meta.get('epochs_run', '?')} (best {best}), learning rate "
        f"{opts.get('learning_rate', '?')}, batch {opts.get('batch_size', '?')}, "
        f"patience {opts.get('patience', '?')}, transposition augmentation "
        f"{'on' if opts.get('augment_transpose') else 'off'}",
        f"- Validation loss (nats/frame on the validation pieces of the new data, unknown "
        f"chords as `<unk>`): {_fmt(before)} before the first epoch (base weights) -> "
        f"{_fmt(after)} at the best epoch. `musicgend evaluate` gives the full scores.",
        "",
        "## Use",
        "- Compare with the base on the held-out pieces: "
        f"`musicgend evaluate --model THIS_DIR --compare {ft['base_model']} {ft['data_dir']}`",
        "- Play with it: `musicgend run --model THIS_DIR`, or swap it in live over MQTT: "
        '`{"action": "load_model", "path": "THIS_DIR"}`',
        "",
    ]
    return "\n".join(lines)
