"""MQTT control against a real mosquitto (started per test on a free loopback port).

The engine side is :class:`tests.control.fakes.FakeEngine` (the control interface only); the
real daemon is covered by test_mqtt_daemon.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from musicgend.config import MqttSettings, TlsSettings
from musicgend.io.mqtt import (
    MAX_PAYLOAD_BYTES,
    CommandError,
    LoadModelCommand,
    MqttControl,
    SetCommand,
    StartCommand,
    discovery_messages,
    parse_command,
)
from tests.control.fakes import FakeEngine
from tests.mqttutil import (
    ROOT,
    USERS,
    Broker,
    Observer,
    Received,
    env_without_musicgend,
    mosquitto,  # noqa: F401 - fixture
    mosquitto_broker,
    secure_mosquitto,  # noqa: F401 - fixture
    topic_is,
)

# -- parsing (no broker) ----------------------------------------------------------------


def test_parse_valid_commands() -> None:
    assert isinstance(parse_command(b'{"action": "start"}'), StartCommand)
    cmd = parse_command(b'{"action": "set", "temperature": 1, "mode": "solo", "id": "a1"}')
    assert isinstance(cmd, SetCommand)
    assert cmd.params() == {"temperature": 1.0, "mode": "solo"}
    assert cmd.id == "a1"
    load = parse_command(b'{"action": "load_model", "path": "/m"}')
    assert isinstance(load, LoadModelCommand) and load.path == "/m"
    tempo = parse_command(b'{"action": "set", "bpm": 132.5}')
    assert isinstance(tempo, SetCommand) and tempo.params() == {"bpm": 132.5}
    unseed = parse_command(b'{"action": "set", "seed": null}')
    assert isinstance(unseed, SetCommand) and unseed.params() == {"seed": None}
    big = parse_command(b'{"action": "set", "seed": 9223372036854775807, "hold_bias": 10}')
    assert isinstance(big, SetCommand)
    assert big.params() == {"seed": 2**63 - 1, "hold_bias": 10.0}


BAD_PAYLOADS: list[tuple[bytes, str]] = [
    (b"garbage{", "payload is not JSON"),
    (b"[1, 2]", "command must be a JSON object, got list"),
    (b'{"temperature": 1}', "missing 'action'"),
    (b'{"action": "dance"}', "unknown action 'dance'; expected one of start, stop"),
    (b'{"action": 7}', "unknown action 7"),
    (b'{"action": "set", "temperature": "hot"}', "temperature = 'hot': expected a valid number"),
    (b'{"action": "set", "temperature": true}', "temperature = True"),
    (b'{"action": "set", "temperature": 0}', "temperature = 0: expected greater than 0"),
    (b'{"action": "set", "mode": "jazz"}', "mode = 'jazz': expected 'accompany'"),
    (b'{"action": "set", "top_p": 1.5}', "top_p = 1.5"),
    (b'{"action": "set", "seed": 1.5}', "seed = 1.5"),
    (b'{"action": "set"}', "'set' needs at least one of mode"),
    (b'{"action": "set", "bpm": 5}', "bpm = 5: expected greater than or equal to 20"),
    (b'{"action": "start", "extra": 1}', "unknown field 'extra'"),
    (b'{"action": "load_model"}', "missing field 'path'"),
    (b'{"action": "load_model", "path": ["a"]}', "path = ['a']"),
    (b'{"action": "stop", "id": {"x": 1}}', "id"),
    (b'{"action": "set", "temperature": NaN}', "temperature = nan: expected a finite number"),
    (b'{"action": "set", "top_p": null}', "top_p = None: expected a value (only seed"),
    (b"[" * 50_000, "payload is not usable JSON (nested too deeply)"),
    (b'{"action": "set", "seed": ' + b"9" * 5000 + b"}", "payload is not usable JSON"),
    (b"\xff\xfe{}", "payload is not UTF-8 text"),
    (b"{" + b" " * MAX_PAYLOAD_BYTES + b"}", f"payload too large: {MAX_PAYLOAD_BYTES + 2} bytes"),
]


@pytest.mark.parametrize(("payload", "reason"), BAD_PAYLOADS, ids=lambda v: repr(v)[:40])
def test_parse_rejects(payload: bytes, reason: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(payload)
    assert reason in info.value.reason


def test_discovery_templates_produce_valid_commands() -> None:
    settings = MqttSettings(url="mqtt://h", instance="studio")
    messages = dict(discovery_messages(settings))
    select = messages["homeassistant/select/musicgend_studio/mode/config"]
    rendered = select["command_template"].replace("{{ value }}", "call-response")
    assert parse_command(rendered.encode()) == SetCommand(action="set", mode="call-response")
    number = messages["homeassistant/number/musicgend_studio/temperature/config"]
    rendered = number["command_template"].replace("{{ value }}", "0.75")
    assert parse_command(rendered.encode()) == SetCommand(action="set", temperature=0.75)
    button = messages["homeassistant/button/musicgend_studio/panic/config"]
    assert parse_command(button["payload_press"].encode()).action == "panic"
    assert button["command_topic"] == "musicgend/studio/cmd"
    sensors = [t for t in messages if "/sensor/" in t]
    assert len(sensors) == 2 and len({p["unique_id"] for p in messages.values()}) == 5


# -- against a broker ------------------------------------------------------------------


def settings_for(broker: Broker, **kw: Any) -> MqttSettings:
    values: dict[str, Any] = {
        "url": broker.url,
        "instance": "t" + uuid.uuid4().hex[:8],
        "metrics_interval_s": 0.2,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
        "keepalive_s": 5,
    }
    values.update(kw)
    return MqttSettings(**values)


@contextlib.asynccontextmanager
async def running(control: MqttControl) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(control.run())
    try:
        await asyncio.wait_for(control.connected.wait(), 10)
        yield task
    finally:
        control.request_stop()
        await asyncio.wait_for(task, 10)


async def until(predicate: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    """Poll a condition in the event loop, failing the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.005)


