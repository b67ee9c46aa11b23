"""Real training of a tiny model on real Bach chorales: falling loss, save → load fidelity,
resume after SIGKILL retracing the uninterrupted run exactly (so training is deterministic
across processes with one seed), and clear errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from musicgend.core.vocab import UNK_ID
from musicgend.errors import TrainingError
from musicgend.model.artifact import load_artifact
from musicgend.model.config import ModelConfig
from musicgend.training.dataset import (
    Split,
    WindowIndex,
    cut_split,
    load_corpus,
    prepare,
    shuffled_names,
)
from musicgend.training.train import (
    STATE_FORMAT,
    STATE_VERSION,
    Cluster,
    Loop,
    TrainOptions,
    cli_train,
    read_state,
    state_dir_for,
    train,
    weights_digest,
    write_state,
)
from tests.conftest import run_musicgend, write_not_midi, write_truncated

from .conftest import TINY_CONFIG

pytestmark = [pytest.mark.tf, pytest.mark.slow]

EPOCHS = 3
ARGS = ["--epochs", str(EPOCHS), "--batch-size", "32", "--seed", "5", "--patience", "0"]


QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def _env() -> dict[str, str]:
    return {**os.environ, **QUIET_TF}


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_musicgend(*args, timeout_s=240, env=QUIET_TF)


def learning(h: list[dict[str, float]]) -> list[dict[str, float]]:
    """The history without its timings."""
    return [{k: v for k, v in e.items() if k not in ("epoch_s", "windows_per_s")} for e in h]


def history(model_dir: Path) -> list[dict[str, float]]:
    return load_artifact(model_dir).training["history"]


@pytest.fixture(scope="module")
def run_a(bach_dir: Path, tiny_config_file: Path, tmp_path_factory) -> Path:
    """One uninterrupted CLI training run: the reference for the other tests."""
    out = tmp_path_factory.mktemp("run_a") / "model"
    proc = cli("train", "--data", bach_dir, "--out", out, "--config", tiny_config_file, *ARGS)
    assert proc.returncode == 0, proc.stderr
    assert "best epoch" in proc.stdout
    return out


def test_training_lowers_the_loss_and_saves_a_complete_model(run_a: Path, bach_dir: Path) -> None:
    art = load_artifact(run_a)
    meta = art.training
    h = meta["history"]
    assert [e["epoch"] for e in h] == list(range(1, EPOCHS + 1))
    assert h[-1]["train_nll"] < h[0]["train_nll"]
    assert min(e["val_nll"] for e in h) < h[0]["val_nll"]
    assert meta["best_epoch"] == 1 + int(np.argmin([e["val_nll"] for e in h]))
    assert meta["best_val_nll"] == min(e["val_nll"] for e in h)
    assert meta["data_dir"] == str(bach_dir.resolve())
    split = meta["split"]
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (6, 1, 1)
    assert meta["windows_per_s"] > 0 and meta["wall_s"] > 0
    assert all(e["learning_rate"] == pytest.approx(1e-3) for e in h)  # the constant default
    assert meta["tensorflow"] and meta["device"].startswith(("CPU", "GPU"))
    assert meta["command"][1:3] == ["train", "--data"] and "resume_commands" not in meta
    assert art.config == ModelConfig(**TINY_CONFIG)
    assert art.tflite_path is not None
    png = run_a / "loss_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not state_dir_for(run_a).exists()


def test_saved_model_reproduces_the_recorded_val_nll(run_a: Path, bach_dir: Path) -> None:
    """The artifact, loaded back, gives exactly the validation NLL and top-1 recorded for
    its (best) epoch, on the windows rebuilt from the saved split."""
    art = load_artifact(run_a)
    meta = art.training
    corpus = load_corpus(bach_dir, seed=5, split=Split.from_json(meta["split"]))
    data = prepare(corpus, art.config)
    assert data.vocab.hash == art.vocab.hash
    x, y = data.val.windows()
    probs = art.keras_model().predict(x, batch_size=512, verbose=0)
    nll = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)).mean()
    assert nll == pytest.approx(meta["best_val_nll"], rel=1e-5)
    top1 = float(((probs.argmax(-1) == y) & (y != UNK_ID)).mean())
    assert top1 == pytest.approx(meta["best_val_top1"], abs=1e-6)


def test_val_top1_never_counts_an_unknown_target_right(tmp_path: Path) -> None:
    """Training's val_top1 scores by ``musicgend evaluate``'s rule: a window whose target is
    ``<unk>`` is never right, even when the model's argmax is ``<unk>``."""
    import tensorflow as tf

    config = ModelConfig(**{**TINY_CONFIG, "copy_gate": False})
    loop = Loop(
        tf.distribute.get_strategy(),
        4,
        TrainOptions(tmp_path, tmp_path / "m", config),
        global_batch=8,
    )
    index = WindowIndex.from_sequences([[UNK_ID, 2, UNK_ID, 2]], config.window_frames)
    logits = loop.model.get_layer("logits")
    kernel = logits.get_weights()[0]
    for answer, top1 in ((UNK_ID, 0.0), (2, 0.5)):  # the model always answers `answer`
        logits.set_weights([np.zeros_like(kernel), np.where(np.arange(4) == answer, 50.0, 0.0)])
        assert loop.evaluate(index)[1] == top1


