"""A fake engine implementing the MQTT control interface, for unit-level MQTT tests.

The real engine is exercised end to end in test_mqtt_daemon.py; here only the routing of
commands, status, metrics and errors matters. Run as a script, it is a minimal daemon process
(MqttControl + FakeEngine) that tests can SIGKILL to see the broker's last will.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from musicgend.errors import ModelError


class FakeEngine:
    def __init__(self) -> None:
        self.running = False
        self.mode = "accompany"
        self.model = "default"
        self.params: dict[str, Any] = {"temperature": 1.0, "top_p": 0.95, "density": 1.0}
        self.seed: int | None = None
        self.calls: list[tuple[str, Any]] = []
        self.frames = 0
        self.load_gate: asyncio.Event | None = None
        self.fail_status = False

    def start(self) -> None:
        self.calls.append(("start", None))
        self.running = True

    def stop(self) -> None:
        self.calls.append(("stop", None))
        self.running = False

    def panic(self) -> None:
        self.calls.append(("panic", None))

    def set_params(self, **params: Any) -> None:
        self.calls.append(("set", dict(params)))
        if params.get("mode") == "solo" and self.model == "no-solo":
            raise ValueError("this model can't play solo")
        if "mode" in params:
            self.mode = params.pop("mode")
        if "seed" in params:
            self.seed = params.pop("seed")
        self.params.update(params)

    async def load_model(self, path: Path) -> None:
        self.calls.append(("load_model", str(path)))
        if self.load_gate is not None:
            await self.load_gate.wait()
        if not (path / "model.json").is_file():
            raise ModelError(f"{path}: no model.json here")
        self.model = path.name

    def status(self) -> dict[str, Any]:
        if self.fail_status:
            raise RuntimeError("status broke")
        return {
            "running": self.running,
            "mode": self.mode,
            "model": self.model,
            "params": {**self.params, "seed": self.seed},
            "session": "/var/lib/musicgend/sessions/2026-01-01T00-00-00.mid",
        }

    def metrics(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "frame_latency_ms": {"p50": 0.4, "p99": 1.2, "max": 2.0},
            "late_frames": 0,
            "dropped_input": 0,
        }


async def _main(url: str, prefix: str) -> None:
    from musicgend.config import MqttSettings
    from musicgend.io.mqtt import MqttControl

    settings = MqttSettings(url=url, prefix=prefix, client_id="fake-daemon", keepalive_s=5)
    control = MqttControl(settings, FakeEngine())
    task = asyncio.create_task(control.run())
    await control.connected.wait()
    print("connected", flush=True)
    await task


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("prefix")
    args = parser.parse_args()
    asyncio.run(_main(args.url, args.prefix))
