"""Offline generation: prime a window, draw chord tokens frame by frame, write a .mid.

Priming (the seed's way by default): 49 × ``"e"`` + one frequent non-silent token chosen by
``seed``; or the first ``window_frames`` frames of a MIDI file (chords the vocabulary doesn't
know map to their nearest known chord). Each step asks the model for the next-token
probabilities, draws one with :class:`~musicgend.core.sampler.Sampler`, and slides the window.
A per-pitch model (``config.output = "pitch"``) draws chords with
:class:`~musicgend.core.pitchsampler.PitchSampler` instead; its window holds each chord's
nearest known token (as the daemon's does), or the chord itself for a model that reads
pitches, while the chords themselves, a primed file's included, are played and kept as they
are.

Frames become notes as the quantiser would read them back: a pitch held over consecutive
frames is one note from ``k / fs`` to ``(k + n) / fs`` s, on a piano (program 0). A file
written here reads back (``io.midifile.read_piece``) to exactly the frames generated.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from musicgend.core.memory import PieceMemory
from musicgend.core.musicstats import MusicStats, corpus_stats, frame_stats
from musicgend.core.pianoroll import Note
from musicgend.core.pitchsampler import PitchSampler
from musicgend.core.sampler import Sampler, SamplerParams
from musicgend.core.tokens import PitchSet, pitches_from_token
from musicgend.core.vocab import SILENCE_ID, UNK_ID, Vocab
from musicgend.core.window import RollingWindow, WindowReader
from musicgend.errors import CorpusError, MidiFileError, ModelError
from musicgend.io.midifile import find_midi_files, iter_pieces, read_piece
from musicgend.model.artifact import Artifact, load_artifact
from musicgend.text import none_could_be_read

if TYPE_CHECKING:  # pragma: no cover
    from musicgend.model.runtime import Predictor

PRIME_CANDIDATES = 20
"""The default prime token is drawn from this many most frequent non-silent tokens."""
PIANO_PROGRAM = 0
VELOCITY = 80
PEDAL_CC = 64


@dataclass
class Generation:
    """What :func:`generate_file` made."""

    path: Path
    prime: str
    """``"seed"`` (49 × e + one token) or the priming file."""
    prime_frames: list[PitchSet]
    """Frames written before the generated ones (the primed file's frames, or none)."""
    frames: list[PitchSet]
    """The generated frames (the default prime's chosen token is the first)."""
    token_ids: list[int]
    stats: MusicStats
    runtime: str
    elapsed_s: float
    corpus: MusicStats | None = field(default=None)
    fs: int = 5

    @property
    def prime_seconds(self) -> float:
        """The primed file's part written first (0 with the default prime)."""
        return len(self.prime_frames) / self.fs

    @property
    def file_seconds(self) -> float:
        """The whole .mid: the prime's frames, then the generated ones."""
        return (len(self.prime_frames) + len(self.frames)) / self.fs

    corpus_skipped: list[tuple[Path, str]] = field(default_factory=list)
    """``--stats-against`` files that could not be read, with the reasons."""


def seed_prime_ids(vocab: Vocab, window_frames: int, seed: int) -> list[int]:
    """The seed's prime: ``window_frames - 1`` silences, then one frequent chord."""
    chords = [i for i in range(len(vocab)) if i not in (UNK_ID, SILENCE_ID)]
    if not chords:
        raise ModelError("the model's vocabulary has no chord to start from")
    chords = sorted(chords, key=lambda i: -vocab.counts[i])[:PRIME_CANDIDATES]
    token = chords[int(np.random.default_rng(seed).integers(len(chords)))]
    return [SILENCE_ID] * (window_frames - 1) + [token]


def prime_frames_from_midi(path: str | Path, window_frames: int, fs: int) -> list[PitchSet]:
    """The first ``window_frames`` frames of a MIDI file (fewer if it is shorter)."""
    return list(read_piece(path, fs).frames[:window_frames])


def generate_ids(
    predict, prime_ids: Sequence[int], n_frames: int, sampler: Sampler, window_frames: int
) -> list[int]:
    """Draw ``n_frames`` token ids after ``prime_ids`` (``predict``: window → probs)."""
    window = RollingWindow(window_frames, initial=prime_ids)
    prev = int(prime_ids[-1]) if len(prime_ids) else None
    out: list[int] = []
    for _ in range(n_frames):
        context = window.array()
        token = sampler.sample(predict(context), prev, context)
        window.push(token)
        out.append(token)
        prev = token
    return out


def generate_pitch_frames(
    predict: Callable[[np.ndarray], np.ndarray],
    sampler: PitchSampler,
    reader: WindowReader,
    prime_frames: Sequence[PitchSet],
    n_frames: int,
    window_frames: int,
) -> tuple[list[PitchSet], list[int]]:
    """A per-pitch model's ``n_frames`` chords after a prime, and their nearest token ids.

    ``reader`` fills the window the encoder reads: for a token model a chord the vocabulary
    lacks is its nearest known chord, as in the daemon (with ``<unk>`` there instead, the
    model's own new chords blurred its context and it drifted to 5.8 pitches a frame against
    Bach's 4.0); a model reading pitches reads the chord itself. ``prime_frames``: the
    prime's chords (they fill the window, and give the previous chord and the key). A
    sampler with piece-memory weights recalls from the prime and every chord since."""
    window = reader.window(window_frames, prime_frames[-window_frames:])
    context: deque[PitchSet] = deque(prime_frames, maxlen=window_frames)
    memory = PieceMemory() if sampler.memory is not None else None
    if memory is not None:
        memory.extend(prime_frames)
    prev = context[-1] if context else None
    frames: list[PitchSet] = []
    ids: list[int] = []
    for _ in range(n_frames):
        recall = memory.recall() if memory is not None else None
        chord = sampler.sample(predict(window.array()), prev, context, recall)
        if memory is not None:
            memory.push(chord)
        token_id = reader.vocab.nearest(chord)
        window.push(reader.encode(chord))
        context.append(chord)
        frames.append(chord)
        ids.append(token_id)
        prev = chord
    return frames, ids


def notes_from_frames(frames: Sequence[PitchSet], fs: int, velocity: int = VELOCITY) -> list[Note]:
    """Frames → notes: each run of a pitch over consecutive frames is one note."""
    notes: list[Note] = []
    started: dict[int, int] = {}
    for k, pitches in enumerate([*frames, frozenset()]):
        for pitch in [p for p in started if p not in pitches]:
            notes.append(Note(started.pop(pitch) / fs, k / fs, pitch, velocity))
        for pitch in sorted(pitches):
            started.setdefault(pitch, k)
    return sorted(notes, key=lambda n: (n.start_s, n.pitch))


def write_midi(frames: Sequence[PitchSet], path: str | Path, fs: int, name: str = "") -> Path:
    """Write frames as a piano track; the file lasts exactly ``len(frames) / fs`` s."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pretty_midi

    # 960 ticks per beat at 120 bpm: a 0.2 s frame is exactly 384 ticks, no rounding.
    pm = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=120.0)
    inst = pretty_midi.Instrument(program=PIANO_PROGRAM, name=name or "musicgend")
    for n in notes_from_frames(frames, fs):
        inst.notes.append(
            pretty_midi.Note(velocity=n.velocity, pitch=n.pitch, start=n.start_s, end=n.end_s)
        )
    # Sustain off at the end: marks the length when the music ends in silence.
    inst.control_changes.append(pretty_midi.ControlChange(PEDAL_CC, 0, len(frames) / fs))
    pm.instruments.append(inst)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pm.write(str(path))
    except OSError as exc:
        raise MidiFileError(path, f"can't write: {exc.strerror or exc}") from None
    return path


def reference_stats(
    midi_dirs: Sequence[str | Path],
    fs: int,
    on_skip: Callable[[Path, str], None] | None = None,
) -> MusicStats:
    """Pooled statistics of every readable MIDI file under ``midi_dirs``; ``on_skip`` gets
    each file that can't be read, with the reason."""
    files = find_midi_files(midi_dirs)
    pieces = []
    skipped: list[tuple[Path, str]] = []
    for p in iter_pieces(files, fs):
        if isinstance(p, MidiFileError):
            path = Path(str(p.path))
            skipped.append((path, p.reason))
            if on_skip is not None:
                on_skip(path, p.reason)
        else:
            pieces.append(p)
    if not pieces:
        path, reason = skipped[0]
        where = f" under {', '.join(map(str, midi_dirs))}"
        raise CorpusError(none_could_be_read(len(files), f"{path}: {reason}", "MIDI file", where))
    return corpus_stats((p.frames for p in pieces), fs)


def generate_frames(
    artifact: Artifact,
    predictor: Predictor,
    n_frames: int,
    *,
    seed: int = 0,
    params: SamplerParams | None = None,
    prime: str | Path | None = None,
) -> tuple[str, list[PitchSet], list[PitchSet], list[int]]:
    """``n_frames`` chords from a loaded model of either kind: ``(prime name, prime frames,
    frames, token ids)``.

    With the default prime, its chosen chord is the first of the ``n_frames`` and no prime
    frames are returned; with a file, its first window of frames is returned.
    """
    from musicgend.model.runtime import pitch_head

    cfg, vocab = artifact.config, artifact.vocab
    params = params or SamplerParams()
    if prime is None:
        prime_ids = seed_prime_ids(vocab, cfg.window_frames, seed)
        context = [pitches_from_token(vocab.token(i)) for i in prime_ids]
        first_ids, first = prime_ids[-1:], context[-1:]
        written: list[PitchSet] = []
        name = "seed"
    else:
        written = prime_frames_from_midi(prime, cfg.window_frames, cfg.fs)
        prime_ids = [vocab.nearest(f) for f in written]
        context, first_ids, first, name = written, [], [], str(prime)
    n_draw = n_frames - len(first)
    head = pitch_head(artifact)
    if head is None:
        sampler = Sampler(params, seed=seed, vocab=vocab)
        ids = generate_ids(predictor.predict, prime_ids, n_draw, sampler, cfg.window_frames)
        frames = [pitches_from_token(vocab.token(i)) for i in ids]
    else:
        frames, ids = generate_pitch_frames(
            predictor.predict,
            PitchSampler(head, params, seed=seed, memory=artifact.memory),
            WindowReader(vocab, cfg.pitch_input),
            context,
            n_draw,
            cfg.window_frames,
        )
    return name, written, [*first, *frames], [*first_ids, *ids]


def generate_file(
    model: Artifact | str | Path,
    out: str | Path,
    *,
    seconds: float = 60.0,
    seed: int = 0,
    prime: str | Path | None = None,
    params: SamplerParams | None = None,
    runtime: str = "auto",
    stats_against: Sequence[str | Path] = (),
    on_skip: Callable[[Path, str], None] | None = None,
) -> Generation:
    """Generate ``seconds`` of music with a model artifact and write it to ``out``.

    ``on_skip`` gets each ``stats_against`` file that can't be read, with the reason."""
    from musicgend.model.runtime import load_predictor

    if not seconds > 0:
        raise ModelError(f"--seconds must be positive, got {seconds}")
    artifact = model if isinstance(model, Artifact) else load_artifact(model)
    cfg = artifact.config
    corpus_skipped: list[tuple[Path, str]] = []

    def skip(path: Path, reason: str) -> None:
        corpus_skipped.append((path, reason))
        if on_skip is not None:
            on_skip(path, reason)

    corpus = reference_stats(stats_against, cfg.fs, skip) if stats_against else None
    predictor = load_predictor(artifact, runtime)
    n_frames = max(1, round(seconds * cfg.fs))

    started = time.perf_counter()
    prime_name, written_prime, frames, ids = generate_frames(
        artifact, predictor, n_frames, seed=seed, params=params, prime=prime
    )
    elapsed_s = time.perf_counter() - started

    path = write_midi([*written_prime, *frames], out, cfg.fs, name=f"musicgend {cfg.name}")
    return Generation(
        path=path,
        prime=prime_name,
        prime_frames=written_prime,
        frames=frames,
        token_ids=ids,
        stats=frame_stats(frames, cfg.fs),
        runtime=predictor.runtime,
        elapsed_s=elapsed_s,
        corpus=corpus,
        fs=cfg.fs,
        corpus_skipped=corpus_skipped,
    )


_OPTION_NAMES = {"min_hold_frames": "min-hold"}
"""Sampler fields whose ``generate`` option has another name."""


def sampler_params(seed_sampling: bool = False, **overrides: float | int | None) -> SamplerParams:
    """Sampler settings from CLI values (``None`` = default); clear error on bad values."""
    from pydantic import ValidationError

    from musicgend.errors import ConfigError

    base = SamplerParams.seed() if seed_sampling else SamplerParams()
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return SamplerParams.model_validate({**base.model_dump(), **given})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        name = "--" + _OPTION_NAMES.get(field, field.replace("_", "-")) if field else "sampling"
        raise ConfigError(f"{name}: {first['msg']}") from None


def generation_report(gen: Generation, params: SamplerParams) -> dict[str, object]:
    """A JSON-ready summary: file, settings, statistics (and the corpus's with ratios)."""
    from musicgend.core.musicstats import goals, ratios

    report: dict[str, object] = {
        "path": str(gen.path),
        "prime": gen.prime,
        "seconds": gen.stats.seconds,
        "prime_seconds": gen.prime_seconds,
        "file_seconds": gen.file_seconds,
        "runtime": gen.runtime,
        "elapsed_s": round(gen.elapsed_s, 3),
        "sampler": params.model_dump(),
        "stats": gen.stats.to_dict(),
    }
    if gen.corpus is not None:
        report["corpus"] = gen.corpus.to_dict()
        report["corpus_skipped"] = [{"path": str(p), "reason": r} for p, r in gen.corpus_skipped]
        report["ratios"] = ratios(gen.stats, gen.corpus)
        report["goals"] = goals(gen.stats, gen.corpus)
    return report