def interrupt_after_epoch(argv: list[str], epoch: int, sig: signal.Signals) -> tuple[int, str]:
    """Run ``musicgend`` and send ``sig`` as soon as it reports ``epoch`` done (the next epoch
    has begun). Returns the exit code and the rest of stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "musicgend", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # blocks on the pipe; no wall-clock sleeping
            seen.append(line)
            if line.startswith(f"epoch {epoch}/{EPOCHS}"):
                os.kill(proc.pid, sig)
                break
        else:
            pytest.fail(f"training ended without reporting epoch {epoch}:\n" + "".join(seen))
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(seen) + rest


def test_interrupt_and_sigkill_then_resume_retrace_the_uninterrupted_run(
    run_a: Path, bach_dir: Path, tiny_config_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    start = ["train", "--data", str(bach_dir), "--out", str(out)]
    start += ["--config", str(tiny_config_file), *ARGS]

    # Ctrl-C in epoch 2: one clear error line, the state after epoch 1 is kept
    code, err = interrupt_after_epoch(start, 1, signal.SIGINT)
    assert code == 1
    assert "error: interrupted " in err and "; the state after epoch 1 is kept" in err
    assert "--resume" in err and "Traceback" not in err
    assert state_dir_for(out).is_dir()

    # a resumed run keeps its settings: a different batch size is refused
    clash = cli("train", "--out", out, "--resume", "--batch-size", "16")
    assert clash.returncode == 1
    assert "--batch-size" in clash.stderr and "interrupted run" in clash.stderr

    # resume, then SIGKILL in epoch 3: the state after epoch 2 survives
    code, err = interrupt_after_epoch(["train", "--out", str(out), "--resume"], 2, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert "resuming after epoch 1" in err and f"epoch 1/{EPOCHS}" not in err

    resumed = cli("train", "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 2" in resumed.stderr
    assert f"epoch 3/{EPOCHS}" in resumed.stderr and f"epoch 2/{EPOCHS}" not in resumed.stderr
    # the twice-interrupted run retraces the uninterrupted one exactly
    assert learning(history(out)) == learning(history(run_a))
    meta, meta_a = load_artifact(out).training, load_artifact(run_a).training
    assert meta["final_weights_sha256"] == meta_a["final_weights_sha256"]
    assert meta["best_epoch"] == meta_a["best_epoch"]
    assert not state_dir_for(out).exists()
    # its command is the first run's (the settings it kept), then each resume's (the refused
    # one trained nothing)
    assert meta["command"][1:] == start
    assert [c[1:] for c in meta["resume_commands"]] == [
        ["train", "--out", str(out), "--resume"]
    ] * 2


def test_early_stopping_keeps_the_best_epoch(
    bach_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Patience logic with scripted validation figures (the training itself is real)."""
    scripted = iter([(3.0, 0.1), (2.0, 0.2), (2.5, 0.3), (2.6, 0.4), (1.0, 0.5)])
    monkeypatch.setattr(Loop, "evaluate", lambda self, index: next(scripted))
    options = TrainOptions(
        bach_dir, tmp_path / "m", ModelConfig(**TINY_CONFIG), epochs=9, batch_size=64, patience=2
    )
    result = train(options, stream=sys.stderr)
    assert result.stopped_early
    assert [h["val_nll"] for h in result.history] == [3.0, 2.0, 2.5, 2.6]
    assert (result.best_epoch, result.best_val_nll) == (2, 2.0)
    meta = load_artifact(tmp_path / "m").training
    assert meta["best_epoch"] == 2 and meta["stopped_early"] and meta["best_val_top1"] == 0.2


