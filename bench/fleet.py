"""Training a fleet: 6 machine ids sequential vs `--jobs 2` vs a Dask LocalCluster of 2 workers, and where
the time goes (TensorFlow start-up per worker, fit, export and the rest).

    python bench/fleet.py [--clips 20] [--epochs 10] [--workdir DIR]

Writes a synthetic set of 6 fan ids (not timed), fills the feature cache once (not timed: every mode
then reads the same cached features), then runs `edge-monitor train` three times in fresh processes,
as a user would. Prints wall time per mode, the per-id split from the manifests' training facts, the
TensorFlow start-up of one process, and whether the three runs wrote byte-identical models.
The machine's load average is printed too: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge_monitor.core.features import FeatureParams
from edge_monitor.core.model import sha256_file
from training.data import FeatureCache, find_training_clips
from training.synth import generate_dataset

IDS = (0, 2, 4, 6, 8, 10)


def cli(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edge_monitor", "--log-level", "warning", *args], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def facts(models: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "model.json").read_text())["training"]
            for d in sorted(models.iterdir()) if (d / "model.json").is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20, help="normal 10-s clips per id")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        data, cache = work / "data", work / "cache"
        if not (data / "fan" / "train").is_dir():
            generate_dataset(data, kinds=("fan",), ids=IDS, n_train=args.clips, n_test_normal=0, n_test_anomaly=0,
                             duration=10.0, seed=21)
        fc = FeatureCache(cache, FeatureParams())
        for clips in find_training_clips(data).values():
            for clip in clips:
                fc.frames(clip.path, sha256_file(clip.path))
        start = time.perf_counter()
        tf_start = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); "
                                   "import training.autoencoder; print(time.perf_counter() - t)"],
                                  check=True, capture_output=True, text=True).stdout.split()[-1]
        python_and_tf = time.perf_counter() - start
        common = ("train", str(data), "--cache", str(cache), "--epochs", str(args.epochs))
        wall, shas, split = {}, {}, {}
        for mode, extra in (("sequential", ("--jobs", "1")), ("--jobs 2", ("--jobs", "2"))):
            out = work / mode.replace(" ", "").replace("-", "")
            wall[mode] = cli(*common, "--out", str(out), *extra)
            split[mode] = facts(out)
            shas[mode] = {k: sha256_file(out / k / "model.tflite") for k in split[mode]}
        from distributed import LocalCluster

        started = time.perf_counter()
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            cluster_s = time.perf_counter() - started
            out = work / "dask"
            wall["Dask LocalCluster(2)"] = cli(*common, "--out", str(out), "--dask", cluster.scheduler_address)
        split["Dask LocalCluster(2)"] = facts(out)
        shas["Dask LocalCluster(2)"] = {k: sha256_file(out / k / "model.tflite") for k in split["Dask LocalCluster(2)"]}
    n = len(IDS)
    print(f"\n{n} machine ids, {args.clips} ten-second clips each, at most {args.epochs} epochs, features cached")
    print(f"TensorFlow start-up in a fresh process: {float(tf_start):.1f} s (process with imports {python_and_tf:.1f} s)")
    print(f"Dask LocalCluster(2) start: {cluster_s:.1f} s (not in the wall time below)")
    print(f"{'mode':<22} {'wall s':>7} {'ids/min':>7} {'sum train_one s':>15} {'fit s':>6} {'features s':>10} "
          f"{'export+rest s':>13}")
    for mode, seconds in wall.items():
        f = split[mode].values()
        total = sum(x["duration_s"] for x in f)
        fit = sum(x["fit_s"] for x in f)
        feat = sum(x["feature_s"] for x in f)
        print(f"{mode:<22} {seconds:>7.1f} {n / seconds * 60:>7.2f} {total:>15.1f} {fit:>6.1f} {feat:>10.1f} "
              f"{total - fit - feat:>13.1f}")
    base = shas["sequential"]
    same = all(s == base for s in shas.values()) and len(base) == n
    print(f"model.tflite sha256 identical across the three modes: {same}")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
