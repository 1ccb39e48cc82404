"""RingBuffer cost per call: the audio callback's ``write`` and the processing thread's ``read``.

    python bench/ring.py [--block 1024] [--rounds 400]

Wall time (time.perf_counter) per call, one thread, best of several rounds of ``--batch`` calls:
``write`` of a contiguous float32 block and of a strided column (``indata[:, 0]`` of a stereo
block, what the sounddevice callback hands over), and ``read`` of a block of the same size from a
buffer that holds data (both include the copies across the wrap point).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edge_monitor.node.ring import RingBuffer


def per_call(fn, batch: int, rounds: int) -> float:
    """Best time per call in microseconds over ``rounds`` rounds of ``batch`` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / batch * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", type=int, default=1024, help="samples per write and per read")
    parser.add_argument("--batch", type=int, default=64, help="calls per timed round")
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    block, batch = args.block, args.batch
    # a capacity that is not a multiple of the block, so copies wrap at varying offsets
    rb = RingBuffer(batch * block + block // 3)
    stereo = np.random.default_rng(0).uniform(-1, 1, (block, 2)).astype(np.float32)
    contiguous = np.ascontiguousarray(stereo[:, 0])
    column = stereo[:, 0]
    out = np.empty(block, dtype=np.float32)

    def writes(samples: np.ndarray):
        def run():
            for _ in range(batch):
                rb.write(samples)
        return run

    def reads():
        for _ in range(batch):
            rb.read(out)

    w_contig = per_call(writes(contiguous), batch, args.rounds)
    w_column = per_call(writes(column), batch, args.rounds)

    while rb.read(out)[0]:  # drain what the write rounds left (and the overrun they caused)
        pass
    best = float("inf")
    for _ in range(args.rounds):  # fill (untimed), then time reads that each find a full block
        writes(contiguous)()
        start = time.perf_counter()
        reads()
        best = min(best, time.perf_counter() - start)
    r = best / batch * 1e6

    audio_us = block / 16000 * 1e6
    for label, us in ((f"write, {block} contiguous float32", w_contig),
                      (f"write, {block} strided column (stereo)", w_column),
                      (f"read,  {block} samples", r)):
        print(f"{label + ':':40s} {us:7.2f} µs per call")
    print(f"({block} samples are {audio_us / 1000:.0f} ms of audio at 16 kHz: write + read take "
          f"{100 * (w_column + r) / audio_us:.3f} % of it)")


if __name__ == "__main__":
    main()
