"""The bundle manifest (``model.json``): one typed, frozen ``Manifest`` that training writes and the runtime reads.

Every field the runtime uses is parsed and validated here, in one place, and a bad one is refused
with one line naming it: ``<path>/model.json: field 'decision.thresholds[1].value' is missing; …``.
``Manifest.read(path)`` (size-capped), ``Manifest.from_dict``, ``to_dict`` and an atomic
``write(path)`` (temporary file, fsync, rename). Fields only documenting how the bundle was made
(``training``, ``evaluation``, the ``threshold``/``decision`` derivations) are kept as recorded.

``standardize`` is the one standardisation of training and runtime: ``z = (window - mean) / std``
in float32 (a division, never a multiplication by ``1/std``: that differs in the last bit).

Ranges (a bundle outside them is refused, because real audio could not make the runtime alarm, or
the sizes would exhaust a sensor node). They come from what training produces and what log-mel
features of real audio can reach:

- ``features``: every parameter present; ``sample_rate`` 1 000 … 384 000 Hz (integer), ``n_fft`` 16 …
  8 192 (even), ``hop_length`` 1 … ``n_fft``, ``n_mels`` 1 … min(512, n_fft/2 + 1), ``frames`` 1 … 64,
  window ``frames · n_mels`` ≤ 16 384 values. Checked before anything is allocated (``n_fft: 2**28``
  would ask the FFT for gigabytes).
- Log-mel values lie in ``[LOG_MIN, log_max]``: ``LOG_MIN = 10·log10(2.2e-16) ≈ -156.6 dB`` (digital
  silence) and ``log_max = 10·log10((n_fft/2)^power) + 20 dB`` (a full-scale sine puts at most
  ``(n_fft/2)^power`` into one bin; 20 dB headroom for filter weights and float WAVs above full scale;
  54 + 20 dB for the DCASE parameters). ``standardization.mean`` must lie in that range;
  ``standardization.std`` between ``STD_FLOOR`` (0.1 dB, the floor training applies; trained bundles
  have 2.3–4.5 dB) and half that range (the largest spread of a bounded variable).
- Quantisation: ``dtype`` int8, ``zero_point`` -128 … 127, ``scale`` 1e-6 … 100 (standardised values
  span a few tens of z-units; trained bundles have 0.014–0.042).
- Thresholds (``threshold.value`` and every ``decision.thresholds[].value``): errors are mean squared
  z-score differences, about 1 for an untrained model and 0.3–1 for trained ones (the demo: clip
  0.70, decisions 0.71–0.76). A threshold must lie in ``[MIN_THRESHOLD, MAX_THRESHOLD] = [1e-6, 100]``
  and below the largest window error real audio can give through this model (output range of the
  int8 model against the z-range of ``[LOG_MIN, log_max]``): above it the bundle could never alarm.
- ``decision.thresholds[].window_seconds``: finite, from one hop (``hop_length / sample_rate``, one
  window) to 3 600 s, strictly ascending, at most 64 entries (a missing ``decision`` section: older
  bundles; an empty list: too few held-out windows to calibrate; both use the clip threshold).
- ``level`` (optional; older bundles have none): the distribution of the mean log-mel level of the
  normal training audio in pieces of ``window_seconds`` (``core/machine.py`` computes it, the node judges
  a stopped machine against it): ``window_seconds`` one hop … 3 600 s, ``pieces`` ≥ 1, and the
  percentiles ``p1 ≤ p5 ≤ p50 ≤ p95 ≤ p99``, each finite and in ``[LOG_MIN, log_max]``.
- Names: ``machine.type``/``machine.id`` 1 … 64 printable characters without ``/ \\ + #``; file names
  plain (no folder part), ≤ 255 characters; sha256 values 64 hex digits.
- ``model.json`` itself at most ``MAX_MANIFEST_BYTES`` (8 MiB; a trained bundle's is about 40 kB),
  JSON that Python's parser accepts without recursion or integer-size errors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_monitor.core.errors import BundleError, FeatureError
from edge_monitor.core.features import LOG_OFFSET, FeatureParams
from edge_monitor.core.files import TooLarge, read_capped

FORMAT = "edge-monitor-bundle"
FORMAT_VERSION = 1
MANIFEST_FILE = "model.json"
MODEL_FILE = "model.tflite"
FLOAT_MODEL_FILE = "model_float.tflite"
SCORE_DEFINITION = (
    "window error = mean over the window's dimensions of (de-quantised model output - standardised "
    "float input)^2; clip score = mean of the window errors over the clip"
)
SCORE_DEFINITION_CENTRE = (
    "window error = mean over the centre frame's dimensions of (de-quantised model output - standardised "
    "float centre frame)^2, the model seeing the window without its centre frame; clip score = mean of "
    "the window errors over the clip"
)
TARGETS = ("window", "centre_frame")  # what the model reproduces; see ScoreSpec

MAX_MANIFEST_BYTES = 8 << 20
STD_FLOOR = 0.1  # dB; training floors std here, so near-constant bands cannot dominate the error
LOG_MIN = 10.0 * math.log10(LOG_OFFSET)
LOG_HEADROOM_DB = 20.0
MIN_THRESHOLD, MAX_THRESHOLD = 1e-6, 100.0
MIN_SCALE, MAX_SCALE = 1e-6, 100.0
MAX_DECISION_SECONDS = 3600.0
MAX_DECISION_ENTRIES = 64
LIMITS = {  # integer feature parameters: (lowest, highest)
    "sample_rate": (1000, 384_000),
    "n_fft": (16, 8192),
    "hop_length": (1, 8192),
    "n_mels": (1, 512),
    "frames": (1, 64),
}
MAX_WINDOW = 16_384
_NAME_BAD = re.compile(r"[/\\+#\x00-\x1f\x7f]")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_REEXPORT = "re-export the bundle with `edge-monitor train`"


def log_max(params: FeatureParams) -> float:
    """The highest log-mel value (dB) real audio can give with ``params`` (see the module docstring)."""
    return 10.0 * params.power * math.log10(params.n_fft / 2) + LOG_HEADROOM_DB


# ── standardisation: one function for training and runtime ─────────────────────────────────────────

def standardize(raw: np.ndarray, mean: np.ndarray, std: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``(raw - mean) / std`` in float32, into ``out`` when given (the training and the runtime path)."""
    out = np.subtract(raw, mean, out=out, dtype=np.float32)
    np.divide(out, std, out=out)
    return out


