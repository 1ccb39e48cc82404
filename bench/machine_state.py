"""Machine stopped or running, on the real MIMII fans: is a fan switched off reported as stopped (not as an
anomaly), and is a running fan — normal or faulty — never reported as stopped?

    python bench/machine_state.py [--data ../shared/data] [--epochs 8] [--margin-db 10] [--hold-seconds 5]

Per fan (``mimii-fan-id00``: 14 of 20 normal clips trained on; ``mimii-fan-second``: 7 of 10), a bundle is
trained with ``edge-monitor train`` (the clips linked, not copied, into a temporary folder). Then every
clip goes through a ``Monitor`` as replay feeds it (8-s blocks), once with the machine judgement (after)
and once without it (``machine.enabled: false``, i.e. before):

- ``normal held out`` / ``normal trained``: the running fan's normal clips;
- ``abnormal``: the same fan with faults (running, sometimes quieter: must stay anomalies, not "stopped");
- ``stopped -X dB``: no recording of the fans switched off exists, so each normal clip is attenuated by
  X dB (22, 25, 28, 30: the room background of the issue, 22-30 dB below the running fan) plus a low
  noise floor (gaussian, -80 dBFS), quantised to 16 bits like a WAV.

Printed: clips reported stopped, clips with an ``anomaly_start``, clips with a health fault; and each
set's piece levels against the bundle's p1 (how much room the 10-dB margin has).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge_monitor.commands import main as cli
from edge_monitor.core.features import log_mel
from edge_monitor.core.machine import piece_levels, pieces_frames
from edge_monitor.core.model import Bundle, WindowScorer
from edge_monitor.core.monitor import REPLAY_BATCH, REPLAY_BLOCK_SECONDS, Monitor
from edge_monitor.core.wav import load_audio
from edge_monitor.node.settings import MachineSettings, MonitorSettings

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
FANS = {"mimii-fan-id00": 14, "mimii-fan-second": 7}  # fan folder → normal clips trained on
ATTENUATIONS = (22, 25, 28, 30)
NOISE_DBFS = -80.0


def stopped(x: np.ndarray, db: float, rng: np.random.Generator) -> np.ndarray:
    y = x * 10 ** (-db / 20) + rng.normal(0, 10 ** (NOISE_DBFS / 20), len(x))
    return (np.round(np.clip(y, -1, 1) * 32767) / 32767).astype(np.float32)


def judge(bundle: Bundle, scorer: WindowScorer, x: np.ndarray, machine: MachineSettings) -> tuple[bool, bool, bool]:
    """(reported stopped, anomaly_start, health fault) of one clip replayed from its start."""
    m = Monitor(MonitorSettings(name="fan", model=str(bundle.path), machine=machine), bundle, node="bench",
                source="bench", live=False, scorer=scorer)
    block = int(REPLAY_BLOCK_SECONDS * bundle.params.sample_rate)
    events = []
    for start in range(0, len(x), block):
        events += m.process(x[start : start + block])
    events += m.finish()
    types = [e.type for e in events]
    return ("machine_stopped" in types, "anomaly_start" in types,
            any(e.type == "health" and e.health.status == "bad" for e in events))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--margin-db", type=float, default=MachineSettings().margin_db)
    parser.add_argument("--hold-seconds", type=float, default=MachineSettings().hold_seconds)
    args = parser.parse_args()
    machine = MachineSettings(margin_db=args.margin_db, hold_seconds=args.hold_seconds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fan, n_train in FANS.items():
            folder = args.data / fan
            if not (folder / "normal").is_dir():
                print(f"skipped {fan}: {folder} not found (the MIMII fan clips live in ../shared/data/)")
                continue
            normal = sorted((folder / "normal").glob("*.wav"))
            abnormal = sorted((folder / "abnormal").glob("*.wav"))
            train = Path(tmp) / fan / "normal"
            train.mkdir(parents=True)
            for path in normal[:n_train]:
                (train / path.name).symlink_to(path.resolve())
            models = Path(tmp) / "models"
            machine_id = fan.rsplit("-", 1)[-1]
            code = cli(["--log-level", "warning", "train", str(train.parent), "--machine", "fan", "--id", machine_id,
                        "--out", str(models), "--epochs", str(args.epochs), "--no-cache"])
            if code:
                return code
            bundle = Bundle.load(models / f"fan-{machine_id}")
            level = bundle.manifest.level
            p = bundle.params
            scorer = WindowScorer(bundle, batch_size=REPLAY_BATCH)
            rng = np.random.default_rng(0)
            audio = {path: load_audio(path, p.sample_rate) for path in normal + abnormal}
            sets = {"normal held out": [audio[q] for q in normal[n_train:]],
                    "normal trained": [audio[q] for q in normal[:n_train]],
                    "abnormal": [audio[q] for q in abnormal]}
            for db in ATTENUATIONS:
                sets[f"stopped -{db} dB"] = [stopped(audio[q], db, rng) for q in normal]
            count = pieces_frames(level.window_seconds, p)
            for name, clips in sets.items():
                after = np.array([judge(bundle, scorer, x, machine) for x in clips])
                before = np.array([judge(bundle, scorer, x, MachineSettings(enabled=False)) for x in clips])
                levels = np.concatenate([piece_levels(log_mel(x, p), count) for x in clips]) - level.p1
                rows.append((fan, name, len(clips), *after.sum(axis=0), before[:, 1].sum(), before[:, 2].sum(),
                             levels.min(), levels.max()))
            print(f"{fan}: bundle {bundle.name}, level p1 {level.p1:.1f} dB, p50 {level.p50:.1f} dB; stopped below "
                  f"{level.p1 - machine.margin_db:.1f} dB, running above {level.p1 - machine.margin_db / 2:.1f} dB",
                  file=sys.stderr)
    head = ("fan", "clips", "stopped", "anomaly", "health", "before: anomaly", "health", "piece level − p1 (dB)")
    print(f"margin {machine.margin_db:g} dB, hold {machine.hold_seconds:g} s, {args.epochs} epochs; each clip "
          "replayed alone (10 s)")
    print(f"| {head[0]} | set | {' | '.join(head[1:])} |")
    print("|---|---|" + "---:|" * (len(head) - 1))
    for fan, name, n, st, an, he, an0, he0, lo, hi in rows:
        print(f"| {fan} | {name} | {n} | {st}/{n} | {an}/{n} | {he}/{n} | {an0}/{n} | {he0}/{n} | "
              f"{lo:+.1f} … {hi:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
