"""Vocab: ids, counts, min_count, content hash, JSON save/load, nearest known chord."""

from __future__ import annotations

import gc
import itertools
import json
import pickle
import random
import weakref
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musicgend.core.tokens import SILENCE, pitches_from_token, token_from_pitches
from musicgend.core.vocab import NEAREST_CACHE_SIZE, SILENCE_ID, UNK, UNK_ID, Vocab
from musicgend.errors import VocabError

chord = st.frozensets(st.integers(36, 84), max_size=5)
token_streams = st.lists(st.lists(chord.map(token_from_pitches), max_size=40), max_size=6)


@given(token_streams, st.integers(1, 4))
def test_build_ids_counts_and_min_count(streams, min_count):
    vocab = Vocab.build(streams, min_count=min_count)
    seen = Counter(t for s in streams for t in s)
    assert vocab.tokens[:2] == (UNK, SILENCE)
    assert vocab.id(UNK) == UNK_ID and vocab.id(SILENCE) == SILENCE_ID
    assert vocab.counts[SILENCE_ID] == seen[SILENCE]
    kept = {t for t, c in seen.items() if c >= min_count and t != SILENCE}
    assert set(vocab.tokens[2:]) == kept
    assert vocab.counts[UNK_ID] == sum(c for t, c in seen.items() if t not in kept and t != SILENCE)
    assert sum(vocab.counts) == sum(seen.values())
    # ids by descending count, ties in token order
    order = [(-c, t) for t, c in zip(vocab.tokens[2:], vocab.counts[2:], strict=True)]
    assert order == sorted(order)
    for stream in streams:
        ids = vocab.ids(stream)
        assert [vocab.token(i) if i else None for i in ids] == [
            t if t in vocab else None for t in stream
        ]
    assert vocab.id("1,2,3") == UNK_ID and "1,2,3" not in vocab and UNK not in vocab


@given(token_streams, st.integers(1, 3), st.sampled_from([4, 5, 10]))
def test_json_round_trip_keeps_everything(streams, min_count, fs):
    vocab = Vocab.build(streams, min_count=min_count, fs=fs)
    again = Vocab.loads(vocab.dumps())
    assert again.tokens == vocab.tokens
    assert again.counts == vocab.counts
    assert (again.fs, again.min_count) == (fs, min_count)
    assert again.hash == vocab.hash
    assert json.loads(vocab.dumps())["hash"] == vocab.hash


@given(st.dictionaries(chord.map(token_from_pitches), st.integers(1, 9), max_size=30))
def test_hash_is_stable_under_insertion_order(counts):
    items = list(counts.items())
    shuffled = items[:]
    random.Random(len(items)).shuffle(shuffled)
    a = Vocab.from_counts(dict(items))
    b = Vocab.from_counts(dict(shuffled))
    assert a.tokens == b.tokens and a.hash == b.hash


def test_hash_depends_on_tokens_and_fs():
    base = Vocab.from_counts({"60": 3, "62": 2})
    assert base.hash != Vocab.from_counts({"60": 2, "62": 3}).hash  # ids swapped
    assert base.hash != Vocab.from_counts({"60": 3, "62": 2}, fs=4).hash
    assert base.hash == Vocab.from_counts({"62": 2, "60": 3}).hash
    assert len(base.hash) == 64


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["tokens"].__setitem__(2, "61"), "hash"),
        (lambda d: d.__setitem__("format", "other"), "not a musicgend vocabulary"),
        (lambda d: d.__setitem__("version", 99), "version"),
        (lambda d: d.pop("tokens"), "malformed"),
        (lambda d: d["tokens"].__setitem__(2, "64,60"), "not a chord token"),
        (lambda d: d["counts"].pop(), "one count per token"),
    ],
)
def test_edited_or_malformed_files_are_refused(edit, message):
    data = Vocab.from_counts({"60": 3, "62": 2, "e": 1}).to_json()
    edit(data)
    with pytest.raises(VocabError, match=message):
        Vocab.loads(json.dumps(data))


