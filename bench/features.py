"""Feature extraction throughput on one core: seconds of audio per second of CPU.

    python bench/features.py [--seconds 600] [--block-ms 64]

`log_mel` on 10-s clips (the training and replay path) and `StreamingLogMel` fed 64 ms blocks
(the live path). Process CPU time is measured, so the figure is per core; BLAS and FFT threads
are pinned to one.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from edge_monitor.core.features import FeatureParams, StreamingLogMel, log_mel  # noqa: E402


def cpu_rate(fn, audio_seconds: float, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return audio_seconds / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="audio per measurement")
    parser.add_argument("--block-ms", type=float, default=64.0)
    args = parser.parse_args()
    p = FeatureParams()
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(10 * p.sample_rate)).astype(np.float32)
    clips = int(args.seconds // 10)

    def batch():
        for _ in range(clips):
            log_mel(clip, p)

    block = int(p.sample_rate * args.block_ms / 1000)
    stream_audio = np.tile(clip, clips)

    def streaming():
        s = StreamingLogMel(p)
        for i in range(0, len(stream_audio), block):
            s.push(stream_audio[i : i + block])

    print(f"log_mel, 10-s clips:                  {cpu_rate(batch, clips * 10):8.0f} s of audio per CPU second")
    rate = cpu_rate(streaming, clips * 10)
    print(f"StreamingLogMel, {args.block_ms:.0f} ms blocks:        {rate:8.0f} s of audio per CPU second "
          f"({100 / rate:.3f} % of one core in real time)")


if __name__ == "__main__":
    main()
