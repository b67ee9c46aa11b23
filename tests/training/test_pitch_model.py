"""A per-pitch model (``output: "pitch"``) end to end on real Bach chorales: training with
random-key augmentation, the recorded validation NLL recomputed by the NumPy head, every
runtime agreeing, ``evaluate`` scoring chords the vocabulary lacks by the model itself, and
``generate`` playing them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from musicgend.core.memory import mixed_log_prob, recalls
from musicgend.core.musicstats import piano_roll
from musicgend.core.pitchhead import PitchHead
from musicgend.core.vocab import UNK_ID
from musicgend.io.midifile import read_piece
from musicgend.model.artifact import load_artifact
from musicgend.model.runtime import load_predictor, pitch_head
from musicgend.training.dataset import Split, load_corpus, prepare
from musicgend.training.evaluate import LOG_FLOOR
from tests.conftest import run_musicgend

pytestmark = [pytest.mark.tf, pytest.mark.slow]

PITCH_CONFIG = {
    "name": "tiny-pitch",
    "embed_dim": 8,
    "gru_units": 8,
    "gru_layers": 1,
    "dense_units": 16,
    "output": "pitch",
    "pitch_units": 12,
    "embed_dropout": 0.1,
    "min_count": 2,
}
QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def cli(*args: str | Path):
    return run_musicgend(*args, timeout_s=240, env=QUIET_TF)


@pytest.fixture(scope="module", params=["token", "pitches"], ids=["token-input", "pitch-input"])
def pitch_model(request, bach_dir: Path, tmp_path_factory) -> Path:
    """Trained twice: reading its window as token ids, and as pitches."""
    root = tmp_path_factory.mktemp("pitch")
    config = root / "pitch.json"
    config.write_text(json.dumps({**PITCH_CONFIG, "input": request.param}))
    out = root / "model"
    proc = cli(
        "train", "--data", bach_dir, "--out", out, "--config", config, "--epochs", "3",
        "--batch-size", "32", "--seed", "2", "--patience", "0", "--augment-transpose",
        "--learning-rate", "3e-3",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "val_top1" not in proc.stdout  # a per-pitch model's top-1 is evaluate's job
    return out


def test_training_lowers_the_loss(pitch_model: Path) -> None:
    h = load_artifact(pitch_model).training["history"]
    assert h[-1]["train_nll"] < h[0]["train_nll"]
    assert min(e["val_nll"] for e in h) < h[0]["val_nll"]
    assert all(e["val_top1"] is None for e in h)


def test_recorded_val_nll_is_the_numpy_heads_nll(pitch_model: Path, bach_dir: Path) -> None:
    """TensorFlow's training loss and the NumPy head that plays and scores agree, on the
    validation windows rebuilt from the saved split (their unknown chords included)."""
    art = load_artifact(pitch_model)
    meta = art.training
    corpus = load_corpus(bach_dir, seed=2, split=Split.from_json(meta["split"]))
    data = prepare(corpus, art.config, vocab=art.vocab)  # the 12-key vocabulary it trained with
    assert data.val.pitches is not None
    x = data.val.pitch_windows() if art.config.pitch_input else data.val.windows()[0]
    pos = data.val.positions
    prev, chords = data.val.pitches[pos - 1], data.val.pitches[pos]
    head = pitch_head(art)
    assert isinstance(head, PitchHead)
    out = load_predictor(art, "numpy").predict_batch(x)
    nll = -head.log_prob(out, prev.astype(bool), chords.astype(bool)).mean()
    assert nll == pytest.approx(meta["best_val_nll"], rel=1e-4)


def test_every_runtime_gives_the_same_head_inputs(pitch_model: Path) -> None:
    art = load_artifact(pitch_model)
    rng = np.random.default_rng(1)
    x = rng.integers(0, len(art.vocab), (4, art.config.window_frames)).astype(np.int32)
    if art.config.pitch_input:
        x = (rng.random((4, art.config.window_frames, 128)) < 0.03).astype(np.float32)
    reference = np.asarray(art.keras_model()(x, training=False))
    assert reference.shape == (4, PITCH_CONFIG["pitch_units"] + 129)
    for runtime in ("numpy", "litert", "tf"):
        out = load_predictor(art, runtime).predict_batch(x)
        np.testing.assert_allclose(out, reference, atol=1e-5, err_msg=runtime)


def test_evaluate_scores_unknown_chords_by_the_model(pitch_model: Path, bach_dir: Path) -> None:
    proc = cli("evaluate", "--model", pitch_model, bach_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["oov_rate"] > 0  # the test piece has chords the tiny vocabulary lacks
    assert 0.0 <= report["top1"] <= 1.0
    assert set(report["baselines"]) == {"repeat", "kn5_repeat"}
    # the same figure, computed here from the test piece and the head
    _, ids, lp = _test_piece_log_probs(pitch_model, bach_dir, report["runtime"])
    assert report["nll_nats_per_frame"] == pytest.approx(-lp.mean(), rel=1e-6)
    assert (ids == UNK_ID).mean() == pytest.approx(report["oov_rate"])
    assert report["nll_unknown"] < 40  # no p(<unk>) × p_spell: the head's own probability


def _test_piece_log_probs(model: Path, bach_dir: Path, runtime: str):
    """The test piece's frames, token ids and the head's ln p of each frame's chord."""
    art = load_artifact(model)
    test_file = bach_dir / Split.from_json(art.training["split"]).test[0]
    frames = read_piece(test_file, art.config.fs).frames
    ids = np.asarray(art.vocab.ids(_tokens(frames)), np.int32)
    w = art.config.window_frames
    padded = np.concatenate([np.ones(w, np.int32), ids])
    x = np.stack([padded[t : t + w] for t in range(len(ids))])
    if art.config.pitch_input:  # the frames themselves, unknown chords as they are
        roll = np.concatenate([np.zeros((w, 128), np.float32), piano_roll(frames)])
        x = np.stack([roll[t : t + w] for t in range(len(ids))]).astype(np.float32)
    out = load_predictor(art, runtime).predict_batch(x)
    chords = piano_roll(frames)
    prev = np.concatenate([np.zeros((1, 128), bool), chords[:-1]])
    head = pitch_head(art)
    assert head is not None
    return frames, ids, head.log_prob(out, prev, chords)


