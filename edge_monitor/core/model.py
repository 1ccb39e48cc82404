"""Model bundles (``model.tflite`` + ``model.json``) and the window scorer shared by evaluation and runtime.

A bundle carries its contract in the manifest: feature parameters, window size, quantisation,
standardisation, score definition, threshold. ``Bundle.load`` checks every field against the
model file itself and refuses a mismatch with one line naming the field.

The interpreter comes from ``ai_edge_litert`` (LiteRT), else ``tflite_runtime``, else
``tensorflow.lite``; ``EDGE_MONITOR_TFLITE`` forces one of them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_monitor.core.errors import BundleError, FeatureError
from edge_monitor.core.features import FeatureParams, log_mel, windows
from edge_monitor.core.quiet import quiet_native_log

FORMAT = "edge-monitor-bundle"
FORMAT_VERSION = 1
MODEL_FILE = "model.tflite"
FLOAT_MODEL_FILE = "model_float.tflite"
MANIFEST_FILE = "model.json"
SCORE_DEFINITION = (
    "window error = mean over the window's dimensions of (de-quantised model output - standardised "
    "float input)^2; clip score = mean of the window errors over the clip"
)

BACKENDS: dict[str, str] = {  # name → module whose ``Interpreter`` attribute is the interpreter class
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow",  # tf.lite.Interpreter (the tensorflow.lite module itself lacks it)
}
BACKEND_ENV = "EDGE_MONITOR_TFLITE"


def interpreter_backend() -> tuple[str, Callable[..., Any]]:
    """(name, Interpreter class) of the first importable backend, or the one ``EDGE_MONITOR_TFLITE`` names."""
    forced = os.environ.get(BACKEND_ENV)
    if forced and forced not in BACKENDS:
        raise BundleError(f"{BACKEND_ENV}={forced!r}: expected one of {', '.join(BACKENDS)}")
    names = [forced] if forced else list(BACKENDS)
    for name in names:
        try:
            module = importlib.import_module(BACKENDS[name])
        except ImportError:
            continue
        return name, module.lite.Interpreter if name == "tensorflow" else module.Interpreter
    raise BundleError(
        f"no TFLite interpreter found (tried {', '.join(names)}); install one: pip install ai-edge-litert"
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Quant:
    """Affine quantisation of one tensor: ``real = (q - zero_point) · scale``."""

    scale: float
    zero_point: int
    dtype: str = "int8"

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "scale": self.scale, "zero_point": self.zero_point}


def quantize(x: np.ndarray, q: Quant, out: np.ndarray) -> np.ndarray:
    """Round to nearest (half to even, as TFLite's reference quantiser), saturate, write int8 into ``out``."""
    scaled = np.rint(x / np.float32(q.scale)) + q.zero_point
    np.clip(scaled, -128, 127, out=scaled)
    out[...] = scaled
    return out


def dequantize(q_values: np.ndarray, q: Quant) -> np.ndarray:
    return (q_values.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)


class _Manifest:
    """Typed access to model.json that names the field on every failure."""

    def __init__(self, data: Any, where: Path):
        self.data = data
        self.where = where

    def fail(self, field: str, why: str) -> BundleError:
        return BundleError(f"{self.where}: field '{field}' {why}")

    def get(self, field: str, kind: type | tuple[type, ...]) -> Any:
        node: Any = self.data
        for part in field.split("."):
            if not isinstance(node, dict) or part not in node:
                raise self.fail(field, "is missing; re-export the bundle with `edge-monitor train`")
            node = node[part]
        if kind is float and isinstance(node, int) and not isinstance(node, bool):
            node = float(node)
        if not isinstance(node, kind) or isinstance(node, bool) and kind is not bool:
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(field, f"should be {names}, got {node!r:.60}")
        if isinstance(node, float) and not math.isfinite(node):
            raise self.fail(field, f"is {node}, not a finite number")
        return node

    def vector(self, field: str, length: int) -> np.ndarray:
        values = self.get(field, list)
        try:
            array = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            raise self.fail(field, "should be a list of numbers") from None
        if array.shape != (length,):
            raise self.fail(field, f"should hold {length} numbers (the window size), holds {array.size}")
        if not np.isfinite(array).all():
            raise self.fail(field, "holds a non-finite number")
        return array


@dataclass(frozen=True)
class Bundle:
    """A validated model bundle."""

    path: Path
    manifest: dict
    params: FeatureParams
    machine_type: str
    machine_id: str
    mean: np.ndarray
    std: np.ndarray
    input_quant: Quant
    output_quant: Quant
    threshold: float
    sha256: str

    @property
    def name(self) -> str:
        return f"{self.machine_type}-{self.machine_id}"

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def float_model_path(self) -> Path | None:
        """The float32 TFLite twin used for float-vs-int8 evaluation, if the bundle carries one."""
        entry = self.manifest.get("model", {}).get("float_file")
        return self.path / entry if entry else None

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        path = Path(path)
        manifest_path = path / MANIFEST_FILE
        if not path.is_dir():
            raise BundleError(f"{path}: not a model bundle folder (expected {MANIFEST_FILE} and {MODEL_FILE} in it)")
        for required in (MANIFEST_FILE, MODEL_FILE):
            if not (path / required).is_file():
                raise BundleError(f"{path}: {required} is missing; copy the whole bundle folder")
        try:
            data = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{manifest_path}: not readable JSON ({exc}); re-copy the bundle") from None
        m = _Manifest(data, manifest_path)
        if m.get("format", str) != FORMAT:
            raise m.fail("format", f"is {data['format']!r}, expected {FORMAT!r}")
        version = m.get("format_version", int)
        if version != FORMAT_VERSION:
            raise m.fail("format_version", f"is {version}; this edge-monitor reads version {FORMAT_VERSION}")
        features = m.get("features", dict)
        try:
            params = FeatureParams.from_dict(features)
        except (TypeError, FeatureError) as exc:  # FeatureError names the parameter
            raise m.fail("features", f"is not a valid feature parameter set: {exc}") from None
        size = m.get("window.size", int)
        if size != params.window_size:
            raise m.fail("window.size", f"is {size} but features give {params.frames}×{params.n_mels}={params.window_size}")
        sha = m.get("model.sha256", str)
        actual = sha256_file(path / MODEL_FILE)
        if sha != actual:
            raise m.fail(
                "model.sha256",
                f"does not match {MODEL_FILE} (file is {actual[:12]}…, manifest {sha[:12]}…); the model was replaced "
                "or damaged — re-copy the bundle",
            )
        float_file = data.get("model", {}).get("float_file")
        if float_file is not None:
            float_sha = m.get("model.float_sha256", str)
            if not (path / float_file).is_file():
                raise m.fail("model.float_file", f"names {float_file}, which is missing; re-copy the bundle")
            if sha256_file(path / float_file) != float_sha:
                raise m.fail("model.float_sha256", f"does not match {float_file}; re-copy the bundle")
        quants = {}
        for side in ("input", "output"):
            dtype = m.get(f"quantization.{side}.dtype", str)
            if dtype != "int8":
                raise m.fail(f"quantization.{side}.dtype", f"is {dtype!r}; edge-monitor runs full-integer int8 models")
            scale = m.get(f"quantization.{side}.scale", float)
            if scale <= 0:
                raise m.fail(f"quantization.{side}.scale", f"is {scale}, must be positive")
            quants[side] = Quant(scale, m.get(f"quantization.{side}.zero_point", int))
        mean = m.vector("standardization.mean", size)
        std = m.vector("standardization.std", size)
        if (std <= 0).any():
            raise m.fail("standardization.std", "holds a value <= 0")
        threshold = m.get("threshold.value", float)
        if threshold <= 0:
            raise m.fail("threshold.value", f"is {threshold}, must be positive")
        bundle = cls(
            path=path,
            manifest=data,
            params=params,
            machine_type=m.get("machine.type", str),
            machine_id=m.get("machine.id", str),
            mean=mean,
            std=std,
            input_quant=quants["input"],
            output_quant=quants["output"],
            threshold=threshold,
            sha256=actual,
        )
        WindowScorer(bundle)  # opens the model and checks its tensors against the manifest
        return bundle


class WindowScorer:
    """Reconstruction error of feature windows with the bundle's int8 model (or its float twin).

    ``errors(raw_windows)`` standardises with the manifest's statistics, quantises, runs the
    interpreter in fixed-size batches (the last one padded) and returns one error per window.
    The daemon, replay and evaluation all score through this class.
    """

    def __init__(self, bundle: Bundle, *, batch_size: int = 64, use_float: bool = False, num_threads: int = 1):
        self.bundle = bundle
        self.backend, interpreter_class = interpreter_backend()
        model_path = bundle.float_model_path if use_float else bundle.model_path
        if model_path is None:
            raise BundleError(f"{bundle.path}: has no float model ({FLOAT_MODEL_FILE}); float scoring needs one")
        try:
            with quiet_native_log():  # the interpreter's own INFO lines on fd 2: see core/quiet.py
                self._interp = interpreter_class(model_path=str(model_path), num_threads=num_threads)
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{model_path}: the TFLite interpreter ({self.backend}) cannot load it: {exc}") from None
        self.use_float = use_float
        self.batch_size = batch_size
        inp = self._interp.get_input_details()
        outp = self._interp.get_output_details()
        size = bundle.params.window_size
        where = bundle.path / MANIFEST_FILE
        if len(inp) != 1 or len(outp) != 1:
            raise BundleError(f"{model_path}: expected one input and one output tensor, got {len(inp)} and {len(outp)}")
        self._in, self._out = inp[0], outp[0]
        for side, detail in (("input", self._in), ("output", self._out)):
            shape = tuple(int(v) for v in detail["shape"])
            if shape[-1] != size:
                raise BundleError(f"{where}: field 'window.size' is {size} but the model's {side} has shape {shape}")
            if use_float:
                continue
            if detail["dtype"] != np.int8:
                raise BundleError(f"{where}: field 'quantization.{side}.dtype' is int8 but the model's {side} is "
                                  f"{np.dtype(detail['dtype']).name}; export a full-integer model")
            scale, zero_point = detail["quantization"]
            expected = bundle.input_quant if side == "input" else bundle.output_quant
            if not math.isclose(scale, expected.scale, rel_tol=1e-6) or zero_point != expected.zero_point:
                raise BundleError(
                    f"{where}: field 'quantization.{side}' says scale {expected.scale:.6g} zero point "
                    f"{expected.zero_point}, the model has {scale:.6g} and {zero_point}; re-export the bundle"
                )
        self._interp.resize_tensor_input(self._in["index"], [batch_size, size])
        with quiet_native_log():  # LiteRT creates its XNNPACK delegate here, and says so on fd 2
            self._interp.allocate_tensors()
        self._x = np.empty((batch_size, size), dtype=np.float32)
        self._q = np.empty((batch_size, size), dtype=np.float32 if use_float else np.int8)
        self._inv_std = (1.0 / bundle.std).astype(np.float32)

    def standardize(self, raw: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.subtract(raw, self.bundle.mean, out=out)
        out *= self._inv_std
        return out

    def errors(self, raw_windows: np.ndarray, band_errors: np.ndarray | None = None) -> np.ndarray:
        """Per-window reconstruction error (float32, one per row of ``raw_windows``).

        ``band_errors``, if given, an ``(n_windows, n_mels)`` array, receives each window's error
        split by mel band (summed over the window's frames): its rows sum to the window errors.
        """
        count = raw_windows.shape[0]
        result = np.empty(count, dtype=np.float32)
        bs = self.batch_size
        for start in range(0, count, bs):
            n = min(bs, count - start)
            x = self.standardize(raw_windows[start : start + n], self._x[:n])
            if self.use_float:
                self._q[:n] = x
            else:
                quantize(x, self.bundle.input_quant, out=self._q[:n])
            self._q[n:] = 0
            self._interp.set_tensor(self._in["index"], self._q)
            self._interp.invoke()
            y = self._interp.get_tensor(self._out["index"])[:n]
            if not self.use_float:
                y = dequantize(y, self.bundle.output_quant)
            diff = y - x
            result[start : start + n] = np.einsum("ij,ij->i", diff, diff) / np.float32(x.shape[1])
            if band_errors is not None:
                squared = (diff * diff).reshape(n, self.bundle.params.frames, self.bundle.params.n_mels)
                band_errors[start : start + n] = squared.sum(axis=1) / np.float32(x.shape[1])
        return result

    def frames_score(self, frames: np.ndarray) -> float:
        """The DCASE clip score of log-mel frames: mean window error. NaN when shorter than one window."""
        errs = self.errors(windows(frames, self.bundle.params))
        return float(errs.mean()) if errs.size else float("nan")

    def clip_score(self, samples: np.ndarray) -> float:
        """The clip score of a whole clip (mono float samples at the bundle's rate)."""
        return self.frames_score(log_mel(samples, self.bundle.params))
