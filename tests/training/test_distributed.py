"""``musicgend train --distributed``: two local workers (MultiWorkerMirroredStrategy from
TF_CONFIG on loopback ports) train one tiny model together and end with the same weights."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from musicgend.model.artifact import load_artifact

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _train_argv(bach_dir: Path, config: Path, out: Path, *options: str) -> list[str]:
    argv = [sys.executable, "-m", "musicgend", "train", "--data", str(bach_dir), "--out", str(out)]
    return [*argv, "--config", str(config), "--max-pieces", "5", "--distributed", *options]


def _worker(
    argv: list[str], cluster: dict[str, list[str]], index: int, cwd: Path
) -> subprocess.Popen[str]:
    tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=cwd,
    )


def _read_until(proc: subprocess.Popen[str], text: str, timeout_s: float) -> list[str]:
    """stderr lines up to the first one holding ``text`` (the worker's progress goes there)."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"no line with {text!r} in {lines}")


def _kill_left(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_two_workers_train_together_to_the_same_weights(
    bach_dir: Path, tiny_config_file: Path, tmp_path: Path
) -> None:
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    out = tmp_path / "model"
    argv = _train_argv(bach_dir, tiny_config_file, out, "--epochs", "1", "--batch-size", "32")
    procs = [_worker(argv, cluster, i, tmp_path) for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=180)
            assert proc.returncode == 0, stderr
            outputs.append(stdout)
    finally:
        _kill_left(procs)

    digests = [line.split("weights sha256 ")[1].split(";")[0] for line in outputs]
    assert digests[0] == digests[1]
    assert f"model {out}" in outputs[0]
    assert "worker: nothing saved" in outputs[1]
    meta = load_artifact(out).training
    assert meta["workers"] == 2
    assert meta["final_weights_sha256"].startswith(digests[0])
    assert len(meta["history"]) == 1
    # the chief alone wrote files: nothing else appeared beside the model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_ctrl_c_stops_a_worker_that_waits_for_the_others(
    bach_dir: Path, tiny_config_file: Path, tmp_path: Path
) -> None:
    # Worker 1 never starts: worker 0 waits inside TensorFlow, where Ctrl-C did nothing.
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    out = tmp_path / "model"
    proc = _worker(_train_argv(bach_dir, tiny_config_file, out), cluster, 0, tmp_path)
    try:
        _read_until(proc, "waiting for the 2 workers", 120)
        time.sleep(2)  # well inside the wait
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    finally:
        _kill_left([proc])
    assert proc.returncode in (-signal.SIGINT, 1, 130)
    assert not out.exists() or not any(out.iterdir())


def test_sigterm_stops_a_distributed_worker_keeping_the_last_epoch(
    bach_dir: Path, tiny_config_file: Path, tmp_path: Path
) -> None:
    # TensorFlow's coordination service swallowed SIGTERM (a preemption notice) once the
    # workers had met; the chief must stop as on Ctrl-C, its last complete epoch kept.
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    out = tmp_path / "model"
    argv = _train_argv(bach_dir, tiny_config_file, out, "--epochs", "200", "--batch-size", "32")
    argv += ["--patience", "200"]
    procs = [_worker(argv, cluster, i, tmp_path) for i in range(2)]
    try:
        _read_until(procs[0], "epoch 1/200", 180)
        procs[0].send_signal(signal.SIGTERM)
        _, stderr = procs[0].communicate(timeout=60)
    finally:
        _kill_left(procs)
    assert procs[0].returncode == 1, stderr
    assert "interrupted" in stderr and "--resume" in stderr, stderr
    assert load_artifact(out).training["history"]  # the kept epoch's model loads
