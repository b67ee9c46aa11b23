"""systemd integration: ``sd_notify`` (READY, STATUS, STOPPING, WATCHDOG) without blocking.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op, so the daemon runs the same
from a terminal. Messages go to a non-blocking datagram socket: a full or vanished receiver
costs a dropped message, never a stalled frame.

The watchdog (``WatchdogSec=`` in the unit) is fed by :func:`watchdog_loop` only while the
engine reports its frames on time, so a stuck or persistently late engine gets restarted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends ``sd_notify`` messages to ``$NOTIFY_SOCKET`` (no-op when it is unset)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        path = env.get("NOTIFY_SOCKET", "")
        if path:
            # '@name' is a socket in the abstract namespace.
            self._address = b"\0" + path[1:].encode() if path.startswith("@") else path
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self.watchdog_interval_s = _watchdog_interval_s(env)
        """Half of ``WatchdogSec=`` (ping at least this often), or None without a watchdog."""

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (e.g. ``READY=1``); True if the message went out."""
        if self._sock is None or self._address is None:
            return False
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(text.encode(), self._address)
        except OSError as exc:  # full queue (EAGAIN), receiver gone: drop, never block
            log.debug("sd_notify dropped (%s)", exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        fields: dict[str, str | int] = {"READY": 1}
        if status:
            fields["STATUS"] = status
        return self.notify(**fields)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def stopping(self, status: str = "") -> bool:
        fields: dict[str, str | int] = {"STOPPING": 1}
        if status:
            fields["STATUS"] = status
        return self.notify(**fields)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def watchdog_trigger(self, reason: str) -> bool:
        """Ask systemd to act as if the watchdog expired (it then restarts the service)."""
        return self.notify(WATCHDOG="trigger", STATUS=reason)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. our parent)
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r (not an integer)", usec)
        return None
    return value / 2e6 if value > 0 else None


async def watchdog_loop(
    notifier: Notifier,
    healthy: Callable[[], bool],
    status: Callable[[], str] | None = None,
) -> None:
    """Ping the watchdog every half ``WatchdogSec`` while ``healthy()`` holds.

    ``healthy`` is the engine's "frames on time" check; while it is false no ping goes out and
    systemd restarts the service once ``WatchdogSec`` passes. ``status()`` (optional) becomes
    the unit's STATUS line on each ping. Returns at once when there is no watchdog.
    """
    interval_s = notifier.watchdog_interval_s
    if interval_s is None:
        return
    loop = asyncio.get_running_loop()
    next_s = loop.time()
    while True:
        if healthy():
            fields: dict[str, str | int] = {"WATCHDOG": 1}
            if status is not None:
                fields["STATUS"] = status()
            notifier.notify(**fields)
        next_s += interval_s
        await asyncio.sleep(max(0.0, next_s - loop.time()))
