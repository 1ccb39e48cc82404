"""``edge-monitor train``: normal WAVs → one evaluated int8 TFLite bundle per machine id.

Steps per machine id: features (cached) → split by clip into training and held-out clips →
standardisation statistics from the training windows → autoencoder fit with early stopping on the
held-out clips → int8 and float TFLite export → int8 clip scores of the held-out clips → gamma fit
→ threshold at a quantile → manifest → self-check by loading the bundle with the edge interpreter →
report. When the data set has labelled test clips for the id, they are evaluated too. The manifest also
records the level distribution of the normal clips (``core/machine.py``: is the machine running?).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import math
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

import edge_monitor
from edge_monitor.core.detector import (
    DECISION_QUANTILE,
    DECISION_SECONDS,
    decision_length,
    sliding_means,
)
from edge_monitor.core.errors import AudioError, UserError
from edge_monitor.core.features import FeatureParams, windows
from edge_monitor.core.machine import level_distribution
from edge_monitor.core.manifest import (
    FLOAT_MODEL_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    SCORE_DEFINITION,
    SCORE_DEFINITION_CENTRE,
    STD_FLOOR,
    Decision,
    DecisionThreshold,
    Machine,
    Manifest,
    ModelFiles,
    Quant,
    Quantization,
    ScoreSpec,
    Standardization,
    Threshold,
    Window,
    fit_standardization,
    standardize,
)
from edge_monitor.core.model import Bundle, WindowScorer, sha256_file
from edge_monitor.core.thresholds import gamma_fit
from edge_monitor.core.wav import parse_channel

from . import report
from .data import Clip, FeatureCache, find_test_clips, find_training_clips

log = structlog.get_logger("edge_monitor.train")

CHECK_TRAIN_CLIPS = 100  # training clips scored in the export check (besides every held-out clip)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 50
    batch_size: int = 512
    patience: int = 5
    val_fraction: float = 0.2  # the held-out clips also set the threshold: 10 % gave 7.5 % false alarms, 20 % gave 3.3 %
    min_val_clips: int = 3
    quantile: float = 0.99
    max_train_windows: int = 120_000
    representative_windows: int = 2000
    seed: int = 0
    channel: int | str = 0
    strict: bool = False
    architecture: str = "ae"  # ae: autoencoder of the window; idnn: interpolation of its centre frame


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="DCASE root, machine type folder, or folder of normal WAVs")
    parser.add_argument("--out", type=Path, required=True, help="folder that receives one bundle per machine id")
    parser.add_argument("--machine", help="machine type (default: from the layout or the folder name)")
    parser.add_argument("--id", dest="machine_id", help="machine id, e.g. id_00 (default: every id found)")
    parser.add_argument("--epochs", type=int, default=TrainSettings.epochs, help="maximum epochs (early stopping)")
    parser.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    parser.add_argument("--patience", type=int, default=TrainSettings.patience, help="early-stopping patience")
    parser.add_argument("--val-fraction", type=float, default=TrainSettings.val_fraction,
                        help="fraction of normal clips held out for early stopping and the threshold")
    parser.add_argument("--quantile", type=float, default=TrainSettings.quantile,
                        help="threshold = this quantile of the gamma fit to held-out clip scores")
    parser.add_argument("--max-windows", type=int, default=TrainSettings.max_train_windows,
                        help="cap on training windows per epoch (windows are subsampled by stride)")
    parser.add_argument("--channel", default="0", help="channel of multi-channel files: index or 'mix'")
    parser.add_argument("--cache", type=Path, help="feature cache folder (default: OUT/.feature-cache)")
    parser.add_argument("--no-cache", action="store_true", help="do not cache features")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="fail on an unreadable WAV instead of skipping it")
    parser.add_argument("--architecture", choices=("ae", "idnn"), default=TrainSettings.architecture,
                        help="ae: dense autoencoder of the window (DCASE 2020 baseline); idnn: interpolation "
                             "network, the window without its centre frame predicts that frame (Suefusa 2020)")
    from .fleet import add_fleet_arguments  # --jobs, --dask, --mlflow

    add_fleet_arguments(parser)
    parser.add_argument("--fmax", default=None, metavar="HZ|nyquist",
                        help="upper edge of the mel bands (default: FeatureParams' default, below the roll-off of "
                             "common resamplers; 'nyquist' = sample_rate/2, the DCASE setting)")


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    channel = parse_channel(args.channel)
    checks = [
        (args.epochs >= 1, f"--epochs: expected at least 1, got {args.epochs}"),
        (args.batch_size >= 1, f"--batch-size: expected at least 1, got {args.batch_size}"),
        (0 < args.val_fraction < 1, f"--val-fraction: expected a fraction in (0, 1), got {args.val_fraction}"),
        (0.5 <= args.quantile < 1, f"--quantile: expected a value in [0.5, 1), got {args.quantile}"),
        (args.max_windows >= 1000, f"--max-windows: expected at least 1000, got {args.max_windows}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return TrainSettings(
        epochs=args.epochs, batch_size=args.batch_size, patience=args.patience, val_fraction=args.val_fraction,
        quantile=args.quantile, max_train_windows=args.max_windows, seed=args.seed, channel=channel,
        strict=args.strict, architecture=getattr(args, "architecture", TrainSettings.architecture),
    )


def feature_params_from_args(args: argparse.Namespace) -> FeatureParams:
    """The feature parameters a new bundle gets: the defaults, with ``--fmax`` when given."""
    text = getattr(args, "fmax", None)
    if text is None:
        return FeatureParams()
    nyquist = FeatureParams.sample_rate / 2
    if str(text).strip().lower() == "nyquist":
        return FeatureParams(fmax=nyquist)
    try:
        fmax = float(text)
    except ValueError:
        fmax = float("nan")
    if not 0 < fmax <= nyquist:
        raise UserError(f"--fmax: expected a frequency in Hz in (0, {nyquist:g}] or 'nyquist', got {text!r}")
    return FeatureParams(fmax=fmax)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    params = feature_params_from_args(args)
    groups = find_training_clips(args.data, args.machine, args.machine_id)
    cache_dir = None if args.no_cache else (args.cache or args.out / ".feature-cache")
    from .fleet import run_train  # --jobs / --dask / --mlflow: training/fleet.py, training/tracking.py

    return run_train(args, groups, settings, cache_dir, params)


def train_and_evaluate(clips: list[Clip], out: Path, test_clips: list[Clip], settings: TrainSettings,
                       cache_dir: Path | None, *, params: FeatureParams | None = None,
                       history_out: dict | None = None) -> Bundle:
    """One machine id: train its bundle into ``out``, then evaluate its labelled test clips when there are any."""
    params = params or FeatureParams()
    bundle = train_one(clips, out, params, settings, FeatureCache(cache_dir, params, settings.channel),
                       history_out=history_out)
    if test_clips:
        from .evaluate import evaluate_bundle

        evaluate_bundle(bundle, test_clips, bundle.path / "evaluation", channel=settings.channel,
                        record_in_manifest=True)
    return bundle


def _test_clips_for(data: Path, clip: Clip) -> list[Clip]:
    """Labelled test clips of the same machine id when the data set is in a DCASE layout."""
    try:
        found = find_test_clips(data, clip.machine_type)
    except UserError:
        return []
    return [c for c in found if c.machine_type == clip.machine_type and c.machine_id == clip.machine_id]


def _load_features(clips: list[Clip], cache: FeatureCache, params: FeatureParams, strict: bool):
    """(frames per clip, clip digests, skipped descriptions)."""
    frames, digests, used, skipped = [], [], [], []
    for clip in clips:
        try:
            digest = sha256_file(clip.path)
            clip_frames = cache.frames(clip.path, digest)
            if clip_frames.shape[0] < params.frames:
                raise AudioError(f"{clip.path}: shorter than one window ({params.frames} frames); leave it out")
        except (AudioError, OSError) as exc:
            if strict:
                raise UserError(str(exc)) from None
            log.warning("skipping unreadable clip", file=str(clip.path), reason=str(exc))
            skipped.append(f"{clip.path.name}: {exc}")
            continue
        frames.append(clip_frames)
        digests.append(f"{clip.path.name}:{digest}")
        used.append(clip)
    return frames, digests, used, skipped


def _stack(frame_list: list[np.ndarray], params: FeatureParams, stride: int) -> np.ndarray:
    return np.concatenate([windows(f, params)[::stride] for f in frame_list]).astype(np.float32, copy=False)


def _gamma_threshold(scores: np.ndarray, quantile: float) -> Threshold:
    fit = gamma_fit(scores, quantile)
    value = fit.value
    return Threshold(value, {
        "method": "gamma_quantile",
        "quantile": quantile,
        "gamma": {"shape": fit.shape, "loc": 0.0, "scale": fit.scale, "fit": "scipy.stats.gamma.fit, loc fixed at 0"},
        "scores": "int8 clip scores of the held-out normal clips (not trained on; they also decided early stopping)",
        "held_out_clips": len(scores),
        "expected_false_alarm_rate": round(1.0 - quantile, 6),
        "held_out_exceed_fraction": float(np.mean(scores > value)),
    })


def _decision_thresholds(clip_errors: list[np.ndarray], params: FeatureParams) -> Decision:
    """Thresholds for the detector's decision scores (mean window error over a few seconds).

    For each calibrated length: every decision score the held-out clips give (sliding means of their
    int8 window errors), a gamma fit (loc 0), and its ``DECISION_QUANTILE``. Decision scores of
    neighbouring positions overlap, so the fit describes the marginal distribution a detector sees.
    """
    thresholds = []
    for seconds in DECISION_SECONDS:
        length = decision_length(seconds, params)
        means = np.concatenate([sliding_means(e, length) for e in clip_errors])
        if len(means) < 10:
            continue
        value = gamma_fit(means, DECISION_QUANTILE).value
        thresholds.append(DecisionThreshold(seconds, value, {
            "windows": length, "held_out_max": float(means.max()),
            "held_out_exceed_fraction": float(np.mean(means > value)), "decision_scores": len(means)}))
    return Decision(tuple(thresholds), {
        "score": "mean window error over the last window_seconds of audio (edge_monitor.core.detector.sliding_means)",
        "method": "gamma_quantile of every decision score of the held-out clips, loc fixed at 0",
        "quantile": DECISION_QUANTILE,
    })


def _staging(target: Path) -> Path:
    """An empty folder beside ``target`` where the bundle is built before it replaces ``target``."""
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _promote(staging: Path, target: Path) -> None:
    """Replace ``target`` by the finished ``staging`` folder; a crash before this leaves the old bundle."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def train_one(clips: list[Clip], out: Path, params: FeatureParams, settings: TrainSettings, cache: FeatureCache,
              *, history_out: dict | None = None) -> Bundle:
    from . import autoencoder  # TensorFlow only from here on

    key = clips[0].key
    started = time.monotonic()
    bound = log.bind(machine=key)
    bound.info("extracting features", clips=len(clips))
    frames, digests, used, skipped = _load_features(clips, cache, params, settings.strict)
    feature_s = time.monotonic() - started
    n_val = max(settings.min_val_clips, round(settings.val_fraction * len(used)))
    if len(used) - n_val < 2:
        raise UserError(
            f"{key}: {len(used)} usable normal clips; need at least {n_val + 2} "
            f"({n_val} held out for the threshold, 2 or more to train on) — add clips"
        )
    order = np.random.default_rng(settings.seed).permutation(len(used))
    val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
    total = sum(f.shape[0] - params.frames + 1 for f in (frames[i] for i in train_idx))
    stride = max(1, math.ceil(total / settings.max_train_windows))
    train_raw = _stack([frames[i] for i in train_idx], params, stride)
    val_raw = _stack([frames[i] for i in val_idx], params, stride)
    mean, std = fit_standardization(train_raw)
    train_z = standardize(train_raw, mean, std)
    val_z = standardize(val_raw, mean, std)
    target = autoencoder.ARCHITECTURES[settings.architecture][0]
    score = ScoreSpec(target, "int8", SCORE_DEFINITION if target == "window" else SCORE_DEFINITION_CENTRE)
    input_dims, target_dims = score.input_dims(params), score.target_dims(params)
    if target == "window":  # the autoencoder: no copies of the (up to 300 MB) training windows
        train_x, val_x, train_y, val_y = train_z, val_z, train_z, val_z
    else:
        train_x, val_x = train_z[:, input_dims], val_z[:, input_dims]
        train_y, val_y = train_z[:, target_dims], val_z[:, target_dims]
    bound.info("training", architecture=settings.architecture, train_clips=len(train_idx), held_out_clips=n_val,
               windows=len(train_x), window_stride=stride, max_epochs=settings.epochs)
    model = autoencoder.build(len(input_dims), seed=settings.seed, output_dim=len(target_dims))
    fit_started = time.monotonic()
    history = autoencoder.fit(model, train_x, val_x, epochs=settings.epochs, batch_size=settings.batch_size,
                              patience=settings.patience, report=bound.info, train_target=train_y, val_target=val_y)
    fit_s = time.monotonic() - fit_started
    if history_out is not None:  # losses per epoch for experiment tracking (training/tracking.py)
        history_out.update(history)
    rng = np.random.default_rng(settings.seed + 1)
    representative = train_x[rng.choice(len(train_x), min(settings.representative_windows, len(train_x)), replace=False)]
    int8_bytes = autoencoder.export_tflite(model, representative)
    float_bytes = autoencoder.export_tflite(model, None)

    def keras_clip_scores(indices):  # float Keras scores, every window of each clip, one predict call
        stacked = [windows(frames[i], params) for i in indices]
        z = standardize(np.concatenate(stacked), mean, std)
        errors = np.mean((autoencoder.predict(model, z[:, input_dims]) - z[:, target_dims]) ** 2, axis=1)
        bounds = np.cumsum([0] + [len(w) for w in stacked])
        return np.array([errors[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:], strict=True)])

    # Read the quantisation the converter chose from the model itself, through the edge interpreter.
    from edge_monitor.core.model import interpreter_backend

    backend, interpreter_class = interpreter_backend()
    interp = interpreter_class(model_content=int8_bytes)
    quants = {}
    for side, detail in (("input", interp.get_input_details()[0]), ("output", interp.get_output_details()[0])):
        scale, zero_point = detail["quantization"]
        quants[side] = Quant(float(scale), int(zero_point), np.dtype(detail["dtype"]).name)
    manifest = Manifest(
        machine=Machine(clips[0].machine_type, clips[0].machine_id),
        features=params,
        window=Window(params.frames, params.window_size, 1),
        model=ModelFiles(MODEL_FILE, hashlib.sha256(int8_bytes).hexdigest(), FLOAT_MODEL_FILE,
                         hashlib.sha256(float_bytes).hexdigest(),
                         autoencoder.describe(settings.architecture, len(input_dims), len(target_dims)),
                         {"bytes": len(int8_bytes)}),
        quantization=Quantization(quants["input"], quants["output"]),
        standardization=Standardization(mean, std, {
            "where": "manifest (not folded into the model): z = (window - mean) / std, per dimension",
            "statistics_from": "training windows",
            "std_floor_db": STD_FLOOR,
        }),
        score=score,
        threshold=Threshold(1.0),  # placeholder until the int8 held-out scores exist
        level=level_distribution(frames, params),  # every usable normal clip: the running machine's level
        info={"created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "edge_monitor_version": edge_monitor.__version__},
    )
    staging = _staging(out)
    (staging / MODEL_FILE).write_bytes(int8_bytes)
    (staging / FLOAT_MODEL_FILE).write_bytes(float_bytes)
    manifest.write(staging / MANIFEST_FILE)

    # Self-check with the runtime's own scorer: int8 scores of held-out clips → threshold.
    provisional = Bundle.load(staging)
    int8_scorer = WindowScorer(provisional)
    float_scorer = WindowScorer(provisional, use_float=True)
    # The export check scores every held-out clip and up to CHECK_TRAIN_CLIPS training clips.
    check_train = sorted(rng.choice(train_idx, min(CHECK_TRAIN_CLIPS, len(train_idx)), replace=False))
    all_idx = list(check_train) + list(val_idx)
    int8_scores = np.array([int8_scorer.frames_score(frames[i]) for i in all_idx])
    float_scores = np.array([float_scorer.frames_score(frames[i]) for i in all_idx])
    keras_scores = keras_clip_scores(all_idx)
    held_out = int8_scores[len(check_train):]
    threshold = _gamma_threshold(held_out, settings.quantile)
    decision = _decision_thresholds([int8_scorer.errors(windows(frames[i], params)) for i in val_idx], params)
    correlation = float(np.corrcoef(int8_scores, float_scores)[0, 1])
    float_vs_keras = float(np.max(np.abs(float_scores - keras_scores) / keras_scores))
    duration_s = time.monotonic() - started
    training = {
        "clips": len(train_idx),
        "held_out_clips": n_val,
        "clips_skipped": skipped,
        "training_files": [used[i].path.name for i in train_idx],
        "held_out_files": [used[i].path.name for i in val_idx],
        "windows": len(train_x),
        "window_stride": stride,
        "epochs_max": settings.epochs,
        "epochs_run": history["epochs_run"],
        "best_epoch": history["best_epoch"],
        "batch_size": settings.batch_size,
        "early_stopping": {"monitor": "val_loss of held-out clips' windows", "patience": settings.patience},
        "data_digest": "sha256:" + hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest(),
        "seed": settings.seed,
        "architecture": settings.architecture,
        "channel": settings.channel,
        "duration_s": round(duration_s, 1),
        "feature_s": round(feature_s, 1),
        "fit_s": round(fit_s, 1),
        "feature_cache": {"hits": cache.hits, "misses": cache.misses},
        "final_loss": history["loss"][history["best_epoch"] - 1],
        "final_val_loss": history["val_loss"][history["best_epoch"] - 1],
        "tensorflow": autoencoder.tf.__version__,
        "python": platform.python_version(),
    }
    evaluation = {
        "export_check": {
            "interpreter": backend,
            "int8_vs_float_clip_score_correlation": correlation,
            "float_tflite_vs_keras_max_relative_difference": float_vs_keras,
            "clips": len(all_idx),
            "clips_are": f"all {n_val} held-out clips and {len(check_train)} training clips",
        },
        "held_out_normal": {
            "clips": n_val,
            "int8_score_mean": float(held_out.mean()),
            "int8_score_max": float(held_out.max()),
            "false_alarms_at_threshold": int(np.sum(held_out > threshold.value)),
        },
    }
    manifest = manifest.replace(threshold=threshold, decision=decision, training=training, evaluation=evaluation)
    plots = report.training_plots(staging, history, int8_scores[: len(check_train)], held_out, threshold,
                                  float_scores, int8_scores)
    manifest.write(staging / MANIFEST_FILE)
    report.write_training_report(staging, manifest, plots)
    Bundle.load(staging)
    _promote(staging, out)
    bundle = Bundle.load(out)
    bound.info("bundle written", path=str(out), threshold=round(threshold.value, 4),
               int8_float_correlation=round(correlation, 4), epochs=history["epochs_run"],
               seconds=round(duration_s, 1))
    return bundle
