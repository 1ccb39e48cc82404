"""Tests for edge_monitor.node.config: the example config.yaml, defaults, paths, and one-line errors for bad files."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import re
from pathlib import Path

import pytest
import yaml

from edge_monitor.core.errors import UserError
from edge_monitor.node.config import ConfigError, load, parse
from edge_monitor.node.settings import (
    AudioSettings,
    DecisionSettings,
    HealthSettings,
    LoggingSettings,
    MonitorSettings,
    MqttSettings,
    OutboxSettings,
    Settings,
    TlsSettings,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.yaml"
MINIMAL = {"node": "node-1", "monitors": [{"name": "fan-1", "model": "models/fan"}]}
DELETE = object()


def write(tmp_path: Path, doc: object, name: str = "config.yaml") -> Path:
    """Write ``doc`` (YAML text, or data dumped as YAML) to a real file."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def patched(updates: dict[str, object]) -> dict:
    """MINIMAL with values set (or DELETEd) at key paths like ``monitors[0].decision.k_of_n``."""
    doc = copy.deepcopy(MINIMAL)
    for key_path, value in updates.items():
        steps = [int(s) if s.isdigit() else s for s in re.findall(r"[^.\[\]]+", key_path)]
        node = doc
        for step, after in itertools.pairwise(steps):
            if isinstance(node, list) and step == len(node):
                node.append({})
            elif isinstance(node, dict) and step not in node:
                node[step] = [] if isinstance(after, int) else {}
            node = node[step]
        if value is DELETE:
            del node[steps[-1]]
        elif isinstance(node, list) and steps[-1] == len(node):
            node.append(value)
        else:
            node[steps[-1]] = value
    return doc


def error(tmp_path: Path, doc: object) -> str:
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


# ---------------------------------------------------------------- the example file

def test_example_config_loads_with_the_documented_defaults():
    settings = load(EXAMPLE)
    assert settings.source == str(EXAMPLE)
    assert settings.node == "line1-node01"
    (monitor,) = settings.monitors
    bundle = REPO / "edge_monitor" / "demo" / "fan-id_00"
    assert monitor == MonitorSettings(name="fan-1", model=str(bundle), channel=0)
    assert (Path(monitor.model) / "model.json").is_file()  # the path is right, though load does not check it
    # where the file shows a default, it is the code's default: file and settings.py cannot drift apart
    assert monitor.decision == DecisionSettings()
    assert monitor.health == HealthSettings()
    assert settings.audio == AudioSettings()
    assert settings.mqtt == MqttSettings()
    assert settings.mqtt.outbox == OutboxSettings()
    assert settings.logging == LoggingSettings()
    assert settings.events_jsonl is None


def test_example_config_shows_every_key():
    raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))

    def keys(cls: type) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)} - {"source"}

    assert set(raw) == keys(Settings) | {"version"}
    assert set(raw["audio"]) == keys(AudioSettings)
    assert set(raw["monitors"][0]) == keys(MonitorSettings)
    assert set(raw["monitors"][0]["decision"]) == keys(DecisionSettings)
    assert set(raw["monitors"][0]["health"]) == keys(HealthSettings)
    assert set(raw["mqtt"]) == keys(MqttSettings)
    assert set(raw["mqtt"]["outbox"]) == keys(OutboxSettings)
    assert set(raw["logging"]) == keys(LoggingSettings)
    assert raw["mqtt"]["enabled"] is False and raw["mqtt"]["tls"] is None


SETTINGS_CLASSES = (Settings, AudioSettings, MonitorSettings, DecisionSettings, HealthSettings, MqttSettings,
                    OutboxSettings, TlsSettings, LoggingSettings)


def test_every_settings_field_has_a_check_on_the_type():
    """One bound per field, on the settings type: every config key has a check (or is a section/list)."""
    for cls in SETTINGS_CLASSES:
        for f in dataclasses.fields(cls):
            if f.name == "source":
                continue
            meta = f.metadata
            assert meta.get("check") or meta.get("section") or meta.get("items"), f"{cls.__name__}.{f.name}"


