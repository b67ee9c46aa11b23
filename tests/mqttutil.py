"""Shared helpers for tests that need a real MQTT broker.

- :func:`mosquitto_broker` / the ``mosquitto`` fixture: a private ``mosquitto`` listening on a
  free 127.0.0.1 port with its own config file in a temporary directory, ready to accept
  connections. The yielded :class:`Broker` has ``stop()``, ``kill()`` (SIGKILL) and ``start()``
  (same port, same config) to take the broker away mid-test.
- ``secure=True``: the example broker config of ``systemd/`` (password file + ACL, no
  anonymous clients) with :data:`USERS` as accounts; ``tls=True``: a TLS listener with a
  throw-away CA (``broker.ca_file``).
- :class:`Observer`: a separate MQTT client that records every message under a topic filter and
  waits for one with a predicate (never a blind sleep).

Use: ``from tests.mqttutil import Broker, Observer, mosquitto, mosquitto_broker``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONF = ROOT / "systemd" / "mosquitto-musicgend.conf"
EXAMPLE_ACL = ROOT / "systemd" / "mosquitto-musicgend.acl"

USERS = {"musicgend": "daemon-pw", "controller": "controller-pw", "observer": "observer-pw"}
"""The accounts of the secure broker (the example ACL names these users)."""

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    """A private mosquitto process; ``url`` is ``mqtt(s)://127.0.0.1:<port>``."""

    port: int
    directory: Path
    conf: Path
    tls: bool = False
    ca_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, timeout_s: float = 10.0) -> None:
        """Start mosquitto and return once it accepts TCP connections."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("broker already running")
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline_ns = time.monotonic_ns() + int(timeout_s * 1e9)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self.proc.returncode}:\n{self.log()[-2000:]}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            if time.monotonic_ns() > deadline_ns:
                self.stop()
                raise RuntimeError(f"mosquitto not listening after {timeout_s} s:\n{self.log()}")
            time.sleep(0.02)

    def _end(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop it cleanly (SIGTERM)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Take it away abruptly (SIGKILL): clients see their connection reset."""
        self._end(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost."""
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
        "-days",
        "2",
        "-subj",
        "/CN=musicgend test CA",
    )
    openssl("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(crt),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return ca_crt, crt, key


def _secure_conf(port: int, directory: Path) -> str:
    """The example config of systemd/, pointed at this test's port, password file and ACL."""
    passwd = directory / "passwd"
    passwd.touch(mode=0o600)
    for user, password in USERS.items():
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwd), user, password],
            check=True,
            capture_output=True,
            timeout=30,
        )
    acl = directory / "acl"
    shutil.copyfile(EXAMPLE_ACL, acl)
    text = EXAMPLE_CONF.read_text()
    text = re.sub(r"(?m)^listener .*$", f"listener {port} 127.0.0.1", text)
    text = re.sub(r"(?m)^password_file .*$", f"password_file {passwd}", text)
    text = re.sub(r"(?m)^acl_file .*$", f"acl_file {acl}", text)
    text = re.sub(r"(?m)^(persistence|log_dest|user) .*$", "", text)
    return text


@contextlib.contextmanager
def mosquitto_broker(*, secure: bool = False, tls: bool = False) -> Iterator[Broker]:
    """Run a private broker for the duration of the ``with`` block."""
    directory = Path(tempfile.mkdtemp(prefix="musicgend-mqtt-"))
    try:
        port = free_port()
        conf = directory / "mosquitto.conf"
        if secure:
            body = _secure_conf(port, directory)
        else:
            body = f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        lines = [body, "persistence false", "log_dest stderr", "log_type all"]
        # As root, mosquitto would switch to the 'mosquitto' user; stay who we are.
        lines.append(f"user {getpass.getuser()}")
        ca_file = None
        if tls:
            ca_file, crt, key = _make_tls_files(directory)
            lines += [f"cafile {ca_file}", f"certfile {crt}", f"keyfile {key}"]
        conf.write_text("\n".join(lines) + "\n")
        broker = Broker(port=port, directory=directory, conf=conf, tls=tls, ca_file=ca_file)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def mosquitto() -> Iterator[Broker]:
    """An anonymous broker on a free loopback port."""
    with mosquitto_broker() as broker:
        yield broker


@pytest.fixture
def secure_mosquitto() -> Iterator[Broker]:
    """The example secure broker (password file + ACL) on a free loopback port."""
    with mosquitto_broker(secure=True) as broker:
        yield broker


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Observer:
    """A separate MQTT client that records messages on ``topic_filter``.

    ``async with Observer(broker, "musicgend/#") as obs: msg = await obs.wait(pred)``.
    """

    def __init__(
        self,
        broker: Broker,
        topic_filter: str,
        *,
        username: str | None = None,
        password: str | None = None,
        identifier: str | None = None,
    ) -> None:
        import aiomqtt

        tls_context = None
        if broker.tls:
            import ssl

            tls_context = ssl.create_default_context(cafile=str(broker.ca_file))
        self._client = aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            username=username,
            password=password,
            identifier=identifier,
            timeout=10,
            tls_context=tls_context,
        )
        self.topic_filter = topic_filter
        self.messages: list[Received] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Observer:
        await self._client.__aenter__()
        await self._client.subscribe(self.topic_filter, qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._client.__aexit__(None, None, None)

    async def _collect(self) -> None:
        async for message in self._client.messages:
            raw = message.payload
            payload = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw).encode()
            self.messages.append(Received(str(message.topic), payload, bool(message.retain)))
            self._changed.set()

    async def publish(self, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        await self._client.publish(topic, payload, qos=1, retain=retain)

    async def wait(
        self,
        predicate: Callable[[Received], bool],
        timeout_s: float = 10.0,
        what: str = "",
        start: int = 0,
    ) -> Received:
        """The first message (from index ``start``) that satisfies ``predicate``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        seen = start
        while True:
            for msg in self.messages[seen:]:
                seen += 1
                if predicate(msg):
                    return msg
            self._changed.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                got = [(m.topic, m.payload[:120]) for m in self.messages[start:]][-8:]
                pytest.fail(
                    f"timed out after {timeout_s:g} s waiting for {what}; last messages: {got}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


def topic_is(topic: str) -> Callable[[Received], bool]:
    return lambda m: m.topic == topic


def env_without_musicgend() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("MUSICGEND_")}
