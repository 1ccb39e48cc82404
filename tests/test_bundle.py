"""A bundle whose manifest does not match its model is refused with one line naming the field."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_monitor import DEMO_DIR
from edge_monitor.core.errors import BundleError
from edge_monitor.core.manifest import Manifest, standardize
from edge_monitor.core.model import Bundle, WindowScorer, interpreter_backend

DEMO = DEMO_DIR / "fan-id_00"
NORMAL_CLIP = DEMO_DIR / "clips" / "normal_id_00_demo.wav"
slow = pytest.mark.slow  # the tests that train a bundle (the `trained` fixture)


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
    ("machine", DELETE, "machine"),
    ("window.frames", 4, "window.frames"),
    ("window.stride_frames", 2, "window.stride_frames"),
    ("model.float_file", 7, "model.float_file"),
    ("decision.thresholds", {"window_seconds": 1.0}, "decision.thresholds"),
]


@slow
@pytest.mark.parametrize("field, value, named", CASES, ids=[f"{c[0]}={c[1] if c[1] is not DELETE else 'missing'}"[:40] for c in CASES])
def test_mismatch_is_refused_naming_the_field(copy, field, value, named):
    edit(copy, lambda m: set_path(m, field, value))
    with pytest.raises(BundleError) as caught:
        Bundle.load(copy)
    message = str(caught.value)
    assert f"'{named}" in message and "\n" not in message


@slow
def test_replaced_model_file_is_refused(copy, trained):
    shutil.copy(trained / "model_float.tflite", copy / "model.tflite")
    with pytest.raises(BundleError, match="model.sha256"):
        Bundle.load(copy)


@slow
def test_float_model_refused_even_with_a_matching_hash(copy):
    """A float model renamed into place and re-hashed fails on the interpreter's tensor types."""
    import hashlib

    shutil.copy(copy / "model_float.tflite", copy / "model.tflite")
    digest = hashlib.sha256((copy / "model.tflite").read_bytes()).hexdigest()
    edit(copy, lambda m: set_path(m, "model.sha256", digest))
    with pytest.raises(BundleError, match="quantization.input.dtype"):
        Bundle.load(copy)


@slow
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


@slow
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


@slow
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


# ── the typed manifest, on a copy of the committed demo bundle (no training needed) ──

@pytest.fixture
def demo_copy(tmp_path) -> Path:
    target = tmp_path / "demo"
    shutil.copytree(DEMO, target)
    return target


def _replay(bundle: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_monitor", "replay", str(NORMAL_CLIP), "--model", str(bundle)],
                          capture_output=True, text=True, timeout=120)


def _error_line(run: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("edge-monitor: error:")]
    assert len(errors) == 1, run.stderr
    return errors[0]


def test_the_demo_manifest_round_trips_unchanged():
    """The typed manifest reads the committed demo bundle and writes the same JSON (plus the score target)."""
    original = json.loads((DEMO / "model.json").read_text())
    written = Manifest.read(DEMO / "model.json").to_dict()
    assert written["score"].pop("target") == "window"
    assert written == original


def test_missing_decision_value_is_one_line_exit_2(demo_copy):
    """Issue 9 defect 1: this made `replay` print a KeyError traceback and exit 1 (later 70)."""
    edit(demo_copy, lambda m: m["decision"]["thresholds"][1].pop("value"))
    run = _replay(demo_copy)
    assert run.returncode == 2
    assert _error_line(run) == (f"edge-monitor: error: {demo_copy / 'model.json'}: field 'decision.thresholds[1].value' "
                                "is missing; re-export the bundle with `edge-monitor train`")


def test_negative_decision_threshold_is_refused(demo_copy):
    """Issue 9 defect 1: a negative decision threshold was accepted (normal audio then alerted, exit 1)."""
    edit(demo_copy, lambda m: m["decision"]["thresholds"][1].__setitem__("value", -0.24))
    run = _replay(demo_copy)
    assert run.returncode == 2
    assert _error_line(run).endswith("field 'decision.thresholds[1].value' is -0.24, expected a number at least "
                                     "1e-06 and at most 100")


