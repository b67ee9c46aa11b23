"""Corpus → split by piece → vocabulary → token ids → tf.data of (window → next id) pairs.

The split is by file, 80/10/10, reproducible: the file names (relative to the corpus
directory) are sorted, then shuffled with the seed. The vocabulary and the pitch prior
come from the training split only; the optional transposition augmentation (all 12 keys,
:mod:`musicgend.core.augment`) touches the training split only, and the vocabulary is
counted over the augmented copies so that it knows the chords the model is trained on.

Windows are not materialised: every part keeps one flat id array in which each piece is
preceded by ``window_frames`` silence ids (the seed's left padding), plus the position of
every target. A window is ``ids[pos - W : pos]`` → ``ids[pos]``, exactly
:func:`musicgend.core.window.training_windows` of the piece; tf.data gathers them per batch,
so 12-key augmentation costs 4 bytes per frame instead of 200 per window.

The epoch order is a pure function of ``(seed, epoch)``, so a resumed run sees the same
batches as an uninterrupted one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from musicgend.core.augment import TRANSPOSITIONS, transpositions
from musicgend.core.pianoroll import tokens_from_frames
from musicgend.core.spelling import PitchPrior
from musicgend.core.tokens import PitchSet
from musicgend.core.vocab import SILENCE_ID, Vocab
from musicgend.errors import CorpusError, MidiFileError
from musicgend.io.midifile import Piece, find_midi_files, read_piece
from musicgend.model.config import ModelConfig
from musicgend.progress import progress

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
"""Train, validation, test shares of the pieces."""


# -- split ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """File names (relative to the corpus directory, POSIX) of each part, each sorted."""

    seed: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "fractions": list(SPLIT_FRACTIONS),
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
        }

    @classmethod
    def from_json(cls, data: Any) -> Split:
        try:
            return cls(
                int(data["seed"]),
                tuple(str(n) for n in data["train"]),
                tuple(str(n) for n in data["val"]),
                tuple(str(n) for n in data["test"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorpusError(f"malformed split: {exc}") from None


def split_names(names: Iterable[str], seed: int, max_pieces: int | None = None) -> Split:
    """Split file names by piece: sort, shuffle with ``seed``, cut 80/10/10.

    ``max_pieces`` keeps only the first N names of the shuffled order (for quick runs).
    Validation and test get at least one piece each.
    """
    ordered = sorted(set(names))
    rng = np.random.default_rng(seed)
    shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
    if max_pieces is not None:
        if max_pieces < 3:
            raise CorpusError(f"--max-pieces must be at least 3 (train/val/test), got {max_pieces}")
        shuffled = shuffled[:max_pieces]
    n = len(shuffled)
    if n < 3:
        raise CorpusError(f"need at least 3 MIDI files to split train/val/test, found {n}")
    n_test = max(1, round(n * SPLIT_FRACTIONS[2]))
    n_val = max(1, round(n * SPLIT_FRACTIONS[1]))
    test = shuffled[:n_test]
    val = shuffled[n_test : n_test + n_val]
    train = shuffled[n_test + n_val :]
    return Split(seed, tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))


# -- corpus --------------------------------------------------------------------------------


@dataclass
class Corpus:
    """The readable training and validation pieces of a corpus and its split."""

    root: Path
    split: Split
    train: list[Piece]
    val: list[Piece]
    skipped: dict[str, str] = field(default_factory=dict)
    """File name → why it was left out (unreadable, no notes, …)."""


def load_corpus(
    data_dir: str | Path,
    *,
    seed: int,
    fs: int = 5,
    first_track_only: bool = False,
    max_pieces: int | None = None,
    split: Split | None = None,
    stream: TextIO | None = None,
) -> Corpus:
    """Read the training and validation pieces of ``data_dir`` (the test files stay unread).

    ``split`` (from a model being resumed) replaces the computed one. Unreadable files are
    reported on ``stream`` and skipped; an empty training or validation part is an error.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise CorpusError(f"{root}: not a directory of MIDI files")
    names = [p.relative_to(root).as_posix() for p in find_midi_files([root])]
    if split is None:
        split = split_names(names, seed, max_pieces)
    else:
        missing = sorted(set(split.train + split.val + split.test) - set(names))
        if missing:
            raise CorpusError(
                f"{root}: {len(missing)} file(s) of the saved split are gone, e.g. {missing[0]}"
            )
    stream = stream or sys.stderr
    skipped: dict[str, str] = {}
    parts: dict[str, list[Piece]] = {"train": [], "val": []}
    todo = [(part, name) for part in parts for name in getattr(split, part)]
    with progress(len(todo), "reading MIDI", stream, plain_every=max(1, len(todo))) as bar:
        for part, name in todo:
            try:
                parts[part].append(read_piece(root / name, fs, first_track_only))
            except MidiFileError as exc:
                skipped[name] = exc.reason
                print(f"warning: skipping {exc}", file=stream)
            bar.advance()
    for part, pieces in parts.items():
        if not pieces:
            raise CorpusError(f"{root}: no readable piece in the {part} split")
    return Corpus(root, split, parts["train"], parts["val"], skipped)


