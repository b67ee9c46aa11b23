"""Output paths checked before a command's work (musicgend.outputs)."""

from __future__ import annotations

import pytest

from musicgend.errors import OutputError
from musicgend.outputs import check_dir, check_output_file


def test_check_dir_creates_only_when_asked_and_names_a_file_in_the_way(tmp_path):
    checked = check_dir(tmp_path / "a" / "b")
    assert checked == tmp_path / "a" / "b" and not (tmp_path / "a").exists()
    made = check_dir(tmp_path / "a" / "b", create=True)
    assert made.is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"f is a file, not a directory"):
        check_dir(tmp_path / "f" / "sub")
    with pytest.raises(OutputError, match=r"^/\S*/f is a file, not a directory$"):
        check_dir(tmp_path / "f")  # named once, not "f: f is a file"
    with pytest.raises(OutputError, match=r"^.*/out\.json: .*f is a file"):
        check_dir(tmp_path / "f" / "sub", for_path=tmp_path / "f" / "sub" / "out.json")


def test_check_output_file(tmp_path):
    target = check_output_file(tmp_path / "new" / "x.mid")
    assert target == tmp_path / "new" / "x.mid" and not (tmp_path / "new").exists()
    assert check_output_file(target, create_dir=True) == target  # a long run's file
    assert (tmp_path / "new").is_dir() and not target.exists()
    with pytest.raises(OutputError, match="is a directory; give the picture a file name"):
        check_output_file(tmp_path, what="picture")
    source = tmp_path / "in.mid"
    source.write_bytes(b"MThd")
    link = tmp_path / "link.mid"
    link.symlink_to(source)
    with pytest.raises(OutputError, match="is also an input of this command"):
        check_output_file(link, inputs=[tmp_path / "other.mid", source])
    # an existing file that is not an input may be replaced
    assert check_output_file(source, inputs=[tmp_path / "other.mid"]) == source


def test_run_and_bench_refuse_an_unwritable_output_before_starting(tmp_path):
    from tests.conftest import run_musicgend

    blocker = tmp_path / "file"
    blocker.write_text("x")
    run = run_musicgend("run", "--metrics-out", blocker / "m.json", timeout_s=60)
    assert run.returncode == 1
    assert (
        run.stderr.strip() == f"error: {blocker / 'm.json'}: {blocker} is a file, not a directory"
    )
    bench = run_musicgend("bench", "--frames", "10", "--out-dir", blocker / "r", timeout_s=60)
    assert bench.returncode == 1
    assert bench.stderr.strip() == f"error: {blocker / 'r'}: {blocker} is a file, not a directory"
