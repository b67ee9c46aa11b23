"""Corpus split, vocabulary from the training split, windows, augmentation, tf.data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from musicgend.core.augment import TRANSPOSITIONS
from musicgend.core.tokens import token_from_pitches
from musicgend.core.vocab import SILENCE_ID, UNK, UNK_ID, Vocab
from musicgend.core.window import training_windows
from musicgend.errors import CorpusError, TrainingError
from musicgend.model.config import ModelConfig
from musicgend.training.dataset import (
    RandomTranspose,
    Split,
    WindowIndex,
    cut_split,
    load_corpus,
    prepare,
    shuffled_names,
    split_names,
    window_dataset,
)
from tests.conftest import write_chords, write_not_midi, write_truncated

REPO = Path(__file__).resolve().parents[2]

NAMES = [f"piece{i:02d}.mid" for i in range(20)]


def test_split_is_80_10_10_disjoint_and_complete() -> None:
    split = split_names(NAMES, seed=3)
    assert (len(split.train), len(split.val), len(split.test)) == (16, 2, 2)
    parts = [set(split.train), set(split.val), set(split.test)]
    assert set().union(*parts) == set(NAMES)
    assert sum(len(p) for p in parts) == len(NAMES)
    assert list(split.train) == sorted(split.train)


def test_split_depends_on_seed_not_on_listing_order() -> None:
    a = split_names(NAMES, seed=3)
    assert split_names(list(reversed(NAMES)), seed=3) == a
    assert split_names(NAMES, seed=4) != a
    assert Split.from_json(a.to_json()) == a


def test_split_max_pieces_and_minimum() -> None:
    small = split_names(NAMES, seed=3, max_pieces=5)
    assert (len(small.train), len(small.val), len(small.test)) == (3, 1, 1)
    assert set(small.val + small.test + small.train) <= set(NAMES)
    with pytest.raises(CorpusError, match="at least 3"):
        split_names(NAMES[:2], seed=0)
    with pytest.raises(CorpusError, match="max-pieces"):
        split_names(NAMES, seed=0, max_pieces=2)


def test_window_index_matches_training_windows() -> None:
    rng = np.random.default_rng(0)
    pieces = [rng.integers(0, 30, size=n).tolist() for n in (7, 1, 60, 13)]
    index = WindowIndex.from_sequences(pieces, window_frames=5)
    x, y = index.windows()
    expected = [training_windows(p, size=5) for p in pieces]
    np.testing.assert_array_equal(x, np.concatenate([e[0] for e in expected]))
    np.testing.assert_array_equal(y, np.concatenate([e[1] for e in expected]))
    assert len(index) == 81
    order = index.epoch_order(seed=1, epoch=2)
    np.testing.assert_array_equal(order, index.epoch_order(seed=1, epoch=2))
    assert not np.array_equal(order, index.epoch_order(seed=1, epoch=3))
    assert sorted(order.tolist()) == index.positions.tolist()


@pytest.mark.tf
def test_window_dataset_yields_the_windows_in_order() -> None:
    rng = np.random.default_rng(1)
    index = WindowIndex.from_sequences(
        [rng.integers(0, 9, size=n).tolist() for n in (20, 9)], window_frames=4
    )
    order = index.epoch_order(seed=0, epoch=1)
    batches = list(window_dataset(index, order, 8, drop_remainder=False))
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    ex, ey = index.windows(order)
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)
    assert [len(b[1]) for b in window_dataset(index, order, 8, drop_remainder=True)] == [8] * 3


def _corpus(root: Path) -> Path:
    """Ten small pieces; chord {61} only in one file, silence and C major everywhere."""
    for i in range(10):
        chords = [({60, 64, 67}, 2 + i % 3), (set(), 1), ({62, 65}, 2), ({60, 64, 67}, 1)]
        if i == 9:
            chords.append(({61}, 3))
        write_chords(root / f"p{i}.mid", chords)
    return root


def test_vocab_and_prior_come_from_the_training_split_only(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "c")
    corpus = load_corpus(root, seed=0)
    held_out = set(corpus.split.val + corpus.split.test)
    data = prepare(corpus, ModelConfig(min_count=1, window_frames=10))
    assert data.vocab.tokens[:2] == (UNK, "e")
    assert ("61" in data.vocab) == ("p9.mid" not in held_out)
    expected = 1e-4 if "p9.mid" in held_out else 3 / data.train_frames
    assert data.pitch_prior.probs[61] == pytest.approx(expected)
    assert len(data.train) == data.train_frames == sum(len(p.frames) for p in corpus.train)
    assert len(data.val) == sum(len(p.frames) for p in corpus.val)
    # the first window of every piece is all silence (the seed's left padding)
    x, _ = data.train.windows(data.train.positions[:1])
    assert (x == SILENCE_ID).all()


def test_min_count_maps_rare_training_tokens_to_unk(tmp_path: Path) -> None:
    root = tmp_path / "c"
    for i in range(5):
        write_chords(root / f"p{i}.mid", [({60}, 3), ({70 + i}, 1)])
    corpus = load_corpus(root, seed=0)
    data = prepare(corpus, ModelConfig(min_count=2, window_frames=4))
    assert set(data.vocab.tokens) == {UNK, "e", "60"}
    _, y = data.train.windows()
    assert (y == UNK_ID).sum() == len(corpus.train)


@pytest.mark.parametrize("mode", ["expand", "random"])
def test_augmentation_transposes_the_training_split_only(tmp_path: Path, mode: str) -> None:
    root = _corpus(tmp_path / "c")
    corpus = load_corpus(root, seed=0)
    config = ModelConfig(min_count=1, window_frames=10)
    plain = prepare(corpus, config)
    aug = prepare(corpus, config, augment_transpose=True, augment_mode=mode)
    assert aug.summary()["augment_mode"] == mode and plain.summary()["augment_mode"] is None
    if mode == "expand":
        assert len(aug.train) == 12 * len(plain.train) and aug.transpose is None
    else:  # same windows per epoch as unaugmented, same vocabulary as expand
        assert len(aug.train) == len(plain.train) and aug.transpose is not None
        np.testing.assert_array_equal(aug.train.positions, plain.train.positions)
        expand = prepare(corpus, config, augment_transpose=True, augment_mode="expand")
        assert aug.vocab.hash == expand.vocab.hash
    assert len(aug.val) == len(plain.val)
    for shift in range(-5, 7):
        assert token_from_pitches({60 + shift, 64 + shift, 67 + shift}) in aug.vocab
    # validation windows hold the original chords
    ids = {aug.vocab.token(i) for i in aug.val.windows()[1].tolist()}
    assert ids <= {"e", "60,64,67", "62,65", "61", UNK}


def test_unreadable_files_are_skipped_and_named(tmp_path: Path, capsys) -> None:
    root = _corpus(tmp_path / "c")
    write_not_midi(root / "zz_bad.mid")
    corpus = load_corpus(root, seed=0)
    assert "not a MIDI file" in corpus.skipped["zz_bad.mid"]
    assert "zz_bad.mid" in capsys.readouterr().err


def test_the_split_is_made_over_the_readable_files_only(tmp_path: Path) -> None:
    good = _corpus(tmp_path / "good")
    names = sorted(p.name for p in good.iterdir())
    mixed = _corpus(tmp_path / "mixed")
    write_not_midi(mixed / "a_text.mid")
    write_truncated(mixed / "p3x.mid", mixed / "p3.mid", keep=0.6)
    write_chords(mixed / "silent.mid", [(set(), 4)])  # a MIDI file without notes
    bad = {"a_text.mid", "p3x.mid", "silent.mid"}
    for seed in range(4):
        corpus = load_corpus(mixed, seed=seed)
        assert set(corpus.skipped) == bad
        parts = corpus.split.train + corpus.split.val + corpus.split.test
        assert sorted(parts) == names  # every readable piece has a place, no broken one
        assert (len(corpus.split.train), len(corpus.split.val), len(corpus.split.test)) == (8, 1, 1)
        # the broken files' names take no place: the split of the readable pieces alone
        order = [n for n in shuffled_names([*names, *bad], seed) if n not in bad]
        assert corpus.split == cut_split(order, seed)
        assert [p.path.name for p in corpus.train] == list(corpus.split.train)
        assert [p.path.name for p in corpus.val] == list(corpus.split.val)
    small = load_corpus(mixed, seed=1, max_pieces=4)
    assert sum(map(len, (small.split.train, small.split.val, small.split.test))) == 4
    assert not set(small.split.train + small.split.val + small.split.test) & bad


def test_with_every_file_readable_the_split_is_that_of_the_names(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "c")
    names = [p.name for p in root.iterdir()]
    for seed in range(3):
        assert load_corpus(root, seed=seed).split == split_names(names, seed)
        assert load_corpus(root, seed=seed, max_pieces=5).split == split_names(names, seed, 5)


def test_the_bundled_models_split_is_still_computed_from_its_names() -> None:
    """The bundled model was trained on 410 readable chorales with seed 0: its saved split
    is :func:`split_names` of them (and so what ``load_corpus`` computes for that corpus)."""
    meta = json.loads((REPO / "models" / "default" / "metadata.json").read_text())
    saved = meta["training"]["split"]
    assert meta["training"]["data"]["skipped_files"] == {}
    names = saved["train"] + saved["val"] + saved["test"]
    assert len(names) == len(set(names)) == 410
    assert split_names(names, seed=saved["seed"]).to_json() == saved


def test_too_few_readable_files_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "c"
    write_chords(root / "a.mid", [({60}, 3)])
    write_chords(root / "b.mid", [({62}, 3)])
    write_not_midi(root / "c.mid")
    with pytest.raises(CorpusError, match=r"at least 3 readable MIDI files .*found 2 \(1 unr"):
        load_corpus(root, seed=0)


def test_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not a directory"):
        load_corpus(tmp_path / "missing", seed=0)
    root = _corpus(tmp_path / "c")
    split = split_names([*NAMES[:3]], seed=0)
    with pytest.raises(CorpusError, match="saved split are gone"):
        load_corpus(root, seed=0, split=split)


def _hand_index() -> tuple[Vocab, WindowIndex]:
    """Two pieces over a hand-made vocabulary; the second reaches up to pitch 125."""
    vocab = Vocab.from_counts({t: 1 for t in ("60", "62", "64", "125")})
    ids = vocab.id
    first = [ids("60"), ids("62"), SILENCE_ID, ids("64")] * 5
    second = [ids("60"), ids("125"), ids("62"), ids("60"), ids("60"), ids("64")]
    return vocab, WindowIndex.from_sequences([first, second], window_frames=3)


def test_random_transpose_shifts_are_seeded_per_epoch_and_keep_pitches_in_range() -> None:
    vocab, index = _hand_index()
    aug = RandomTranspose.build(vocab, index)
    assert len(aug) == len(index) == 26
    shifts = aug.epoch_shifts(seed=7, epoch=1)
    np.testing.assert_array_equal(shifts, aug.epoch_shifts(seed=7, epoch=1))
    assert not np.array_equal(shifts, aug.epoch_shifts(seed=7, epoch=2))
    assert not np.array_equal(shifts, aug.epoch_shifts(seed=8, epoch=1))
    every = np.stack([aug.epoch_shifts(seed=7, epoch=e) for e in range(1, 200)])
    assert every.min() == -5 and every.max() == 6
    # windows (3 ids + target) holding pitch 125 allow shifts up to +2 only; the others +6
    x, y = index.windows()
    holds_125 = (np.concatenate([x, y[:, None]], axis=1) == vocab.id("125")).any(axis=1)
    assert holds_125.sum() == 4
    assert every[:, holds_125].max() == 2 and every[:, ~holds_125].max() == 6
    np.testing.assert_array_equal(aug.rows(np.array([-5, 0, 6])), [0, 5, 11])
    assert aug.table.shape == (len(TRANSPOSITIONS), len(vocab))


@pytest.mark.tf
def test_window_dataset_applies_the_shift_table_per_window() -> None:
    vocab, index = _hand_index()
    aug = RandomTranspose.build(vocab, index)
    perm = index.epoch_permutation(seed=3, epoch=1)
    rows = aug.rows(aug.epoch_shifts(seed=3, epoch=1))[perm]
    order = index.positions[perm]
    batches = list(
        window_dataset(
            index, order, 8, drop_remainder=False, shift_table=aug.table, shift_rows=rows
        )
    )
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    ex, ey = index.windows(order)
    np.testing.assert_array_equal(x, aug.table[rows[:, None], ex])
    np.testing.assert_array_equal(y, aug.table[rows, ey])
    # e.g. "60" shifted by +2 is "62"; a shifted "125" is a chord the vocabulary lacks
    up2 = rows == 7
    assert up2.any()
    assert (x[up2][ex[up2] == vocab.id("60")] == vocab.id("62")).all()
    shifted_125 = (ex == vocab.id("125")) & (rows[:, None] != 5)
    assert shifted_125.any() and (x[shifted_125] == UNK_ID).all()


def _hand_pitch_index() -> tuple[Vocab, WindowIndex, list[list[frozenset[int]]]]:
    """Like :func:`_hand_index`, with each frame's pitches; the second piece holds a chord
    the vocabulary lacks ({60, 126}: <unk> as an id, its pitches kept in the rows)."""
    vocab = Vocab.from_counts({t: 1 for t in ("60", "62", "64")})
    c60, c62, c64, odd = frozenset({60}), frozenset({62}), frozenset({64}), frozenset({60, 126})
    first = [c60, c62, frozenset(), c64] * 5
    second = [c60, odd, c62, c60, c60, c64]
    frames = [first, second]
    ids = [vocab.ids(token_from_pitches(f) for f in piece) for piece in frames]
    return vocab, WindowIndex.from_sequences(ids, window_frames=3, frames=frames), frames


def test_pitch_rows_keep_unknown_chords_and_bound_the_shifts() -> None:
    vocab, index, _ = _hand_pitch_index()
    assert index.pitches is not None and index.pitches.shape == (len(index.ids), 128)
    pos = index.positions
    _, y = index.windows()
    unknown = y == UNK_ID
    assert unknown.sum() == 1
    assert set(np.flatnonzero(index.pitches[pos[unknown][0]])) == {60, 126}
    assert not index.pitches[: index.window_frames].any()  # the pad frames are silence
    aug = RandomTranspose.build(vocab, index)
    every = np.stack([aug.epoch_shifts(seed=1, epoch=e) for e in range(1, 200)])
    holds_126 = np.array([index.pitches[p - 3 : p + 1, 126].any() for p in pos])
    assert holds_126.sum() == 4  # bounded by the unknown chord's own pitch 126
    assert every[:, holds_126].max() == 1 and every[:, ~holds_126].max() == 6


def test_frames_and_sequences_must_agree() -> None:

    with pytest.raises(TrainingError, match="differ in length"):
        WindowIndex.from_sequences([[1, 1]], 3, frames=[[frozenset()]])
    with pytest.raises(TrainingError, match="fewer frame sequences"):
        WindowIndex.from_sequences([[1], [1]], 3, frames=[[frozenset()]])


@pytest.mark.tf
def test_window_dataset_shifts_pitch_rows_with_the_ids() -> None:
    vocab, index, _ = _hand_pitch_index()
    aug = RandomTranspose.build(vocab, index)
    shifts = aug.epoch_shifts(seed=3, epoch=1)
    rows = aug.rows(shifts)
    order = index.positions
    batches = list(
        window_dataset(
            index, order, 8, drop_remainder=False, shift_table=aug.table, shift_rows=rows
        )
    )
    x = np.concatenate([b[0].numpy() for b in batches])
    prev = np.concatenate([b[1][0].numpy() for b in batches])
    target = np.concatenate([b[1][1].numpy() for b in batches])
    assert index.pitches is not None
    for j, p in enumerate(order):
        want = set((np.flatnonzero(index.pitches[p]) + shifts[j]).tolist())
        assert set(np.flatnonzero(target[j]).tolist()) == want
        want_prev = set((np.flatnonzero(index.pitches[p - 1]) + shifts[j]).tolist())
        assert set(np.flatnonzero(prev[j]).tolist()) == want_prev
        if x[j, -1] != UNK_ID:  # the last input id names the same chord as the prev row
            assert vocab.token(int(x[j, -1])) == token_from_pitches(want_prev)


@pytest.mark.tf
def test_window_dataset_gives_a_pitch_reading_model_shifted_pitch_windows() -> None:
    """``pitch_input``: x is the window's rows (unknown chords as they are), moved by the
    same shift as the target; unshifted it is :meth:`WindowIndex.pitch_windows`."""
    vocab, index, _ = _hand_pitch_index()
    aug = RandomTranspose.build(vocab, index)
    shifts = aug.epoch_shifts(seed=4, epoch=2)
    order = index.positions
    plain = list(window_dataset(index, order, 8, drop_remainder=False, pitch_input=True))
    x_plain = np.concatenate([b[0].numpy() for b in plain])
    assert x_plain.dtype == np.float32
    np.testing.assert_array_equal(x_plain, index.pitch_windows(order))
    moved = window_dataset(
        index,
        order,
        8,
        drop_remainder=False,
        shift_table=aug.table,
        shift_rows=aug.rows(shifts),
        pitch_input=True,
    )
    batches = list(moved)
    x = np.concatenate([b[0].numpy() for b in batches])
    target = np.concatenate([b[1][1].numpy() for b in batches])
    assert x.shape == (len(order), index.window_frames, 128)
    for j in range(len(order)):
        for t in range(index.window_frames):
            want = set((np.flatnonzero(x_plain[j, t]) + shifts[j]).tolist())
            assert set(np.flatnonzero(x[j, t]).tolist()) == want
        assert set(np.flatnonzero(target[j]).tolist()) == set(
            (np.flatnonzero(index.pitches[order[j]]) + shifts[j]).tolist()
        )
    no_rows = WindowIndex.from_sequences([[2, 3]], 3)
    with pytest.raises(TrainingError, match="pitch rows"):
        window_dataset(no_rows, no_rows.positions, 2, drop_remainder=False, pitch_input=True)