def is_status(control: MqttControl, **want: Any) -> Callable[[Received], bool]:
    def check(msg: Received) -> bool:
        if msg.topic != control.topics.status:
            return False
        data = msg.json()
        return all(data.get(k) == v for k, v in want.items())

    return check


def params_are(control: MqttControl, **want: Any) -> Callable[[Received], bool]:
    def check(msg: Received) -> bool:
        if msg.topic != control.topics.status:
            return False
        params = msg.json().get("params", {})
        return all(params.get(k) == v for k, v in want.items())

    return check


@pytest.mark.mqtt
def test_status_retained_and_metrics_published(mosquitto: Broker) -> None:  # noqa: F811
    async def body() -> None:
        engine = FakeEngine()
        control = MqttControl(settings_for(mosquitto), engine)
        # The observer subscribes after the daemon connected: the status is there, retained.
        async with running(control), Observer(mosquitto, f"{control.topics.prefix}/#") as obs:
            status = await obs.wait(topic_is(control.topics.status), what="status")
            assert status.retain
            data = status.json()
            assert data["online"] is True
            assert {"mode", "model", "params", "session"} <= set(data)
            print("status:", status.payload.decode())
            metrics = await obs.wait(topic_is(control.topics.metrics), what="metrics")
            sample = metrics.json()
            print("metrics:", metrics.payload.decode())
            assert sample["late_frames"] == 0
            assert set(sample["frame_latency_ms"]) == {"p50", "p99", "max"}
            assert sample["mqtt"]["connected"] is True
            # A change the engine announces is published at once...
            engine.mode = "solo"
            control.notify_status()
            await obs.wait(is_status(control, mode="solo"), what="mode solo")
            # ...and one it doesn't announce within a metrics interval.
            engine.params["density"] = 0.5
            await obs.wait(params_are(control, density=0.5), what="density 0.5")

    asyncio.run(body())


@pytest.mark.mqtt
def test_commands_reach_the_engine(mosquitto: Broker) -> None:  # noqa: F811
    async def body() -> None:
        engine = FakeEngine()
        control = MqttControl(settings_for(mosquitto), engine)
        async with running(control), Observer(mosquitto, f"{control.topics.prefix}/#") as obs:
            cmd = control.topics.cmd
            await obs.publish(cmd, json.dumps({"action": "start"}))
            await obs.wait(is_status(control, running=True), what="running")
            await obs.publish(
                cmd, json.dumps({"action": "set", "temperature": 0.5, "seed": 3, "top_p": 0.8})
            )
            await obs.wait(params_are(control, temperature=0.5, seed=3, top_p=0.8), what="set")
            await obs.publish(cmd, json.dumps({"action": "set", "mode": "call-response"}))
            await obs.wait(is_status(control, mode="call-response"), what="mode")
            await obs.publish(cmd, json.dumps({"action": "panic"}))
            await obs.publish(cmd, json.dumps({"action": "stop"}))
            await obs.wait(is_status(control, running=False, mode="call-response"), what="stop")
            assert [c[0] for c in engine.calls] == ["start", "set", "set", "panic", "stop"]
            assert engine.calls[1][1] == {"temperature": 0.5, "seed": 3, "top_p": 0.8}
            assert not [m for m in obs.messages if m.topic == control.topics.error]

    asyncio.run(body())