def fit_standardization(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension (mean, std) of training windows (float64 sums, float32 results), std floored at ``STD_FLOOR``."""
    mean = raw.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = np.maximum(raw.std(axis=0, dtype=np.float64), STD_FLOOR).astype(np.float32)
    return mean, std


# ── the typed parts ────────────────────────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class Quant:
    """Affine quantisation of one tensor: ``real = (q - zero_point) · scale``."""

    scale: float
    zero_point: int
    dtype: str = "int8"

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "scale": self.scale, "zero_point": self.zero_point}

    @property
    def span(self) -> tuple[float, float]:
        """The lowest and highest real value an int8 tensor with this quantisation can hold."""
        return (-128 - self.zero_point) * self.scale, (127 - self.zero_point) * self.scale


@dataclass(frozen=True)
class Machine:
    type: str
    id: str


@dataclass(frozen=True)
class Window:
    frames: int
    size: int
    stride_frames: int = 1


@dataclass(frozen=True)
class ModelFiles:
    """The model files and their hashes; ``info`` keeps the documentary rest (bytes, architecture)."""

    file: str
    sha256: str
    float_file: str | None = None
    float_sha256: str | None = None
    architecture: str = ""
    info: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Quantization:
    input: Quant
    output: Quant


@dataclass(frozen=True, eq=False)
class Standardization:
    """Per-dimension statistics (float32, read-only) of the training windows."""

    mean: np.ndarray
    std: np.ndarray
    info: Mapping[str, Any] = field(default_factory=dict)

    def apply(self, raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return standardize(raw, self.mean, self.std, out)


@dataclass(frozen=True)
class ScoreSpec:
    """What the window error is computed against.

    ``target`` ``window``: the model reproduces the whole standardised window (autoencoder).
    ``centre_frame``: the model sees the window without its centre frame and predicts that frame
    (interpolation network, IDNN); the error is over the centre frame's dimensions only.
    """

    target: str = "window"
    model: str = "int8"
    definition: str = SCORE_DEFINITION

    def input_dims(self, params: FeatureParams) -> np.ndarray:
        """Indices of the standardised window the model reads."""
        return np.arange(params.window_size) if self.target == "window" else np.setdiff1d(
            np.arange(params.window_size), self.target_dims(params))

    def target_dims(self, params: FeatureParams) -> np.ndarray:
        """Indices of the standardised window the model's output is compared with."""
        if self.target == "window":
            return np.arange(params.window_size)
        centre = params.frames // 2
        return np.arange(centre * params.n_mels, (centre + 1) * params.n_mels)

    def target_frames(self, params: FeatureParams) -> int:
        """How many frames the target spans (for band errors)."""
        return params.frames if self.target == "window" else 1


@dataclass(frozen=True)
class Threshold:
    """The clip threshold; ``info`` records how it was derived (method, quantile, gamma fit …)."""

    value: float
    info: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class DecisionThreshold:
    window_seconds: float
    value: float
    info: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Decision:
    """Thresholds for decision scores, strictly ascending in ``window_seconds``."""

    thresholds: tuple[DecisionThreshold, ...]
    info: Mapping[str, Any] = field(default_factory=dict, compare=False)


LEVEL_PERCENTILES = (1, 5, 50, 95, 99)


@dataclass(frozen=True)
class LevelDistribution:
    """Mean log-mel level (dB, the units of the frames) of the normal training audio, per piece of
    ``window_seconds``: its percentiles over ``pieces`` pieces (see ``core/machine.py``)."""

    window_seconds: float
    pieces: int
    p1: float
    p5: float
    p50: float
    p95: float
    p99: float
    info: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def percentiles(self) -> tuple[float, ...]:
        return tuple(getattr(self, f"p{q}") for q in LEVEL_PERCENTILES)

    def to_dict(self) -> dict:
        return {**dict(self.info), "window_seconds": self.window_seconds, "pieces": self.pieces,
                **{f"p{q}": v for q, v in zip(LEVEL_PERCENTILES, self.percentiles, strict=True)}}


@dataclass(frozen=True, eq=False)
class Manifest:
    machine: Machine
    features: FeatureParams
    window: Window
    model: ModelFiles
    quantization: Quantization
    standardization: Standardization
    threshold: Threshold
    score: ScoreSpec = ScoreSpec()
    decision: Decision | None = None
    level: LevelDistribution | None = None  # None: a bundle from before it was recorded
    training: Mapping[str, Any] = field(default_factory=dict)
    evaluation: Mapping[str, Any] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)  # created_at, edge_monitor_version, unknown keys
    format_version: int = FORMAT_VERSION

    # ── reading ──
    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Parse and validate ``path`` (at most ``MAX_MANIFEST_BYTES``); ``BundleError`` names the field."""
        path = Path(path)
        try:
            blob = read_capped(path, MAX_MANIFEST_BYTES)
        except TooLarge:
            raise BundleError(f"{path}: larger than {MAX_MANIFEST_BYTES >> 20} MiB, not a bundle manifest; "
                              "re-copy the bundle") from None
        except OSError as exc:
            raise BundleError(f"{path}: cannot be read ({exc.strerror or exc}); re-copy the bundle") from None
        try:
            data = json.loads(blob.decode("utf-8"))
        except RecursionError:
            raise BundleError(f"{path}: not readable JSON (nested too deeply); re-copy the bundle") from None
        except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, integers of > 4300 digits
            raise BundleError(f"{path}: not readable JSON ({str(exc)[:120]}); re-copy the bundle") from None
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_FILE) -> Manifest:
        return _Parser(where).manifest(data)

    # ── writing ──
    def to_dict(self) -> dict:
        info = dict(self.info)
        info.pop("format", None)
        s = self.standardization
        out: dict[str, Any] = {
            "format": FORMAT,
            "format_version": self.format_version,
            **{k: info.pop(k) for k in ("created_at", "edge_monitor_version") if k in info},
            "machine": {"type": self.machine.type, "id": self.machine.id},
            "features": self.features.to_dict(),
            "window": dataclasses.asdict(self.window),
            "model": {"file": self.model.file, "sha256": self.model.sha256, **dict(self.model.info),
                      **({"float_file": self.model.float_file, "float_sha256": self.model.float_sha256}
                         if self.model.float_file is not None else {}),
                      "architecture": self.model.architecture},
            "quantization": {"input": self.quantization.input.to_dict(), "output": self.quantization.output.to_dict()},
            "standardization": {**dict(s.info), "mean": [float(v) for v in s.mean], "std": [float(v) for v in s.std]},
            "score": {"definition": self.score.definition, "model": self.score.model, "target": self.score.target},
            "threshold": {"value": self.threshold.value, **dict(self.threshold.info)},
            "training": dict(self.training),
            "evaluation": dict(self.evaluation),
        }
        if self.decision is not None:
            out["decision"] = {**dict(self.decision.info), "thresholds": [
                {"window_seconds": t.window_seconds, **dict(t.info), "value": t.value} for t in self.decision.thresholds]}
        if self.level is not None:
            out["level"] = self.level.to_dict()
        out.update(info)
        return out

    def write(self, path: str | Path) -> None:
        """Write ``path`` atomically: a temporary file beside it, fsync, rename (then fsync the folder)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    # ── what the runtime asks ──
    @property
    def input_size(self) -> int:
        return len(self.score.input_dims(self.features))

    @property
    def target_size(self) -> int:
        return len(self.score.target_dims(self.features))

    def max_reachable_error(self) -> float:
        """The largest window error real audio can give through this model (see the module docstring)."""
        dims = self.score.target_dims(self.features)
        mean = self.standardization.mean[dims].astype(np.float64)
        std = self.standardization.std[dims].astype(np.float64)
        z_low, z_high = (LOG_MIN - mean) / std, (log_max(self.features) - mean) / std
        y_low, y_high = self.quantization.output.span
        return float(np.mean(np.maximum((y_high - z_low) ** 2, (z_high - y_low) ** 2)))


