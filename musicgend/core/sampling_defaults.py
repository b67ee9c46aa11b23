"""The sampler's default settings, shared by the sampler, the engine and the configuration.

A module of its own (no NumPy) so that reading the configuration imports nothing heavy.
Tuned with ``bench/generation_stats.py --grid pitch`` on the bundled model; see
``bench/results/generation-stats.json`` and ``models/MODEL_CARD.md``.
"""

from __future__ import annotations

DEFAULT_HOLD_BIAS = 1.0
"""Weight × on repeating the previous chord: none for the bundled per-pitch model, whose copy
gate holds about as often as Bach does (the ``musicgend`` vocabulary preset's holds more:
0.3 suits it, see ``models/MODEL_CARD.md``)."""
LOG_HOLD_BIAS = 0.0
"""The daemon's hold bias is in log units: ln 1 = 0."""
DEFAULT_SHORT_NOTE_PENALTY = 0.75
"""Weight × per note struck in the last frame that a chord would end (the ``pitch``-preset
model that was bundled before wants 0.45)."""
DEFAULT_SCALE_PENALTY = 0.15
"""Weight × per pitch outside the key of the context."""
