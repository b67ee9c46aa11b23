"""``musicgend evaluate`` end to end: a tiny real model artifact, real MIDI files, the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from musicgend.core.spelling import PitchPrior
from musicgend.core.tokens import token_from_pitches
from musicgend.core.vocab import Vocab
from musicgend.io.midifile import read_piece
from musicgend.model.config import ModelConfig
from tests.conftest import run_musicgend

from .test_evaluate import write_midi

pytestmark = pytest.mark.tf

CHORDS = [frozenset({60, 64, 67}), frozenset({65, 69, 72}), frozenset({67, 71, 74}), frozenset()]
TRAIN = ["p0.mid", "p1.mid", "p2.mid", "p3.mid"]
VAL = ["p4.mid"]
TEST = ["p5.mid", "sub/p6.mid"]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_musicgend(*args, timeout_s=120, env={"TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A corpus of 7 tiny pieces and a tiny (random-weight) model saved with its split."""
    from musicgend.model.artifact import save_artifact
    from musicgend.model.bigru import build_model

    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    rng = np.random.default_rng(11)
    for name in TRAIN + VAL + TEST:
        chords = [(CHORDS[i], int(rng.integers(1, 4))) for i in rng.integers(0, 3, size=8)]
        # p5 also holds a chord no training piece has: an unknown chord in the test split.
        if name == "p5.mid":
            chords.append((frozenset({61, 66, 70}), 2))
        write_midi(data / name, chords)
    config = ModelConfig(
        name="tiny", window_frames=8, embed_dim=4, gru_units=4, gru_layers=1, dense_units=6
    )
    train_pieces = [read_piece(data / n) for n in TRAIN]
    vocab = Vocab.build([p.tokens for p in train_pieces], min_count=1)
    prior = PitchPrior.from_frames(f for p in train_pieces for f in p.frames)
    model = build_model(len(vocab), config)
    split = {"seed": 0, "train": TRAIN, "val": VAL, "test": TEST}
    out = save_artifact(
        root / "model",
        model,
        vocab,
        config,
        prior,
        {"data_dir": str(data), "split": split},
        export_tflite=False,
    )
    assert token_from_pitches({61, 66, 70}) not in vocab
    return out, data


def test_evaluate_json_scores_the_test_split_model_and_baselines_alike(trained):
    model, data = trained
    run = cli("evaluate", "--model", model, data, "--json", "--runtime", "numpy")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    for key in ("nll_nats_per_frame", "top1", "frames", "oov_rate", "baselines", "pieces"):
        assert key in report
    assert report["split"] == "test"
    assert report["pieces"] == 2
    test_frames = sum(len(read_piece(data / n).frames) for n in TEST)
    assert report["frames"] == test_frames
    assert report["oov_rate"] == pytest.approx(2 / test_frames)
    assert set(report["baselines"]) == {"repeat", "kn5_repeat"}
    for name in ("repeat", "kn5_repeat"):
        b = report["baselines"][name]
        assert b["frames"] == report["frames"]
        assert b["nll_nats_per_frame"] > 0 and 0.0 <= b["top1"] <= 1.0
        assert 0.0 <= b["lambda"] <= 1.0
    assert report["nll_nats_per_frame"] > 0 and 0.0 <= report["top1"] <= 1.0
    assert report["nll_ratio_vs_kn5_repeat"] == pytest.approx(
        report["nll_nats_per_frame"] / report["baselines"]["kn5_repeat"]["nll_nats_per_frame"]
    )
    assert report["baseline_data"]["train_pieces"] == 4
    assert report["baseline_data"]["val_pieces"] == 1
    assert report["skipped"] == []


