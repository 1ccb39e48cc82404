"""Microphone path costs: the audio callback per block, and StreamResampler per second of audio.

    python bench/mic.py [--block-seconds 0.064] [--channels 2] [--rounds 200]

The callback is called directly (no device needed) with a preallocated float32 block, as sounddevice
hands it over, tapping every channel into its own ring. The resampler figures are the processing
thread's cost to turn one second of device-rate audio into 16 kHz, in blocks of ``--block-seconds``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edge_monitor.core.resample import StreamResampler
from edge_monitor.node.mic import Capture
from edge_monitor.node.ring import RingBuffer


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-seconds", type=float, default=0.064)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    rate = 48000
    block = round(args.block_seconds * rate)
    rings = [RingBuffer(10 * rate) for _ in range(args.channels)]
    cap = Capture(None, rate, args.channels, args.block_seconds, list(enumerate(rings)))
    indata = np.random.default_rng(0).uniform(-1, 1, (block, args.channels)).astype(np.float32)
    batch = 50

    def callbacks() -> None:
        for _ in range(batch):
            cap._callback(indata, block, None, 0)

    per_call = best(callbacks, args.rounds) / batch
    print(f"callback: {per_call * 1e6:.1f} us per {block}-frame block, {args.channels} tap(s) "
          f"({per_call / args.block_seconds * 100:.3f} % of the block's real time)")

    for from_rate in (48000, 44100, 22050):
        r = StreamResampler(from_rate, 16000)
        x = np.random.default_rng(1).uniform(-1, 1, from_rate).astype(np.float32)
        n = round(args.block_seconds * from_rate)

        def one_second(r=r, x=x, n=n, from_rate=from_rate) -> None:
            for i in range(0, from_rate, n):
                r.process(x[i:i + n])

        t = best(one_second, max(5, args.rounds // 20))
        print(f"resample {from_rate} -> 16000 Hz: {t * 1e3:.2f} ms per second of audio "
              f"({r.up}/{r.down}, {r._taps} taps per phase, latency {r.latency_seconds * 1e3:.2f} ms)")


if __name__ == "__main__":
    main()
