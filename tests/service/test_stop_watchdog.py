"""The daemon's stop watchdog: stacks logged when a stop hangs, a bounded exit once the
session is written. Each case runs in its own interpreter (the watchdog ends its process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from musicgend.service.runtime import STOP_STUCK_EXIT_CODE


def _run(body: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(
        """
        import logging, threading, time
        from musicgend.service.runtime import StopWatchdog
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        watchdog = StopWatchdog(dump_after_s=0.3, exit_after_s=0.5)
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )


def test_a_stop_that_hangs_after_the_session_is_written_ends_with_stacks_logged() -> None:
    done = _run(
        """
        def stuck_cleanup():
            threading.Event().wait()  # a join that never returns
        watchdog.stopping()
        time.sleep(0.6)  # past dump_after_s: stacks, but no exit yet
        print("still here", flush=True)
        watchdog.finished()
        stuck_cleanup()
        """
    )
    assert done.returncode == STOP_STUCK_EXIT_CODE, done.stderr
    assert "still here" in done.stdout  # the first dump did not end the process
    assert "still stopping 0.3 s after the stop began" in done.stderr
    assert "the process did not end within 0.5 s; exiting with status 70" in done.stderr
    assert "in stuck_cleanup" in done.stderr  # faulthandler's stack of the main thread
    assert "MainThread" in done.stderr and "musicgend-stop-watchdog (daemon)" in done.stderr
    assert done.stderr.count("native threads:") == 2


def test_a_stop_that_ends_in_time_exits_normally_and_logs_nothing() -> None:
    done = _run(
        """
        watchdog.stopping()
        time.sleep(0.1)
        watchdog.finished()
        print("bye", flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "bye\n"
    assert done.stderr == ""


def test_nothing_is_forced_before_the_session_is_written() -> None:
    done = _run(
        """
        watchdog.stopping()
        time.sleep(1.5)  # a long session being written: stacks once, no exit
        print("written", flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "written\n"
    assert done.stderr.count("still stopping") == 1


def test_a_second_stop_signal_is_logged_and_cuts_nothing_short() -> None:
    script = textwrap.dedent(
        """
        import asyncio, logging, os, signal
        from musicgend.service.runtime import _on_stop_signal, _stopping_signals_logged
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        stop = asyncio.Event()
        _on_stop_signal(signal.SIGHUP, stop)
        _on_stop_signal(signal.SIGINT, stop)
        assert stop.is_set()
        with _stopping_signals_logged():  # the clean-up after the event loop
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            print("clean-up finished", flush=True)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "clean-up finished\n"
    assert result.stderr.splitlines() == [
        "INFO SIGHUP: stopping",
        "WARNING SIGINT: already stopping (notes off, session being written)",
        "WARNING SIGINT: already stopping",
        "WARNING SIGTERM: already stopping",
    ]