def test_tune_memory_and_the_mixture_evaluate_scores(
    pitch_model: Path, bach_dir: Path, tmp_path: Path
) -> None:
    """``model tune-memory`` fits weights on the validation piece; ``evaluate`` then scores
    the head mixed with the recall (checked here frame by frame), ``--no-memory`` the head
    alone, and ``generate`` plays the model with its memory, reproducibly."""
    model = tmp_path / "model"
    shutil.copytree(pitch_model, model)
    proc = cli("model", "tune-memory", model, "--data", bach_dir)
    assert proc.returncode == 0, proc.stderr
    assert "piece memory tuned on 1 validation piece (" in proc.stdout
    art = load_artifact(model)
    weights = art.memory
    assert weights is not None and art.memory_file is not None
    tuned = art.memory_file["tuned_on"]
    assert tuned["nll_with_memory"] <= tuned["nll_without_memory"]  # fitted on these frames

    def scores(*extra: str) -> dict:
        proc = cli("evaluate", "--model", model, bach_dir, "--json", "--no-baselines", *extra)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    mixed, alone = scores(), scores("--no-memory")
    assert "memory" not in alone and "without_memory" not in alone
    assert mixed["without_memory"]["nll_nats_per_frame"] == pytest.approx(
        alone["nll_nats_per_frame"], rel=1e-9
    )
    assert mixed["without_memory"]["top1"] == alone["top1"]
    frames, _, lp = _test_piece_log_probs(model, bach_dir, mixed["runtime"])
    found = recalls(frames)
    prev = [frozenset(), *frames[:-1]]
    share = np.array([weights.weight(r, p) for r, p in zip(found, prev, strict=True)])
    hit = np.array([r is not None and r.chord == f for r, f in zip(found, frames, strict=True)])
    by_hand = np.maximum(mixed_log_prob(lp, share, hit), LOG_FLOOR)
    assert mixed["nll_nats_per_frame"] == pytest.approx(-by_hand.mean(), rel=1e-6)
    assert mixed["memory"]["recall_share"] == pytest.approx(np.mean([r is not None for r in found]))
    assert 0.0 <= mixed["top1"] <= 1.0

    out = tmp_path / "gen.mid"
    runs = []
    for _ in range(2):
        proc = cli("generate", "--model", model, "-o", out, "--seconds", "20", "--seed", "5")
        assert proc.returncode == 0, proc.stderr
        runs.append(read_piece(out, 5).frames)
    assert runs[0] == runs[1] and any(runs[0])


def _tokens(frames):
    from musicgend.core.pianoroll import tokens_from_frames

    return tokens_from_frames(frames)


def test_generate_plays_a_per_pitch_model(pitch_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen.mid"
    proc = cli("generate", "--model", pitch_model, "-o", out, "--seconds", "8", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    frames = read_piece(out, 5).frames
    assert len(frames) == 40 and any(frames)
    again = tmp_path / "again.mid"
    proc = cli("generate", "--model", pitch_model, "-o", again, "--seconds", "8", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert read_piece(again, 5).frames == frames
