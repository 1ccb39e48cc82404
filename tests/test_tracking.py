"""`train --mlflow`: a small bundle is trained and its run read back with MLflow's own client."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edge_monitor.commands import main
from edge_monitor.core.model import sha256_file

pytestmark = pytest.mark.slow


def test_train_logs_the_bundle_as_an_mlflow_run(synth_data, tmp_path, capsys):
    pytest.importorskip("tensorflow", reason="training tests need the train extra: pip install '.[train]'")
    mlflow = pytest.importorskip("mlflow", reason="--mlflow needs the train extra (mlflow-skinny)")
    out = tmp_path / "models"
    assert main(["--log-level", "warning", "train", str(synth_data), "--out", str(out), "--epochs", "3",
                 "--no-cache", "--seed", "4", "--mlflow"]) == 0
    bundle = out / "fan-id_00"
    manifest = json.loads((bundle / "model.json").read_text())
    store = out / "mlruns" / "mlflow.db"
    assert store.is_file(), "no URI: the local store beside the models"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("edge-monitor")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "fan-id_00"
    assert f"MLflow run {run.info.run_id}" in capsys.readouterr().out

    tags = run.data.tags
    assert tags["machine_type"] == "fan" and tags["machine_id"] == "id_00"
    assert tags["bundle_sha256"] == sha256_file(bundle / "model.tflite") == manifest["model"]["sha256"]

    params = run.data.params
    assert params["seed"] == "4" and params["epochs_max"] == "3" and params["features.n_mels"] == "128"
    assert params["split.held_out_clips"] == str(manifest["training"]["held_out_clips"])
    assert "autoencoder" in params["architecture"]

    metrics = run.data.metrics
    assert metrics["threshold"] == pytest.approx(manifest["threshold"]["value"])
    assert metrics["test.int8.auc"] == pytest.approx(manifest["evaluation"]["test"]["int8"]["auc"])
    assert "plant.detector.false_alarms_per_hour" in metrics and "test.int8.f1" in metrics
    assert "held_out.int8_score_max" in metrics and "decision_threshold.1s" in metrics
    losses = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in losses] == list(range(1, manifest["training"]["epochs_run"] + 1))
    assert min(m.value for m in losses) == pytest.approx(manifest["training"]["final_val_loss"])

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "bundle")}
    assert {"bundle/model.tflite", "bundle/model.json", "bundle/model_float.tflite"} <= artifacts
    assert "plots/loss.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    local = Path(client.download_artifacts(run.info.run_id, "bundle/model.tflite", str(tmp_path / "dl")))
    assert hashlib.sha256(local.read_bytes()).hexdigest() == tags["bundle_sha256"]


def test_unreachable_tracking_server_fails_before_training(synth_data, tmp_path, capsys):
    pytest.importorskip("mlflow")
    assert main(["train", str(synth_data), "--out", str(tmp_path / "m"), "--mlflow", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "--mlflow http://127.0.0.1:9: the tracking store does not answer" in err and "Traceback" not in err
    assert not (tmp_path / "m" / "fan-id_00").exists()
