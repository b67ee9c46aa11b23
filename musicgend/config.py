"""The daemon's configuration: a TOML file, then ``MUSICGEND_*`` environment variables, then
command-line flags (later sources win), validated once at start.

Environment variables name nested keys with ``__``: ``MUSICGEND_MQTT__URL``,
``MUSICGEND_ENGINE__CALL_RESPONSE__SILENCE_S``; a section or table takes a JSON object
(``MUSICGEND_ENGINE__CC='{"temperature": 21}'``). ``MUSICGEND_CONFIG`` names the TOML file when
``--config`` isn't given. Every section forbids unknown keys, and every other ``MUSICGEND_*``
variable is an error too, so a typo is an error rather than a silently ignored setting.
:func:`load_config` turns every problem into one line of a :class:`~musicgend.errors.ConfigError`
naming the key, where it came from, the value and what was expected.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from musicgend.core.sampling_defaults import (
    DEFAULT_SCALE_PENALTY,
    DEFAULT_SHORT_NOTE_PENALTY,
    LOG_HOLD_BIAS,
)
from musicgend.errors import ConfigError

ENV_PREFIX = "MUSICGEND_"
CONFIG_ENV = "MUSICGEND_CONFIG"
"""Environment variable naming the TOML file when no ``--config`` is given."""
OTHER_ENV = frozenset({CONFIG_ENV, "MUSICGEND_TOOLS"})
"""``MUSICGEND_*`` variables that aren't settings (``MUSICGEND_TOOLS``: scripts/bootstrap.sh)."""

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"
"""The model ``run`` uses when none is configured."""

MASK = "**********"

_SECRETS = (("mqtt", "password"),)
"""The key paths of the settings no message and no printed configuration shows."""


def _shown(value: Any, path: tuple[str | int, ...] = ()) -> Any:
    """``value``, given for the key ``path``, as a message or printout may show it. A secret
    (or anything inside one) is :data:`MASK`; a table holding one shows its keys, each through
    this function; any other value above a secret (a section's JSON text, a list, a string)
    is :data:`MASK` as a whole, as it may hold the secret where no key names it. Unset (None)
    stays None: it tells nothing."""
    inside = any(path[: len(secret)] == secret for secret in _SECRETS)
    above = any(secret[: len(path)] == path for secret in _SECRETS)
    if value is None or not (inside or above):
        return value
    if isinstance(value, Mapping) and not inside:
        return {key: _shown(item, (*path, key)) for key, item in value.items()}
    return MASK


_TOPIC_SEGMENT = re.compile(r"^[^/+#\x00]+$")

