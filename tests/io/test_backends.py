"""Backend choice, the embedded JACK server, `musicgend ports`, and the ALSA path."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from musicgend.io import jackserver
from musicgend.io.jackserver import (
    EmbeddedJack,
    JackServerError,
    alsa_sequencer_present,
    jack_running,
    jack_server_listening,
    jack_server_socket,
    resolve_backend,
)
from musicgend.io.midi import PortConfig, open_ports
from tests.jackutil import JackPeer, jackd

__all__ = ["jackd"]

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.jack
def test_embedded_jack_starts_names_itself_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JACK_DEFAULT_SERVER", "previous-value")
    with EmbeddedJack() as server:
        assert server.running and jack_running(server.name)
        assert os.environ["JACK_DEFAULT_SERVER"] == server.name
        assert resolve_backend("auto").backend == "jack"
        assert not resolve_backend("auto").embedded
        pid = server.pid
    assert not jack_running(server.name)
    assert os.environ["JACK_DEFAULT_SERVER"] == "previous-value"
    assert pid is not None and not Path(f"/proc/{pid}").exists()


@pytest.mark.jack
def test_server_socket_tells_a_live_server_from_a_gone_or_killed_one() -> None:
    server = EmbeddedJack()
    with server:
        assert jack_server_listening(server.name)
        server.kill()  # leaves its socket behind: it must refuse, not count as a server
        assert jack_server_socket(server.name).exists()
        assert not jack_server_listening(server.name)
        server.start()
        assert jack_server_listening(server.name)
    assert not jack_server_socket(server.name).exists()  # a clean exit removes it
    assert not jack_server_listening(server.name)


@pytest.mark.jack
def test_embedded_jack_stops_on_exceptions() -> None:
    with pytest.raises(RuntimeError, match="boom"), EmbeddedJack() as server:
        raise RuntimeError("boom")
    assert not jack_running(server.name)


def test_missing_jackd_is_a_clear_error() -> None:
    with pytest.raises(JackServerError, match="'no-such-jackd' not found on PATH"):
        EmbeddedJack(jackd="no-such-jackd").start()


@pytest.mark.jack
def test_jackd_that_fails_to_start_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "jackd"
    fake.write_text("#!/bin/sh\necho 'cannot open driver' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(JackServerError, match=r"exited with code 3 .*cannot open driver"):
        EmbeddedJack(jackd=str(fake)).start()


@pytest.mark.jack
def test_jackd_without_realtime_permission_starts_without_realtime(tmp_path: Path) -> None:
    """A jackd that refuses -R is started again with -r; both runs get the small port-max."""
    calls = tmp_path / "calls"
    fake = tmp_path / "jackd"
    real = subprocess.run(["sh", "-c", "command -v jackd"], capture_output=True, text=True)
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'case " $* " in *" -R "*) echo "cannot use real-time scheduling" >&2; exit 1;; esac\n'
        f'exec {real.stdout.strip()} "$@"\n'
    )
    fake.chmod(0o755)
    with EmbeddedJack(jackd=str(fake)) as server:
        assert jack_running(server.name) and not server.realtime
    first, second = calls.read_text().splitlines()
    assert first.startswith("-R -p 64 -n ") and second.startswith("-r -p 64 -n ")


def test_auto_backend_without_any_server_means_embedded_jack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JACK_DEFAULT_SERVER", "musicgend-nothing-here")
    monkeypatch.setattr(jackserver, "ALSA_SEQ_DEVICE", Path("/nonexistent/seq"))
    choice = resolve_backend("auto")
    assert (choice.backend, choice.embedded) == ("jack", True)
    with pytest.raises(Exception, match="backend alsa: /nonexistent/seq does not exist"):
        resolve_backend("alsa")


@pytest.mark.jack
def test_ports_command_lists_sources_and_destinations(jackd: Any) -> None:
    async def main() -> str:
        with open_ports(PortConfig()), JackPeer("keys"):
            result = subprocess.run(
                [sys.executable, "-m", "musicgend", "ports", "--json"],
                capture_output=True,
                text=True,
                cwd=REPO,
            )
        assert result.returncode == 0, result.stderr
        return result.stdout

    listed = json.loads(asyncio.run(main()))
    assert listed == {
        "backend": "jack",
        "sources": ["keys:out", "musicgend:out"],
        "destinations": ["keys:in", "musicgend:in"],
    }


def test_ports_command_without_any_backend_fails_clearly(tmp_path: Path) -> None:
    env = dict(os.environ, JACK_DEFAULT_SERVER="musicgend-nothing-here")
    result = subprocess.run(
        [sys.executable, "-m", "musicgend", "ports", "--backend", "jack"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: no JACK server 'musicgend-nothing-here' is running"


@pytest.mark.skipif(
    not alsa_sequencer_present(), reason="no ALSA sequencer (/dev/snd/seq) on this machine"
)
def test_alsa_ports_receive_from_another_sequencer_client() -> None:
    import rtmidi

    async def main() -> None:
        with open_ports(PortConfig(backend="alsa", client_name="mgalsa")) as ports:
            sender = rtmidi.MidiOut(rtmidi.API_LINUX_ALSA, name="mgalsa-test-sender")
            names = sender.get_ports()
            (index,) = [i for i, n in enumerate(names) if n.startswith("mgalsa:in")]
            sender.open_port(index)
            sender.send_message([0x90, 60, 100])
            event = await asyncio.wait_for(ports.get(), 5)
            assert event.data == bytes([0x90, 60, 100])
            sender.close_port()

    asyncio.run(main())


def test_forgoing_the_jack_memory_lock_limits_this_process_only() -> None:
    """In a fresh interpreter (it changes the process for good): the soft memlock limit is
    at most 8 MiB and CAP_IPC_LOCK is no longer effective, in this thread and in threads
    started later; a program it runs gets its capabilities anew."""
    script = """
import resource, subprocess, threading
from musicgend.io.jackserver import MEMLOCK_LIMIT_BYTES, forgo_jack_memory_lock

def cap_eff(path="/proc/thread-self/status"):
    line = next(x for x in open(path) if x.startswith("CapEff:"))
    return int(line.split()[1], 16)

before = cap_eff()
print(forgo_jack_memory_lock())
assert resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] <= MEMLOCK_LIMIT_BYTES
assert not cap_eff() & (1 << 14)
seen = []
t = threading.Thread(target=lambda: seen.append(cap_eff()))
t.start(); t.join()
assert not seen[0] & (1 << 14)
child = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
child_eff = int(next(x for x in child.splitlines() if x.startswith("CapEff:")).split()[1], 16)
assert child_eff & (1 << 14) == before & (1 << 14), (hex(child_eff), hex(before))
print("again:", forgo_jack_memory_lock())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first, again = out.stdout.splitlines()
    assert first and again == "again: nothing to change", out.stdout
