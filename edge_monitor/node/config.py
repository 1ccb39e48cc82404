"""``config.yaml`` → ``Settings``: typed, frozen, and validated before anything starts.

Every key of ``config.yaml`` is a field of a settings dataclass (``core/settings.py`` for a monitor,
``node/settings.py`` for the node), and the field carries its own check (``core/checks.py``): the same
bound applies to a config file and to settings built in code. This module only walks the YAML:
unknown keys (with a did-you-mean), required keys, nested sections and lists, and builds each
dataclass at its key path so that its checks report ``monitors[1].decision.k_of_n``. A key left out
takes the dataclass default.

The file is read with a size cap, YAML aliases and anchors are refused (a node config never needs
them, and an alias bomb would expand without bound), and so are duplicate keys.

Every error is one line: ``config.yaml: monitors[1].decision.k_of_n: expected [k, n] with 1 ≤ k ≤ n, got [5, 3]``.
Paths are not checked for existence here: ``check`` and the daemon do that with their own messages.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path

import yaml

from edge_monitor.core.checks import At, Invalid, show, where
from edge_monitor.core.errors import UserError
from edge_monitor.core.files import TooLarge, read_capped
from edge_monitor.node.settings import MqttSettings, Settings

MAX_CONFIG_BYTES = 1 << 20

VERSION = 1
"""The only config format version; ``version:`` may be left out."""


class ConfigError(UserError):
    """A config file that cannot be used. ``str()`` is one line: the file, the key path, what is wrong, the bad value."""


def load(path: str | Path) -> Settings:
    """Read and validate a YAML config file; relative paths in it are taken from the file's folder."""
    source = str(path)
    try:
        raw = read_capped(path, MAX_CONFIG_BYTES)
    except TooLarge:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES >> 20} MiB; this is not a node config") from None
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, expected a YAML config file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where_ = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(" ".join(f"{source}: not valid YAML{where_}: {problem}".split())) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a node config") from None
    return parse(data, base_dir=Path(os.path.abspath(path)).parent, source=source)


def parse(data: object, *, base_dir: Path, source: str) -> Settings:
    """Validate an already loaded YAML document; ``source`` names it in errors and in ``Settings.source``."""
    top = At("", Path(base_dir))
    try:
        if data is None:
            raise Invalid("", "the file is empty; expected at least node: and monitors:")
        if not isinstance(data, dict):
            raise top.bad("a mapping of keys at the top level", data)
        version = data.get("version", VERSION)
        if type(version) is not int or version != VERSION:
            raise top.key("version").bad(f"config version {VERSION}", version)
        settings = _build(Settings, data, top, also=("version",))
    except Invalid as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return dataclasses.replace(settings, source=str(source))


_REFUSED = {
    (MqttSettings, "password"): "not allowed: the password never lives in config.yaml; "
                                "use password_file (a file only the service can read) or password_env",
}
"""Keys refused with their own message (and without echoing the value)."""

_NOT_KEYS = {(Settings, "source")}


def _build(cls: type, value: object, at: At, *, also: tuple[str, ...] = ()) -> object:
    """``cls`` from a YAML mapping: unknown keys first (a typo explains a missing key), then the values
    (nested sections and lists built at their own key paths), then required keys; the dataclass checks
    every value itself on construction."""
    if not isinstance(value, dict):
        raise at.bad("a mapping of keys", value)
    fields = {f.name: f for f in dataclasses.fields(cls) if (cls, f.name) not in _NOT_KEYS}
    for key in value:
        if key in fields or key in also:
            continue
        if (cls, key) in _REFUSED:
            raise Invalid(at.key(key).path, _REFUSED[cls, key])
        close = difflib.get_close_matches(str(key), [*fields, *also], n=1)
        hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join([*fields, *also])
        raise Invalid(at.key(key).path, f"unknown key ({hint})")
    kwargs = {}
    for key, item in value.items():
        if key in also:
            continue
        meta, sub = fields[key].metadata, at.key(key)
        if meta.get("section") is not None:
            kwargs[key] = None if item is None and meta["null"] else _build(meta["section"], item or {}, sub)
        elif meta.get("items") is not None:
            if not isinstance(item, list) or not item:
                raise sub.bad(f"a non-empty list of {key}", item)
            kwargs[key] = tuple(_build(meta["items"], entry, sub.item(i)) for i, entry in enumerate(item))
        else:
            kwargs[key] = item
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            raise Invalid(at.key(name).path, "required key is missing")
    with where(at):
        return cls(**kwargs)


# ---------------------------------------------------------------- YAML without silent duplicate keys

class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that refuses a key given twice in one mapping (PyYAML silently keeps the last) and
    any alias or anchor (``&a`` / ``*a``): a node config never needs them, and aliases of aliases expand
    exponentially (a "billion laughs" bomb in a few lines)."""

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a node config; "
                                              "write the value out", event.start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "anchors (&name) are not allowed in a node config; "
                                              "write the value out", event.start_mark)
        return super().compose_node(parent, index)


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            key = loader.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {show(key)}",
                                                        key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
