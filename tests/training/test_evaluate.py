"""The scoring rule, the choice of files, and the report, with fake predictors (no TF)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from musicgend.core.spelling import PitchPrior
from musicgend.core.tokens import token_from_pitches
from musicgend.core.vocab import SILENCE_ID, UNK_ID, Vocab
from musicgend.errors import CorpusError, ModelError
from musicgend.io.midifile import Piece
from musicgend.training.evaluate import (
    EncodedPiece,
    Plan,
    encode_piece,
    evaluate,
    fit_baselines,
    plan,
    render_report,
    score_baselines,
    score_model,
)

C, F, G = frozenset({60, 64, 67}), frozenset({65, 69, 72}), frozenset({67, 71, 74})
ODD = frozenset({61, 66})  # a chord the vocabulary doesn't know


def make_vocab() -> Vocab:
    counts = {"e": 5, token_from_pitches(C): 9, token_from_pitches(F): 4, token_from_pitches(G): 3}
    return Vocab.from_counts(counts)


def make_prior() -> PitchPrior:
    probs = np.full(128, 0.01)
    probs[[60, 64, 67, 65, 69, 72, 71, 74]] = 0.3
    return PitchPrior(probs)


def encoded(frames: list[frozenset[int]], vocab: Vocab, prior: PitchPrior) -> EncodedPiece:
    return encode_piece(Piece(Path("x.mid"), tuple(frames)), vocab, prior)


class FixedPredictor:
    """The same distribution for every window; records the windows it saw."""

    pitch_input = False  # it reads token ids

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = np.asarray(probs, dtype=np.float32)
        self.seen: list[np.ndarray] = []

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        self.seen.append(x.copy())
        return np.tile(self.probs, (len(x), 1))


class MixturePredictor:
    """λ·[id = last window id] + (1 − λ)·base(window): what the baselines are, as a model."""

    pitch_input = False  # it reads token ids

    def __init__(self, lam: float, vocab_size: int, kn=None) -> None:
        self.lam, self.v, self.kn = lam, vocab_size, kn

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((len(x), self.v))
        for i, row in enumerate(x):
            base = (
                self.kn.distribution(row[-(self.kn.order - 1) :].tolist())
                if self.kn is not None
                else np.full(self.v, 1.0 / self.v)
            )
            out[i] = (1 - self.lam) * base
            out[i, row[-1]] += self.lam
        return out


def test_encode_piece_maps_unknown_chords_and_their_spelling():
    vocab, prior = make_vocab(), make_prior()
    piece = encoded([C, ODD, frozenset(), G], vocab, prior)
    np.testing.assert_array_equal(
        piece.ids, [vocab.id(token_from_pitches(C)), UNK_ID, SILENCE_ID, vocab.id("67,71,74")]
    )
    np.testing.assert_array_equal(piece.known, [True, False, True, True])
    assert piece.log_spell[1] == pytest.approx(prior.log_p(ODD))
    assert piece.log_spell[[0, 2, 3]].tolist() == [0.0, 0.0, 0.0]


def test_score_model_applies_the_rule_and_top1():
    """Fixed p = [.1 (<unk>), .2 (e), .4 (C), .2 (F), .1 (G)] on C, ODD, C, F.

    NLL = −(ln .4 + ln .1 + ln p_spell(ODD) + ln .4 + ln .2) / 4; the argmax is C, right at
    frames 0 and 2 → top-1 1/2.
    """
    vocab, prior = make_vocab(), make_prior()
    assert vocab.tokens[2] == token_from_pitches(C)
    probs = np.array([0.1, 0.2, 0.4, 0.2, 0.1])
    pred = FixedPredictor(probs)
    piece = encoded([C, ODD, C, F], vocab, prior)
    score = score_model(pred, [piece], len(vocab), window_frames=3, batch_size=3)
    expected = -(math.log(0.4) * 2 + math.log(0.1) + prior.log_p(ODD) + math.log(0.2)) / 4
    assert score.nll_nats_per_frame == pytest.approx(expected, rel=1e-6)
    assert score.top1 == 0.5
    assert score.frames == 4
    assert score.extra["nll_known"] == pytest.approx(-(2 * math.log(0.4) + math.log(0.2)) / 3)
    assert score.extra["nll_unknown"] == pytest.approx(-(math.log(0.1) + prior.log_p(ODD)))
    # Context: the 3 previous ids, left-padded with silence; unknown → <unk>.
    windows = np.concatenate(pred.seen)
    c = vocab.id(token_from_pitches(C))
    np.testing.assert_array_equal(windows, [[1, 1, 1], [1, 1, c], [1, c, 0], [c, 0, c]])
    # An argmax on <unk> is never right, even when the chord is unknown.
    unk_pred = FixedPredictor(np.array([0.6, 0.1, 0.1, 0.1, 0.1]))
    odd = encoded([ODD, ODD], vocab, prior)
    assert score_model(unk_pred, [odd], len(vocab), 3).top1 == 0.0


def test_score_model_batches_across_pieces_and_checks_shapes():
    vocab, prior = make_vocab(), make_prior()
    rng = np.random.default_rng(3)
    chords = [C, F, G, ODD, frozenset()]
    pieces = [
        encoded([chords[i] for i in rng.integers(0, 5, size=n)], vocab, prior) for n in (7, 1, 12)
    ]
    kn_like = MixturePredictor(0.4, len(vocab))
    one = score_model(kn_like, pieces, len(vocab), window_frames=4, batch_size=1)
    big = score_model(kn_like, pieces, len(vocab), window_frames=4, batch_size=1000)
    odd = score_model(kn_like, pieces, len(vocab), window_frames=4, batch_size=5)
    assert one.frames == big.frames == odd.frames == 20
    assert one.nll_nats_per_frame == pytest.approx(big.nll_nats_per_frame)
    assert odd.nll_nats_per_frame == pytest.approx(big.nll_nats_per_frame)
    assert one.top1 == big.top1 == odd.top1
    with pytest.raises(ModelError, match="shape"):
        score_model(FixedPredictor(np.ones(3) / 3), pieces, len(vocab), 4)


def test_baselines_score_like_the_same_mixture_run_as_a_model():
    """The baselines and a model that *is* the same mixture get identical scores."""
    vocab, prior = make_vocab(), make_prior()
    rng = np.random.default_rng(5)
    chords = [C, C, C, F, G, ODD, frozenset()]

    def piece(n: int) -> EncodedPiece:
        return encoded([chords[i] for i in rng.integers(0, len(chords), size=n)], vocab, prior)

    train = [piece(40) for _ in range(6)]
    val = [piece(30) for _ in range(2)]
    test = [piece(25) for _ in range(3)]
    fitted = fit_baselines(train, val, len(vocab))
    assert 0.0 <= fitted.lam_repeat <= 1.0 and 0.0 <= fitted.lam_kn <= 1.0
    scores = score_baselines(fitted, test)
    assert set(scores) == {"repeat", "kn5_repeat"}
    rep = score_model(MixturePredictor(fitted.lam_repeat, len(vocab)), test, len(vocab), 50)
    kn = score_model(MixturePredictor(fitted.lam_kn, len(vocab), fitted.kn), test, len(vocab), 50)
    for ours, theirs in ((scores["repeat"], rep), (scores["kn5_repeat"], kn)):
        assert ours.frames == theirs.frames == 75
        assert ours.nll_nats_per_frame == pytest.approx(theirs.nll_nats_per_frame, rel=1e-5)
        assert ours.top1 == pytest.approx(theirs.top1)
    assert scores["kn5_repeat"].to_json()["lambda"] == fitted.lam_kn
    with pytest.raises(CorpusError, match="validation"):
        fit_baselines(train, [], len(vocab))


# -- choosing the files ---------------------------------------------------------------------------


def fake_artifact(tmp_path: Path, data_dir: Path | None, split: dict | None):
    training = {}
    if data_dir is not None:
        training["data_dir"] = str(data_dir)
    if split is not None:
        training["split"] = split
    return SimpleNamespace(
        path=tmp_path / "model", metadata={"training": training}, training=training
    )


def touch(root: Path, *names: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / n).write_bytes(b"MThd")


def test_plan_defaults_to_the_test_split_of_the_training_data(tmp_path):
    data = tmp_path / "data"
    touch(data, "a.mid", "b.mid", "c.mid", "d.mid", ".hidden.mid")
    split = {"train": ["a.mid", "b.mid"], "val": ["c.mid"], "test": ["d.mid"]}
    art = fake_artifact(tmp_path, data, split)
    p = plan(art, data)
    assert p.split == "test" and p.files == [data / "d.mid"]
    assert p.train_files == [data / "a.mid", data / "b.mid"] and p.val_files == [data / "c.mid"]
    assert p.baseline_problem is None
    assert plan(art, data, "val").files == [data / "c.mid"]
    assert len(plan(art, data, "all").files) == 4  # hidden files ignored
    other = tmp_path / "other"
    touch(other, "x.mid")
    p = plan(art, other)
    assert p.split == "all" and p.files == [other / "x.mid"]
    with pytest.raises(CorpusError, match="unknown split"):
        plan(art, data, "dev")


def test_plan_names_what_the_baselines_miss(tmp_path):
    other = tmp_path / "other"
    touch(other, "x.mid")
    split = {"train": ["a.mid"], "val": ["c.mid"], "test": ["d.mid"]}
    gone = fake_artifact(tmp_path, tmp_path / "gone", split)
    problem = plan(gone, other).baseline_problem
    assert problem is not None and "gone" in problem and "--train-data" in problem
    assert plan(gone, other, baselines=False).baseline_problem is None
    # --train-data points at a copy of the data.
    copy = tmp_path / "copy"
    touch(copy, "a.mid", "c.mid")
    p = plan(gone, other, train_data=copy)
    assert p.baseline_problem is None and p.train_files == [copy / "a.mid"]
    assert p.split == "all"
    touch(copy, "d.mid")
    assert plan(gone, copy, train_data=copy).split == "test"  # the moved training data
    partial = tmp_path / "partial"
    touch(partial, "a.mid")
    problem = plan(gone, other, train_data=partial).baseline_problem
    assert problem is not None
    assert f"the validation-split file is missing under {partial} (first: {partial / 'c.mid'})" in (
        problem
    )
    split3 = {"train": ["a.mid", "b.mid", "e.mid"], "val": ["c.mid"], "test": ["d.mid"]}
    problem = plan(fake_artifact(tmp_path, partial, split3), other).baseline_problem or ""
    assert "2 of the 3 training-split files are missing" in problem
    touch(partial, "b.mid")
    problem = plan(fake_artifact(tmp_path, partial, split3), other).baseline_problem or ""
    assert "1 of the 3 training-split files is missing" in problem
    bare = tmp_path / "bare"
    touch(bare, "c.mid")
    problem = plan(fake_artifact(tmp_path, bare, split3), other).baseline_problem or ""
    assert "all 3 training-split files are missing" in problem
    nosplit = fake_artifact(tmp_path, copy, None)
    assert "no saved train/val split" in (plan(nosplit, other).baseline_problem or "")
    with pytest.raises(CorpusError, match="no saved train/val/test split"):
        plan(nosplit, other, "test")
    with pytest.raises(CorpusError, match="missing"):
        plan(gone, other, "test")


# -- the whole evaluation on real (tiny) MIDI files ----------------------------------------------


def write_midi(path: Path, chords: list[tuple[frozenset[int], int]], fs: int = 5) -> None:
    """Chords held for the given numbers of frames, each starting just after a frame edge."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)
    frame = 0
    for chord, length in chords:
        for pitch in chord:
            inst.notes.append(
                pretty_midi.Note(80, pitch, frame / fs + 0.01, (frame + length) / fs + 0.01)
            )
        frame += length
    pm.instruments.append(inst)
    pm.write(str(path))


