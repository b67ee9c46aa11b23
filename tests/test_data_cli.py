"""`musicgend data bach`: the music21 chorales exported as .mid, in parallel, idempotent."""

from __future__ import annotations

import subprocess

import pytest

from musicgend.io.midifile import read_piece
from musicgend.training.corpus import ScoreSource, bach_chorale_sources, export_scores
from tests.conftest import run_musicgend, write_chords, write_not_midi, write_truncated


def musicgend(*args: object) -> subprocess.CompletedProcess[str]:
    return run_musicgend(*args, timeout_s=300)


def test_sources_are_the_bwv_chorales_once_each():
    sources = bach_chorale_sources()
    names = [s.name for s in sources]
    assert len(names) == len(set(names)) == 410
    assert all(n.startswith("bwv") for n in names)
    assert not any("riemenschneider" in str(s.path) for s in sources)
    by_name = {s.name: s for s in sources}
    assert by_name["bwv277"].path.suffix == ".mxl"  # also in music21 as .krn
    assert names[:3] == ["bwv1.6", "bwv2.6", "bwv3.6"]  # natural order
    assert names.index("bwv9.7") < names.index("bwv10.7")


@pytest.mark.slow
def test_export_runs_in_parallel_reports_failures_and_is_idempotent(tmp_path):
    real = bach_chorale_sources()[:2]
    broken = tmp_path / "broken.mxl"
    broken.write_bytes(b"PK\x03\x04 this is not a zipped MusicXML file")
    sources = [*real, ScoreSource("broken", broken), ScoreSource("gone", tmp_path / "gone.krn")]
    out = tmp_path / "out"
    seen: list[tuple[str, str]] = []

    report = export_scores(
        sources, out, jobs=2, on_result=lambda s, st, _r: seen.append((s.name, st))
    )

    assert sorted(report.exported) == [s.name for s in real]
    assert sorted(name for name, _ in report.failed) == ["broken", "gone"]
    assert all(reason for _, reason in report.failed)
    assert sorted(seen) == sorted(
        [
            (real[0].name, "exported"),
            (real[1].name, "exported"),
            ("broken", "failed"),
            ("gone", "failed"),
        ]
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        s.filename for s in real
    )  # no temp files
    for s in real:
        piece = read_piece(out / s.filename)
        assert len(piece.frames) > 50  # a chorale lasts more than 10 s
    first_bytes = (out / real[0].filename).read_bytes()

    again = export_scores(sources, out, jobs=1)
    assert again.exported == [] and sorted(again.existing) == sorted(s.name for s in real)
    assert len(again.failed) == 2

    forced = export_scores(real[:1], out, jobs=1, force=True)
    assert forced.exported == [real[0].name]
    assert (out / real[0].filename).read_bytes() == first_bytes  # deterministic output


@pytest.mark.slow
def test_cli_exports_with_plain_progress_lines_and_skips_existing(tmp_path):
    out = tmp_path / "bach"
    first = musicgend("data", "bach", out, "--limit", "2", "--jobs", "2")
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in out.iterdir()) == ["bwv1.6.mid", "bwv2.6.mid"]
    assert first.stdout.strip() == f"exported 2, skipped 0 (already there), failed 0 -> {out}"
    progress = first.stderr.splitlines()
    assert len(progress) == 2 and all(line.startswith("export ") for line in progress)
    assert {line.split()[1] for line in progress} == {"1/2", "2/2"}

    second = musicgend("data", "bach", out, "--limit", "2")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == f"exported 0, skipped 2 (already there), failed 0 -> {out}"


def test_an_unreadable_existing_file_is_not_taken_for_an_export(tmp_path):
    """Checked with the MIDI reader: a good file is kept; a bad one is exported again, and
    where that fails too it is reported and left as it was."""
    out = tmp_path / "out"
    write_chords(out / "good.mid", [({60, 64, 67}, 3)])
    write_chords(out / "silent.mid", [(set(), 3)])  # MIDI, but no notes
    write_not_midi(out / "text.mid")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    gone = tmp_path / "gone.krn"  # the sources can't be exported
    seen: list[tuple[str, str, str]] = []
    report = export_scores(
        [ScoreSource(name, gone) for name in ("good", "silent", "text")],
        out,
        jobs=1,
        on_result=lambda s, st, r: seen.append((s.name, st, r)),
    )
    assert report.existing == ["good"] and report.exported == [] and report.replaced == []
    assert [(name, status) for name, status, _ in seen] == [
        ("good", "exists"),
        ("silent", "failed"),
        ("text", "failed"),
    ]
    reasons = dict(report.failed)
    assert reasons["silent"].endswith("(the file there, left as it was, is unreadable: no notes)")
    assert "is unreadable: not a MIDI file" in reasons["text"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing lost


@pytest.mark.slow
def test_cli_re_exports_a_truncated_chorale(tmp_path):
    out = tmp_path / "bach"
    sources = bach_chorale_sources()[:2]
    assert export_scores(sources, out, jobs=1).exported == [s.name for s in sources]
    target = out / sources[0].filename
    original = target.read_bytes()
    write_truncated(target, target, keep=0.5)  # same name, half the bytes

    result = musicgend("data", "bach", out, "--limit", "2", "--jobs", "1")

    assert result.returncode == 0, result.stderr
    assert f"re-exported {target.name}: it was unreadable: corrupt or truncated" in result.stderr
    assert result.stdout.strip() == (
        f"exported 1 (1 over unreadable files), skipped 1 (already there), failed 0 -> {out}"
    )
    assert target.read_bytes() == original


def test_cli_refuses_a_file_as_output_directory(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = musicgend("data", "bach", target, "--limit", "1")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {target}: exists and is not a directory"