def test_evaluate_table_other_dir_bad_files_and_missing_training_data(trained, tmp_path):
    model, data = trained
    other = tmp_path / "other"
    other.mkdir()
    write_midi(other / "x.mid", [(CHORDS[0], 3), (CHORDS[1], 2)])
    (other / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06")
    run = cli("evaluate", "--model", model, other, "--runtime", "numpy")
    assert run.returncode == 0, run.stderr
    assert "skipped" in run.stderr and "broken.mid" in run.stderr
    assert "kn5_repeat" in run.stdout and "split: all" in run.stdout
    assert "1 piece, 5 frames, " in run.stdout and ", 1 file skipped" in run.stdout

    # The baselines need the training pieces: a moved corpus is named, with the way out.
    moved = tmp_path / "moved"
    data.rename(moved)
    try:
        run = cli("evaluate", "--model", model, other, "--runtime", "numpy")
        assert run.returncode == 1
        assert run.stderr.startswith("error: can't fit the baselines")
        assert str(data) in run.stderr and "--train-data" in run.stderr
        run = cli(
            "evaluate",
            "--model",
            model,
            other,
            "--train-data",
            moved,
            "--json",
            "--runtime",
            "numpy",
        )
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["frames"] == 5
    finally:
        moved.rename(data)


def test_evaluate_warns_when_pieces_share_names_with_the_training_split(trained, tmp_path):
    model, data = trained
    other = tmp_path / "copies"
    other.mkdir()
    for name in ("p0.mid", "p1.mid", "p4.mid", "p5.mid"):  # train, train, val, test
        (other / name).write_bytes((data / name).read_bytes())
    run = cli("evaluate", "--model", model, other, "--json", "--runtime", "numpy")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["split"] == "all" and report["pieces"] == 4
    assert (report["in_training_split"], report["in_validation_split"]) == (2, 1)
    warning = [line for line in run.stderr.splitlines() if line.startswith("warning: ")]
    assert warning == [
        "warning: 3 of the 4 scored pieces share a file name with pieces the model was trained "
        f"on (2) or validated on (1), e.g. {other / 'p0.mid'}: the model and its baselines were "
        "fit or tuned on them, so these scores are optimistic"
    ]
    # the training data itself: its test split, nothing seen, no warning
    run = cli("evaluate", "--model", model, data, "--json", "--runtime", "numpy")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["split"] == "test"
    assert (report["in_training_split"], report["in_validation_split"]) == (0, 0)
    assert "warning" not in run.stderr


def test_evaluate_compare_warns_about_the_compared_models_own_split(trained, tmp_path):
    """``--compare``: pieces named like ones the compared model was trained or validated on
    are counted and warned about too (by its own saved split, not the model's)."""
    model, data = trained
    base = tmp_path / "base"
    shutil.copytree(model, base)
    meta = json.loads((base / "metadata.json").read_text())
    meta["training"]["split"] = {"train": ["p5.mid", "x/p6.mid"], "val": ["p0.mid"], "test": []}
    (base / "metadata.json").write_text(json.dumps(meta))
    run = cli("evaluate", "--model", model, data, "--compare", base, "--json", "--runtime", "numpy")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["split"] == "test" and report["pieces"] == 2  # p5.mid, sub/p6.mid
    assert (report["in_training_split"], report["in_validation_split"]) == (0, 0)
    compared = report["compare"][0]
    assert (compared["in_training_split"], compared["in_validation_split"]) == (2, 0)
    warning = [line for line in run.stderr.splitlines() if line.startswith("warning: ")]
    assert warning == [
        f"warning: all 2 scored pieces share a file name with pieces the compared model {base} "
        f"was trained on (2) or validated on (0), e.g. {data / 'p5.mid'}: it was fit or tuned "
        "on them, so its scores are optimistic"
    ]


def test_evaluate_broken_model_gives_the_artifacts_error(trained, tmp_path):
    _, data = trained
    run = cli("evaluate", "--model", tmp_path / "nope", data, "--json")
    assert run.returncode == 1
    assert run.stderr.strip() == f"error: {tmp_path / 'nope'}: no such model directory"
    assert run.stdout == ""


def test_a_transposed_baseline_needs_the_baselines(tmp_path):
    from musicgend.errors import CorpusError
    from musicgend.training.evaluate import run_evaluation

    with pytest.raises(CorpusError, match="can't go with --no-baselines"):
        run_evaluation(tmp_path / "m", tmp_path, baselines=False, transposed_baseline=True)
