"""Session logs: an append-only journal written as events happen, and a .mid on stop.

Each session is its own directory (named by its UTC start time) under the session root
(:func:`default_session_root`: ``$STATE_DIRECTORY/sessions`` under systemd, else the
platform's user data dir). It holds:

- ``journal.jsonl``: one JSON object per line. Line 1 is the header
  (``{"musicgend_session": 1, "start_unix_ns", "start_utc", "metadata"}``); then one line per
  MIDI event ``{"t": ns since session start, "d": "h"|"m", "b": "<hex bytes>"}`` (h = human,
  m = machine), ``{"t", "meta": {...}}`` for metadata updates, and ``{"t", "end": true}``
  after a clean stop.
- ``session.mid`` (written atomically on stop, or by :func:`recover_session`): type 1,
  120 BPM, 960 ticks per beat (one tick ≈ 0.52 ms); track 0 holds the tempo, a text event
  ``musicgend-session {json}`` with the start time and metadata, and a marker with the start
  time; track 1 is ``human``, track 2 ``machine``. System common/real-time messages stay in
  the journal only (a .mid can't hold them). Notes still sounding at the end are closed at
  the last event's time.
- ``session.json``: the same metadata plus counts, ``torn_tail`` and ``bad_lines`` (how many
  unreadable lines were skipped, the first ten with line number and reason), written
  atomically next to the .mid.

**Flush policy.** :meth:`SessionRecorder.record` only puts the event on an in-memory queue
(the event loop never waits for the disk). A writer thread takes everything queued, writes
it, and ``flush()``es it to the OS before it waits again, so a SIGKILL of the daemon loses
only events recorded in the last moments that the writer had not yet taken (normally none:
the writer wakes on each event). ``os.fsync`` runs at most every ``fsync_interval_s``
(default 1 s) while events arrive, and at stop: a power cut loses at most the last
``fsync_interval_s`` of events. :func:`read_journal` keeps every readable line: a torn last
line is skipped and flagged, and an unreadable line elsewhere (a damaged disk block) is
skipped and listed with its line number and reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from musicgend.errors import SessionError
from musicgend.text import count

log = logging.getLogger(__name__)

JOURNAL_NAME = "journal.jsonl"
MIDI_NAME = "session.mid"
META_NAME = "session.json"
FORMAT_VERSION = 1
TICKS_PER_BEAT = 960
TEMPO_US_PER_BEAT = 500_000  # 120 BPM
NS_PER_TICK = TEMPO_US_PER_BEAT * 1000 / TICKS_PER_BEAT
TEXT_PREFIX = "musicgend-session "
BAD_LINES_KEPT = 10  # unreadable journal lines listed (number, reason) in session.json

Direction = Literal["human", "machine"]
_CODE: dict[str, Direction] = {"h": "human", "m": "machine"}
_DIR_CODE: dict[Direction, str] = {"human": "h", "machine": "m"}


@dataclass(frozen=True, slots=True)
class JournalEvent:
    """One MIDI event of a session: ``t_ns`` since the session start, who, raw bytes."""

    t_ns: int
    direction: Direction
    data: bytes


@dataclass(slots=True)
class Journal:
    """A journal as read back: header values, events in file order, and how it ended."""

    path: Path
    start_unix_ns: int
    start_utc: str
    metadata: dict[str, Any]
    events: list[JournalEvent] = field(default_factory=list)
    clean_end: bool = False  # the "end" line was written (clean stop)
    torn_tail: bool = False  # the last line was incomplete and was skipped
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    """Other lines that could not be read and were skipped: (line number, reason)."""


def default_session_root() -> Path:
    """``$STATE_DIRECTORY/sessions`` under systemd (first entry if several), else
    ``<platform user data dir>/musicgend/sessions``."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0]) / "sessions"
    import platformdirs

    return platformdirs.user_data_path("musicgend") / "sessions"


def _utc(unix_ns: int) -> datetime:
    return datetime.fromtimestamp(unix_ns / 1e9, tz=UTC)