def test_evaluate_reports_every_readable_frame_and_skips_bad_files(tmp_path):
    vocab, prior = make_vocab(), make_prior()
    write_midi(tmp_path / "a.mid", [(C, 3), (ODD, 2), (F, 1)])
    write_midi(tmp_path / "b.mid", [(G, 4), (C, 2)])
    (tmp_path / "bad.mid").write_bytes(b"MThd\x00\x00")
    (tmp_path / "text.mid").write_text("hello")
    train = tmp_path / "train.mid"
    write_midi(train, [(C, 2), (F, 2), (G, 2), (C, 4)])
    skipped: list[tuple[Path, str]] = []
    files = [tmp_path / n for n in ("a.mid", "bad.mid", "b.mid", "text.mid")]
    the_plan = Plan(files, "all", [train], [train])
    pred = FixedPredictor(np.array([0.1, 0.2, 0.4, 0.2, 0.1]))
    report = evaluate(
        "m", pred, vocab, prior, 50, 5, False, the_plan, on_skip=lambda p, r: skipped.append((p, r))
    )
    assert [p.name for p, _ in skipped] == ["bad.mid", "text.mid"]
    assert "not a MIDI file" in skipped[1][1]
    data = report.to_json()
    assert data["pieces"] == 2
    assert data["frames"] == 12  # 3 + 2 + 1 and 4 + 2 frames
    assert data["oov_rate"] == pytest.approx(2 / 12)
    assert set(data["baselines"]) == {"repeat", "kn5_repeat"}
    for b in data["baselines"].values():
        assert b["frames"] == data["frames"]
        assert set(b) >= {"nll_nats_per_frame", "top1", "lambda"}
    assert data["nll_ratio_vs_kn5_repeat"] == pytest.approx(
        data["nll_nats_per_frame"] / data["baselines"]["kn5_repeat"]["nll_nats_per_frame"]
    )
    assert [s["path"] for s in data["skipped"]] == [str(files[1]), str(files[3])]
    for rich in (False, True):
        out = io.StringIO()
        render_report(report, out, rich=rich)
        text = out.getvalue()
        assert "kn5_repeat" in text and "2 pieces, 12 frames, 16.7 % unknown chords" in text
    # The n-gram fit on the training piece in every key: a third baseline on the same frames.
    more = evaluate("m", pred, vocab, prior, 50, 5, False, the_plan, transposed_baseline=True)
    shifted = more.baselines["kn5_repeat_transposed"]
    assert shifted.frames == 12
    assert more.baseline_info["transposed_train_frames"] == 12 * 10  # 12 keys × 10 frames
    assert more.baselines["kn5_repeat"] == report.baselines["kn5_repeat"]
    nothing = Plan([tmp_path / "bad.mid"], "all", None, None)
    with pytest.raises(CorpusError) as exc:
        evaluate("m", pred, vocab, prior, 50, 5, False, nothing)
    assert (
        str(exc.value) == f"the only file can't be read ({tmp_path / 'bad.mid'}: {skipped[0][1]})"
    )
    nothing = Plan([tmp_path / "bad.mid", tmp_path / "text.mid"], "all", None, None)
    with pytest.raises(CorpusError, match=r"^none of the 2 files could be read \(first: .*bad.mid"):
        evaluate("m", pred, vocab, prior, 50, 5, False, nothing)
    one = Plan([tmp_path / "b.mid"], "all", None, None)
    out = io.StringIO()
    render_report(evaluate("m", pred, vocab, prior, 50, 5, False, one), out)
    assert "1 piece, 6 frames, 0.0 % unknown chords, 0 files skipped" in out.getvalue()


