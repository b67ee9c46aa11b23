"""Fine-tuning (``musicgend train --from``): a tiny base model trained here on one style is
fine-tuned on files of another, consistent style whose chords the base doesn't know. The
fine-tune must beat the base on held-out pieces of that style, add and use those chords,
record its lineage, and load in the daemon's TensorFlow-free loader."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musicgend.core.tokens import token_from_pitches
from musicgend.core.vocab import UNK_ID, Vocab
from musicgend.errors import CorpusError, ModelError, TrainingError
from musicgend.model.artifact import METADATA_JSON, VOCAB_JSON, load_artifact
from musicgend.model.config import ModelConfig
from musicgend.training.finetune import MODEL_CARD, extend_vocab, extend_weights, model_card
from musicgend.training.train import TrainOptions, cli_train, train
from tests.conftest import run_musicgend, write_chords

pytestmark = pytest.mark.tf

QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}

BASE_CHORDS = [{60, 64, 67}, {60, 65, 69}, {59, 62, 67}, {57, 60, 64}]
"""Style A: triads in random order and lengths."""
NEW_CHORDS = [{62, 65, 69, 72}, {55, 59, 62, 65}, {60, 64, 67, 71}, {57, 60, 64, 67}]
"""Style B: a ii7-V7-Imaj7-vi7 loop, two frames each; none of these is in style A."""
NEW_TOKENS = {token_from_pitches(c) for c in NEW_CHORDS}

TINY = ModelConfig(
    name="tiny-tied",
    window_frames=8,
    embed_dim=8,
    gru_units=8,
    gru_layers=1,
    dense_units=16,
    tied_output_dim=8,
    copy_gate=True,
    min_count=1,
)
"""Like the ``musicgend`` preset (tied output, copy gate), tiny."""


def write_style_a(root: Path, pieces: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for i in range(pieces):
        chords = [(BASE_CHORDS[rng.integers(4)], int(rng.integers(1, 4))) for _ in range(40)]
        write_chords(root / f"a{i}.mid", chords)
    return root


def write_style_b(root: Path, pieces: int = 6) -> Path:
    for i in range(pieces):
        start = i % 4  # each piece enters the loop elsewhere
        write_chords(root / f"b{i}.mid", [(NEW_CHORDS[(start + k) % 4], 2) for k in range(48)])
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base trained on style A (in process), fine-tuned on style B by the CLI."""
    root = tmp_path_factory.mktemp("finetune")
    a, b = write_style_a(root / "a"), write_style_b(root / "b")
    base = root / "base"
    options = TrainOptions(
        a, base, config=TINY, epochs=6, batch_size=32, learning_rate=1e-2, patience=0
    )
    train(options, command=["test"])
    tuned = root / "tuned"
    proc = run_musicgend(
        "train", "--data", b, "--out", tuned, "--from", base,
        "--epochs", "8", "--learning-rate", "1e-2", "--batch-size", "32",
        timeout_s=240, env=QUIET_TF,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "fine-tuned from" in proc.stdout and "4 chords added" in proc.stdout
    return {"a": a, "b": b, "base": base, "tuned": tuned}


@pytest.mark.slow
def test_fine_tune_beats_the_base_on_held_out_pieces_of_the_new_style(
    models: dict[str, Path],
) -> None:
    from musicgend.training.evaluate import run_evaluation

    for split in ("test", "val"):
        report = run_evaluation(
            models["tuned"], models["b"], split=split, compare=[models["base"]], runtime="numpy"
        )
        assert report.split == split
        (base,) = report.comparisons
        assert base.score.frames == report.score.frames > 0
        assert base.oov_rate == 1.0 and report.oov_rate == 0.0
        assert report.score.nll_nats_per_frame < base.score.nll_nats_per_frame - 1.0
        out = report.to_json()
        assert out["compare"][0]["model"] == str(models["base"])
        assert out["compare"][0]["model_nll_minus_this"] < -1.0
        assert {"nll_nats_per_frame", "top1", "frames", "oov_rate", "baselines"} <= set(out)


@pytest.mark.slow
def test_added_chords_are_in_the_vocabulary_and_get_used(models: dict[str, Path]) -> None:
    from musicgend.io.midifile import read_piece
    from musicgend.model.runtime import load_predictor
    from musicgend.training.generate import generate_file

    base, tuned = load_artifact(models["base"]), load_artifact(models["tuned"])
    n = len(base.vocab)
    assert tuned.vocab.tokens[:n] == base.vocab.tokens  # base ids keep their meaning
    assert set(tuned.vocab.tokens[n:]) == NEW_TOKENS

    # in held-out style-B context, most probability goes to the added chords
    test_file = models["b"] / load_artifact(models["tuned"]).training["split"]["test"][0]
    ids = tuned.vocab.ids(read_piece(test_file).tokens)
    windows = np.array([ids[t - 8 : t] for t in range(8, len(ids))], dtype=np.int32)
    probs = load_predictor(tuned, "numpy").predict_batch(windows)
    assert probs[:, n:].sum(axis=1).mean() > 0.8

    gen = generate_file(tuned, models["b"].parent / "gen.mid", seconds=8, seed=1, prime=test_file)
    played = {token_from_pitches(f) for f in read_piece(gen.path).frames}
    assert len(played & NEW_TOKENS) >= 2


@pytest.mark.slow
def test_lineage_model_card_and_a_fresh_litert_export(models: dict[str, Path]) -> None:
    from musicgend.model.runtime import load_predictor

    tuned = load_artifact(models["tuned"])
    meta = tuned.training
    ft = meta["fine_tune"]
    base_meta = (models["base"] / METADATA_JSON).read_bytes()
    assert ft["base_model"] == str(models["base"].resolve())
    assert ft["base_model_sha256"] == hashlib.sha256(base_meta).hexdigest()
    assert ft["base_vocab_hash"] == load_artifact(models["base"]).vocab.hash
    assert ft["data_dir"] == str(models["b"].resolve()) == meta["data_dir"]
    assert "--from" in ft["command"] and ft["command"] == meta["command"]
    assert ft["added_tokens"] == 4 and set(ft["added_token_list"]) == NEW_TOKENS
    assert meta["best_val_nll"] < ft["val_nll_before"]
    assert meta["options"]["learning_rate"] == 1e-2 and meta["options"]["patience"] == 2
    assert tuned.config == TINY
    split = meta["split"]
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (4, 1, 1)

    card = (models["tuned"] / MODEL_CARD).read_text()
    assert MODEL_CARD in tuned.metadata["files"]  # checksummed like every model file
    assert str(models["base"].resolve()) in card and ft["base_model_sha256"] in card
    assert "4 chords" in card and " --from " in card

    # the LiteRT export is the fine-tuned network's, not the base's
    assert tuned.tflite_path is not None
    x = np.array([tuned.vocab.ids(["e"] * 4 + sorted(NEW_TOKENS))], dtype=np.int32)
    lite = load_predictor(tuned, "litert").predict_batch(x)
    np.testing.assert_allclose(lite, load_predictor(tuned, "numpy").predict_batch(x), atol=1e-5)


@pytest.mark.slow
def test_keep_vocab_fine_tunes_with_the_base_vocabulary(
    models: dict[str, Path], tmp_path: Path
) -> None:
    kept = tmp_path / "kept"
    proc = run_musicgend(
        "train", "--data", models["b"], "--out", kept, "--from", models["base"], "--keep-vocab",
        "--epochs", "2", "--learning-rate", "1e-2", "--batch-size", "32",
        timeout_s=240, env=QUIET_TF,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "0 chords added" in proc.stdout
    base, tuned = load_artifact(models["base"]), load_artifact(kept)
    assert tuned.vocab.hash == base.vocab.hash and tuned.vocab.tokens == base.vocab.tokens
    assert {k: v.shape for k, v in tuned.weights.items()} == {
        k: v.shape for k, v in base.weights.items()
    }
    assert any(not np.array_equal(tuned.weights[k], base.weights[k]) for k in base.weights)
    ft = tuned.training["fine_tune"]
    assert ft["keep_vocab"] is True and ft["added_tokens"] == 0
    assert ft["vocab_size"] == len(base.vocab)
    assert tuned.training["options"]["keep_vocab"] is True
    assert "kept as they are (`--keep-vocab`)" in (kept / MODEL_CARD).read_text()


LOADER = """
import json, sys
from musicgend.service.runtime import load_model
model = load_model(sys.argv[1], "auto")
probs = model.predictor.predict_batch([[1] * model.predictor.window_frames])
print(json.dumps({"runtime": model.runtime, "tf": "tensorflow" in sys.modules,
                  "vocab": len(model.vocab), "sum": float(probs.sum())}))
"""


@pytest.mark.slow
def test_the_daemons_loader_takes_the_fine_tuned_model(models: dict[str, Path]) -> None:
    """``load_model`` over MQTT ends in this loader (in the daemon, without TensorFlow)."""
    out = subprocess.run(
        [sys.executable, "-c", LOADER, str(models["tuned"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["runtime"] == "litert" and got["tf"] is False
    assert got["vocab"] == len(load_artifact(models["tuned"]).vocab)
    assert got["sum"] == pytest.approx(1.0, abs=1e-4)


# -- the parts, without training -----------------------------------------------------------


def test_extend_vocab_appends_unknown_chords_seen_twice() -> None:
    base = Vocab.from_counts({"e": 9, "60": 5, "62": 3})
    streams = [["60", "64", "64", "65", "e"], ["64", "65", "67", "<unk>", "<unk>"]]
    vocab, added = extend_vocab(base, streams)
    assert added == ("64", "65")  # 64 ×3, 65 ×2; 67 once stays <unk>
    assert vocab.tokens == (*base.tokens, "64", "65")
    assert vocab.counts[-2:] == (3, 2)
    assert extend_vocab(base, [["60", "62"]])[0].tokens == base.tokens


@pytest.mark.parametrize("tied", [False, True], ids=["seed-like", "musicgend-like"])
def test_new_rows_start_as_unk_and_keep_the_base_distribution(tied: bool) -> None:
    """Before the first step the fine-tuned network gives every base token the base's
    probability, reads an added chord like ``<unk>``, and splits ``<unk>``'s mass."""
    from musicgend.model.artifact import keras_model_from_arrays, numpy_weights
    from tests.model.conftest import build_tiny

    model, vocab, config = build_tiny(copy_gate=True, seed=3, tied=tied)
    arrays = numpy_weights(model, config)
    v, k = len(vocab), 3
    grown = keras_model_from_arrays(config, v + k, extend_weights(arrays, config, v, k))
    rng = np.random.default_rng(0)
    x = rng.integers(0, v, size=(16, config.window_frames)).astype(np.int32)
    x[:, -1] = rng.integers(1, v, size=16)  # the copy expert repeats a known token
    p_base = model.predict(x, verbose=0)
    p_new = grown.predict(x, verbose=0)
    np.testing.assert_allclose(p_new[:, 1:v], p_base[:, 1:v], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p_new[:, v:], np.repeat(p_new[:, :1], k, axis=1), rtol=1e-5)
    np.testing.assert_allclose(p_new[:, UNK_ID] * (k + 1), p_base[:, UNK_ID], rtol=1e-5)
    x_new = x.copy()
    x_new[x == UNK_ID] = v + 1  # an added chord in the input reads like <unk>
    np.testing.assert_allclose(grown.predict(x_new, verbose=0), p_new, rtol=1e-5, atol=1e-7)


@pytest.mark.tf
def test_a_per_pitch_model_grows_only_its_embedding() -> None:
    """The head has no vocabulary: an added chord reads like ``<unk>`` and the head's
    inputs are the base's."""
    from musicgend.model.artifact import keras_model_from_arrays, numpy_weights
    from tests.model.conftest import build_tiny_pitch

    model, vocab, config = build_tiny_pitch(seed=5)
    arrays = numpy_weights(model, config)
    v, k = len(vocab), 2
    grown_arrays = extend_weights(arrays, config, v, k)
    assert set(grown_arrays) == set(arrays)
    assert grown_arrays["embedding"].shape == (v + k, config.embed_dim)
    grown = keras_model_from_arrays(config, v + k, grown_arrays)
    x = np.random.default_rng(1).integers(0, v, size=(8, config.window_frames)).astype(np.int32)
    np.testing.assert_allclose(grown(x), model(x), rtol=1e-6, atol=1e-6)
    x_new = x.copy()
    x_new[:, -1], x[:, -1] = v + 1, UNK_ID
    np.testing.assert_allclose(grown(x_new), model(x), rtol=1e-6, atol=1e-6)


# -- errors ----------------------------------------------------------------------------------


def test_errors(tmp_path: Path) -> None:
    from tests.model.conftest import save_tiny_artifact

    data = write_style_b(tmp_path / "b", pieces=3)
    given = {"data_dir": data, "base_model": tmp_path / "nope"}
    with pytest.raises(ModelError, match=r"base model \(--from\): .*nope: no such model"):
        cli_train(tmp_path / "out", False, given)
    with pytest.raises(TrainingError, match="--config can't be combined with --from"):
        cli_train(tmp_path / "out", False, {**given, "config": "seed"})
    with pytest.raises(TrainingError, match="--keep-vocab is for fine-tuning: give the base"):
        cli_train(tmp_path / "out", False, {"data_dir": data, "keep_vocab": True})

    base = save_tiny_artifact(tmp_path / "base")
    weights = base / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelError, match=r"base model \(--from\): .*weights.npz: checksum"):
        cli_train(tmp_path / "out", False, {**given, "base_model": base})

    # a vocabulary that isn't the one the weights were trained with
    base = save_tiny_artifact(tmp_path / "base2")
    other = Vocab.from_counts({"e": 1, **{str(p): 2 for p in range(40, 40 + 30)}})
    (base / VOCAB_JSON).write_text(other.dumps())
    meta = json.loads((base / METADATA_JSON).read_text())
    meta["files"][VOCAB_JSON] = hashlib.sha256((base / VOCAB_JSON).read_bytes()).hexdigest()
    (base / METADATA_JSON).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="wrong vocab for these weights"):
        cli_train(tmp_path / "out", False, {**given, "base_model": base})

    good = save_tiny_artifact(tmp_path / "base3")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no MIDI files"):
        cli_train(tmp_path / "out", False, {"data_dir": tmp_path / "empty", "base_model": good})
    assert not (tmp_path / "out").exists()

    proc = run_musicgend(
        "train", "--data", data, "--out", tmp_path / "o", "--from", tmp_path / "nope",
        timeout_s=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: base model (--from): {tmp_path / 'nope'}: no such model directory"
    )


def test_a_model_reading_pitches_keeps_its_weights_as_they_are() -> None:
    """No per-token weights: a larger vocabulary changes none of them (the arrays are
    checked against the shapes, and come back equal)."""
    from musicgend.model.artifact import weight_shapes
    from musicgend.model.config import PRESETS

    config = PRESETS["roll"]
    rng = np.random.default_rng(3)
    arrays = {
        name: rng.normal(size=shape).astype(np.float32)
        for name, shape in weight_shapes(config, 40).items()
    }
    grown = extend_weights(arrays, config, 40, 5)
    assert set(grown) == set(arrays) and "embedding" not in grown
    for name, value in arrays.items():
        np.testing.assert_array_equal(grown[name], value)


@pytest.mark.parametrize(
    ("added", "expected"),
    [
        (
            ["60.64"],
            "1 chord seen at least 1 time in the training pieces was added (11 tokens), its row",
        ),
        (
            ["60.64", "62.65"],
            "2 chords seen at least 1 time in the training pieces were added (12 tokens), their "
            "rows",
        ),
    ],
)
def test_model_card_counts_in_the_right_number(added: list[str], expected: str) -> None:
    assert expected in model_card({"fine_tune": card_lineage(added)})


def card_lineage(added: list[str]) -> dict[str, object]:
    """A ``training.fine_tune`` with what :func:`model_card` reads."""
    return {
        "base_model": "base",
        "data_dir": "data",
        "base_model_sha256": "0" * 64,
        "base_config": "roll",
        "base_vocab_size": 10,
        "base_vocab_hash": "f" * 64,
        "added_tokens": len(added),
        "added_token_list": added,
        "new_token_min_count": 1,
        "vocab_size": 10 + len(added),
        "pitch_prior": "blended",
    }


def test_model_card_gives_the_first_command_and_each_resume() -> None:
    meta = {
        "fine_tune": card_lineage([]),
        "command": ["musicgend", "train", "--from", "base", "--out", "m"],
        "resume_commands": [["musicgend", "train", "--out", "m", "--resume"]] * 2,
    }
    resume = "; resumed with `musicgend train --out m --resume`"
    assert f"- Command: `musicgend train --from base --out m`{resume}{resume}\n" in model_card(meta)
