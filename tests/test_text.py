"""Numbers with their nouns in messages."""

from __future__ import annotations

from musicgend.text import count, none_could_be_read


def test_count_puts_the_noun_in_the_right_number():
    assert [count(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]
    assert count(1, "index", "indices") == "1 index"
    assert count(3, "index", "indices") == "3 indices"


def test_none_could_be_read_for_one_file_and_for_several():
    assert (
        none_could_be_read(1, "a.mid: empty file")
        == "the only file can't be read (a.mid: empty file)"
    )
    assert (
        none_could_be_read(2, "a.mid: empty file", "MIDI file", " under d")
        == "none of the 2 MIDI files under d could be read (first: a.mid: empty file)"
    )