CcParam = Literal["temperature", "top_p", "top_k", "density", "hold_bias", "mode"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


def _check_pattern(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"a valid regular expression ({exc})") from None
    return value


def default_session_dir() -> Path:
    """``$STATE_DIRECTORY/sessions`` under systemd, else the user's data directory."""
    from musicgend.io.session import default_session_root

    return default_session_root()


class MidiSettings(_Section):
    backend: Literal["auto", "jack", "alsa"] = "auto"
    """``auto``: JACK if a server runs, else ALSA, else a private JACK dummy server."""
    client_name: str = Field("musicgend", min_length=1, max_length=63)
    in_port: str = Field("in", min_length=1, max_length=63)
    out_port: str = Field("out", min_length=1, max_length=63)
    connect_in: str | None = None
    """Regular expression: connect every matching output port to our input (also later)."""
    connect_out: str | None = None
    """Regular expression: connect our output to every matching input port (also later)."""
    channel: int = Field(1, ge=1, le=16)
    """MIDI channel the daemon plays on (1–16)."""
    velocity: int = Field(80, ge=1, le=127)
    transpose: int = Field(0, ge=-48, le=48)
    """Semitones added to every played pitch."""
    lowest_pitch: int = Field(0, ge=0, le=127)
    highest_pitch: int = Field(127, ge=0, le=127)
    sysex_limit_bytes: int = Field(4096, ge=0, le=1 << 20)
    """Longer incoming SysEx messages are dropped (and counted)."""
    input_queue_size: int = Field(1024, ge=1, le=1 << 20)
    lock_jack_memory: bool = False
    """true: let libjack lock the JACK server's whole shared memory (~40 MB with the private
    server, ~100 MB with jackd's default ``--port-max``) into the daemon, as JACK clients do
    by default; false: the daemon maps only the pages it uses (jackd keeps them locked)."""

    _patterns = field_validator("connect_in", "connect_out")(_check_pattern)

    @model_validator(mode="after")
    def _pitch_range(self) -> MidiSettings:
        if self.lowest_pitch > self.highest_pitch:
            raise ValueError(
                f"lowest_pitch ({self.lowest_pitch}) <= highest_pitch ({self.highest_pitch})"
            )
        if self.in_port == self.out_port:
            raise ValueError(f"in_port and out_port differ (both are {self.in_port!r})")
        return self


class CallResponseSettings(_Section):
    silence_s: float = Field(1.0, gt=0, le=60)
    """The player's silence after which the daemon answers."""
    answer_s: float = Field(4.0, gt=0, le=600)
    """How long an answer lasts at most."""


class EngineSettings(_Section):
    model: Path = BUNDLED_MODEL_DIR
    runtime: Literal["auto", "numpy", "litert", "tf", "tf-xla", "keras", "eager"] = "auto"
    """Inference runtime (see musicgend.model.runtime); ``auto`` picks the fastest available."""
    threads: int = Field(1, ge=1, le=64)
    """LiteRT interpreter threads (NumPy runs on one BLAS thread); 1 beside JACK on few cores."""
    mode: Literal["accompany", "call-response", "solo"] = "accompany"
    temperature: float = Field(1.0, gt=0, le=10)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, le=1_000_000)
    """0 = no top-k cut."""
    density: float = Field(1.0, ge=0, le=1)
    """1 = play as the model samples; lower values thin the output out."""
    seed: int | None = None
    """Sampling seed; unset = a fresh seed each run."""
    hold_bias: float = Field(LOG_HOLD_BIAS, ge=-10, le=10)
    """Extra log-probability for repeating the chord that sounds (> 0 holds chords longer,
    < 0 changes them more often; the default 0 suits the bundled model, −1.2 ≈ ln 0.3 the
    ``musicgend`` vocabulary preset)."""
    scale_penalty: float = Field(DEFAULT_SCALE_PENALTY, ge=0, le=1)
    """Weight × per pitch outside the key of the recent frames (1 = off)."""
    short_note_penalty: float = Field(DEFAULT_SHORT_NOTE_PENALTY, ge=0, le=1)
    """Weight × per note begun in the last frame that a chord would end (1 = off)."""
    memory: float = Field(1.0, ge=0, le=1)
    """Share × of the piece memory's recall, for a model with one (``memory.json``): 1 = as
    tuned on the model's validation pieces, 0 = off (the network alone)."""
    call_response: CallResponseSettings = Field(default_factory=CallResponseSettings)
    cc: dict[CcParam, int] = Field(default_factory=dict)
    """MIDI CC bindings, e.g. ``{temperature = 21}`` (CC numbers 0–119)."""

    @field_validator("cc")
    @classmethod
    def _cc_numbers(cls, value: dict[str, int]) -> dict[str, int]:
        for name, number in value.items():
            if not 0 <= number <= 119:
                raise ValueError(f"CC numbers 0-119, got {name} = {number}")
        numbers = list(value.values())
        if len(set(numbers)) != len(numbers):
            raise ValueError("each CC number bound to one parameter only")
        return value


class SessionSettings(_Section):
    enabled: bool = True
    dir: Path = Field(default_factory=default_session_dir)


class TlsSettings(_Section):
    ca: Path | None = None
    """CA bundle to verify the broker; unset = the system's trust store."""
    cert: Path | None = None
    """Client certificate (with ``key``) for brokers that require one."""
    key: Path | None = None
    insecure: bool = False
    """Skip host-name verification (testing only)."""

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key both set, or neither")
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"tls.{name} to be a readable file, got {str(path)!r}")
        return self