# -- token ids and windows ---------------------------------------------------------------


@dataclass(frozen=True)
class WindowIndex:
    """One part's ids, flat, each piece after ``window_frames`` pad ids; target positions."""

    ids: np.ndarray
    positions: np.ndarray
    window_frames: int

    @classmethod
    def from_sequences(
        cls, sequences: Iterable[Sequence[int]], window_frames: int, pad_id: int = SILENCE_ID
    ) -> WindowIndex:
        chunks: list[np.ndarray] = []
        positions: list[np.ndarray] = []
        offset = 0
        for seq in sequences:
            ids = np.asarray(seq, dtype=np.int32)
            chunks.append(np.full(window_frames, pad_id, dtype=np.int32))
            chunks.append(ids)
            start = offset + window_frames
            positions.append(np.arange(start, start + len(ids), dtype=np.int64))
            offset = start + len(ids)
        flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
        pos = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
        return cls(flat, pos, window_frames)

    def __len__(self) -> int:
        return len(self.positions)

    def windows(self, positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` as arrays for the given target positions (default: all)."""
        pos = self.positions if positions is None else positions
        offsets = np.arange(-self.window_frames, 0, dtype=np.int64)
        return self.ids[pos[:, None] + offsets], self.ids[pos]

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """The target positions of one epoch in their shuffled order (depends on seed, epoch)."""
        rng = np.random.default_rng([seed, epoch])
        return self.positions[rng.permutation(len(self.positions))]


def window_dataset(
    index: WindowIndex,
    positions: np.ndarray,
    batch_size: int,
    *,
    drop_remainder: bool,
    weights: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Batches of ``(x, y)`` (or ``(x, y, w)``) windows for ``positions``, in that order."""
    import tensorflow as tf

    flat = tf.constant(index.ids)
    offsets = tf.range(-index.window_frames, 0, dtype=tf.int64)

    def gather(pos, *rest):
        x = tf.gather(flat, pos[:, None] + offsets)
        y = tf.gather(flat, pos)
        return (x, y, *rest)

    source = (positions,) if weights is None else (positions, weights)
    ds = tf.data.Dataset.from_tensor_slices(source)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


# -- everything a training run needs -----------------------------------------------------


@dataclass
class TrainingData:
    """Split, vocabulary, pitch prior and the windows of the training and validation parts."""

    corpus: Corpus
    vocab: Vocab
    pitch_prior: PitchPrior
    train: WindowIndex
    val: WindowIndex
    augment_transpose: bool
    train_frames: int
    """Frames of the training split before augmentation."""

    def summary(self) -> dict[str, Any]:
        return {
            "train_pieces": len(self.corpus.train),
            "val_pieces": len(self.corpus.val),
            "test_pieces": len(self.corpus.split.test),
            "train_frames": self.train_frames,
            "train_windows": len(self.train),
            "val_windows": len(self.val),
            "vocab_size": len(self.vocab),
            "augment_transpose": self.augment_transpose,
            "skipped_files": dict(self.corpus.skipped),
        }


def training_frames(pieces: Sequence[Piece], augment_transpose: bool) -> list[Sequence[PitchSet]]:
    """The frame sequences to train on: each piece, or each piece in all 12 keys."""
    if not augment_transpose:
        return [p.frames for p in pieces]
    return [frames for p in pieces for _, frames in transpositions(p.frames, TRANSPOSITIONS)]


def prepare(
    corpus: Corpus, config: ModelConfig, *, augment_transpose: bool = False
) -> TrainingData:
    """Vocabulary (training split, ``config.min_count``), pitch prior, windows of both parts."""
    frames = training_frames(corpus.train, augment_transpose)
    train_streams = [tokens_from_frames(f) for f in frames]
    vocab = Vocab.build(train_streams, min_count=config.min_count, fs=config.fs)
    prior = PitchPrior.from_frames(f for p in corpus.train for f in p.frames)
    train = WindowIndex.from_sequences((vocab.ids(s) for s in train_streams), config.window_frames)
    val = WindowIndex.from_sequences(
        (vocab.ids(p.tokens) for p in corpus.val), config.window_frames
    )
    return TrainingData(
        corpus,
        vocab,
        prior,
        train,
        val,
        augment_transpose,
        sum(len(p.frames) for p in corpus.train),
    )