def test_clear_errors(bach_dir: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="not empty"):
        cli_train(busy, False, {"data_dir": bach_dir})
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    with pytest.raises(TrainingError, match="afile: is a file, not a directory"):
        cli_train(afile, False, {"data_dir": bach_dir})
    with pytest.raises(TrainingError, match="no interrupted training"):
        cli_train(tmp_path / "new", True, {})
    with pytest.raises(TrainingError, match="--data is required"):
        cli_train(tmp_path / "new", False, {})
    with pytest.raises(TrainingError, match="batch-size"):
        TrainOptions(bach_dir, tmp_path / "x", batch_size=0)
    with pytest.raises(TrainingError, match="--lr-schedule must be one of constant, cosine"):
        TrainOptions(bach_dir, tmp_path / "x", lr_schedule="step")
    proc = cli("train", "--data", bach_dir, "--out", tmp_path / "m", "--config", "huge")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown model config 'huge'")


def test_broken_files_take_no_place_in_the_split(
    bach_dir: Path, tiny_config_file: Path, tmp_path: Path
) -> None:
    """4 real chorales and 3 broken files: the broken ones are skipped before the split, the
    saved split holds the 4 chorales only, and evaluate finds its test piece."""
    data = tmp_path / "data"
    data.mkdir()
    good = sorted(bach_dir.glob("*.mid"))[:4]
    for path in good:
        shutil.copy(path, data / path.name)
    write_not_midi(data / "notes.mid")
    write_truncated(data / "cut.mid", good[0], keep=0.3)
    (data / "empty.mid").write_bytes(b"")
    broken = {"notes.mid", "cut.mid", "empty.mid"}
    out = tmp_path / "model"
    args = ["--epochs", "1", "--batch-size", "16", "--seed", "0"]
    proc = cli("train", "--data", data, "--out", out, "--config", tiny_config_file, *args)
    assert proc.returncode == 0, proc.stderr
    assert all(f"{data / name}:" in proc.stderr for name in broken)
    meta = load_artifact(out).training
    split = Split.from_json(meta["split"])
    assert sorted(split.train + split.val + split.test) == sorted(p.name for p in good)
    assert (len(split.train), len(split.val), len(split.test)) == (2, 1, 1)
    assert set(meta["data"]["skipped_files"]) == broken
    order = [n for n in shuffled_names([p.name for p in data.iterdir()], 0) if n not in broken]
    assert split == cut_split(order, 0)

    ev = cli("evaluate", data, "--model", out, "--json", "--no-baselines")
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    assert report["split"] == "test" and report["pieces"] == 1 and report["skipped"] == []


