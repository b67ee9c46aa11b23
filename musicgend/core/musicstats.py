"""Statistics of a frame sequence, to compare generated music with a corpus (pure).

Definitions (one frame = ``1 / fs`` s; the same for corpus pieces and generations):

* **note**: a maximal run of one pitch over consecutive frames; its onset is its first frame.
* ``pitches_per_frame``: mean number of sounding pitches over the non-silent frames.
* ``onsets_per_second``: notes per second of music (all frames, silent ones included).
* ``repeat_share``: share of frames (from the second on) whose pitch set equals the previous
  frame's — silence after silence counts as a repeat.
* ``short_note_share``: share of notes that last exactly one frame. A note shorter than a
  frame either vanishes in quantisation or fills one frame, so at fs = 5 "shorter than one
  frame" and "one frame (0.2 s) or less" are the same notes: the seed's "scattered notes".
* ``scale_consistency``: share of note onsets whose pitch class lies in the best-fitting of
  the 24 major / natural-minor scales (a relative major and minor share one pitch set, so
  12 distinct sets are tried), the scale chosen per piece.

Several pieces pool their counts (:func:`corpus_stats`): ratios of sums, not means of
per-piece ratios, so long pieces weigh more, as in a generation of the same length.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from musicgend.text import count

MAJOR_STEPS = (0, 2, 4, 5, 7, 9, 11)
PITCH_CLASS_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
SCALES = np.array(
    [[(pc - tonic) % 12 in MAJOR_STEPS for pc in range(12)] for tonic in range(12)], dtype=bool
)
"""``(12, 12)`` bool: row ``t`` = the pitch classes of ``t`` major (= its relative minor)."""

GOAL_TOLERANCE = 0.15
"""Issue goal: pitches/frame, onsets/s and repeat share within ±15 % of the corpus."""
GOAL_SHORT_FACTOR = 1.2
"""Issue goal: no more short notes than the corpus × 1.2."""
GOAL_SCALE = 0.90
"""Issue goal: scale consistency ≥ 0.90."""


@dataclass(frozen=True)
class MusicStats:
    """The statistics of one piece or of a pooled corpus (see the module docstring)."""

    pieces: int
    frames: int
    seconds: float
    notes: int
    pitches_per_frame: float
    onsets_per_second: float
    repeat_share: float
    short_note_share: float
    scale_consistency: float
    key: str
    """The best-fitting scale (``"C major / A minor"``); ``"various"`` for several pieces."""

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


@dataclass
class _Counts:
    pieces: int = 0
    frames: int = 0
    nonempty_frames: int = 0
    pitch_sum: int = 0
    notes: int = 0
    short_notes: int = 0
    pairs: int = 0
    repeat_pairs: int = 0
    in_scale_onsets: int = 0
    key: str = ""

    def add(self, other: _Counts) -> None:
        for name in (
            "pieces",
            "frames",
            "nonempty_frames",
            "pitch_sum",
            "notes",
            "short_notes",
            "pairs",
            "repeat_pairs",
            "in_scale_onsets",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.key = other.key if self.pieces == 1 else "various"

    def stats(self, fs: int) -> MusicStats:
        seconds = self.frames / fs
        return MusicStats(
            pieces=self.pieces,
            frames=self.frames,
            seconds=seconds,
            notes=self.notes,
            pitches_per_frame=_ratio(self.pitch_sum, self.nonempty_frames),
            onsets_per_second=_ratio(self.notes, seconds),
            repeat_share=_ratio(self.repeat_pairs, self.pairs),
            short_note_share=_ratio(self.short_notes, self.notes),
            scale_consistency=_ratio(self.in_scale_onsets, self.notes),
            key=self.key,
        )


def _ratio(a: float, b: float) -> float:
    return float(a) / b if b else 0.0


def piano_roll(frames: Sequence[Iterable[int]]) -> np.ndarray:
    """``(T, 128)`` bool: pitch sounding per frame."""
    roll = np.zeros((len(frames), 128), dtype=bool)
    for k, pitches in enumerate(frames):
        roll[k, list(pitches)] = True
    return roll


def best_scale(pc_weights: np.ndarray) -> tuple[int, float]:
    """The best-fitting scale for pitch-class weights ``(12,)``: ``(tonic, weight inside)``.

    ``tonic`` is the major tonic (row of :data:`SCALES`); ties go to the lowest tonic.
    """
    fit = SCALES.astype(pc_weights.dtype) @ pc_weights
    tonic = int(np.argmax(fit))
    return tonic, float(fit[tonic])


def key_name(tonic: int) -> str:
    return f"{PITCH_CLASS_NAMES[tonic]} major / {PITCH_CLASS_NAMES[(tonic + 9) % 12]} minor"


def _counts(frames: Sequence[Iterable[int]]) -> _Counts:
    roll = piano_roll(frames)
    n = len(roll)
    c = _Counts(pieces=1, frames=n)
    if n == 0:
        return c
    sizes = roll.sum(axis=1)
    c.nonempty_frames = int((sizes > 0).sum())
    c.pitch_sum = int(sizes.sum())
    before = np.zeros_like(roll)
    before[1:] = roll[:-1]
    after = np.zeros_like(roll)
    after[:-1] = roll[1:]
    onsets = roll & ~before
    c.notes = int(onsets.sum())
    c.short_notes = int((onsets & ~after).sum())
    c.pairs = n - 1
    c.repeat_pairs = int((roll[1:] == roll[:-1]).all(axis=1).sum())
    per_pitch = onsets.sum(axis=0)
    pc_hist = np.zeros(12, dtype=np.int64)
    np.add.at(pc_hist, np.arange(128) % 12, per_pitch)
    tonic, inside = best_scale(pc_hist)
    c.in_scale_onsets = int(inside)
    c.key = key_name(tonic)
    return c


def frame_stats(frames: Sequence[Iterable[int]], fs: int = 5) -> MusicStats:
    """Statistics of one frame sequence (pitch sets per frame)."""
    return _counts(frames).stats(fs)


def corpus_stats(pieces: Iterable[Sequence[Iterable[int]]], fs: int = 5) -> MusicStats:
    """Pooled statistics of several pieces (each a frame sequence)."""
    total = _Counts()
    for frames in pieces:
        total.add(_counts(frames))
    return total.stats(fs)


COMPARED = (
    "pitches_per_frame",
    "onsets_per_second",
    "repeat_share",
    "short_note_share",
    "scale_consistency",
)


def ratios(generated: MusicStats, reference: MusicStats) -> dict[str, float]:
    """``generated / reference`` per compared statistic (``inf`` where the reference is 0)."""
    out = {}
    for name in COMPARED:
        ref = getattr(reference, name)
        gen = getattr(generated, name)
        out[name] = gen / ref if ref else (1.0 if gen == 0 else float("inf"))
    return out


def goals(generated: MusicStats, reference: MusicStats) -> dict[str, bool]:
    """The issue's targets for a generation against the corpus, one flag per statistic."""
    r = ratios(generated, reference)
    return {
        "pitches_per_frame": abs(r["pitches_per_frame"] - 1.0) <= GOAL_TOLERANCE,
        "onsets_per_second": abs(r["onsets_per_second"] - 1.0) <= GOAL_TOLERANCE,
        "repeat_share": abs(r["repeat_share"] - 1.0) <= GOAL_TOLERANCE,
        "short_note_share": r["short_note_share"] <= GOAL_SHORT_FACTOR,
        "scale_consistency": generated.scale_consistency >= GOAL_SCALE,
    }


def format_comparison(generated: MusicStats, reference: MusicStats | None = None) -> str:
    """A small text table: the generation, and the corpus with ratios and goals if given."""
    rows = [("statistic", "generated", "corpus", "ratio", "goal")]
    r = ratios(generated, reference) if reference else {}
    ok = goals(generated, reference) if reference else {}
    for name in COMPARED:
        gen = getattr(generated, name)
        if reference is None:
            rows.append((name, f"{gen:.3f}", "", "", ""))
        else:
            rows.append(
                (
                    name,
                    f"{gen:.3f}",
                    f"{getattr(reference, name):.3f}",
                    f"{r[name]:.2f}",
                    "ok" if ok[name] else "MISS",
                )
            )
    if reference is None:
        rows = [row[:2] for row in rows]  # type: ignore[misc]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.append(
        f"generated: {generated.seconds:.1f} s, {count(generated.notes, 'note')}, {generated.key}"
    )
    if reference is not None:
        lines.append(
            f"corpus: {count(reference.pieces, 'piece')}, {reference.seconds:.0f} s, "
            f"{count(reference.notes, 'note')}"
        )
    return "\n".join(line.rstrip() for line in lines)
