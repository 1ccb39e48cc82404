"""Detection quality per machine id on synthetic sound, float vs int8.

    python bench/synthetic_eval.py [--train 100] [--severity 0.5] [--epochs 50] [--workdir DIR]
                                   [--architectures ae idnn] [--variants]

Synthesises every machine kind (ids 0 and 2) with `edge-monitor synth`, trains one bundle per id
with `edge-monitor train` (which evaluates the test split of the same id), and prints AUC and pAUC
of the float and the int8 model per machine id, and the int8 − float AUC difference (goal ≥ −0.01).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edge_monitor.commands import main as cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=100)
    parser.add_argument("--test", type=int, default=20, help="normal and anomalous test clips per id, each")
    parser.add_argument("--severity", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--val-fraction", type=float, default=0.2, help="passed to edge-monitor train")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--kinds", default="fan,pump,gearbox", help="passed to edge-monitor synth")
    parser.add_argument("--ids", default="0,2", help="passed to edge-monitor synth")
    parser.add_argument("--architectures", nargs="+", default=["ae"], choices=["ae", "idnn"])
    parser.add_argument("--variants", action="store_true", help="also the band-standardised score (bench/variants.py)")
    args = parser.parse_args()
    for arch in args.architectures:
        run(args, arch)


def run(args: argparse.Namespace, arch: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        data, models = work / "data", work / f"models-{arch}"
        steps = [
            ["synth", str(data), "--kinds", args.kinds, "--ids", args.ids, "--train", str(args.train), "--test-normal", str(args.test),
             "--test-anomaly", str(args.test), "--severity", str(args.severity)],
            ["--log-level", "warning", "train", str(data), "--out", str(models), "--epochs", str(args.epochs),
             "--val-fraction", str(args.val_fraction), "--architecture", arch],
        ]
        if (data / "done").is_file():
            steps = steps[1:]  # the same data set for every architecture
        for step in steps:
            if cli(step):
                raise SystemExit(1)
            (data / "done").touch()
        rows = []
        for manifest_path in sorted(models.glob("*/model.json")):
            test = json.loads(manifest_path.read_text())["evaluation"]["test"]
            rows.append((manifest_path.parent.name, test["float"], test["int8"], test["clips"]["normal"]))
            if args.variants:
                from variants import variant_figures

                kind, machine_id = manifest_path.parent.name.split("-", 1)
                clips = sorted((p, int(p.name.startswith("anomaly")))
                               for p in (data / kind / "test").glob(f"*_{machine_id}_*.wav"))
                figures = variant_figures(manifest_path.parent, data / kind / "train", clips)
                band_f, band_q = figures[("band", "float")], figures[("band", "int8")]
                rows.append((manifest_path.parent.name + " band", {"auc": band_f[0], "pauc": band_f[1]},
                             {"auc": band_q[0], "pauc": band_q[1], "false_alarms": 0}, 0))
    print(f"\n[{arch}] synthetic set: {args.train} normal training clips per id, {args.test}+{args.test} test clips, "
          f"severity {args.severity}, faults cycling bearing/imbalance/whine/rubbing/clog")
    print(f"{'machine id':<16} {'AUC float':>9} {'AUC int8':>8} {'pAUC float':>10} {'pAUC int8':>9} {'int8-float':>10}"
          f" {'false alarms':>12}")
    for label, selected in (("mean", [r for r in rows if not r[0].endswith(" band")]),
                            ("mean band", [r for r in rows if r[0].endswith(" band")])):
        if not selected:
            continue
        diffs, alarms, normals = [], 0, 0
        for name, f, q, n_normal in selected:
            diffs.append(q["auc"] - f["auc"])
            alarms, normals = alarms + q["false_alarms"], normals + n_normal
            print(f"{name:<16} {f['auc']:>9.3f} {q['auc']:>8.3f} {f['pauc']:>10.3f} {q['pauc']:>9.3f} "
                  f"{diffs[-1]:>+10.4f} {q['false_alarms']:>6}/{n_normal:<5}")
        mean = lambda key, side, sel=selected: sum(r[side][key] for r in sel) / len(sel)
        print(f"{label:<16} {mean('auc', 1):>9.3f} {mean('auc', 2):>8.3f} {mean('pauc', 1):>10.3f} "
              f"{mean('pauc', 2):>9.3f} {sum(diffs) / len(diffs):>+10.4f} {alarms:>6}/{normals:<5}"
              f"  (worst int8-float {min(diffs):+.4f}; false alarms = normal test clips above the int8 threshold,"
              f" expected {1 - 0.99:.0%})")


if __name__ == "__main__":
    main()
