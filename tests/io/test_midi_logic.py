"""Pure logic of the MIDI layer: message validation, echo guard, config checks."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from musicgend.errors import MidiPortError
from musicgend.io import midi
from musicgend.io.midi import (
    Check,
    EchoGuard,
    MidiPorts,
    PortConfig,
    WrittenNotes,
    check_message,
)

VALID = [
    b"\x90\x3c\x64",  # note-on
    b"\x80\x3c\x00",  # note-off
    b"\xa0\x3c\x10",  # poly aftertouch
    b"\xbf\x40\x7f",  # CC64 channel 16
    b"\xc5\x07",  # program change
    b"\xd0\x40",  # channel pressure
    b"\xe0\x00\x40",  # pitch bend
    b"\xf0\x7e\x7f\x06\x01\xf7",  # sysex
    b"\xf1\x10",  # MTC quarter frame
    b"\xf2\x00\x10",  # song position
    b"\xf3\x01",  # song select
    b"\xf6",  # tune request
    b"\xf8",  # clock
    b"\xfa",  # start
    b"\xfb",  # continue
    b"\xfc",  # stop
    b"\xfe",  # active sensing
    b"\xff",  # reset
]
MALFORMED = [
    b"",
    b"\x3c\x64",  # running status (no status byte)
    b"\x90\x3c",  # truncated
    b"\x90\x3c\x64\x3c\x64",  # two messages sharing a status byte
    b"\xc0\x01\x02",  # program change too long
    b"\xf4",  # undefined
    b"\xf5",
    b"\xf9",
    b"\xfd",
    b"\xf7",  # stray end of sysex
    b"\x90\x80\x10",  # status among data bytes
    b"\xf0\x01\x02",  # unterminated sysex
    b"\xf0\x01\x90\xf7",  # status inside sysex
    b"\xf8\xf8",  # real-time with extra byte
]


@pytest.mark.parametrize("data", VALID, ids=lambda d: d.hex())
def test_valid_messages_pass(data: bytes) -> None:
    assert check_message(data) is Check.OK


@pytest.mark.parametrize("data", MALFORMED, ids=lambda d: d.hex() or "empty")
def test_malformed_messages_are_rejected(data: bytes) -> None:
    assert check_message(data) is Check.MALFORMED


def test_sysex_size_limit_counts_both_ends() -> None:
    sysex = bytes([0xF0, *range(14), 0xF7])  # 16 bytes
    assert check_message(sysex, max_sysex_bytes=16) is Check.OK
    assert check_message(sysex, max_sysex_bytes=15) is Check.SYSEX_TOO_LARGE


@given(st.binary(max_size=8))
def test_any_bytes_get_a_verdict_matching_mido(data: bytes) -> None:
    import mido

    verdict = check_message(data)
    if verdict is Check.OK:
        mido.Message.from_bytes(list(data))  # mido agrees it's one valid message


def test_echo_guard_matches_once_within_its_window() -> None:
    guard = EchoGuard(window_ns=30_000_000)
    guard.note_sent(b"\x90\x3c\x64", 1_000_000_000)
    assert not guard.is_echo(b"\x90\x3d\x64", 1_010_000_000)  # other bytes
    assert guard.is_echo(b"\x90\x3c\x64", 1_010_000_000)
    assert not guard.is_echo(b"\x90\x3c\x64", 1_011_000_000)  # consumed: a human repeat
    guard.note_sent(b"\x80\x3c\x00", 2_000_000_000)
    assert not guard.is_echo(b"\x80\x3c\x00", 2_040_000_000)  # too late: not an echo
    assert guard.recent() == []


def test_written_notes_reads_note_messages_as_a_synth_does() -> None:
    w = WrittenNotes()
    for data in (
        bytes([0x90, 60, 100]),
        bytes([0x90, 60, 90]),  # again: still one key on
        bytes([0x9F, 127, 1]),
        bytes([0x91, 64, 80]),
        bytes([0x91, 64, 0]),  # velocity 0 is a note-off
        bytes([0x80, 61, 0]),  # off for a key never on: counted, changes nothing
        bytes([0xB0, 123, 0]),  # all notes off is not a note-off
        bytes([0x90, 62]),  # not a note message
        bytes([0xF8]),
    ):
        w.record(data)
    assert (w.note_ons, w.note_offs, w.note_ons_while_on) == (4, 2, 1)
    assert w.sounding() == [(1, 60), (16, 127)]
    w.record(bytes([0x80, 60, 64]))
    assert w.sounding() == [(16, 127)]
    w.forget_keys()
    assert (w.sounding(), w.note_ons, w.note_offs) == ([], 4, 3)


def test_port_config_rejects_bad_values() -> None:
    with pytest.raises(MidiPortError, match=r"connect_in: invalid regular expression '\('"):
        PortConfig(connect_in="(")
    with pytest.raises(MidiPortError, match="queue_size"):
        PortConfig(queue_size=0)
    with pytest.raises(MidiPortError, match="client name"):
        PortConfig(client_name="a:b")


class _StuckSupervisorPorts(MidiPorts):
    """Ports whose supervisor thread hangs in a backend call that ignores the stop."""

    backend = "jack"

    def __init__(self) -> None:
        super().__init__(PortConfig(), asyncio.new_event_loop())
        self.release = threading.Event()
        self.backend_closed = False

    def _open(self) -> None:
        pass

    def _close_backend(self) -> None:
        self.backend_closed = True

    def _send(self, data: bytes, t_ns: int) -> None:
        pass

    def _supervise(self) -> None:
        self.release.wait()  # stands for a JACK client open that never answers

    def _connections_now(self) -> dict[str, list[str]]:
        return {"in": [], "out": []}


def test_close_does_not_wait_forever_for_a_stuck_supervisor(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(midi, "CLOSE_WAIT_S", 0.2)
    ports = _StuckSupervisorPorts()
    try:
        with ports:
            pass
        assert ports.backend_closed
        assert "did not end within" in caplog.text
        assert "in _supervise" in caplog.text  # where it hangs, from its stack
        assert not ports.connected
    finally:
        ports.release.set()
        ports._loop_arg.close()
