"""The project's exception types. Everything musicgend raises on purpose derives from
:class:`MusicgendError`, so the CLI can print one clear line instead of a traceback."""

from __future__ import annotations


class MusicgendError(Exception):
    """Base class of every error musicgend raises on purpose."""


class TokenError(MusicgendError, ValueError):
    """A chord token or pitch set is malformed."""


class MidiFileError(MusicgendError):
    """A .mid file can't be read or holds nothing usable. ``path`` names the file."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class CorpusError(MusicgendError):
    """A corpus directory is missing, empty or gave no usable piece."""


class VocabError(MusicgendError):
    """A vocabulary file is unreadable, inconsistent, or doesn't match a model."""


class ModelError(MusicgendError):
    """A model artifact is missing, corrupt, or inconsistent."""


class ConfigError(MusicgendError):
    """The configuration is invalid."""


class MidiPortError(MusicgendError):
    """A MIDI port or backend can't be opened or used."""


class SessionError(MusicgendError):
    """A session journal or session directory can't be read or written."""


class TrainingError(MusicgendError):
    """A training run can't start, continue, or resume (bad options, state, or data)."""


class OutputError(MusicgendError):
    """An output path can't be written, or writing it would replace an input."""
