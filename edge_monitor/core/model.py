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
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_monitor.core.errors import BundleError
from edge_monitor.core.features import FeatureParams, log_mel, windows
from edge_monitor.core.manifest import (
    FLOAT_MODEL_FILE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_FILE,
    SCORE_DEFINITION,
    Manifest,
    Quant,
    standardize,
)
from edge_monitor.core.quiet import quiet_native_log

# Re-exported: the manifest module owns the bundle's names and its typed parts.
__all__ = [
    "FLOAT_MODEL_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "SCORE_DEFINITION",
    "SCORING_BATCHED",
    "SCORING_SINGLE",
    "SELF_TEST_WINDOWS",
    "Bundle",
    "Manifest",
    "Quant",
    "WindowScorer",
    "dequantize",
    "interpreter_backend",
    "quantize",
    "sha256_file",
]

BACKENDS: dict[str, str] = {  # name → module whose ``Interpreter`` attribute is the interpreter class
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow",  # tf.lite.Interpreter (the tensorflow.lite module itself lacks it)
}
BACKEND_ENV = "EDGE_MONITOR_TFLITE"

SCORING_BATCHED = "batched"
SCORING_SINGLE = "single (batch differs on this interpreter)"
SELF_TEST_WINDOWS = 97
"""Windows of the construction self-test: a full batch of 64, and a remainder of 33 in a padded batch."""
_SELF_TESTS: dict[tuple, bool] = {}  # (backend, model, batch size, threads) → batched == one at a time, bit for bit


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


def quantize(x: np.ndarray, q: Quant, out: np.ndarray) -> np.ndarray:
    """Round to nearest (half to even, as TFLite's reference quantiser), saturate, write int8 into ``out``."""
    scaled = np.rint(x / np.float32(q.scale)) + q.zero_point
    np.clip(scaled, -128, 127, out=scaled)
    out[...] = scaled
    return out


def dequantize(q_values: np.ndarray, q: Quant) -> np.ndarray:
    return (q_values.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)


@dataclass(frozen=True, eq=False)
class Bundle:
    """A validated model bundle: its folder, its typed manifest, the sha256 of its int8 model."""

    path: Path
    manifest: Manifest
    sha256: str

    @property
    def name(self) -> str:
        return f"{self.machine_type}-{self.machine_id}"

    @property
    def params(self) -> FeatureParams:
        return self.manifest.features

    @property
    def machine_type(self) -> str:
        return self.manifest.machine.type

    @property
    def machine_id(self) -> str:
        return self.manifest.machine.id

    @property
    def mean(self) -> np.ndarray:
        return self.manifest.standardization.mean

    @property
    def std(self) -> np.ndarray:
        return self.manifest.standardization.std

    @property
    def input_quant(self) -> Quant:
        return self.manifest.quantization.input

    @property
    def output_quant(self) -> Quant:
        return self.manifest.quantization.output

    @property
    def threshold(self) -> float:
        return self.manifest.threshold.value

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model.file

    @property
    def float_model_path(self) -> Path | None:
        """The float32 TFLite twin used for float-vs-int8 evaluation, if the bundle carries one."""
        entry = self.manifest.model.float_file
        return self.path / entry if entry else None

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        path = Path(path)
        try:
            is_dir = path.is_dir()
        except OSError as exc:  # e.g. ENAMETOOLONG
            raise BundleError(f"{str(path)[:80]}…: not usable as a bundle path ({exc.strerror}); give the bundle "
                              "folder") from None
        if not is_dir:
            raise BundleError(f"{path}: not a model bundle folder (expected {MANIFEST_FILE} and {MODEL_FILE} in it)")
        if not (path / MANIFEST_FILE).is_file():
            raise BundleError(f"{path}: {MANIFEST_FILE} is missing; copy the whole bundle folder")
        where = path / MANIFEST_FILE
        manifest = Manifest.read(where)
        model_file = manifest.model.file
        if not (path / model_file).is_file():
            raise BundleError(f"{path}: {model_file} is missing; copy the whole bundle folder")
        actual = sha256_file(path / model_file)
        if manifest.model.sha256 != actual:
            raise BundleError(
                f"{where}: field 'model.sha256' does not match {model_file} (file is {actual[:12]}…, manifest "
                f"{manifest.model.sha256[:12]}…); the model was replaced or damaged — re-copy the bundle")
        float_file = manifest.model.float_file
        if float_file is not None:
            if not (path / float_file).is_file():
                raise BundleError(f"{where}: field 'model.float_file' names {float_file}, which is missing; "
                                  "re-copy the bundle")
            if sha256_file(path / float_file) != manifest.model.float_sha256:
                raise BundleError(f"{where}: field 'model.float_sha256' does not match {float_file}; re-copy the bundle")
        bundle = cls(path=path, manifest=manifest, sha256=actual)
        WindowScorer(bundle)  # opens the model and checks its tensors against the manifest
        return bundle