@contextlib.contextmanager
def interrupted_in_epoch_2(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Ctrl-C at the end of epoch 2 (the second validation), inside the block only."""
    evaluate, calls = Loop.evaluate, []

    def interrupting(self: Loop, index):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(self, index)

    monkeypatch.setattr(Loop, "evaluate", interrupting)
    try:
        yield
    finally:
        monkeypatch.setattr(Loop, "evaluate", evaluate)


def test_random_key_augmentation_trains_resumes_and_retraces(
    bach_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--augment-mode random``: an epoch has the unaugmented number of windows, the mode is
    recorded, and a run interrupted after epoch 1 resumes (keeping the mode) to the same
    weights as an uninterrupted one."""

    def options(out: str, **kw: object) -> TrainOptions:
        kw = {"epochs": 2, "batch_size": 64, "seed": 3, "patience": 0, **kw}
        return TrainOptions(
            bach_dir, tmp_path / out, ModelConfig(**TINY_CONFIG), augment_transpose=True, **kw
        )

    whole = train(options("a"), stream=sys.stderr)
    meta = load_artifact(tmp_path / "a").training
    assert meta["options"]["augment_mode"] == "random"
    assert meta["data"]["augment_mode"] == "random"
    corpus = load_corpus(bach_dir, seed=3, split=Split.from_json(meta["split"]))
    plain = prepare(corpus, ModelConfig(**TINY_CONFIG))
    assert meta["data"]["train_windows"] == len(plain.train)
    assert [h["windows"] for h in whole.history] == [len(plain.train) // 64 * 64] * 2
    assert all(np.isfinite(h["train_nll"]) for h in whole.history)

    with (
        interrupted_in_epoch_2(monkeypatch),
        pytest.raises(TrainingError, match="state after epoch 1 is kept"),
    ):
        train(options("b"), stream=sys.stderr)
    with pytest.raises(TrainingError, match=r"--augment-mode expand differs .*\(--augment-mode ra"):
        train(options("b", augment_mode="expand"), resume=True, explicit={"augment_mode"})
    resumed = train(options("b", augment_mode="expand"), resume=True, explicit=set())
    assert load_artifact(tmp_path / "b").training["options"]["augment_mode"] == "random"
    assert learning(resumed.history) == learning(whole.history)
    assert resumed.weights_sha256 == whole.weights_sha256


def test_a_cosine_schedule_decays_to_zero_and_resumes_only_over_its_epochs(
    bach_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--lr-schedule cosine`` spans the run's epochs: half the rate after epoch 1 of 2,
    zero after the last step. A resumed run keeps the epochs the schedule was laid over,
    and retraces the uninterrupted run."""

    def options(out: str, epochs: int = 2) -> TrainOptions:
        return TrainOptions(
            bach_dir,
            tmp_path / out,
            ModelConfig(**TINY_CONFIG),
            epochs=epochs,
            batch_size=64,
            learning_rate=0.01,
            lr_schedule="cosine",
            seed=3,
            patience=0,
        )

    whole = train(options("a"), stream=sys.stderr)
    rates = [h["learning_rate"] for h in whole.history]
    assert rates[0] == pytest.approx(0.005, rel=1e-4) and rates[1] == pytest.approx(0.0, abs=1e-9)

    with (
        interrupted_in_epoch_2(monkeypatch),
        pytest.raises(TrainingError, match="state after epoch 1 is kept"),
    ):
        train(options("b"), stream=sys.stderr)
    with pytest.raises(TrainingError, match=r"--epochs 3 differs .* spans its epochs"):
        train(options("b", epochs=3), resume=True, explicit={"epochs"})
    resumed = train(options("b"), resume=True, explicit=set())
    assert learning(resumed.history) == learning(whole.history)
    assert resumed.weights_sha256 == whole.weights_sha256


def test_states_saved_before_the_augment_modes_resume_as_expand(tmp_path: Path) -> None:
    saved = TrainOptions(tmp_path, tmp_path / "m", augment_transpose=True).to_json()
    assert TrainOptions.from_json(saved).augment_mode == "random"
    del saved["augment_mode"]
    assert TrainOptions.from_json(saved).augment_mode == "expand"
    with pytest.raises(TrainingError, match="--augment-mode must be one of random, expand"):
        TrainOptions(tmp_path, tmp_path / "m", augment_mode="shuffle")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x93NUMPY" + bytes(range(200)), "model.npz: not an .npz archive"),
        (b"PK\x03\x04" + bytes(100), "model.npz: not an .npz archive"),
        (b"", "model.npz: empty file (0 bytes)"),
    ],
    ids=["npy-magic", "zip-magic", "empty"],
)
def test_a_damaged_training_state_is_unreadable_with_its_reason(
    tmp_path: Path, data: bytes, reason: str
) -> None:
    """Past state.json, a damaged model.npz names itself; no NumPy or zipfile error escapes."""
    state = tmp_path / "state"
    write_state(state, complete_state_info(tmp_path), [np.ones(2)], [])
    _, model_vars, opt_vars = read_state(state)
    assert [v.tolist() for v in model_vars] == [[1.0, 1.0]] and opt_vars == []
    (state / "model.npz").write_bytes(data)
    with pytest.raises(TrainingError) as exc:
        read_state(state)
    assert str(exc.value) == f"{state}: training state is unreadable ({reason})"


def complete_state_info(tmp_path: Path) -> dict[str, object]:
    """A ``state.json`` with every key a resumed run reads."""
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "epoch": 1,
        "history": [],
        "best_epoch": 0,
        "best_val_nll": 3.0,
        "bad_epochs": 0,
        "wall_s": 1.0,
        "started": "2026-01-01T00:00:00+0000",
        "options": TrainOptions(tmp_path, tmp_path / "m").to_json(),
        "split": {"train": ["a.mid"], "val": ["b.mid"], "test": ["c.mid"]},
        "vocab_hash": "0" * 16,
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"format": "musicgend-tr', "state.json: not valid JSON: "),
        ("{}", "state.json: no 'format'"),
        ("[1, 2]", "state.json: not a JSON object"),
        ("\xff", "state.json: not valid JSON: "),
        ("without-options", "state.json: no 'options'"),
        ("bad-options", "state.json: bad options: "),
        ("bad-command", "state.json: 'command' is str"),
    ],
    ids=["truncated", "empty-object", "list", "garbage", "no-options", "bad-options", "command"],
)
def test_a_damaged_state_json_is_unreadable_with_its_reason(
    tmp_path: Path, text: str, reason: str
) -> None:
    """``--resume`` with a damaged state.json: one TrainingError naming the file's fault."""
    out = tmp_path / "model"
    state = state_dir_for(out)
    info = complete_state_info(tmp_path)
    if text == "without-options":
        del info["options"]
        text = json.dumps(info)
    elif text == "bad-options":
        info["options"] = {"nonsense": 1}
        text = json.dumps(info)
    elif text == "bad-command":
        info["command"] = "musicgend train"
        text = json.dumps(info)
    write_state(state, info, [np.ones(2)], [])
    (state / "state.json").write_text(text, encoding="utf-8")
    with pytest.raises(TrainingError) as exc:
        cli_train(out, True, {})
    assert str(exc.value).startswith(f"{state}: training state is unreadable ({reason}")
    with pytest.raises(TrainingError, match="training state is unreadable"):
        read_state(state)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"batch_size": 16}, "--batch-size 16 (--batch-size 64)"),
        ({"learning_rate": 0.01}, "--learning-rate 0.01 (--learning-rate 0.001)"),
        ({"lr_schedule": "cosine"}, "--lr-schedule cosine (--lr-schedule constant)"),
        ({"jit_compile": True}, "--xla (--no-xla)"),
        ({"augment_transpose": True}, "--augment-transpose (--no-augment-transpose)"),
        ({"max_pieces": 5}, "--max-pieces 5 (without --max-pieces)"),
        ({"config": "pitch"}, "--config pitch (--config seed)"),
        ({"data_dir": "/elsewhere"}, "--data /elsewhere (--data {tmp_path})"),
        ({"base_model": "/base"}, "--from /base (without --from)"),
        ({"distributed": True}, "--distributed (without --distributed)"),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else None,
)
def test_a_resume_refusal_names_the_option_as_it_is_typed(
    tmp_path: Path, given: dict[str, object], message: str
) -> None:
    """``message``: what was given (what the interrupted run used)."""
    out = tmp_path / "model"
    write_state(state_dir_for(out), complete_state_info(tmp_path), [np.ones(2)], [])
    with pytest.raises(TrainingError) as exc:
        cli_train(out, True, given)
    now, was = message.format(tmp_path=tmp_path).split(" (")
    assert str(exc.value) == (
        f"{now} differs from the interrupted run ({was}; a resumed run keeps its settings"
    )