def new_session_dir(root: Path, start_unix_ns: int) -> Path:
    """Create and return ``root/<YYYYmmddTHHMMSS.mmmZ>`` (``-2``, ``-3``… if taken)."""
    stamp = _utc(start_unix_ns).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror
        with contextlib.suppress(OSError):
            in_the_way = next(p for p in (root, *root.parents) if p.exists())
            if not in_the_way.is_dir():
                reason = f"{in_the_way} is not a directory"
        raise SessionError(f"can't create session root {root}: {reason}") from exc
    for n in range(1, 1000):
        path = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise SessionError(f"can't create session directory {path}: {exc.strerror}") from exc
        return path
    raise SessionError(f"can't create a session directory for {stamp} in {root}")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise SessionError(f"can't write {path}: {exc.strerror or exc}") from exc
    _fsync_dir(path.parent)


# -- recorder -----------------------------------------------------------------------------

_STOP = object()


class SessionRecorder:
    """Journals one session and writes its .mid on close.

    ``with SessionRecorder(root, {"model": ..., "settings": ...}) as rec:`` creates the
    session directory and the journal header (fsynced); ``rec.record("human", data, t_ns)``
    with ``t_ns`` on the ``time.monotonic_ns()`` clock (an :class:`~musicgend.io.midi.InputEvent`
    ``arrival_ns``, or the time a machine message was meant to sound); on exit the writer is
    drained, the journal fsynced and closed, ``session.mid`` and ``session.json`` written
    atomically. ``record`` never blocks and never raises; a writer failure is raised as
    :class:`~musicgend.errors.SessionError` from :meth:`close`.
    """

    def __init__(
        self,
        root: Path | str | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        directory: Path | str | None = None,
        fsync_interval_s: float = 1.0,
    ) -> None:
        self.root = Path(root) if root is not None else default_session_root()
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._directory = Path(directory) if directory is not None else None
        self.fsync_interval_s = fsync_interval_s
        self.start_ns = 0  # monotonic clock
        self.start_unix_ns = 0
        self.directory: Path | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closed = False
        self.recorded = 0  # MIDI events handed to record()
        self._queued = 0  # entries queued (events + metadata updates); caller's thread
        self._flushed = 0  # entries flushed to the OS; writer thread
        self._flushed_cond = threading.Condition()
        self.midi_path: Path | None = None

    @property
    def journal_path(self) -> Path:
        if self.directory is None:
            raise SessionError("session not started")
        return self.directory / JOURNAL_NAME

    def start(self) -> Path:
        """Create the directory and journal header; start the writer. Returns the directory."""
        self.start_ns = time.monotonic_ns()
        self.start_unix_ns = time.time_ns()
        if self._directory is not None:
            self.directory = self._directory
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SessionError(f"can't create {self.directory}: {exc.strerror}") from exc
        else:
            self.directory = new_session_dir(self.root, self.start_unix_ns)
        header = {
            "musicgend_session": FORMAT_VERSION,
            "start_unix_ns": self.start_unix_ns,
            "start_utc": _utc(self.start_unix_ns).isoformat(timespec="milliseconds"),
            "metadata": self.metadata,
        }
        try:
            fh = open(self.journal_path, "x", encoding="utf-8")  # noqa: SIM115 (writer thread owns it)
            fh.write(json.dumps(header, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        except OSError as exc:
            raise SessionError(f"can't create journal {self.journal_path}: {exc}") from exc
        _fsync_dir(self.directory)
        self._thread = threading.Thread(
            target=self._writer, args=(fh,), name="session-writer", daemon=True
        )
        self._thread.start()
        return self.directory

    def record(self, direction: Direction, data: bytes, t_ns: int) -> None:
        """Journal one event (``t_ns``: ``time.monotonic_ns()`` clock). Never blocks."""
        if self._closed:
            return
        self._queue.put((t_ns - self.start_ns, _DIR_CODE[direction], bytes(data)))
        self.recorded += 1
        self._queued += 1

    def human(self, data: bytes, t_ns: int) -> None:
        self.record("human", data, t_ns)

    def machine(self, data: bytes, t_ns: int) -> None:
        self.record("machine", data, t_ns)

    def update_metadata(self, **values: Any) -> None:
        """Merge ``values`` into the metadata (e.g. after a model swap) and journal them."""
        self.metadata.update(values)
        if not self._closed:
            self._queue.put(("meta", time.monotonic_ns() - self.start_ns, dict(values)))
            self._queued += 1

    def sync(self, timeout_s: float = 5.0) -> bool:
        """Block until everything recorded so far is flushed to the OS (it then survives a
        SIGKILL). Not for the event loop; for tests and shutdown paths. False on timeout."""
        target = self._queued
        with self._flushed_cond:
            return self._flushed_cond.wait_for(lambda: self._flushed >= target, timeout_s)

    def _writer(self, fh: Any) -> None:
        last_sync_ns = time.monotonic_ns()
        dirty = False
        interval_ns = int(self.fsync_interval_s * 1e9)
        stop = False
        try:
            while not stop:
                try:
                    item = self._queue.get(timeout=self.fsync_interval_s if dirty else None)
                except queue.Empty:
                    item = None
                batch = [] if item is None else [item]
                while True:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                lines = []
                for entry in batch:
                    if entry is _STOP:
                        stop = True
                    elif entry[0] == "meta":
                        lines.append(json.dumps({"t": entry[1], "meta": entry[2]}, default=str))
                    else:
                        t_ns, code, data = entry
                        lines.append(f'{{"t":{t_ns},"d":"{code}","b":"{data.hex()}"}}')
                if lines:
                    fh.write("\n".join(lines) + "\n")
                    fh.flush()
                    dirty = True
                    with self._flushed_cond:
                        self._flushed += len(lines)
                        self._flushed_cond.notify_all()
                now_ns = time.monotonic_ns()
                if dirty and (stop or now_ns - last_sync_ns >= interval_ns):
                    os.fsync(fh.fileno())
                    last_sync_ns = now_ns
                    dirty = False
            end = {"t": time.monotonic_ns() - self.start_ns, "end": True}
            fh.write(json.dumps(end) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        except BaseException as exc:
            self._error = exc
            log.error("session journal %s: writer failed: %s", self.journal_path, exc)
        finally:
            fh.close()

    def close(self) -> Path | None:
        """Drain and close the journal, write ``session.mid`` and ``session.json``
        atomically. Returns the .mid path. Idempotent."""
        if self._closed:
            return self.midi_path
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise SessionError(f"session journal {self.journal_path}: {self._error}")
        if self.directory is None:
            return None
        summary = _finalize(self.directory, recovered=False)
        if summary.bad_lines:
            log.warning("session journal %s: %s", self.journal_path, summary.bad_lines_summary())
        self.midi_path = summary.midi_path
        return self.midi_path

    def __enter__(self) -> SessionRecorder:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- reading and writing ------------------------------------------------------------------


def _parse_line(line: bytes) -> JournalEvent | dict[str, Any] | None:
    """One journal line: an event, a metadata update (a dict) or ``None`` (the end line).
    Raises :class:`ValueError` (or ``KeyError``, ``TypeError``, ``OverflowError``) with the
    reason for a line that is not a valid entry."""
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object but {type(obj).__name__}")
    if "b" in obj:
        code = obj.get("d")
        if not isinstance(code, str) or code not in _CODE:
            raise ValueError(f"unknown direction {str(code)[:20]!r}")
        return JournalEvent(int(obj["t"]), _CODE[code], bytes.fromhex(obj["b"]))
    if "meta" in obj:
        if not isinstance(obj["meta"], dict):
            raise ValueError("'meta' is not a JSON object")
        return obj["meta"]
    if obj.get("end"):
        return None
    raise ValueError("unknown entry")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} field"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def read_journal(path: Path | str) -> Journal:
    """Read a journal. Every readable line is kept. A torn (incomplete) last line is
    skipped and flagged (``torn_tail``); any other unreadable line is skipped and listed in
    ``bad_lines`` with its number and reason. A missing or bad header raises
    :class:`~musicgend.errors.SessionError` (without it there is no start time)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SessionError(f"{path}: can't read journal: {exc.strerror or exc}") from exc
    lines = raw.split(b"\n")
    # the text after the last newline is a torn line unless empty
    complete, tail = lines[:-1], lines[-1]
    torn = bool(tail.strip())
    if not complete:
        raise SessionError(f"{path}: no complete header line (empty or torn journal)")
    try:
        header = json.loads(complete[0])
        if not isinstance(header, dict) or header.get("musicgend_session") != FORMAT_VERSION:
            raise ValueError("not a musicgend session journal (version 1)")
        journal = Journal(
            path=path,
            start_unix_ns=int(header["start_unix_ns"]),
            start_utc=str(header["start_utc"]),
            metadata=dict(header.get("metadata") or {}),
            torn_tail=torn,
        )
        _utc(journal.start_unix_ns)  # a start time a date can hold
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError, OSError) as exc:
        raise SessionError(f"{path}:1: bad header: {_reason(exc)}") from exc
    for lineno, line in enumerate(complete[1:], start=2):
        if not line.strip():
            continue
        try:
            entry = _parse_line(line)
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
            if lineno == len(complete) and not torn:
                # the last line is damaged (e.g. zero-filled after a power cut): torn tail
                journal.torn_tail = True
                break
            journal.bad_lines.append((lineno, _reason(exc)))
            continue
        if isinstance(entry, JournalEvent):
            journal.events.append(entry)
        elif entry is not None:
            journal.metadata.update(entry)
        else:
            journal.clean_end = True
    return journal


def _track(name: str, events: Iterable[JournalEvent], end_tick: int) -> tuple[Any, int, int]:
    """A mido track from events (sorted by time), notes still sounding closed at
    ``end_tick``; returns (track, written, skipped)."""
    import mido

    track = mido.MidiTrack()
    track.append(mido.MetaMessage("track_name", name=name, time=0))
    sounding: dict[tuple[int, int], int] = {}
    prev_tick = 0
    last_tick = end_tick
    written = skipped = 0
    for event in sorted(events, key=lambda e: e.t_ns):
        tick = max(0, round(event.t_ns / NS_PER_TICK))
        last_tick = max(last_tick, tick)
        status = event.data[0] if event.data else 0
        if status >= 0xF1 or status < 0x80:  # system common/real-time or garbage
            skipped += 1
            continue
        try:
            msg = mido.Message.from_bytes(list(event.data))
        except (ValueError, TypeError):
            skipped += 1
            continue
        if msg.type == "note_on" and msg.velocity > 0:
            sounding[(msg.channel, msg.note)] = sounding.get((msg.channel, msg.note), 0) + 1
        elif msg.type in ("note_on", "note_off"):
            key = (msg.channel, msg.note)
            if sounding.get(key):
                sounding[key] -= 1
        track.append(msg.copy(time=tick - prev_tick))
        prev_tick = tick
        written += 1
    for (channel, note), n_on in sorted(sounding.items()):
        for _ in range(n_on):
            track.append(
                mido.Message(
                    "note_off", channel=channel, note=note, velocity=0, time=last_tick - prev_tick
                )
            )
            prev_tick = last_tick
    track.append(mido.MetaMessage("end_of_track", time=max(0, last_tick - prev_tick)))
    return track, written, skipped


def write_session_midi(path: Path | str, journal: Journal) -> dict[str, int]:
    """Write ``journal`` as a two-track .mid (atomically). Returns event counts."""
    payload, counts = session_midi_bytes(journal)
    _atomic_write(Path(path), payload)
    return counts


def session_midi_bytes(journal: Journal) -> tuple[bytes, dict[str, int]]:
    """``journal`` as the bytes of its two-track .mid (nothing written), and event counts."""
    import io

    import mido

    start = _utc(journal.start_unix_ns).isoformat(timespec="milliseconds")
    info = {"start_utc": start, "start_unix_ns": journal.start_unix_ns, **journal.metadata}
    conductor = mido.MidiTrack()
    conductor.append(mido.MetaMessage("track_name", name="musicgend session", time=0))
    conductor.append(mido.MetaMessage("set_tempo", tempo=TEMPO_US_PER_BEAT, time=0))
    conductor.append(mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0))
    text = TEXT_PREFIX + json.dumps(info, default=str, ensure_ascii=True, sort_keys=True)
    conductor.append(mido.MetaMessage("text", text=text, time=0))
    conductor.append(mido.MetaMessage("marker", text=f"start {start}", time=0))
    conductor.append(mido.MetaMessage("end_of_track", time=0))
    end_tick = max((round(e.t_ns / NS_PER_TICK) for e in journal.events), default=0)
    human, h_written, h_skipped = _track(
        "human", (e for e in journal.events if e.direction == "human"), end_tick
    )
    machine, m_written, m_skipped = _track(
        "machine", (e for e in journal.events if e.direction == "machine"), end_tick
    )
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    midi.tracks.extend([conductor, human, machine])
    buf = io.BytesIO()
    midi.save(file=buf)
    return buf.getvalue(), {
        "human": h_written,
        "machine": m_written,
        "skipped": h_skipped + m_skipped,
    }


def read_session_metadata(midi_path: Path | str) -> dict[str, Any]:
    """The metadata JSON stored in a session .mid's conductor text event."""
    import mido

    midi = mido.MidiFile(str(midi_path))
    for msg in midi.tracks[0]:
        if msg.type == "text" and msg.text.startswith(TEXT_PREFIX):
            result: dict[str, Any] = json.loads(msg.text[len(TEXT_PREFIX) :])
            return result
    raise SessionError(f"{midi_path}: no musicgend session metadata")


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """What :func:`finalize_session` / :func:`recover_session` wrote."""

    directory: Path
    midi_path: Path
    human_events: int
    machine_events: int
    skipped_events: int
    clean_end: bool
    torn_tail: bool
    duration_s: float
    bad_lines: tuple[tuple[int, str], ...] = ()
    """Unreadable journal lines that were skipped (not the torn last line): (number, reason)."""

    def bad_lines_summary(self, first: int = 5) -> str:
        """``"2 unreadable journal lines skipped: lines 4, 9"``: the count, the first few."""
        return bad_lines_summary(self.bad_lines, first)

    def bad_line_notes(self, first: int = 5) -> list[str]:
        """One line per skipped journal line (the first ``first``, then how many more)."""
        notes = [
            f"skipped {self.directory / JOURNAL_NAME}:{n}: {reason}"
            for n, reason in self.bad_lines[:first]
        ]
        if len(self.bad_lines) > first:
            more = count(len(self.bad_lines) - first, "more unreadable line")
            notes.append(f"... and {more}")
        return notes


def bad_lines_summary(bad: Sequence[tuple[int, str]], first: int = 5) -> str:
    """How many unreadable journal lines were skipped, and the numbers of the first few."""
    numbers = ", ".join(str(n) for n, _ in bad[:first]) + (", ..." if len(bad) > first else "")
    lines = "lines" if len(bad) != 1 else "line"
    return f"{count(len(bad), 'unreadable journal line')} skipped: {lines} {numbers}"


def _finalize(directory: Path, recovered: bool) -> SessionSummary:
    journal = read_journal(directory / JOURNAL_NAME)
    midi_path = directory / MIDI_NAME
    counts = write_session_midi(midi_path, journal)
    duration_s = max((e.t_ns for e in journal.events), default=0) / 1e9
    sidecar = {
        "start_utc": journal.start_utc,
        "start_unix_ns": journal.start_unix_ns,
        "metadata": journal.metadata,
        "events": counts,
        "duration_s": round(duration_s, 6),
        "clean_end": journal.clean_end,
        "recovered": recovered,
        "torn_tail": journal.torn_tail,
        "bad_lines": {
            "count": len(journal.bad_lines),
            "first": [
                {"line": n, "reason": reason} for n, reason in journal.bad_lines[:BAD_LINES_KEPT]
            ],
        },
    }
    payload = json.dumps(sidecar, indent=2, default=str, sort_keys=True) + "\n"
    _atomic_write(directory / META_NAME, payload.encode())
    return SessionSummary(
        directory,
        midi_path,
        counts["human"],
        counts["machine"],
        counts["skipped"],
        journal.clean_end,
        journal.torn_tail,
        duration_s,
        tuple(journal.bad_lines),
    )


def finalize_session(directory: Path | str) -> Path:
    """Write ``session.mid`` + ``session.json`` from the journal (used on a clean stop)."""
    return _finalize(Path(directory), recovered=False).midi_path


def recover_session(directory: Path | str) -> SessionSummary:
    """Rebuild ``session.mid`` + ``session.json`` from the journal of a session that was
    killed (or any session). Every readable journal line is kept; a torn last line and
    unreadable lines elsewhere are skipped and reported in the summary and the sidecar."""
    directory = Path(directory)
    if not directory.exists():
        raise SessionError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise SessionError(f"{directory}: not a directory (give the session's directory)")
    if not (directory / JOURNAL_NAME).is_file():
        raise SessionError(f"{directory}: no {JOURNAL_NAME} (not a session directory?)")
    return _finalize(directory, recovered=True)
