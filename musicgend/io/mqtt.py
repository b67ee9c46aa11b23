"""MQTT control (DESIGN.md §5): commands in, retained status, metrics and errors out.

Topics under the prefix (default ``musicgend/<instance>``):

- ``…/cmd`` (JSON in): ``{"action": "start"|"stop"|"panic"|"set"|"load_model", …}``; ``set``
  takes ``mode``, ``temperature``, ``top_p``, ``density``, ``seed`` (and ``top_k``,
  ``hold_bias``, ``scale_penalty``, ``short_note_penalty``, ``memory``, and ``bpm`` for the internal
  clock); ``load_model`` takes ``path``. Every command may carry an
  ``id`` (string or integer) that errors echo. Zero-length payloads (clearing a retained
  message) are ignored; retained commands the broker replays at (re)subscription are refused
  (they would run again on every reconnect; a retained command published while connected is
  delivered live, without the flag, and runs once).
- ``…/status`` (retained JSON out): ``online``, ``mode``, ``model``, ``params``, ``clock``
  (``source``, ``state``: running/stopped/lost, ``bpm``, ``frame_ms``), ``session`` —
  whatever the engine's ``status()`` returns plus ``online``. The last will and a clean exit both
  publish ``{"online": false}``, retained.
- ``…/metrics`` (JSON out, every ``metrics_interval_s``): the engine's ``metrics()`` plus the
  client's own reconnect figures.
- ``…/error`` (JSON out): every rejected command with the reason.

MQTT never blocks the engine: this client runs as its own asyncio task, only calls the engine's
cheap synchronous methods, and runs ``load_model`` as a background task. While the broker is
away it retries with exponential backoff; every (re)connection subscribes again and republishes
the retained status (and Home Assistant discovery, when enabled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from musicgend import __version__
from musicgend.config import MqttSettings
from musicgend.errors import MusicgendError

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 64 * 1024
"""Larger command payloads are refused unread."""

MODES = ("accompany", "call-response", "solo")
OFFLINE = json.dumps({"online": False})


class EngineControl(Protocol):
    """What the MQTT client needs from the engine. All calls come from the event loop thread.

    ``set_params`` and ``load_model`` refuse bad requests by raising
    :class:`~musicgend.errors.MusicgendError` (or ``ValueError``); the message goes to
    ``…/error``. ``load_model`` must keep the old model playing until the new one is ready.
    ``metrics()`` should hold ``frame_latency_ms`` (``p50``, ``p99``, ``max``),
    ``late_frames`` and ``dropped_input`` (Home Assistant's sensors read the first two).
    """

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def panic(self) -> None: ...

    def set_params(self, **params: Any) -> None: ...

    async def load_model(self, path: Path) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def metrics(self) -> dict[str, Any]: ...


# -- commands ----------------------------------------------------------------------------


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    id: StrictStr | StrictInt | None = None


class StartCommand(_Command):
    action: Literal["start"]


class StopCommand(_Command):
    action: Literal["stop"]


class PanicCommand(_Command):
    action: Literal["panic"]


class SetCommand(_Command):
    action: Literal["set"]
    mode: Literal["accompany", "call-response", "solo"] | None = None
    temperature: float | None = Field(None, gt=0, le=10)
    top_p: float | None = Field(None, gt=0, le=1)
    density: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    hold_bias: float | None = Field(None, ge=-10, le=10)
    scale_penalty: float | None = Field(None, ge=0, le=1)
    short_note_penalty: float | None = Field(None, ge=0, le=1)
    memory: float | None = Field(None, ge=0, le=1)
    bpm: float | None = Field(None, ge=20, le=300)

    def params(self) -> dict[str, Any]:
        """The fields the command gave; ``seed`` may be None (back to an unseeded draw)."""
        return self.model_dump(exclude={"action", "id"}, exclude_unset=True)


class LoadModelCommand(_Command):
    action: Literal["load_model"]
    path: str = Field(min_length=1, max_length=4096)


SET_FIELDS = tuple(name for name in SetCommand.model_fields if name not in ("action", "id"))
Command = StartCommand | StopCommand | PanicCommand | SetCommand | LoadModelCommand
ACTIONS = ("start", "stop", "panic", "set", "load_model")
_COMMAND = TypeAdapter[Command](Annotated[Command, Field(discriminator="action")])


class CommandError(MusicgendError):
    """A command payload was refused; ``reason`` says why, ``id`` echoes the command's id."""

    def __init__(self, reason: str, *, action: str | None = None, id: object = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.action = action
        self.id = id


def _describe_validation(exc: PydanticValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        # Drop the discriminator's tag ("set") from the location: "temperature", not "set.x".
        if loc and loc[0] in ACTIONS:
            loc = loc[1:]
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field {key!r}")
        elif err["type"] == "missing":
            parts.append(f"missing field {key!r}")
        else:
            msg = err["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
            parts.append(f"{key} = {err['input']!r}: expected {msg}")
    return "; ".join(parts)


def parse_command(payload: bytes) -> Command:
    """Validate one ``…/cmd`` payload; raise :class:`CommandError` naming what is wrong."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandError(f"payload too large: {len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(
            f"payload is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"payload is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise CommandError("payload is not usable JSON (nested too deeply)") from None
    except ValueError:  # an integer of more than 4,300 digits
        raise CommandError("payload is not usable JSON (a number with too many digits)") from None
    if not isinstance(data, dict):
        raise CommandError(f"command must be a JSON object, got {type(data).__name__}")
    action = data.get("action")
    cmd_id = data.get("id")
    if "action" not in data:
        raise CommandError(f"missing 'action'; expected one of {', '.join(ACTIONS)}", id=cmd_id)
    if action not in ACTIONS:
        raise CommandError(
            f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}", id=cmd_id
        )
    try:
        cmd = _COMMAND.validate_python(data)
    except PydanticValidationError as exc:
        raise CommandError(_describe_validation(exc), action=action, id=cmd_id) from None
    if isinstance(cmd, SetCommand):
        params = cmd.params()
        if not params:
            raise CommandError(
                f"'set' needs at least one of {', '.join(SET_FIELDS)}", action="set", id=cmd_id
            )
        nulls = [name for name, value in params.items() if value is None and name != "seed"]
        if nulls:
            raise CommandError(
                f"{nulls[0]} = None: expected a value (only seed may be null: an unseeded draw)",
                action="set",
                id=cmd_id,
            )
    return cmd


def _excerpt(payload: bytes, limit: int = 200) -> str:
    text = payload[:limit].decode("utf-8", errors="backslashreplace")
    return text + ("…" if len(payload) > limit else "")


# -- topics, discovery ---------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    prefix: str

    @property
    def cmd(self) -> str:
        return f"{self.prefix}/cmd"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}/metrics"

    @property
    def error(self) -> str:
        return f"{self.prefix}/error"


def discovery_messages(settings: MqttSettings) -> list[tuple[str, dict[str, Any]]]:
    """Home Assistant MQTT discovery: (config topic, payload) pairs, published retained.

    A select for the mode, a number for the temperature, a button for panic, and sensors for
    the frame latency (p99) and the late-frame count.
    """
    topics = Topics(settings.topic_prefix)
    node = "musicgend_" + "".join(c if c.isalnum() else "_" for c in settings.instance)
    device = {
        "identifiers": [node],
        "name": f"musicgend {settings.instance}",
        "manufacturer": "musicgend",
        "model": "musicgend",
        "sw_version": __version__,
    }
    common = {
        "device": device,
        "availability_topic": topics.status,
        "availability_template": "{{ 'online' if value_json.online else 'offline' }}",
        "qos": settings.qos,
    }
    entities: list[tuple[str, str, dict[str, Any]]] = [
        (
            "select",
            "mode",
            {
                "name": "Mode",
                "options": list(MODES),
                "command_topic": topics.cmd,
                "command_template": '{"action": "set", "mode": "{{ value }}"}',
                "state_topic": topics.status,
                "value_template": "{{ value_json.mode }}",
            },
        ),
        (
            "number",
            "temperature",
            {
                "name": "Temperature",
                "min": 0.1,
                "max": 3.0,
                "step": 0.05,
                "mode": "slider",
                "command_topic": topics.cmd,
                "command_template": '{"action": "set", "temperature": {{ value }}}',
                "state_topic": topics.status,
                "value_template": "{{ value_json.params.temperature }}",
            },
        ),
        (
            "button",
            "panic",
            {
                "name": "Panic (all notes off)",
                "command_topic": topics.cmd,
                "payload_press": json.dumps({"action": "panic"}),
            },
        ),
        (
            "sensor",
            "latency_p99",
            {
                "name": "Frame latency p99",
                "state_topic": topics.metrics,
                "value_template": "{{ value_json.frame_latency_ms.p99 }}",
                "unit_of_measurement": "ms",
                "state_class": "measurement",
            },
        ),
        (
            "sensor",
            "late_frames",
            {
                "name": "Late frames",
                "state_topic": topics.metrics,
                "value_template": "{{ value_json.late_frames }}",
                "state_class": "total_increasing",
            },
        ),
    ]
    out = []
    for component, object_id, config in entities:
        payload = {**config, **common, "unique_id": f"{node}_{object_id}"}
        out.append(
            (
                f"{settings.homeassistant.discovery_prefix}/{component}/{node}/{object_id}/config",
                payload,
            )
        )
    return out


# -- the client ----------------------------------------------------------------------------


@dataclass
class MqttStats:
    """What the client counts; part of every metrics message under ``mqtt``."""

    connected: bool = False
    connections: int = 0
    reconnects: int = 0
    last_reconnect_s: float | None = None
    """Time from losing the broker to being subscribed again, last time."""
    commands: int = 0
    rejected: int = 0
    disconnected_at_ns: int | None = field(default=None, repr=False)

    def public(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "reconnects": self.reconnects,
            "last_reconnect_s": self.last_reconnect_s,
            "commands": self.commands,
            "rejected": self.rejected,
        }


def _tls_context(settings: MqttSettings) -> ssl.SSLContext:
    tls = settings.tls
    context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    if tls.cert is not None and tls.key is not None:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.insecure:
        context.check_hostname = False
    return context


class MqttControl:
    """Connects to the broker, keeps reconnecting, routes commands to the engine.

    ``await run()`` until cancelled or :meth:`request_stop`; both paths publish
    ``{"online": false}`` retained before disconnecting. Call :meth:`notify_status` when the
    engine's status changes by itself (the status is also compared every metrics interval and
    republished when it differs).
    """

    def __init__(self, settings: MqttSettings, engine: EngineControl) -> None:
        if settings.url is None:
            raise MusicgendError("mqtt.url is not set")
        self.settings = settings
        self.engine = engine
        self.topics = Topics(settings.topic_prefix)
        self.stats = MqttStats()
        self.connected = asyncio.Event()
        """Set while connected and subscribed (tests and the runtime may wait on it)."""
        self._stop = asyncio.Event()
        self._status_dirty = asyncio.Event()
        self._published_status: str | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None

    # -- public ---------------------------------------------------------------------------

    def notify_status(self) -> None:
        """The engine's status changed: publish it soon (no-op while disconnected)."""
        self._status_dirty.set()

    def request_stop(self) -> None:
        """Publish offline, disconnect and make :meth:`run` return."""
        self._stop.set()

    async def run(self) -> None:
        """Stay connected until stopped or cancelled; never raises for broker trouble."""
        backoff_s = self.settings.reconnect_min_s
        try:
            while not self._stop.is_set():
                was_up = False
                try:
                    async with self._make_client() as client:
                        self._client = client
                        await self._setup(client)
                        was_up = True
                        try:
                            await self._serve(client)
                        except aiomqtt.MqttError:
                            raise  # the connection is gone: nothing to publish on
                        except BaseException:  # cancelled, or failed: say offline first
                            await self._go_offline(client)
                            raise
                        await self._go_offline(client)
                        return
                except aiomqtt.MqttError as exc:
                    self._lost(exc)
                finally:
                    self._client = None
                    self.connected.clear()
                    self.stats.connected = False
                if was_up:
                    backoff_s = self.settings.reconnect_min_s
                delay_s = backoff_s * random.uniform(0.8, 1.0)
                log.info("mqtt: retrying in %.2f s", delay_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay_s)
                backoff_s = min(backoff_s * 2, self.settings.reconnect_max_s)
        finally:
            if self._load_task is not None and not self._load_task.done():
                self._load_task.cancel()

    # -- connection -----------------------------------------------------------------------

    def _make_client(self) -> aiomqtt.Client:
        s = self.settings
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password_value(),
            identifier=s.effective_client_id,
            will=aiomqtt.Will(self.topics.status, OFFLINE, qos=s.qos, retain=True),
            keepalive=s.keepalive_s,
            timeout=10.0,
            tls_context=_tls_context(s) if s.use_tls else None,
            clean_session=True,
        )

    async def _setup(self, client: aiomqtt.Client) -> None:
        """Subscribe, publish the retained status (and discovery): a (re)connection's work."""
        await client.subscribe(self.topics.cmd, qos=self.settings.qos)
        await self._publish_status(client, force=True)
        if self.settings.homeassistant.enabled:
            for topic, payload in discovery_messages(self.settings):
                await client.publish(topic, json.dumps(payload), qos=self.settings.qos, retain=True)
        stats = self.stats
        if stats.disconnected_at_ns is not None:
            stats.reconnects += 1
            stats.last_reconnect_s = (time.monotonic_ns() - stats.disconnected_at_ns) / 1e9
            stats.disconnected_at_ns = None
            log.info("mqtt: reconnected in %.3f s", stats.last_reconnect_s)
        else:
            log.info("mqtt: connected to %s:%d", self.settings.host, self.settings.port)
        stats.connections += 1
        stats.connected = True
        self.connected.set()

    def _lost(self, exc: aiomqtt.MqttError) -> None:
        if self.stats.connected:
            self.stats.disconnected_at_ns = time.monotonic_ns()
            log.warning("mqtt: connection lost (%s)", exc)
        else:
            log.warning(
                "mqtt: can't connect to %s:%d (%s)", self.settings.host, self.settings.port, exc
            )

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Consume commands and publish status/metrics until stopped or disconnected."""
        tasks = [
            asyncio.create_task(self._consume(client), name="mqtt-consume"),
            asyncio.create_task(self._publish_loop(client), name="mqtt-publish"),
            asyncio.create_task(self._stop.wait(), name="mqtt-stop"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc

    async def _go_offline(self, client: aiomqtt.Client) -> None:
        try:
            await asyncio.wait_for(
                client.publish(self.topics.status, OFFLINE, qos=self.settings.qos, retain=True),
                5.0,
            )
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("mqtt: couldn't publish offline status (%s)", exc)

    # -- commands -------------------------------------------------------------------------

    async def _consume(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if not message.topic.matches(self.topics.cmd):
                continue
            raw = message.payload
            payload = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw or "").encode()
            try:
                await self._handle(client, payload, retained=message.retain)
            except aiomqtt.MqttError:
                raise  # the connection: run() reconnects
            except Exception:  # a bug here must not take the daemon down
                log.exception("mqtt: handling a command failed: %s", _excerpt(payload))

    async def _handle(self, client: aiomqtt.Client, payload: bytes, *, retained: bool) -> None:
        if not payload:
            # A zero-length message is how a retained command gets cleared: not a command.
            return
        self.stats.commands += 1
        if retained:
            await self._reject(
                client,
                CommandError("retained commands are ignored (publish commands without retain)"),
                payload,
            )
            return
        try:
            cmd = parse_command(payload)
        except CommandError as exc:
            await self._reject(client, exc, payload)
            return
        try:
            self._dispatch(cmd, payload)
        except CommandError as exc:
            await self._reject(client, exc, payload)
            return
        except (MusicgendError, ValueError, TypeError) as exc:
            refused = CommandError(str(exc), action=cmd.action, id=cmd.id)
            await self._reject(client, refused, payload)
            return
        except Exception as exc:  # an engine bug must not take MQTT control down
            log.exception("mqtt: command %s failed", cmd.action)
            refused = CommandError(f"internal error: {exc}", action=cmd.action, id=cmd.id)
            await self._reject(client, refused, payload)
            return
        await self._publish_status(client)

    def _dispatch(self, cmd: Command, payload: bytes) -> None:
        match cmd:
            case StartCommand():
                self.engine.start()
            case StopCommand():
                self.engine.stop()
            case PanicCommand():
                self.engine.panic()
            case SetCommand():
                self.engine.set_params(**cmd.params())
            case LoadModelCommand():
                if self._load_task is not None and not self._load_task.done():
                    raise CommandError(
                        "a model load is already in progress", action=cmd.action, id=cmd.id
                    )
                self._load_task = asyncio.create_task(
                    self._load(cmd, payload), name="mqtt-load-model"
                )

    async def _load(self, cmd: LoadModelCommand, payload: bytes) -> None:
        try:
            await self.engine.load_model(Path(cmd.path))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, MusicgendError | ValueError | OSError):
                log.exception("mqtt: load_model failed")
            reason = f"load_model refused: {exc}"
            client = self._client
            if client is None:
                log.warning("mqtt: %s (not reported: disconnected)", reason)
                return
            await self._reject(client, CommandError(reason, action=cmd.action, id=cmd.id), payload)
            return
        self.notify_status()

    async def _reject(self, client: aiomqtt.Client, exc: CommandError, payload: bytes) -> None:
        self.stats.rejected += 1
        log.info("mqtt: rejected command: %s", exc.reason)
        message = {
            "error": exc.reason,
            "action": exc.action,
            "id": exc.id if isinstance(exc.id, str | int) else None,
            "payload": _excerpt(payload),
            "ts": time.time(),
        }
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(self.topics.error, json.dumps(message), qos=self.settings.qos)

    # -- status and metrics ---------------------------------------------------------------

    def _status_payload(self) -> str | None:
        try:
            status = {k: v for k, v in self.engine.status().items() if k != "online"}
            return json.dumps({"online": True, **status})
        except Exception:
            log.exception("mqtt: engine status failed")
            return None

    async def _publish_status(self, client: aiomqtt.Client, *, force: bool = False) -> None:
        payload = self._status_payload()
        if payload is None or (payload == self._published_status and not force):
            return
        await client.publish(self.topics.status, payload, qos=self.settings.qos, retain=True)
        self._published_status = payload

    async def _publish_metrics(self, client: aiomqtt.Client) -> None:
        try:
            metrics = dict(self.engine.metrics())
        except Exception:
            log.exception("mqtt: engine metrics failed")
            return
        message = {"ts": time.time(), **metrics, "mqtt": self.stats.public()}
        await client.publish(self.topics.metrics, json.dumps(message), qos=self.settings.qos)

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        interval_ns = int(self.settings.metrics_interval_s * 1e9)
        next_ns = time.monotonic_ns() + interval_ns
        while True:
            timeout_s = max(0.0, (next_ns - time.monotonic_ns()) / 1e9)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_dirty.wait(), timeout_s)
            if self._status_dirty.is_set():
                self._status_dirty.clear()
                await self._publish_status(client)
            now_ns = time.monotonic_ns()
            if now_ns >= next_ns:
                await self._publish_metrics(client)
                await self._publish_status(client)
                next_ns += interval_ns
                if next_ns <= now_ns:  # fell behind (suspend?): don't burst
                    next_ns = now_ns + interval_ns
