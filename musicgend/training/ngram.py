"""The evaluation baselines: a repeat expert and an interpolated Kneser-Ney n-gram.

Pure numpy/dict code over vocabulary ids (no TensorFlow). Every baseline, like the model, is a
distribution over the vocabulary's ids; the scoring rule of DESIGN.md §4 turns that into a
chord probability (``<unk>`` × p_spell for an unknown chord) in :mod:`training.evaluate`.

Conventions shared with the model:

* A piece's context is left-padded with silence (``"e"``, :data:`SILENCE_ID`), as the model's
  50-frame windows are; so "the previous chord" at a piece's first frame is ``"e"``, and the
  n-gram's first contexts are ``e e e e``.
* A chord the vocabulary doesn't know is ``<unk>`` (id 0) both as context and as target.

**Repeat expert.** ``p(w) = [w = previous id]``. Mixed with a base distribution ``q``:
``p(w) = λ·[w = prev] + (1 − λ)·q(w)``; ``q`` is the uniform distribution over the vocabulary
for ``repeat`` and the Kneser-Ney model for ``kn5_repeat``. Because the expert works on ids,
an unknown chord after an unknown chord counts as a repeat (``<unk>`` → ``<unk>``), exactly as
for a model that copies its last input id.

**Interpolated Kneser-Ney** (Chen & Goodman 1998, one discount per order)::

    P_k(w | h) = max(c_k(h w) − D_k, 0) / c_k(h •) + D_k · N1+(h •) / c_k(h •) · P_{k−1}(w | h')
    P_0(w)     = 1 / V

``c_k`` is the raw count at the highest order and the continuation count
``N1+(• h w)`` (distinct left neighbours) below it; ``h'`` is ``h`` without its oldest id;
a context never seen at order k passes its whole mass to order k − 1. Each order's discount is
``D_k = n1 / (n1 + 2·n2)`` from the numbers of its k-grams with (modified) count 1 and 2; when
an order has no k-gram seen once (only on toy data) ``D_k = 0.5`` so that every id keeps mass.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from musicgend.core.vocab import SILENCE_ID, UNK_ID

FALLBACK_DISCOUNT = 0.5
"""The discount of an order with no k-gram seen exactly once (degenerate, toy data only)."""


@dataclass(frozen=True)
class _OrderTable:
    """One order's successors of every context, flat: context → (start, end, γ(h)).

    ``ids[start:end]`` are the ids seen after the context and ``shares[start:end]`` their
    discounted shares ``max(c − D, 0) / c(h •)``.
    """

    index: dict[tuple[int, ...], tuple[int, int, float]]
    ids: np.ndarray
    shares: np.ndarray


_EMPTY_TABLE = _OrderTable({}, np.zeros(0, dtype=np.int64), np.zeros(0))


class KneserNey:
    """An interpolated Kneser-Ney n-gram over ids ``0 .. vocab_size − 1``.

    ``fit`` counts n-grams of every piece left-padded with ``order − 1`` silences.
    """

    def __init__(self, order: int, vocab_size: int, pad_id: int = SILENCE_ID) -> None:
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        if vocab_size < 1:
            raise ValueError(f"vocabulary size must be >= 1, got {vocab_size}")
        self.order = order
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.discounts: list[float] = []
        """``discounts[k − 1]`` is the discount of order k."""
        self._unigram = np.full(vocab_size, 1.0 / vocab_size)
        self._tables: list[_OrderTable] = [_EMPTY_TABLE] * order

    @classmethod
    def fit(
        cls,
        sequences: Sequence[Sequence[int]],
        order: int,
        vocab_size: int,
        pad_id: int = SILENCE_ID,
    ) -> KneserNey:
        model = cls(order, vocab_size, pad_id)
        model._fit(sequences)
        return model

    def _fit(self, sequences: Sequence[Sequence[int]]) -> None:
        n = self.order
        for seq in sequences:
            for w in seq:
                if not 0 <= w < self.vocab_size:
                    raise ValueError(f"id {w} outside the vocabulary (size {self.vocab_size})")
        # Raw counts of every k-gram ending at a real (non-pad) position.
        raw: list[Counter[tuple[int, ...]]] = [Counter() for _ in range(n + 1)]
        for seq in sequences:
            padded = [self.pad_id] * (n - 1) + list(seq)
            for t in range(n - 1, len(padded)):
                for k in range(1, n + 1):
                    raw[k][tuple(padded[t - k + 1 : t + 1])] += 1
        # Highest order: raw counts. Lower orders: distinct left neighbours N1+(• g), taken
        # from the distinct (k+1)-grams. With n − 1 pads every k-gram (k < n) ending at a real
        # position has a left neighbour, so each one gets a continuation count >= 1.
        counts: list[dict[tuple[int, ...], int]] = [{} for _ in range(n + 1)]
        counts[n] = dict(raw[n])
        for k in range(n - 1, 0, -1):
            cont: Counter[tuple[int, ...]] = Counter()
            for gram in raw[k + 1]:
                cont[gram[1:]] += 1
            counts[k] = dict(cont)
        self.discounts = [_discount(counts[k].values()) for k in range(1, n + 1)]

        for k in range(1, n + 1):
            d = self.discounts[k - 1]
            grouped: dict[tuple[int, ...], tuple[list[int], list[int]]] = {}
            for gram, c in counts[k].items():
                ids, cs = grouped.setdefault(gram[:-1], ([], []))
                ids.append(gram[-1])
                cs.append(c)
            index: dict[tuple[int, ...], tuple[int, int, float]] = {}
            flat_ids: list[int] = []
            flat_counts: list[int] = []
            totals: list[float] = []
            for context, (ids, cs) in grouped.items():
                start = len(flat_ids)
                total = float(sum(cs))
                index[context] = (start, start + len(ids), d * len(ids) / total)
                flat_ids.extend(ids)
                flat_counts.extend(cs)
                totals.extend([total] * len(ids))
            shares = np.maximum(np.asarray(flat_counts, dtype=np.float64) - d, 0.0) / np.asarray(
                totals
            )
            self._tables[k - 1] = _OrderTable(index, np.asarray(flat_ids, dtype=np.int64), shares)
        unigram = np.full(self.vocab_size, 1.0 / self.vocab_size)
        first = self._tables[0]
        root = first.index.get(())
        if root is not None:
            start, end, gamma = root
            unigram *= gamma
            unigram[first.ids[start:end]] += first.shares[start:end]
        self._unigram = unigram

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """P(· | context) over the whole vocabulary, shape ``(vocab_size,)``, sums to 1.

        ``context`` holds the previous ids, newest last; only the last ``order − 1`` count.
        A context shorter than that is left-padded with silence (a piece's start).
        """
        n = self.order
        ctx = tuple(context[-(n - 1) :]) if n > 1 else ()
        if len(ctx) < n - 1:
            ctx = (self.pad_id,) * (n - 1 - len(ctx)) + ctx
        vec = self._unigram.copy()
        for k in range(2, n + 1):
            table = self._tables[k - 1]
            entry = table.index.get(ctx[len(ctx) - (k - 1) :])
            if entry is None:
                continue
            start, end, gamma = entry
            vec *= gamma
            vec[table.ids[start:end]] += table.shares[start:end]
        return vec


def _discount(values: Iterable[int]) -> float:
    cs = np.fromiter(values, dtype=np.int64)
    n1 = int((cs == 1).sum())
    n2 = int((cs == 2).sum())
    if n1 == 0:
        return FALLBACK_DISCOUNT
    return n1 / (n1 + 2 * n2)


# -- per-frame statistics and the repeat mixture -------------------------------------------


@dataclass(frozen=True)
class FrameStats:
    """What a ``λ·repeat + (1 − λ)·q`` mixture needs per frame, for any λ.

    ``p_target``: q(target id); ``repeat``: target id = previous id; ``p_prev``: q(previous id);
    ``best_other``/``p_best_other``: the most probable id under q other than the previous id.
    """

    targets: np.ndarray
    prevs: np.ndarray
    p_target: np.ndarray
    p_prev: np.ndarray
    best_other: np.ndarray
    p_best_other: np.ndarray

    @property
    def repeat(self) -> np.ndarray:
        return self.targets == self.prevs

    def __len__(self) -> int:
        return len(self.targets)

    @classmethod
    def concat(cls, parts: Sequence[FrameStats]) -> FrameStats:
        if not parts:
            empty_i = np.zeros(0, dtype=np.int64)
            empty_f = np.zeros(0, dtype=np.float64)
            return cls(empty_i, empty_i, empty_f, empty_f, empty_i, empty_f)
        return cls(
            targets=np.concatenate([p.targets for p in parts]),
            prevs=np.concatenate([p.prevs for p in parts]),
            p_target=np.concatenate([p.p_target for p in parts]),
            p_prev=np.concatenate([p.p_prev for p in parts]),
            best_other=np.concatenate([p.best_other for p in parts]),
            p_best_other=np.concatenate([p.p_best_other for p in parts]),
        )

    def log_probs(self, lam: float) -> np.ndarray:
        """Natural log of the mixture's probability of each frame's target id."""
        p = lam * self.repeat + (1.0 - lam) * self.p_target
        with np.errstate(divide="ignore"):
            return np.log(p)

    def correct(self, lam: float, unk_id: int = UNK_ID) -> np.ndarray:
        """Whether the mixture's argmax is the target id (an ``<unk>`` target never is).

        The previous id scores ``λ + (1 − λ)·q(prev)``, any other id ``(1 − λ)·q(id)``;
        ties go to the previous id.
        """
        prev_score = lam + (1.0 - lam) * self.p_prev
        other_score = (1.0 - lam) * self.p_best_other
        argmax = np.where(prev_score >= other_score, self.prevs, self.best_other)
        return (argmax == self.targets) & (self.targets != unk_id)


def previous_ids(ids: Sequence[int], pad_id: int = SILENCE_ID) -> np.ndarray:
    """Each frame's previous id; the first frame's is the pad (silence)."""
    arr = np.asarray(ids, dtype=np.int64)
    if len(arr) == 0:
        return arr
    return np.concatenate([[pad_id], arr[:-1]])


def uniform_stats(ids: Sequence[int], vocab_size: int, pad_id: int = SILENCE_ID) -> FrameStats:
    """Frame statistics of the uniform distribution (the ``repeat`` baseline's base)."""
    targets = np.asarray(ids, dtype=np.int64)
    prevs = previous_ids(ids, pad_id)
    u = np.full(len(targets), 1.0 / vocab_size)
    # Any id other than the previous one; the lowest such id (0, or 1 when prev is 0).
    best_other = np.where(prevs == 0, 1 if vocab_size > 1 else 0, 0).astype(np.int64)
    return FrameStats(targets, prevs, u, u.copy(), best_other, u.copy())


def kn_stats(model: KneserNey, ids: Sequence[int]) -> FrameStats:
    """Frame statistics of a Kneser-Ney model on one piece (context padded with silence)."""
    n = len(ids)
    targets = np.asarray(ids, dtype=np.int64)
    prevs = previous_ids(ids, model.pad_id)
    p_target = np.empty(n)
    p_prev = np.empty(n)
    best_other = np.empty(n, dtype=np.int64)
    p_best_other = np.empty(n)
    history = [model.pad_id] * (model.order - 1) + list(ids)
    width = model.order - 1
    for t in range(n):
        vec = model.distribution(history[t : t + width])
        prev = prevs[t]
        p_target[t] = vec[targets[t]]
        p_prev[t] = vec[prev]
        vec[prev] = -1.0
        j = int(vec.argmax())
        best_other[t] = j
        p_best_other[t] = vec[j]
    return FrameStats(targets, prevs, p_target, p_prev, best_other, p_best_other)


def tune_lambda(
    stats: FrameStats, extra_log_p: float = 0.0, tol: float = 1e-6
) -> tuple[float, float]:
    """The λ in [0, 1] minimising the mixture's mean NLL on ``stats``, and that NLL.

    The NLL is convex in λ (a sum of −log of affine functions), so a golden-section search
    finds the minimum; the end points are checked too. ``extra_log_p`` (e.g. the p_spell terms
    of unknown chords, which don't depend on λ) is added to the total log-probability.
    """
    if len(stats) == 0:
        raise ValueError("can't tune λ on zero frames")

    def nll(lam: float) -> float:
        return -(float(stats.log_probs(lam).sum()) + extra_log_p) / len(stats)

    lam = golden_section(nll, 0.0, 1.0, tol)
    best = min((lam, 0.0, 1.0), key=nll)
    return best, nll(best)


def golden_section(f: Callable[[float], float], lo: float, hi: float, tol: float) -> float:
    """The minimiser of a unimodal ``f`` on ``[lo, hi]`` to within ``tol``."""
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c = b - inv_phi * (b - a)
    d = a + inv_phi * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = f(d)
    return (a + b) / 2.0
