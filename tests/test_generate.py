"""Offline generation with a tiny random-weight model, .mid writing, plot, and the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from musicgend.core.pianoroll import Note
from musicgend.core.sampler import SamplerParams
from musicgend.errors import CorpusError
from musicgend.io.midifile import read_piece
from musicgend.training.generate import (
    generate_file,
    generation_report,
    notes_from_frames,
    seed_prime_ids,
    write_midi,
)
from tests.conftest import run_musicgend, write_not_midi, write_truncated
from tests.model.conftest import build_tiny, tiny_prior, tiny_vocab


def musicgend(*args: object) -> subprocess.CompletedProcess[str]:
    return run_musicgend(*args, timeout_s=120)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from musicgend.model.artifact import save_artifact

    model, vocab, config = build_tiny(copy_gate=True, seed=4)
    return save_artifact(
        tmp_path_factory.mktemp("gen") / "tiny", model, vocab, config, tiny_prior(), {}
    )


def test_notes_from_frames_joins_held_pitches():
    frames = [frozenset({60}), frozenset({60, 64}), frozenset(), frozenset({60})]
    assert notes_from_frames(frames, fs=5, velocity=80) == [
        Note(0.0, 0.4, 60, 80),
        Note(0.2, 0.4, 64, 80),
        Note(0.6, 0.8, 60, 80),
    ]


def test_written_midi_reads_back_to_the_same_frames_even_ending_in_silence(tmp_path):
    frames = [frozenset({60, 64, 67})] * 3 + [frozenset()] * 2 + [frozenset({62})] + [frozenset()]
    path = write_midi(frames, tmp_path / "x.mid", fs=5)
    assert list(read_piece(path).frames) == frames


def test_seed_prime_is_silence_then_a_frequent_chord():
    vocab = tiny_vocab()
    ids = seed_prime_ids(vocab, 50, seed=3)
    assert ids[:49] == [1] * 49
    frequent = sorted(range(2, len(vocab)), key=lambda i: -vocab.counts[i])[:20]
    assert ids[49] in frequent
    assert {seed_prime_ids(vocab, 50, s)[-1] for s in range(20)} != {ids[49]}


@pytest.mark.tf
def test_generate_writes_a_readable_midi_of_the_right_length(tiny_model, tmp_path):
    gen = generate_file(tiny_model, tmp_path / "out.mid", seconds=12, seed=1, runtime="numpy")
    assert len(gen.frames) == 60 == gen.stats.frames
    assert gen.prime == "seed" and gen.prime_frames == []
    assert 0 not in gen.token_ids
    assert list(read_piece(gen.path).frames) == gen.frames
    again = generate_file(tiny_model, tmp_path / "again.mid", seconds=12, seed=1, runtime="litert")
    assert again.token_ids == gen.token_ids  # same seed, same model: same music on any runtime
    other = generate_file(tiny_model, tmp_path / "other.mid", seconds=12, seed=2, runtime="numpy")
    assert other.token_ids != gen.token_ids


@pytest.mark.tf
def test_prime_from_a_file_comes_first_and_unknown_chords_map_to_known_ones(tiny_model, tmp_path):
    # 10 frames of a chord the vocabulary doesn't know, then 4 of silence
    prime_frames = [frozenset({30, 31, 100})] * 10 + [frozenset()] * 4
    prime = write_midi(prime_frames, tmp_path / "prime.mid", fs=5)
    gen = generate_file(tiny_model, tmp_path / "out.mid", seconds=2, prime=prime, runtime="numpy")
    assert gen.prime_frames == prime_frames[:12]  # the tiny model's window: 12 frames
    assert list(read_piece(gen.path).frames) == prime_frames[:12] + gen.frames
    assert len(gen.frames) == 10
    assert (gen.prime_seconds, gen.file_seconds) == (2.4, 4.4)
    assert generation_report(gen, SamplerParams())["file_seconds"] == 4.4


@pytest.mark.tf
def test_cli_generate_with_stats_against_a_corpus_and_plot(tiny_model, tmp_path):
    corpus = tmp_path / "corpus"
    write_midi([frozenset({60, 64, 67})] * 10 + [frozenset({62, 65, 69})] * 10, corpus / "a.mid", 5)
    write_midi([frozenset({55, 59, 62})] * 5 + [frozenset()] * 5, corpus / "b.mid", 5)
    out = tmp_path / "g.mid"
    args = ["generate", "--model", tiny_model, "-o", out, "--seconds", "8", "--seed", "3"]
    args += ["--top-p", "0.9", "--hold-bias", "3", "--stats-against", corpus, "--json"]
    result = musicgend(*args)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["stats"]["frames"] == 40
    assert report["corpus"]["pieces"] == 2
    assert report["sampler"]["top_p"] == 0.9 and report["sampler"]["hold_bias"] == 3.0
    assert set(report["ratios"]) == set(report["goals"])
    table = musicgend("generate", "--model", tiny_model, "-o", out, "--seconds", "4")
    assert table.returncode == 0 and "short_note_share" in table.stdout
    png = tmp_path / "g.png"
    plotted = musicgend("plot", out, "-o", png)
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.tf
def test_stats_against_reports_every_file_it_skips(tiny_model, tmp_path):
    corpus = tmp_path / "corpus"
    write_midi([frozenset({60, 64, 67})] * 10, corpus / "a.mid", 5)
    (corpus / "empty.mid").write_bytes(b"")
    write_not_midi(corpus / "notes.mid")
    write_truncated(corpus / "cut.mid", corpus / "a.mid", 0.6)
    out = tmp_path / "g.mid"
    args = ["generate", "--model", tiny_model, "-o", out, "--seconds", "2", "--json"]
    result = musicgend(*args, "--stats-against", corpus)
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert skipped == [
        f"skipped {corpus / 'cut.mid'}: corrupt or truncated MIDI data (EOFError)",
        f"skipped {corpus / 'empty.mid'}: empty file (0 bytes)",
        f"skipped {corpus / 'notes.mid'}: not a MIDI file (no 'MThd' header)",
    ]
    report = json.loads(result.stdout)
    assert report["corpus"]["pieces"] == 1
    assert [s["path"] for s in report["corpus_skipped"]] == [
        str(corpus / n) for n in ("cut.mid", "empty.mid", "notes.mid")
    ]

    # nothing readable: an error naming the count and the first reason, no file written
    (corpus / "a.mid").unlink()
    seen: list[tuple[Path, str]] = []
    out = tmp_path / "never.mid"
    with pytest.raises(CorpusError) as exc:
        generate_file(
            tiny_model, out, seconds=2, stats_against=[corpus], on_skip=lambda *a: seen.append(a)
        )
    assert str(exc.value) == (
        f"none of the 3 MIDI files under {corpus} could be read "
        f"(first: {corpus / 'cut.mid'}: corrupt or truncated MIDI data (EOFError))"
    )
    assert [p.name for p, _ in seen] == ["cut.mid", "empty.mid", "notes.mid"]
    assert not out.exists()
    (corpus / "cut.mid").unlink()
    (corpus / "notes.mid").unlink()
    with pytest.raises(CorpusError, match=r"^the only MIDI file under .* can't be read \("):
        generate_file(tiny_model, out, seconds=2, stats_against=[corpus])


def test_cli_errors_are_one_line(tmp_path):
    missing = musicgend("generate", "--model", tmp_path / "no", "-o", tmp_path / "x.mid")
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: {tmp_path / 'no'}: no such model directory"
    bad = musicgend("generate", "--model", "m", "-o", "x.mid", "--top-p", "1.5")
    assert bad.returncode == 1
    assert bad.stderr.strip() == "error: --top-p: Input should be less than or equal to 1"
    (tmp_path / "junk.mid").write_bytes(b"not midi")
    plot = musicgend("plot", tmp_path / "junk.mid", "-o", tmp_path / "j.png")
    assert plot.returncode == 1
    assert (
        plot.stderr.strip() == f"error: {tmp_path / 'junk.mid'}: not a MIDI file (no 'MThd' header)"
    )
    assert not (tmp_path / "x.mid").exists() and not (tmp_path / "j.png").exists()


@pytest.mark.tf
def test_cli_outputs_are_checked_before_the_work(tiny_model, tmp_path):
    prime = tmp_path / "prime.mid"
    write_midi([frozenset({60, 64, 67})] * 10, prime, 5)
    before = prime.read_bytes()
    over = musicgend("generate", "--model", tiny_model, "--prime", prime, "-o", prime)
    assert over.returncode == 1
    assert over.stderr.strip() == (
        f"error: {prime}: is also an input of this command; choose another MIDI file"
    )
    assert prime.read_bytes() == before
    through = musicgend("generate", "--model", tiny_model, "-o", prime / "x.mid")
    assert through.returncode == 1
    assert "is a file, not a directory" in through.stderr
    for option, value in (("--seconds", "inf"), ("--seed", "-1")):
        usage = musicgend(
            "generate", "--model", tiny_model, "-o", tmp_path / "x.mid", option, value
        )
        assert usage.returncode == 2, (option, usage.stderr)
        assert option in usage.stderr
    hold = musicgend("generate", "--model", tiny_model, "-o", tmp_path / "x.mid", "--min-hold", "0")
    assert hold.stderr.strip() == "error: --min-hold: Input should be greater than or equal to 1"
    nan = musicgend("generate", "--model", tiny_model, "-o", tmp_path / "x.mid", "--top-p", "nan")
    assert nan.stderr.strip() == "error: --top-p: Input should be a finite number"
    # plot: .png added when -o has no extension, the file written is the one named
    plotted = musicgend("plot", prime, "-o", tmp_path / "roll")
    assert plotted.returncode == 0, plotted.stderr
    assert plotted.stdout.strip() == f"wrote {tmp_path / 'roll.png'}"
    assert (tmp_path / "roll.png").read_bytes()[:4] == b"\x89PNG"
    svg = musicgend("plot", prime, "-o", tmp_path / "roll.svg")
    assert svg.returncode == 0 and b"<svg" in (tmp_path / "roll.svg").read_bytes()[:400]
    for bad in (tmp_path / "roll.txt", prime):
        refused = musicgend("plot", prime, "-o", bad)
        assert refused.returncode == 1
        assert f"can't draw a {bad.suffix} picture" in refused.stderr
    assert prime.read_bytes() == before and not (tmp_path / "roll.txt").exists()
    odd = tmp_path / "odd.svg"  # a MIDI file with a picture's name is still an input
    odd.write_bytes(before)
    itself = musicgend("plot", odd, "-o", odd)
    assert itself.returncode == 1 and "is also an input" in itself.stderr
    assert odd.read_bytes() == before
    # vocab build never writes over one of the pieces it reads
    vocab = musicgend("vocab", "build", tmp_path, "-o", prime)
    assert vocab.returncode == 1 and "is also an input" in vocab.stderr
    assert prime.read_bytes() == before