@pytest.mark.parametrize("field, value, message", [
    ("decision.thresholds[1].value", float("nan"), "is nan, not a finite number"),
    ("decision.thresholds[1].value", float("inf"), "is inf, not a finite number"),
    ("decision.thresholds[1].value", 1e308, "is 1e+308, expected a number at least 1e-06 and at most 100"),
    ("decision.thresholds[1].value", 1e9, "is 1e+09, expected a number at least 1e-06 and at most 100"),
    ("decision.thresholds[1].value", 0, "is 0, expected a number at least 1e-06 and at most 100"),
    ("threshold.value", float("nan"), "is nan, not a finite number"),
    ("standardization.std[0]", 1e-45, "is 1e-45, expected 0.1 … 115.381"),
    ("quantization.output.scale", 1e-45, "is 1e-45, expected a number at least 1e-06 and at most 100"),
    ("features.sample_rate", 10**9, "is 1000000000, expected 1000 … 384000"),
    ("features.n_fft", 2**28, "is 268435456, expected 16 … 8192"),
    ("model.float_file", 7, "should be a string, got 7"),
    ("decision.thresholds[0].window_seconds", None, "should be a number, got None"),
    ("decision.thresholds[0].window_seconds", "1", "should be a number, got '1'"),
    ("decision.thresholds[1].window_seconds", 0.5, "is 0.5, not after the previous entry's 0.5 (lengths ascend)"),
])
def test_a_bundle_that_could_never_alarm_is_refused(demo_copy, field, value, message):
    """Issue 15 item 1: these were accepted (`decision threshold nan … no anomaly`, exit 0) or crashed."""
    def change(m):
        parts = field.replace("[", ".").replace("]", "").split(".")
        node = m
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value
    edit(demo_copy, change)
    with pytest.raises(BundleError) as caught:
        Bundle.load(demo_copy)
    assert str(caught.value) == f"{demo_copy / 'model.json'}: field '{field}' {message}"


def test_a_threshold_no_real_audio_can_reach_is_refused(demo_copy):
    """Below MAX_THRESHOLD but above the largest window error this model can give real audio."""
    def narrow(m):  # std of 100 dB: real audio spans under ±1.6 z, the int8 output ±1.7: errors stay below ~11
        m["standardization"]["std"] = [100.0] * 640
        m["threshold"]["value"] = 50.0
    edit(demo_copy, narrow)
    with pytest.raises(BundleError, match=r"field 'threshold.value' is 50, above the largest window error real audio "
                                          r"can give through this model \(\d+(\.\d+)?\): the bundle could never alarm"):
        Bundle.load(demo_copy)
    assert Manifest.read(DEMO / "model.json").max_reachable_error() > 100  # the demo: silence gives far more


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "not readable JSON (nested too deeply); re-copy the bundle"),
    ('{"format": ' + "9" * 5000 + "}", "not readable JSON (Exceeds the limit (4300 digits)"),
    ("[" + "1," * 5_000_000 + "1]", "larger than 8 MiB, not a bundle manifest; re-copy the bundle"),
])
def test_hostile_json_is_refused_in_one_line(demo_copy, text, message):
    (demo_copy / "model.json").write_text(text)
    with pytest.raises(BundleError) as caught:
        Bundle.load(demo_copy)
    assert str(caught.value).startswith(f"{demo_copy / 'model.json'}: {message}")


def test_a_path_too_long_for_the_system_is_one_line(tmp_path):
    run = _replay(tmp_path / ("x" * 100_000))
    assert run.returncode == 2
    assert _error_line(run).endswith(": not usable as a bundle path (File name too long); give the bundle folder")


