"""The ``musicgend`` command line. Thin: parse, load config, call into the package.

Every :class:`~musicgend.errors.MusicgendError`, and any ``OSError`` the system raises
(a full disk, a permission), becomes one ``error: …`` line on stderr and exit code 1; usage
errors exit 2 (typer's convention).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from musicgend import __version__
from musicgend.errors import MusicgendError

# TensorFlow's C++ start-up chatter (CPU feature notes, oneDNN) is not for users; errors stay.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _App(typer.Typer):
    """A Typer app that turns the project's errors into one line and exit code 1."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except MusicgendError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except OSError as exc:  # the system refused (disk full, permissions): no traceback
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
            sys.exit(1)


app = _App(
    name="musicgend",
    help="Real-time MIDI improvisation daemon: a BiGRU plays chords with you.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: option names never cut, MIDI_DIR-style placeholders
)
data_app = typer.Typer(help="Fetch training data.", no_args_is_help=True)
vocab_app = typer.Typer(help="Build and inspect chord vocabularies.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(vocab_app, name="vocab")
config_app = typer.Typer(help="Inspect the daemon's configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


MAX_GENERATE_S = 86_400.0
"""``generate --seconds`` at most: a day of music (~10 minutes of work on one core)."""


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear error line and return the Exit to raise."""
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        print(f"musicgend {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """musicgend: quantise what you play at 5 frames/s, let a BiGRU answer with chords."""


# -- data ---------------------------------------------------------------------------------


@data_app.command("bach")
def data_bach(
    out_dir: Annotated[
        Path, typer.Argument(metavar="OUT_DIR", help="Directory for the .mid files (created).")
    ],
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Worker processes.")] = 2,
    force: Annotated[bool, typer.Option("--force", help="Re-export existing files.")] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the first N chorales (by name).")
    ] = None,
) -> None:
    """Export the music21 Bach chorales as OUT_DIR/bwv<number>.mid, one file per chorale.

    Files already there are kept unless --force; one that can't be read as MIDI is reported
    and exported again. A chorale that fails is reported and skipped; the exit code is 1
    only when no file at all is usable.
    """
    from musicgend.errors import CorpusError
    from musicgend.progress import progress
    from musicgend.training.corpus import ScoreSource, bach_chorale_sources, export_scores

    sources = bach_chorale_sources()[:limit]
    if not sources:
        raise CorpusError("music21 holds no Bach chorales (is its corpus installed?)")
    with progress(len(sources), "export") as bar:

        def on_result(source: ScoreSource, status: str, reason: str) -> None:
            if status == "failed":
                print(f"failed {source.name} ({source.path.name}): {reason}", file=sys.stderr)
            elif status == "replaced":
                print(
                    f"re-exported {source.filename}: it was unreadable: {reason}", file=sys.stderr
                )
            bar.advance(f"{source.filename} {status}")

        report = export_scores(sources, out_dir, jobs=jobs, force=force, on_result=on_result)
    replaced = f" ({len(report.replaced)} over unreadable files)" if report.replaced else ""
    print(
        f"exported {len(report.exported)}{replaced}, skipped {len(report.existing)} "
        f"(already there), failed {len(report.failed)} -> {out_dir}"
    )
    if report.usable == 0:
        raise typer.Exit(1)


# -- vocab --------------------------------------------------------------------------------


@vocab_app.command("build")
def vocab_build(
    midi_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="MIDI_DIR", help="Directories (searched recursively) or .mid files."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Vocabulary JSON to write.")],
    fs: Annotated[int, typer.Option("--fs", min=1, help="Frames per second.")] = 5,
    first_track_only: Annotated[
        bool, typer.Option("--first-track-only", help="Only the first non-drum track (seed).")
    ] = False,
    augment_transpose: Annotated[
        bool, typer.Option("--augment-transpose", help="Count all 12 transpositions (-5..+6).")
    ] = False,
    min_count: Annotated[
        int, typer.Option("--min-count", min=1, help="Rarer chords map to <unk>.")
    ] = 1,
) -> None:
    """Build a chord vocabulary from MIDI files, save it as JSON and print a summary.

    Every unusable path gets one line on stderr; the exit code is 1 only when no piece
    could be read.
    """
    from musicgend.outputs import check_output_file
    from musicgend.progress import progress
    from musicgend.training.corpus import (
        build_vocab,
        format_summary,
        list_corpus,
        save_vocab,
    )

    listing = list_corpus(midi_dirs)  # lists the files; reads none
    check_output_file(output, inputs=listing.midi, what="vocabulary")
    with progress(len(listing.midi), "read", plain_every=100) as bar:
        vocab, summary = build_vocab(
            listing,
            fs=fs,
            first_track_only=first_track_only,
            augment_transpose=augment_transpose,
            min_count=min_count,
            on_skip=lambda item: print(f"skipped {item}", file=sys.stderr),
            on_file=lambda _path: bar.advance(),
        )
    saved = save_vocab(vocab, output)
    for line in format_summary(summary, vocab, augment_transpose):
        print(line)
    print(f"vocabulary    {saved} (hash {vocab.hash[:12]})")


# -- train --------------------------------------------------------------------------------


@app.command("train")
def train_cmd(
    out: Annotated[Path, typer.Option("--out", help="Model directory to write (new or empty).")],
    data: Annotated[
        Path | None, typer.Option("--data", help="Directory of MIDI files (searched recursively).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default 50).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the interrupted training of --out.")
    ] = False,
    config: Annotated[
        str | None, typer.Option(help="seed, musicgend, pitch, roll, or a config .json.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Batch (default 64).")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Adam rate (default 1e-3).")] = None,
    lr_schedule: Annotated[
        str | None,
        typer.Option(
            "--lr-schedule",
            help="constant (default) or cosine (from --learning-rate down to 0 over --epochs).",
        ),
    ] = None,
    augment_transpose: Annotated[
        bool | None,
        typer.Option("--augment-transpose/--no-augment-transpose", help="All 12 keys (train)."),
    ] = None,
    augment_mode: Annotated[
        str | None,
        typer.Option(
            "--augment-mode",
            help="With --augment-transpose: random (one key per window and epoch, default) "
            "or expand (all 12 keys every epoch, 12x slower).",
        ),
    ] = None,
    patience: Annotated[
        int | None, typer.Option(min=0, help="Early stop after N epochs without a better val NLL.")
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Split, init, shuffle seed.")] = None,
    distributed: Annotated[
        bool | None, typer.Option("--distributed", help="MultiWorkerMirrored from TF_CONFIG.")
    ] = None,
    max_pieces: Annotated[
        int | None, typer.Option(min=3, help="Use only N pieces (quick runs).")
    ] = None,
    xla: Annotated[bool | None, typer.Option("--xla/--no-xla", help="XLA train step.")] = None,
    base_model: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Fine-tune this model: keep its weights, config and vocabulary (plus new "
            "chords seen twice); defaults: 5 epochs, rate 3e-4, patience 2.",
        ),
    ] = None,
    keep_vocab: Annotated[
        bool | None,
        typer.Option(
            "--keep-vocab",
            help="With --from: keep the base vocabulary as it is (add no chords).",
        ),
    ] = None,
) -> None:
    """Train a model on a MIDI corpus (split 80/10/10 by piece) and save the best epoch.

    With --from BASE_MODEL: fine-tune BASE_MODEL on the corpus instead.
    """
    from musicgend.outputs import check_dir
    from musicgend.training.train import cli_train

    check_dir(out.absolute().parent, "parent directory of --out")
    given = {
        "data_dir": data,
        "epochs": epochs,
        "config": config,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "lr_schedule": lr_schedule,
        "augment_transpose": augment_transpose,
        "augment_mode": augment_mode,
        "patience": patience,
        "seed": seed,
        "distributed": distributed,
        "max_pieces": max_pieces,
        "jit_compile": xla,
        "base_model": base_model,
        "keep_vocab": keep_vocab,
    }
    print(cli_train(out, resume, {k: v for k, v in given.items() if v is not None}))


# -- config -------------------------------------------------------------------------------


@config_app.command("show")
def config_show(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML config file (default: $MUSICGEND_CONFIG, else none)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of TOML.")] = False,
) -> None:
    """Print the effective configuration (file, then MUSICGEND_* env), secrets masked."""
    from musicgend.config import load_config, to_toml

    data = load_config(config).public_dict()
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        print(to_toml(data), end="")


# -- evaluate -----------------------------------------------------------------------------


@app.command("evaluate")
def evaluate_cmd(
    midi_dir: Annotated[
        Path, typer.Argument(metavar="MIDI_DIR", help="MIDI file or directory to score.")
    ],
    model: Annotated[
        Path | None, typer.Option("--model", help="Model directory (default: bundled).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    split: Annotated[
        str | None,
        typer.Option(
            help="test|val|train|all. Default: test when MIDI_DIR is the model's training "
            "data, else all."
        ),
    ] = None,
    train_data: Annotated[
        Path | None,
        typer.Option(help="The model's training data directory (default: as saved)."),
    ] = None,
    runtime: Annotated[str, typer.Option(help="Inference runtime (auto, numpy, litert, tf…).")] = (
        "auto"
    ),
    batch_size: Annotated[int, typer.Option(help="Windows per inference batch.")] = 256,
    no_baselines: Annotated[
        bool, typer.Option("--no-baselines", help="Score the model only.")
    ] = False,
    transposed_baseline: Annotated[
        bool,
        typer.Option(
            "--transposed-baseline",
            help="Also fit the KN5 baseline on the training pieces in all 12 keys.",
        ),
    ] = False,
    compare: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="MODEL_DIR",
            help="Also score this model on the same files (e.g. the base of a fine-tune); "
            "repeatable.",
        ),
    ] = None,
    no_memory: Annotated[
        bool,
        typer.Option(
            "--no-memory", help="Score the network alone, without its piece memory (memory.json)."
        ),
    ] = False,
) -> None:
    """NLL, top-1 and OOV rate of a model next to the repeat and KN5 baselines (same frames)."""
    from musicgend.config import BUNDLED_MODEL_DIR
    from musicgend.progress import is_tty, progress
    from musicgend.training.evaluate import dumps, render_report, run_evaluation

    def skip(path: Path, reason: str) -> None:
        print(f"skipped {path}: {reason}", file=sys.stderr)

    report = run_evaluation(
        model or BUNDLED_MODEL_DIR,
        midi_dir,
        split=split,
        train_data=train_data,
        runtime=runtime,
        batch_size=batch_size,
        baselines=not no_baselines,
        transposed_baseline=transposed_baseline,
        compare=compare or (),
        memory=not no_memory,
        on_skip=skip,
        on_warning=lambda message: print(f"warning: {message}", file=sys.stderr),
        progress_factory=lambda n: progress(n, "scoring", plain_every=max(1, n // 10)),
    )
    if as_json:
        print(dumps(report))
    else:
        render_report(report, sys.stdout, rich=is_tty(sys.stdout))


# -- generate, plot -----------------------------------------------------------------------


@app.command("generate")
def generate_cmd(
    out: Annotated[Path, typer.Option("-o", "--out", help="The .mid file to write.")],
    model: Annotated[
        Path | None, typer.Option("--model", help="Model directory (default: bundled).")
    ] = None,
    seconds: Annotated[
        float, typer.Option(max=MAX_GENERATE_S, help="Seconds of music to generate (≤ 1 day).")
    ] = 60.0,
    seed: Annotated[int, typer.Option(min=0, help="Random seed (prime token and sampling).")] = 0,
    prime: Annotated[
        Path | None, typer.Option(help="Prime with this file's first 50 frames.")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus mass (1 = off).")] = None,
    top_k: Annotated[int | None, typer.Option(help="Keep the k most likely (0 = off).")] = None,
    hold_bias: Annotated[
        float | None, typer.Option(help="Weight × on repeating the previous chord.")
    ] = None,
    min_hold: Annotated[
        int | None, typer.Option(help="Keep every chord at least this many frames.")
    ] = None,
    silence_bias: Annotated[float | None, typer.Option(help="Weight × on silence.")] = None,
    scale_penalty: Annotated[
        float | None,
        typer.Option(help="Weight × per pitch outside the context's key (1 = off)."),
    ] = None,
    short_note_penalty: Annotated[
        float | None,
        typer.Option(help="Weight × per note begun in the last frame that a chord ends (1 = off)."),
    ] = None,
    memory: Annotated[
        float | None,
        typer.Option(help="Share × of the piece memory's recall (1 = as tuned, 0 = off)."),
    ] = None,
    seed_sampling: Annotated[
        bool, typer.Option("--seed-sampling", help="The seed's plain softmax draw.")
    ] = False,
    runtime: Annotated[str, typer.Option(help="auto, numpy, litert, tf, tf-xla, keras.")] = (
        "auto"
    ),
    stats_against: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="MIDI_DIR", help="MIDI directory: print its statistics and the ratios too."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Generate music with a model and write a .mid; print its statistics."""
    from musicgend.config import BUNDLED_MODEL_DIR
    from musicgend.core.musicstats import format_comparison
    from musicgend.outputs import check_output_file
    from musicgend.training.generate import generate_file, generation_report, sampler_params

    params = sampler_params(
        seed_sampling,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        hold_bias=hold_bias,
        min_hold_frames=min_hold,
        silence_bias=silence_bias,
        scale_penalty=scale_penalty,
        short_note_penalty=short_note_penalty,
        memory=memory,
    )
    check_output_file(out, inputs=[prime] if prime else [], what="MIDI file")
    gen = generate_file(
        model or BUNDLED_MODEL_DIR,
        out,
        seconds=seconds,
        seed=seed,
        prime=prime,
        params=params,
        runtime=runtime,
        stats_against=stats_against or (),
        on_skip=lambda path, reason: print(f"skipped {path}: {reason}", file=sys.stderr),
    )
    if as_json:
        print(json.dumps(generation_report(gen, params), indent=1))
        return
    primed = f" after {gen.prime_seconds:.1f} s of the prime" if gen.prime_frames else ""
    print(
        f"wrote {gen.path} ({gen.stats.seconds:.1f} s generated{primed}, "
        f"prime: {gen.prime}, runtime: {gen.runtime})"
    )
    print(format_comparison(gen.stats, gen.corpus))


@app.command("plot")
def plot_cmd(
    midi: Annotated[Path, typer.Argument(metavar="FILE.mid", help="The .mid file to draw.")],
    out: Annotated[
        Path,
        typer.Option("-o", "--out", help="The picture to write (.png; also .svg, .pdf, …)."),
    ],
    title: Annotated[str | None, typer.Option(help="Title (default: file, notes, length).")] = None,
) -> None:
    """Draw a piano roll of a MIDI file (time in seconds, pitch names)."""
    from musicgend.outputs import check_output_file
    from musicgend.plot import picture_path, plot_midi

    target = check_output_file(picture_path(out), inputs=[midi], what="picture")
    print(f"wrote {plot_midi(midi, target, title)}")


# -- model directories ------------------------------------------------------------------------

model_app = typer.Typer(help="Maintain model directories (size, LiteRT export, piece memory).")
app.add_typer(model_app, name="model")


@model_app.command("export-litert")
def model_export_litert(
    model_dir: Annotated[
        Path, typer.Argument(metavar="MODEL_DIR", help="Model directory (rewritten in place).")
    ],
    quantize: Annotated[
        str,
        typer.Option(help="none (float32) or int8 (dynamic-range: int8 weights, float maths)."),
    ] = "none",
) -> None:
    """Add (or rebuild) the LiteRT export model.tflite of a model (needs TensorFlow)."""
    from musicgend.model.artifact import compact_artifact

    # compact_artifact rejects an unknown value with a clear error
    result = compact_artifact(model_dir, litert=True, litert_quantize=quantize)  # type: ignore[arg-type]
    print(result.summary())


@model_app.command("compact")
def model_compact(
    model_dir: Annotated[
        Path, typer.Argument(metavar="MODEL_DIR", help="Model directory (rewritten in place).")
    ],
    float16: Annotated[
        bool, typer.Option("--float16", help="Store the weights as float16 (half the size).")
    ] = False,
    no_litert: Annotated[
        bool,
        typer.Option("--no-litert", help="Drop the LiteRT export (the daemon's auto → numpy)."),
    ] = False,
) -> None:
    """Rewrite a model in the current format: drops model.weights.h5, keeps other files."""
    from musicgend.model.artifact import compact_artifact

    result = compact_artifact(
        model_dir, weights_dtype="float16" if float16 else None, litert=False if no_litert else None
    )
    print(result.summary())


@model_app.command("tune-memory")
def model_tune_memory(
    model_dir: Annotated[
        Path, typer.Argument(metavar="MODEL_DIR", help="Model directory (rewritten in place).")
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data", metavar="MIDI_DIR", help="The model's training data (its validation pieces)."
        ),
    ],
    runtime: Annotated[str, typer.Option(help="Inference runtime (auto, numpy, litert, tf…).")] = (
        "auto"
    ),
    batch_size: Annotated[int, typer.Option(help="Windows per inference batch.")] = 256,
) -> None:
    """Fit the piece memory's weights (memory.json) on the model's validation pieces."""
    from musicgend.progress import progress
    from musicgend.training.memory import tune_memory

    if batch_size < 1:
        raise typer.BadParameter(f"must be >= 1, got {batch_size}", param_hint="--batch-size")
    result = tune_memory(
        model_dir,
        data,
        runtime=runtime,
        batch_size=batch_size,
        progress_factory=lambda n: progress(n, "tuning", plain_every=max(1, n // 10)),
    )
    print(result.summary())


# -- ports, session -----------------------------------------------------------------------

session_app = typer.Typer(
    help="Session logs: recover a killed session, export sessions as a MIDI corpus.",
    no_args_is_help=True,
)
app.add_typer(session_app, name="session")


@app.command("ports")
def ports_cmd(
    backend: Annotated[
        str, typer.Option(help="auto (running JACK, else ALSA), jack or alsa.")
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List MIDI ports: sources (for --connect-in) and destinations (for --connect-out)."""
    from musicgend.io.midi import describe_ports

    print(describe_ports(backend, as_json=as_json), end="")


@session_app.command("recover")
def session_recover(
    session_dir: Annotated[
        Path, typer.Argument(metavar="SESSION_DIR", help="Session directory (holds journal.jsonl).")
    ],
) -> None:
    """Rebuild session.mid (human + machine tracks) from the journal of a killed session."""
    from musicgend.io.session import recover_session

    s = recover_session(session_dir)
    tail = " (torn last line skipped)" if s.torn_tail else ""
    if s.bad_lines:
        tail += f" ({s.bad_lines_summary()})"
        print("\n".join(s.bad_line_notes()), file=sys.stderr)
    ended = "clean stop" if s.clean_end else "no clean stop"
    print(
        f"{s.midi_path}: {s.human_events} human + {s.machine_events} machine events, "
        f"{s.duration_s:.1f} s, {ended}{tail}"
    )


@session_app.command("export")
def session_export(
    session_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="SESSION_DIR",
            help="Session directories, or directories holding them (session root).",
        ),
    ],
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Corpus directory (created).")],
    track: Annotated[
        str, typer.Option(help="human (what you played), machine (its answers) or both.")
    ] = "human",
    gap: Annotated[
        float, typer.Option(help="Cut sessions into pieces at silences this long (s; 0: never).")
    ] = 10.0,
) -> None:
    """Turn logged sessions into .mid files for `musicgend train --data OUT_DIR`.

    Existing files are never overwritten; an identical earlier export is kept once. The
    exit code is 1 only when no file at all is usable.
    """
    from musicgend.io.session_export import export_sessions

    report = export_sessions(
        session_dirs,
        out_dir,
        track=track,
        gap_s=gap,
        on_note=lambda line: print(line, file=sys.stderr),
    )
    print(report.summary(out_dir))
    if report.usable == 0:
        raise typer.Exit(1)


# -- run / demo / bench (service) ---------------------------------------------------------


@app.command("run")
def run_cmd(
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file.")] = None,
    backend: Annotated[str | None, typer.Option(help="auto, jack or alsa.")] = None,
    model: Annotated[Path | None, typer.Option(help="Model directory (default: bundled).")] = None,
    mode: Annotated[str | None, typer.Option(help="accompany, call-response or solo.")] = None,
    in_port: Annotated[str | None, typer.Option("--in-port", help="Input port name.")] = None,
    out_port: Annotated[str | None, typer.Option("--out-port", help="Output port name.")] = None,
    connect_in: Annotated[
        str | None, typer.Option("--connect-in", help="Regex: sources to connect (and watch).")
    ] = None,
    connect_out: Annotated[
        str | None, typer.Option("--connect-out", help="Regex: destinations to connect.")
    ] = None,
    session_dir: Annotated[
        Path | None, typer.Option("--session-dir", help="Where sessions are written.")
    ] = None,
    mqtt_url: Annotated[
        str | None, typer.Option("--mqtt-url", help="mqtt://host[:port] for control.")
    ] = None,
    runtime: Annotated[
        str | None, typer.Option(help="Inference runtime: auto, numpy, litert, tf, tf-xla.")
    ] = None,
    metrics_out: Annotated[
        Path | None, typer.Option("--metrics-out", help="Write the final metrics (JSON) here.")
    ] = None,
    clock: Annotated[
        str | None,
        typer.Option(help="internal (own tempo) or midi (follow MIDI clock on the input)."),
    ] = None,
    bpm: Annotated[
        float | None,
        typer.Option(help="Internal clock tempo (default: exactly 5 frames per second)."),
    ] = None,
) -> None:
    """Run the daemon: listen on the input port, play a chord every frame on the output.

    A frame is 200 ms by default, 12 MIDI clock ticks (an eighth note) with --bpm or
    --clock midi.

    With no JACK server and no ALSA sequencer a private JACK server (dummy driver) is
    started. SIGTERM/SIGINT/SIGHUP/SIGQUIT: all notes off, session written, exit 0 (70 if
    the clean-up after that hung; the log then has every thread's stack). SIGUSR1: panic.
    """
    import logging

    from musicgend.service.runtime import DaemonInfo, StopWatchdog, raise_priority, run_daemon

    if metrics_out is not None:
        from musicgend.outputs import check_output_file

        check_output_file(metrics_out, what="metrics file", create_dir=True)
    raise_priority()  # first: a busy core doesn't hold up the start-up imports and the ports
    from musicgend.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = load_config(
        config,
        {
            "midi.backend": backend,
            "engine.model": model,
            "engine.mode": mode,
            "midi.in_port": in_port,
            "midi.out_port": out_port,
            "midi.connect_in": connect_in,
            "midi.connect_out": connect_out,
            "session.dir": session_dir,
            "mqtt.url": mqtt_url,
            "engine.runtime": runtime,
            "clock.source": clock,
            "clock.bpm": bpm,
        },
    )

    def ready(info: DaemonInfo) -> None:
        server = f" (private JACK server {info.embedded_server})" if info.embedded_server else ""
        print(
            f"ready: {info.backend}{server} in={info.in_port} out={info.out_port} "
            f"runtime={info.runtime} ports ready in {info.ports_ready_s:.2f} s",
            flush=True,
        )
        if info.session_dir is not None:
            print(f"session: {info.session_dir}", flush=True)

    info = run_daemon(settings, on_ready=ready, watchdog=StopWatchdog())
    if metrics_out is not None and info.metrics is not None:
        import json

        metrics_out.write_text(json.dumps(info.metrics, indent=1) + "\n", encoding="utf-8")
    if info.session_midi is not None:
        # after SIGHUP the terminal may be gone (EIO): the session is written either way
        with contextlib.suppress(OSError):
            print(f"session written: {info.session_midi}", flush=True)


@app.command("demo")
def demo_cmd(
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where the chorale, session, PNG and WAV go.")
    ] = Path("musicgend-demo"),
    model: Annotated[Path | None, typer.Option(help="Model directory (default: bundled).")] = None,
    midi: Annotated[
        Path | None, typer.Option(help="Play this .mid instead of a Bach chorale.")
    ] = None,
    seconds: Annotated[float, typer.Option(min=1, help="Play at most this long.")] = 30.0,
) -> None:
    """Play a Bach chorale into the daemon on a private JACK server; keep the session."""
    from musicgend.config import BUNDLED_MODEL_DIR
    from musicgend.service.demo import run_demo

    result = run_demo(out_dir, model or BUNDLED_MODEL_DIR, midi, seconds)
    print(f"played:  {result.source_midi}")
    print(f"session: {result.session_midi}")
    print(f"picture: {result.png}")
    print(f"audio:   {result.wav or 'not rendered (fluidsynth or a GM soundfont missing)'}")


bench_app = typer.Typer()
app.add_typer(bench_app, name="bench")


@bench_app.callback(invoke_without_command=True)
def bench_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    frames: Annotated[
        int, typer.Option("--frames", min=10, help="Frames per condition (≥ 3000 for figures).")
    ] = 3000,
    model: Annotated[Path | None, typer.Option(help="Model directory (default: bundled).")] = None,
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where the JSON result is saved.")
    ] = Path("bench/results"),
) -> None:
    """Measure the daemon: decision latency, late frames, inference, jitter, RSS, start.

    `bench soak`: the same daemon for an hour under load.
    """
    if ctx.invoked_subcommand is not None:
        return
    import json

    from musicgend.config import BUNDLED_MODEL_DIR
    from musicgend.outputs import check_dir
    from musicgend.service.bench import format_summary, run_bench, save_result

    check_dir(out_dir, "results directory", create=True)
    result = run_bench(model or BUNDLED_MODEL_DIR, frames)
    print(json.dumps(result, indent=1) if as_json else format_summary(result), flush=True)
    print(f"saved {save_result(result, out_dir)}", file=sys.stderr)


@bench_app.command("soak")
def bench_soak_cmd(
    minutes: Annotated[
        float, typer.Option("--minutes", min=0.1, help="How long to run (60 for the figures).")
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    model: Annotated[Path | None, typer.Option(help="Model directory (default: bundled).")] = None,
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where the JSON and PNG are saved.")
    ] = Path("bench/results"),
) -> None:
    """Run the daemon for an hour under load; report per 5 minutes.

    A separate JACK client plays chorales, bursts and silences; MQTT commands every few
    seconds and a model swap every 10 minutes; a CPU hog on the other core. Ctrl-C stops
    early and still writes the report.
    """
    import json

    from musicgend.config import BUNDLED_MODEL_DIR
    from musicgend.outputs import check_dir
    from musicgend.service.soak import SoakOptions, format_summary, soak

    check_dir(out_dir, "results directory", create=True)
    report, path = soak(SoakOptions(model or BUNDLED_MODEL_DIR, minutes), out_dir)
    print(json.dumps(report, indent=1) if as_json else format_summary(report))
    print(f"saved {path} and {path.with_suffix('.png').name}", file=sys.stderr)
    if report.get("error"):
        raise MusicgendError(report["error"])
    if report.get("interrupted"):
        raise typer.Exit(130)


def main() -> None:
    """Entry point (``python -m musicgend``)."""
    app()