def test_pieces_named_like_the_models_training_pieces_are_counted_and_warned_about(tmp_path):
    data = tmp_path / "data"
    touch(data, "a.mid", "c.mid", "d.mid")
    split = {"train": ["a.mid", "sub/b.mid"], "val": ["c.mid"], "test": ["d.mid"]}
    art = fake_artifact(tmp_path, data, split)
    assert plan(art, data).seen == {"a.mid": "train", "b.mid": "train", "c.mid": "val"}
    assert plan(art, data, baselines=False).seen == plan(art, data).seen
    assert plan(fake_artifact(tmp_path, data, None), data, "all", baselines=False).seen == {}

    vocab, prior = make_vocab(), make_prior()
    pred = FixedPredictor(np.array([0.1, 0.2, 0.4, 0.2, 0.1]))
    other = tmp_path / "other"
    other.mkdir()
    for name in ("a.mid", "b.mid", "c.mid", "x.mid"):
        write_midi(other / name, [(C, 2), (F, 2)])
    warnings: list[str] = []

    def run(names: list[str], split_name: str = "all") -> dict:
        the_plan = Plan(
            [other / n for n in names], split_name, None, None, seen=plan(art, data).seen
        )
        report = evaluate(
            "m", pred, vocab, prior, 50, 5, False, the_plan, on_warning=warnings.append
        )
        return report.to_json()

    out = run(["a.mid", "b.mid", "c.mid", "x.mid"])
    assert (out["in_training_split"], out["in_validation_split"]) == (2, 1)
    assert warnings == [
        f"3 of the 4 scored pieces share a file name with pieces the model was trained on (2) "
        f"or validated on (1), e.g. {other / 'a.mid'}: the model was fit or tuned on them, so "
        "these scores are optimistic"
    ]
    warnings.clear()
    out = run(["x.mid"])
    assert (out["in_training_split"], out["in_validation_split"]) == (0, 0) and warnings == []
    run(["c.mid"])
    assert warnings[0].startswith("the scored piece shares a file name with pieces the model")
    assert "trained on (0) or validated on (1)" in warnings[0]
    warnings.clear()
    run(["a.mid", "c.mid"])
    assert warnings[0].startswith("all 2 scored pieces share ")
    warnings.clear()
    # asking for the training (or validation) split itself is no surprise: counted, not warned
    assert run(["a.mid"], "train")["in_training_split"] == 1 and warnings == []


