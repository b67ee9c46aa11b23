"""Session journal → .mid, and recovery of a SIGKILLed session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mido
import pytest

from musicgend.errors import SessionError
from musicgend.io.session import (
    JOURNAL_NAME,
    META_NAME,
    MIDI_NAME,
    NS_PER_TICK,
    SessionRecorder,
    default_session_root,
    new_session_dir,
    read_journal,
    read_session_metadata,
    recover_session,
)

REPO = Path(__file__).resolve().parents[2]
MUSICGEND = [sys.executable, "-m", "musicgend"]


def recover_cli(session: Path) -> subprocess.CompletedProcess[str]:
    """``musicgend session recover SESSION`` as a user runs it."""
    return subprocess.run(
        [*MUSICGEND, "session", "recover", str(session)], capture_output=True, text=True, cwd=REPO
    )


def track_events(path: Path, name: str) -> list[tuple[float, bytes]]:
    """(time in ms since start, bytes) of every channel/sysex message on track ``name``."""
    midi = mido.MidiFile(str(path))
    (track,) = [t for t in midi.tracks if t.name == name]
    out, tick = [], 0
    for msg in track:
        tick += msg.time
        if not msg.is_meta:
            out.append((tick * NS_PER_TICK / 1e6, bytes(msg.bytes())))
    return out


def test_journal_to_mid_round_trip(tmp_path: Path) -> None:
    meta = {"model": "models/default", "settings": {"mode": "accompany", "temperature": 0.9}}
    human = [(0, b"\x90\x3c\x64"), (200, b"\x80\x3c\x40"), (400, b"\x90\x3e\x50")]
    machine = [(5, b"\x91\x30\x46"), (205, b"\x81\x30\x00"), (205, b"\xb1\x40\x00")]
    sysex = bytes([0xF0, 0x7E, 0x7F, 0x06, 0x01, 0xF7])
    with SessionRecorder(tmp_path, meta) as rec:
        t0 = rec.start_ns
        for ms, data in human:
            rec.human(data, t0 + ms * 1_000_000)
        rec.human(sysex, t0 + 300_000_000)
        rec.human(bytes([0xF8]), t0 + 310_000_000)  # clock: journal only
        for ms, data in machine:
            rec.machine(data, t0 + ms * 1_000_000)
        rec.update_metadata(model="models/other")
    session = rec.directory
    assert session is not None and session.parent == tmp_path
    assert sorted(p.name for p in session.iterdir()) == sorted([JOURNAL_NAME, MIDI_NAME, META_NAME])

    journal = read_journal(session / JOURNAL_NAME)
    assert journal.clean_end and not journal.torn_tail
    assert len(journal.events) == len(human) + len(machine) + 2

    got_human = track_events(session / MIDI_NAME, "human")
    # the last note-on is still sounding at the end: closed at the last event's time (400 ms)
    expected_human = [*human[:2], (300, sysex), human[2], (400, bytes([0x80, 62, 0]))]
    assert [d for _, d in got_human] == [d for _, d in expected_human]
    for (ms, _), (want_ms, _) in zip(got_human, expected_human, strict=True):
        assert abs(ms - want_ms) <= NS_PER_TICK / 1e6
    got_machine = track_events(session / MIDI_NAME, "machine")
    assert [d for _, d in got_machine] == [d for _, d in machine]

    stored = read_session_metadata(session / MIDI_NAME)
    assert stored["model"] == "models/other"
    assert stored["settings"] == meta["settings"]
    assert stored["start_unix_ns"] == rec.start_unix_ns
    sidecar = json.loads((session / META_NAME).read_text())
    assert sidecar["events"] == {"human": 4, "machine": 3, "skipped": 1}
    assert sidecar["clean_end"] is True and sidecar["recovered"] is False


def test_torn_last_line_is_skipped_and_flagged(tmp_path: Path) -> None:
    with SessionRecorder(directory=tmp_path / "s") as rec:
        rec.human(bytes([0x90, 60, 100]), rec.start_ns + 1000)
        rec.human(bytes([0x80, 60, 0]), rec.start_ns + 2000)
    journal_path = tmp_path / "s" / JOURNAL_NAME
    lines = journal_path.read_text().splitlines(keepends=True)[:-1]  # drop the end line
    journal_path.write_text("".join(lines) + '{"t":3000,"d":"h","b":"90')  # torn
    summary = recover_session(tmp_path / "s")
    assert summary.torn_tail and not summary.clean_end
    assert summary.human_events == 2 and summary.bad_lines == ()


def record_numbered(directory: Path, n: int) -> list[str]:
    """A real session of ``n`` human note-ons (note 30 + k at k ms) and a machine answer to
    each; returns its journal lines."""
    with SessionRecorder(directory=directory, metadata={"model": "m1"}) as rec:
        for k in range(n):
            rec.human(bytes([0x90, 30 + k, 100]), rec.start_ns + k * 1_000_000)
            rec.machine(bytes([0x91, 30 + k, 80]), rec.start_ns + k * 1_000_000 + 500_000)
    return (directory / JOURNAL_NAME).read_text().splitlines(keepends=True)


def test_unreadable_middle_lines_are_skipped_and_everything_else_is_recovered(
    tmp_path: Path,
) -> None:
    session = tmp_path / "s"
    lines = record_numbered(session, 20)
    # header, 40 events, end line; damage events 3 and 9 and insert garbage after event 30
    assert len(lines) == 42
    bad = list(lines)
    bad[3] = '{"t":1,"d":"h",\n'  # a cut-off line: a JSON syntax error
    bad[9] = '{"t":8,"d":"x","b":"9030"}\n'  # valid JSON, not a valid entry
    bad.insert(31, "\x00\x00\x00garbage\n")
    (session / JOURNAL_NAME).write_text("".join(bad))
    kept = [json.loads(line) for k, line in enumerate(lines) if 0 < k < 41 and k not in (3, 9)]

    summary = recover_session(session)

    assert [n for n, _ in summary.bad_lines] == [4, 10, 32]  # 1-based line numbers
    assert "Expecting" in summary.bad_lines[0][1]
    assert "unknown direction 'x'" in summary.bad_lines[1][1]
    assert summary.clean_end and not summary.torn_tail
    assert summary.bad_lines_summary() == "3 unreadable journal lines skipped: lines 4, 10, 32"
    # every other event is in the .mid, in order
    for name, code in (("human", "h"), ("machine", "m")):
        got = [d for _, d in track_events(session / MIDI_NAME, name) if d[0] & 0xF0 == 0x90]
        want = [bytes.fromhex(e["b"]) for e in kept if e["d"] == code]
        assert got == want
    assert summary.human_events + summary.machine_events == 38
    sidecar = json.loads((session / META_NAME).read_text())
    assert sidecar["recovered"] is True
    assert sidecar["bad_lines"]["count"] == 3
    assert [b["line"] for b in sidecar["bad_lines"]["first"]] == [4, 10, 32]
    assert all(b["reason"] for b in sidecar["bad_lines"]["first"])
    assert sidecar["events"] == {"human": 18, "machine": 20, "skipped": 0}  # lines 4, 10: h


def test_many_bad_lines_are_counted_and_the_first_few_listed(tmp_path: Path) -> None:
    session = tmp_path / "s"
    lines = record_numbered(session, 30)
    bad = [
        line if k in (0, len(lines) - 1) or k % 2 else "[1, 2]\n" for k, line in enumerate(lines)
    ]
    (session / JOURNAL_NAME).write_text("".join(bad))
    summary = recover_session(session)
    assert len(summary.bad_lines) == 30
    assert summary.human_events == 30 and summary.machine_events == 0  # odd lines are human
    assert all(reason == "not a JSON object but list" for _, reason in summary.bad_lines)
    notes = summary.bad_line_notes()
    assert notes[0] == f"skipped {session / JOURNAL_NAME}:3: not a JSON object but list"
    assert notes[-1] == "... and 25 more unreadable lines" and len(notes) == 6
    sidecar = json.loads((session / META_NAME).read_text())
    assert sidecar["bad_lines"]["count"] == 30 and len(sidecar["bad_lines"]["first"]) == 10


def test_cli_recover_reports_the_skipped_lines(tmp_path: Path) -> None:
    session = tmp_path / "s"
    lines = record_numbered(session, 3)
    bad = [*lines[:3], "{not json\n", *lines[3:-1]]  # and no end line: killed
    (session / JOURNAL_NAME).write_text("".join(bad))
    result = recover_cli(session)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(
        "no clean stop (1 unreadable journal line skipped: line 4)"
    )
    assert "3 human + 3 machine events" in result.stdout
    assert result.stderr.startswith(f"skipped {session / JOURNAL_NAME}:4: Expecting")
    assert json.loads((session / META_NAME).read_text())["bad_lines"]["count"] == 1


def test_a_bad_header_is_still_refused(tmp_path: Path) -> None:
    session = tmp_path / "s"
    lines = record_numbered(session, 2)
    (session / JOURNAL_NAME).write_text("garbage\n" + "".join(lines[1:]))
    with pytest.raises(SessionError, match=r"journal.jsonl:1: bad header"):
        recover_session(session)


def test_recover_refuses_a_directory_without_journal(tmp_path: Path) -> None:
    result = recover_cli(tmp_path)
    assert result.returncode == 1
    expected = f"error: {tmp_path}: no journal.jsonl (not a session directory?)"
    assert result.stderr.strip() == expected
    with pytest.raises(SessionError, match=r"/gone: no such directory$"):
        recover_session(tmp_path / "gone")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SessionError, match=r"/file: not a directory"):
        recover_session(tmp_path / "file")


def test_session_dirs_are_named_by_start_time_and_never_reused(tmp_path: Path) -> None:
    start_ns = 1_700_000_000_123_456_789
    first = new_session_dir(tmp_path, start_ns)
    second = new_session_dir(tmp_path, start_ns)
    assert first.name == "20231114T221320.123Z"
    assert second.name == "20231114T221320.123Z-2"
    (tmp_path / "file").write_text("x")
    with pytest.raises(SessionError, match=r"/file is not a directory$"):
        new_session_dir(tmp_path / "file" / "sessions", start_ns)


def test_default_session_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/state:{tmp_path}/other")
    assert default_session_root() == tmp_path / "state" / "sessions"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_session_root() == tmp_path / "data" / "musicgend" / "sessions"


WRITER = textwrap.dedent(
    """
    import sys, time
    from musicgend.io.session import SessionRecorder

    rec = SessionRecorder(directory=sys.argv[1], metadata={"model": "m1"}).__enter__()
    t0 = rec.start_ns
    for k in range(200):
        rec.human(bytes([0x90, 40 + k % 40, 100]), t0 + k * 10_000_000)
        rec.machine(bytes([0x80, 40 + k % 40, 0]), t0 + k * 10_000_000 + 5_000_000)
    rec.sync()
    print("synced", flush=True)
    k = 200
    while True:  # keep recording until killed
        rec.human(bytes([0x90, 40 + k % 40, 100]), t0 + k * 10_000_000)
        k += 1
        if k % 50 == 0:
            time.sleep(0.001)
    """
)


@pytest.mark.slow
def test_a_sigkilled_session_is_recovered_by_the_cli(tmp_path: Path) -> None:
    session = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(session)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "synced"
    deadline_ns = time.monotonic_ns() + 10_000_000_000
    while os.path.getsize(session / JOURNAL_NAME) < 40_000:  # more appended after sync
        assert time.monotonic_ns() < deadline_ns, "writer stalled"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()

    result = recover_cli(session)
    assert result.returncode == 0, result.stderr
    assert "no clean stop" in result.stdout

    human = track_events(session / MIDI_NAME, "human")
    machine = track_events(session / MIDI_NAME, "machine")
    # everything synced before the kill is there, and what followed is a gap-free prefix
    assert len(machine) == 200
    assert [d for _, d in machine] == [bytes([0x80, 40 + k % 40, 0]) for k in range(200)]
    n_on = sum(1 for _, d in human if d[0] == 0x90)
    assert n_on > 200
    ons = [d for _, d in human if d[0] == 0x90]
    assert ons == [bytes([0x90, 40 + k % 40, 100]) for k in range(n_on)]
    times = [t_ms for t_ms, d in human if d[0] == 0x90]
    assert all(abs(ms - 10 * k) <= NS_PER_TICK / 1e6 for k, ms in enumerate(times))
    assert read_session_metadata(session / MIDI_NAME)["model"] == "m1"
    assert json.loads((session / META_NAME).read_text())["recovered"] is True