class HomeAssistantSettings(_Section):
    enabled: bool = False
    discovery_prefix: str = "homeassistant"

    @field_validator("discovery_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return _check_topic(value)


def _check_topic(value: str) -> str:
    parts = value.split("/")
    if not all(_TOPIC_SEGMENT.match(p) for p in parts):
        raise ValueError(
            "an MQTT topic of non-empty '/'-separated levels without '+', '#' or NUL, "
            f"got {value!r}"
        )
    return value


class MqttSettings(_Section):
    url: str | None = None
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` (TLS); unset = no MQTT."""
    instance: str = "default"
    prefix: str | None = None
    """Topic prefix; unset = ``musicgend/<instance>``."""
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    """A file holding the password (first line), e.g. a systemd credential."""
    tls: TlsSettings = Field(default_factory=TlsSettings)
    client_id: str | None = None
    """Unset = ``musicgend-<instance>``."""
    qos: Literal[0, 1, 2] = 1
    keepalive_s: int = Field(30, ge=5, le=65535)
    metrics_interval_s: float = Field(5.0, gt=0, le=3600)
    reconnect_min_s: float = Field(0.5, gt=0, le=3600)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)
    homeassistant: HomeAssistantSettings = Field(default_factory=HomeAssistantSettings)

    _password_from_file: SecretStr | None = PrivateAttr(None)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"mqtt://host[:port] or mqtts://host[:port], got {value!r}")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"a port 1-65535 in the URL, got {value!r}") from None
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"no path, query or fragment in the URL, got {value!r}")
        if parts.username or parts.password:
            raise ValueError("credentials in username/password(_file), not in the URL")
        return value

    @field_validator("instance")
    @classmethod
    def _instance(cls, value: str) -> str:
        if not _TOPIC_SEGMENT.match(value):
            raise ValueError(f"one topic level without '/', '+', '#', got {value!r}")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        return None if value is None else _check_topic(value)

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("password or password_file, not both")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s}) <= "
                f"reconnect_max_s ({self.reconnect_max_s})"
            )
        if self.password_file is not None:
            try:
                text = self.password_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"password_file readable as UTF-8 text ({str(self.password_file)!r}: {exc})"
                ) from None
            lines = text.splitlines()
            self._password_from_file = SecretStr(lines[0] if lines else "")
        return self

    # -- derived values ------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.url is not None

    @property
    def topic_prefix(self) -> str:
        return self.prefix if self.prefix is not None else f"musicgend/{self.instance}"

    @property
    def effective_client_id(self) -> str:
        return self.client_id if self.client_id is not None else f"musicgend-{self.instance}"

    @property
    def use_tls(self) -> bool:
        return self.url is not None and urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        if self.url is None:
            raise ConfigError("mqtt.url is not set")
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        if self.url is None:
            raise ConfigError("mqtt.url is not set")
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    def password_value(self) -> str | None:
        """The password in clear text (from ``password`` or ``password_file``), or None."""
        secret = self.password if self.password is not None else self._password_from_file
        return None if secret is None else secret.get_secret_value()


class ClockSettings(_Section):
    fs: Literal[5] = 5
    """Nominal frames per second (fixed: the models are trained at 5)."""
    source: Literal["internal", "midi"] = "internal"
    """``internal``: the daemon's own clock; ``midi``: follow MIDI clock on the input port."""
    bpm: float | None = Field(None, ge=20, le=300)
    """Internal clock tempo (a frame is ``ticks_per_frame`` ticks of 24 per quarter note);
    unset: exactly ``fs`` frames per second (150 BPM with 12 ticks per frame)."""
    ticks_per_frame: int = Field(12, ge=1, le=96)
    """MIDI clock ticks per frame (24 = a quarter note; 12, the default, an eighth)."""
    loss_timeout_s: float = Field(0.5, gt=0, le=10)
    """MIDI clock: no tick for this long while running is a clock loss (the daemon falls
    silent and says so on MQTT until ticks come back)."""

    @model_validator(mode="after")
    def _bpm_is_internal(self) -> ClockSettings:
        if self.source == "midi" and self.bpm is not None:
            raise ValueError(
                "bpm sets the internal clock; with source 'midi' the band's clock sets the tempo"
            )
        return self


class _TomlSource(PydanticBaseSettingsSource):
    """The already parsed TOML file as a settings source."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class _EnvSource(EnvSettingsSource):
    """The ``MUSICGEND_*`` variables :func:`load_config` checked (the bad ones it reports)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {name.lower(): value for name, value in environ.items()}


class Settings(BaseSettings):
    """The whole configuration. Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        case_sensitive=False,
    )

    midi: MidiSettings = Field(default_factory=MidiSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    session: SessionSettings = Field(default_factory=SessionSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    clock: ClockSettings = Field(default_factory=ClockSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: command-line flags, then the environment, then the file.
        return (
            init_settings,
            _EnvSource(settings_cls, _INPUTS.environ),
            _TomlSource(settings_cls, _INPUTS.file),
        )

    def public_dict(self) -> dict[str, Any]:
        """The effective configuration as JSON-able data, secrets masked."""
        data: dict[str, Any] = _shown(json.loads(self.model_dump_json()))
        if self.mqtt.password_file is not None:  # set, from the file
            data["mqtt"]["password"] = MASK
        return data


class _Inputs:
    """Hands the parsed TOML and the checked environment variables to
    :meth:`Settings.settings_customise_sources` (a classmethod)."""

    def __init__(self) -> None:
        self.file: dict[str, Any] = {}
        self.environ: dict[str, str] = {}


_INPUTS = _Inputs()


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML config file; errors name the file (and line, for syntax errors)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: can't read config file ({exc.strerror or exc})") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _nest(overrides: Mapping[str, object]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _lookup(data: Mapping[str, Any], loc: tuple[str | int, ...]) -> bool:
    node: Any = data
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _env_name(loc: tuple[str | int, ...]) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc)


def _settings_env() -> dict[str, tuple[tuple[str, ...], bool]]:
    """Every variable that names a setting: its name -> (key path, whether it takes JSON)."""
    names: dict[str, tuple[tuple[str, ...], bool]] = {}

    def walk(model: type[BaseModel], parent: tuple[str, ...]) -> None:
        for field_name, info in model.model_fields.items():
            path = (*parent, field_name)
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                names[_env_name(path)] = (path, True)
                walk(annotation, path)
            elif get_origin(annotation) is dict:
                # pydantic-settings also reads one entry per variable: MUSICGEND_ENGINE__CC__TOP_P.
                names[_env_name(path)] = (path, True)
                for key in get_args(get_args(annotation)[0]):
                    names[_env_name((*path, key))] = ((*path, key), False)
            else:
                names[_env_name(path)] = (path, False)

    walk(Settings, ())
    return names


@dataclass(frozen=True)
class _EnvVar:
    name: str
    """As set (pydantic-settings reads the names case-insensitively)."""
    path: tuple[str, ...]
    value: Any
    """Decoded JSON for a section or table, else the text."""


def _suggest(suffix: str, known: Mapping[str, tuple[tuple[str, ...], bool]]) -> str:
    """'; did you mean …?' for an unknown variable (``suffix``: its name after the prefix)."""
    candidates = {name[len(ENV_PREFIX) :]: name for name in [*known, CONFIG_ENV]}
    close = difflib.get_close_matches(suffix, candidates, n=1, cutoff=0.75)
    matches = [candidates[c] for c in close]
    if not matches:  # MUSICGEND_BPM: the key without its section
        matches = sorted(name for name, (path, _) in known.items() if path[-1] == suffix.lower())
    return f"; did you mean {' or '.join(matches)}?" if matches else ""


def _check_env(environ: Mapping[str, str]) -> tuple[list[_EnvVar], list[str]]:
    """The ``MUSICGEND_*`` variables that name settings, and one problem line for each other
    one (outside :data:`OTHER_ENV`) and for each section or table that isn't valid JSON."""
    known = _settings_env()
    usable: list[_EnvVar] = []
    problems: list[str] = []
    for name, text in sorted(environ.items()):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in OTHER_ENV:
            continue
        suffix = upper[len(ENV_PREFIX) :]
        key = ".".join(suffix.lower().split("__"))
        if upper not in known:
            problems.append(f"{key} (environment {name}): unknown key{_suggest(suffix, known)}")
            continue
        path, takes_json = known[upper]
        value: Any = text
        if takes_json:
            try:
                value = json.loads(text)
            except ValueError as exc:
                reason = (
                    f"{exc.msg} at character {exc.pos + 1}"
                    if isinstance(exc, json.JSONDecodeError)
                    else str(exc)
                )
            except RecursionError:
                reason = "nested too deeply"
            else:
                reason = ""
            if reason:
                problems.append(
                    f"{key} = {_shown(text, path)!r} (environment {name}): "
                    f"expected a JSON object (not valid JSON: {reason})"
                )
                continue
        usable.append(_EnvVar(name, path, value))
    return usable, problems


def _env_origin(loc: tuple[str | int, ...], env: list[_EnvVar]) -> str | None:
    """The variable(s) a value at ``loc`` came from: those naming ``loc`` or a key inside it
    (a check across a section's keys), else the most specific JSON value holding it."""
    inside = [var.name for var in env if var.path[: len(loc)] == loc]
    if inside:
        return ", ".join(inside)
    holding = [
        var
        for var in env
        if loc[: len(var.path)] == var.path and _lookup(var.value, loc[len(var.path) :])
    ]
    return max(holding, key=lambda var: len(var.path)).name if holding else None


def _describe(
    exc: ValidationError,
    file: Path | None,
    file_data: Mapping[str, Any],
    flags: Mapping[str, Any],
    env: list[_EnvVar],
) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p not in ("function-after", "[key]"))
        key = ".".join(str(p) for p in loc) or "(top level)"
        env_origin = _env_origin(loc, env) if loc else None
        if _lookup(flags, loc):
            origin = "command line"
        elif env_origin is not None:
            origin = f"environment {env_origin}"
        elif file is not None and (_lookup(file_data, loc) or _lookup(file_data, loc[:-1])):
            origin = str(file)
        else:
            origin = "default"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key missing"
        elif message.startswith("Value error, "):
            message = "expected " + message[len("Value error, ") :]
        elif message.startswith("Input should be "):
            message = "expected " + message[len("Input should be ") :]
        if err["type"] in ("extra_forbidden", "missing") or not loc:
            value = ""
        else:
            value = f" = {_shown(err['input'], loc)!r}"
        lines.append(f"{key}{value} ({origin}): {message}")
    return lines


def config_path(path: Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file to read: ``path`` if given, else ``$MUSICGEND_CONFIG``, else none."""
    env = os.environ if environ is None else environ
    if path is not None:
        return path
    named = env.get(CONFIG_ENV)
    return Path(named) if named else None


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Read, merge and validate the configuration once.

    ``path``: the TOML file (else ``$MUSICGEND_CONFIG``, else no file). ``overrides``: command-
    line flags as dotted keys, e.g. ``{"midi.backend": "jack", "mqtt.url": None}``; None values
    (flags not given) are dropped. Raises :class:`ConfigError` listing every problem.
    """
    environ = dict(os.environ)
    file = config_path(path, environ)
    file_data = read_toml(file) if file is not None else {}
    flags = _nest(overrides or {})
    env, problems = _check_env(environ)
    _INPUTS.file = file_data
    _INPUTS.environ = {var.name: environ[var.name] for var in env}
    try:
        settings = Settings(**flags)
    except ValidationError as exc:
        problems += _describe(exc, file, file_data, flags, env)
    finally:
        _INPUTS.file, _INPUTS.environ = {}, {}
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return settings


def to_toml(data: Mapping[str, Any]) -> str:
    """Render JSON-able nested data as TOML (unset values become comments)."""
    out: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, list):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        return json.dumps(str(value), ensure_ascii=False)

    def table(name: str, node: Mapping[str, Any]) -> None:
        leaves = {k: v for k, v in node.items() if not isinstance(v, Mapping) or not v}
        subs = {k: v for k, v in node.items() if isinstance(v, Mapping) and v}
        if name:
            out.append(f"[{name}]")
        for key, value in leaves.items():
            if value is None:
                out.append(f"# {key} = (unset)")
            elif isinstance(value, Mapping):
                out.append(f"{key} = {{}}")
            else:
                out.append(f"{key} = {scalar(value)}")
        if name:
            out.append("")
        for key, value in subs.items():
            table(f"{name}.{key}" if name else key, value)

    table("", data)
    return "\n".join(out).rstrip() + "\n"