@pytest.mark.parametrize("build, message", [
    (lambda: DecisionSettings(k_of_n=(5, 3)), "DecisionSettings.k_of_n: expected [k, n] with 1 ≤ k ≤ n, got [5, 3]"),
    (lambda: DecisionSettings(window_seconds=1e6), "DecisionSettings.window_seconds: expected a number in (0, 60.0]"),
    (lambda: OutboxSettings(max_messages=0), "OutboxSettings.max_messages: expected an integer in 1..10000000, got 0"),
    (lambda: AudioSettings(ring_seconds=100000), "AudioSettings.ring_seconds: expected a number in [1, 120.0]"),
    (lambda: MonitorSettings(name="m", model="x", threshold=1e9), "MonitorSettings.threshold: expected null or a"),
])
def test_settings_built_in_code_are_checked_by_the_same_bound(build, message):
    with pytest.raises(UserError) as err:
        build()
    assert str(err.value).startswith(message), str(err.value)


def test_the_config_and_the_code_share_the_bound(tmp_path):
    """The outbox bound that used to drift (≥ 1 in the outbox, ≥ 100 in the config) is one bound now."""
    path = write(tmp_path, {**MINIMAL, "mqtt": {"outbox": {"max_messages": 0}}})
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).endswith("mqtt.outbox.max_messages: expected an integer in 1..10000000, got 0")
    assert load(write(tmp_path, {**MINIMAL, "mqtt": {"outbox": {"max_messages": 1}}})).mqtt.outbox.max_messages == 1


# ---------------------------------------------------------------- good files

def test_minimal_config_takes_the_defaults(tmp_path):
    path = write(tmp_path, MINIMAL)
    settings = load(path)
    model = str(tmp_path / "models" / "fan")
    assert settings == Settings(node="node-1", monitors=(MonitorSettings(name="fan-1", model=model),),
                                source=str(path))
    assert settings.monitor("fan-1").decision.k_of_n == (3, 4)
    assert settings.mqtt.tls is None


def test_relative_paths_are_resolved_from_the_config_folder(tmp_path, monkeypatch):
    doc = patched({
        "monitors[0].model": "../models/fan",
        "monitors[1]": {"name": "pump-1", "model": "/opt/models/pump"},
        "events_jsonl": "events.jsonl",
        "mqtt.outbox.path": "state/outbox.sqlite",
        "mqtt.tls": {"ca_file": "certs/ca.pem", "cert_file": "/etc/node.crt", "key_file": "./certs/node.key"},
        "mqtt.password_file": "secret",
    })
    write(tmp_path, doc, "etc/config.yaml")
    monkeypatch.chdir(tmp_path)
    settings = load("etc/config.yaml")  # a relative config path: paths still come out absolute
    etc = tmp_path / "etc"
    assert settings.source == "etc/config.yaml"
    assert [m.model for m in settings.monitors] == [str(tmp_path / "models" / "fan"), "/opt/models/pump"]
    assert settings.events_jsonl == str(etc / "events.jsonl")
    assert settings.mqtt.outbox.path == str(etc / "state" / "outbox.sqlite")
    assert settings.mqtt.tls == TlsSettings(ca_file=str(etc / "certs" / "ca.pem"), cert_file="/etc/node.crt",
                                            key_file=str(etc / "certs" / "node.key"))
    assert settings.mqtt.password_file == str(etc / "secret")
    assert not os.path.exists(settings.mqtt.password_file)  # existence is for `check` and the daemon


def test_values_are_converted(tmp_path):
    doc = patched({
        "version": 1,
        "audio": {"device": "USB", "sample_rate": 48000, "block_seconds": 1, "ring_seconds": 4},
        "monitors[0].device": 2,
        "monitors[0].threshold": 3,
        "monitors[0].decision": {"window_seconds": 2, "k_of_n": [1, 1], "hysteresis": 1},
        "monitors[0].health": None,  # every key commented out: the defaults
        "mqtt": {"enabled": True, "protocol": 5, "tls": {}, "password_env": "MQTT_PASSWORD"},
    })
    settings = load(write(tmp_path, doc))
    monitor = settings.monitors[0]
    assert settings.audio == AudioSettings(device="USB", sample_rate=48000, block_seconds=1.0, ring_seconds=4.0)
    assert type(settings.audio.block_seconds) is float and type(monitor.threshold) is float
    assert monitor.device == 2 and monitor.threshold == 3.0
    assert monitor.decision == DecisionSettings(window_seconds=2.0, k_of_n=(1, 1), hysteresis=1.0)
    assert monitor.health == HealthSettings()
    assert settings.mqtt.protocol == "5" and settings.mqtt.tls == TlsSettings() and settings.mqtt.enabled is True
    assert load(write(tmp_path, patched({"mqtt.protocol": "3.1.1"}))).mqtt.protocol == "3.1.1"