@pytest.mark.mqtt
def test_every_rejected_command_gets_an_error(mosquitto: Broker) -> None:  # noqa: F811
    async def body() -> None:
        engine = FakeEngine()
        engine.model = "no-solo"
        control = MqttControl(settings_for(mosquitto), engine)
        cases = [
            *BAD_PAYLOADS,
            (json.dumps({"action": "set", "mode": "solo", "id": 9}).encode(), "can't play solo"),
        ]
        async with Observer(mosquitto, f"{control.topics.prefix}/#") as obs:
            # A retained command would run again on every reconnect: one left on the broker
            # before the daemon connects is refused, not run.
            await obs.publish(control.topics.cmd, b'{"action": "panic"}', retain=True)
            task = asyncio.create_task(control.run())
            err = await obs.wait(topic_is(control.topics.error), what="retained")
            assert "retained commands are ignored" in err.json()["error"]
            await obs.publish(control.topics.cmd, b"", retain=True)  # clears it, no error
            for payload, reason in cases:
                start = len(obs.messages)
                await obs.publish(control.topics.cmd, payload)
                err = await obs.wait(
                    topic_is(control.topics.error), what=f"error for {payload[:40]!r}", start=start
                )
                data = err.json()
                assert reason in data["error"], (payload[:60], data)
                assert len(data["payload"]) <= 201
                assert not task.done()
            assert data["id"] == 9 and data["action"] == "set"
            # Still alive and obeying.
            await obs.publish(control.topics.cmd, b'{"action": "start"}')
            await obs.wait(is_status(control, running=True), what="running after errors")
            errors = [m for m in obs.messages if m.topic == control.topics.error]
            assert len(errors) == len(cases) + 1
            assert control.stats.rejected == len(cases) + 1
            assert [c[0] for c in engine.calls] == ["set", "start"]
            control.request_stop()
            await asyncio.wait_for(task, 10)

    asyncio.run(body())


@pytest.mark.mqtt
def test_load_model_routed_and_refusals_reported(mosquitto: Broker, tmp_path: Path) -> None:  # noqa: F811
    good = tmp_path / "bach"
    good.mkdir()
    (good / "model.json").write_text("{}")

    async def body() -> None:
        engine = FakeEngine()
        control = MqttControl(settings_for(mosquitto), engine)
        async with running(control), Observer(mosquitto, f"{control.topics.prefix}/#") as obs:
            cmd = control.topics.cmd
            await obs.publish(cmd, json.dumps({"action": "load_model", "path": str(good)}))
            await obs.wait(is_status(control, model="bach"), what="model bach")
            missing = tmp_path / "missing"
            sent = json.dumps({"action": "load_model", "path": str(missing)})
            await obs.publish(cmd, sent)
            err = await obs.wait(topic_is(control.topics.error), what="refused load")
            assert err.json()["error"].startswith("load_model refused:")
            assert sent.startswith(err.json()["payload"].removesuffix("…"))  # what was sent
            assert "missing: no model.json" in err.json()["error"]
            assert engine.model == "bach"  # the old model stays
            # One load at a time; the command loop isn't blocked while a load runs.
            engine.load_gate = asyncio.Event()
            await obs.publish(cmd, json.dumps({"action": "load_model", "path": str(good)}))
            start = len(obs.messages)
            await obs.publish(cmd, json.dumps({"action": "load_model", "path": str(good)}))
            err = await obs.wait(topic_is(control.topics.error), start=start, what="busy")
            assert "already in progress" in err.json()["error"]
            await obs.publish(cmd, json.dumps({"action": "start"}))
            await obs.wait(is_status(control, running=True), what="start during load")
            engine.load_gate.set()

    asyncio.run(body())


