"""Replay memory for long recordings: peak RSS of ``edge-monitor replay`` on 10-min, 2-h and 24-h files.

Replay reads a file block by block from disk (``core.wav.WavFile`` ranges through ``core.loop.WavSource``),
so the peak resident memory must stay flat whatever the length (goal < 120 MB); only the per-window
errors kept for the clip score grow (4 bytes per window: 10.7 MB a day). The files are written here in
blocks (a 24-h 16-kHz 16-bit file is 2.8 GB) from the demo's normal clip, repeated, into a temporary folder.

    python bench/replay_memory.py [--hours 0.1667 2 24] [--keep DIR] [--python OTHER_PYTHON --pythonpath TREE]

``--python/--pythonpath`` run another tree (e.g. the code before streaming) for a before/after figure.
Prints: length, file size, peak RSS, CPU seconds, audio seconds per CPU second.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_monitor import DEMO_DIR  # noqa: E402
from edge_monitor.core.wav import load_audio  # noqa: E402

SR = 16000


def write_long_wav(path: Path, seconds: float) -> None:
    """A 16-bit mono WAV of ``seconds``: the demo's normal clip over and over, written block by block."""
    clip = np.clip(load_audio(DEMO_DIR / "clips" / "normal_id_00_demo.wav", SR), -1, 1)
    pcm = (np.rint(clip * 32767)).astype("<i2").tobytes()
    frames = int(seconds * SR)
    data = frames * 2
    with open(path, "wb") as f:
        f.write(struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 1, SR, SR * 2, 2, 16,
                            b"data", data))
        left = data
        while left > 0:
            chunk = pcm[: min(len(pcm), left)]
            f.write(chunk)
            left -= len(chunk)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, nargs="+", default=[10 / 60, 2, 24])
    ap.add_argument("--keep", type=Path, help="keep the generated files in this folder")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--pythonpath", default=str(REPO))
    ap.add_argument("--module", default="edge_monitor", help="module to run (the old tree: edge_monitor.cli)")
    args = ap.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="em-long-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"replay memory ({args.pythonpath}): length, file, peak RSS, CPU, throughput")
    for hours in args.hours:
        path = folder / f"long_{hours:g}h.wav"
        if not path.exists():
            t = time.monotonic()
            write_long_wav(path, hours * 3600)
            print(f"  (wrote {path.name}: {path.stat().st_size / 1e9:.2f} GB in {time.monotonic() - t:.0f} s)")
        # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: run each length in its own process tree
        code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
                "stderr=subprocess.DEVNULL); r = resource.getrusage(resource.RUSAGE_CHILDREN); "
                "print(r.ru_maxrss, r.ru_utime + r.ru_stime)")
        out = subprocess.run([sys.executable, "-c", code, args.python, "-m", args.module, "replay", str(path), "--quiet"],
                             env={**os.environ, "PYTHONPATH": args.pythonpath}, capture_output=True, text=True,
                             cwd=folder)  # not the repository: `-m` would import the tree in the working folder
        rss_kb, cpu = out.stdout.split()
        rss, cpu = int(rss_kb) / 1024, float(cpu)
        label = f"{hours * 60:.0f} min" if hours < 1 else f"{hours:g} h"
        print(f"  {label:>7}  {path.stat().st_size / 1e6:8.0f} MB  peak RSS {rss:7.1f} MB  CPU {cpu:7.1f} s  "
              f"{hours * 3600 / cpu:7.0f} x real time")
        if args.keep is None:
            path.unlink()


if __name__ == "__main__":
    main()
