"""Compact artifacts: float16 weights, optional LiteRT export, `musicgend model …` rewrites."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from musicgend.cli import app
from musicgend.errors import ModelError
from musicgend.model.artifact import (
    METADATA_JSON,
    TFLITE,
    WEIGHTS_H5,
    WEIGHTS_NPZ,
    compact_artifact,
    load_artifact,
    numpy_weights,
    save_artifact,
)
from musicgend.model.runtime import load_predictor
from tests.model.conftest import build_tiny, tiny_prior

pytestmark = pytest.mark.tf

RUNTIMES = ("numpy", "tf", "keras", "litert")


def _windows(vocab_size: int, width: int, n: int = 5) -> np.ndarray:
    x = np.random.default_rng(4).integers(0, vocab_size, size=(n, width), dtype=np.int32)
    x[1, -4:] = x[1, -5]  # a held chord: the copy gate's case
    return x


def _npz_dtypes(path: Path) -> set[str]:
    with np.load(path / WEIGHTS_NPZ) as data:
        return {str(data[k].dtype) for k in data.files}


@pytest.fixture(scope="module")
def float16_artifact(tmp_path_factory) -> tuple[Path, object]:
    """The tied + copy-gate tiny model saved as float16 with LiteRT export, and the model."""
    model, vocab, config = build_tiny(copy_gate=True, seed=9, tied=True)
    path = save_artifact(
        tmp_path_factory.mktemp("f16") / "m",
        model,
        vocab,
        config,
        tiny_prior(),
        {"epochs": 1},
        weights_dtype="float16",
    )
    return path, model


def test_float16_round_trip_is_the_rounded_model(float16_artifact, tmp_path):
    path, model = float16_artifact
    art = load_artifact(path)
    assert art.weights_dtype == "float16"
    assert json.loads((path / METADATA_JSON).read_text())["weights_dtype"] == "float16"
    assert _npz_dtypes(path) == {"float16"}
    assert not (path / WEIGHTS_H5).exists()
    original = numpy_weights(model, art.config)
    for name, value in art.weights.items():
        assert value.dtype == np.float32
        assert np.array_equal(value, original[name].astype(np.float16).astype(np.float32))

    # Loaded and saved again (through Keras, or compacted in place): the same npz, bit for bit.
    again = save_artifact(
        tmp_path / "again",
        art.keras_model(),
        art.vocab,
        art.config,
        art.pitch_prior,
        art.training,
        weights_dtype="float16",
        export_tflite=False,
    )
    assert (again / WEIGHTS_NPZ).read_bytes() == (path / WEIGHTS_NPZ).read_bytes()
    compact_artifact(again)
    assert (again / WEIGHTS_NPZ).read_bytes() == (path / WEIGHTS_NPZ).read_bytes()
    with pytest.raises(ModelError, match=r"weights are float16; widening"):
        compact_artifact(again, weights_dtype="float32")


def test_float16_runtimes_agree(float16_artifact):
    path, model = float16_artifact
    art = load_artifact(path)
    x = _windows(len(art.vocab), art.config.window_frames)
    reference = np.asarray(art.keras_model()(x, training=False))
    for runtime in RUNTIMES:
        out = load_predictor(art, runtime).predict_batch(x)
        np.testing.assert_allclose(out, reference, atol=1e-6, err_msg=runtime)
    # Rounding moves the probabilities a little, not a lot.
    np.testing.assert_allclose(np.asarray(model(x, training=False)), reference, atol=1e-2)


def test_float16_halves_the_npz(tmp_path):
    model, vocab, config = build_tiny(copy_gate=True, seed=1, tied=True)
    sizes = {}
    for dtype in ("float32", "float16"):
        path = save_artifact(
            tmp_path / dtype,
            model,
            vocab,
            config,
            tiny_prior(),
            weights_dtype=dtype,
            export_tflite=False,
        )
        with np.load(path / WEIGHTS_NPZ) as data:
            payload = sum(data[k].nbytes for k in data.files)
        sizes[dtype] = (path / WEIGHTS_NPZ).stat().st_size, payload
    assert sizes["float16"][1] * 2 == sizes["float32"][1]
    # Headers (~200 bytes an array) dominate a tiny model's file; the payload halves.
    assert sizes["float32"][0] - sizes["float16"][0] == sizes["float16"][1]


def test_litert_without_export_is_a_clear_error(tmp_path):
    model, vocab, config = build_tiny(copy_gate=True, tied=True)
    path = save_artifact(
        tmp_path / "m", model, vocab, config, tiny_prior(), {}, export_tflite=False
    )
    with pytest.raises(
        ModelError, match=r"no LiteRT export \(model.tflite\); add one with `musicgend model "
    ):
        load_predictor(path, "litert")


def test_compact_cli_keeps_extra_files_and_passes_the_checks(tiny_tied_artifacts, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(tiny_tied_artifacts[True], path)
    before = load_artifact(path)
    # What training leaves beside the artifact, and a legacy Keras weights file.
    (path / "loss_curve.png").write_bytes(b"\x89PNG not really")
    before.keras_model().save_weights(str(path / WEIGHTS_H5))
    meta = json.loads((path / METADATA_JSON).read_text())
    meta["files"][WEIGHTS_H5] = hashlib.sha256((path / WEIGHTS_H5).read_bytes()).hexdigest()
    created = meta["created_utc"] = "2020-01-02T03:04:05+00:00"
    (path / METADATA_JSON).write_text(json.dumps(meta))
    x = _windows(len(before.vocab), before.config.window_frames)
    runner = CliRunner()

    result = runner.invoke(app, ["model", "compact", str(path), "--float16", "--no-litert"])
    assert result.exit_code == 0, result.output
    assert "float16 weights, no LiteRT export" in result.output
    art = load_artifact(path)
    assert art.weights_dtype == "float16" and art.tflite_path is None
    assert not (path / WEIGHTS_H5).exists() and not (path / TFLITE).exists()
    assert (path / "loss_curve.png").read_bytes() == b"\x89PNG not really"
    assert "loss_curve.png" in art.metadata["files"]  # now checksummed too
    assert art.training == before.training
    # the model's creation time stays; the rewrite has its own
    assert art.metadata["created_utc"] == created < art.metadata["rewritten_utc"]
    assert art.vocab.hash == before.vocab.hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp dirs left
    assert load_predictor(art).runtime in ("numpy", "tf-xla")

    result = runner.invoke(app, ["model", "export-litert", str(path)])
    assert result.exit_code == 0, result.output
    art = load_artifact(path)
    assert art.tflite_path == path / TFLITE
    assert art.metadata["created_utc"] == created
    assert (path / "loss_curve.png").read_bytes() == b"\x89PNG not really"
    np.testing.assert_allclose(
        load_predictor(art, "litert").predict_batch(x),
        load_predictor(art, "numpy").predict_batch(x),
        atol=1e-6,
    )


def test_compact_refuses_what_it_could_not_carry(tiny_artifacts, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(tiny_artifacts[False], path)
    (path / "plots").mkdir()
    before = (path / WEIGHTS_NPZ).read_bytes()
    result = CliRunner().invoke(app, ["model", "compact", str(path)])
    assert result.exit_code == 1
    with pytest.raises(ModelError, match=r"can't carry plots over; move them out first"):
        compact_artifact(path)
    assert (path / WEIGHTS_NPZ).read_bytes() == before


def test_compact_repairs_what_it_rebuilds_or_drops(float16_artifact, tmp_path):
    """A missing or damaged LiteRT export or extra file blocks loading, with the command that
    mends it; compacting mends it (rebuilds or drops the export, drops a missing extra)."""
    source, _ = float16_artifact
    path = tmp_path / "m"
    shutil.copytree(source, path)
    (path / "notes.txt").write_text("how it was trained")
    compact_artifact(path)  # the extra is on the file list now
    (path / "notes.txt").unlink()
    with pytest.raises(ModelError, match=r"notes.txt: missing; `musicgend model compact"):
        load_artifact(path)
    result = compact_artifact(path)
    assert result.notes == ("notes.txt taken off the file list (missing)",)
    assert "notes.txt" not in load_artifact(path).metadata["files"]

    (path / TFLITE).write_bytes(b"garbage")
    with pytest.raises(ModelError, match=r"export-litert .* rebuilds it"):
        load_artifact(path)
    with pytest.raises(ModelError, match="checksum mismatch"):
        compact_artifact(path)  # keeping the export can't mend it
    rebuilt = compact_artifact(path, litert=True)
    assert rebuilt.notes == (f"{TFLITE} rebuilt (checksum mismatch (file corrupt or replaced))",)
    assert load_artifact(path).tflite_path is not None
    (path / TFLITE).unlink()
    dropped = compact_artifact(path, litert=False)
    assert dropped.notes == (f"{TFLITE} dropped (missing)",)
    assert load_artifact(path).tflite_path is None


def test_compact_rewrites_through_a_link_and_refuses_a_read_only_model(float16_artifact, tmp_path):
    source, _ = float16_artifact
    target = tmp_path / "v1"
    shutil.copytree(source, target)
    link = tmp_path / "current"
    link.symlink_to(target.name)
    compact_artifact(link, litert=False)
    assert link.is_symlink() and load_artifact(link).tflite_path is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v1"]  # nothing left over
    target.chmod(0o555)
    try:
        with pytest.raises(ModelError, match="the model directory is read-only"):
            compact_artifact(link)
    finally:
        target.chmod(0o755)
