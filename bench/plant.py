"""Plant metrics (what `edge-monitor evaluate` reports besides AUC): precision/recall/F1 at the bundle's
threshold, the F1-optimal threshold, and the detector's verdicts — detected faults, false alarms per hour
of normal audio, detection delay — for the bundled demo and the real MIMII fan.

    python bench/plant.py [--normal 30] [--anomalous 25] [--mimii ../shared/data/mimii-fan-id00] [--seeds 0 1 2]

1. The demo bundle on its two demo clips (10 s each: the false-alarm rate of 10 s means little).
2. The demo bundle on synthetic fan id_00 20-s clips: normal ones, and anomalous ones (5 fault kinds,
   severity 0.5) whose fault starts at 8 s (onset sidecars), so the delay is measured.
3. MIMII fan id_00 (real recordings): trained on 12 normal clips per seed, evaluated on 8 normal and
   20 abnormal clips (faulty throughout: no onset, so no delay).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from edge_monitor import DEMO_DIR
from edge_monitor.commands import main as cli
from training.synth import generate_dataset

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from mimii import DEFAULT_DATA, layout  # noqa: E402  (bench/mimii.py: the same real-sound split)


def evaluate(bundle: Path, test: Path, out: Path) -> dict:
    if cli(["--log-level", "warning", "evaluate", str(bundle), str(test), "--out", str(out)]) != 0:
        raise SystemExit("evaluate failed")
    return json.loads((out / "results.json").read_text())


def row(name: str, r: dict) -> str:
    p = r["plant"]
    at, opt, det = p["at_threshold"], p["f1_optimal"], p["detector"]
    d = det["delay_s"]

    def f(v, fmt=".2f"):
        return "n/a" if v is None else format(v, fmt)

    delay = f"{d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f})" if d["clips"] else "n/a"
    return (f"{name:<34} {f(r['int8']['auc'], '.3f'):>5} {f(at['precision']):>5} {f(at['recall']):>5} "
            f"{f(at['f1']):>5} {f(opt['f1'] if opt else None):>6} {det['detected']:>3}/{det['anomalous_clips']:<3} "
            f"{det['false_alarms']:>3} in {det['normal_hours'] * 60:>5.1f} min {f(det['false_alarms_per_hour'], '.1f'):>6}/h "
            f"{det['alarms_before_onset']:>5} {delay:>18}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--normal", type=int, default=30)
    parser.add_argument("--anomalous", type=int, default=25)
    parser.add_argument("--mimii", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args()
    rows = []
    demo = DEMO_DIR / "fan-id_00"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows.append(("demo bundle, demo clips", evaluate(demo, DEMO_DIR / "clips", tmp / "demo")))
        generate_dataset(tmp / "synth", kinds=("fan",), ids=(0,), n_train=0, n_test_normal=args.normal,
                         n_test_anomaly=args.anomalous, duration=20.0, severity=0.5, seed=13, fault_onset=8.0)
        rows.append(("demo bundle, synthetic onset 8 s", evaluate(demo, tmp / "synth" / "fan", tmp / "onset")))
        if (args.mimii / "normal").is_dir():
            data = layout(args.mimii, tmp / "mimii", 12)
            for seed in args.seeds:
                models = tmp / f"m{seed}"
                if cli(["--log-level", "warning", "train", str(data), "--out", str(models), "--epochs",
                        str(args.epochs), "--seed", str(seed), "--no-cache"]) != 0:
                    raise SystemExit("train failed")
                result = json.loads((models / "fan-id_00" / "evaluation" / "results.json").read_text())
                rows.append((f"MIMII fan id_00, seed {seed}", result))
        else:
            print(f"MIMII skipped: {args.mimii} not found")
    print(f"\n{'set':<34} {'AUC':>5} {'prec':>5} {'rec':>5} {'F1':>5} {'F1opt':>6} {'det':>7} "
          f"{'false alarms':>18} {'rate':>8} {'early':>5} {'delay s med (range)':>18}")
    for name, r in rows:
        print(row(name, r))
    print("prec/rec/F1 at the bundle's clip threshold; F1opt = F1 at the F1-optimal threshold on the same clips;"
          " det, false alarms, early (alarms before the onset) and delay from the detector (Monitor, defaults)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
