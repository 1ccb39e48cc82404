"""Real-sound check on ../shared/data/mimii-fan-id00: train on 12 normal clips, test on the other 8
normal and the 20 abnormal clips; AUC and pAUC of the float and the int8 model.

    python bench/mimii.py [--data ../shared/data/mimii-fan-id00] [--epochs 50] [--seeds 0 1 2]

The clips are linked (not copied) into a temporary DCASE layout and go through `edge-monitor train`
and `edge-monitor evaluate` exactly as a user would run them. With 28 test clips the figures are
noisy (±0.1); several seeds show how noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from edge_monitor.commands import main as cli

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "mimii-fan-id00"


def layout(data: Path, root: Path, n_train: int) -> Path:
    normal = sorted((data / "normal").glob("*.wav"))
    abnormal = sorted((data / "abnormal").glob("*.wav"))
    train, test = root / "fan" / "train", root / "fan" / "test"
    train.mkdir(parents=True)
    test.mkdir(parents=True)
    for i, path in enumerate(normal):
        target = (train if i < n_train else test) / f"normal_id_00_{path.stem}.wav"
        target.symlink_to(path.resolve())
    for path in abnormal:
        (test / f"anomaly_id_00_{path.stem}.wav").symlink_to(path.resolve())
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--train-clips", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    if not (args.data / "normal").is_dir():
        print(f"skipped: {args.data} not found (the MIMII fan clips live in ../shared/data/)")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = layout(args.data, Path(tmp) / "data", args.train_clips)
        for seed in args.seeds:
            models = Path(tmp) / f"models-{seed}"
            code = cli(["--log-level", "warning", "train", str(data), "--out", str(models), "--epochs",
                        str(args.epochs), "--seed", str(seed), "--no-cache"])
            if code:
                return code
            result = json.loads((models / "fan-id_00" / "evaluation" / "results.json").read_text())
            rows.append((seed, result))
    print("\nMIMII fan id_00: train", args.train_clips, "normal clips; test 8 normal + 20 abnormal")
    print(f"{'seed':>4} {'AUC float':>9} {'AUC int8':>8} {'pAUC float':>10} {'pAUC int8':>9} {'int8-float AUC':>14}")
    for seed, r in rows:
        f, q = r["float"], r["int8"]
        print(f"{seed:>4} {f['auc']:>9.3f} {q['auc']:>8.3f} {f['pauc']:>10.3f} {q['pauc']:>9.3f} "
              f"{q['auc'] - f['auc']:>+14.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
