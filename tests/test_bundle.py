"""A bundle whose manifest does not match its model is refused with one line naming the field."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_monitor.core.errors import BundleError
from edge_monitor.core.model import Bundle, WindowScorer, interpreter_backend

pytestmark = pytest.mark.slow


@pytest.fixture
def copy(trained, tmp_path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(trained, target)
    return target


def edit(bundle: Path, change) -> None:
    path = bundle / "model.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def set_path(manifest: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = manifest
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


DELETE = object()

CASES = [
    ("format_version", 2, "format_version"),
    ("features.n_mels", 64, "window.size"),
    ("features.n_fft", 1023, "features"),
    ("features.hop_length", 0, "features"),
    ("features.center", True, "features"),
    ("window.size", 641, "window.size"),
    ("model.sha256", "0" * 64, "model.sha256"),
    ("quantization.input.scale", 0.5, "quantization.input"),
    ("quantization.output.zero_point", 99, "quantization.output"),
    ("quantization.input.dtype", "uint8", "quantization.input.dtype"),
    ("standardization.std", [1.0] * 639, "standardization.std"),
    ("standardization.mean", DELETE, "standardization.mean"),
    ("threshold.value", -1.0, "threshold.value"),
    ("threshold.value", "high", "threshold.value"),
    ("machine", DELETE, "machine.type"),
]


@pytest.mark.parametrize("field, value, named", CASES, ids=[f"{c[0]}={c[1] if c[1] is not DELETE else 'missing'}"[:40] for c in CASES])
def test_mismatch_is_refused_naming_the_field(copy, field, value, named):
    edit(copy, lambda m: set_path(m, field, value))
    with pytest.raises(BundleError) as caught:
        Bundle.load(copy)
    message = str(caught.value)
    assert f"'{named}" in message and "\n" not in message


def test_replaced_model_file_is_refused(copy, trained):
    shutil.copy(trained / "model_float.tflite", copy / "model.tflite")
    with pytest.raises(BundleError, match="model.sha256"):
        Bundle.load(copy)


def test_float_model_refused_even_with_a_matching_hash(copy):
    """A float model renamed into place and re-hashed fails on the interpreter's tensor types."""
    import hashlib

    shutil.copy(copy / "model_float.tflite", copy / "model.tflite")
    digest = hashlib.sha256((copy / "model.tflite").read_bytes()).hexdigest()
    edit(copy, lambda m: set_path(m, "model.sha256", digest))
    with pytest.raises(BundleError, match="quantization.input.dtype"):
        Bundle.load(copy)


@pytest.mark.parametrize("damage", ["missing model", "broken json", "not a folder"])
def test_damaged_bundles(copy, damage):
    if damage == "missing model":
        (copy / "model.tflite").unlink()
        match = "model.tflite is missing"
    elif damage == "broken json":
        (copy / "model.json").write_text("{ not json")
        match = "not readable JSON"
    else:
        copy = copy / "model.json"
        match = "not a model bundle folder"
    with pytest.raises(BundleError, match=match):
        Bundle.load(copy)


def test_cli_reports_a_bad_bundle_in_one_line(copy, synth_data):
    edit(copy, lambda m: set_path(m, "quantization.output.scale", 1.0))
    run = subprocess.run([sys.executable, "-m", "edge_monitor", "evaluate", str(copy), str(synth_data)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    error = [line for line in run.stderr.splitlines() if line.startswith("edge-monitor: error:")]
    assert len(error) == 1 and "quantization.output" in error[0]


def test_backend_can_be_forced(monkeypatch):
    name, _ = interpreter_backend()
    assert name in ("ai_edge_litert", "tflite_runtime", "tensorflow")
    monkeypatch.setenv("EDGE_MONITOR_TFLITE", "nonsense")
    with pytest.raises(BundleError, match="EDGE_MONITOR_TFLITE"):
        interpreter_backend()


def test_float_twin_scores_close_to_int8(trained):
    import numpy as np

    from edge_monitor.core.features import FeatureParams

    bundle = Bundle.load(trained)
    rng = np.random.default_rng(0)
    raw = bundle.mean + bundle.std * rng.standard_normal((50, FeatureParams().window_size)).astype(np.float32)
    int8 = WindowScorer(bundle).errors(raw)
    flt = WindowScorer(bundle, use_float=True).errors(raw)
    assert np.corrcoef(int8, flt)[0, 1] > 0.9
    assert np.median(np.abs(int8 - flt) / flt) < 0.1
