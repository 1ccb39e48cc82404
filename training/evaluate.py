"""``edge-monitor evaluate BUNDLE TEST_DIR``: AUC and pAUC per machine id, float vs int8, with a report.

BUNDLE is one bundle folder or a folder of bundles (one per machine id, as ``train`` writes them).
Each bundle is evaluated on the labelled test clips of its own machine id (clips whose names carry
no id are used for every bundle). Scores come from ``edge_monitor.core.model.WindowScorer``, the class
the daemon scores windows with; the float model is the bundle's float32 TFLite twin, so evaluation
needs no TensorFlow.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from edge_monitor.core.errors import AudioError, UserError
from edge_monitor.core.manifest import MANIFEST_FILE, Manifest
from edge_monitor.core.model import Bundle, WindowScorer
from edge_monitor.core.wav import load_audio, parse_channel

from . import plant, report
from .data import Clip, find_test_clips
from .metrics import auc, pauc

MAX_FPR = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="a model bundle folder, or a folder of bundles")
    parser.add_argument("test_dir", type=Path, help="labelled test clips (normal_*/anomaly_* or normal/ abnormal/)")
    parser.add_argument("--out", type=Path, help="report folder (default: BUNDLE/evaluation per bundle)")
    parser.add_argument("--channel", default="0", help="channel of multi-channel files: index or 'mix'")
    # plant metrics (training/plant.py)
    parser.add_argument("--apply-threshold", choices=("f1",), default=None,
                        help="write the F1-optimal clip threshold found on these clips into the bundle")
    parser.add_argument("--labels", type=Path, default=None,
                        help="labelled field clips: <state>/labels or <state>/labels/<monitor> with normal/ and "
                             "anomaly/, or a node's state folder <state> with faults/<monitor> and normal/<monitor> "
                             "(edge-monitor label) (default: /var/lib/edge-monitor/labels when it exists)")


def find_bundles(path: Path) -> list[Bundle]:
    if (path / MANIFEST_FILE).is_file():
        return [Bundle.load(path)]
    if path.is_dir():
        found = sorted(d for d in path.iterdir() if (d / MANIFEST_FILE).is_file())
        if found:
            return [Bundle.load(d) for d in found]
    raise UserError(f"{path}: no model bundle here (a folder with {MANIFEST_FILE}, or a folder of such folders)")


def run(args: argparse.Namespace) -> int:
    channel = parse_channel(args.channel)
    bundles = find_bundles(args.bundle)
    if not args.test_dir.is_dir():
        raise UserError(f"{args.test_dir}: no such folder; give a folder of labelled test WAVs")
    multi = len(bundles) > 1
    results = []
    for bundle in bundles:
        try:  # a DCASE root holds several machine types: take this bundle's type only
            clips = find_test_clips(args.test_dir, bundle.machine_type)
        except UserError:
            clips = []
        mine = [c for c in clips if c.machine_id in (None, bundle.machine_id)]
        mine += plant.field_clips(getattr(args, "labels", None), bundle)
        if not mine:
            print(f"{bundle.name}: no labelled test clips for it in {args.test_dir}")
            continue
        out = (args.out / bundle.name if multi else args.out) if args.out else bundle.path / "evaluation"
        results.append(evaluate_bundle(bundle, mine, out, channel=channel))
        if getattr(args, "apply_threshold", None) == "f1":
            _apply_f1(bundle, results[-1], args.test_dir)
    if not results:
        raise UserError(f"{args.test_dir}: no labelled test clips (normal_*/anomaly_* names or normal/ and "
                        f"abnormal/ folders) for {', '.join(b.name for b in bundles)}")
    return 0


def _apply_f1(bundle: Bundle, result: dict, source: Path) -> None:
    optimal = result["plant"]["f1_optimal"]
    if optimal is None:
        raise UserError(f"{bundle.name}: --apply-threshold f1 needs both normal and anomalous clips")
    if optimal["anomalous_clips"] < plant.MIN_ANOMALIES_TO_APPLY:
        print(f"edge-monitor: warning: {bundle.name}: F1-optimal threshold from only {optimal['anomalous_clips']} "
              f"anomalous clips (fewer than {plant.MIN_ANOMALIES_TO_APPLY}); it may not hold on new audio",
              file=sys.stderr)
    previous = plant.apply_threshold(bundle, optimal, str(source))
    print(f"{bundle.name}: clip threshold {previous:.4g} -> {optimal['threshold']:.4g} (F1-optimal) written to "
          f"{bundle.path / MANIFEST_FILE}; decision thresholds unchanged")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def evaluate_bundle(bundle: Bundle, clips: list[Clip], out: Path, *, channel: int | str = 0,
                    record_in_manifest: bool = False) -> dict:
    """Score ``clips`` with the int8 model and its float twin; write scores.csv, results.json, report.md."""
    int8 = WindowScorer(bundle)
    floats = WindowScorer(bundle, use_float=True) if bundle.float_model_path else None
    scored: list[tuple[Clip, float, float | None]] = []
    for clip in clips:
        try:
            samples = load_audio(clip.path, bundle.params.sample_rate, channel)
        except AudioError as exc:
            raise UserError(str(exc)) from None
        score = int8.clip_score(samples)
        if np.isnan(score):
            raise UserError(f"{clip.path}: shorter than one feature window; leave it out of the test set")
        scored.append((clip, score, floats.clip_score(samples) if floats else None))
    labels = np.array([c.label for c, _, _ in scored])
    s_int8 = np.array([s for _, s, _ in scored])
    s_float = np.array([f for _, _, f in scored], dtype=float) if floats else None
    both = 0 < labels.sum() < len(labels)
    result = {
        "machine": bundle.name,
        "model_sha256": bundle.sha256,
        "interpreter": int8.backend,
        "clips": {"normal": int((labels == 0).sum()), "anomaly": int((labels == 1).sum())},
        "threshold": bundle.threshold,
        "max_fpr": MAX_FPR,
        "int8": _figures(labels, s_int8, bundle.threshold, both),
        "float": _figures(labels, s_float, bundle.threshold, both) if s_float is not None else None,
    }
    result["files"] = [
        {"file": clip.path.name, "label": "anomaly" if clip.label else "normal", "score_int8": score, "score_float": fscore}
        for clip, score, fscore in scored
    ]
    if result["float"] and both:
        result["auc_int8_minus_float"] = result["int8"]["auc"] - result["float"]["auc"]
    result["plant"], found = plant.plant_figures(bundle, [c for c, _, _ in scored], labels, s_int8, channel)
    by_file = {v.file: v for v in found}
    for row in result["files"]:  # the detector's verdict per clip
        v = by_file.get(row["file"])
        row.update({"alerts_s": list(v.alerts), "onset_s": v.onset_s, "delay_s": v.delay_s} if v else {})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "machine_id", "label", "score_int8", "score_float", "above_threshold"])
        for clip, score, fscore in scored:
            writer.writerow([str(clip.path), clip.machine_id or bundle.machine_id, "anomaly" if clip.label else "normal",
                             f"{score:.6g}", "" if fscore is None else f"{fscore:.6g}", int(score > bundle.threshold)])
    (out / "results.json").write_text(json.dumps(result, indent=1))
    plots = report.evaluation_plots(out, labels, s_int8, s_float, bundle.threshold) if both else {}
    report.write_evaluation_report(out, result, plots)
    with open(out / "report.md", "a") as handle:
        handle.write(plant.report_section(result["plant"]))
        handle.write(plant.misclassified_reports(out, bundle, [c for c, _, _ in scored], s_int8, found, channel))
    if record_in_manifest:  # through the type, atomically: a crash leaves the old manifest whole
        manifest_path = bundle.path / MANIFEST_FILE
        manifest = Manifest.read(manifest_path)
        test = {k: result[k] for k in ("clips", "max_fpr", "int8", "float")}
        manifest.replace(evaluation={**manifest.evaluation, "test": test}).write(manifest_path)
    f8, ff = result["int8"], result["float"] or {}
    print(
        f"{bundle.name}: {result['clips']['normal']} normal / {result['clips']['anomaly']} anomalous clips | "
        f"int8 AUC {_fmt(f8.get('auc'))} pAUC {_fmt(f8.get('pauc'))} | float AUC {_fmt(ff.get('auc'))} "
        f"pAUC {_fmt(ff.get('pauc'))} | flagged {f8['flagged']}/{len(scored)} | report {out / 'report.md'}"
    )
    print(plant.summary_line(bundle.name, result["plant"]))
    return result


def _figures(labels: np.ndarray, scores: np.ndarray, threshold: float, both: bool) -> dict:
    flagged = scores > threshold
    figures = {
        "flagged": int(flagged.sum()),
        "false_alarms": int((flagged & (labels == 0)).sum()),
        "detected": int((flagged & (labels == 1)).sum()),
        "auc": auc(labels, scores) if both else None,
        "pauc": pauc(labels, scores, MAX_FPR) if both else None,
        **plant.threshold_figures(labels, scores, threshold),  # precision, recall, F1
    }
    return figures
