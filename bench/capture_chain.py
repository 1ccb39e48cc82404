"""Capture chain on real sound: do normal clips that went through a 44.1/48-kHz stage and back get flagged?

    python bench/capture_chain.py [--data DIR ...] [--fmax nyquist 6800 ...] [--seeds 0 1 2] [--epochs 50]
                                  [--pulse] [--replay] [--work DIR]

For each data set (default: the two MIMII fans in ../shared/data/, read in place, never copied), each
``--fmax`` (the mel bands' upper edge; ``nyquist`` = 8000 Hz, the setting before this benchmark) and
each seed, a bundle is trained with ``edge-monitor train`` on the first normal clips (as
``bench/mimii.py``: id00 12 of 20, the second fan 7 of 10), and every clip is scored through each chain:

- ``native``      the 16-kHz recording itself
- ``sox44/48``    ``sox in.wav -r 44100|48000 tmp.wav && sox tmp.wav -r 16000 out.wav`` (sox's default
                  "high quality" rate effect, its passband ends at 95 % of Nyquist, 7.6 kHz)
- ``poly44/48``   ``scipy.signal.resample_poly`` up and down (what ``core/wav.py`` does to a 44.1/48-kHz file)
- ``mic44/48``    a 44.1/48-kHz microphone feeding the daemon: the clip brought to 44.1/48 kHz without a
                  filter of its own (FFT resampling: band-limited at 8 kHz, as the recording is), then
                  ``edge_monitor.core.resample.StreamResampler`` in 0.1-s blocks, as the daemon does
- ``pulse48``     (``--pulse``) a real PulseAudio 16.1 round trip: ``paplay`` into a 48-kHz null sink,
                  ``parecord --rate=16000`` from its monitor (PulseAudio's default resampler both ways)

Printed per data set, fmax and chain: normal clips flagged (int8 clip score above the bundle's
threshold), for the held-out test normals and for every normal clip (training clips included: the chain
shifts the spectrum of any clip), and the AUC of test normals against abnormal clips, both through the
chain. ``--replay`` also pushes every chained normal clip through ``edge-monitor replay`` and counts the
files with an ``anomaly_start`` (the decision level: k-of-n on 1-s means, the daemon's loop).
Chained clips are cached in ``--work`` (default a temporary folder), so a rerun only retrains.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.signal import resample, resample_poly

from edge_monitor.commands import main as cli
from edge_monitor.core.features import log_mel
from edge_monitor.core.model import Bundle, WindowScorer
from edge_monitor.core.resample import StreamResampler
from edge_monitor.core.wav import load_audio, write_wav
from training.metrics import auc

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
DEFAULT_DATA = [SHARED / "mimii-fan-id00", SHARED / "mimii-fan-second"]
TRAIN_CLIPS = {"mimii-fan-id00": 12, "mimii-fan-second": 7}
RATE = 16000
CHAINS = ["native", "sox44", "sox48", "poly44", "poly48", "mic44", "mic48"]


def sox_round_trip(src: Path, dst: Path, rate: int) -> None:
    mid = dst.with_suffix(f".{rate}.wav")
    subprocess.run(["sox", str(src), "-r", str(rate), str(mid)], check=True)
    subprocess.run(["sox", str(mid), "-r", str(RATE), str(dst)], check=True)
    mid.unlink()


def poly_round_trip(x: np.ndarray, rate: int) -> np.ndarray:
    g = np.gcd(rate, RATE)
    return resample_poly(resample_poly(x, rate // g, RATE // g), RATE // g, rate // g)


def mic_stream(x: np.ndarray, rate: int) -> np.ndarray:
    """A ``rate``-Hz capture of a sound band-limited at 8 kHz, brought to 16 kHz by the daemon's resampler."""
    high = resample(x.astype(np.float64), len(x) * rate // RATE)
    stream = StreamResampler(rate, RATE)
    block = rate // 10
    return np.concatenate([stream.process(high[i:i + block]) for i in range(0, len(high), block)])


def make_chains(clips: list[Path], work: Path, pulse: bool) -> dict[str, list[Path]]:
    """{chain: chained copy of each clip (16-bit WAV at 16 kHz)}; made once, reused from ``work``."""
    out: dict[str, list[Path]] = {"native": list(clips)}
    for chain in CHAINS[1:] + (["pulse48"] if pulse else []):
        folder = work / chain
        folder.mkdir(parents=True, exist_ok=True)
        out[chain] = []
        todo = []
        for clip in clips:
            dst = folder / f"{clip.parent.parent.name}-{clip.parent.name}-{clip.name}"
            out[chain].append(dst)
            if not dst.exists():
                todo.append((clip, dst))
        if chain == "pulse48" and todo:
            pulse_round_trips(todo, work / "pulse")
            continue
        for clip, dst in todo:
            if chain.startswith("sox"):
                sox_round_trip(clip, dst, 44100 if chain.endswith("44") else 48000)
                continue
            x = load_audio(clip, RATE).astype(np.float64)
            rate = 44100 if chain.endswith("44") else 48000
            y = poly_round_trip(x, rate) if chain.startswith("poly") else mic_stream(x, rate)
            write_wav(dst, np.clip(y, -1.0, 1.0).astype(np.float32), RATE)
    return out


def pulse_round_trips(todo: list[tuple[Path, Path]], root: Path) -> None:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from pulse import (
        PulseServer,  # the tests' private PulseAudio server (48-kHz null sink)
    )

    shutil.rmtree(root, ignore_errors=True)
    server = PulseServer(root).start()
    try:
        for clip, dst in todo:
            raw = dst.with_suffix(".raw.wav")
            rec = subprocess.Popen(["parecord", "--device=edge_test.monitor", f"--rate={RATE}", "--channels=1",
                                    "--format=s16le", "--file-format=wav", str(raw)], env=server.env)
            time.sleep(0.5)
            server.play(clip)
            time.sleep(0.5)
            rec.terminate()
            rec.wait()
            # keep the loud part: the recording starts and ends with the null sink's silence
            y = load_audio(raw, RATE)
            frame = 1600
            level = np.sqrt(np.mean(y[: len(y) // frame * frame].reshape(-1, frame) ** 2, axis=1))
            loud = np.flatnonzero(level > 0.1 * np.median(level[level > 0]))
            y = y[(loud[0] + 1) * frame:loud[-1] * frame]  # whole frames inside the sound only
            write_wav(dst, y, RATE)
            raw.unlink()
    finally:
        server.stop()


def layout(data: Path, root: Path, n_train: int) -> tuple[list[Path], list[Path], list[Path]]:
    normal = sorted((data / "normal").glob("*.wav"))
    abnormal = sorted((data / "abnormal").glob("*.wav"))
    train = root / "fan" / "train"
    train.mkdir(parents=True)
    for path in normal[:n_train]:
        (train / f"normal_id_00_{path.stem}.wav").symlink_to(path.resolve())
    return normal[:n_train], normal[n_train:], abnormal


def scores(bundle: Bundle, files: list[Path]) -> np.ndarray:
    scorer = WindowScorer(bundle)
    return np.array([scorer.frames_score(log_mel(load_audio(f, RATE), bundle.params)) for f in files])


def replay_alarms(bundle: Path, files: list[Path], out: Path) -> int:
    """Files in which ``edge-monitor replay`` raises an ``anomaly_start``."""
    jsonl = out.with_suffix(".jsonl")
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli(["--log-level", "warning", "replay", *map(str, files), "--model", str(bundle), "--jsonl",
                    str(jsonl), "--quiet"])
    if code not in (0, 1):
        raise SystemExit(f"replay failed with exit code {code}")
    events = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    jsonl.unlink()
    return len({e["source"] for e in events if e["type"] == "anomaly_start"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA)
    parser.add_argument("--fmax", nargs="+", default=["nyquist", "default"],
                        help="mel upper edges to compare: Hz, 'nyquist' (8000, the old default) or 'default'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--pulse", action="store_true", help="also a real PulseAudio 48-kHz round trip (real time)")
    parser.add_argument("--replay", action="store_true", help="also decision-level alarms through edge-monitor replay")
    parser.add_argument("--work", type=Path, help="keep the chained clips here (default: a temporary folder)")
    args = parser.parse_args()
    if not shutil.which("sox"):
        print("skipped: sox not found (apt-get install sox)")
        return 0
    data_sets = [d for d in args.data if (d / "normal").is_dir()]
    if not data_sets:
        print(f"skipped: none of {', '.join(map(str, args.data))} found (the MIMII fans live in ../shared/data/)")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="capture-chain-"))
    work = args.work or tmp / "chains"
    rows = []
    try:
        for data in data_sets:
            n_train = TRAIN_CLIPS.get(data.name, 12)
            train, test_normal, abnormal = layout(data, tmp / data.name / "data", n_train)
            clips = train + test_normal + abnormal
            chained = make_chains(clips, work / data.name, args.pulse)
            for fmax in args.fmax:
                for seed in args.seeds:
                    models = tmp / data.name / f"models-{fmax}-{seed}"
                    flags = ["--fmax", fmax] if fmax != "default" else []
                    with contextlib.redirect_stdout(io.StringIO()):
                        code = cli(["--log-level", "warning", "train", str(tmp / data.name / "data"), "--out",
                                    str(models), "--epochs", str(args.epochs), "--seed", str(seed), "--no-cache",
                                    *flags])
                    if code:
                        return code
                    bundle = Bundle.load(models / "fan-id_00")
                    for chain, files in chained.items():
                        s = scores(bundle, files)
                        s_train, s_test, s_ab = s[:n_train], s[n_train:len(train) + len(test_normal)], s[-len(abnormal):]
                        labels = np.r_[np.zeros(len(s_test)), np.ones(len(s_ab))]
                        row = {"data": data.name, "fmax": bundle.params.f_max, "seed": seed, "chain": chain,
                               "threshold": bundle.threshold,
                               "test_flagged": int(np.sum(s_test > bundle.threshold)), "test_n": len(s_test),
                               "all_flagged": int(np.sum(np.r_[s_train, s_test] > bundle.threshold)),
                               "all_n": n_train + len(s_test),
                               "median_normal_ratio": float(np.median(np.r_[s_train, s_test]) / bundle.threshold),
                               "auc": auc(labels, np.r_[s_test, s_ab])}
                        if args.replay:
                            row["replay_alarms"] = replay_alarms(bundle.path, files[: len(train) + len(test_normal)],
                                                                 tmp / f"replay-{chain}")
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(rows, args.replay)
    return 0


def report(rows: list[dict], replay: bool) -> None:
    print("\nNormal clips flagged (int8 clip score > bundle threshold), summed over seeds; AUC per seed "
          "(test normals vs abnormal, both through the chain)")
    for data in dict.fromkeys(r["data"] for r in rows):
        for fmax in dict.fromkeys(r["fmax"] for r in rows if r["data"] == data):
            sel = [r for r in rows if r["data"] == data and r["fmax"] == fmax]
            seeds = sorted({r["seed"] for r in sel})
            print(f"\n{data}  fmax {fmax:g} Hz  seeds {' '.join(map(str, seeds))}")
            head = f"{'chain':>8} {'test normals':>13} {'all normals':>12} {'median/thr':>10}"
            head += f" {'replay alarms':>13}" if replay else ""
            print(head + "  AUC per seed")
            for chain in dict.fromkeys(r["chain"] for r in sel):
                cs = [r for r in sel if r["chain"] == chain]
                line = (f"{chain:>8} {sum(r['test_flagged'] for r in cs):>6}/{sum(r['test_n'] for r in cs):<6} "
                        f"{sum(r['all_flagged'] for r in cs):>5}/{sum(r['all_n'] for r in cs):<6} "
                        f"{np.mean([r['median_normal_ratio'] for r in cs]):>10.2f}")
                if replay:
                    line += f" {sum(r['replay_alarms'] for r in cs):>6}/{sum(r['all_n'] for r in cs):<6}"
                print(line + "  " + " ".join(f"{r['auc']:.3f}" for r in cs) + f"  mean {np.mean([r['auc'] for r in cs]):.3f}")


if __name__ == "__main__":
    sys.exit(main())
