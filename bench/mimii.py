"""Real-sound check on ../shared/data/mimii-fan-id00: train on 12 normal clips, test on the other 8
normal and the 20 abnormal clips; AUC and pAUC of the float and the int8 model.

    python bench/mimii.py [--data ../shared/data/mimii-fan-id00] [--epochs 50] [--seeds 0 1 2]
                          [--architectures ae idnn] [--variants]

``--variants`` also scores every bundle with the band-standardised error (``bench/variants.py``).

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

import numpy as np

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
    parser.add_argument("--architectures", nargs="+", default=["ae"], choices=["ae", "idnn"])
    parser.add_argument("--variants", action="store_true", help="also the band-standardised score")
    args = parser.parse_args()
    if not (args.data / "normal").is_dir():
        print(f"skipped: {args.data} not found (the MIMII fan clips live in ../shared/data/)")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = layout(args.data, Path(tmp) / "data", args.train_clips)
        test = sorted((p, int(p.name.startswith("anomaly"))) for p in (data / "fan" / "test").glob("*.wav"))
        for arch in args.architectures:
            for seed in args.seeds:
                models = Path(tmp) / f"models-{arch}-{seed}"
                code = cli(["--log-level", "warning", "train", str(data), "--out", str(models), "--epochs",
                            str(args.epochs), "--seed", str(seed), "--no-cache", "--architecture", arch])
                if code:
                    return code
                result = json.loads((models / "fan-id_00" / "evaluation" / "results.json").read_text())
                figures = {("mse", "int8"): (result["int8"]["auc"], result["int8"]["pauc"]),
                           ("mse", "float"): (result["float"]["auc"], result["float"]["pauc"])}
                if args.variants:
                    from variants import variant_figures

                    figures = variant_figures(models / "fan-id_00", data / "fan" / "train", test)
                for variant in sorted({v for v, _ in figures}, key=["mse", "band"].index):
                    rows.append((arch, variant, seed, figures[(variant, "float")], figures[(variant, "int8")]))
    print("\nMIMII fan id_00: train", args.train_clips, "normal clips; test 8 normal + 20 abnormal")
    print(f"{'model':>5} {'score':>5} {'seed':>4} {'AUC float':>9} {'AUC int8':>8} {'pAUC float':>10} "
          f"{'pAUC int8':>9} {'int8-float AUC':>14}")
    for arch, variant, seed, (fa, fp), (qa, qp) in rows:
        print(f"{arch:>5} {variant:>5} {seed:>4} {fa:>9.3f} {qa:>8.3f} {fp:>10.3f} {qp:>9.3f} {qa - fa:>+14.4f}")
    print("means over seeds:")
    for arch in args.architectures:
        for variant in ("mse", "band"):
            sel = [r for r in rows if r[0] == arch and r[1] == variant]
            if sel:
                m = np.mean([[r[3][0], r[4][0], r[3][1], r[4][1], r[4][0] - r[3][0]] for r in sel], axis=0)
                print(f"{arch:>5} {variant:>5} mean {m[0]:>9.3f} {m[1]:>8.3f} {m[2]:>10.3f} {m[3]:>9.3f} {m[4]:>+14.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
