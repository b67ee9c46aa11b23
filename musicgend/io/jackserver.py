"""Which MIDI backend to use, and a private JACK server when there is none.

- :func:`jack_running` probes a JACK server by name (``JACK_DEFAULT_SERVER``, else "default")
  by opening a client that never starts a server.
- :func:`alsa_sequencer_present` checks for ``/dev/snd/seq``.
- :func:`resolve_backend` picks ``auto`` → running JACK → jack; ALSA sequencer → alsa; else an
  embedded JACK server with the dummy driver.
- :class:`EmbeddedJack` starts ``jackd -R -p 64 -n <unique> -d dummy`` and stops it on exit
  (also on exceptions); while it runs, ``os.environ["JACK_DEFAULT_SERVER"]`` names it, so every
  JACK client of this process (JACK-Client, python-rtmidi) uses it.

Memory: every JACK client maps the server's shared memory segment (``/dev/shm/jack-*``),
and libjack locks all of it into the client (``mlock``), so by default it counts fully in each
client's RSS. Its size grows with the server's ``--port-max``: ~38 MB fixed plus ~34 KB per
port (2048 ports by default: 102 MB; 64: 40 MB). :func:`forgo_jack_memory_lock` keeps
libjack from locking it in the daemon (``midi.lock_jack_memory``, off by default).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from musicgend.errors import MidiPortError

log = logging.getLogger(__name__)

SERVER_ENV = "JACK_DEFAULT_SERVER"
ALSA_SEQ_DEVICE = Path("/dev/snd/seq")
Backend = Literal["jack", "alsa"]
BackendRequest = Literal["auto", "jack", "alsa"]

_quiet_installed = False

# libjack is not safe against jack_client_open and jack_client_close running at the same time
# in two threads of one process (seen: a segfault in jack_client_close after a server loss).
# Every client open/close in musicgend holds this lock.
JACK_CLIENT_LOCK = threading.RLock()


class JackServerError(MidiPortError):
    """jackd is missing, won't start, or no JACK server can be reached."""


def quiet_libjack() -> None:
    """Route libjack's error/info chatter (e.g. "Cannot connect to server socket" on every
    probe) to this module's logger at debug level instead of stderr. Idempotent."""
    global _quiet_installed
    if _quiet_installed:
        return
    import jack

    jack.set_error_function(lambda msg: log.debug("libjack: %s", msg))
    jack.set_info_function(lambda msg: log.debug("libjack: %s", msg))
    _quiet_installed = True


def jack_server_name() -> str:
    """The JACK server this process talks to: ``$JACK_DEFAULT_SERVER`` or "default"."""
    return os.environ.get(SERVER_ENV) or "default"


def jack_running(server_name: str | None = None) -> bool:
    """True when a JACK server named ``server_name`` (default: :func:`jack_server_name`)
    accepts clients. Never starts a server."""
    try:
        import jack
    except OSError:  # libjack not installed
        return False
    quiet_libjack()
    name = server_name or jack_server_name()
    with JACK_CLIENT_LOCK:
        try:
            client = jack.Client(
                f"musicgend-probe-{os.getpid()}", no_start_server=True, servername=name
            )
        except jack.JackError:
            return False
        client.close()
    return True


JACK_TMP_DIR = Path("/dev/shm")  # where jackd2 on Linux puts its server socket


def jack_server_socket(server_name: str | None = None) -> Path:
    """The UNIX socket jackd2 listens on for ``server_name`` (removed on a clean exit, left
    behind by a server that was killed)."""
    name = server_name or jack_server_name()
    return JACK_TMP_DIR / f"jack_{name}_{os.getuid()}_0"


def jack_server_listening(server_name: str | None = None) -> bool:
    """True when something accepts connections on the server's socket. Unlike
    :func:`jack_running` this opens no JACK client, so it cannot get caught in the handshake
    of a server that is shutting down; a socket left by a killed server refuses at once."""
    import socket

    path = jack_server_socket(server_name)
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def alsa_sequencer_present(device: Path = ALSA_SEQ_DEVICE) -> bool:
    """True when the ALSA sequencer device exists and is readable and writable."""
    return device.exists() and os.access(device, os.R_OK | os.W_OK)


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """The backend to open ports on; ``embedded`` means: start :class:`EmbeddedJack` first."""

    backend: Backend
    embedded: bool
    reason: str


