"""The bundled demo: a fan model trained on synthetic sound, a normal and an anomalous clip.

``edge-monitor make-demo`` rebuilds it with the project's own commands (``synth`` then ``train``)
into ``edge_monitor/demo/``; ``edge-monitor demo`` evaluates it, needing neither TensorFlow nor data.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edge_monitor import DEMO_DIR
from edge_monitor.core.model import Bundle, WindowScorer
from edge_monitor.core.wav import write_wav

DEMO_KIND = "fan"
DEMO_ID = 0
DEMO_BUNDLE = f"{DEMO_KIND}-id_{DEMO_ID:02d}"
DEMO_FAULT = "bearing"
DEMO_SEVERITY = 0.5
CLIP_SECONDS = 6.0
TRAIN_CLIPS = 80
TRAIN_SECONDS = 10.0
SEED = 7


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("edge-monitor-demo"), help="report folder")


def run_demo(args: argparse.Namespace) -> int:
    from .data import find_test_clips
    from .evaluate import evaluate_bundle

    bundle = Bundle.load(DEMO_DIR / DEMO_BUNDLE)
    result = evaluate_bundle(bundle, find_test_clips(DEMO_DIR / "clips", DEMO_KIND), args.out)
    for row in result["files"]:
        verdict = "ANOMALY" if row["score_int8"] > bundle.threshold else "normal"
        print(f"  {row['file']:32s} score {row['score_int8']:8.3f}  threshold {bundle.threshold:.3f}  → {verdict}")
    return 0


def add_make_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEMO_DIR, help="demo folder to (re)write")
    parser.add_argument("--epochs", type=int, default=40)


def run_make(args: argparse.Namespace) -> int:
    from . import synth, train
    from .synth import synth_clip

    out: Path = args.out
    with tempfile.TemporaryDirectory() as tmp:
        data, models = Path(tmp) / "data", Path(tmp) / "models"
        steps = [
            [synth, str(data), "--kinds", DEMO_KIND, "--ids", str(DEMO_ID), "--train", str(TRAIN_CLIPS),
             "--test-normal", "10", "--test-anomaly", "10", "--duration", str(TRAIN_SECONDS), "--seed", str(SEED)],
            [train, str(data), "--out", str(models), "--epochs", str(args.epochs), "--no-cache", "--seed", str(SEED)],
        ]
        for module, *argv in steps:
            print("edge-monitor", module.__name__.rsplit(".", 1)[-1], " ".join(argv))
            parser = argparse.ArgumentParser(prog=f"edge-monitor {module.__name__}")
            module.add_arguments(parser)
            code = module.run(parser.parse_args(argv))
            if code:
                return code
        shutil.rmtree(out / DEMO_BUNDLE, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(models / DEMO_BUNDLE, out / DEMO_BUNDLE, ignore=shutil.ignore_patterns("evaluation"))
    clips = out / "clips"
    clips.mkdir(exist_ok=True)
    rng = np.random.default_rng(SEED + 1000)
    normal = synth_clip(DEMO_KIND, DEMO_ID, CLIP_SECONDS, rng=rng)
    anomalous = synth_clip(DEMO_KIND, DEMO_ID, CLIP_SECONDS, rng=rng, fault=DEMO_FAULT, severity=DEMO_SEVERITY)
    names = {"normal": f"normal_id_{DEMO_ID:02d}_demo.wav", "anomaly": f"anomaly_id_{DEMO_ID:02d}_demo.wav"}
    write_wav(clips / names["normal"], normal, 16000)
    write_wav(clips / names["anomaly"], anomalous, 16000)
    # Reference scores from this machine's interpreter: other interpreters are checked against them.
    from edge_monitor.core.wav import load_audio

    bundle = Bundle.load(out / DEMO_BUNDLE)
    scorer = WindowScorer(bundle)
    expected = {
        "interpreter": scorer.backend,
        "bundle": DEMO_BUNDLE,
        "threshold": bundle.threshold,
        "fault": {"kind": DEMO_FAULT, "severity": DEMO_SEVERITY},
        "scores_int8": {name: scorer.clip_score(load_audio(clips / name, 16000)) for name in names.values()},
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"demo written to {out}: {json.dumps(expected['scores_int8'])}, threshold {bundle.threshold:.4g}")
    return 0
