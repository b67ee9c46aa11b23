"""Small helpers for the messages people read."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` with its noun in the right number: ``1 file``, ``3 files``, ``0 pieces``."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def none_could_be_read(n: int, first: str, noun: str = "file", where: str = "") -> str:
    """Why nothing was read from ``n`` >= 1 files, ``first`` naming the first failure:
    ``the only file can't be read (PATH: reason)``, or
    ``none of the 3 files could be read (first: PATH: reason)``; ``where`` (`` under DIR``)
    follows the noun."""
    if n == 1:
        return f"the only {noun}{where} can't be read ({first})"
    return f"none of the {count(n, noun)}{where} could be read (first: {first})"
