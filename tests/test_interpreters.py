"""Every installed TFLite interpreter scores the committed demo bundle as the one that made it.

Runs in the main environment (ai_edge_litert) and, from tests/run.sh, in a second environment
that has only tflite-runtime (numpy<2), with EDGE_MONITOR_TFLITE=tflite_runtime. Also: the scorer's
construction self-test (batched only where a batch gives the errors of one window at a time).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_monitor import DEMO_DIR
from edge_monitor.core.features import log_mel, windows
from edge_monitor.core.model import (
    BACKENDS,
    SCORING_BATCHED,
    SCORING_SINGLE,
    SELF_TEST_WINDOWS,
    Bundle,
    WindowScorer,
    sha256_file,
)
from edge_monitor.core.wav import load_audio

EXPECTED = json.loads((DEMO_DIR / "expected.json").read_text())


def test_the_forced_interpreter_is_the_one_used():
    forced = os.environ.get("EDGE_MONITOR_TFLITE")
    scorer = WindowScorer(Bundle.load(DEMO_DIR / EXPECTED["bundle"]))
    assert scorer.backend == (forced or next(n for n in BACKENDS if importlib.util.find_spec(n.split(".")[0])))


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_demo_bundle_scores_match_the_reference_interpreter(backend, monkeypatch):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed here; tests/run.sh runs this in .venv (LiteRT, TensorFlow) and .venv-tflite (tflite-runtime)")
    monkeypatch.setenv("EDGE_MONITOR_TFLITE", backend)
    bundle = Bundle.load(DEMO_DIR / EXPECTED["bundle"])
    scorer = WindowScorer(bundle)
    assert scorer.backend == backend
    for name, reference in EXPECTED["scores_int8"].items():
        score = scorer.clip_score(load_audio(DEMO_DIR / "clips" / name, bundle.params.sample_rate))
        # int8 kernels of other interpreters (or CPUs) may round a few output codes differently:
        # tflite-runtime 2.14 was measured 1.7e-5 relative from ai-edge-litert 2.3 on these clips
        assert score == pytest.approx(reference, rel=1e-3), (backend, name)


def test_demo_verdicts_hold_on_this_interpreter():
    bundle = Bundle.load(DEMO_DIR / EXPECTED["bundle"])
    scorer = WindowScorer(bundle)
    scores = {name: scorer.clip_score(load_audio(DEMO_DIR / "clips" / name, 16000)) for name in EXPECTED["scores_int8"]}
    normal = [s for n, s in scores.items() if n.startswith("normal")]
    anomalous = [s for n, s in scores.items() if n.startswith("anomaly")]
    assert max(normal) < bundle.threshold < min(anomalous)
    assert np.isfinite(list(scores.values())).all()


def test_batched_scoring_is_exact_on_this_interpreter():
    """The construction self-test: batched where batches give the very errors of one window at a time."""
    bundle = Bundle.load(DEMO_DIR / EXPECTED["bundle"])
    samples = load_audio(DEMO_DIR / "clips" / next(iter(EXPECTED["scores_int8"])), bundle.params.sample_rate)
    w = windows(log_mel(samples, bundle.params), bundle.params)
    for use_float in (False, True):
        scorer = WindowScorer(bundle, batch_size=64, use_float=use_float)
        assert scorer.mode in (SCORING_BATCHED, SCORING_SINGLE)
        assert scorer.batch_size == (64 if scorer.mode == SCORING_BATCHED else 1)
        if platform.machine() == "x86_64":  # measured: LiteRT 2.3, tflite-runtime 2.14 and tf.lite batch exactly here
            assert scorer.mode == SCORING_BATCHED, (scorer.backend, use_float)
        single = WindowScorer(bundle, batch_size=1, use_float=use_float)
        assert scorer.errors(w).tobytes() == single.errors(w).tobytes()
    assert len(scorer.self_test_windows()) == SELF_TEST_WINDOWS > 64  # a full batch and a padded remainder


@pytest.fixture(scope="module")
def batch_mixing_bundle(tmp_path_factory) -> Path:
    """The demo bundle with a real full-integer model whose output depends on the other windows in its batch:
    y = x/2 + mean over the batch/2. tflite-runtime 2.14 on aarch64 changes a few int8 codes of a window in a
    batch (README, Raspberry Pi and Jetson); no interpreter on x86 does, so this model makes the difference
    real here, through the same interpreter and the same code path."""
    tf = pytest.importorskip("tensorflow", reason="building the model needs TensorFlow (the main .venv has it)")
    src = DEMO_DIR / EXPECTED["bundle"]
    n = Bundle.load(src).manifest.input_size

    @tf.function(input_signature=[tf.TensorSpec([None, n], tf.float32)])
    def mix(x):
        return 0.5 * x + 0.5 * tf.reduce_mean(x, axis=0, keepdims=True)

    rng = np.random.default_rng(1)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([mix.get_concrete_function()], mix)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([2 * rng.standard_normal((1, n)).astype(np.float32)] for _ in range(20))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    model = converter.convert()
    out = tmp_path_factory.mktemp("batch-mixing") / "fan-id_00"
    shutil.copytree(src, out)
    (out / "model.tflite").write_bytes(model)
    detail = tf.lite.Interpreter(model_content=model).get_input_details()[0]["quantization"]
    manifest = json.loads((out / "model.json").read_text())
    manifest["model"].update(sha256=sha256_file(out / "model.tflite"), bytes=len(model))
    for side in ("input", "output"):  # the converter gives input and output the same scale (MEAN keeps it)
        manifest["quantization"][side].update(scale=float(detail[0]), zero_point=int(detail[1]))
    (out / "model.json").write_text(json.dumps(manifest, indent=1))
    return out


def test_fallback_engages_when_batched_results_differ(batch_mixing_bundle, capsys):
    bundle = Bundle.load(batch_mixing_bundle)
    one = WindowScorer(bundle, batch_size=1)
    w = one.self_test_windows()
    single = one.errors(w)
    one._allocate(64)  # the same interpreter at 64 windows a call: the difference is real
    assert one.errors(w).tobytes() != single.tobytes()
    scorer = WindowScorer(bundle, batch_size=64)
    assert (scorer.mode, scorer.batch_size, scorer.requested_batch_size) == (SCORING_SINGLE, 1, 64)
    assert scorer.errors(w).tobytes() == single.tobytes()
    # replay says so in one line, and logs it once for two files
    clips = [DEMO_DIR / "clips" / name for name in EXPECTED["scores_int8"]]
    proc = subprocess.run([sys.executable, "-m", "edge_monitor", "replay", *map(str, clips), "--model",
                           str(batch_mixing_bundle)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    assert f"scoring: {scorer.backend}, single (batch differs on this interpreter) (1 window per call instead of " \
           "64)" in proc.stdout
    assert proc.stderr.count("batched scoring differs from one window at a time") == 1, proc.stderr
