"""``musicgend train --distributed``: two local workers (MultiWorkerMirroredStrategy from
TF_CONFIG on loopback ports) train one tiny model together and end with the same weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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


def test_two_workers_train_together_to_the_same_weights(
    bach_dir: Path, tiny_config_file: Path, tmp_path: Path
) -> None:
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    out = tmp_path / "model"
    argv = [sys.executable, "-m", "musicgend", "train", "--data", str(bach_dir), "--out", str(out)]
    argv += ["--config", str(tiny_config_file), "--epochs", "1", "--batch-size", "32"]
    argv += ["--max-pieces", "5", "--distributed"]
    procs = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3"}
        procs.append(
            subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
                cwd=tmp_path,
            )
        )
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=180)
            assert proc.returncode == 0, stderr
            outputs.append(stdout)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

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
