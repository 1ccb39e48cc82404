"""``config.yaml`` → ``Settings``: typed, frozen, and validated before anything starts.

Every key of ``config.yaml`` is a field of a dataclass in ``settings.py``; ``_SCHEMA`` gives each field
its check. A check takes the YAML value and where it sits, and returns the value to store (ints as
floats for float fields, relative paths made absolute from the config file's folder) or raises with
the key path and the bad value. Checks across two fields (step ≤ window, ...) run on the built
dataclass (``_AFTER``). A key left out takes the dataclass default; fields without one are required.

Every error is one line: ``config.yaml: monitors[1].decision.k_of_n: expected [k, n] with 1 ≤ k ≤ n, got [5, 3]``.
Paths are not checked for existence here: ``check`` and the daemon do that with their own messages.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from edge_monitor.core.errors import UserError
from edge_monitor.node.settings import (
    AudioSettings,
    DecisionSettings,
    HealthSettings,
    HomeAssistantSettings,
    LoggingSettings,
    MonitorSettings,
    MqttSettings,
    OutboxSettings,
    Settings,
    SparkplugSettings,
    TlsSettings,
)

VERSION = 1
"""The only config format version; ``version:`` may be left out."""


class ConfigError(UserError):
    """A config file that cannot be used. ``str()`` is one line: the file, the key path, what is wrong, the bad value."""


def load(path: str | Path) -> Settings:
    """Read and validate a YAML config file; relative paths in it are taken from the file's folder."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, expected a YAML config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(" ".join(f"{source}: not valid YAML{where}: {problem}".split())) from None
    return parse(data, base_dir=Path(os.path.abspath(path)).parent, source=source)


def parse(data: object, *, base_dir: Path, source: str) -> Settings:
    """Validate an already loaded YAML document; ``source`` names it in errors and in ``Settings.source``."""
    try:
        if data is None:
            raise _Invalid("", "the file is empty; expected at least node: and monitors:")
        if not isinstance(data, dict):
            raise _At("", Path(base_dir)).bad("a mapping of keys at the top level", data)
        version = data.get("version", VERSION)
        if type(version) is not int or version != VERSION:
            raise _At("version", Path(base_dir)).bad(f"config version {VERSION}", version)
        settings = _build(Settings, data, _At("", Path(base_dir)), also=("version",))
    except _Invalid as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return dataclasses.replace(settings, source=str(source))


# ---------------------------------------------------------------- where a value sits, and what is wrong with it

class _Invalid(Exception):
    """A bad value at a key path; ``parse`` adds the file name and turns it into ``ConfigError``."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}" if path else why)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]+")


def _show(value: object) -> str:
    """A value as the user would write it, on one line and short: ``[5, 3]``, ``"a/b"``, ``null``, ``true``."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "…"


@dataclass(frozen=True)
class _At:
    """Where a value sits: its key path for messages, and the folder relative paths start from."""

    path: str
    base_dir: Path

    def key(self, name: object) -> _At:
        name = name if isinstance(name, str) and _PLAIN_KEY.fullmatch(name) else _show(name)
        return _At(f"{self.path}.{name}" if self.path else name, self.base_dir)

    def item(self, index: int) -> _At:
        return _At(f"{self.path}[{index}]", self.base_dir)

    def fail(self, why: str, value: object) -> _Invalid:
        return _Invalid(self.path, f"{why}, got {_show(value)}")

    def bad(self, expected: str, value: object) -> _Invalid:
        return self.fail(f"expected {expected}", value)


Check = Callable[[object, _At], object]
"""Takes a YAML value and where it sits; returns the value to store or raises ``_Invalid``."""


# ---------------------------------------------------------------- checks of single values