def test_standardisation_is_one_function_for_training_and_runtime():
    """The runtime divides by std exactly as training does (it used to multiply by 1/std: last-bit skew)."""
    bundle = Bundle.load(DEMO)
    rng = np.random.default_rng(1)
    raw = (bundle.mean + 8 * rng.standard_normal((200, 640))).astype(np.float32)
    runtime = WindowScorer(bundle).standardize(raw, np.empty_like(raw))
    training = (raw - bundle.mean) / bundle.std  # what training computed before it called standardize()
    np.testing.assert_array_equal(runtime, training)
    np.testing.assert_array_equal(runtime, standardize(raw, bundle.mean, bundle.std))
    assert (runtime != (raw - bundle.mean) * (np.float32(1) / bundle.std)).any()  # the old way differs


def test_manifest_write_is_atomic(demo_copy, monkeypatch):
    path = demo_copy / "model.json"
    before = path.read_bytes()
    manifest = Manifest.read(path)
    changed = manifest.replace(evaluation={**manifest.evaluation, "note": "x"})

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", no_space)  # fault injection: a full disk cannot be made cheaply here
    with pytest.raises(OSError):
        changed.write(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in demo_copy.iterdir()) == sorted(p.name for p in DEMO.iterdir())
    monkeypatch.undo()
    changed.write(path)
    assert Manifest.read(path).evaluation["note"] == "x"
    assert sorted(p.name for p in demo_copy.iterdir()) == sorted(p.name for p in DEMO.iterdir())


# ── the score target: the runtime scores what the manifest defines ──

def test_the_score_target_must_match_the_model(demo_copy):
    edit(demo_copy, lambda m: m["score"].__setitem__("target", "centre_frame"))
    with pytest.raises(BundleError) as caught:
        Bundle.load(demo_copy)
    assert str(caught.value) == (f"{demo_copy / 'model.json'}: field 'score.target' asks for a model input of 512 "
                                 "values (score target centre_frame) but the model's input has shape (1, 640)")
    edit(demo_copy, lambda m: m["score"].__setitem__("target", "middle"))
    with pytest.raises(BundleError, match="field 'score.target' is 'middle', expected one of window, centre_frame"):
        Bundle.load(demo_copy)


@slow
def test_idnn_error_is_against_the_centre_frame(trained_idnn):
    """Recompute the idnn window error by hand with the float twin: input = window without its centre frame."""
    bundle = Bundle.load(trained_idnn)
    assert bundle.manifest.score.target == "centre_frame"
    assert "centre frame" in bundle.manifest.score.definition
    _, interpreter_class = interpreter_backend()
    interp = interpreter_class(model_path=str(bundle.float_model_path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert tuple(inp["shape"]) == (1, 512) and tuple(out["shape"]) == (1, 128)
    rng = np.random.default_rng(3)
    raw = (bundle.mean + bundle.std * rng.standard_normal((20, 640))).astype(np.float32)
    z = (raw - bundle.mean) / bundle.std
    expected = []
    for row in z:
        interp.set_tensor(inp["index"], np.r_[row[:256], row[384:]][None, :].astype(np.float32))
        interp.invoke()
        expected.append(np.mean((interp.get_tensor(out["index"])[0] - row[256:384]) ** 2))
    got = WindowScorer(bundle, use_float=True, batch_size=7).errors(raw)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # and the int8 model follows its float twin
    assert np.corrcoef(WindowScorer(bundle).errors(raw), got)[0, 1] > 0.9


@slow
def test_idnn_bundle_with_a_window_target_is_refused(trained_idnn, tmp_path):
    target = tmp_path / "idnn"
    shutil.copytree(trained_idnn, target)
    edit(target, lambda m: m["score"].__setitem__("target", "window"))
    with pytest.raises(BundleError, match=r"field 'window.size' asks for a model input of 640 values \(score target "
                                          r"window\) but the model's input has shape \(1, 512\)"):
        Bundle.load(target)
