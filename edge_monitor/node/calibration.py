"""A monitor's node calibration: the decision threshold fitted on this node's own normal audio.

``edge-monitor calibrate`` writes ``<state_dir>/calibration/<monitor>.json`` (never inside the bundle, whose
sha256 must stay valid) through ``statedir.write_atomic`` (0640). ``run``, ``check`` and ``replay --config``
read it through :func:`node_calibration`: it applies only to the bundle it was made with (model sha256) and
the decision window it was fitted for; a damaged file, or one made for another model or window, is refused
with one line and the bundle threshold applies. A config ``threshold:`` still wins over it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_monitor.core.detector import Threshold
from edge_monitor.core.errors import UserError
from edge_monitor.core.files import TooLarge, read_capped
from edge_monitor.core.settings import MAX_THRESHOLD, MonitorSettings
from edge_monitor.node import statedir

VERSION = 1
MAX_BYTES = 64 * 1024
SOURCES = ("live", "files")


class CalibrationError(UserError):
    """A calibration file that cannot be used (damaged, another model, another window): one line."""


@dataclass(frozen=True)
class Fit:
    """How the threshold was fitted (``core.thresholds.gamma_fit`` on the decision scores)."""

    shape: float
    scale: float
    quantile: float
    gamma_value: float           # the fit's quantile, before the tail guard
    max_score: float             # the highest decision score seen
    margin: float                # the tail guard: threshold ≥ max_score × margin
    decision_scores: int         # every decision score (they overlap)
    independent_windows: int     # audio seconds / decision window: what the tail rests on
    audio_seconds: float
    source: str                  # live | files


@dataclass(frozen=True)
class Simulation:
    """The decisions the configured alert policy takes on the calibration audio with the new threshold."""

    k_of_n: tuple[int, int]
    min_duration_seconds: float
    cooldown_seconds: float
    alarms: int                             # anomaly_start on the calibration audio (normal: should be 0)
    decisions_above: int                    # decision scores above the threshold
    expected_false_alarms_per_day: float    # from the fit, see calibrate.py


@dataclass(frozen=True)
class Calibration:
    monitor: str
    model: str                   # bundle name
    model_sha256: str
    window_seconds: float        # the decision window the threshold is for
    threshold: float
    median_score: float          # median decision score: the drift reference
    fit: Fit
    simulation: Simulation
    created: str                 # ISO 8601 UTC
    version: int = VERSION

    def __post_init__(self) -> None:
        for name in ("threshold", "median_score", "window_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0 < value <= MAX_THRESHOLD:
                raise ValueError(f"{name}: expected a positive number ≤ {MAX_THRESHOLD:g}, got {value!r}")
        if not (isinstance(self.model_sha256, str) and len(self.model_sha256) == 64):
            raise ValueError(f"model_sha256: expected 64 hex digits, got {self.model_sha256!r}")
        if self.fit.source not in SOURCES:
            raise ValueError(f"fit.source: expected one of {SOURCES}, got {self.fit.source!r}")
        if self.version != VERSION:
            raise ValueError(f"version: expected {VERSION}, got {self.version!r}")

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Calibration:
        """Parse and validate; ValueError (one line) when anything is missing or wrong."""
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")  # noqa: TRY004 - a bad file, one message type
        try:
            fit = Fit(**_fields(raw.pop("fit"), Fit, "fit"))
            sim = _fields(raw.pop("simulation"), Simulation, "simulation")
            sim["k_of_n"] = tuple(sim["k_of_n"])
            calibration = cls(fit=fit, simulation=Simulation(**sim), **_fields(raw, cls, "", skip=("fit", "simulation")))
        except KeyError as exc:
            raise ValueError(f"missing {exc.args[0]}") from None
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        for name, value in asdict(calibration.fit).items():
            if name != "source" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                     or not math.isfinite(value)):
                raise ValueError(f"fit.{name}: expected a number, got {value!r}")
        return calibration

    def as_threshold(self, path: Path) -> Threshold:
        return Threshold(self.threshold, f"node calibration {path} ({self.created[:10]})", self.median_score)


def _fields(raw: Any, kind: type, where: str, skip: tuple[str, ...] = ()) -> dict:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: not an object")  # noqa: TRY004
    names = {f for f in kind.__dataclass_fields__ if f not in skip}
    unknown = set(raw) - names
    if unknown:
        raise ValueError(f"{where + '.' if where else ''}{min(unknown)}: unknown key")
    missing = {n for n in names if n not in raw and n != "version"}
    if missing:
        raise ValueError(f"missing {where + '.' if where else ''}{min(missing)}")
    return dict(raw)


def calibration_path(state_dir: str | Path, monitor: str) -> Path:
    return Path(state_dir) / "calibration" / f"{monitor}.json"


def write_calibration(state_dir: str | Path, calibration: Calibration) -> Path:
    """Write atomically (0640, folders 0750); UserError (one line) when the state folder is not writable."""
    path = calibration_path(state_dir, calibration.monitor)
    try:
        statedir.ensure_dir(path.parent)
        statedir.write_atomic(path, calibration.to_json())
    except OSError as exc:
        raise UserError(f"state_dir {state_dir}: cannot write {path.name} ({exc.strerror or exc}); set state_dir "
                        "in the config to a folder this user can write") from None
    return path


def read_calibration(path: Path) -> Calibration:
    """The calibration in ``path``; CalibrationError (one line) when it cannot be read or is damaged."""
    try:
        data = read_capped(path, MAX_BYTES)
    except TooLarge:
        raise CalibrationError(f"calibration {path}: larger than {MAX_BYTES >> 10} KiB: damaged") from None
    except OSError as exc:
        raise CalibrationError(f"calibration {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return Calibration.from_json(data)
    except ValueError as exc:
        raise CalibrationError(f"calibration {path}: damaged: {' '.join(str(exc).split())}") from None


@dataclass(frozen=True)
class NodeCalibration:
    """What the node found for one monitor: the threshold to apply (None: none applies) and why not."""

    path: Path
    threshold: Threshold | None
    refused: str | None = None   # one line, when a file exists but cannot be applied


def node_calibration(state_dir: str | Path, monitor: MonitorSettings, model_sha256: str) -> NodeCalibration:
    """The calibration of ``monitor`` for the bundle with ``model_sha256``, checked; never raises for a bad file."""
    path = calibration_path(state_dir, monitor.name)
    if not path.exists():
        return NodeCalibration(path, None)
    try:
        calibration = read_calibration(path)
    except CalibrationError as exc:
        return NodeCalibration(path, None, f"{exc}; the bundle threshold applies")
    if calibration.model_sha256 != model_sha256:
        return NodeCalibration(path, None, f"calibration {path}: made for another model (sha256 "
                               f"{calibration.model_sha256[:12]}…, the bundle has {model_sha256[:12]}…); the bundle "
                               "threshold applies: run edge-monitor calibrate again")
    if not math.isclose(calibration.window_seconds, monitor.decision.window_seconds):
        return NodeCalibration(path, None, f"calibration {path}: made for {calibration.window_seconds:g}-s decisions, "
                               f"the monitor uses {monitor.decision.window_seconds:g} s; the bundle threshold applies: "
                               "run edge-monitor calibrate again")
    return NodeCalibration(path, calibration.as_threshold(path))