# ── parsing ────────────────────────────────────────────────────────────────────────────────────────

class _Parser:
    """Walks the JSON and names the field on every failure."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, name: str, why: str) -> BundleError:
        return BundleError(f"{self.where}: field '{name}' {why}")

    def child(self, node: Any, name: str, key: str | int) -> Any:
        if isinstance(key, int):
            if not isinstance(node, list) or key >= len(node):
                raise self.fail(name, f"is missing; {_REEXPORT}")
            return node[key]
        if not isinstance(node, dict) or key not in node:
            raise self.fail(name, f"is missing; {_REEXPORT}")
        return node[key]

    def section(self, node: Any, name: str) -> dict:
        value = self.child(node, name, name.rsplit(".", 1)[-1])
        if not isinstance(value, dict):
            raise self.fail(name, f"should be an object, got {_show(value)}")
        return value

    def integer(self, node: dict, name: str, low: int, high: int) -> int:
        value = self.child(node, name, name.rsplit(".", 1)[-1])
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"should be an integer, got {_show(value)}")
        if not low <= value <= high:
            raise self.fail(name, f"is {_show(value)}, expected {low} … {high}")
        return value

    def number(self, node: Any, name: str, low: float, high: float, key: str | int | None = None,
               low_open: bool = False) -> float:
        value = self.child(node, name, name.rsplit(".", 1)[-1] if key is None else key)
        return self.check_number(value, name, low, high, low_open)

    def check_number(self, value: Any, name: str, low: float, high: float, low_open: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(name, f"should be a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise self.fail(name, f"is {_show(value)}, not a finite number")
        if number < low or number > high or low_open and number <= low:
            bound = f"above {low:g}" if low_open else f"at least {low:g}"
            raise self.fail(name, f"is {number:g}, expected a number {bound} and at most {high:g}")
        return number

    def string(self, node: dict, name: str, max_len: int = 255, key: str | None = None) -> str:
        value = self.child(node, name, name.rsplit(".", 1)[-1] if key is None else key)
        if not isinstance(value, str):
            raise self.fail(name, f"should be a string, got {_show(value)}")
        if not value or len(value) > max_len:
            raise self.fail(name, f"should hold 1 … {max_len} characters, holds {len(value)}")
        return value

    def file_name(self, node: dict, name: str) -> str:
        value = self.string(node, name)
        if "/" in value or "\\" in value or value in (".", "..") or "\x00" in value:
            raise self.fail(name, f"should be a file name inside the bundle folder, got {_show(value)}")
        return value

    def sha256(self, node: dict, name: str) -> str:
        value = self.string(node, name, max_len=64)
        if not _SHA.match(value):
            raise self.fail(name, f"should be 64 lower-case hex digits, got {_show(value)}")
        return value

    def vector(self, node: dict, name: str, length: int, low: float, high: float) -> np.ndarray:
        values = self.child(node, name, name.rsplit(".", 1)[-1])
        if not isinstance(values, list):
            raise self.fail(name, f"should be a list of {length} numbers, got {_show(values)}")
        if len(values) != length:
            raise self.fail(name, f"should hold {length} numbers (the window size), holds {len(values)}")
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self.fail(f"{name}[{i}]", f"should be a number, got {_show(v)}")
        try:
            array = np.asarray(values, dtype=np.float64)
        except OverflowError:  # a Python int too large for a double
            array = np.asarray([float(v) if abs(v) < 1e308 else math.inf for v in values])
        bad = np.flatnonzero(~np.isfinite(array) | (array < low) | (array > high))
        if bad.size:
            i = int(bad[0])
            raise self.fail(f"{name}[{i}]", f"is {array[i]:g}, expected {low:g} … {high:g}")
        result = array.astype(np.float32)
        result.setflags(write=False)
        return result

    def manifest(self, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise BundleError(f"{self.where}: should hold a JSON object, holds {_show(data)}; re-copy the bundle")
        fmt = self.string(data, "format", max_len=64)
        if fmt != FORMAT:
            raise self.fail("format", f"is {_show(fmt)}, expected {FORMAT!r}")
        version = self.integer(data, "format_version", 0, 1 << 30)
        if version != FORMAT_VERSION:
            raise self.fail("format_version", f"is {version}; this edge-monitor reads version {FORMAT_VERSION}")
        machine = self.section(data, "machine")
        machine_info = Machine(self.name(machine, "machine.type"), self.name(machine, "machine.id"))
        params = self.features(self.section(data, "features"))
        window = self.section(data, "window")
        frames = self.integer(window, "window.frames", 1, LIMITS["frames"][1])
        if frames != params.frames:
            raise self.fail("window.frames", f"is {frames} but features.frames is {params.frames}")
        size = self.integer(window, "window.size", 1, MAX_WINDOW)
        if size != params.window_size:
            raise self.fail("window.size", f"is {size} but features give {params.frames}×{params.n_mels}="
                                           f"{params.window_size}")
        stride = self.integer(window, "window.stride_frames", 1, 1 << 20)
        if stride != 1:
            raise self.fail("window.stride_frames", f"is {stride}; the runtime scores every window (stride 1)")
        model = self.model(self.section(data, "model"))
        quant = self.section(data, "quantization")
        quants = {side: self.quant(self.section(quant, f"quantization.{side}"), f"quantization.{side}")
                  for side in ("input", "output")}
        score = self.score(data.get("score"), params)
        std_section = self.section(data, "standardization")
        top = log_max(params)
        standardization = Standardization(
            mean=self.vector(std_section, "standardization.mean", size, LOG_MIN, top),
            std=self.vector(std_section, "standardization.std", size, STD_FLOOR, (top - LOG_MIN) / 2),
            info={k: v for k, v in std_section.items() if k not in ("mean", "std")},
        )
        threshold_section = self.section(data, "threshold")
        threshold = Threshold(self.number(threshold_section, "threshold.value", MIN_THRESHOLD, MAX_THRESHOLD),
                              {k: v for k, v in threshold_section.items() if k != "value"})
        decision = self.decision(data["decision"], params) if "decision" in data else None
        level = self.level(data["level"], params) if "level" in data else None
        training, evaluation = data.get("training", {}), data.get("evaluation", {})
        for name, section in (("training", training), ("evaluation", evaluation)):
            if not isinstance(section, dict):
                raise self.fail(name, f"should be an object, got {_show(section)}")
        known = {"format", "format_version", "machine", "features", "window", "model", "quantization", "score",
                 "standardization", "threshold", "decision", "level", "training", "evaluation"}
        manifest = Manifest(
            machine=machine_info, features=params, window=Window(frames, size, stride), model=model,
            quantization=Quantization(quants["input"], quants["output"]), standardization=standardization,
            threshold=threshold, score=score, decision=decision, level=level, training=training, evaluation=evaluation,
            info={k: v for k, v in data.items() if k not in known}, format_version=version,
        )
        reachable = manifest.max_reachable_error()
        values = [("threshold.value", threshold.value)] + [
            (f"decision.thresholds[{i}].value", t.value) for i, t in enumerate(decision.thresholds if decision else ())]
        for name, value in values:
            if value >= reachable:
                raise self.fail(name, f"is {value:g}, above the largest window error real audio can give through "
                                      f"this model ({reachable:.3g}): the bundle could never alarm; {_REEXPORT}")
        return manifest

    def name(self, node: dict, name: str) -> str:
        value = self.string(node, name, max_len=64)
        if _NAME_BAD.search(value):
            raise self.fail(name, f"should be a name without '/', '\\', '+', '#' or control characters, got {_show(value)}")
        return value

    def features(self, node: dict) -> FeatureParams:
        names = [f.name for f in dataclasses.fields(FeatureParams)]
        unknown = sorted(set(node) - set(names))
        if unknown:
            raise self.fail("features", f"has unknown parameter(s) {', '.join(unknown)}; {_REEXPORT}")
        values: dict[str, Any] = {}
        for key in ("sample_rate", "n_fft", "hop_length", "n_mels", "frames"):
            values[key] = self.integer(node, f"features.{key}", *LIMITS[key])
        for key in ("fmin", "fmax", "power"):
            values[key] = self.number(node, f"features.{key}", 0.0, float(LIMITS["sample_rate"][1]))
        if values["n_mels"] > values["n_fft"] // 2 + 1:
            raise self.fail("features.n_mels", f"is {values['n_mels']}, more than the {values['n_fft'] // 2 + 1} "
                                               "FFT bins of n_fft")
        if values["frames"] * values["n_mels"] > MAX_WINDOW:
            raise self.fail("features", f"give windows of {values['frames'] * values['n_mels']} values, more than "
                                        f"{MAX_WINDOW}")
        try:
            return FeatureParams(**values)
        except FeatureError as exc:  # names the parameter and the rule
            raise self.fail("features", f"is not a valid feature parameter set: {exc}") from None

    def model(self, node: dict) -> ModelFiles:
        file = self.file_name(node, "model.file")
        sha = self.sha256(node, "model.sha256")
        float_file = float_sha = None
        if "float_file" in node:
            float_file = self.file_name(node, "model.float_file")
            float_sha = self.sha256(node, "model.float_sha256")
        architecture = node.get("architecture", "")
        keep = {k: v for k, v in node.items() if k not in ("file", "sha256", "float_file", "float_sha256",
                                                            "architecture")}
        return ModelFiles(file, sha, float_file, float_sha, architecture if isinstance(architecture, str)
                          else str(architecture)[:200], keep)

    def quant(self, node: dict, name: str) -> Quant:
        dtype = self.string(node, f"{name}.dtype", max_len=16)
        if dtype != "int8":
            raise self.fail(f"{name}.dtype", f"is {_show(dtype)}; edge-monitor runs full-integer int8 models")
        scale = self.number(node, f"{name}.scale", MIN_SCALE, MAX_SCALE)
        zero_point = self.integer(node, f"{name}.zero_point", -128, 127)
        return Quant(scale, zero_point, dtype)

    def score(self, node: Any, params: FeatureParams) -> ScoreSpec:
        if node is None:
            return ScoreSpec()
        if not isinstance(node, dict):
            raise self.fail("score", f"should be an object, got {_show(node)}")
        target = node.get("target", "window")
        if target not in TARGETS:
            raise self.fail("score.target", f"is {_show(target)}, expected one of {', '.join(TARGETS)}")
        if target == "centre_frame" and (params.frames < 3 or params.frames % 2 == 0):
            raise self.fail("score.target", f"centre_frame needs an odd number of frames ≥ 3, features.frames is "
                                            f"{params.frames}")
        model = node.get("model", "int8")
        if model != "int8":
            raise self.fail("score.model", f"is {_show(model)}; the runtime scores with the int8 model")
        definition = node.get("definition", SCORE_DEFINITION)
        return ScoreSpec(target, model, definition if isinstance(definition, str) else SCORE_DEFINITION)

    def decision(self, node: Any, params: FeatureParams) -> Decision:
        if not isinstance(node, dict):
            raise self.fail("decision", f"should be an object, got {_show(node)}")
        entries = self.child(node, "decision.thresholds", "thresholds")
        if not isinstance(entries, list):
            raise self.fail("decision.thresholds", f"should be a list, got {_show(entries)}")
        if len(entries) > MAX_DECISION_ENTRIES:
            raise self.fail("decision.thresholds", f"holds {len(entries)} entries, at most {MAX_DECISION_ENTRIES}")
        thresholds: list[DecisionThreshold] = []
        for i, entry in enumerate(entries):
            name = f"decision.thresholds[{i}]"
            if not isinstance(entry, dict):
                raise self.fail(name, f"should be an object, got {_show(entry)}")
            seconds = self.number(entry, f"{name}.window_seconds", params.hop_length / params.sample_rate,
                                  MAX_DECISION_SECONDS, key="window_seconds")
            value = self.number(entry, f"{name}.value", MIN_THRESHOLD, MAX_THRESHOLD, key="value")
            if thresholds and seconds <= thresholds[-1].window_seconds:
                raise self.fail(f"{name}.window_seconds", f"is {seconds:g}, not after the previous entry's "
                                                          f"{thresholds[-1].window_seconds:g} (lengths ascend)")
            thresholds.append(DecisionThreshold(seconds, value,
                                                {k: v for k, v in entry.items() if k not in ("window_seconds", "value")}))
        return Decision(tuple(thresholds), {k: v for k, v in node.items() if k != "thresholds"})

    def level(self, node: Any, params: FeatureParams) -> LevelDistribution:
        if not isinstance(node, dict):
            raise self.fail("level", f"should be an object, got {_show(node)}")
        seconds = self.number(node, "level.window_seconds", params.hop_length / params.sample_rate,
                              MAX_DECISION_SECONDS)
        pieces = self.integer(node, "level.pieces", 1, 1 << 40)
        top = log_max(params)
        values: list[float] = []
        for q in LEVEL_PERCENTILES:
            name = f"level.p{q}"
            value = self.number(node, name, LOG_MIN, top)
            if values and value < values[-1]:
                raise self.fail(name, f"is {value:g}, below the previous percentile's {values[-1]:g} "
                                      "(percentiles ascend)")
            values.append(value)
        known = {"window_seconds", "pieces"} | {f"p{q}" for q in LEVEL_PERCENTILES}
        return LevelDistribution(seconds, pieces, *values, info={k: v for k, v in node.items() if k not in known})


def _show(value: Any) -> str:
    """A short, one-line rendering of a JSON value for an error message."""
    if isinstance(value, (dict, list)):
        return f"a{'n object' if isinstance(value, dict) else ' list'} of {len(value)} entries"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**15:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else f"{text[:40]}… ({len(text)} characters)"