@pytest.mark.parametrize("text, phrase", [
    ("node: n\nmonitors:\n  - name: a\n    model: m\n    decision: &shared {k_of_n: [2, 3]}\n",
     "anchors (&name) are not allowed"),
    # a "billion laughs": nine levels of nine aliases each would expand to 10^9 strings
    ("a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     "node: n\nmonitors: [{name: a, model: m}]\n", "anchors (&name) are not allowed"),
    ("node: n\nmonitors:\n  - name: a\n    model: m\n    decision:\n      <<: *shared\n",
     "aliases (*name) are not allowed"),
])
def test_yaml_anchors_and_aliases_are_refused(tmp_path, text, phrase):
    """A node config never needs them, and aliases of aliases expand without bound (issue 15)."""
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    assert phrase in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom"])
def test_an_endless_file_as_the_config_is_refused_at_once(special):
    with pytest.raises(ConfigError, match=r"larger than 1 MiB; this is not a node config$"):
        load(special)


def test_parse_takes_an_already_loaded_document(tmp_path):
    settings = parse(copy.deepcopy(MINIMAL), base_dir=tmp_path, source="inline")
    assert settings.source == "inline"
    assert settings.monitors[0].model == str(tmp_path / "models" / "fan")
    with pytest.raises(ConfigError, match=r"^inline: monitors\[0\]\.channel: expected a channel index in 0\.\.255 .*, got -1$"):
        parse(patched({"monitors[0].channel": -1}), base_dir=tmp_path, source="inline")


def test_settings_are_frozen(tmp_path):
    settings = load(write(tmp_path, MINIMAL))
    for obj, name in [(settings, "node"), (settings.monitors[0], "channel"), (settings.monitors[0].decision,
                      "k_of_n"), (settings.mqtt, "port"), (settings.mqtt.outbox, "path"), (settings.audio,
                      "device"), (settings.logging, "level")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, getattr(obj, name))
    assert isinstance(settings.monitors, tuple)


# ---------------------------------------------------------------- bad files: each names the key path and the value

BAD = [
    # (updates to MINIMAL, key path in the message, more text the message must hold)
    ({"node": DELETE}, "node", "required key is missing"),
    ({"node": "line1/node"}, "node", 'got "line1/node"'),
    ({"node": "line 1"}, "node", 'got "line 1"'),
    ({"node": ""}, "node", 'got ""'),
    ({"node": 7}, "node", "got 7"),
    ({"monitors": DELETE}, "monitors", "required key is missing"),
    ({"monitors": []}, "monitors", "expected a non-empty list of monitors, got []"),
    ({"monitors": {"name": "fan-1"}}, "monitors", 'got {"name": "fan-1"}'),
    ({"monitors[0]": "fan-1"}, "monitors[0]", 'expected a mapping of keys, got "fan-1"'),
    ({"monitors[0].name": DELETE}, "monitors[0].name", "required key is missing"),
    ({"monitors[0].model": DELETE}, "monitors[0].model", "required key is missing"),
    ({"monitors[0].model": ""}, "monitors[0].model", 'expected a path (at most 4096 characters), got ""'),
    ({"monitors[0].name": "fan#1"}, "monitors[0].name", 'got "fan#1"'),
    ({"monitors[0].name": "fan+"}, "monitors[0].name", 'got "fan+"'),
    ({"monitors[1]": {"name": "fan-1", "model": "m"}}, "monitors[1].name", 'duplicate monitor name'),
    ({"monitors[0].channel": -1}, "monitors[0].channel", "expected a channel index in 0..255 (or 'mix' when replaying files), got -1"),
    ({"monitors[0].channel": 256}, "monitors[0].channel", "got 256"),
    ({"monitors[0].channel": 1.5}, "monitors[0].channel", "got 1.5"),
    ({"monitors[0].channel": True}, "monitors[0].channel", "got true"),
    ({"monitors[0].device": -1}, "monitors[0].device", "got -1"),
    ({"monitors[0].device": " "}, "monitors[0].device", 'got " "'),
    ({"monitors[0].threshold": 0}, "monitors[0].threshold", "expected null or a number in (0, 1000.0], got 0"),
    ({"monitors[0].threshold": 1.0e9}, "monitors[0].threshold", "got 1000000000.0"),
    ({"monitors[0].threshold": "high"}, "monitors[0].threshold", 'got "high"'),
    ({"monitors[0].threshold": float("nan")}, "monitors[0].threshold", "got NaN"),
    ({"monitors[0].decision": [1]}, "monitors[0].decision", "expected a mapping of keys, got [1]"),
    ({"monitors[0].decision.window_seconds": 0}, "monitors[0].decision.window_seconds", "in (0, 60.0], got 0"),
    ({"monitors[0].decision.window_seconds": 1.0e6}, "monitors[0].decision.window_seconds", "in (0, 60.0], got 1000000.0"),
    ({"monitors[0].decision.step_seconds": 2}, "monitors[0].decision.step_seconds",
     "expected ≤ window_seconds (1.0), got 2.0"),
    ({"monitors[0].decision.step_seconds": -0.1}, "monitors[0].decision.step_seconds", "got -0.1"),
    ({"monitors[0].decision.k_of_n": [3]}, "monitors[0].decision.k_of_n", "got [3]"),
    ({"monitors[0].decision.k_of_n": [0, 4]}, "monitors[0].decision.k_of_n", "got [0, 4]"),
    ({"monitors[0].decision.k_of_n": "3/4"}, "monitors[0].decision.k_of_n", 'got "3/4"'),
    ({"monitors[0].decision.k_of_n": [3, 200]}, "monitors[0].decision.k_of_n", "n ≤ 100, got [3, 200]"),
    ({"monitors[0].decision.hysteresis": 0}, "monitors[0].decision.hysteresis", "in (0, 1], got 0"),
    ({"monitors[0].decision.hysteresis": 1.2}, "monitors[0].decision.hysteresis", "got 1.2"),
    ({"monitors[0].decision.min_duration_seconds": -1}, "monitors[0].decision.min_duration_seconds", "in [0, 3600], got -1"),
    ({"monitors[0].decision.cooldown_seconds": "5"}, "monitors[0].decision.cooldown_seconds",
     'not a string (no quotes; and YAML wants 1.0e3, not 1e3), got "5"'),
    ({"monitors[0].threshold": "1e3"}, "monitors[0].threshold", 'got "1e3"'),
    ({"monitors[0].decision.update_seconds": 0}, "monitors[0].decision.update_seconds", "got 0"),
    ({"monitors[0].decision.explain_bands": 17}, "monitors[0].decision.explain_bands",
     "expected an integer in 1..16, got 17"),
    ({"monitors[0].health.window_seconds": 0}, "monitors[0].health.window_seconds", "got 0"),
    ({"monitors[0].health.clip_fraction": 0}, "monitors[0].health.clip_fraction", "got 0"),
    ({"monitors[0].health.dead_fraction": 1.5}, "monitors[0].health.dead_fraction", "got 1.5"),
    ({"monitors[0].health.low_db": -30}, "monitors[0].health.low_db", "got -30"),
    ({"monitors[0].health.high_db": False}, "monitors[0].health.high_db", "got false"),
    ({"monitors[0].health.hold_seconds": -1}, "monitors[0].health.hold_seconds", "got -1"),
    ({"audio": "default"}, "audio", 'got "default"'),
    ({"audio.device": True}, "audio.device", "got true"),
    ({"audio.sample_rate": 4000}, "audio.sample_rate", "expected null or an integer in 8000..192000, got 4000"),
    ({"audio.sample_rate": 16000.0}, "audio.sample_rate", "got 16000.0"),
    ({"audio.block_seconds": 2}, "audio.block_seconds", "in (0, 1], got 2"),
    ({"audio.ring_seconds": 0.5}, "audio.ring_seconds", "in [1, 120.0], got 0.5"),
    ({"audio.ring_seconds": 100000}, "audio.ring_seconds", "in [1, 120.0], got 100000"),
    ({"audio.ring_seconds": 1.0e300}, "audio.ring_seconds", "got 1e+300"),
    ({"audio.block_seconds": 0.5, "audio.ring_seconds": 1}, "audio.ring_seconds", "≥ 4 × block_seconds (2)"),
    ({"mqtt.enabled": "yes"}, "mqtt.enabled", 'expected true or false, got "yes"'),
    ({"mqtt.enabled": 1}, "mqtt.enabled", "got 1"),
    ({"mqtt.host": ""}, "mqtt.host", 'got ""'),
    ({"mqtt.port": 0}, "mqtt.port", "expected an integer in 1..65535, got 0"),
    ({"mqtt.port": 70000}, "mqtt.port", "got 70000"),
    ({"mqtt.port": "1883"}, "mqtt.port", 'got "1883"'),
    ({"mqtt.keepalive": 0}, "mqtt.keepalive", "in 1..3600, got 0"),
    ({"mqtt.prefix": "/plant"}, "mqtt.prefix", 'got "/plant"'),
    ({"mqtt.prefix": "plant/"}, "mqtt.prefix", 'got "plant/"'),
    ({"mqtt.prefix": "plant/+/x"}, "mqtt.prefix", 'got "plant/+/x"'),
    ({"mqtt.prefix": "plant/#"}, "mqtt.prefix", 'got "plant/#"'),
    ({"mqtt.prefix": ""}, "mqtt.prefix", 'got ""'),
    ({"mqtt.protocol": 4}, "mqtt.protocol", 'expected 5 or "3.1.1", got 4'),
    ({"mqtt.protocol": "3.1"}, "mqtt.protocol", 'got "3.1"'),
    ({"mqtt.protocol": 5.0}, "mqtt.protocol", "got 5.0"),
    ({"mqtt.telemetry_seconds": 0}, "mqtt.telemetry_seconds", "got 0"),
    ({"mqtt.reconnect_min_seconds": 100}, "mqtt.reconnect_min_seconds",
     "expected ≤ reconnect_max_seconds (60.0), got 100.0"),
    ({"mqtt.password_file": "pw", "mqtt.password_env": "MQTT_PW"}, "mqtt.password_env",
     'password_file is set too; keep one of the two, got "MQTT_PW"'),
    ({"mqtt.password_env": "MQTT PW"}, "mqtt.password_env", 'got "MQTT PW"'),
    ({"mqtt.tls": "on"}, "mqtt.tls", 'expected a mapping of keys, got "on"'),
    ({"mqtt.tls.insecure": "true"}, "mqtt.tls.insecure", 'got "true"'),
    ({"mqtt.tls.ca_file": 5}, "mqtt.tls.ca_file", "expected null or a path (at most 4096 characters), got 5"),
    ({"mqtt.outbox.path": None}, "mqtt.outbox.path", "expected a path (at most 4096 characters), got null"),
    ({"mqtt.outbox.max_messages": 0}, "mqtt.outbox.max_messages", "expected an integer in 1..10000000, got 0"),
    ({"events_jsonl": 5}, "events_jsonl", "got 5"),
    ({"logging.level": "verbose"}, "logging.level",
     'expected one of debug, info, warning, error, got "verbose"'),
    ({"logging.format": "xml"}, "logging.format", 'expected one of auto, console, json, got "xml"'),
    ({"version": 2}, "version", "expected config version 1, got 2"),
    ({"version": "1"}, "version", 'got "1"'),
    ({"nodes": "x"}, "nodes", "unknown key (did you mean 'node'?)"),
    ({"source": "x"}, "source", "unknown key"),
    ({"mqtt.outbox.max_mesages": 1000}, "mqtt.outbox.max_mesages", "did you mean 'max_messages'?"),
]


@pytest.mark.parametrize("updates, key_path, detail", BAD, ids=[f"{k}:{d[:24]}" for _, k, d in BAD])
def test_bad_config_names_the_key_and_the_value(tmp_path, updates, key_path, detail):
    message = error(tmp_path, patched(updates))
    assert f": {key_path}: " in message, message
    assert detail in message, message


def test_k_of_n_message(tmp_path):
    doc = patched({"monitors[1]": {"name": "fan-2", "model": "m", "decision": {"k_of_n": [5, 3]}}})
    path = write(tmp_path, doc)
    assert error(tmp_path, doc) == (
        f"{path}: monitors[1].decision.k_of_n: expected [k, n] with 1 ≤ k ≤ n, got [5, 3]")


def test_unknown_key_suggests_the_close_one(tmp_path):
    doc = patched({"monitors[0].decison": {"k_of_n": [2, 3]}})
    path = write(tmp_path, doc)
    assert error(tmp_path, doc) == f"{path}: monitors[0].decison: unknown key (did you mean 'decision'?)"


def test_unknown_key_far_from_any_lists_the_known_ones(tmp_path):
    message = error(tmp_path, patched({"logging.colour": True}))
    assert message.endswith("logging.colour: unknown key (known keys: level, format)"), message


def test_a_typo_is_reported_before_the_missing_key_it_causes(tmp_path):
    doc = copy.deepcopy(MINIMAL)
    doc["monitors"][0]["modle"] = doc["monitors"][0].pop("model")
    assert "monitors[0].modle: unknown key (did you mean 'model'?)" in error(tmp_path, doc)


def test_password_in_config_is_refused_without_echoing_it(tmp_path):
    message = error(tmp_path, patched({"mqtt.password": "hunter2"}))
    assert "mqtt.password: " in message and "password_file" in message and "password_env" in message
    assert "hunter2" not in message


def test_odd_keys_stay_on_one_line(tmp_path):
    message = error(tmp_path, patched({"mqtt": {"a\nb": 1}}))
    assert 'mqtt."a\\nb": unknown key' in message


def test_long_values_are_shortened(tmp_path):
    message = error(tmp_path, patched({"node": "x/" * 200}))
    assert message.endswith("…") and len(message) < len(str(tmp_path)) + 250


# ---------------------------------------------------------------- bad files as a whole

def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found$"):
        load(tmp_path / "nope.yaml")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match=r": is a directory, expected a YAML config file$"):
        load(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, MINIMAL)
    path.chmod(0)
    with pytest.raises(ConfigError, match=r": cannot read config file: Permission denied$"):
        load(path)


