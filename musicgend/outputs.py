"""Checks on the files and directories a command is about to write, made before the work
starts: a long run must not end in a traceback because its output can't be written, and no
command writes over one of its own inputs."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from musicgend.errors import OutputError


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def ensure_dir(path: str | Path, what: str = "directory", *, for_path: Path | None = None) -> Path:
    """Create ``path`` (and its parents) unless it exists; clear errors when a component is a
    file or the directory can't be created or written. Errors name ``for_path`` (the file
    to be written in it) when given, else ``path``."""
    path = Path(path)
    name = for_path if for_path is not None else path
    for ancestor in (path, *path.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OutputError(f"{name}: {ancestor} is a file, not a directory")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{name}: can't create the {what} {path} ({_reason(exc)})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{name}: can't write in the {what} {path} (permission denied)")
    return path


def check_output_file(
    path: str | Path, *, inputs: Iterable[str | Path] = (), what: str = "output"
) -> Path:
    """Make ``path`` ready to be written: its directory exists (created if needed) and is
    writable, ``path`` is not a directory, and it is none of ``inputs``. An existing file is
    overwritten by the caller, as with any ``-o``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give the {what} a file name")
    ensure_dir(path.absolute().parent, for_path=path)
    if path.exists():
        if not os.access(path, os.W_OK):
            raise OutputError(f"{path}: can't overwrite it (permission denied)")
        for source in inputs:
            try:
                same = os.path.samefile(path, source)
            except OSError:
                continue
            if same:
                raise OutputError(
                    f"{path}: is also an input of this command; choose another {what}"
                )
    return path