def test_a_truncated_state_json_is_one_error_line_on_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "model"
    write_state(state_dir_for(out), complete_state_info(tmp_path), [np.ones(2)], [])
    (state_dir_for(out) / "state.json").write_text('{"format": "musi', encoding="utf-8")
    proc = cli("train", "--out", out, "--resume")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "training state is unreadable (state.json: not valid JSON" in proc.stderr


def test_interruptions_say_what_is_kept_and_the_saved_model_has_the_printed_digest(
    bach_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in epoch 1 keeps nothing (and says so; the same run starts again); the digest
    printed and stored is that of the saved (best) weights, not the last epoch's; a resume
    whose best model directory is gone is refused before any training."""
    out = tmp_path / "m"

    def options(**kw: object) -> TrainOptions:
        kw = {"epochs": 3, "batch_size": 64, "seed": 1, "patience": 0, **kw}
        return TrainOptions(bach_dir, out, ModelConfig(**TINY_CONFIG), **kw)  # type: ignore[arg-type]

    def interrupted(self: Loop, index):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(Loop, "evaluate", interrupted)
    with pytest.raises(TrainingError) as exc:
        train(options(), stream=sys.stderr)
    assert str(exc.value) == (
        "interrupted in epoch 1, before the first epoch completed; nothing is kept: "
        "start the training again"
    )
    assert not out.exists() and not state_dir_for(out).exists()

    scripted = iter([(3.0, 0.1), (2.0, 0.2), (2.5, 0.3)])
    monkeypatch.setattr(Loop, "evaluate", lambda self, index: next(scripted))
    result = train(options(), stream=sys.stderr)
    assert result.best_epoch == 2 and len(result.history) == 3
    art = load_artifact(out)
    saved = weights_digest([np.asarray(w.numpy()) for w in art.keras_model().weights])
    assert result.weights_sha256 == saved == art.training["final_weights_sha256"]

    # interrupted in epoch 2 of a new run: the best model so far (epoch 1) goes missing
    shutil.rmtree(out)
    scripted = iter([(3.0, 0.1)])

    def once_then_interrupt(self: Loop, index):  # type: ignore[no-untyped-def]
        for figures in scripted:
            return figures
        raise KeyboardInterrupt

    monkeypatch.setattr(Loop, "evaluate", once_then_interrupt)
    with pytest.raises(TrainingError, match="the state after epoch 1 is kept"):
        train(options(), stream=sys.stderr)
    shutil.rmtree(out)
    monkeypatch.setattr(Loop, "evaluate", lambda self, index: pytest.fail("trained"))
    with pytest.raises(TrainingError) as exc:
        train(options(), resume=True, explicit=set())
    assert str(exc.value).startswith(
        f"{out}: the model of the best epoch so far (epoch 1) is missing or damaged "
        "(no such model directory)"
    )
    assert state_dir_for(out).is_dir()


@pytest.mark.parametrize(
    ("tf_config", "message"),
    [
        ({"cluster": {}}, "TF_CONFIG: 'cluster' must be an object with a 'worker' list"),
        ("x", "TF_CONFIG must be a JSON object with 'cluster' and 'task'"),
        (
            {"task": {"type": "worker", "index": 0}},
            "TF_CONFIG: 'cluster' must be an object with a 'worker' list",
        ),
        (
            {"cluster": {"worker": "nope"}, "task": {"type": "worker", "index": 0}},
            "TF_CONFIG: cluster.worker must be a non-empty list of host:port",
        ),
        (
            {"cluster": {"worker": ["nope"]}, "task": {"type": "worker", "index": 0}},
            "TF_CONFIG: worker 'nope' is not host:port",
        ),
        (
            {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}},
            "TF_CONFIG: task.index must be 0..0 (one of the 1 workers), got 1",
        ),
        (
            {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}},
            "TF_CONFIG: 'task' must be",
        ),
    ],
    ids=["empty-cluster", "string", "no-cluster", "workers-string", "no-port", "index", "ps"],
)
def test_a_bad_tf_config_is_refused_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tf_config: object, message: str
) -> None:
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    options = TrainOptions(tmp_path, tmp_path / "m", distributed=True)
    with pytest.raises(TrainingError) as exc:
        train(options, stream=sys.stderr)
    assert str(exc.value).startswith(message)
    assert not (tmp_path / "m").exists()


def test_a_resumed_distributed_run_passes_its_checked_tf_config_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumed without --distributed, a distributed run is distributed again: TF_CONFIG is
    checked up front and what was read goes to make_strategy; worker 1, not the chief, doesn't
    look for the chief's model directory."""
    workers = ["127.0.0.1:1", "127.0.0.1:2"]
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    out = tmp_path / "model"
    info = complete_state_info(tmp_path)
    info["options"]["distributed"], info["best_epoch"] = True, 1  # type: ignore[index]
    write_state(state_dir_for(out), info, [np.ones(2)], [])
    strategies: list[object] = []

    def make_strategy(cluster: Cluster | None, stream: object = None) -> None:
        strategies.append(cluster)
        raise TrainingError("no strategy in this test")

    monkeypatch.setattr("musicgend.training.train.make_strategy", make_strategy)
    with pytest.raises(TrainingError, match="no strategy in this test"):
        cli_train(out, True, {})
    assert strategies == [Cluster(tuple(workers), 1)]


def test_one_training_run_at_a_time_per_out_dir(tmp_path):
    from musicgend.training.train import out_dir_lock

    out = tmp_path / "new" / "model"
    with out_dir_lock(out):
        lock = tmp_path / "new" / ".model.lock"
        assert lock.read_text().strip() == str(os.getpid())
        with (
            pytest.raises(TrainingError, match=r"another training writes there now \(process"),
            out_dir_lock(out),
        ):
            pass
        with out_dir_lock(tmp_path / "new" / "other"):  # another --out is free
            pass
    assert not lock.exists()
    with out_dir_lock(out):  # free again once the first run ended
        pass
