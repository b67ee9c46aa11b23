"""Config: TOML file < MUSICGEND_* environment < flags, validated once, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from musicgend.config import BUNDLED_MODEL_DIR, MASK, load_config, read_toml, to_toml
from musicgend.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "systemd" / "musicgend.example.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("MUSICGEND_") or name == "STATE_DIRECTORY":
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file() -> None:
    cfg = load_config()
    assert cfg.midi.backend == "auto"
    assert cfg.midi.channel == 1
    assert cfg.engine.model == BUNDLED_MODEL_DIR
    assert cfg.mqtt.enabled is False
    assert cfg.mqtt.topic_prefix == "musicgend/default"
    assert cfg.clock.fs == 5


def test_example_config_validates() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.mqtt.url == "mqtt://localhost:1883"
    assert cfg.mqtt.topic_prefix == "musicgend/studio"
    assert cfg.engine.cc == {"temperature": 21, "top_p": 22, "density": 23}
    assert cfg.midi.lowest_pitch == 36
    # Every key of the example is a real key: rendering the effective config keeps them all.
    example = read_toml(EXAMPLE)
    effective = cfg.public_dict()
    for section, values in example.items():
        for key in values:
            assert key in effective[section], f"{section}.{key}"


def test_precedence_file_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        '[midi]\nchannel = 3\nvelocity = 90\nclient_name = "file"\n'
        '[mqtt]\nurl = "mqtt://file:1883"\nqos = 0\n',
    )
    monkeypatch.setenv("MUSICGEND_MIDI__CHANNEL", "4")
    monkeypatch.setenv("MUSICGEND_MQTT__URL", "mqtt://env:1884")
    cfg = load_config(path, {"midi.channel": 5, "midi.backend": None, "mqtt.qos": 2})
    assert cfg.midi.channel == 5  # flag beats env and file
    assert cfg.mqtt.url == "mqtt://env:1884"  # env beats file
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("env", 1884)
    assert cfg.mqtt.qos == 2
    assert cfg.midi.velocity == 90  # file beats default; sibling keys survive the merge
    assert cfg.midi.client_name == "file"
    assert cfg.midi.backend == "auto"  # a flag not given (None) changes nothing


def test_config_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[engine]\nmode = "solo"\n')
    monkeypatch.setenv("MUSICGEND_CONFIG", str(path))
    assert load_config().engine.mode == "solo"
    other = write(tmp_path, '[engine]\nmode = "call-response"\n', "other.toml")
    assert load_config(other).engine.mode == "call-response"


def test_every_problem_named_with_key_value_origin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        '[midi]\nchannel = 17\nchanel = 3\nconnect_in = "a("\n'
        '[mqtt]\nurl = "http://broker"\nqos = 3\n',
    )
    monkeypatch.setenv("MUSICGEND_ENGINE__TEMPERATURE", "hot")
    with pytest.raises(ConfigError) as info:
        load_config(path, {"midi.velocity": 0})
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid configuration:"
    text = "\n".join(lines)
    assert f"midi.channel = 17 ({path}): expected less than or equal to 16" in text
    assert f"midi.chanel ({path}): unknown key" in text
    assert "midi.connect_in = 'a(' " in text and "regular expression" in text
    assert "mqtt.url = 'http://broker'" in text and "mqtt://host[:port]" in text
    assert "mqtt.qos = 3" in text and "expected 0, 1 or 2" in text
    assert "midi.velocity = 0 (command line)" in text
    assert "engine.temperature = 'hot' (environment MUSICGEND_ENGINE__TEMPERATURE)" in text
    assert len(lines) == 1 + 7


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[midi]\nchannel = = 3\n")
    with pytest.raises(ConfigError, match=r"c\.toml: invalid TOML: .*line 2"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        load_config(tmp_path / "nope.toml")


def test_unknown_env_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSICGEND_MQTT_URL", "mqtt://x")  # one underscore: no setting
    monkeypatch.setenv("MUSICGEND_MIDDI__CHANNEL", "3")
    monkeypatch.setenv("musicgend_midi__chanel", "3")  # read case-insensitively, so checked too
    monkeypatch.setenv("MUSICGEND_MIDI__CHANNEL__LOW", "3")  # below a plain value
    monkeypatch.setenv("MUSICGEND_BPM", "120")
    monkeypatch.setenv("MUSICGEND_FOO", "1")
    monkeypatch.setenv("MUSICGEND_CLOCK__BPM", "120")  # a real one is still checked and used
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value).splitlines() == [
        "invalid configuration:",
        "  bpm (environment MUSICGEND_BPM): unknown key; did you mean MUSICGEND_CLOCK__BPM?",
        "  foo (environment MUSICGEND_FOO): unknown key",
        "  middi.channel (environment MUSICGEND_MIDDI__CHANNEL): unknown key; "
        "did you mean MUSICGEND_MIDI__CHANNEL?",
        "  midi.channel.low (environment MUSICGEND_MIDI__CHANNEL__LOW): unknown key; "
        "did you mean MUSICGEND_MIDI__CHANNEL?",
        "  mqtt_url (environment MUSICGEND_MQTT_URL): unknown key; "
        "did you mean MUSICGEND_MQTT__URL?",
        "  midi.chanel (environment musicgend_midi__chanel): unknown key; "
        "did you mean MUSICGEND_MIDI__CHANNEL?",
    ]


def test_env_variables_that_are_not_settings_are_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUSICGEND_CONFIG", str(write(tmp_path, "[midi]\nchannel = 2\n")))
    monkeypatch.setenv("MUSICGEND_TOOLS", str(tmp_path))  # scripts/bootstrap.sh
    monkeypatch.setenv("MUSICGEND_ENGINE__CC__TOP_P", "22")  # one entry of a table
    monkeypatch.setenv("MUSICGEND_MQTT__TLS", '{"insecure": true}')
    cfg = load_config()
    assert (cfg.midi.channel, cfg.engine.cc, cfg.mqtt.tls.insecure) == (2, {"top_p": 22}, True)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("MUSICGEND_MIDI", "midi"),
        ("MUSICGEND_ENGINE__CC", "engine.cc"),
        ("MUSICGEND_ENGINE__CALL_RESPONSE", "engine.call_response"),
    ],
)
def test_env_json_not_valid(name: str, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, "{bad")
    monkeypatch.setenv("MUSICGEND_MIDI__VELOCITY", "0")  # the other problems are listed too
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value).splitlines() == [
        "invalid configuration:",
        f"  {key} = '{{bad' (environment {name}): expected a JSON object (not valid JSON: "
        "Expecting property name enclosed in double quotes at character 2)",
        "  midi.velocity = '0' (environment MUSICGEND_MIDI__VELOCITY): "
        "expected greater than or equal to 1",
    ]


def test_env_json_empty_too_deep_or_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSICGEND_CLOCK", "")
    monkeypatch.setenv("MUSICGEND_ENGINE", "[" * 10_000)
    monkeypatch.setenv("MUSICGEND_MQTT", '{"password": "s3cret"')
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value).splitlines()[1:] == [
        "  clock = '' (environment MUSICGEND_CLOCK): expected a JSON object "
        "(not valid JSON: Expecting value at character 1)",
        f"  engine = '{'[' * 10_000}' (environment MUSICGEND_ENGINE): expected a JSON object "
        "(not valid JSON: nested too deeply)",
        f"  mqtt = '{MASK}' (environment MUSICGEND_MQTT): expected a JSON object "
        "(not valid JSON: Expecting ',' delimiter at character 22)",
    ]


def test_env_json_values_name_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSICGEND_MIDI", '{"channel": 99, "chanel": 3, "velocity": 100}')
    monkeypatch.setenv("MUSICGEND_MIDI__VELOCITY", "0")  # the more specific variable wins
    monkeypatch.setenv("MUSICGEND_ENGINE", '{"call_response": {"silence_s": 0}}')
    with pytest.raises(ConfigError) as info:
        load_config()
    assert sorted(str(info.value).splitlines()[1:]) == [
        "  engine.call_response.silence_s = 0 (environment MUSICGEND_ENGINE): "
        "expected greater than 0",
        "  midi.chanel (environment MUSICGEND_MIDI): unknown key",
        "  midi.channel = 99 (environment MUSICGEND_MIDI): expected less than or equal to 16",
        "  midi.velocity = '0' (environment MUSICGEND_MIDI__VELOCITY): "
        "expected greater than or equal to 1",
    ]


def test_cross_field_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lowest_pitch"):
        load_config(None, {"midi.lowest_pitch": 90, "midi.highest_pitch": 30})
    with pytest.raises(ConfigError, match="in_port and out_port differ \\(both are 'x'\\)"):
        load_config(None, {"midi.in_port": "x", "midi.out_port": "x"})
    with pytest.raises(ConfigError, match="reconnect_min_s"):
        load_config(None, {"mqtt.reconnect_min_s": 10, "mqtt.reconnect_max_s": 1})
    with pytest.raises(ConfigError, match="each CC number bound to one parameter only"):
        load_config(None, {"engine.cc": {"temperature": 21, "density": 21}})
    with pytest.raises(ConfigError, match=r"engine\.cc\.volume"):
        load_config(None, {"engine.cc": {"volume": 7}})
    with pytest.raises(ConfigError, match=r"mqtt\.instance = 'a/b'"):
        load_config(None, {"mqtt.instance": "a/b"})
    with pytest.raises(ConfigError, match="cert and key both set, or neither"):
        load_config(None, {"mqtt.tls.cert": str(write(tmp_path, "x", "c.pem"))})
    with pytest.raises(ConfigError, match="band's clock sets the tempo"):
        load_config(None, {"clock.source": "midi", "clock.bpm": 120})
    with pytest.raises(ConfigError, match=r"clock\.bpm"):
        load_config(None, {"clock.bpm": 1000})
    settings = load_config(None, {"clock.source": "midi"})
    assert (settings.clock.ticks_per_frame, settings.clock.loss_timeout_s) == (12, 0.5)


def _float_keys() -> list[str]:
    """Every float setting, as a dotted key (found by walking the models)."""
    from pydantic import BaseModel

    from musicgend.config import Settings

    keys = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
            elif ann in (float, float | None):
                keys.append(prefix + name)

    walk(Settings, "")
    return keys


def test_float_keys_found() -> None:
    assert {"clock.bpm", "engine.call_response.silence_s", "mqtt.reconnect_max_s"} <= set(
        _float_keys()
    )


@pytest.mark.parametrize("key", _float_keys())
def test_non_finite_floats_refused(key: str) -> None:
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ConfigError) as info:
            load_config(None, {key: value})
        assert str(info.value).splitlines()[1:] == [
            f"  {key} = {value!r} (command line): expected a finite number"
        ]


def test_non_finite_floats_refused_from_file_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[clock]\nbpm = nan\n[engine]\ntemperature = inf\n")
    monkeypatch.setenv("MUSICGEND_MQTT__METRICS_INTERVAL_S", "NaN")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert sorted(str(info.value).splitlines()[1:]) == [
        f"  clock.bpm = nan ({path}): expected a finite number",
        f"  engine.temperature = inf ({path}): expected a finite number",
        "  mqtt.metrics_interval_s = 'NaN' (environment MUSICGEND_MQTT__METRICS_INTERVAL_S): "
        "expected a finite number",
    ]


def test_password_file_and_masking(tmp_path: Path) -> None:
    secret = write(tmp_path, "s3cret\n", "pw")
    cfg = load_config(None, {"mqtt.username": "u", "mqtt.password_file": str(secret)})
    assert cfg.mqtt.password_value() == "s3cret"
    shown = json.dumps(cfg.public_dict())
    assert "s3cret" not in shown and cfg.public_dict()["mqtt"]["password"] == MASK
    cfg = load_config(None, {"mqtt.password": "plain"})
    assert cfg.mqtt.password_value() == "plain"
    assert "plain" not in to_toml(cfg.public_dict())
    with pytest.raises(ConfigError, match="password_file readable"):
        load_config(None, {"mqtt.password_file": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="password or password_file, not both"):
        load_config(None, {"mqtt.password": "a", "mqtt.password_file": str(secret)})


def test_errors_across_a_section_mask_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSICGEND_MQTT__PASSWORD", "s3cret")
    monkeypatch.setenv("MUSICGEND_MQTT__RECONNECT_MIN_S", "100")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value).splitlines()[1:] == [
        f"  mqtt = {{'password': '{MASK}', 'reconnect_min_s': '100'}} (environment "
        "MUSICGEND_MQTT__PASSWORD, MUSICGEND_MQTT__RECONNECT_MIN_S): "
        "expected reconnect_min_s (100.0) <= reconnect_max_s (30.0)"
    ]
    monkeypatch.setenv("MUSICGEND_MQTT", '{"password": "s3cret", "reconnect_min_s": 100}')
    monkeypatch.delenv("MUSICGEND_MQTT__PASSWORD")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "s3cret" not in str(info.value)
    assert "(environment MUSICGEND_MQTT, MUSICGEND_MQTT__RECONNECT_MIN_S)" in str(info.value)


def test_a_password_in_any_form_or_place_is_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every way a password can reach an error line: the key itself with a value of the
    wrong type, and a value in the mqtt table's place that is not a table (a list, a string,
    a JSON value from the environment) and so can't be masked key by key."""
    with pytest.raises(ConfigError) as info:
        load_config(None, {"mqtt.password": 12345678})
    assert str(info.value).splitlines()[1:] == [
        f"  mqtt.password = '{MASK}' (command line): expected a valid string"
    ]
    path = write(tmp_path, 'mqtt = [{password = "s3cret"}]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).splitlines()[1:] == [
        f"  mqtt = '{MASK}' ({path}): expected a valid dictionary or instance of MqttSettings"
    ]
    write(tmp_path, 'mqtt = "s3cret"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "s3cret" not in str(info.value) and f"mqtt = '{MASK}'" in str(info.value)
    monkeypatch.setenv("MUSICGEND_MQTT", '[{"password": "s3cret"}]')
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "s3cret" not in str(info.value)
    assert f"mqtt = '{MASK}' (environment MUSICGEND_MQTT)" in str(info.value)


def test_toml_rendering_round_trips() -> None:
    cfg = load_config(EXAMPLE)
    import tomllib

    parsed = tomllib.loads(to_toml(cfg.public_dict()))
    data = cfg.public_dict()
    # Unset values are comments in TOML; everything else comes back equal.

    def set_values(d: dict) -> dict:
        return {
            k: set_values(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None
        }

    assert parsed == set_values(data)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MUSICGEND_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "musicgend", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def test_cli_config_show(tmp_path: Path) -> None:
    path = write(tmp_path, '[mqtt]\nurl = "mqtt://h"\npassword = "topsecret"\n')
    done = run_cli("config", "show", "--config", str(path), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["mqtt"]["url"] == "mqtt://h"
    assert data["mqtt"]["password"] == MASK
    assert "topsecret" not in done.stdout
    done = run_cli("config", "show", env={"MUSICGEND_ENGINE__MODE": "solo"})
    assert done.returncode == 0, done.stderr
    assert 'mode = "solo"' in done.stdout


def test_cli_config_show_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[midi]\nchannel = 0\n")
    done = run_cli("config", "show", "--config", str(path))
    assert done.returncode == 1
    assert done.stderr.startswith("error: invalid configuration:")
    assert "midi.channel = 0" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_config_show_env_errors() -> None:
    done = run_cli(
        "config", "show", env={"MUSICGEND_ENGINE__CC": "{bad", "MUSICGEND_MQTT_URL": "x"}
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: invalid configuration:",
        "  engine.cc = '{bad' (environment MUSICGEND_ENGINE__CC): expected a JSON object "
        "(not valid JSON: Expecting property name enclosed in double quotes at character 2)",
        "  mqtt_url (environment MUSICGEND_MQTT_URL): unknown key; "
        "did you mean MUSICGEND_MQTT__URL?",
    ]


def test_runtime_choices_match_the_model_runtimes() -> None:
    from typing import get_args

    from musicgend.config import EngineSettings
    from musicgend.model.runtime import RUNTIMES

    annotation = EngineSettings.model_fields["runtime"].annotation
    assert set(get_args(annotation)) == set(RUNTIMES)


def test_session_dir_under_systemd_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/musicgend:/var/lib/other")
    assert load_config().session.dir == Path("/var/lib/musicgend/sessions")
    monkeypatch.setenv("MUSICGEND_SESSION__DIR", "/srv/sessions")
    assert load_config().session.dir == Path("/srv/sessions")
