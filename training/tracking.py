"""Experiment tracking: every trained bundle as an MLflow run (``edge-monitor train … --mlflow [URI]``).

A run holds what decides and describes one bundle:

- parameters: the feature parameters, the architecture, the fit settings (epochs, batch, patience),
  the split (held-out fraction, clip counts), threshold quantile, seed, channel;
- metrics: ``loss`` and ``val_loss`` per epoch (step = epoch), the held-out figures, the export check,
  the threshold and the decision thresholds, and the evaluation figures when test clips were found
  (AUC/pAUC int8 and float, precision/recall/F1 at the threshold, the detector's verdicts);
- tags: machine type and id, the bundle's sha256 (int8 model), the float twin's sha256, the data digest;
- artifacts: the whole bundle under ``bundle/`` (what ``rollout`` would ship) and its plots under ``plots/``.

Without a URI the store is local and needs no server: ``OUT/mlruns/mlflow.db`` (SQLite) with the
artifacts in ``OUT/mlruns/artifacts``; browse it with ``mlflow ui --backend-store-uri
sqlite:///OUT/mlruns/mlflow.db``. A URI (``http://host:5000``, ``sqlite:///path``, ``databricks``) goes
to that store. Runs are logged by the process that started ``train``, after each bundle is written,
so workers never write the store concurrently; a store that fails mid-fleet costs the run, never a bundle.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import structlog

from edge_monitor.core.errors import UserError

log = structlog.get_logger("edge_monitor.train")

EXPERIMENT = "edge-monitor"
LOCAL_STORE = "mlruns"  # beside the bundles: OUT/mlruns/


def _flat(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


class Tracker:
    """An MLflow store and the experiment the runs go to."""

    def __init__(self, client, uri: str, experiment_id: str):
        self.client = client
        self.uri = uri
        self.experiment_id = experiment_id

    @classmethod
    def open(cls, uri: str, out: Path, experiment: str = EXPERIMENT) -> Tracker:
        """The store at ``uri`` ('' → the local store in ``out/mlruns``); checked now, before any training."""
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # an unreachable server fails in seconds
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        try:
            import mlflow  # noqa: F401
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError("--mlflow needs MLflow: pip install 'edge-monitor[train]' (mlflow-skinny)") from None
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)  # schema creation notes are not for the user
        artifacts = None
        if not uri or "://" not in uri and uri != "databricks" and not uri.startswith("file:"):
            folder = (Path(uri) if uri else Path(out) / LOCAL_STORE).resolve()
            folder.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{folder / 'mlflow.db'}"
            artifacts = (folder / "artifacts").as_uri()
        try:
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(experiment)
            experiment_id = (found.experiment_id if found is not None
                             else client.create_experiment(experiment, artifact_location=artifacts))
        except (MlflowException, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"--mlflow {uri}: the tracking store does not answer ({first[:300]}); start the "
                            f"server or leave out the URI for a local store") from None
        except ImportError as exc:
            raise UserError(f"--mlflow {uri}: this store needs a package that is not installed ({exc}); "
                            f"pip install 'edge-monitor[train]'") from None
        return cls(client, uri, experiment_id)

    def log_bundle(self, bundle: Path, history: dict, settings, args=None) -> str | None:
        """One run for the bundle at ``bundle``; its run id, or None when the store failed (logged)."""
        try:
            return self._log(bundle, history, settings)
        except Exception as exc:  # noqa: BLE001 - the store failing must not fail training; the bundle is written
            log.warning("MLflow run not logged; the bundle is written", machine=bundle.name, store=self.uri,
                        error=f"{type(exc).__name__}: {exc}")
            return None

    def _log(self, bundle: Path, history: dict, settings) -> str:
        from mlflow.entities import Metric, Param, RunTag

        manifest = json.loads((bundle / "model.json").read_text())
        training, evaluation = manifest.get("training", {}), manifest.get("evaluation", {})
        params: dict = {}
        _flat("features", manifest.get("features", {}), params)
        params.update({
            "architecture": manifest.get("model", {}).get("architecture"),
            "epochs_max": training.get("epochs_max"),
            "epochs_run": training.get("epochs_run"),
            "best_epoch": training.get("best_epoch"),
            "batch_size": training.get("batch_size"),
            "patience": training.get("early_stopping", {}).get("patience"),
            "split.val_fraction": getattr(settings, "val_fraction", None),
            "split.train_clips": training.get("clips"),
            "split.held_out_clips": training.get("held_out_clips"),
            "split.clips_skipped": len(training.get("clips_skipped", [])),
            "windows": training.get("windows"),
            "window_stride": training.get("window_stride"),
            "threshold.quantile": manifest.get("threshold", {}).get("quantile"),
            "seed": training.get("seed"),
            "channel": training.get("channel"),
        })
        for key, value in asdict(settings).items() if settings is not None else ():
            params.setdefault(f"settings.{key}", value)
        metrics: dict[str, float] = {}
        threshold = manifest.get("threshold", {})
        metrics["threshold"] = threshold.get("value")
        for d in manifest.get("decision", {}).get("thresholds", []):
            metrics[f"decision_threshold.{d['window_seconds']:g}s"] = d["value"]
        _flat("held_out", evaluation.get("held_out_normal", {}), metrics)
        check = evaluation.get("export_check", {})
        metrics["export.int8_vs_float_correlation"] = check.get("int8_vs_float_clip_score_correlation")
        metrics["export.float_vs_keras_max_rel_diff"] = check.get("float_tflite_vs_keras_max_relative_difference")
        metrics["time.duration_s"] = training.get("duration_s")
        metrics["time.fit_s"] = training.get("fit_s")
        results = bundle / "evaluation" / "results.json"
        if results.is_file():
            result = json.loads(results.read_text())
            for model in ("int8", "float"):
                _flat(f"test.{model}", result.get(model) or {}, metrics)
            _flat("test.clips", result.get("clips", {}), metrics)
            _flat("plant", result.get("plant", {}), metrics)
        now = int(time.time() * 1000)
        metric_rows = [Metric(k, float(v), now, 0) for k, v in metrics.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
        for name in ("loss", "val_loss"):
            metric_rows += [Metric(name, float(v), now, step) for step, v in enumerate(history.get(name, []), 1)]
        machine = manifest.get("machine", {})
        model = manifest.get("model", {})
        tags = {
            "machine_type": machine.get("type"), "machine_id": machine.get("id"),
            "bundle_sha256": model.get("sha256"), "bundle_float_sha256": model.get("float_sha256"),
            "data_digest": training.get("data_digest"), "edge_monitor_version": manifest.get("edge_monitor_version"),
            "bundle_path": str(bundle.resolve()),
        }
        run = self.client.create_run(self.experiment_id, run_name=bundle.name,
                                     tags={k: str(v) for k, v in tags.items() if v is not None})
        run_id = run.info.run_id
        param_rows = [Param(k, str(v)[:6000]) for k, v in params.items() if v is not None]
        for i in range(0, len(param_rows), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=param_rows[i : i + 100])
        for i in range(0, len(metric_rows), 1000):
            self.client.log_batch(run_id, metrics=metric_rows[i : i + 1000])
        self.client.log_batch(run_id, tags=[RunTag("mlflow.note.content", f"bundle {bundle.name}: "
                                                   f"threshold {threshold.get('value')}")])
        self.client.log_artifacts(run_id, str(bundle), artifact_path="bundle")
        for plot in sorted(bundle.rglob("*.png")):
            self.client.log_artifact(run_id, str(plot), artifact_path="plots")
        self.client.set_terminated(run_id)
        return run_id
