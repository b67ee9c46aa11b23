"""`musicgend vocab build` end to end on real .mid files, bad input included.

The CLI runs as a real process (``python -m musicgend``), so exit codes, stderr lines and
the ``error:`` path are exactly what a user sees.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import pytest

from musicgend.core.tokens import token_from_pitches
from musicgend.core.vocab import Vocab
from tests.conftest import (
    CHORD_CORPUS,
    TrackSpec,
    chord_frames,
    run_musicgend,
    write_chords,
    write_midi,
    write_not_midi,
    write_truncated,
)


def musicgend(*args: object) -> subprocess.CompletedProcess[str]:
    return run_musicgend(*args, timeout_s=120)


def corpus_counts() -> Counter[str]:
    return Counter(
        token_from_pitches(f) for chords in CHORD_CORPUS.values() for f in chord_frames(chords)
    )


def summary_field(stdout: str, name: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith(name)]
    return line[len(name) :].strip()


def test_builds_a_vocabulary_and_reports_every_bad_file_once(chord_corpus, tmp_path):
    bad = {
        "notes.txt": write_not_midi(chord_corpus / "notes.txt"),
        "fake.mid": write_not_midi(chord_corpus / "fake.mid", "MIDI? no, text.\n"),
        "corrupt.mid": chord_corpus / "corrupt.mid",
        "truncated.mid": write_truncated(
            chord_corpus / "truncated.mid", chord_corpus / "cadence.mid", 0.6
        ),
        "drums.mid": write_midi(
            chord_corpus / "drums.mid", TrackSpec(notes=[(0.0, 1.0, 36)], is_drum=True)
        ),
    }
    bad["corrupt.mid"].write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\xff\xff")
    out = tmp_path / "out" / "vocab.json"

    result = musicgend("vocab", "build", chord_corpus, "-o", out)

    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    reasons = {
        "notes.txt": "not a MIDI file",
        "fake.mid": "not a MIDI file",
        "corrupt.mid": "corrupt or truncated",
        "truncated.mid": "corrupt or truncated",
        "drums.mid": "only drum tracks",
    }
    for name, reason in reasons.items():
        mine = [line for line in lines if f"/{name}:" in line]
        assert len(mine) == 1, (name, lines)
        assert str(bad[name]) in mine[0] and reason in mine[0]
    # nothing else on stderr than the skip lines and the plain progress lines
    assert all(line.startswith(("skipped ", "read ")) for line in lines), lines

    counts = corpus_counts()
    frames = sum(counts.values())
    assert summary_field(result.stdout, "pieces") == "3 read, 5 skipped"
    assert summary_field(result.stdout, "frames").startswith(f"{frames} ")
    vocab = Vocab.loads(out.read_text())
    assert set(vocab.tokens[2:]) == set(counts) - {"e"}
    assert vocab.counts[1] == counts["e"] == 2
    assert summary_field(result.stdout, "tokens").startswith(f"{len(vocab)} in the vocabulary")
    top10 = sum(c for _, c in counts.most_common(10)) / frames
    assert f"top 10: {100 * top10:.1f} %" in result.stdout
    assert summary_field(result.stdout, "silence rate") == f"{100 * 2 / frames:.1f} % of frames"
    assert summary_field(result.stdout, "vocabulary").startswith(str(out))
    assert json.loads(out.read_text())["fs"] == 5


def test_missing_directory_is_reported_and_the_rest_still_used(chord_corpus, tmp_path):
    missing = tmp_path / "no-such-dir"
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "v.json"
    result = musicgend("vocab", "build", missing, empty, chord_corpus, "-o", out)
    assert result.returncode == 0, result.stderr
    assert f"skipped {missing}: no such file or directory" in result.stderr.splitlines()
    assert f"skipped {empty}: empty directory" in result.stderr.splitlines()
    assert summary_field(result.stdout, "pieces") == "3 read, 2 skipped"
    assert out.is_file()


@pytest.mark.parametrize("case", ["missing", "empty", "only-bad", "only-stray"])
def test_nothing_usable_exits_1_with_one_line_per_problem(tmp_path, case):
    target = tmp_path / "corpus"
    expected: list[str] = []
    if case == "missing":
        expected.append(f"skipped {target}: no such file or directory")
    elif case == "empty":
        target.mkdir()
        expected.append(f"skipped {target}: empty directory")
    elif case == "only-bad":
        write_not_midi(target / "a.mid")
        write_midi(target / "drums.mid", TrackSpec(notes=[(0.0, 1.0, 38)], is_drum=True))
        expected.append(f"skipped {target / 'a.mid'}: not a MIDI file (no 'MThd' header)")
        expected.append(
            f"skipped {target / 'drums.mid'}: only drum tracks (drums make no chord tokens)"
        )
    else:
        write_not_midi(target / "readme.txt")
        expected.append(f"skipped {target / 'readme.txt'}: not a MIDI file")
        expected.append(f"skipped {target}: no MIDI files in this directory")
    out = tmp_path / "v.json"
    result = musicgend("vocab", "build", target, "-o", out)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if not line.startswith("read ")]
    assert len(lines) == len(expected) + 1, lines
    for want, got in zip(expected, lines, strict=False):
        assert got.startswith(want), (want, got)
    assert lines[-1] == f"error: no usable piece under {target}"
    assert not out.exists()


def test_augment_transpose_counts_every_key_that_fits(tmp_path):
    corpus = tmp_path / "c"
    write_chords(corpus / "mid.mid", [({60, 64, 67}, 2), ({62}, 1)])
    write_chords(corpus / "high.mid", [({125}, 1)])  # only shifts -5..+2 fit
    out = tmp_path / "aug.json"
    result = musicgend("vocab", "build", corpus, "-o", out, "--augment-transpose")
    assert result.returncode == 0, result.stderr
    vocab = Vocab.loads(out.read_text())
    expected = {token_from_pitches({60 + s, 64 + s, 67 + s}) for s in range(-5, 7)}
    expected |= {str(62 + s) for s in range(-5, 7)} | {str(125 + s) for s in range(-5, 3)}
    assert set(vocab.tokens[2:]) == expected
    assert summary_field(result.stdout, "frames").startswith("4 ")
    augmented = summary_field(result.stdout, "augmented")
    assert augmented.startswith("20 piece copies in 12 keys")
    assert "44 frames" in augmented  # 3 frames × 12 keys + 1 frame × 8 keys
    assert "4 copies left out" in augmented


def test_min_count_first_track_only_and_fs(tmp_path):
    corpus = tmp_path / "c"
    write_midi(
        corpus / "two.mid",
        TrackSpec(notes=[(0.01, 0.61, 60), (0.61, 0.81, 62)]),  # 60 ×3, 62 ×1
        TrackSpec(notes=[(0.01, 0.41, 48)]),  # a second track: merged unless first only
    )
    out = tmp_path / "v.json"
    merged = musicgend("vocab", "build", corpus, "-o", out, "--min-count", "2")
    assert merged.returncode == 0, merged.stderr
    vocab = Vocab.loads(out.read_text())
    # 48,60 ×2 kept; 60 ×1 and 62 ×1 are rarer than 2 → counted under <unk>
    assert vocab.tokens == ("<unk>", "e", "48,60") and vocab.counts == (2, 0, 2)
    assert "2 rarer chords map to <unk>" in merged.stdout

    first = musicgend("vocab", "build", corpus, "-o", out, "--first-track-only")
    assert first.returncode == 0, first.stderr
    assert Vocab.loads(out.read_text()).tokens == ("<unk>", "e", "60", "62")

    slow = musicgend("vocab", "build", corpus, "-o", out, "--fs", "10", "--first-track-only")
    assert slow.returncode == 0, slow.stderr
    vocab = Vocab.loads(out.read_text())
    assert vocab.fs == 10 and vocab.counts[2:] == (6, 2)
    assert summary_field(slow.stdout, "frames").startswith("8 (0.1 s each at fs=10)")


def test_usage_errors_exit_2(tmp_path):
    result = musicgend("vocab", "build", tmp_path)  # no -o
    assert result.returncode == 2
    result = musicgend("vocab", "build", tmp_path, "-o", tmp_path / "v.json", "--fs", "0")
    assert result.returncode == 2


def test_bad_output_path_fails_before_reading(chord_corpus, tmp_path):
    result = musicgend("vocab", "build", chord_corpus, "-o", tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"error: {tmp_path}: is a directory; give the vocabulary a file name"
    )
    assert list(tmp_path.glob(".*.tmp")) == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = musicgend("vocab", "build", chord_corpus, "-o", blocker / "v.json")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {blocker / 'v.json'}: {blocker} is a file, not a directory"
    )


def test_list_corpus_sorts_dedupes_and_ignores_hidden_files(chord_corpus):
    from musicgend.training.corpus import list_corpus

    write_not_midi(chord_corpus / ".hidden" / "x.txt")
    write_not_midi(chord_corpus / ".DS_Store")
    listing = list_corpus([chord_corpus, chord_corpus / "cadence.mid", chord_corpus / "sub"])
    names = [p.relative_to(chord_corpus).as_posix() for p in listing.midi]
    assert names == ["cadence.mid", "melody.mid", "sub/low.mid"]
    assert listing.skipped == []