def test_not_yaml_names_the_line(tmp_path):
    message = error(tmp_path, "node: n1\nmonitors:\n  - name: fan-1\n    model: [m\n  - name: x\n")
    assert re.search(r": not valid YAML at line \d+, column \d+: ", message), message
    message = error(tmp_path, "node: n1\nmonitors: x\n  oops: 1\n")
    assert ": not valid YAML at line 3, column 7: mapping values are not allowed here" in message, message


def test_duplicate_key_names_the_line(tmp_path):
    message = error(tmp_path, "node: n1\nmonitors: []\nnode: n2\n")
    assert message.endswith(': not valid YAML at line 3, column 1: duplicate key "node"'), message


def test_not_utf8(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"node: caf\xe9\n")
    with pytest.raises(ConfigError, match=r": not UTF-8 text \(bad byte at offset 9\)$"):
        load(path)


@pytest.mark.parametrize("text", ["", "# only comments\n", "---\n"])
def test_empty_file(tmp_path, text):
    assert error(tmp_path, text).endswith(": the file is empty; expected at least node: and monitors:")


@pytest.mark.parametrize("text, shown", [("- node: n1\n", '[{"node": "n1"}]'), ("just words\n", '"just words"')])
def test_top_level_not_a_mapping(tmp_path, text, shown):
    assert error(tmp_path, text).endswith(f": expected a mapping of keys at the top level, got {shown}")


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, UserError)
    assert ConfigError("x").exit_code == 2
    with pytest.raises(UserError):
        parse([], base_dir=Path("."), source="inline")
