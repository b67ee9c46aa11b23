"""p_spell: the probability of an exact pitch set under independent per-pitch Bernoulli.

Each pitch's probability is its share of training frames, clipped to [1e-4, 1 - 1e-4], and is
saved with the model. The scoring rule (DESIGN.md §4) gives an unknown chord the probability
``p(<unk>) × p_spell(chord)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

CLIP = 1e-4


class PitchPrior:
    """Per-pitch sounding probabilities (128,) and the log p_spell of pitch sets."""

    __slots__ = ("_log_off_total", "_log_ratio", "probs")

    def __init__(self, probs: Iterable[float]) -> None:
        p = np.clip(np.asarray(list(probs), dtype=np.float64), CLIP, 1.0 - CLIP)
        if p.shape != (128,):
            raise ValueError(f"a pitch prior has 128 probabilities, got {p.shape}")
        self.probs = p
        self._log_off_total = float(np.log1p(-p).sum())
        self._log_ratio = np.log(p) - np.log1p(-p)

    @classmethod
    def from_frames(cls, frames: Iterable[Iterable[int]]) -> PitchPrior:
        """Each pitch's share of the given frames (all frames, silent ones included)."""
        counts = np.zeros(128, dtype=np.float64)
        n = 0
        for frame in frames:
            n += 1
            for p in frame:
                counts[p] += 1
        return cls(counts / max(n, 1))

    def log_p(self, pitches: Iterable[int]) -> float:
        """log p_spell of exactly this pitch set (natural log)."""
        idx = list(pitches)
        return (
            self._log_off_total + float(self._log_ratio[idx].sum()) if idx else self._log_off_total
        )

    def to_list(self) -> list[float]:
        return [float(x) for x in self.probs]
