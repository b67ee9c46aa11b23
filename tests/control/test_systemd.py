"""The systemd unit (verify + security bound), sd_notify and the watchdog, the installer."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from musicgend.service.systemd import Notifier, watchdog_loop

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "musicgend.service"
SECURITY_BOUND = 1.5


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze is missing (scripts/bootstrap.sh installs systemd)"
    return path


def fake_executable(directory: Path) -> Path:
    """A musicgend launcher for this checkout (what ExecStart will run)."""
    exe = directory / "musicgend"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m musicgend "$@"\n')
    exe.chmod(0o755)
    return exe


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at an executable that exists here."""
    exe = fake_executable(tmp_path)
    text = UNIT.read_text()
    assert re.search(r"(?m)^ExecStart=/usr/local/bin/musicgend run$", text)
    text = text.replace("ExecStart=/usr/local/bin/musicgend ", f"ExecStart={exe} ")
    unit_dir = tmp_path / "unit"
    unit_dir.mkdir()
    path = unit_dir / "musicgend.service"
    path.write_text(text)
    return path


def test_unit_verifies_silently(unit_copy: Path) -> None:
    done = subprocess.run(
        [systemd_analyze(), "verify", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_unit_security_score_within_bound(unit_copy: Path) -> None:
    done = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=unit_copy.parent,
    )
    match = re.search(r"Overall exposure level for musicgend\.service: ([0-9.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    score = float(match.group(1))
    print(f"\nsystemd-analyze security: {score}")
    assert score <= SECURITY_BOUND


def test_unit_contract() -> None:
    text = UNIT.read_text()
    for line in [
        "Type=notify",
        "WatchdogSec=10s",
        "StateDirectory=musicgend",
        "DynamicUser=yes",
        "Environment=MUSICGEND_CONFIG=/etc/musicgend/musicgend.toml",
    ]:
        assert re.search(rf"(?m)^{re.escape(line)}$", text), line


# -- sd_notify -------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(10)
    try:
        yield sock, path
    finally:
        sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_notifier_messages(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    with Notifier({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled and notifier.watchdog_interval_s is None
        assert notifier.ready("playing, model default")
        assert received(sock) == "READY=1\nSTATUS=playing, model default"
        assert notifier.status("late frames: 0")
        assert received(sock) == "STATUS=late frames: 0"
        assert notifier.watchdog()
        assert received(sock) == "WATCHDOG=1"
        assert notifier.stopping()
        assert received(sock) == "STOPPING=1"


def test_notifier_abstract_socket() -> None:
    name = f"musicgend-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        with Notifier({"NOTIFY_SOCKET": "@" + name}) as notifier:
            assert notifier.ready()
            assert received(sock) == "READY=1"
    finally:
        sock.close()


def test_notifier_without_systemd(tmp_path: Path) -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog()
    # A socket that vanished: the message is dropped, nothing raises or blocks.
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not gone.ready()


def test_watchdog_interval_from_env() -> None:
    pid = str(os.getpid())
    env = {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "10000000"}
    assert Notifier(env).watchdog_interval_s == 5.0
    assert Notifier({**env, "WATCHDOG_PID": pid}).watchdog_interval_s == 5.0
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert Notifier({**env, "WATCHDOG_USEC": "x"}).watchdog_interval_s is None


def test_watchdog_pings_only_while_frames_on_time(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000", "WATCHDOG_PID": str(os.getpid())}
    # The engine's health, one answer per watchdog period: on time, late twice, on time...
    health = [True, True, False, False, True, False, True]

    async def body() -> int:
        done = asyncio.Event()
        answers = iter(health)

        def healthy() -> bool:
            value = next(answers, None)
            if value is None:
                done.set()
                return False
            return value

        with Notifier(env) as notifier:
            task = asyncio.create_task(watchdog_loop(notifier, healthy, lambda: "frames on time"))
            await asyncio.wait_for(done.wait(), 30)
            task.cancel()
        return sum(health)

    pings = asyncio.run(body())
    sock.settimeout(0)
    messages = []
    while True:
        try:
            messages.append(received(sock))
        except BlockingIOError:
            break
    assert messages == ["WATCHDOG=1\nSTATUS=frames on time"] * pings


def test_watchdog_loop_returns_without_watchdog() -> None:
    asyncio.run(asyncio.wait_for(watchdog_loop(Notifier({}), lambda: True), 10))


# -- the installer ---------------------------------------------------------------------


def run_install(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MUSICGEND_")}
    return subprocess.run(
        [str(ROOT / "service" / "install.sh"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def test_install_is_idempotent_and_keeps_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "opt" / "bin").mkdir(parents=True)
    fake_executable(root / "opt" / "bin")
    bin_path = "/opt/bin/musicgend"
    first = run_install("--root", str(root), "--bin", bin_path)
    assert first.returncode == 0, first.stdout + first.stderr
    unit = root / "etc" / "systemd" / "system" / "musicgend.service"
    config = root / "etc" / "musicgend" / "musicgend.toml"
    assert f"ExecStart={bin_path} run\n" in unit.read_text()
    assert tomllib.loads(config.read_text())["mqtt"]["instance"] == "studio"
    config.write_text('[engine]\nmode = "solo"\n')
    second = run_install("--root", str(root), "--bin", bin_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"unchanged {unit}" in second.stdout
    assert f"kept existing {config}" in second.stdout
    assert config.read_text() == '[engine]\nmode = "solo"\n'
    # A broken config is caught at install time, with the daemon's own message.
    config.write_text("[midi]\nchannel = 99\n")
    third = run_install("--root", str(root), "--bin", bin_path)
    assert third.returncode != 0
    assert "midi.channel = 99" in third.stderr


def test_install_refuses_missing_executable(tmp_path: Path) -> None:
    done = run_install("--root", str(tmp_path), "--bin", "/nope/musicgend")
    assert done.returncode == 1
    assert "is not an executable file" in done.stderr
