"""Replay throughput, live-path cost and detection delay of the pipeline, on one core.

    python bench/replay.py [--clips 40] [--delay-clips 24]

1. Replay: 10-s 16-bit WAV clips through ``edge_monitor.commands.replay.replay_file`` — read, (resample),
   streaming log-mel, int8 inference, health, decisions — in × real time per CPU second; then where
   the time goes (each stage alone on the same clips).
2. The DCASE 2020 baseline way on the same files in the same run: ``librosa.load`` +
   ``librosa.feature.melspectrogram`` + log + 5-frame stacking + Keras ``model.predict`` per file
   (needs the train and test extras), and the ratio.
3. Live path: one 16 kHz monitor fed 64-ms blocks through the ring buffer and the single-window
   scorer: CPU seconds per audio second.
4. Detection delay: synthetic fan clips with a fault starting at 8 s: from onset to ``anomaly_start``
   with the default decision settings, and any alarm before the onset.

Model: the bundled demo (fan id_00). CPU time is process time with BLAS/FFT/TFLite on one thread.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTEROP_THREADS",
            "TF_NUM_INTRAOP_THREADS"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edge_monitor import DEMO_DIR  # noqa: E402
from edge_monitor.commands.replay import replay_file  # noqa: E402
from edge_monitor.core.features import log_mel, windows  # noqa: E402
from edge_monitor.core.model import Bundle, WindowScorer  # noqa: E402
from edge_monitor.core.monitor import REPLAY_BATCH, REPLAY_BLOCK_SECONDS, Monitor  # noqa: E402
from edge_monitor.core.wav import load_audio, write_wav  # noqa: E402
from edge_monitor.node.ring import RingBuffer  # noqa: E402
from edge_monitor.node.settings import MonitorSettings, Settings  # noqa: E402
from training.synth import FAULTS, synth_clip  # noqa: E402

BUNDLE = DEMO_DIR / "fan-id_00"
SR = 16000


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def best_of(fn, repeats: int = 3) -> float:
    return min(cpu(fn) for _ in range(repeats))


def make_clips(folder: Path, count: int, rate: int) -> list[Path]:
    rng = np.random.default_rng(5)
    paths = []
    for i in range(count):
        fault = None if i % 2 == 0 else FAULTS[i % len(FAULTS)]
        x = synth_clip("fan", 0, 10.0, SR, rng=rng, fault=fault, severity=0.5)
        if rate != SR:
            from edge_monitor.core.wav import resample

            x = resample(x, SR, rate)
        path = folder / f"clip_{rate}_{i:03d}.wav"
        write_wav(path, x, rate)
        paths.append(path)
    return paths


def replay_throughput(paths: list[Path], bundle: Bundle) -> float:
    settings = Settings(node="bench", monitors=(MonitorSettings(name="m", model=str(BUNDLE)),))

    scorers: dict = {}

    def go():
        for p in paths:
            replay_file(p, settings, {"m": bundle}, block_seconds=REPLAY_BLOCK_SECONDS, realtime=False, sinks=[],
                        scorers=scorers)

    go()  # warm: interpreter, caches
    return 10.0 * len(paths) / best_of(go)


def stages(paths: list[Path], bundle: Bundle) -> dict[str, float]:
    audio = [load_audio(p, SR) for p in paths]
    frames = [log_mel(x, bundle.params) for x in audio]
    stacked = [windows(f, bundle.params) for f in frames]
    scorer = WindowScorer(bundle, batch_size=REPLAY_BATCH)
    scorer.errors(stacked[0])
    return {
        "read WAV": best_of(lambda: [load_audio(p, SR) for p in paths]),
        "log-mel": best_of(lambda: [log_mel(x, bundle.params) for x in audio]),
        "window stacking": best_of(lambda: [windows(f, bundle.params) for f in frames]),
        "int8 inference + error": best_of(lambda: [scorer.errors(w) for w in stacked]),
    }


def dcase_baseline(paths: list[Path], bundle: Bundle) -> float | None:
    """The DCASE 2020 Task 2 baseline's per-file scoring (its file_to_vector_array + model.predict)."""
    try:
        import librosa

        from training.autoencoder import build
    except ImportError as exc:
        print(f"DCASE baseline way: skipped ({exc}); install the train and test extras")
        return None
    p = bundle.params
    model = build(p.window_size)

    def score(path: Path) -> float:
        y, sr = librosa.load(str(path), sr=None, mono=False)
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=p.n_fft, hop_length=p.hop_length, n_mels=p.n_mels,
                                             power=p.power)
        log_mel_spec = 20.0 / p.power * np.log10(mel + 2.2e-16)
        n = log_mel_spec.shape[1] - p.frames + 1
        vectors = np.zeros((n, p.window_size), np.float32)
        for t in range(p.frames):
            vectors[:, p.n_mels * t : p.n_mels * (t + 1)] = log_mel_spec[:, t : t + n].T
        reconstruction = model.predict(vectors, verbose=0)
        return float(np.mean(np.square(vectors - reconstruction)))

    score(paths[0])
    return 10.0 * len(paths) / best_of(lambda: [score(path) for path in paths], repeats=1)