def test_not_json_is_refused():
    with pytest.raises(VocabError, match="not valid JSON"):
        Vocab.loads("{not json")


def test_bad_min_count_and_bad_prefix_are_refused():
    with pytest.raises(VocabError):
        Vocab.from_counts({"60": 1}, min_count=0)
    with pytest.raises(VocabError):
        Vocab(("e", "<unk>"), (0, 0))


# -- nearest ----------------------------------------------------------------------------------


def _key(vocab: Vocab, i: int, target: frozenset[int]) -> tuple[int, int, int]:
    pitches = pitches_from_token(vocab.tokens[i])
    shared_pc = len({p % 12 for p in pitches} & {p % 12 for p in target})
    return (len(pitches ^ target), -shared_pc, -vocab.counts[i])


vocabs = st.dictionaries(chord.map(token_from_pitches), st.integers(1, 20), max_size=25).map(
    Vocab.from_counts
)


@settings(max_examples=60)
@given(vocabs, st.frozensets(st.integers(30, 90), max_size=6))
def test_nearest_is_the_best_candidate_by_the_documented_order(vocab, target):
    result = vocab.nearest(target)
    assert result != UNK_ID
    known = token_from_pitches(target)
    if known in vocab or known == SILENCE:
        assert result == vocab.id(known)
        return
    candidates = [i for i in range(2, len(vocab))] or [SILENCE_ID]
    assert result in candidates  # a played chord never maps to silence while chords exist
    best = min(_key(vocab, i, target) for i in candidates)
    assert _key(vocab, result, target) == best
    assert vocab.nearest(target) == result  # cached answer is the same


def test_nearest_on_a_large_vocabulary_follows_the_documented_order():
    rng = random.Random(5)
    counts = {
        token_from_pitches(rng.sample(range(36, 84), rng.randint(1, 5))): rng.randint(1, 50)
        for _ in range(1500)
    }
    vocab = Vocab.from_counts(counts)
    candidates = range(2, len(vocab))
    for _ in range(60):
        target = frozenset(rng.sample(range(30, 90), rng.randint(1, 7)))
        result = vocab.nearest(target)
        keys = [_key(vocab, i, target) for i in candidates]
        best = min(keys)
        # ties in all three go to the lower id
        assert result == 2 + keys.index(best)


def test_nearest_cache_stays_bounded_and_holds_no_reference_to_its_vocabulary():
    vocab = Vocab.from_counts({"60,64,67": 5, "48,52,55": 9, "e": 3})
    pairs = itertools.islice(itertools.combinations(range(128), 2), NEAREST_CACHE_SIZE + 200)
    for pair in pairs:
        vocab.nearest(pair)
    assert vocab._nearest.cache_info().currsize == NEAREST_CACHE_SIZE
    ref = weakref.ref(vocab)
    gc.disable()
    try:
        del vocab
        assert ref() is None  # freed by reference counting: no cycle left for the collector
    finally:
        gc.enable()


def test_vocab_pickles_and_its_copy_answers_the_same():
    vocab = Vocab.from_counts({"60,64,67": 5, "48,52,55": 9, "62,65,69": 7, "e": 3})
    copy = pickle.loads(pickle.dumps(vocab))
    assert copy == vocab and copy.hash == vocab.hash
    assert copy.nearest({72, 76, 79}) == vocab.nearest({72, 76, 79})


def test_nearest_examples():
    vocab = Vocab.from_counts({"60,64,67": 5, "48,52,55": 9, "62,65,69": 7, "e": 3})
    assert vocab.nearest({60, 64, 67}) == vocab.id("60,64,67")
    assert vocab.nearest(set()) == SILENCE_ID
    # one pitch added: distance 1 to C major
    assert vocab.nearest({60, 64, 67, 72}) == vocab.id("60,64,67")
    # {72, 76, 79} is 6 away from both C majors and from D minor; the C chords share all
    # three pitch classes, and of those the more frequent wins
    assert vocab.nearest({72, 76, 79}) == vocab.id("48,52,55")
    only_silence = Vocab.from_counts({"e": 4})
    assert only_silence.nearest({60}) == SILENCE_ID
