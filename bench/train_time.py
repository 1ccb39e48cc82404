"""Training time for one machine id from N ten-second clips, with feature extraction cached.

    python bench/train_time.py [--clips 1000] [--workdir DIR] [--epochs 50]

Writes a synthetic fan data set (not timed), runs `edge-monitor train` once to fill the feature
cache (cold) and once more with the cache warm: the second run is the figure. Prints where the
time goes (from the manifest's training facts).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from edge_monitor.commands import main as cli
from training.synth import generate_dataset


def train(data: Path, out: Path, cache: Path, epochs: int) -> tuple[float, dict]:
    start = time.perf_counter()
    code = cli(["--log-level", "warning", "train", str(data), "--out", str(out), "--cache", str(cache),
                "--epochs", str(epochs)])
    if code:
        raise SystemExit(code)
    return time.perf_counter() - start, json.loads((out / "fan-id_00" / "model.json").read_text())["training"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--workdir", type=Path, help="keep data and cache here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        data = work / "data"
        if not (data / "fan" / "train").is_dir() or len(list((data / "fan" / "train").glob("*.wav"))) != args.clips:
            start = time.perf_counter()
            generate_dataset(data, kinds=("fan",), ids=(0,), n_train=args.clips, n_test_normal=0, n_test_anomaly=0,
                             duration=10.0, seed=11)
            print(f"synthesised {args.clips} clips in {time.perf_counter() - start:.0f} s (not counted)")
        shutil.rmtree(work / "cache", ignore_errors=True)
        cold, facts_cold = train(data, work / "models-cold", work / "cache", args.epochs)
        warm, facts = train(data, work / "models-warm", work / "cache", args.epochs)
    other = facts["duration_s"] - facts["feature_s"] - facts["fit_s"]
    print(f"\ntraining one machine id from {facts['clips'] + facts['held_out_clips']} ten-second clips")
    print(f"  cold cache: {cold:6.1f} s wall (features {facts_cold['feature_s']} s)")
    print(f"  warm cache: {warm:6.1f} s wall, of which features {facts['feature_s']} s (cache hits "
          f"{facts['feature_cache']['hits']}), fit {facts['fit_s']} s ({facts['epochs_run']} epochs of "
          f"{facts['windows']} windows, stride {facts['window_stride']}), export/threshold/report {other:.1f} s; "
          f"the rest is start-up (TensorFlow import)")


if __name__ == "__main__":
    main()
