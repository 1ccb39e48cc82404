"""Plant metrics of `edge-monitor evaluate`: precision/recall/F1 at the threshold, the F1-optimal threshold
(applied only on request), and the detector's verdicts — clips replayed through the real Monitor.

The bundled demo model (trained by the project) is evaluated on synthetic clips whose fault onset is known.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_monitor import DEMO_DIR
from edge_monitor.commands import main
from edge_monitor.core.model import Bundle
from training.plant import f1_optimal, threshold_figures
from training.synth import generate_dataset

DEMO = DEMO_DIR / "fan-id_00"
ONSET = 6.0


@pytest.fixture(scope="module")
def onset_set(tmp_path_factory) -> Path:
    """fan id_00: 3 normal and 4 anomalous 12-s test clips, each fault starting at 6 s (onset sidecars)."""
    root = tmp_path_factory.mktemp("onset")
    generate_dataset(root, kinds=("fan",), ids=(0,), n_train=0, n_test_normal=3, n_test_anomaly=4, duration=12.0,
                     severity=0.8, faults=("bearing", "rubbing"), seed=7, fault_onset=ONSET)
    return root / "fan"


def test_precision_recall_f1_at_a_threshold():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.5, 0.9, 0.4, 0.6, 0.8, 1.0])
    fig = threshold_figures(labels, scores, 0.55)  # flagged: 0.9 (normal), 0.6, 0.8, 1.0 → tp 3, fp 1, fn 1
    assert fig == {"precision": 0.75, "recall": 0.75, "f1": 0.75}
    assert threshold_figures(labels, scores, 2.0) == {"precision": None, "recall": 0.0, "f1": 0.0}


def test_f1_optimal_threshold_is_the_best_cut():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.5, 0.9, 0.4, 0.6, 0.8, 1.0])
    best = f1_optimal(labels, scores)
    # cuts: > 0.55 gives F1 0.75; > 0.45 gives tp 3 fp 2 → 0.667; > 0.25 gives tp 4 fp 2 → 0.8 (the best)
    assert best["threshold"] == pytest.approx(0.25) and best["f1"] == pytest.approx(0.8)
    assert (best["precision"], best["recall"]) == (pytest.approx(4 / 6), 1.0)
    every = [threshold_figures(labels, scores, t)["f1"] or 0 for t in np.linspace(0, 1.1, 221)]
    assert best["f1"] == pytest.approx(max(every))
    assert f1_optimal(np.array([0, 0]), np.array([0.1, 0.2])) is None


def _replay_starts(clip: Path, tmp_path: Path) -> list[float]:
    """anomaly_start positions of `edge-monitor replay` on one clip: the independent reference."""
    jsonl = tmp_path / f"{clip.stem}.jsonl"
    assert main(["replay", str(clip), "--model", str(DEMO), "--jsonl", str(jsonl), "--quiet"]) in (0, 1)
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    return [e["audio_position_s"] for e in events if e["type"] == "anomaly_start"]


def test_detector_verdicts_match_replay(onset_set, tmp_path, capsys):
    assert main(["evaluate", str(DEMO), str(onset_set), "--out", str(tmp_path / "e")]) == 0
    result = json.loads((tmp_path / "e" / "results.json").read_text())
    det = result["plant"]["detector"]
    assert (det["normal_clips"], det["anomalous_clips"], det["with_known_onset"]) == (3, 4, 4)
    assert det["normal_hours"] == pytest.approx(3 * 12 / 3600)
    delays, false_alarms, detected = [], 0, 0
    for row in result["files"]:
        starts = _replay_starts(onset_set / "test" / row["file"], tmp_path)
        assert row["alerts_s"] == pytest.approx(starts, abs=1e-3)
        if row["label"] == "normal":
            false_alarms += len(starts)
        else:
            assert row["onset_s"] == ONSET
            after = [s for s in starts if s >= ONSET]
            if after:
                detected += 1
                delays.append(after[0] - ONSET)
                assert row["delay_s"] == pytest.approx(after[0] - ONSET, abs=1e-3)
    assert detected >= 3, "the demo model should catch strong bearing/rubbing faults"
    assert det["detected"] == detected and det["false_alarms"] == false_alarms
    assert det["delay_s"]["median"] == pytest.approx(float(np.median(delays)), abs=1e-3)
    assert 1.0 < det["delay_s"]["min"] < 10.0  # at least the 1-s decision window plus min_duration, well under 6 s
    at = result["plant"]["at_threshold"]
    assert at == {k: result["int8"][k] for k in ("precision", "recall", "f1")}
    out = capsys.readouterr().out
    assert f"{detected}/4 anomalous clips detected" in out and "delay median" in out
    assert "## Plant metrics" in (tmp_path / "e" / "report.md").read_text()


def test_field_labels_are_picked_up_and_false_alarms_counted(onset_set, tmp_path):
    """<state>/labels/<monitor>/{normal,anomaly}/: a clip an operator labelled normal that alarms is a false alarm."""
    labels = tmp_path / "state" / "labels"
    normal = labels / "fan-id_00" / "normal"
    normal.mkdir(parents=True)
    anomalous = sorted((onset_set / "test").glob("anomaly_*.wav"))[0]
    shutil.copy(anomalous, normal / "operator_said_normal.wav")  # no sidecar: no onset
    base = tmp_path / "base"
    assert main(["evaluate", str(DEMO), str(onset_set), "--out", str(base)]) == 0
    with_field = tmp_path / "field"
    assert main(["evaluate", str(DEMO), str(onset_set), "--out", str(with_field), "--labels", str(labels)]) == 0
    b = json.loads((base / "results.json").read_text())["plant"]["detector"]
    f = json.loads((with_field / "results.json").read_text())["plant"]["detector"]
    starts = _replay_starts(anomalous, tmp_path)
    assert starts, "the copied anomalous clip must alarm for this test to mean anything"
    assert f["normal_clips"] == b["normal_clips"] + 1
    assert f["false_alarms"] == b["false_alarms"] + len(starts)
    assert f["false_alarms_per_hour"] == pytest.approx(f["false_alarms"] / f["normal_hours"])
    assert f["normal_hours"] == pytest.approx(b["normal_hours"] + 12 / 3600)


def test_f1_threshold_is_applied_only_on_request(onset_set, tmp_path, capsys):
    bundle = tmp_path / "fan-id_00"
    shutil.copytree(DEMO, bundle)
    before = json.loads((bundle / "model.json").read_text())
    assert main(["evaluate", str(bundle), str(onset_set), "--out", str(tmp_path / "a")]) == 0
    assert json.loads((bundle / "model.json").read_text()) == before
    capsys.readouterr()
    assert main(["evaluate", str(bundle), str(onset_set), "--out", str(tmp_path / "b"), "--apply-threshold", "f1"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "only 4 anomalous clips" in err
    optimal = json.loads((tmp_path / "b" / "results.json").read_text())["plant"]["f1_optimal"]
    after = json.loads((bundle / "model.json").read_text())
    assert after["threshold"]["value"] == optimal["threshold"] != before["threshold"]["value"]
    assert after["threshold"]["previous"]["value"] == before["threshold"]["value"]
    assert after["decision"] == before["decision"]
    assert Bundle.load(bundle).threshold == optimal["threshold"]


def test_a_bad_onset_sidecar_is_one_line(onset_set, tmp_path, capsys):
    test = tmp_path / "set"
    shutil.copytree(onset_set, test)
    sidecar = sorted((test / "test").glob("anomaly_*.json"))[0]
    sidecar.write_text('{"fault_onset_s": "soon"}')
    assert main(["evaluate", str(DEMO), str(test), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert sidecar.name in err and "fault_onset_s must be a number" in err and "Traceback" not in err


def test_delay_counts_from_the_onset_and_early_alarms_apart():
    from training.plant import Verdict, summarise

    early_then_late = Verdict("a.wav", 1, 20.0, (2.0, 8.5), 6.0)
    assert early_then_late.delay_s == pytest.approx(2.5) and early_then_late.before_onset == 1
    only_early = Verdict("b.wav", 1, 20.0, (3.0,), 6.0)  # rang before the fault and not after: not a detection
    unknown_onset = Verdict("c.wav", 1, 20.0, (4.0,), None)
    quiet_normal = Verdict("n.wav", 0, 3600.0, (), None)
    s = summarise([early_then_late, only_early, unknown_onset, quiet_normal])
    assert (s["detected"], s["missed"], s["alarms_before_onset"]) == (2, ["b.wav"], 2)
    assert s["delay_s"] == {"clips": 1, "median": pytest.approx(2.5), "min": pytest.approx(2.5),
                            "max": pytest.approx(2.5)}
    assert s["false_alarms_per_hour"] == 0.0 and s["normal_hours"] == 1.0