class WindowScorer:
    """Error of feature windows with the bundle's int8 model (or its float twin), as the manifest's score defines.

    ``errors(raw_windows)`` standardises with the manifest's statistics, takes the model's input
    (the whole window, or the window without its centre frame), quantises, runs the interpreter in
    fixed-size batches (the last one padded), and returns one mean squared error per window against
    the score target (the whole window, or its centre frame).
    The daemon, replay and evaluation all score through this class.

    Batched equals one at a time, bit for bit, or the batch is not used: at construction (batch size
    above 1) a self-test scores ``SELF_TEST_WINDOWS`` fixed windows (seeded, from the bundle's mean and
    std) in batches and one per call. Some interpreter builds round a window differently in a batch
    than alone (tflite-runtime 2.14's aarch64 int8 kernels do): then this scorer calls the interpreter
    with one window at a time (exact, slower). ``mode`` says which (``SCORING_BATCHED`` or
    ``SCORING_SINGLE``); ``batch_size`` is the size in use, ``requested_batch_size`` the one asked for.
    The result is kept per process for the same backend, model file, batch size and thread count.
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
        self.requested_batch_size = batch_size
        self.invokes = 0              # interpreter calls so far and the time they took (the node's /metrics)
        self.invoke_seconds = 0.0
        inp = self._interp.get_input_details()
        outp = self._interp.get_output_details()
        manifest = bundle.manifest
        params = bundle.params
        where = bundle.path / MANIFEST_FILE
        if len(inp) != 1 or len(outp) != 1:
            raise BundleError(f"{model_path}: expected one input and one output tensor, got {len(inp)} and {len(outp)}")
        self._in, self._out = inp[0], outp[0]
        sizes = {"input": manifest.input_size, "output": manifest.target_size}
        for side, detail in (("input", self._in), ("output", self._out)):
            shape = tuple(int(v) for v in detail["shape"])
            if shape[-1] != sizes[side]:
                what = ("window.size" if manifest.score.target == "window" else "score.target")
                raise BundleError(f"{where}: field '{what}' asks for a model {side} of {sizes[side]} values "
                                  f"(score target {manifest.score.target}) but the model's {side} has shape {shape}")
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
        self._sizes = sizes
        self._whole = manifest.score.target == "window"  # the model reads and reproduces the whole window
        self._input_dims = manifest.score.input_dims(params)
        self._target_dims = manifest.score.target_dims(params)
        self._target_frames = manifest.score.target_frames(params)
        self.mode = SCORING_BATCHED
        self.self_test_ms: float | None = None  # how long the self-test took here (None: not run, or known)
        self._allocate(batch_size)
        if batch_size > 1:
            key = (self.backend, str(model_path), bundle.sha256, use_float, batch_size, num_threads)
            same = _SELF_TESTS.get(key)
            if same is None:
                t0 = time.perf_counter()
                same = _SELF_TESTS[key] = self._batch_equals_single()
                self.self_test_ms = (time.perf_counter() - t0) * 1000
            if not same:
                self.mode = SCORING_SINGLE
                self._allocate(1)
            elif self.batch_size != batch_size:
                self._allocate(batch_size)
            self.invokes, self.invoke_seconds = 0, 0.0  # the self-test's calls are not the monitor's

    def _allocate(self, batch_size: int) -> None:
        """Size the interpreter's input and the scratch buffers for ``batch_size`` windows per call."""
        params = self.bundle.params
        self._interp.resize_tensor_input(self._in["index"], [batch_size, self._sizes["input"]])
        with quiet_native_log():  # LiteRT creates its XNNPACK delegate here, and says so on fd 2
            self._interp.allocate_tensors()
        self.batch_size = batch_size
        self._z = np.empty((batch_size, params.window_size), dtype=np.float32)
        self._x = self._z if self._whole else np.empty((batch_size, self._sizes["input"]), dtype=np.float32)
        self._t = self._z if self._whole else np.empty((batch_size, self._sizes["output"]), dtype=np.float32)
        self._q = np.empty((batch_size, self._sizes["input"]), dtype=np.float32 if self.use_float else np.int8)

    def self_test_windows(self) -> np.ndarray:
        """The self-test's fixed raw windows: the bundle's mean + std × standard normal (seed 0), float32."""
        rng = np.random.default_rng(0)
        noise = rng.standard_normal((SELF_TEST_WINDOWS, self.bundle.params.window_size), dtype=np.float32)
        return (self.bundle.mean + self.bundle.std * noise).astype(np.float32)

    def _batch_equals_single(self) -> bool:
        """Window and band errors of the self-test windows in this batch size and one per call: bit-identical?
        Leaves the interpreter sized for one window."""
        raw = self.self_test_windows()
        n_mels = self.bundle.params.n_mels
        bands_batched = np.empty((len(raw), n_mels), dtype=np.float32)
        batched = self.errors(raw, band_errors=bands_batched)
        self._allocate(1)
        bands_single = np.empty_like(bands_batched)
        single = self.errors(raw, band_errors=bands_single)
        return batched.tobytes() == single.tobytes() and bands_batched.tobytes() == bands_single.tobytes()

    def standardize(self, raw: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The manifest's standardisation (``edge_monitor.core.manifest.standardize``, shared with training)."""
        return standardize(raw, self.bundle.mean, self.bundle.std, out)

    def errors(self, raw_windows: np.ndarray, band_errors: np.ndarray | None = None) -> np.ndarray:
        """Per-window error (float32, one per row of ``raw_windows``) against the manifest's score target.

        ``band_errors``, if given, an ``(n_windows, n_mels)`` array, receives each window's error
        split by mel band (summed over the target's frames): its rows sum to the window errors.
        """
        count = raw_windows.shape[0]
        result = np.empty(count, dtype=np.float32)
        bs = self.batch_size
        size = np.float32(len(self._target_dims))
        for start in range(0, count, bs):
            n = min(bs, count - start)
            z = self.standardize(raw_windows[start : start + n], self._z[:n])
            if self._whole:
                x = target = z
            else:
                x = np.take(z, self._input_dims, axis=1, out=self._x[:n])
                target = np.take(z, self._target_dims, axis=1, out=self._t[:n])
            if self.use_float:
                self._q[:n] = x
            else:
                quantize(x, self.bundle.input_quant, out=self._q[:n])
            self._q[n:] = 0
            self._interp.set_tensor(self._in["index"], self._q)
            began = time.perf_counter()
            self._interp.invoke()
            self.invoke_seconds += time.perf_counter() - began
            self.invokes += 1
            y = self._interp.get_tensor(self._out["index"])[:n]
            if not self.use_float:
                y = dequantize(y, self.bundle.output_quant)
            diff = y - target
            result[start : start + n] = np.einsum("ij,ij->i", diff, diff) / size
            if band_errors is not None:
                squared = (diff * diff).reshape(n, self._target_frames, self.bundle.params.n_mels)
                band_errors[start : start + n] = squared.sum(axis=1) / size
        return result

    def frames_score(self, frames: np.ndarray) -> float:
        """The DCASE clip score of log-mel frames: mean window error. NaN when shorter than one window."""
        errs = self.errors(windows(frames, self.bundle.params))
        return float(errs.mean()) if errs.size else float("nan")

    def clip_score(self, samples: np.ndarray) -> float:
        """The clip score of a whole clip (mono float samples at the bundle's rate)."""
        return self.frames_score(log_mel(samples, self.bundle.params))