def _number(lo: float, hi: float | None = None, *, lo_open: bool = False, integer: bool = False,
            null: bool = False) -> Check:
    """An int (``integer``) or a finite number (ints accepted, stored as float) in a range; never a bool or a string."""
    if hi is None:
        in_range = f"{'>' if lo_open else '≥'} {lo}"
    else:
        in_range = f"in {lo}..{hi}" if integer else f"in {'(' if lo_open else '['}{lo}, {hi}]"
    expected = f"{'null or ' if null else ''}{'an integer' if integer else 'a number'} {in_range}"

    def check(value: object, at: _At) -> object:
        if value is None and null:
            return None
        if isinstance(value, str) and _looks_numeric(value):
            raise at.bad(f"{expected}, not a string (no quotes; and YAML wants 1.0e3, not 1e3)", value)
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise at.bad(expected, value)
        try:
            number = value if integer else float(value)
        except OverflowError:  # an int too large for a float
            raise at.bad(expected, value) from None
        if not (math.isfinite(number) and (number > lo if lo_open else number >= lo) and (hi is None or number <= hi)):
            raise at.bad(expected, value)
        return number

    return check


def _looks_numeric(text: str) -> bool:
    """A quoted number, or one PyYAML reads as a string (YAML 1.1 floats need a dot: ``1e3`` is a string)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _text(pattern: str, expected: str, *, null: bool = False) -> Check:
    """A string matching ``pattern`` entirely."""
    regex = re.compile(pattern, re.DOTALL)
    expected = f"null or {expected}" if null else expected

    def check(value: object, at: _At) -> object:
        if value is None and null:
            return None
        if not isinstance(value, str) or not regex.fullmatch(value):
            raise at.bad(expected, value)
        return value

    return check


def _choice(*options: str) -> Check:
    return _text("|".join(map(re.escape, options)), "one of " + ", ".join(options))


def _path(*, null: bool = False) -> Check:
    """A path, made absolute from the config file's folder (existence is checked by whoever opens it)."""
    text = _text(r".*\S.*", "a path", null=null)

    def check(value: object, at: _At) -> object:
        value = text(value, at)
        return None if value is None else os.path.abspath(os.path.join(at.base_dir, value))

    return check


def _bool(value: object, at: _At) -> object:
    if type(value) is not bool:
        raise at.bad("true or false", value)
    return value


def _device(value: object, at: _At) -> object:
    if value is None or (type(value) is int and value >= 0) or (isinstance(value, str) and value.strip()):
        return value
    raise at.bad("null, a device index ≥ 0 or a device name substring", value)


def _protocol(value: object, at: _At) -> object:
    if value == "5" or (type(value) is int and value == 5):
        return "5"
    if value == "3.1.1":
        return "3.1.1"
    raise at.bad('5 or "3.1.1"', value)


def _k_of_n(value: object, at: _At) -> object:
    if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)
            and 1 <= value[0] <= value[1]):
        raise at.bad("[k, n] with 1 ≤ k ≤ n", value)
    if value[1] > 100:
        raise at.bad("[k, n] with n ≤ 100", value)
    return tuple(value)


_name = _text(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
              "a name of up to 64 letters, digits, '-', '_', '.' starting with a letter or digit "
              "(it is used in MQTT topics and file names)")
_POSITIVE = _number(0, lo_open=True)
_NON_NEGATIVE = _number(0)
_FRACTION = _number(0, 1, lo_open=True)


# ---------------------------------------------------------------- sections

def _section(cls: type, *, null_is_none: bool = False) -> Check:
    """A nested mapping built into ``cls``; null (all keys commented out) means all defaults, or None if ``null_is_none``."""

    def check(value: object, at: _At) -> object:
        if value is None:
            return None if null_is_none else _build(cls, {}, at)
        return _build(cls, value, at)

    return check


def _monitors(value: object, at: _At) -> object:
    if not isinstance(value, list) or not value:
        raise at.bad("a non-empty list of monitors", value)
    monitors = tuple(_build(MonitorSettings, item, at.item(i)) for i, item in enumerate(value))
    first: dict[str, int] = {}
    for i, monitor in enumerate(monitors):
        if monitor.name in first:
            raise at.item(i).key("name").fail(f"duplicate monitor name (monitors[{first[monitor.name]}] has it)",
                                              monitor.name)
        first[monitor.name] = i
    return monitors