def resolve_backend(requested: BackendRequest = "auto") -> BackendChoice:
    """``auto``: a running JACK server → jack; else an ALSA sequencer → alsa; else an embedded
    JACK server (dummy driver). ``jack`` with no server running also means embedded.
    ``alsa`` without a sequencer raises :class:`~musicgend.errors.MidiPortError`."""
    if requested == "alsa":
        if not alsa_sequencer_present():
            raise MidiPortError(f"backend alsa: {ALSA_SEQ_DEVICE} does not exist or is not usable")
        return BackendChoice("alsa", False, "requested")
    if requested not in ("auto", "jack"):
        raise MidiPortError(f"unknown backend {requested!r}; choose auto, jack or alsa")
    server = jack_server_name()
    if jack_running(server):
        return BackendChoice("jack", False, f"JACK server {server!r} is running")
    if requested == "auto" and alsa_sequencer_present():
        return BackendChoice("alsa", False, f"no JACK server; {ALSA_SEQ_DEVICE} present")
    return BackendChoice("jack", True, f"no JACK server {server!r} running; starting a private one")


MEMLOCK_LIMIT_BYTES = 8 << 20
"""Soft ``RLIMIT_MEMLOCK`` of a daemon that forgoes the lock: libjack's small segments (the
engine's and the client's control blocks, some KB) still fit; the server's graph segment
(≥ 38 MB) doesn't. 8 MiB is also the kernel's default for users."""
CAP_IPC_LOCK = 14
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_effective_capability(cap: int) -> bool:
    """Clear ``cap`` from the calling thread's effective capabilities (capget/capset(2));
    it stays permitted. True if it was effective and now isn't."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        capget, capset = libc.capget, libc.capset
    except (AttributeError, OSError):
        return False
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if capget(ctypes.byref(header), data) != 0:
        return False
    word, bit = divmod(cap, 32)
    if not data[word].effective & (1 << bit):
        return False
    data[word].effective &= ~(1 << bit) & 0xFFFFFFFF
    return bool(capset(ctypes.byref(header), data) == 0)


def forgo_jack_memory_lock() -> str:
    """Keep libjack from locking the JACK server's shared memory into this process.

    libjack ``mlock``s every segment of the server it attaches to, the graph with every
    port's buffer included (see the module docstring), so that its pages are resident and
    mapped before the process callback first touches them. jackd owns those pages and keeps
    them locked itself; in a client the lock only maps all of them, and they count in its
    RSS. Without it the process maps the pages it uses (its own ports' buffers, the graph's
    state), each on first use, at a minor page fault's cost (~1 µs; the page is resident),
    once. libjack logs "Cannot lock down ... memory area" (at debug level here) and carries
    on, as it does for every user without a memlock allowance.

    Lowers the soft ``RLIMIT_MEMLOCK`` to :data:`MEMLOCK_LIMIT_BYTES` at most and drops
    ``CAP_IPC_LOCK`` (with which root ignores the limit) from the calling thread's effective
    capabilities; threads it starts later inherit that, and a program it executes gets its
    capabilities anew. Call it in the main thread, after any private server started (which
    inherits the limit otherwise) and before the clients that stay open. Returns what it
    did, for the log."""
    import resource

    done = []
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY or soft > MEMLOCK_LIMIT_BYTES:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (MEMLOCK_LIMIT_BYTES, hard))
            done.append(f"memlock limit {MEMLOCK_LIMIT_BYTES >> 20} MiB")
    if _drop_effective_capability(CAP_IPC_LOCK):
        done.append("CAP_IPC_LOCK dropped")
    return ", ".join(done) or "nothing to change"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: jackd ends if we are SIGKILLed


DEFAULT_PORT_MAX = 64
"""``jackd --port-max`` of an embedded server: the daemon's 2 ports, the dummy driver's 4
audio ports and room for a dozen clients (a keyboard, a DAW, a synthesizer, tests)."""


class EmbeddedJack:
    """A private ``jackd -d dummy`` server for this process.

    ``realtime`` asks for ``jackd -R`` (its cycle thread under SCHED_FIFO, as a studio runs
    it); where jackd fails to start that way it is started once more with ``-r``
    (:attr:`realtime` then says False). ``port_max`` bounds the ports (and the shared memory
    every client maps, see the module docstring); None keeps jackd's default.

    ``with EmbeddedJack() as server:`` starts it, waits until it accepts clients (at most
    ``start_timeout_s``), and sets ``os.environ["JACK_DEFAULT_SERVER"] = server.name``; exit
    stops it (SIGTERM, then SIGKILL after ``stop_timeout_s``) and restores the environment.
    :meth:`stop` and :meth:`start` may also be called in between (tests restart the server
    under the same name). On Linux the server gets SIGTERM if this process dies, so a
    SIGKILLed daemon leaves no server behind.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        rate_hz: int = 48000,
        period_frames: int = 256,
        jackd: str = "jackd",
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
        set_environment: bool = True,
        realtime: bool = True,
        port_max: int | None = DEFAULT_PORT_MAX,
    ) -> None:
        self.name = name or f"musicgend-{os.getpid()}-{secrets.token_hex(3)}"
        self.rate_hz = rate_hz
        self.period_frames = period_frames
        self.jackd = jackd
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.set_environment = set_environment
        self.realtime = realtime
        self.port_max = port_max
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: tempfile._TemporaryFileWrapper[bytes] | None = None
        self._saved_env: str | None = None
        self._env_set = False

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        server_options = ["-R" if self.realtime else "-r"]
        if self.port_max is not None:
            server_options += ["-p", str(self.port_max)]
        return [
            self.jackd,
            *server_options,
            "-n",
            self.name,
            "-d",
            "dummy",
            "-r",
            str(self.rate_hz),
            "-p",
            str(self.period_frames),
        ]

    def start(self) -> None:
        """Start the server and wait until it accepts clients."""
        if self.running:
            return
        try:
            self._start()
        except JackServerError as exc:
            if (
                not self.realtime
                or "not found on PATH" in str(exc)
                or "already running" in str(exc)
            ):
                raise
            log.info("jackd -R failed (%s); starting it without real-time scheduling", exc)
            self.realtime = False
            self._start()

    def _start(self) -> None:
        exe = shutil.which(self.jackd)
        if exe is None:
            raise JackServerError(
                f"{self.jackd!r} not found on PATH: install JACK 2 (Debian: apt install jackd2) "
                "or use --backend alsa"
            )
        if jack_running(self.name):
            raise JackServerError(f"a JACK server named {self.name!r} is already running")
        env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1")
        env.pop("JACK_NO_START_SERVER", None)
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (lives as long as jackd)
            prefix="musicgend-jackd-", suffix=".log"
        )
        cmd = self.command()
        cmd[0] = exe
        # jackd gets SIGTERM when this process dies (PR_SET_PDEATHSIG): via setpriv where
        # present (nothing runs between fork and exec), else a prctl in preexec_fn.
        setpriv = shutil.which("setpriv")
        launch = [setpriv, "--pdeathsig", "TERM", *cmd] if setpriv else cmd
        self._proc = subprocess.Popen(
            launch,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=None if setpriv else _die_with_parent,
            # not in the terminal's process group: Ctrl-C or a hang-up stops the daemon,
            # which stops this server after its last note-offs
            start_new_session=True,
        )
        deadline_ns = time.monotonic_ns() + int(self.start_timeout_s * 1e9)
        while not jack_running(self.name):
            if self._proc.poll() is not None:
                output = self._log_tail()
                self._cleanup()
                hint = ""
                if "Too many servers" in output:
                    hint = (
                        " (the JACK registry in /dev/shm holds 8 servers; servers killed with "
                        "SIGKILL stay listed: with no JACK server running, remove "
                        "/dev/shm/jack-shm-registry)"
                    )
                raise JackServerError(
                    f"jackd exited with code {self._proc.returncode} while starting "
                    f"({' '.join(cmd)}): {output}{hint}"
                )
            if time.monotonic_ns() > deadline_ns:
                output = self._log_tail()
                self.stop()
                raise JackServerError(
                    f"jackd did not accept clients within {self.start_timeout_s:g} s "
                    f"({' '.join(cmd)}): {output}"
                )
            time.sleep(0.02)  # poll interval while waiting for the server socket
        log.info("embedded JACK server %r started (pid %d)", self.name, self._proc.pid)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it to exit. Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.info("embedded JACK server %r stopped", self.name)
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the server (tests: a server that dies without a goodbye)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, limit: int = 600) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        text = Path(self._log.name).read_bytes().decode("utf-8", "replace")
        lines = [ln for ln in text.splitlines() if ln.strip() and "Copyright" not in ln]
        return " | ".join(lines)[-limit:] or "(no output)"

    def __enter__(self) -> EmbeddedJack:
        self.start()
        if self.set_environment:
            self._saved_env = os.environ.get(SERVER_ENV)
            os.environ[SERVER_ENV] = self.name
            self._env_set = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            if self._env_set:
                if self._saved_env is None:
                    os.environ.pop(SERVER_ENV, None)
                else:
                    os.environ[SERVER_ENV] = self._saved_env
                self._env_set = False


@contextlib.contextmanager
def backend_context(requested: BackendRequest = "auto") -> Iterator[BackendChoice]:
    """Resolve the backend; when that needs an embedded JACK server, run one for the duration.

    ``with backend_context(args.backend) as choice: open_ports(PortConfig(choice.backend))``
    """
    choice = resolve_backend(requested)
    if not choice.embedded:
        yield choice
        return
    with EmbeddedJack():
        yield choice
