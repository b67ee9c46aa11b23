"""Progress reporting: a rich progress bar on a TTY, one plain line per step otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO


class Progress(Protocol):
    def advance(self, message: str = "") -> None: ...


class _PlainProgress:
    def __init__(self, total: int, description: str, stream: TextIO) -> None:
        self.total, self.description, self.stream, self.done = total, description, stream, 0

    def advance(self, message: str = "") -> None:
        self.done += 1
        line = f"{self.description} {self.done}/{self.total}"
        if message:
            line += f" {message}"
        print(line, file=self.stream, flush=True)


class _RichProgress:
    def __init__(self, bar, task_id) -> None:
        self.bar, self.task_id = bar, task_id

    def advance(self, message: str = "") -> None:
        self.bar.update(self.task_id, advance=1, status=message)


def is_tty(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def progress(
    total: int, description: str, stream: TextIO | None = None, plain_every: int = 1
) -> Iterator[Progress]:
    """A progress reporter: a bar on a TTY, plain lines (every ``plain_every`` steps) else."""
    stream = stream or sys.stderr
    if is_tty(stream):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        with RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(file=stream),
            transient=False,
        ) as bar:
            yield _RichProgress(bar, bar.add_task(description, total=total, status=""))
        return
    plain = _PlainProgress(total, description, stream)
    if plain_every <= 1:
        yield plain
        return

    class _Every:
        def advance(self, message: str = "") -> None:
            plain.done += 1
            if plain.done % plain_every == 0 or plain.done == total:
                plain.done -= 1
                plain.advance(message)

    yield _Every()
