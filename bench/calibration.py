"""Node calibration: false alarms per hour of normal sound and detection delay, bundle vs calibrated threshold.

    python bench/calibration.py [--sets real synth] [--calib-clips 6] [--train-clips 8] [--work DIR]

Two bundles: the demo bundle (``edge_monitor/demo/fan-id_00``, trained on synthetic fan id 0) and, for the
real fan, a bundle trained by ``edge-monitor train`` on its first ``--train-clips`` native 16-kHz normal
clips (as a plant would: trained on clean recordings, deployed behind a 48-kHz microphone). Every clip the
node hears is sent through a 48-kHz round trip first (16 k → 48 k → 16 k with ``core/resample.py``'s StreamResampler, the
one resampler: what a 48-kHz microphone feeding the daemon does to the band's top):

- ``real``:  the MIMII fan id 00 in ../shared/data/mimii-fan-id00 (read in place): after the training
  clips, ``--calib-clips`` normal clips calibrate, the other normal clips count false alarms, the abnormal clips
  (faulty from the first second) give detection and delay (alert position from the start of the file).
- ``synth``: training/synth.py fan id 0, normal clips (calibration and false alarms) and clips whose fault
  (bearing, imbalance, whine, rubbing; severity 0.5) starts at 3 s: delay = alert position − 3 s.

Calibration is ``edge-monitor calibrate --from`` on the calibration clips (the real command, in process);
each threshold is then applied as a config override through the daemon's loop (``core.loop.Loop``).
Printed: per set and threshold, alarms and false alarms per hour on the held-out normal clips, detected
abnormal clips and median/max delay.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_monitor import DEMO_DIR
from edge_monitor.commands import main as cli
from edge_monitor.core.loop import Loop, WavSource
from edge_monitor.core.model import Bundle, WindowScorer
from edge_monitor.core.monitor import REPLAY_BATCH, Monitor
from edge_monitor.core.resample import StreamResampler
from edge_monitor.core.settings import MonitorSettings
from edge_monitor.core.wav import load_audio, write_wav
from training.synth import synth_clip

BUNDLE = DEMO_DIR / "fan-id_00"
MIMII = REPO.parent / "shared" / "data" / "mimii-fan-id00"
RATE = 16000
ONSET = 3.0


def round_trip(x: np.ndarray, rate: int = 48000) -> np.ndarray:
    up, down = StreamResampler(RATE, rate), StreamResampler(rate, RATE)
    y = np.concatenate([up.process(x), up.flush()])
    return np.concatenate([down.process(y), down.flush()])[: len(x)].astype(np.float32)


def chained(src: list[tuple[str, np.ndarray]], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, x in src:
        path = folder / name
        if not path.exists():
            write_wav(path, round_trip(x), RATE)
        out.append(path)
    return out


def real_set(work: Path, n_calib: int, n_train: int) -> tuple[list[Path], list[Path], list[Path], float]:
    normal = sorted((MIMII / "normal").glob("*.wav"))[n_train:]
    abnormal = sorted((MIMII / "abnormal").glob("*.wav"))
    load = lambda paths: [(p.name, load_audio(p, RATE)) for p in paths]
    return (chained(load(normal[:n_calib]), work / "real" / "calib"), chained(load(normal[n_calib:]), work / "real" / "normal"),
            chained(load(abnormal), work / "real" / "abnormal"), 0.0)


def train_real(work: Path, n_train: int, epochs: int) -> Path:
    """A bundle of the real fan, trained with ``edge-monitor train`` on its first native normal clips."""
    out = work / "models" / "fan-id_00"
    if (out / "model.json").exists():
        return out
    data = work / "train-data" / "fan" / "train"
    data.mkdir(parents=True, exist_ok=True)
    for path in sorted((MIMII / "normal").glob("*.wav"))[:n_train]:
        link = data / f"normal_id_00_{path.stem}.wav"
        if not link.exists():
            link.symlink_to(path)
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli(["train", str(work / "train-data"), "--out", str(work / "models"), "--epochs", str(epochs),
                    "--no-cache"]) == 0
    return out


def synth_set(work: Path, n_calib: int, _n_train: int) -> tuple[list[Path], list[Path], list[Path], float]:
    rng = np.random.default_rng(7)
    calib = [(f"n{i:02d}.wav", synth_clip("fan", 0, 10.0, RATE, rng=rng)) for i in range(n_calib)]
    normal = [(f"n{i:02d}.wav", synth_clip("fan", 0, 10.0, RATE, rng=rng)) for i in range(36)]
    faults = ("bearing", "imbalance", "whine", "rubbing")
    abnormal = [(f"a{i:02d}_{faults[i % 4]}.wav", synth_clip("fan", 0, 10.0, RATE, rng=rng, fault=faults[i % 4],
                                                             severity=0.5, fault_onset=ONSET)) for i in range(16)]
    return (chained(calib, work / "synth" / "calib"), chained(normal, work / "synth" / "normal"),
            chained(abnormal, work / "synth" / "abnormal"), ONSET)


def calibrate(calib: list[Path], work: Path, bundle: Path) -> dict:
    config = work / "config.yaml"
    config.write_text(f"node: bench\nstate_dir: {work / 'state'}\nmonitors:\n  - name: fan\n    model: {bundle}\n")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert cli(["calibrate", "--config", str(config), "--monitor", "fan", "--from", str(calib[0].parent)]) == 0
    print("   " + out.getvalue().strip().replace("\n", "\n   "))
    return json.loads((work / "state" / "calibration" / "fan.json").read_text())


def alerts(files: list[Path], threshold: float, bundle: Bundle, scorer: WindowScorer) -> list[list[float]]:
    """The positions of every anomaly_start per file, with ``threshold`` in force."""
    settings = MonitorSettings(name="fan", model=str(bundle.path), threshold=threshold)
    first = []
    for path in files:
        monitor = Monitor(settings, bundle, node="bench", source=str(path), live=False, scorer=scorer)
        loop = Loop(monitor, WavSource(path, 0, 8.0), [])
        loop.keep_events = True
        loop.run()
        first.append([e.audio_position_s for e in loop.events if e.type == "anomaly_start"])
    return first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["real", "synth"], choices=["real", "synth"])
    parser.add_argument("--calib-clips", type=int, default=6, help="normal clips (10 s each) to calibrate on")
    parser.add_argument("--train-clips", type=int, default=8, help="real fan: native normal clips to train on")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--work", type=Path, help="keep chained clips here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        rows = []
        for name in args.sets:
            if name == "real" and not (MIMII / "normal").is_dir():
                print(f"{name}: {MIMII} not found, skipped")
                continue
            calib, normal, abnormal, onset = (real_set if name == "real" else synth_set)(root, args.calib_clips,
                                                                                         args.train_clips)
            bundles = [("demo", BUNDLE)]
            if name == "real":
                bundles.append(("fan-trained", train_real(root, args.train_clips, args.epochs)))
            hours = sum(WavSource(p, 0, 8.0).duration_s for p in normal) / 3600
            for model, bundle_path in bundles:
                bundle = Bundle.load(bundle_path)
                scorer = WindowScorer(bundle, batch_size=REPLAY_BATCH)
                work = root / name / model
                work.mkdir(parents=True, exist_ok=True)
                print(f"{name}, {model} bundle: calibrating on {len(calib)} clips ({len(calib) * 10} s, 48-kHz round trip)")
                bundle_threshold = Monitor(MonitorSettings(name="fan", model=str(bundle_path)), bundle, node="b",
                                           source="-", live=False, scorer=scorer).threshold.value
                cal = calibrate(calib, work, bundle_path)
                for label, value in (("bundle", bundle_threshold), ("calibrated", cal["threshold"])):
                    fa = alerts(normal, value, bundle, scorer)
                    det = alerts(abnormal, value, bundle, scorer)
                    # an alarm before the fault's onset is a false alarm; the delay is to the first one after it
                    alarms = sum(len(a) for a in fa) + sum(1 for a in det for t in a if t < onset)
                    normal_s = hours * 3600 + len(abnormal) * onset
                    delays = [min(t for t in a if t >= onset) - onset for a in det if any(t >= onset for t in a)]
                    rows.append((name, f"{model} / {label}", value, alarms, alarms / (normal_s / 3600), len(normal),
                                 normal_s, len(delays), len(abnormal),
                                 np.median(delays) if delays else float("nan"), max(delays) if delays else float("nan")))
        print()
        print("| set | bundle / threshold | value | false alarms on held-out normal sound | per hour | abnormal detected | "
              "delay median / max |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]:.4f} | {r[3]} in {r[6]:.0f} s | {r[4]:.0f} | "
                  f"{r[7]} of {r[8]} | {r[9]:.1f} s / {r[10]:.1f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