_SCHEMA: dict[type, dict[str, Check]] = {
    Settings: {
        "node": _name,
        "monitors": _monitors,
        "audio": _section(AudioSettings),
        "mqtt": _section(MqttSettings),
        "events_jsonl": _path(null=True),
        "logging": _section(LoggingSettings),
    },
    AudioSettings: {
        "device": _device,
        "sample_rate": _number(8000, 192000, integer=True, null=True),
        "block_seconds": _FRACTION,
        "ring_seconds": _number(1),
    },
    MonitorSettings: {
        "name": _name,
        "model": _path(),
        "channel": _number(0, integer=True),
        "device": _device,
        "threshold": _number(0, lo_open=True, null=True),
        "decision": _section(DecisionSettings),
        "health": _section(HealthSettings),
    },
    DecisionSettings: {
        "window_seconds": _POSITIVE,
        "step_seconds": _POSITIVE,
        "k_of_n": _k_of_n,
        "hysteresis": _FRACTION,
        "min_duration_seconds": _NON_NEGATIVE,
        "cooldown_seconds": _NON_NEGATIVE,
        "update_seconds": _POSITIVE,
        "explain_bands": _number(1, 16, integer=True),
    },
    HealthSettings: {
        "window_seconds": _POSITIVE,
        "clip_fraction": _FRACTION,
        "dead_fraction": _FRACTION,
        "low_db": _POSITIVE,
        "high_db": _POSITIVE,
        "hold_seconds": _NON_NEGATIVE,
    },
    MqttSettings: {
        "enabled": _bool,
        "host": _text(r"\S+", "a host name or address"),
        "port": _number(1, 65535, integer=True),
        "prefix": _text(r"[^/+#\x00]([^+#\x00]*[^/+#\x00])?",
                        "a non-empty topic prefix without '+', '#' or a leading or trailing '/'"),
        "client_id": _text(r"\S+", "a client id without spaces", null=True),
        "protocol": _protocol,
        "keepalive": _number(5, 3600, integer=True),
        "tls": _section(TlsSettings, null_is_none=True),
        "username": _text(r".+", "a user name", null=True),
        "password_file": _path(null=True),
        "password_env": _text(r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name", null=True),
        "telemetry_seconds": _POSITIVE,
        "reconnect_min_seconds": _POSITIVE,
        "reconnect_max_seconds": _POSITIVE,
        "outbox": _section(OutboxSettings),
    },
    TlsSettings: {
        "ca_file": _path(null=True),
        "cert_file": _path(null=True),
        "key_file": _path(null=True),
        "insecure": _bool,
    },
    OutboxSettings: {
        "path": _path(),
        "max_messages": _number(100, integer=True),
    },
    LoggingSettings: {
        "level": _choice("debug", "info", "warning", "error"),
        "format": _choice("auto", "console", "json"),
    },
}

_REFUSED = {
    (MqttSettings, "password"): "not allowed: the password never lives in config.yaml; "
                                "use password_file (a file only the service can read) or password_env",
}
"""Keys refused with their own message (and without echoing the value)."""


def _after_decision(d: DecisionSettings, at: _At) -> None:
    if d.step_seconds > d.window_seconds:
        raise at.key("step_seconds").bad(f"≤ window_seconds ({_show(d.window_seconds)})", d.step_seconds)


def _after_audio(a: AudioSettings, at: _At) -> None:
    if a.ring_seconds < 4 * a.block_seconds:
        raise at.key("ring_seconds").bad(f"≥ 4 × block_seconds ({4 * a.block_seconds:g})", a.ring_seconds)


def _after_mqtt(m: MqttSettings, at: _At) -> None:
    if m.reconnect_min_seconds > m.reconnect_max_seconds:
        raise at.key("reconnect_min_seconds").bad(
            f"≤ reconnect_max_seconds ({_show(m.reconnect_max_seconds)})", m.reconnect_min_seconds)
    if m.password_file is not None and m.password_env is not None:
        raise at.key("password_env").fail("password_file is set too; keep one of the two", m.password_env)


_AFTER: dict[type, Callable[[object, _At], None]] = {
    DecisionSettings: _after_decision,
    AudioSettings: _after_audio,
    MqttSettings: _after_mqtt,
}

# ---------------------------------------------------------------- SCADA: sparkplug: and homeassistant: (issue 12)
# Self-contained: the schema entries, the cross-field checks, and one line each in _SCHEMA[Settings] / _AFTER.

_TOPIC_LEVEL = _text(r"[^/+#\x00]+", "a non-empty MQTT topic level without '/', '+' or '#'")

_SCHEMA[SparkplugSettings] = {
    "enabled": _bool,
    "group_id": _TOPIC_LEVEL,
    "edge_node_id": _text(r"[^/+#\x00]+", "null or a non-empty MQTT topic level without '/', '+' or '#'",
                          null=True),
    "client_id": _text(r"\S+", "a client id without spaces", null=True),
    "primary_host_id": _text(r"[^/+#\x00]+", "a non-empty MQTT topic level without '/', '+' or '#'", null=True),
    "host_state": _choice("3.0", "legacy"),
    "heartbeat_seconds": _number(1),
    "deadband": _number(0, 1),
    "queue_max": _number(10, integer=True),
    "state_dir": _path(),
    "history_max": _number(10, integer=True),
}
_SCHEMA[HomeAssistantSettings] = {
    "enabled": _bool,
    "discovery_prefix": _text(r"[^/+#\x00]([^+#\x00]*[^/+#\x00])?",
                              "a non-empty topic prefix without '+', '#' or a leading or trailing '/'"),
    "client_id": _text(r"\S+", "a client id without spaces", null=True),
}
_SCHEMA[Settings].update(sparkplug=_section(SparkplugSettings), homeassistant=_section(HomeAssistantSettings))


def _after_settings(s: Settings, at: _At) -> None:
    if s.homeassistant.enabled and not s.mqtt.enabled:
        raise at.key("homeassistant").key("enabled").fail(
            "Home Assistant discovery describes the JSON topics: set mqtt.enabled: true too", True)
    sp = s.sparkplug
    if sp.enabled and sp.client_id is not None and sp.client_id == (s.mqtt.client_id or f"edge-monitor-{s.node}"):
        raise at.key("sparkplug").key("client_id").fail("must differ from the JSON session's client id",
                                                       sp.client_id)


_AFTER[Settings] = _after_settings
# ---------------------------------------------------------------- end of the SCADA block


_REQUIRED = {cls: {f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
             for cls in _SCHEMA}


def _build(cls: type, value: object, at: _At, *, also: tuple[str, ...] = ()) -> object:
    """``cls`` from a YAML mapping: unknown keys first (a typo explains a missing key), then values, then required keys."""
    if not isinstance(value, dict):
        raise at.bad("a mapping of keys", value)
    schema = _SCHEMA[cls]
    for key in value:
        if key in schema or key in also:
            continue
        if (cls, key) in _REFUSED:
            raise _Invalid(at.key(key).path, _REFUSED[cls, key])
        close = difflib.get_close_matches(str(key), [*schema, *also], n=1)
        hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join([*schema, *also])
        raise _Invalid(at.key(key).path, f"unknown key ({hint})")
    kwargs = {key: schema[key](item, at.key(key)) for key, item in value.items() if key in schema}
    for name in schema:
        if name in _REQUIRED[cls] and name not in kwargs:
            raise _Invalid(at.key(name).path, "required key is missing")
    built = cls(**kwargs)
    if cls in _AFTER:
        _AFTER[cls](built, at)
    return built


# ---------------------------------------------------------------- YAML without silent duplicate keys

class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            key = loader.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {_show(key)}",
                                                        key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
