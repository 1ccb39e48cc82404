"""Training end to end on synthetic sound: a real int8 bundle, its manifest, its threshold, its evaluation."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from edge_monitor.commands import main
from edge_monitor.core.features import FeatureParams, log_mel, windows
from edge_monitor.core.model import Bundle, WindowScorer, sha256_file
from edge_monitor.core.wav import load_audio
from training.metrics import auc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(trained) -> Bundle:
    return Bundle.load(trained)


def test_bundle_files(trained):
    for name in ("model.tflite", "model_float.tflite", "model.json", "report.md", "loss.png", "scores.png",
                 "int8_vs_float.png"):
        assert (trained / name).is_file(), name
    report = (trained / "report.md").read_text()
    assert "threshold" in report and "![loss](loss.png)" in report


def test_manifest_contract(bundle, trained):
    m = bundle.manifest.to_dict()  # the JSON layout, as written
    assert m["format_version"] == 1
    assert m["machine"] == {"type": "fan", "id": "id_00"}
    assert FeatureParams.from_dict(m["features"]) == FeatureParams()
    assert m["window"]["size"] == 640
    assert m["model"]["sha256"] == sha256_file(trained / "model.tflite")
    for side in ("input", "output"):
        assert m["quantization"][side]["dtype"] == "int8"
    assert len(m["standardization"]["mean"]) == len(m["standardization"]["std"]) == 640
    assert "de-quantised" in m["score"]["definition"]
    t = m["training"]
    assert t["clips"] + t["held_out_clips"] == 24 and t["held_out_clips"] == 5  # max(3, round(0.2 · 24))
    assert t["clips_skipped"] and "broken" in t["clips_skipped"][0]  # the damaged file the fixture adds
    assert set(t["training_files"]).isdisjoint(t["held_out_files"])
    assert t["data_digest"].startswith("sha256:") and 1 <= t["epochs_run"] <= t["epochs_max"]


def test_manifest_records_the_level_distribution_of_every_normal_clip(bundle, synth_data):
    from edge_monitor.core.machine import piece_levels, pieces_frames

    level = bundle.manifest.level
    p = bundle.params
    t = bundle.manifest.training
    files = [synth_data / "fan" / "train" / name for name in t["training_files"] + t["held_out_files"]]
    count = pieces_frames(level.window_seconds, p)
    levels = np.concatenate([piece_levels(log_mel(load_audio(f, p.sample_rate), p), count) for f in files])
    assert level.window_seconds == pytest.approx(1.0, abs=p.hop_length / p.sample_rate) and level.pieces == len(levels)
    assert level.percentiles == pytest.approx(tuple(np.percentile(levels, [1, 5, 50, 95, 99])), abs=1e-9)


def test_interpreter_sees_int8_input_and_output(bundle):
    scorer = WindowScorer(bundle)
    assert scorer._in["dtype"] == np.int8 and scorer._out["dtype"] == np.int8
    assert scorer._in["quantization"][0] == pytest.approx(bundle.input_quant.scale)


def test_threshold_is_the_gamma_quantile_of_held_out_int8_scores(bundle, synth_data):
    """Recompute the threshold from scratch: held-out clips → int8 clip scores → gamma fit → quantile."""
    th = bundle.manifest.to_dict()["threshold"]
    scorer = WindowScorer(bundle)
    train_dir = synth_data / "fan" / "train"
    scores = np.array([scorer.clip_score(load_audio(train_dir / name, 16000))
                       for name in bundle.manifest.to_dict()["training"]["held_out_files"]])
    shape, loc, scale = scipy.stats.gamma.fit(scores, floc=0)
    assert th["quantile"] == 0.99 and th["expected_false_alarm_rate"] == pytest.approx(0.01)
    assert (th["gamma"]["shape"], th["gamma"]["scale"]) == pytest.approx((shape, scale), rel=1e-4)
    assert th["value"] == pytest.approx(scipy.stats.gamma.ppf(0.99, shape, scale=scale), rel=1e-4)
    assert th["value"] > scores.max() * 0.95


def test_export_checked_itself(bundle):
    check = bundle.manifest.to_dict()["evaluation"]["export_check"]
    assert check["interpreter"] in ("ai_edge_litert", "tflite_runtime", "tensorflow")
    assert check["int8_vs_float_clip_score_correlation"] > 0.95
    assert check["float_tflite_vs_keras_max_relative_difference"] < 1e-3


def test_train_evaluated_the_test_split(bundle):
    test = bundle.manifest.to_dict()["evaluation"]["test"]
    assert test["clips"] == {"normal": 6, "anomaly": 6}
    assert test["int8"]["auc"] > 0.75, "a severity-0.8 fault should be found on synthetic sound"
    assert test["int8"]["auc"] - test["float"]["auc"] >= -0.05


def test_batch_and_single_window_scoring_are_identical(bundle, synth_data):
    x = load_audio(next((synth_data / "fan" / "test").glob("anomaly_*.wav")), 16000)
    w = windows(log_mel(x), bundle.params)
    batch = WindowScorer(bundle, batch_size=256).errors(w)
    single = WindowScorer(bundle, batch_size=1)
    one_by_one = np.array([single.errors(w[i : i + 1])[0] for i in range(len(w))])
    np.testing.assert_array_equal(batch, one_by_one)


def test_evaluate_command_writes_scores_and_report(trained, synth_data, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(trained), str(synth_data), "--out", str(out)]) == 0
    assert "int8 AUC" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 12 and {r["label"] for r in rows} == {"normal", "anomaly"}
    result = json.loads((out / "results.json").read_text())
    labels = np.array([r["label"] == "anomaly" for r in rows])
    int8 = np.array([float(r["score_int8"]) for r in rows])
    assert result["int8"]["auc"] == pytest.approx(auc(labels, int8), abs=1e-3)
    # the CSV's int8 score is what the runtime's scorer gives for the same file
    bundle = Bundle.load(trained)
    first = Path(rows[0]["file"])
    assert float(rows[0]["score_int8"]) == pytest.approx(WindowScorer(bundle).clip_score(load_audio(first, 16000)),
                                                         rel=1e-5)
    for name in ("report.md", "roc.png", "histogram.png"):
        assert (out / name).is_file()
    assert "| int8 |" in (out / "report.md").read_text()


def test_evaluate_accepts_normal_and_abnormal_folders(trained, synth_data, tmp_path):
    for label, pattern in (("normal", "normal_*.wav"), ("abnormal", "anomaly_*.wav")):
        (tmp_path / "set" / label).mkdir(parents=True)
        for i, src in enumerate(sorted((synth_data / "fan" / "test").glob(pattern))):
            shutil.copy(src, tmp_path / "set" / label / f"{i:03d}.wav")
    assert main(["evaluate", str(trained), str(tmp_path / "set"), "--out", str(tmp_path / "e")]) == 0
    result = json.loads((tmp_path / "e" / "results.json").read_text())
    assert result["clips"] == {"normal": 6, "anomaly": 6}


def test_strict_fails_on_an_unreadable_clip(synth_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth_data / "fan" / "train", data)
    (data / "normal_id_00_99999999.wav").write_bytes(b"RIFF\x00\x00")
    assert main(["train", str(data), "--out", str(tmp_path / "m"), "--strict", "--no-cache"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("edge-monitor: error:")]
    assert len(errors) == 1 and "normal_id_00_99999999.wav" in errors[0] and "truncated" in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "m" / "fan-id_00").exists()


def test_evaluate_a_folder_of_bundles(trained, synth_data, tmp_path, capsys):
    """MODELS as train writes it: each bundle is evaluated on the clips of its own machine id."""
    assert main(["evaluate", str(trained.parent), str(synth_data / "fan"), "--out", str(tmp_path / "e")]) == 0
    assert capsys.readouterr().out.startswith("fan-id_00: 6 normal / 6 anomalous clips")


def test_evaluate_takes_the_bundles_machine_type_from_a_dcase_root(trained, synth_data, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(synth_data / "fan" / "test", root / "fan" / "test")
    shutil.copytree(synth_data / "fan" / "test", root / "pump" / "test")  # same ids, other machine type
    assert main(["evaluate", str(trained), str(root), "--out", str(tmp_path / "e")]) == 0
    assert json.loads((tmp_path / "e" / "results.json").read_text())["clips"] == {"normal": 6, "anomaly": 6}
