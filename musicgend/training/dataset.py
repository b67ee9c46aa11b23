"""Corpus → split by piece → vocabulary → token ids → tf.data of (window → next id) pairs.

The split is by file, 80/10/10, reproducible: the file names (relative to the corpus
directory) are sorted, then shuffled with the seed; the unreadable files are taken out of
that order and the readable ones are cut 80/10/10, so a file that can't be read takes no
place in any part (and with every file readable the split is that of the names alone,
:func:`split_names`). The vocabulary and the pitch prior
come from the training split only; the optional transposition augmentation (all 12 keys,
:mod:`musicgend.core.augment`) touches the training split only, and the vocabulary is
counted over the augmented copies so that it knows the chords the model is trained on.
Two augmentation modes: ``expand`` trains on all 12 copies every epoch (12× the work);
``random`` (:class:`RandomTranspose`) trains on the pieces as they are, each window and its
target shifted by one shift per epoch, drawn from ``(seed, epoch, window index)`` among the
shifts that keep the window's pitches in 0..127, applied to the ids in the tf.data pipeline
through a (12 × vocabulary) id table. A shifted chord the vocabulary lacks becomes ``<unk>``
(as it would in ``expand`` mode); ``<unk>`` stays ``<unk>``.

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

from musicgend.core.augment import (
    TRANSPOSITIONS,
    id_shift_table,
    token_pitch_bounds,
    transpositions,
)
from musicgend.core.musicstats import piano_roll
from musicgend.core.pianoroll import tokens_from_frames
from musicgend.core.pitchhead import PITCHES
from musicgend.core.spelling import PitchPrior
from musicgend.core.tokens import MAX_PITCH, MIN_PITCH, PitchSet
from musicgend.core.vocab import SILENCE_ID, UNK_ID, Vocab
from musicgend.errors import CorpusError, MidiFileError, TrainingError
from musicgend.io.midifile import Piece, find_midi_files, read_piece
from musicgend.model.config import ModelConfig
from musicgend.progress import progress

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
"""Train, validation, test shares of the pieces."""

AUGMENT_MODES = ("random", "expand")
"""``random``: one random key per window and epoch; ``expand``: all 12 keys every epoch."""


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


def shuffled_names(names: Iterable[str], seed: int) -> list[str]:
    """The distinct names sorted, then shuffled with ``seed``: the order the split cuts."""
    ordered = sorted(set(names))
    rng = np.random.default_rng(seed)
    return [ordered[i] for i in rng.permutation(len(ordered))]


def _check_max_pieces(max_pieces: int | None) -> None:
    if max_pieces is not None and max_pieces < 3:
        raise CorpusError(f"--max-pieces must be at least 3 (train/val/test), got {max_pieces}")


def cut_split(shuffled: Sequence[str], seed: int, unreadable: int | None = None) -> Split:
    """Cut names in shuffled order 80/10/10: test first, then validation, the rest training.
    Validation and test get at least one name each. ``unreadable``: how many files were left
    out as unreadable (for the error message)."""
    n = len(shuffled)
    if n < 3:
        what = "MIDI files" if unreadable is None else "readable MIDI files"
        raise CorpusError(
            f"need at least 3 {what} to split train/val/test, found {n}"
            + (f" ({unreadable} unreadable skipped)" if unreadable else "")
        )
    n_test = max(1, round(n * SPLIT_FRACTIONS[2]))
    n_val = max(1, round(n * SPLIT_FRACTIONS[1]))
    test = shuffled[:n_test]
    val = shuffled[n_test : n_test + n_val]
    train = shuffled[n_test + n_val :]
    return Split(seed, tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))


def split_names(names: Iterable[str], seed: int, max_pieces: int | None = None) -> Split:
    """Split file names by piece: sort, shuffle with ``seed``, cut 80/10/10.

    ``max_pieces`` keeps only the first N names of the shuffled order (for quick runs).
    Validation and test get at least one piece each. :func:`load_corpus` does the same
    over the readable files only.
    """
    _check_max_pieces(max_pieces)
    shuffled = shuffled_names(names, seed)
    if max_pieces is not None:
        shuffled = shuffled[:max_pieces]
    return cut_split(shuffled, seed)


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
    """Read the training and validation pieces of ``data_dir``.

    Without ``split``, the split is computed over the readable files only: every file is
    read in the shuffled order of :func:`shuffled_names` (up to ``max_pieces`` readable
    ones), an unreadable one is reported on ``stream`` and skipped, and the readable ones are
    cut 80/10/10 (the test pieces are read only to know they are readable). ``split`` (from
    a model being resumed) replaces the computed one; then only its training and validation
    files are read, and an unreadable one is skipped, an empty training or validation part
    being an error.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise CorpusError(f"{root}: not a directory of MIDI files")
    names = [p.relative_to(root).as_posix() for p in find_midi_files([root])]
    stream = stream or sys.stderr
    skipped: dict[str, str] = {}

    def read(name: str) -> Piece | None:
        try:
            return read_piece(root / name, fs, first_track_only)
        except MidiFileError as exc:
            skipped[name] = exc.reason
            print(f"warning: skipping {exc}", file=stream)
            return None

    if split is None:
        _check_max_pieces(max_pieces)
        order = shuffled_names(names, seed)
        wanted = len(order) if max_pieces is None else min(max_pieces, len(order))
        pieces: dict[str, Piece] = {}
        with progress(wanted, "reading MIDI", stream, plain_every=max(1, wanted)) as bar:
            for name in order:
                if len(pieces) == wanted:
                    break
                piece = read(name)
                if piece is not None:
                    pieces[name] = piece
                # with --max-pieces the bar counts the readable pieces it still needs
                if piece is not None or max_pieces is None:
                    bar.advance()
        split = cut_split(list(pieces), seed, unreadable=len(skipped))
        return Corpus(
            root,
            split,
            [pieces[n] for n in split.train],
            [pieces[n] for n in split.val],
            skipped,
        )

    missing = sorted(set(split.train + split.val + split.test) - set(names))
    if missing:
        raise CorpusError(
            f"{root}: {len(missing)} file(s) of the saved split are gone, e.g. {missing[0]}"
        )
    parts: dict[str, list[Piece]] = {"train": [], "val": []}
    todo = [(part, name) for part in parts for name in getattr(split, part)]
    with progress(len(todo), "reading MIDI", stream, plain_every=max(1, len(todo))) as bar:
        for part, name in todo:
            piece = read(name)
            if piece is not None:
                parts[part].append(piece)
            bar.advance()
    for part, part_pieces in parts.items():
        if not part_pieces:
            raise CorpusError(f"{root}: no readable piece in the {part} split")
    return Corpus(root, split, parts["train"], parts["val"], skipped)


