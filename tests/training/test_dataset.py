"""Corpus split, vocabulary from the training split, windows, augmentation, tf.data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from musicgend.core.tokens import token_from_pitches
from musicgend.core.vocab import SILENCE_ID, UNK, UNK_ID
from musicgend.core.window import training_windows
from musicgend.errors import CorpusError
from musicgend.model.config import ModelConfig
from musicgend.training.dataset import (
    Split,
    WindowIndex,
    load_corpus,
    prepare,
    split_names,
    window_dataset,
)
from tests.conftest import write_chords, write_not_midi

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


def test_augmentation_transposes_the_training_split_only(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "c")
    corpus = load_corpus(root, seed=0)
    plain = prepare(corpus, ModelConfig(min_count=1, window_frames=10))
    aug = prepare(corpus, ModelConfig(min_count=1, window_frames=10), augment_transpose=True)
    assert len(aug.train) == 12 * len(plain.train)
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
    if "zz_bad.mid" in corpus.split.test:
        assert corpus.skipped == {}  # the test part is not read here
    else:
        assert "not a MIDI file" in corpus.skipped["zz_bad.mid"]
        assert "zz_bad.mid" in capsys.readouterr().err


def test_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not a directory"):
        load_corpus(tmp_path / "missing", seed=0)
    root = _corpus(tmp_path / "c")
    split = split_names([*NAMES[:3]], seed=0)
    with pytest.raises(CorpusError, match="saved split are gone"):
        load_corpus(root, seed=0, split=split)
