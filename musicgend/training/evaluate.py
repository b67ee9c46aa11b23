"""Evaluation: NLL, top-1 and OOV rate of a model, next to two baselines on the same frames.

The scoring rule (DESIGN.md §4, a contract):

* Every frame of every readable piece is scored, also frames whose chord the vocabulary
  doesn't know. Pieces are read with :func:`musicgend.io.midifile.read_piece` at the model's
  ``fs`` and ``first_track_only``.
* A distribution ``p`` over the vocabulary's ids gives a chord the probability ``p(token)``
  when the vocabulary knows it, else ``p(<unk>) × p_spell(chord)`` (the model's saved
  :class:`~musicgend.core.spelling.PitchPrior`). The NLL is the mean of ``−ln`` of that, in
  nats per frame. A probability that underflowed to 0 counts as the smallest normal float32.
* The model's context for frame t is the ``window_frames`` previous frames, left-padded with
  ``"e"`` (:func:`musicgend.core.window.training_windows`), each mapped to its vocabulary id
  with unknown chords → ``<unk>`` (as in training, :meth:`Vocab.ids`).
* Top-1: a frame is right only when the argmax id is exactly its chord's token; an unknown
  chord is never right (the argmax ``<unk>`` doesn't name a chord). The score's extras split
  it between frames that hold the previous frame's chord and changes (``top1_holds``,
  ``top1_changes``, ``change_share``); for a per-pitch model also into when and what
  (:func:`_head_timing`).
* A per-pitch model (``config.output = "pitch"``, :mod:`musicgend.core.pitchhead`) has no
  ``<unk>`` on its output: a chord's probability is the head's own, known to the vocabulary
  or not, and its top-1 guess is :meth:`~musicgend.core.pitchhead.PitchHead.best`, the exact
  argmax (the more likely of holding the previous chord and the most likely other chord,
  found by search). Its context is built as
  for any model (unknown chords → ``<unk>``, as in training).
* Baselines (:mod:`musicgend.training.ngram`), scored by the same rule on the same frames:
  ``repeat`` = λ·[id = previous id] + (1 − λ)·uniform over the vocabulary, and
  ``kn5_repeat`` = λ·[id = previous id] + (1 − λ)·interpolated Kneser-Ney 5-gram over ids.
  The previous id of a piece's first frame is ``"e"``. Both are fit on the model's training
  split pieces (as read, without augmentation) and each λ minimises the NLL on its validation
  pieces.
* Comparison (``--compare OTHER_MODEL``, e.g. the base of a fine-tuned model): the other
  model is scored by the same rule, with its own vocabulary and pitch prior, on exactly the
  files chosen for the first model (e.g. the held-out pieces of the fine-tune's data). Its
  fs and track choice must be the same, so that both score the same frames. Scored pieces
  named like ones of its own training or validation split are counted and warned about, as
  for the first model.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import numpy as np

from musicgend.core.augment import transpositions
from musicgend.core.memory import (
    FrameEvidence,
    MemoryWeights,
    evidence,
    mixed_log_prob,
    mixture_choice,
)
from musicgend.core.musicstats import piano_roll
from musicgend.core.pitchhead import PITCHES, PitchHead
from musicgend.core.spelling import PitchPrior
from musicgend.core.tokens import PitchSet
from musicgend.core.vocab import UNK_ID, Vocab
from musicgend.core.window import pitch_windows, training_windows
from musicgend.errors import CorpusError, MidiFileError, ModelError
from musicgend.io.midifile import Piece, find_midi_files, iter_pieces
from musicgend.text import count, none_could_be_read
from musicgend.training.ngram import (
    FrameStats,
    KneserNey,
    kn_stats,
    tune_lambda,
    uniform_stats,
)

if TYPE_CHECKING:  # pragma: no cover
    from musicgend.model.artifact import Artifact

KN_ORDER = 5
SPLITS = ("test", "val", "train", "all")
LOG_FLOOR = math.log(float(np.finfo(np.float32).tiny))
"""``ln`` of the smallest normal float32: the log-probability of a probability that is 0."""


class Predictor(Protocol):
    """Anything that maps ``(N, W)`` int32 windows (``(N, W, 128)`` float32 pitch rows when
    ``pitch_input``) to ``(N, V)`` probabilities."""

    pitch_input: bool

    def predict_batch(self, x: np.ndarray) -> np.ndarray: ...


# -- pieces → ids ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedPiece:
    """One piece as the scorer sees it: ids, and ln p_spell of each unknown chord (else 0);
    ``frames``: its pitch sets (a per-pitch model scores them directly)."""

    path: Path
    ids: np.ndarray
    log_spell: np.ndarray
    known: np.ndarray
    frames: tuple[PitchSet, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)


def encode_piece(piece: Piece, vocab: Vocab, prior: PitchPrior) -> EncodedPiece:
    ids = np.asarray(vocab.ids(piece.tokens), dtype=np.int32)
    known = ids != UNK_ID
    log_spell = np.zeros(len(ids), dtype=np.float64)
    for t in np.flatnonzero(~known):
        log_spell[t] = prior.log_p(piece.frames[t])
    return EncodedPiece(piece.path, ids, log_spell, known, piece.frames)


@dataclass
class PieceSet:
    """The readable pieces of a list of files, and the files skipped with their reasons."""

    pieces: list[EncodedPiece] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return sum(len(p) for p in self.pieces)


def read_pieces(
    files: Sequence[Path],
    vocab: Vocab,
    prior: PitchPrior,
    fs: int,
    first_track_only: bool,
    on_skip: Callable[[Path, str], None] | None = None,
    transpose: bool = False,
) -> PieceSet:
    """Read and encode every file; an unreadable one is recorded (and reported) and skipped.

    ``transpose`` encodes each piece in every key that keeps it in MIDI range
    (:func:`musicgend.core.augment.transpositions`, as training's augmentation does).
    """
    out = PieceSet()
    for item in iter_pieces(list(files), fs, first_track_only):
        if isinstance(item, MidiFileError):
            path = Path(str(item.path))
            out.skipped.append((path, item.reason))
            if on_skip is not None:
                on_skip(path, item.reason)
        elif transpose:
            for _, frames in transpositions(item.frames):
                out.pieces.append(encode_piece(Piece(item.path, tuple(frames)), vocab, prior))
        else:
            out.pieces.append(encode_piece(item, vocab, prior))
    return out


# -- scores ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """Mean NLL (nats/frame) and top-1 accuracy over ``frames`` frames."""

    nll_nats_per_frame: float
    top1: float
    frames: int
    lam: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "nll_nats_per_frame": self.nll_nats_per_frame,
            "top1": self.top1,
            "frames": self.frames,
        }
        if self.lam is not None:
            out["lambda"] = self.lam
        out.update(self.extra)
        return out


def _batches(
    pieces: Sequence[EncodedPiece], window: int, batch_size: int, pitch_input: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(x, y)`` batches of ``batch_size`` windows over all pieces in order; with
    ``pitch_input`` the windows are multi-hot pitch rows ``(N, window, 128)``."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    held = 0
    for piece in pieces:
        x, y = training_windows(piece.ids.tolist(), window)
        if pitch_input:
            x = pitch_windows(piece.frames, window)
        xs.append(x)
        ys.append(y)
        held += len(y)
        while held >= batch_size:
            x_all, y_all = np.concatenate(xs), np.concatenate(ys)
            yield x_all[:batch_size], y_all[:batch_size]
            xs, ys = [x_all[batch_size:]], [y_all[batch_size:]]
            held -= batch_size
    if held:
        yield np.concatenate(xs), np.concatenate(ys)


def _pitch_rows(pieces: Sequence[EncodedPiece]) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's pitches and its previous frame's (silence before a piece's first),
    as ``(frames, 128)`` bool, in scoring order."""
    rows = [piano_roll(p.frames) for p in pieces]
    silence = np.zeros((1, PITCHES), dtype=bool)
    prev = np.concatenate([np.concatenate([silence, r[:-1]]) for r in rows])
    return prev, np.concatenate(rows)


def score_model(
    predictor: Predictor,
    pieces: Sequence[EncodedPiece],
    vocab_size: int,
    window_frames: int,
    batch_size: int = 256,
    on_batch: Callable[[], None] | None = None,
    head: PitchHead | None = None,
    memory: MemoryWeights | None = None,
) -> Score:
    """Score a model's predictions on every frame of ``pieces`` by the scoring rule.

    With ``head`` (a per-pitch model) the predictor's outputs are the head's inputs, each
    chord's probability is the head's (no ``<unk>``, no p_spell) and its top-1 guess is
    :meth:`PitchHead.best`. With ``memory`` too, each frame's probabilities are the head's
    mixed with the piece memory's recall from the piece's frames before it
    (:mod:`musicgend.core.memory`); ``extra["without_memory"]`` then scores the head alone,
    and the timing figures (:func:`_head_timing`) are the head's.
    """
    if memory is not None and head is None:
        raise ModelError("a piece memory needs a per-pitch model")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    frames = sum(len(p) for p in pieces)
    if frames == 0:
        raise CorpusError("no frames to score")
    log_spell = np.concatenate([p.log_spell for p in pieces])
    log_p = np.empty(frames, dtype=np.float64)
    correct = np.empty(frames, dtype=bool)
    width = vocab_size if head is None else head.params_width
    prev_rows, chord_rows = _pitch_rows(pieces)
    change_right = np.empty(frames, dtype=bool)
    p_hold = np.empty(frames, dtype=np.float64)
    recalled = _recalled(pieces, memory) if memory is not None else None
    # ln p of the candidates for the mixture's most likely chord (with memory)
    kept = frames if recalled is not None else 0
    lp_cand = np.full((3, kept), -np.inf)
    changed_rows = np.zeros((kept, PITCHES), dtype=bool)
    start = 0
    for x, y in _batches(pieces, window_frames, batch_size, predictor.pitch_input):
        probs = np.asarray(predictor.predict_batch(x))
        if probs.shape != (len(x), width):
            raise ModelError(
                f"the model returned outputs of shape {probs.shape} for {len(x)} windows; "
                f"expected ({len(x)}, {width})"
            )
        span = slice(start, start + len(y))
        if head is not None:
            prev, chords = prev_rows[span], chord_rows[span]
            lp = head.log_prob(probs, prev, chords)
            log_p[span] = np.maximum(lp, LOG_FLOOR)
            best, changed, lp_prev, lp_changed = head.best_of_two(probs, prev)
            correct[span] = np.all(best == chords, axis=1)
            if recalled is not None:
                lp_cand[0, span], lp_cand[1, span] = lp_prev, lp_changed
                lp_cand[2, span] = _recall_log_probs(head, probs, prev, recalled, span)
                changed_rows[span] = changed
            change_right[span] = np.all(changed == chords, axis=1)
            p_hold[span] = head.hold_prob(probs)
        else:
            p = probs[np.arange(len(y)), y].astype(np.float64)
            with np.errstate(divide="ignore"):
                log_p[span] = np.maximum(np.log(p), LOG_FLOOR)
            correct[span] = (probs.argmax(axis=1) == y) & (y != UNK_ID)
        start += len(y)
        if on_batch is not None:
            on_batch()
    known = np.concatenate([p.known for p in pieces])
    changes = np.any(prev_rows != chord_rows, axis=1)
    extra: dict[str, Any] = {**_top1_by_change(correct, changes)}
    if head is not None:
        extra.update(_head_timing(change_right, p_hold, changes))
        if recalled is not None:
            alone = {"nll_nats_per_frame": float(-log_p.mean()), "top1": float(correct.mean())}
            log_p, correct = _with_memory(
                log_p, lp_cand, changed_rows, recalled, chord_rows, prev_rows
            )
            extra.update(_top1_by_change(correct, changes))
            extra["without_memory"] = alone
            extra["memory"] = recalled.summary()
        return _score(log_p, correct, known, extra=extra)
    return _score(log_p + log_spell, correct, known, extra=extra)


@dataclass(frozen=True)
class _Recalled:
    """Each scored frame's piece-memory recall (:class:`FrameEvidence`), its chord as a row
    ``(frames, 128)`` and the recall's share ``m``."""

    ev: FrameEvidence
    chords: np.ndarray
    share: np.ndarray

    def summary(self) -> dict[str, float | None]:
        return {
            "recall_share": _share(self.ev.has),
            "recall_right": _share(self.ev.hit[self.ev.has]),
            "mean_weight": _share(self.share),
        }


def _recalled(pieces: Sequence[EncodedPiece], memory: MemoryWeights) -> _Recalled:
    ev = evidence([p.frames for p in pieces])
    rows = piano_roll([() if r is None else r.chord for r in ev.recalled])
    return _Recalled(ev, rows, memory.shares(ev.level, ev.holds))


def _recall_log_probs(
    head: PitchHead, params: np.ndarray, prev: np.ndarray, recalled: _Recalled, span: slice
) -> np.ndarray:
    """The head's ln p of each row's recall (−inf where there is none)."""
    out = np.full(len(params), -np.inf)
    has = recalled.ev.has[span]
    if has.any():
        out[has] = head.log_prob(params[has], prev[has], recalled.chords[span][has])
    return out


def _with_memory(
    log_p: np.ndarray,
    lp_cand: np.ndarray,
    changed_rows: np.ndarray,
    recalled: _Recalled,
    chord_rows: np.ndarray,
    prev_rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's ln p and top-1 under the mixture of the head and the recall. The
    mixture's most likely chord is the previous chord, the head's best other chord or the
    recall: every other chord has the head's share of its probability only, less than the
    best other chord's."""
    m, rec, has = recalled.share, recalled.chords, recalled.ev.has
    mixed = np.maximum(mixed_log_prob(log_p, m, recalled.ev.hit), LOG_FLOOR)
    rows = (prev_rows, changed_rows, rec)
    choice = mixture_choice(lp_cand, [has & np.all(r == rec, axis=1) for r in rows], m)
    guess = np.where(
        (choice == 0)[:, None], prev_rows, np.where((choice == 1)[:, None], changed_rows, rec)
    )
    return mixed, np.all(guess == chord_rows, axis=1)


def _share(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if mask.size else None


def _top1_by_change(correct: np.ndarray, changes: np.ndarray) -> dict[str, float | None]:
    """Where top-1 is won and lost: ``change_share`` (frames whose chord differs from the
    previous frame's), top-1 on the frames that hold (``top1_holds``) and on the changes
    (``top1_changes``)."""
    return {
        "change_share": _share(changes),
        "top1_holds": _share(correct[~changes]),
        "top1_changes": _share(correct[changes]),
    }


def _head_timing(
    change_right: np.ndarray, p_hold: np.ndarray, changes: np.ndarray
) -> dict[str, float | None]:
    """A per-pitch model's changes, split into *when* and *what*: ``changes_hold_unlikely``
    (its copy gate gives holding < 0.5 there: it expects a change),
    ``top1_changes_given_timing`` (its most likely chord other than the previous one is the
    new chord: what top-1 on the changes would be if it knew when the chord changes) and
    ``top1_timing_oracle`` (right on every hold and that share of the changes)."""
    on_changes = _share(change_right[changes])
    share = _share(changes) or 0.0
    return {
        "changes_hold_unlikely": _share(p_hold[changes] < 0.5),
        "top1_changes_given_timing": on_changes,
        "top1_timing_oracle": (1.0 - share) + share * (on_changes or 0.0),
    }


def _score(log_p: np.ndarray, correct: np.ndarray, known: np.ndarray, **kw: Any) -> Score:
    """Mean NLL and top-1, plus the NLL split between known and unknown chords.

    ``nll_known`` / ``nll_unknown`` are means over those frames (``None`` when there are
    none); the overall NLL is their frame-weighted mean.
    """
    by_kind = {
        "nll_known": float(-log_p[known].mean()) if known.any() else None,
        "nll_unknown": float(-log_p[~known].mean()) if (~known).any() else None,
    }
    extra = {**by_kind, **kw.pop("extra", {})}
    return Score(float(-log_p.mean()), float(correct.mean()), len(log_p), extra=extra, **kw)


# -- baselines ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baselines:
    """The fitted baselines: the Kneser-Ney model and each mixture's tuned λ."""

    vocab_size: int
    kn: KneserNey
    lam_repeat: float
    lam_kn: float
    val_frames: int
    train_frames: int
    fit_seconds: float


def fit_baselines(
    train: Sequence[EncodedPiece],
    val: Sequence[EncodedPiece],
    vocab_size: int,
    order: int = KN_ORDER,
) -> Baselines:
    """Fit the n-gram on the training pieces and tune both λ on the validation pieces."""
    if not train or not sum(len(p) for p in train):
        raise CorpusError("the baselines need at least one readable training piece")
    if not val or not sum(len(p) for p in val):
        raise CorpusError("the baselines need at least one readable validation piece")
    t0 = time.perf_counter()
    kn = KneserNey.fit([p.ids.tolist() for p in train], order, vocab_size)
    spell = float(sum(p.log_spell.sum() for p in val))
    uni = FrameStats.concat([uniform_stats(p.ids.tolist(), vocab_size) for p in val])
    lam_repeat, _ = tune_lambda(uni, spell)
    kns = FrameStats.concat([kn_stats(kn, p.ids.tolist()) for p in val])
    lam_kn, _ = tune_lambda(kns, spell)
    return Baselines(
        vocab_size,
        kn,
        lam_repeat,
        lam_kn,
        val_frames=len(uni),
        train_frames=sum(len(p) for p in train),
        fit_seconds=time.perf_counter() - t0,
    )


def _mixture_score(
    stats: FrameStats, log_spell: np.ndarray, known: np.ndarray, lam: float, **extra: Any
) -> Score:
    log_p = np.maximum(stats.log_probs(lam), LOG_FLOOR) + log_spell
    return _score(log_p, stats.correct(lam), known, lam=lam, extra=extra)


def score_baselines(baselines: Baselines, pieces: Sequence[EncodedPiece]) -> dict[str, Score]:
    """``{"repeat": …, "kn5_repeat": …}`` on every frame of ``pieces``."""
    log_spell = np.concatenate([p.log_spell for p in pieces])
    known = np.concatenate([p.known for p in pieces])
    v = baselines.vocab_size
    uni = FrameStats.concat([uniform_stats(p.ids.tolist(), v) for p in pieces])
    kns = FrameStats.concat([kn_stats(baselines.kn, p.ids.tolist()) for p in pieces])
    return {
        "repeat": _mixture_score(uni, log_spell, known, baselines.lam_repeat),
        f"kn{baselines.kn.order}_repeat": _mixture_score(
            kns, log_spell, known, baselines.lam_kn, discounts=list(baselines.kn.discounts)
        ),
    }


# -- which files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What to score (files, under which split name) and what the baselines are fit on."""

    files: list[Path]
    split: str
    train_files: list[Path] | None
    val_files: list[Path] | None
    baseline_problem: str | None = None
    seen: Mapping[str, str] = field(default_factory=dict)
    """File name → ``train`` or ``val``: the names in the model's saved split that the
    model (and the baselines) were fit or tuned on."""


def _training_info(artifact: Artifact) -> tuple[Path | None, dict[str, list[str]] | None]:
    """The training data directory and the saved split (train/val/test file lists)."""
    meta = artifact.metadata
    sources = [artifact.training, meta]
    data_dir: Path | None = None
    split: dict[str, list[str]] | None = None
    for src in sources:
        if data_dir is None and isinstance(src.get("data_dir"), str):
            data_dir = Path(src["data_dir"])
        raw = src.get("split")
        if (
            split is None
            and isinstance(raw, dict)
            and all(isinstance(raw.get(k), list) for k in ("train", "val", "test"))
        ):
            split = {k: [str(f) for f in raw[k]] for k in ("train", "val", "test")}
    return data_dir, split


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _split_files(root: Path, names: Iterable[str], what: str) -> list[Path]:
    files = [root / n for n in names]
    missing = [f for f in files if not f.is_file()]
    if missing:
        n, k = len(files), len(missing)
        if k == n:
            which = f"the {what} file is" if n == 1 else f"all {n} {what} files are"
        else:
            which = f"{k} of the {n} {what} files {'is' if k == 1 else 'are'}"
        raise CorpusError(f"{which} missing under {root} (first: {missing[0]})")
    return files


def _seen_names(saved: Mapping[str, list[str]] | None) -> dict[str, str]:
    """File name → ``train`` or ``val``, for the names in a model's saved split."""
    return {Path(n).name: part for part in ("val", "train") for n in (saved or {}).get(part, [])}


def plan(
    artifact: Artifact,
    midi_dir: Path,
    split: str | None = None,
    train_data: Path | None = None,
    baselines: bool = True,
) -> Plan:
    """Decide which files to score and where the baselines' training pieces are.

    With ``split`` unset: the saved test split when ``midi_dir`` is the model's training data
    directory (as saved, or ``train_data``), else every MIDI file under ``midi_dir``.
    ``split`` test/val/train picks that part of the saved split under ``midi_dir``; ``all``
    every file.
    """
    if split is not None and split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not midi_dir.exists():
        raise CorpusError(f"{midi_dir}: no such file or directory")
    data_dir, saved = _training_info(artifact)
    if split is None:
        homes = [d for d in (data_dir, train_data) if d is not None]
        split = "test" if any(_same_dir(midi_dir, d) for d in homes) else "all"
    if split == "all":
        files = (
            [
                f
                for f in find_midi_files([midi_dir])
                if not any(part.startswith(".") for part in f.relative_to(midi_dir).parts)
            ]
            if midi_dir.is_dir()
            else [midi_dir]
        )
        if not files:
            raise CorpusError(f"{midi_dir}: no MIDI files (hidden files are ignored)")
    else:
        if saved is None:
            raise CorpusError(
                f"{artifact.path}: the model has no saved train/val/test split; use --split all"
            )
        if not midi_dir.is_dir():
            raise CorpusError(f"{midi_dir}: --split {split} needs the training data directory")
        files = _split_files(midi_dir, saved[split], f"{split}-split")
        if not files:
            raise CorpusError(f"the saved {split} split is empty")

    seen = _seen_names(saved)
    if not baselines:
        return Plan(files, split, None, None, seen=seen)
    problem: str | None = None
    root = train_data if train_data is not None else data_dir
    train_files = val_files = None
    if saved is None:
        problem = f"{artifact.path}: the model has no saved train/val split to fit them on"
    elif root is None:
        problem = f"{artifact.path}: the model doesn't say where its training data is"
    elif not root.is_dir():
        problem = f"{root}: no such directory (the model's training data)"
    else:
        try:
            train_files = _split_files(root, saved["train"], "training-split")
            val_files = _split_files(root, saved["val"], "validation-split")
        except CorpusError as exc:
            problem = str(exc)
            train_files = val_files = None
    if problem is not None:
        problem = (
            f"can't fit the baselines: {problem}; pass --train-data DIR (the directory the "
            "model was trained on) or --no-baselines"
        )
    return Plan(files, split, train_files, val_files, problem, seen)


def _seen_pieces(pieces: Iterable[EncodedPiece], names: Mapping[str, str]) -> dict[str, list[Path]]:
    """The pieces whose file name ``names`` (:func:`_seen_names`) puts in ``train`` or ``val``."""
    seen: dict[str, list[Path]] = {"train": [], "val": []}
    for piece in pieces:
        part = names.get(piece.path.name)
        if part is not None:
            seen[part].append(piece.path)
    return seen


def _seen_warning(
    seen: Mapping[str, list[Path]], pieces: int, split: str, model: str, fit: str, scores: str
) -> str | None:
    """Why ``scores`` may be optimistic, when scored pieces share a name with the training or
    validation split of ``model`` (unless that split is what was asked for)."""
    train, val = seen.get("train", []), seen.get("val", [])
    if split in ("train", "val") or not (train or val):
        return None
    n = len(train) + len(val)
    if n == pieces:
        who = "the scored piece shares" if n == 1 else f"all {n} scored pieces share"
    else:
        who = f"{n} of the {pieces} scored pieces {'shares' if n == 1 else 'share'}"
    return (
        f"{who} a file name with pieces {model} was trained on ({len(train)}) or "
        f"validated on ({len(val)}), e.g. {(train or val)[0]}: {fit} fit or tuned on "
        f"them, so {scores} are optimistic"
    )


# -- the whole evaluation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Another model scored on the same files (``--compare``)."""

    model: str
    runtime: str
    score: Score
    oov_rate: float
    vocab_size: int
    pieces: int
    seen: dict[str, list[Path]]
    """Scored pieces whose file name is in this model's own ``train`` or ``val`` split."""

    def seen_warning(self, split: str) -> str | None:
        """As :meth:`Report.seen_warning`, for this model's own split (``split``: the one
        asked for)."""
        return _seen_warning(
            self.seen,
            self.pieces,
            split,
            f"the compared model {self.model}",
            "it was",
            "its scores",
        )

    def to_json(self, reference: Score) -> dict[str, Any]:
        return {
            "model": self.model,
            "runtime": self.runtime,
            "frames": self.score.frames,
            "vocab_size": self.vocab_size,
            "oov_rate": self.oov_rate,
            "nll_nats_per_frame": self.score.nll_nats_per_frame,
            "top1": self.score.top1,
            "nll_known": self.score.extra.get("nll_known"),
            "nll_unknown": self.score.extra.get("nll_unknown"),
            "model_nll_minus_this": reference.nll_nats_per_frame - self.score.nll_nats_per_frame,
            "in_training_split": len(self.seen.get("train", [])),
            "in_validation_split": len(self.seen.get("val", [])),
        }


@dataclass
class Report:
    """Everything ``musicgend evaluate`` prints."""

    model: str
    split: str
    score: Score
    baselines: dict[str, Score]
    pieces: int
    oov_rate: float
    skipped: list[tuple[Path, str]]
    baseline_info: dict[str, Any]
    seconds: dict[str, float]
    runtime: str
    comparisons: list[Comparison] = field(default_factory=list)
    seen: dict[str, list[Path]] = field(default_factory=dict)
    """Scored pieces whose file name is in the model's ``train`` or ``val`` split."""

    def seen_warning(self) -> str | None:
        """Why the scores may be optimistic, when scored pieces share a name with the model's
        training or validation split (unless that split is what was asked for)."""
        fit = "the model and its baselines were" if self.baselines else "the model was"
        return _seen_warning(self.seen, self.pieces, self.split, "the model", fit, "these scores")

    @property
    def nll_ratio(self) -> float | None:
        kn = self.baselines.get(f"kn{KN_ORDER}_repeat")
        if kn is None or kn.nll_nats_per_frame <= 0:
            return None
        return self.score.nll_nats_per_frame / kn.nll_nats_per_frame

    def to_json(self) -> dict[str, Any]:
        out = self._fields()
        if self.comparisons:
            out["compare"] = [c.to_json(self.score) for c in self.comparisons]
        return out

    def _fields(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "split": self.split,
            "runtime": self.runtime,
            "pieces": self.pieces,
            "frames": self.score.frames,
            "oov_rate": self.oov_rate,
            "nll_nats_per_frame": self.score.nll_nats_per_frame,
            "top1": self.score.top1,
            **self.score.extra,  # nll_known, nll_unknown and top-1's split
            "baselines": {k: v.to_json() for k, v in self.baselines.items()},
            "nll_ratio_vs_kn5_repeat": self.nll_ratio,
            "baseline_data": self.baseline_info,
            "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped],
            "in_training_split": len(self.seen.get("train", [])),
            "in_validation_split": len(self.seen.get("val", [])),
            "seconds": self.seconds,
        }


def evaluate(
    model_name: str,
    predictor: Predictor,
    vocab: Vocab,
    prior: PitchPrior,
    window_frames: int,
    fs: int,
    first_track_only: bool,
    plan_: Plan,
    *,
    batch_size: int = 256,
    runtime: str = "",
    on_skip: Callable[[Path, str], None] | None = None,
    progress_factory: Callable[[int], Any] | None = None,
    transposed_baseline: bool = False,
    head: PitchHead | None = None,
    on_warning: Callable[[str], None] | None = None,
    memory: MemoryWeights | None = None,
) -> Report:
    """Read the plan's pieces, score the model and (if the plan has them) the baselines.

    ``head``: the model's per-pitch head, if it has one; ``memory``: its piece memory's
    weights, if it has them and they are to be used (see :func:`score_model`).
    ``on_warning`` gets :meth:`Report.seen_warning` when there is one.

    ``transposed_baseline`` adds ``kn5_repeat_transposed``: the n-gram fit on the training
    pieces in every key (as a model trained with ``--augment-transpose`` sees them).
    """
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    target = read_pieces(plan_.files, vocab, prior, fs, first_track_only, on_skip)
    seconds["read"] = time.perf_counter() - t0
    if not target.pieces:
        path, reason = target.skipped[0]
        raise CorpusError(none_could_be_read(len(plan_.files), f"{path}: {reason}"))
    frames = target.frames
    oov = float(sum(int((~p.known).sum()) for p in target.pieces)) / frames

    t0 = time.perf_counter()
    n_batches = math.ceil(frames / batch_size)
    if progress_factory is not None:
        with progress_factory(n_batches) as bar:
            score = score_model(
                predictor,
                target.pieces,
                len(vocab),
                window_frames,
                batch_size,
                bar.advance,
                head,
                memory,
            )
    else:
        score = score_model(
            predictor,
            target.pieces,
            len(vocab),
            window_frames,
            batch_size,
            head=head,
            memory=memory,
        )
    seconds["model"] = time.perf_counter() - t0

    baselines: dict[str, Score] = {}
    info: dict[str, Any] = {}
    if plan_.train_files is not None and plan_.val_files is not None:
        t0 = time.perf_counter()
        train = read_pieces(plan_.train_files, vocab, prior, fs, first_track_only)
        val = read_pieces(plan_.val_files, vocab, prior, fs, first_track_only)
        fitted = fit_baselines(train.pieces, val.pieces, len(vocab))
        baselines = score_baselines(fitted, target.pieces)
        seconds["baselines"] = time.perf_counter() - t0
        info = {
            "train_pieces": len(train.pieces),
            "train_frames": fitted.train_frames,
            "val_pieces": len(val.pieces),
            "val_frames": fitted.val_frames,
            "skipped": len(train.skipped) + len(val.skipped),
        }
        if transposed_baseline:
            t0 = time.perf_counter()
            shifted = read_pieces(
                plan_.train_files, vocab, prior, fs, first_track_only, transpose=True
            )
            fitted_t = fit_baselines(shifted.pieces, val.pieces, len(vocab))
            kn_t = score_baselines(fitted_t, target.pieces)[f"kn{KN_ORDER}_repeat"]
            baselines[f"kn{KN_ORDER}_repeat_transposed"] = kn_t
            info["transposed_train_frames"] = fitted_t.train_frames
            seconds["transposed_baseline"] = time.perf_counter() - t0
    report = Report(
        model_name,
        plan_.split,
        score,
        baselines,
        len(target.pieces),
        oov,
        target.skipped,
        info,
        seconds,
        runtime,
        seen=_seen_pieces(target.pieces, plan_.seen),
    )
    warning = report.seen_warning()
    if warning is not None and on_warning is not None:
        on_warning(warning)
    return report


def scoring_runtime(artifact: Artifact) -> str:
    """What ``auto`` means for scoring: batched ``tf`` when TensorFlow is installed.

    The daemon's ``auto`` (:func:`musicgend.model.runtime.choose_runtime`) is chosen for one
    window per call; scoring runs thousands of windows per call, where batched TensorFlow is
    several times faster than LiteRT or NumPy on CPU, and uses a GPU where it sees one (all
    give the same probabilities).
    Except for an int8 LiteRT export: its probabilities differ a little from the float
    weights', and the daemon plays the export, so that is what is scored.
    """
    import importlib.util

    from musicgend.model.runtime import choose_runtime

    chosen = choose_runtime(artifact)
    if chosen == "litert" and artifact.litert_quantize != "none":
        return chosen
    if importlib.util.find_spec("tensorflow") is None:
        return chosen
    return "tf"


def run_evaluation(
    model_dir: str | Path,
    midi_dir: str | Path,
    *,
    split: str | None = None,
    train_data: str | Path | None = None,
    runtime: str = "auto",
    batch_size: int = 256,
    baselines: bool = True,
    on_skip: Callable[[Path, str], None] | None = None,
    progress_factory: Callable[[int], Any] | None = None,
    transposed_baseline: bool = False,
    compare: Sequence[str | Path] = (),
    on_warning: Callable[[str], None] | None = None,
    memory: bool = True,
) -> Report:
    """``musicgend evaluate``: load the model, pick the files, score model and baselines,
    and every ``compare`` model on the same files (:class:`Comparison`). ``memory``: use
    each model's piece memory (``memory.json``) where it has one.

    Raises :class:`~musicgend.errors.ModelError` for a broken model directory (or a compare
    model that quantises differently) and :class:`~musicgend.errors.CorpusError` when the
    files to score, or the pieces the baselines need, can't be found.
    """
    from musicgend.model.artifact import load_artifact
    from musicgend.model.runtime import load_predictor, pitch_head

    if batch_size < 1:
        raise CorpusError(f"--batch-size must be >= 1, got {batch_size}")
    if transposed_baseline and not baselines:
        raise CorpusError("--transposed-baseline is a baseline: it can't go with --no-baselines")
    artifact = load_artifact(model_dir)
    others = [load_artifact(m) for m in compare]
    for other in others:
        a, b = artifact.config, other.config
        if (a.fs, a.first_track_only) != (b.fs, b.first_track_only):
            raise ModelError(
                f"{other.path}: can't compare: it reads MIDI at fs={b.fs}"
                f"{' (first track only)' if b.first_track_only else ''}, {model_dir} at "
                f"fs={a.fs}{' (first track only)' if a.first_track_only else ''}; "
                "they would score different frames"
            )
    the_plan = plan(
        artifact,
        Path(midi_dir),
        split,
        Path(train_data) if train_data is not None else None,
        baselines,
    )
    if the_plan.baseline_problem is not None:
        raise CorpusError(the_plan.baseline_problem)
    cfg = artifact.config
    predictor = load_predictor(
        artifact, scoring_runtime(artifact) if runtime == "auto" else runtime
    )
    try:
        report = evaluate(
            str(model_dir),
            predictor,
            artifact.vocab,
            artifact.pitch_prior,
            cfg.window_frames,
            cfg.fs,
            cfg.first_track_only,
            the_plan,
            batch_size=batch_size,
            runtime=predictor.runtime,
            on_skip=on_skip,
            progress_factory=progress_factory,
            transposed_baseline=transposed_baseline,
            head=pitch_head(artifact),
            on_warning=on_warning,
            memory=artifact.memory if memory else None,
        )
    finally:
        _close(predictor)
    for other, name in zip(others, compare, strict=True):
        comparison = score_other(
            str(name), other, the_plan.files, runtime, batch_size, progress_factory, memory
        )
        report.comparisons.append(comparison)
        warning = comparison.seen_warning(report.split)
        if warning is not None and on_warning is not None:
            on_warning(warning)
    return report


def _close(predictor: Any) -> None:
    close = getattr(predictor, "close", None)
    if callable(close):
        close()


def score_other(
    name: str,
    artifact: Artifact,
    files: Sequence[Path],
    runtime: str = "auto",
    batch_size: int = 256,
    progress_factory: Callable[[int], Any] | None = None,
    memory: bool = True,
) -> Comparison:
    """Score another model on ``files`` by the same rule, with its own vocabulary and prior
    (and its own piece memory, if it has one and ``memory``); count the pieces named like
    ones of its own training or validation split."""
    from musicgend.model.runtime import load_predictor, pitch_head

    cfg = artifact.config
    target = read_pieces(files, artifact.vocab, artifact.pitch_prior, cfg.fs, cfg.first_track_only)
    if not target.pieces:
        path, reason = target.skipped[0]
        raise CorpusError(
            f"--compare {name}: {none_could_be_read(len(files), f'{path}: {reason}')}"
        )
    predictor = load_predictor(
        artifact, scoring_runtime(artifact) if runtime == "auto" else runtime
    )
    try:
        args = (predictor, target.pieces, len(artifact.vocab), cfg.window_frames, batch_size)
        head = pitch_head(artifact)
        weights = artifact.memory if memory else None
        if progress_factory is not None:
            with progress_factory(math.ceil(target.frames / batch_size)) as bar:
                score = score_model(*args, bar.advance, head, weights)
        else:
            score = score_model(*args, head=head, memory=weights)
    finally:
        _close(predictor)
    oov = float(sum(int((~p.known).sum()) for p in target.pieces)) / target.frames
    seen = _seen_pieces(target.pieces, _seen_names(_training_info(artifact)[1]))
    return Comparison(
        name, predictor.runtime, score, oov, len(artifact.vocab), len(target.pieces), seen
    )


# -- output -------------------------------------------------------------------------------------


def _rows(report: Report) -> list[tuple[str, str, str, str]]:
    rows = [
        (
            "model",
            f"{report.score.nll_nats_per_frame:.3f}",
            f"{100 * report.score.top1:.1f} %",
            "",
        )
    ]
    alone = report.score.extra.get("without_memory")
    if alone is not None:
        rows.append(
            (
                "model without its piece memory",
                f"{alone['nll_nats_per_frame']:.3f}",
                f"{100 * alone['top1']:.1f} %",
                "",
            )
        )
    for name, s in report.baselines.items():
        lam = f"{s.lam:.3f}" if s.lam is not None else ""
        rows.append((name, f"{s.nll_nats_per_frame:.3f}", f"{100 * s.top1:.1f} %", lam))
    for c in report.comparisons:
        s = c.score
        rows.append(
            (f"compare {c.model}", f"{s.nll_nats_per_frame:.3f}", f"{100 * s.top1:.1f} %", "")
        )
    return rows


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f} %"


def _summary(report: Report) -> list[str]:
    lines = [
        f"model {report.model} ({report.runtime or 'default runtime'}), split: {report.split}",
        f"{count(report.pieces, 'piece')}, {count(report.score.frames, 'frame')}, "
        f"{100 * report.oov_rate:.1f} % unknown chords, {count(len(report.skipped), 'file')} "
        "skipped",
    ]
    if report.baseline_info:
        b = report.baseline_info
        lines.append(
            f"baselines fit on {count(b['train_pieces'], 'training piece')} "
            f"({count(b['train_frames'], 'frame')}), lambda tuned on "
            f"{count(b['val_pieces'], 'validation piece')} ({count(b['val_frames'], 'frame')})"
        )
    ratio = report.nll_ratio
    if ratio is not None:
        lines.append(f"model NLL / kn{KN_ORDER}_repeat NLL = {ratio:.3f}")
    x = report.score.extra
    if x.get("change_share") is not None:
        holds, changes = x.get("top1_holds"), x.get("top1_changes")
        lines.append(
            f"top-1 on frames that hold the previous chord {_pct(holds)}, on changes "
            f"{_pct(changes)} ({_pct(x['change_share'])} of frames change)"
        )
    if x.get("memory") is not None:
        mem = x["memory"]
        lines.append(
            f"piece memory: a recall on {_pct(mem['recall_share'])} of frames, the frame's "
            f"chord on {_pct(mem['recall_right'])} of them (mean weight "
            f"{_pct(mem['mean_weight'])})"
        )
    if x.get("top1_changes_given_timing") is not None:
        alone = "without the memory, " if x.get("memory") is not None else ""
        lines.append(
            f"{alone}the head expects {_pct(x['changes_hold_unlikely'])} of the changes "
            "(hold < 0.5); "
            f"its most likely other chord is the new one at "
            f"{_pct(x['top1_changes_given_timing'])} of them "
            f"(top-1 if it knew when the chord changes: {_pct(x['top1_timing_oracle'])})"
        )
    for c in report.comparisons:
        delta = report.score.nll_nats_per_frame - c.score.nll_nats_per_frame
        lines.append(
            f"model NLL - {c.model} NLL = {delta:+.3f} nats/frame on the same {c.score.frames} "
            f"frames ({100 * c.oov_rate:.1f} % unknown to it)"
        )
    return lines


def render_report(report: Report, stream: TextIO, rich: bool = False) -> None:
    """A readable table: rich on a terminal, plain aligned text otherwise."""
    headers = ("", "NLL nats/frame", "top-1", "lambda")
    rows = _rows(report)
    summary = _summary(report)
    if rich:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="musicgend evaluate")
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console = Console(file=stream)
        console.print(table)
        for line in summary:
            console.print(line, highlight=False)
        return
    widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(len(headers))]
    for r in (headers, *rows):
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        print("  ".join(cells).rstrip(), file=stream)
    for line in summary:
        print(line, file=stream)


def dumps(report: Report) -> str:
    """The report as one JSON object (one line)."""
    return json.dumps(report.to_json())
