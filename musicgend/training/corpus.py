"""Corpus tools: export the music21 Bach chorales as .mid, read a MIDI corpus, build and
summarise a vocabulary from it.

Every file that can't be used becomes a :class:`Skipped` (path + reason) reported through a
callback, and the rest of the corpus is still processed.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

from musicgend.core.augment import TRANSPOSITIONS, transpositions
from musicgend.core.pianoroll import DEFAULT_FS
from musicgend.core.tokens import SILENCE, PitchSet, token_from_pitches
from musicgend.core.vocab import Vocab
from musicgend.errors import CorpusError, MidiFileError
from musicgend.io.midifile import MIDI_SUFFIXES, read_piece, read_tracks

# -- Bach chorales -------------------------------------------------------------------------

SOURCE_PREFERENCE = (".mxl", ".musicxml", ".xml", ".krn")
"""When music21 holds a chorale in several formats, the first of these is exported."""


@dataclass(frozen=True)
class ScoreSource:
    """A score to export: ``name`` (the .mid file's stem) and the file music21 parses."""

    name: str
    path: Path

    @property
    def filename(self) -> str:
        return f"{self.name}.mid"


def bach_chorale_sources() -> list[ScoreSource]:
    """The Bach chorales bundled with music21, one per chorale, sorted by name.

    Only the ``bwv*`` files: music21's ``riemenschneider*`` files are copies of the same
    chorales (they would leak across a train/test split). A chorale stored in several
    formats (e.g. ``bwv277.krn`` and ``bwv277.mxl``) is taken once, see
    :data:`SOURCE_PREFERENCE`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from music21 import corpus

    best: dict[str, Path] = {}
    for raw in corpus.getComposer("bach"):
        path = Path(raw)
        suffix = path.suffix.lower()
        if not path.name.lower().startswith("bwv") or suffix not in SOURCE_PREFERENCE:
            continue
        rank = SOURCE_PREFERENCE.index(suffix)
        current = best.get(path.stem)
        if current is None or rank < SOURCE_PREFERENCE.index(current.suffix.lower()):
            best[path.stem] = path
    return [ScoreSource(name, best[name]) for name in sorted(best, key=_natural_key)]


def _natural_key(name: str) -> list[object]:
    """``bwv9.7`` before ``bwv10.7``: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def unusable_export(path: str | Path) -> str | None:
    """Why an exported .mid can't be used (``None`` if it can): it must read as MIDI
    (:func:`~musicgend.io.midifile.read_tracks`) and hold notes, as every export does."""
    try:
        tracks = read_tracks(path)
    except MidiFileError as exc:
        return exc.reason
    if not any(t.notes for t in tracks):
        return "no notes"
    return None


def export_score(source: str | Path, target: str | Path) -> None:
    """Parse one score with music21 and write it as .mid (atomically: a temporary file in
    the target's directory, then a rename). Raises on any failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from music21 import converter

        target = Path(target)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            score = converter.parse(str(source))
            score.write("midi", fp=str(tmp))
            tracks = read_tracks(tmp)
            if not any(t.notes for t in tracks):
                raise ValueError("music21 wrote a MIDI file without notes")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def _export_worker(source: str, target: str) -> str | None:
    """Process-pool entry point: ``None`` on success, else a one-line reason."""
    try:
        export_score(source, target)
    except MidiFileError as exc:
        return exc.reason
    except Exception as exc:  # music21 raises many types on odd scores
        text = " ".join(str(exc).split())
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return None


@dataclass
class ExportReport:
    """What an export did: names exported, names already there, and (name, reason) failed."""

    exported: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    replaced: list[tuple[str, str]] = field(default_factory=list)
    """Exported again over a file that was there but unreadable: (name, what was wrong with
    it). These names are in ``exported`` too."""

    @property
    def usable(self) -> int:
        return len(self.exported) + len(self.existing)


ExportStatus = Literal["exported", "exists", "replaced", "failed"]


def export_scores(
    sources: Sequence[ScoreSource],
    out_dir: str | Path,
    jobs: int = 2,
    force: bool = False,
    on_result: Callable[[ScoreSource, ExportStatus, str], None] | None = None,
) -> ExportReport:
    """Export every source to ``out_dir/<name>.mid`` with ``jobs`` worker processes.

    Idempotent: an existing file is kept (status ``"exists"``) unless ``force``, if it reads
    as MIDI with notes (:func:`unusable_export`); one that doesn't (e.g. truncated) is
    exported again (status ``"replaced"``, reason: what was wrong with it), or, if that
    fails, left as it was (status ``"failed"``). ``on_result(source, status, reason)`` is
    called once per source, in completion order.
    """
    if jobs < 1:
        raise CorpusError(f"--jobs must be >= 1, got {jobs}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CorpusError(f"{out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CorpusError(f"{out}: can't create directory ({exc.strerror or exc})") from None
    report = ExportReport()

    unreadable: dict[str, str] = {}  # name -> what is wrong with the file already there

    def record(source: ScoreSource, error: str | None) -> None:
        status: ExportStatus
        reason = error or ""
        bad = unreadable.get(source.name)
        if error is None:
            report.exported.append(source.name)
            status = "exported"
            if bad is not None:
                report.replaced.append((source.name, bad))
                status, reason = "replaced", bad
        else:
            if bad is not None:
                reason = f"{error} (the file there, left as it was, is unreadable: {bad})"
            report.failed.append((source.name, reason))
            status = "failed"
        if on_result is not None:
            on_result(source, status, reason)

    todo: list[ScoreSource] = []
    for source in sources:
        target = out / source.filename
        if not force and target.is_file():
            problem = unusable_export(target)
            if problem is None:
                report.existing.append(source.name)
                if on_result is not None:
                    on_result(source, "exists", "")
                continue
            unreadable[source.name] = problem
        todo.append(source)
    if jobs == 1 or len(todo) <= 1:
        for source in todo:
            record(source, _export_worker(str(source.path), str(out / source.filename)))
        return report
    # "spawn": a forked copy of a process that already runs threads (TensorFlow, a test
    # runner) can deadlock; a fresh interpreter per worker costs about a second.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures: dict[Future[str | None], ScoreSource] = {
            pool.submit(_export_worker, str(s.path), str(out / s.filename)): s for s in todo
        }
        try:
            for future in as_completed(futures):
                source = futures[future]
                try:
                    error = future.result()
                except Exception as exc:  # a worker died (e.g. killed for memory)
                    error = f"worker failed: {type(exc).__name__}: {exc}"
                record(source, error)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return report


# -- reading a corpus ----------------------------------------------------------------------


@dataclass(frozen=True)
class Skipped:
    """A path of the corpus that gave nothing, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class CorpusFiles:
    """The MIDI files found under the given paths, and what was skipped while looking."""

    roots: list[Path] = field(default_factory=list)
    midi: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def list_corpus(paths: Iterable[str | Path]) -> CorpusFiles:
    """Every MIDI file (by suffix, :data:`MIDI_SUFFIXES`) under the given directories, sorted.

    A file named directly is taken as it is (its content decides later); a file reached
    twice is listed once. Skipped with a
    reason: a missing path, an empty directory, a directory without MIDI files, and every
    other (non-hidden) file in a directory.
    """
    found = CorpusFiles()
    for raw in paths:
        root = Path(raw)
        found.roots.append(root)
        if not root.exists():
            found.skipped.append(Skipped(root, "no such file or directory"))
            continue
        if root.is_file():
            found.midi.append(root)
            continue
        if not root.is_dir():
            found.skipped.append(Skipped(root, "not a file or directory"))
            continue
        files = [p for p in sorted(root.rglob("*")) if p.is_file() and not _hidden(p, root)]
        if not files:
            found.skipped.append(Skipped(root, "empty directory"))
            continue
        midi = [p for p in files if p.suffix.lower() in MIDI_SUFFIXES]
        for p in files:
            if p.suffix.lower() not in MIDI_SUFFIXES:
                found.skipped.append(
                    Skipped(p, f"not a MIDI file (expected {', '.join(MIDI_SUFFIXES)})")
                )
        if not midi:
            found.skipped.append(Skipped(root, "no MIDI files in this directory"))
        found.midi.extend(midi)
    # a file reached twice (a directory and a file in it, or overlapping directories) counts once
    unique: dict[Path, Path] = {}
    for p in found.midi:
        unique.setdefault(p.resolve(), p)
    found.midi = list(unique.values())
    return found


# -- vocabulary ----------------------------------------------------------------------------

TOP_N = (10, 100, 1000)


@dataclass
class CorpusSummary:
    """Figures of a corpus as the vocabulary saw it.

    ``frames`` and ``counts`` include every transposed copy when augmenting;
    ``source_frames`` counts the original pieces only.
    """

    pieces: int = 0
    source_frames: int = 0
    copies: int = 0
    out_of_range: int = 0
    frames: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def silence_rate(self) -> float:
        return self.counts[SILENCE] / self.frames if self.frames else 0.0

    def coverage(self, top_n: int) -> float:
        """Share of frames whose token is one of the ``top_n`` most frequent (silence too)."""
        if not self.frames:
            return 0.0
        return sum(c for _, c in self.counts.most_common(top_n)) / self.frames

    def add(self, frames: Sequence[PitchSet], augment_transpose: bool) -> None:
        self.pieces += 1
        self.source_frames += len(frames)
        copies = list(transpositions(frames)) if augment_transpose else [(0, list(frames))]
        self.out_of_range += len(TRANSPOSITIONS) - len(copies) if augment_transpose else 0
        for _, shifted in copies:
            self.copies += 1
            self.frames += len(shifted)
            self.counts.update(token_from_pitches(f) for f in shifted)


def build_vocab(
    listing: CorpusFiles,
    fs: int = DEFAULT_FS,
    first_track_only: bool = False,
    augment_transpose: bool = False,
    min_count: int = 1,
    on_skip: Callable[[Skipped], None] | None = None,
    on_file: Callable[[Path], None] | None = None,
) -> tuple[Vocab, CorpusSummary]:
    """Read every piece of ``listing`` (see :func:`list_corpus`) and build a vocabulary of
    their tokens.

    Unusable files and directories (the listing's and those found while reading) are
    reported through ``on_skip`` and collected in the summary; ``on_file`` is called after
    each MIDI file. Raises
    :class:`CorpusError` when no piece at all could be read.
    """
    if fs < 1:
        raise CorpusError(f"fs must be >= 1 frame per second, got {fs}")
    if min_count < 1:
        raise CorpusError(f"min count must be >= 1, got {min_count}")
    summary = CorpusSummary()

    def skip(item: Skipped) -> None:
        summary.skipped.append(item)
        if on_skip is not None:
            on_skip(item)

    for item in listing.skipped:
        skip(item)
    for path in listing.midi:
        try:
            piece = read_piece(path, fs, first_track_only)
        except MidiFileError as exc:
            skip(Skipped(path, exc.reason))
        else:
            summary.add(piece.frames, augment_transpose)
        if on_file is not None:
            on_file(path)
    if summary.pieces == 0:
        where = ", ".join(str(p) for p in listing.roots)
        raise CorpusError(f"no usable piece under {where}")
    return Vocab.from_counts(summary.counts, min_count=min_count, fs=fs), summary


def save_vocab(vocab: Vocab, path: str | Path) -> Path:
    """Write the vocabulary JSON atomically (temporary file + rename); returns the path.
    The caller checks ``path`` first (:func:`musicgend.outputs.check_output_file`)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(vocab.dumps() + "\n", encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        raise CorpusError(f"{target}: can't write vocabulary ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def format_summary(summary: CorpusSummary, vocab: Vocab, augment_transpose: bool) -> list[str]:
    """The summary lines ``vocab build`` prints."""
    rare = sum(1 for t, c in summary.counts.items() if t != SILENCE and c < vocab.min_count)
    lines = [
        f"pieces        {summary.pieces:,} read, {len(summary.skipped):,} skipped",
        f"frames        {summary.source_frames:,} ({1 / vocab.fs:g} s each at fs={vocab.fs})",
    ]
    if augment_transpose:
        lines.append(
            f"augmented     {summary.copies:,} piece copies in {len(TRANSPOSITIONS)} keys "
            f"({TRANSPOSITIONS.start:+d}..{TRANSPOSITIONS.stop - 1:+d} semitones), "
            f"{summary.frames:,} frames; {summary.out_of_range:,} copies left out "
            "(a pitch out of 0..127)"
        )
    lines += [
        f"tokens        {len(vocab):,} in the vocabulary (<unk>, e and {len(vocab) - 2:,} chords "
        f"seen >= {vocab.min_count} times; {rare:,} rarer chords map to <unk>)",
        f"distinct      {len(summary.counts):,} tokens seen (silence included)",
        "coverage      "
        + "  ".join(f"top {n}: {100 * summary.coverage(n):.1f} %" for n in TOP_N)
        + " of frames",
        f"silence rate  {100 * summary.silence_rate:.1f} % of frames",
    ]
    return lines
