"""Checks on the files and directories a command is about to write, made before the work
starts: a long run must not end in a traceback because its output can't be written, and no
command writes over one of its own inputs. Short commands' checks create nothing (one that
fails later leaves no empty directory behind; the writers create what is missing); long
runs create their results directory at the start."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from musicgend.errors import OutputError


def check_dir(
    path: str | Path,
    what: str = "directory",
    *,
    for_path: Path | None = None,
    create: bool = False,
) -> Path:
    """Check that ``path`` is, or can be created as, a directory this process can write in:
    its nearest existing ancestor must be a writable directory. ``create``: make it now (for
    the results of long runs, which must not fail at the end). Errors name ``for_path`` (the
    file to be written in it) when given, else ``path``."""
    path = Path(path).absolute()
    name = for_path if for_path is not None else path
    ancestor = next(p for p in (path, *path.parents) if p.exists())
    if not ancestor.is_dir():
        where = f"{name}: " if Path(name).absolute() != ancestor else ""
        raise OutputError(f"{where}{ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        verb = "write in" if ancestor == path else f"create the {what} {path} in"
        raise OutputError(f"{name}: can't {verb} {ancestor} (permission denied)")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OutputError(f"{name}: can't create the {what} {path} ({reason})") from None
    return path


def check_output_file(
    path: str | Path,
    *,
    inputs: Iterable[str | Path] = (),
    what: str = "output",
    create_dir: bool = False,
) -> Path:
    """Check that ``path`` can be written: its directory exists or can be created and is
    writable, ``path`` is not a directory, and it is none of ``inputs``. An existing file is
    replaced by the caller, as with any ``-o``. ``create_dir``: make its directory now (the
    file of a long run, written at its end; see :func:`check_dir`)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give the {what} a file name")
    check_dir(path.absolute().parent, for_path=path, create=create_dir)
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
