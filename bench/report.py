"""What ``replay --report`` costs: size of a report and time to write it.

    python bench/report.py [--clip WAV] [--long-minutes 10]

For a 10-s clip (default: the first abnormal MIMII fan clip when /work/shared/data is there, else the demo
anomaly clip) and a long file (that clip repeated ``--long-minutes``): the replay alone, then the report's
parts — log-mel of the file (``core.features.log_mel``), the HTML page, the matplotlib PNG, writing both
through ``node/report.py`` — in wall-clock milliseconds (median of 5), and the sizes of the HTML and PNG.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_monitor import DEMO_DIR
from edge_monitor.commands.replay import replay_file
from edge_monitor.core.features import log_mel
from edge_monitor.core.model import Bundle
from edge_monitor.core.monitor import REPLAY_BLOCK_SECONDS
from edge_monitor.core.report import render_html, render_png
from edge_monitor.core.wav import load_audio, write_wav
from edge_monitor.node.report import write_report
from edge_monitor.node.settings import AudioSettings, MonitorSettings, Settings

MIMII = Path("/work/shared/data/mimii-fan-id00/abnormal")


def ms(fn, runs: int = 5) -> tuple[float, object]:  # noqa: ANN001
    times, out = [], None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), out


def bench(wav: Path, bundle: Bundle, folder: Path) -> None:
    settings = Settings(node="bench", monitors=(MonitorSettings(name=bundle.name, model=str(bundle.path)),),
                        audio=AudioSettings())
    runs = 5 if load_audio(wav, 16000).size < 16000 * 60 else 3

    def replay(report: bool):  # noqa: ANN202
        return replay_file(wav, settings, {bundle.name: bundle}, block_seconds=REPLAY_BLOCK_SECONDS,
                           realtime=False, sinks=[], report=report)[0]

    replay(False)  # warm: the interpreter is loaded, the file in the page cache
    t_plain, _ = ms(lambda: replay(False), runs)
    t_traced, result = ms(lambda: replay(True), runs)
    params = bundle.params
    t_mel, frames = ms(lambda: log_mel(load_audio(wav, params.sample_rate), params), runs)
    t_html, page = ms(lambda: render_html(result.trace, frames, params), runs)
    t_png, png = ms(lambda: render_png(result.trace, frames, params), runs)
    t_write, files = ms(lambda: write_report(folder, result.trace, wav, 0, params, wav.stem), runs)
    print(f"{wav.name}: {result.duration_s:.0f} s, {len(result.anomalies)} alert(s)")
    print(f"  replay {t_plain:.1f} ms, with the trace kept {t_traced:.1f} ms")
    print(f"  report: log-mel {t_mel:.1f} ms, HTML {t_html:.1f} ms ({len(page.encode()) / 1024:.0f} KiB), "
          f"PNG {t_png:.1f} ms ({len(png or b'') / 1024:.0f} KiB); write_report (all of it, to disk) {t_write:.1f} ms")
    print(f"  on disk: {files.html.name} {files.html.stat().st_size / 1024:.0f} KiB, "
          f"{files.png.name if files.png else '-'} {files.png.stat().st_size / 1024 if files.png else 0:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path)
    parser.add_argument("--long-minutes", type=float, default=10.0)
    args = parser.parse_args()
    clip = args.clip or (min(MIMII.glob("*.wav")) if MIMII.is_dir() else DEMO_DIR / "clips" /
                         "anomaly_id_00_demo.wav")
    bundle = Bundle.load(DEMO_DIR / "fan-id_00")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bench(clip, bundle, folder)
        if args.long_minutes > 0:
            samples = load_audio(clip, 16000)
            reps = int(np.ceil(args.long_minutes * 60 * 16000 / len(samples)))
            long = folder / f"long_{args.long_minutes:g}min.wav"
            write_wav(long, np.tile(samples, reps)[: int(args.long_minutes * 60 * 16000)], 16000)
            bench(long, bundle, folder)


if __name__ == "__main__":
    main()
