"""Settings that check themselves: one bound per field, used by the YAML loader and by code alike.

A settings dataclass derives from :class:`Validated` and gives each field its check with
:func:`setting`::

    @dataclass(frozen=True)
    class DecisionSettings(Validated):
        window_seconds: float = setting(1.0, positive())

``__post_init__`` runs every field's check (which may also normalise the value: ints to floats for
float fields, relative paths made absolute) and then the class's ``_check_fields(at)`` for checks
across fields. A bad value raises :class:`Invalid`, a one-line user error naming the key path and the
value: ``monitors[1].decision.k_of_n: expected [k, n] with 1 ≤ k ≤ n, got [5, 3]``. Built directly in
code, the path starts with the class name (``DecisionSettings.k_of_n: …``); built by the config loader
(``node/config.py``), it is the key path in the file and relative paths start from the file's folder
(:func:`where`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from edge_monitor.core.errors import UserError


class Invalid(UserError):
    """A bad setting: ``str()`` is one line, ``<key path>: <what is wrong>, got <value>``."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}" if path else why)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]+")


def show(value: object) -> str:
    """A value as the user would write it, on one line and short: ``[5, 3]``, ``"a/b"``, ``null``, ``true``."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


@dataclass(frozen=True)
class At:
    """Where a value sits: its key path for messages, and the folder relative paths start from."""

    path: str
    base_dir: Path

    def key(self, name: object) -> At:
        name = name if isinstance(name, str) and _PLAIN_KEY.fullmatch(name) else show(name)
        return At(f"{self.path}.{name}" if self.path else str(name), self.base_dir)

    def item(self, index: int) -> At:
        return At(f"{self.path}[{index}]", self.base_dir)

    def fail(self, why: str, value: object) -> Invalid:
        return Invalid(self.path, f"{why}, got {show(value)}")

    def bad(self, expected: str, value: object) -> Invalid:
        return self.fail(f"expected {expected}", value)


Check = Callable[[object, At], object]
"""Takes a value and where it sits; returns the value to store or raises ``Invalid``."""

_WHERE: ContextVar[At | None] = ContextVar("edge_monitor_settings_at", default=None)


@contextlib.contextmanager
def where(at: At) -> Iterator[None]:
    """Build settings as if they sat at ``at`` (the config loader: key paths and the file's folder)."""
    token = _WHERE.set(at)
    try:
        yield
    finally:
        _WHERE.reset(token)


def setting(default: object = dataclasses.MISSING, check: Check | None = None, *,
            factory: Callable[[], object] | None = None, section: type | None = None,
            items: type | None = None, null: bool = False) -> object:
    """A dataclass field with its check. ``section``: the field is a nested settings class (a mapping in
    YAML; with ``null``, YAML null means None rather than all defaults); ``items``: a tuple of such
    classes (a list in YAML)."""
    metadata = {"check": check, "section": section, "items": items, "null": null}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Validated:
    """Base of the settings dataclasses: every field checked on construction (see the module docstring)."""

    def __post_init__(self) -> None:
        at = _WHERE.get() or At(type(self).__name__, Path.cwd())
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            section, items = f.metadata.get("section"), f.metadata.get("items")
            if section is not None and not isinstance(value, section) and not (value is None and f.metadata["null"]):
                raise at.key(f.name).bad(f"{section.__name__}", value)
            if items is not None and not (isinstance(value, tuple) and all(isinstance(v, items) for v in value)):
                raise at.key(f.name).bad(f"a tuple of {items.__name__}", value)
            if check is not None:
                object.__setattr__(self, f.name, check(value, at.key(f.name)))
        self._check_fields(at)

    def _check_fields(self, at: At) -> None:
        """Checks across fields (``step ≤ window``, …); ``at`` is where this object sits."""


# ---------------------------------------------------------------- checks of single values

def number(lo: float, hi: float | None = None, *, lo_open: bool = False, integer: bool = False,
           null: bool = False) -> Check:
    """An int (``integer``) or a finite number (ints accepted, stored as float) in a range; never a bool or a string."""
    if hi is None:
        in_range = f"{'>' if lo_open else '≥'} {lo}"
    else:
        in_range = f"in {lo}..{hi}" if integer else f"in {'(' if lo_open else '['}{lo}, {hi}]"
    expected = f"{'null or ' if null else ''}{'an integer' if integer else 'a number'} {in_range}"

    def check(value: object, at: At) -> object:
        if value is None and null:
            return None
        if isinstance(value, str) and _looks_numeric(value):
            raise at.bad(f"{expected}, not a string (no quotes; and YAML wants 1.0e3, not 1e3)", value)
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise at.bad(expected, value)
        try:
            num = value if integer else float(value)
        except OverflowError:  # an int too large for a float
            raise at.bad(expected, value) from None
        if not (math.isfinite(num) and (num > lo if lo_open else num >= lo) and (hi is None or num <= hi)):
            raise at.bad(expected, value)
        return num

    return check


def _looks_numeric(text: str) -> bool:
    """A quoted number, or one PyYAML reads as a string (YAML 1.1 floats need a dot: ``1e3`` is a string)."""
    try:
        return math.isfinite(float(text))
    except (ValueError, OverflowError):
        return False


def text(pattern: str, expected: str, *, null: bool = False, max_length: int = 4096) -> Check:
    """A string matching ``pattern`` entirely (and at most ``max_length`` characters)."""
    regex = re.compile(pattern, re.DOTALL)
    expected = f"null or {expected}" if null else expected

    def check(value: object, at: At) -> object:
        if value is None and null:
            return None
        if not isinstance(value, str) or len(value) > max_length or not regex.fullmatch(value):
            raise at.bad(expected, value)
        return value

    return check


def choice(*options: str) -> Check:
    return text("|".join(map(re.escape, options)), "one of " + ", ".join(options))


def path(*, null: bool = False) -> Check:
    """A path, made absolute from the config file's folder (existence is checked by whoever opens it)."""
    plain = text(r".*\S.*", "a path (at most 4096 characters)", null=null)

    def check(value: object, at: At) -> object:
        value = plain(value, at)
        return None if value is None else os.path.abspath(os.path.join(at.base_dir, value))

    return check


def boolean(value: object, at: At) -> object:
    if type(value) is not bool:
        raise at.bad("true or false", value)
    return value


def device(value: object, at: At) -> object:
    if value is None or (type(value) is int and value >= 0) or (isinstance(value, str) and value.strip()
                                                                and len(value) <= 256):
        return value
    raise at.bad("null, a device index ≥ 0 or a device name substring", value)


def channel(value: object, at: At) -> object:
    if (type(value) is int and 0 <= value <= 255) or value == "mix":
        return value
    raise at.bad("a channel index in 0..255 (or 'mix' when replaying files)", value)


def k_of_n(value: object, at: At) -> object:
    if isinstance(value, list):
        value = tuple(value)
    if not (isinstance(value, tuple) and len(value) == 2 and all(type(v) is int for v in value)
            and 1 <= value[0] <= value[1]):
        raise at.bad("[k, n] with 1 ≤ k ≤ n", list(value) if isinstance(value, tuple) else value)
    if value[1] > 100:
        raise at.bad("[k, n] with n ≤ 100", list(value))
    return value


name = text(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
            "a name of up to 64 letters, digits, '-', '_', '.' starting with a letter or digit "
            "(it is used in MQTT topics and file names)")


def positive(hi: float | None = None) -> Check:
    return number(0, hi, lo_open=True)


def non_negative(hi: float | None = None) -> Check:
    return number(0, hi)


FRACTION = number(0, 1, lo_open=True)
