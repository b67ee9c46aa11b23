"""Fixtures for training tests: a few real Bach chorales as .mid and a tiny model config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BACH_PIECES = 8
"""Chorales in the ``bach_dir`` fixture: split 6 / 1 / 1 by :func:`split_names`."""

TINY_CONFIG = {
    "name": "tiny",
    "embed_dim": 8,
    "gru_units": 8,
    "gru_layers": 1,
    "dense_units": 16,
    "embed_dropout": 0.1,
    "gru_dropout": 0.1,
    "copy_gate": True,
}
"""A small network with every optional part (dropout, copy gate) switched on."""


@pytest.fixture(scope="session")
def bach_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first chorales of music21's Bach corpus, exported as real .mid files."""
    from musicgend.training.corpus import bach_chorale_sources, export_scores

    out = tmp_path_factory.mktemp("bach")
    sources = bach_chorale_sources()[:BACH_PIECES]
    report = export_scores(sources, out, jobs=1)
    assert len(report.exported) == BACH_PIECES, report.failed
    return out


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path
