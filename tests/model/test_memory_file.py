"""``memory.json`` in a model directory: written only for the weights it was tuned for,
checked when loaded, kept or dropped by rewrites, refused on a vocabulary model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from musicgend.core.memory import LEVELS, MemoryWeights
from musicgend.errors import ModelError
from musicgend.model.artifact import (
    MEMORY_JSON,
    METADATA_JSON,
    WEIGHTS_NPZ,
    compact_artifact,
    load_artifact,
)
from musicgend.training.memory import tune_memory
from tests.model.conftest import save_tiny_artifact

pytestmark = pytest.mark.tf

WEIGHTS = MemoryWeights(tuple(i / 20 for i in range(LEVELS)), tuple(i / 10 for i in range(LEVELS)))


def memory_for(path: Path, weights: MemoryWeights = WEIGHTS) -> dict[str, object]:
    sha = load_artifact(path).metadata["files"][WEIGHTS_NPZ]
    return {"weights": weights.to_json(), "weights_sha256": sha, "tuned_on": {"split": "val"}}


@pytest.fixture
def pitch_model(tmp_path: Path) -> Path:
    return save_tiny_artifact(tmp_path / "pitch", seed=3, pitch=True, pitch_input=True)


def test_memory_is_written_listed_and_loaded(pitch_model: Path) -> None:
    compact_artifact(pitch_model, memory=memory_for(pitch_model))
    art = load_artifact(pitch_model)
    assert art.memory == WEIGHTS
    assert MEMORY_JSON in art.metadata["files"]
    assert art.memory_file is not None and art.memory_file["tuned_on"] == {"split": "val"}
    # a rewrite that keeps the weights keeps the memory
    compact_artifact(pitch_model)
    assert load_artifact(pitch_model).memory == WEIGHTS


def test_memory_for_other_weights_is_refused_and_nothing_changes(pitch_model: Path) -> None:
    before = (pitch_model / METADATA_JSON).read_bytes()
    memory = {**memory_for(pitch_model), "weights_sha256": "0" * 64}
    with pytest.raises(ModelError, match=r"tuned for other weights.*tune-memory"):
        compact_artifact(pitch_model, memory=memory)
    assert (pitch_model / METADATA_JSON).read_bytes() == before
    assert load_artifact(pitch_model).memory is None


def test_float16_rounding_drops_the_memory_with_a_note(pitch_model: Path) -> None:
    compact_artifact(pitch_model, memory=memory_for(pitch_model))
    result = compact_artifact(pitch_model, weights_dtype="float16")
    assert any(MEMORY_JSON in note and "tune-memory" in note for note in result.notes)
    assert load_artifact(pitch_model).memory is None
    assert not (pitch_model / MEMORY_JSON).exists()


def test_an_edited_memory_file_fails_its_checksum(pitch_model: Path) -> None:
    compact_artifact(pitch_model, memory=memory_for(pitch_model))
    file = pitch_model / MEMORY_JSON
    file.write_text(file.read_text().replace("0.05", "0.5"))
    with pytest.raises(ModelError, match=rf"{MEMORY_JSON}: checksum mismatch.*tune-memory"):
        load_artifact(pitch_model)
    # compact drops a damaged memory, with a note
    result = compact_artifact(pitch_model)
    assert any(note.startswith(f"{MEMORY_JSON} dropped") for note in result.notes)
    assert load_artifact(pitch_model).memory is None


def _relist(path: Path, data: object) -> None:
    """Write memory.json and list its checksum, as if a tool had written it."""
    file = path / MEMORY_JSON
    file.write_text(json.dumps(data))
    meta = json.loads((path / METADATA_JSON).read_text())
    meta["files"][MEMORY_JSON] = hashlib.sha256(file.read_bytes()).hexdigest()
    (path / METADATA_JSON).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weights": {"hold": [0.1]}}, "match_frames"),
        ({"weights": None}, "expected a JSON object"),
        ({"weights_sha256": "f" * 64}, "tuned for other weights"),
    ],
)
def test_a_listed_but_bad_memory_names_the_problem(
    pitch_model: Path, change: dict[str, object], message: str
) -> None:
    _relist(pitch_model, {**memory_for(pitch_model), **change})
    with pytest.raises(ModelError, match=rf"{MEMORY_JSON}: .*{message}"):
        load_artifact(pitch_model)


def test_a_vocabulary_model_takes_no_memory(tmp_path: Path) -> None:
    path = save_tiny_artifact(tmp_path / "tokens", seed=1)
    with pytest.raises(ModelError, match="needs a per-pitch model"):
        compact_artifact(path, memory=memory_for(path))
    with pytest.raises(ModelError, match="needs a per-pitch model"):
        tune_memory(path, tmp_path)
    _relist(path, memory_for(path))
    with pytest.raises(ModelError, match="needs a per-pitch model"):
        load_artifact(path)


def test_tuning_needs_the_saved_validation_split(pitch_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no validation split"):
        tune_memory(pitch_model, tmp_path)