@pytest.mark.mqtt
@pytest.mark.parametrize("how", ["request_stop", "cancel"])
def test_clean_exit_publishes_offline(mosquitto: Broker, how: str) -> None:  # noqa: F811
    async def body() -> None:
        control = MqttControl(settings_for(mosquitto), FakeEngine())
        task = asyncio.create_task(control.run())
        await asyncio.wait_for(control.connected.wait(), 10)
        async with Observer(mosquitto, control.topics.status) as obs:
            await obs.wait(is_status(control, online=True), what="online")
            if how == "cancel":
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, 10)
            else:
                control.request_stop()
                await asyncio.wait_for(task, 10)
            offline = await obs.wait(is_status(control, online=False), what="offline")
            assert offline.json() == {"online": False}
        # Retained: a late subscriber sees offline too.
        async with Observer(mosquitto, control.topics.status) as late:
            msg = await late.wait(topic_is(control.topics.status), what="retained offline")
            assert msg.retain and msg.json() == {"online": False}

    asyncio.run(body())


@pytest.mark.mqtt
def test_a_failure_inside_the_client_still_publishes_offline(mosquitto: Broker) -> None:  # noqa: F811
    async def body() -> None:
        control = MqttControl(settings_for(mosquitto), FakeEngine())

        async def broken_metrics(client: aiomqtt.Client) -> None:
            raise RuntimeError("a bug in the metrics")

        control._publish_metrics = broken_metrics  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="a bug in the metrics"):
            await asyncio.wait_for(control.run(), 10)
        # Not the last will (the client said goodbye properly): the daemon's own offline.
        async with Observer(mosquitto, control.topics.status) as late:
            msg = await late.wait(topic_is(control.topics.status), what="retained offline")
            assert msg.retain and msg.json() == {"online": False}

    asyncio.run(body())


@pytest.mark.mqtt
def test_last_will_on_abrupt_disconnect(mosquitto: Broker) -> None:  # noqa: F811
    prefix = "musicgend/lwt" + uuid.uuid4().hex[:8]

    async def body() -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.control.fakes", mosquitto.url, prefix],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env=env_without_musicgend(),
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
            assert line.strip() == "connected"
            async with Observer(mosquitto, f"{prefix}/status") as obs:
                await obs.wait(lambda m: m.json().get("online") is True, what="online")
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 30)
                will = await obs.wait(lambda m: m.json().get("online") is False, what="LWT")
                assert will.json() == {"online": False}
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)

    asyncio.run(body())


@pytest.mark.mqtt
def test_acl_only_controller_commands(secure_mosquitto: Broker) -> None:  # noqa: F811
    broker = secure_mosquitto

    async def body() -> None:
        # Unauthenticated and wrong-password clients are refused by the broker.
        for user, password in [(None, None), ("controller", "wrong")]:
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client(
                    "127.0.0.1", broker.port, username=user, password=password, timeout=10
                ):
                    pass
        engine = FakeEngine()
        settings = settings_for(
            broker, instance="studio", username="musicgend", password=USERS["musicgend"]
        )
        control = MqttControl(settings, engine)
        async with (
            running(control),
            Observer(
                broker, "musicgend/studio/#", username="observer", password=USERS["observer"]
            ) as observer,
            Observer(
                broker,
                "musicgend/studio/#",
                username="controller",
                password=USERS["controller"],
            ) as controller,
        ):
            await observer.wait(is_status(control, online=True), what="status for observer")
            # The observer may read but not command: the broker drops its message.
            await observer.publish(control.topics.cmd, b'{"action": "panic"}')
            await controller.publish(control.topics.cmd, b'{"action": "start"}')
            await controller.wait(is_status(control, running=True), what="controller's start")
            assert [c[0] for c in engine.calls] == ["start"]
            # Nor may it fake the daemon's status.
            await observer.publish(control.topics.status, b'{"online": false}', retain=True)
            async with Observer(
                broker, control.topics.status, username="observer", password=USERS["observer"]
            ) as late:
                msg = await late.wait(topic_is(control.topics.status), what="retained status")
                assert msg.json()["online"] is True

    asyncio.run(body())


@pytest.mark.mqtt
def test_wrong_credentials_keep_retrying_without_crashing(secure_mosquitto: Broker) -> None:  # noqa: F811
    async def body() -> None:
        settings = settings_for(secure_mosquitto, username="musicgend", password="wrong")
        control = MqttControl(settings, FakeEngine())
        task = asyncio.create_task(control.run())
        # Several refused attempts (each one a log line on the broker), and still running.
        await until(lambda: secure_mosquitto.log().count("not authorised") >= 3, "3 refusals")
        assert not task.done() and not control.connected.is_set()
        control.request_stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(body())