def test_top1_is_split_between_holds_and_changes():
    """Argmax C on C, C, F, F: right at frame 0 (a change from silence) and frame 1 (a hold);
    frame 2 changes to F (wrong), frame 3 holds F (wrong)."""
    vocab, prior = make_vocab(), make_prior()
    pred = FixedPredictor(np.array([0.1, 0.2, 0.4, 0.2, 0.1]))
    score = score_model(pred, [encoded([C, C, F, F], vocab, prior)], len(vocab), 3)
    assert score.top1 == 0.5
    assert score.extra["change_share"] == 0.5
    assert score.extra["top1_holds"] == 0.5
    assert score.extra["top1_changes"] == 0.5
    assert "top1_timing_oracle" not in score.extra  # only a per-pitch model has a gate
    only_changes = score_model(pred, [encoded([C, F], vocab, prior)], len(vocab), 3)
    assert only_changes.extra["top1_holds"] is None
    assert only_changes.extra["top1_changes"] == 0.5


def test_head_timing_splits_changes_into_when_and_what():
    from musicgend.training.evaluate import _head_timing

    out = _head_timing(
        change_right=np.array([True, False, True, False]),
        p_hold=np.array([0.9, 0.2, 0.4, 0.8]),
        changes=np.array([False, True, True, True]),
    )
    assert out["changes_hold_unlikely"] == pytest.approx(2 / 3)  # 0.2 and 0.4
    assert out["top1_changes_given_timing"] == pytest.approx(1 / 3)  # frame 2
    assert out["top1_timing_oracle"] == pytest.approx(0.25 + 0.75 / 3)