# -- token ids and windows ---------------------------------------------------------------


@dataclass(frozen=True)
class WindowIndex:
    """One part's ids, flat, each piece after ``window_frames`` pad ids; target positions.

    ``pitches`` (per-pitch models): the pitch set of every flat position as ``(len(ids),
    128)`` uint8 rows (pads are silence), so that targets the vocabulary lacks keep their
    pitches.
    """

    ids: np.ndarray
    positions: np.ndarray
    window_frames: int
    pitches: np.ndarray | None = None

    @classmethod
    def from_sequences(
        cls,
        sequences: Iterable[Sequence[int]],
        window_frames: int,
        pad_id: int = SILENCE_ID,
        frames: Iterable[Sequence[PitchSet]] | None = None,
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
        rows = None
        if frames is not None:
            rows = np.zeros((len(flat), PITCHES), dtype=np.uint8)
            starts = iter(positions)
            for piece in frames:
                at = next(starts, None)
                if at is None or len(at) != len(piece):
                    raise TrainingError("frames and token sequences differ in length")
                rows[at] = piano_roll(piece)
            if next(starts, None) is not None:
                raise TrainingError("fewer frame sequences than token sequences")
        return cls(flat, pos, window_frames, rows)

    def __len__(self) -> int:
        return len(self.positions)

    def windows(self, positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` as arrays for the given target positions (default: all)."""
        pos = self.positions if positions is None else positions
        offsets = np.arange(-self.window_frames, 0, dtype=np.int64)
        return self.ids[pos[:, None] + offsets], self.ids[pos]

    def pitch_windows(self, positions: np.ndarray | None = None) -> np.ndarray:
        """The windows of :meth:`windows` as pitch rows ``(N, window_frames, 128)`` float32
        (what a model reading pitches sees); needs ``pitches``."""
        if self.pitches is None:
            raise TrainingError("this window index has no pitch rows")
        pos = self.positions if positions is None else positions
        offsets = np.arange(-self.window_frames, 0, dtype=np.int64)
        return self.pitches[pos[:, None] + offsets].astype(np.float32)

    def epoch_permutation(self, seed: int, epoch: int) -> np.ndarray:
        """The window indices of one epoch in their shuffled order (depends on seed, epoch)."""
        return np.random.default_rng([seed, epoch]).permutation(len(self.positions))

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """The target positions of one epoch in their shuffled order (depends on seed, epoch)."""
        return self.positions[self.epoch_permutation(seed, epoch)]


@dataclass(frozen=True)
class RandomTranspose:
    """One random transposition per training window and epoch, applied to ids on the fly.

    ``table[k, i]`` is the id of token ``i`` shifted by ``TRANSPOSITIONS[k]``
    (:func:`~musicgend.core.augment.id_shift_table`); ``low[j] .. high[j]`` are the shifts
    that keep window ``j`` (its ``window_frames`` ids and its target) inside 0..127.
    """

    table: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def build(cls, vocab: Vocab, index: WindowIndex) -> RandomTranspose:
        table = id_shift_table(vocab.tokens, UNK_ID, TRANSPOSITIONS)
        token_low, token_high = token_pitch_bounds(vocab.tokens, UNK_ID)
        flat_low, flat_high = token_low[index.ids], token_high[index.ids]
        if index.pitches is not None:  # the frames' own pitches, also of unknown chords
            flat_low, flat_high = _row_bounds(index.pitches)
        span = index.window_frames + 1
        starts = index.positions - index.window_frames
        lows = np.zeros(len(starts), dtype=np.int16)
        highs = np.zeros(len(starts), dtype=np.int16)
        if len(starts):
            view = np.lib.stride_tricks.sliding_window_view
            lows = view(flat_low, span).min(axis=1)[starts]
            highs = view(flat_high, span).max(axis=1)[starts]
        first, last = TRANSPOSITIONS[0], TRANSPOSITIONS[-1]
        low = np.maximum(first, MIN_PITCH - lows.astype(np.int32)).astype(np.int8)
        high = np.minimum(last, MAX_PITCH - highs.astype(np.int32)).astype(np.int8)
        return cls(table, low, high)

    def __len__(self) -> int:
        return len(self.low)

    def epoch_shifts(self, seed: int, epoch: int) -> np.ndarray:
        """The shift (semitones) of every window in one epoch, by window index: uniform over
        the window's valid shifts, a pure function of ``(seed, epoch)``."""
        u = np.random.default_rng([seed, epoch, 1]).random(len(self.low))
        low = self.low.astype(np.int32)
        n = self.high.astype(np.int32) - low + 1
        return low + np.minimum((u * n).astype(np.int32), n - 1)

    def rows(self, shifts: np.ndarray) -> np.ndarray:
        """The table rows of ``shifts`` (int32)."""
        return (np.asarray(shifts) - TRANSPOSITIONS[0]).astype(np.int32)


def _row_bounds(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest pitch of each ``(N, 128)`` row; an empty row gets
    ``(MAX_PITCH, MIN_PITCH)`` (it restricts no shift)."""
    on = rows.astype(bool)
    any_on = on.any(axis=1)
    low = np.where(any_on, on.argmax(axis=1), MAX_PITCH).astype(np.int16)
    high = np.where(any_on, PITCHES - 1 - on[:, ::-1].argmax(axis=1), MIN_PITCH).astype(np.int16)
    return low, high


def window_dataset(
    index: WindowIndex,
    positions: np.ndarray,
    batch_size: int,
    *,
    drop_remainder: bool,
    weights: np.ndarray | None = None,
    shift_table: np.ndarray | None = None,
    shift_rows: np.ndarray | None = None,
    pitch_input: bool = False,
) -> tf.data.Dataset:
    """Batches of ``(x, y)`` (or ``(x, y, w)``) windows for ``positions``, in that order.

    With ``shift_table`` (K × V ids) and ``shift_rows`` (one row per position), every id of
    a window and its target is replaced by ``shift_table[row, id]`` (one gather per batch).

    When ``index`` has ``pitches`` (a per-pitch model), ``y`` is ``(previous frame's
    pitches, target's pitches)``, two ``(batch, 128)`` float32 0/1 arrays, shifted with the
    window. With ``pitch_input`` (a model reading pitches) ``x`` is the window's pitch rows,
    ``(batch, window_frames, 128)`` float32, shifted too.
    """
    import tensorflow as tf

    flat = tf.constant(index.ids)
    offsets = tf.range(-index.window_frames, 0, dtype=tf.int64)
    source: tuple[np.ndarray, ...] = (positions,)
    if shift_table is not None:
        if shift_rows is None or len(shift_rows) != len(positions):
            raise TrainingError("shift_rows must give one table row per position")
        vocab_size = int(shift_table.shape[1])
        table = tf.constant(np.ascontiguousarray(shift_table, dtype=np.int32).reshape(-1))
        source += (np.asarray(shift_rows, dtype=np.int32) * vocab_size,)

    if pitch_input and index.pitches is None:
        raise TrainingError("a model reading pitches needs the frames' pitch rows")
    rows = None if index.pitches is None else tf.constant(index.pitches)
    pitch_range = tf.range(PITCHES, dtype=tf.int32)

    def shifted(chords, shift):
        """Rows ``(B, 128)`` or windows of rows ``(B, W, 128)``, each moved by its shift."""
        source = pitch_range[None, :] - shift[:, None]
        inside = tf.cast((source >= 0) & (source < PITCHES), chords.dtype)
        clipped = tf.clip_by_value(source, 0, PITCHES - 1)
        moved = tf.gather(chords, clipped, axis=len(chords.shape) - 1, batch_dims=1)
        return moved * (inside[:, None, :] if len(chords.shape) == 3 else inside)

    def gather(pos, *rest):
        # a model reading pitches gets the window's rows below, not its ids
        x = None if pitch_input else tf.gather(flat, pos[:, None] + offsets)
        y = tf.gather(flat, pos)
        shift = None
        if shift_table is not None:
            base, rest = rest[0], rest[1:]
            if x is not None:
                x = tf.gather(table, x + base[:, None])
            y = tf.gather(table, y + base)
            shift = base // vocab_size + TRANSPOSITIONS[0]
        if rows is not None:
            prev, target = tf.gather(rows, pos - 1), tf.gather(rows, pos)
            if shift is not None:
                prev, target = shifted(prev, shift), shifted(target, shift)
            y = (tf.cast(prev, tf.float32), tf.cast(target, tf.float32))
        if pitch_input:
            x = tf.gather(rows, pos[:, None] + offsets)
            if shift is not None:
                x = shifted(x, shift)
            x = tf.cast(x, tf.float32)
        return (x, y, *rest)

    if weights is not None:
        source += (weights,)
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
    augment_mode: str = "random"
    transpose: RandomTranspose | None = None
    """The per-epoch random transposition (``random`` mode with augmentation), else None."""

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
            "augment_mode": self.augment_mode if self.augment_transpose else None,
            "skipped_files": dict(self.corpus.skipped),
        }


def training_frames(pieces: Sequence[Piece], augment_transpose: bool) -> list[Sequence[PitchSet]]:
    """The frame sequences to train on: each piece, or each piece in all 12 keys."""
    if not augment_transpose:
        return [p.frames for p in pieces]
    return [frames for p in pieces for _, frames in transpositions(p.frames, TRANSPOSITIONS)]


def prepare(
    corpus: Corpus,
    config: ModelConfig,
    *,
    augment_transpose: bool = False,
    augment_mode: str = "random",
    vocab: Vocab | None = None,
    pitch_prior: PitchPrior | None = None,
) -> TrainingData:
    """Vocabulary (training split, ``config.min_count``), pitch prior, windows of both parts.

    With ``augment_transpose`` the vocabulary is counted over the 12 keys in both modes;
    ``expand`` trains on all the copies, ``random`` on the pieces with a
    :class:`RandomTranspose`. A given ``vocab`` / ``pitch_prior`` (fine-tuning:
    :mod:`musicgend.training.finetune`) is used instead of the one counted here.
    """
    if augment_mode not in AUGMENT_MODES:
        raise CorpusError(
            f"augment mode must be one of {', '.join(AUGMENT_MODES)}: {augment_mode!r}"
        )
    frames = training_frames(corpus.train, augment_transpose)
    train_streams = [tokens_from_frames(f) for f in frames]
    if vocab is None:
        vocab = Vocab.build(train_streams, min_count=config.min_count, fs=config.fs)
    prior = pitch_prior or PitchPrior.from_frames(f for p in corpus.train for f in p.frames)
    on_the_fly = augment_transpose and augment_mode == "random"
    if on_the_fly:
        train_streams = [p.tokens for p in corpus.train]
    per_pitch = config.output == "pitch"
    train_frame_seqs = [p.frames for p in corpus.train] if on_the_fly else frames
    train = WindowIndex.from_sequences(
        (vocab.ids(s) for s in train_streams),
        config.window_frames,
        frames=train_frame_seqs if per_pitch else None,
    )
    val = WindowIndex.from_sequences(
        (vocab.ids(p.tokens) for p in corpus.val),
        config.window_frames,
        frames=[p.frames for p in corpus.val] if per_pitch else None,
    )
    return TrainingData(
        corpus,
        vocab,
        prior,
        train,
        val,
        augment_transpose,
        sum(len(p.frames) for p in corpus.train),
        augment_mode,
        RandomTranspose.build(vocab, train) if on_the_fly else None,
    )