@pytest.mark.mqtt
def test_reconnect_after_broker_restart(mosquitto: Broker) -> None:  # noqa: F811
    async def body() -> None:
        engine = FakeEngine()
        control = MqttControl(settings_for(mosquitto), engine)
        # A stand-in for the frame clock: ticks on absolute deadlines in the same event loop.
        period_ns = 20_000_000
        worst_late_ns = 0

        async def ticker() -> None:
            nonlocal worst_late_ns
            next_ns = time.monotonic_ns() + period_ns
            while True:
                await asyncio.sleep(max(0, next_ns - time.monotonic_ns()) / 1e9)
                worst_late_ns = max(worst_late_ns, time.monotonic_ns() - next_ns)
                engine.frames += 1
                next_ns += period_ns

        clock = asyncio.create_task(ticker())
        async with running(control):
            mosquitto.kill()
            killed_ns = time.monotonic_ns()
            await until(lambda: not control.connected.is_set(), "the client to notice")
            frames_at_loss = engine.frames
            # The music goes on while the broker is away.
            await until(lambda: engine.frames >= frames_at_loss + 10, "frames during outage")
            await asyncio.to_thread(mosquitto.start)
            up_ns = time.monotonic_ns()
            await asyncio.wait_for(control.connected.wait(), 15)
            back_ns = time.monotonic_ns()
            assert control.stats.reconnects == 1
            # The restarted broker kept nothing (no persistence): the status was republished,
            # and the command subscription is back.
            async with Observer(mosquitto, f"{control.topics.prefix}/#") as obs:
                status = await obs.wait(topic_is(control.topics.status), what="status again")
                assert status.retain and status.json()["online"] is True
                await obs.publish(control.topics.cmd, b'{"action": "start"}')
                await obs.wait(is_status(control, running=True), what="command after restart")
                metrics = await obs.wait(topic_is(control.topics.metrics), what="metrics")
                assert metrics.json()["mqtt"]["reconnects"] == 1
        clock.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await clock
        print(
            f"\nreconnect: broker down {(up_ns - killed_ns) / 1e6:.0f} ms; "
            f"broker up -> subscribed + status republished {(back_ns - up_ns) / 1e6:.0f} ms; "
            f"lost -> restored (client's figure) {control.stats.last_reconnect_s:.3f} s; "
            f"frames during outage {engine.frames - frames_at_loss}; "
            f"worst tick lateness {worst_late_ns / 1e6:.2f} ms"
        )

    asyncio.run(body())


@pytest.mark.mqtt
def test_homeassistant_discovery_only_when_enabled(mosquitto: Broker) -> None:  # noqa: F811
    async def discovery_configs(enabled: bool) -> tuple[MqttControl, FakeEngine, list[Received]]:
        engine = FakeEngine()
        settings = settings_for(mosquitto, homeassistant={"enabled": enabled})
        control = MqttControl(settings, engine)
        async with running(control), Observer(mosquitto, "homeassistant/#") as obs:
            # Retained messages arrive at subscription, before anything published later.
            await obs.publish("homeassistant/marker", b"x")
            await obs.wait(topic_is("homeassistant/marker"), what="marker")
            node = f"musicgend_{settings.instance}"
            configs = [m for m in obs.messages if node in m.topic]
            if enabled:
                select = next(m.json() for m in configs if "/select/" in m.topic)
                command = select["command_template"].replace("{{ value }}", "solo")
                await obs.publish(select["command_topic"], command)
                async with Observer(mosquitto, control.topics.status) as st:
                    await st.wait(is_status(control, mode="solo"), what="mode via HA select")
        return control, engine, configs

    async def body() -> None:
        _, _, none = await discovery_configs(False)
        assert none == []
        _, engine, configs = await discovery_configs(True)
        assert len(configs) == 5 and all(m.retain for m in configs)
        assert engine.mode == "solo"

    asyncio.run(body())


@pytest.mark.mqtt
def test_tls_connection(tmp_path: Path) -> None:
    with mosquitto_broker(tls=True) as broker:

        async def body() -> None:
            settings = settings_for(broker, tls=TlsSettings(ca=broker.ca_file))
            assert settings.use_tls
            engine = FakeEngine()
            control = MqttControl(settings, engine)
            async with running(control), Observer(broker, f"{control.topics.prefix}/#") as obs:
                await obs.wait(is_status(control, online=True), what="status over TLS")
                await obs.publish(control.topics.cmd, b'{"action": "panic"}')
                await until(lambda: engine.calls, "the command over TLS")
                assert engine.calls == [("panic", None)]

        asyncio.run(body())