def live_cost(bundle: Bundle, seconds: float = 120.0, block_ms: float = 64.0) -> float:
    rng = np.random.default_rng(9)
    audio = synth_clip("fan", 0, seconds, SR, rng=rng)
    block = int(SR * block_ms / 1000)
    ring = RingBuffer(SR * 10)
    out = np.empty(block, np.float32)
    monitor = Monitor(MonitorSettings(name="m", model=str(BUNDLE)), bundle, node="bench", source="bench", live=True)

    def go():
        for start in range(0, len(audio) - block + 1, block):
            ring.write(audio[start : start + block])  # the audio callback's share
            n, dropped = ring.read(out)
            monitor.process(out[:n], dropped)

    return cpu(go) / seconds


def detection_delay(bundle: Bundle, clips: int) -> None:
    onset, length = 8.0, 20.0
    rng = np.random.default_rng(21)
    delays, missed, early = [], [], 0
    for i in range(clips):
        fault = FAULTS[i % len(FAULTS)]
        x = synth_clip("fan", 0, length, SR, rng=rng, fault=fault, severity=0.5, fault_onset=onset)
        m = Monitor(MonitorSettings(name="m", model=str(BUNDLE)), bundle, node="bench", source="bench", live=True)
        events = []
        for start in range(0, len(x), 1024):
            events += m.process(x[start : start + 1024])
        starts = [e.audio_position_s for e in events if e.type == "anomaly_start"]
        early += sum(1 for s in starts if s < onset)
        late = [s - onset for s in starts if s >= onset]
        if late:
            delays.append(late[0])
        else:
            missed.append(fault)
    if delays:
        print(f"detection delay (onset → anomaly_start), {len(delays)}/{clips} faults detected: median "
              f"{statistics.median(delays):.2f} s, min {min(delays):.2f} s, max {max(delays):.2f} s")
    print(f"  missed: {len(missed)} ({', '.join(missed) or 'none'}); alarms before the onset: {early}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=40, help="10-s clips for the throughput figures")
    parser.add_argument("--delay-clips", type=int, default=25, help="20-s clips with a fault at 8 s")
    args = parser.parse_args()
    bundle = Bundle.load(BUNDLE)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_clips(Path(tmp), args.clips, SR)
        paths48 = make_clips(Path(tmp), max(4, args.clips // 4), 48000)
        ours = replay_throughput(paths, bundle)
        print(f"replay, {len(paths)} x 10-s 16-kHz clips:        {ours:7.0f} x real time per CPU second")
        ours48 = replay_throughput(paths48, bundle)
        print(f"replay, {len(paths48)} x 10-s 48-kHz clips (resampled): {ours48:7.0f} x real time per CPU second")
        parts = stages(paths, bundle)
        total = 10.0 * len(paths) / ours
        print("  where the time goes (each stage alone, CPU s per 10-s clip):")
        for name, seconds in parts.items():
            print(f"    {name:24s} {1000 * seconds / len(paths):6.3f} ms  ({100 * seconds / total:4.1f} %)")
        rest = total - sum(parts.values())
        print(f"    {'the rest (health, decisions, blocks)':24s} {1000 * rest / len(paths):6.3f} ms  "
              f"({100 * rest / total:4.1f} %)")
        baseline = dcase_baseline(paths, bundle)
        if baseline:
            print(f"DCASE 2020 baseline way (librosa + Keras predict per file): {baseline:7.0f} x real time; "
                  f"replay is {ours / baseline:.0f} x faster")
    per_second = live_cost(bundle)
    print(f"live path, 64-ms blocks via ring buffer, one window per invoke: {per_second:.5f} CPU s per audio s "
          f"= {100 * per_second:.2f} % of one core")
    detection_delay(bundle, args.delay_clips)


if __name__ == "__main__":
    main()
