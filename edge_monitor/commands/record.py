"""``edge-monitor record``: normal sound of a monitor's machine, recorded as training clips on the node.

The daemon's chain (``node/listen.py``: the same device, channel and capture rate as ``run``; the one
streaming resampler, ``core/resample.py``) to the model's rate — the bundle's when it exists, else the
default feature rate (a new machine has no model yet). Clips are 16-bit mono WAVs laid out as a DCASE
machine folder, so that ``edge-monitor train DIR --out MODELS`` needs no flags and names the bundle
``<type>-id_<id>`` after the monitor's machine::

    DIR/<machine type>/train/normal_id_<id>_<n:08d>.wav

Type and id: ``--machine`` / ``--id``, else the monitor's bundle's, else the monitor's name and ``00``. A
second run continues the numbering. Each clip is judged first by the health checks of the daemon
(``core.health.flags``: clipping, dead input, silence and a level far above the model's training level —
the last two need a model) and, with no model, an absolute floor (``MIN_DBFS``); a refused clip is said
with its reason and not counted. A clip with samples lost (ring overflow, driver overflow) is refused too.
A device that vanishes stops the recording: the clips so far are kept, one line says why, exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from edge_monitor.core.errors import BundleError, UserError
from edge_monitor.core.features import FeatureParams, log_mel
from edge_monitor.core.health import flags, sample_counts
from edge_monitor.core.model import Bundle
from edge_monitor.core.resample import StreamResampler
from edge_monitor.core.settings import HealthSettings
from edge_monitor.core.wav import write_wav
from edge_monitor.node.config import load
from edge_monitor.node.listen import DeviceLost, MonitorMic, pick_monitor

MIN_DBFS = -70.0           # without a model: a clip whose RMS level is below this is refused as too quiet
MAX_CLIP_SECONDS = 600.0
_NAME = re.compile(r"^normal_id_(?P<id>\d+)_(?P<n>\d+)\.wav$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="the node config")
    parser.add_argument("--monitor", required=True, help="the monitor whose microphone to record")
    parser.add_argument("--seconds", type=float, required=True, help="how much sound to record")
    parser.add_argument("--out", type=Path, required=True, help="data folder (train reads it with no flags)")
    parser.add_argument("--clip-seconds", type=float, default=10.0, help="length of each clip (default 10)")
    parser.add_argument("--machine", help="machine type in the file layout (default: the bundle's, else the "
                                          "monitor's name)")
    parser.add_argument("--id", dest="machine_id", help="machine id, digits (default: the bundle's, else 00)")


def _bundle(model: str) -> Bundle | None:
    if not Path(model).exists():
        return None  # a new machine: no model yet
    try:
        return Bundle.load(model)
    except BundleError as exc:
        print(f"edge-monitor: warning: {exc}; recording at the default rate without the model's level checks",
              file=sys.stderr)
        return None


def _digits(machine_id: str, flag: bool) -> str | None:
    match = re.fullmatch(r"(?:id_)?(\d{1,8})", machine_id)
    if match:
        return match[1]
    if flag:
        raise UserError(f"record: --id {machine_id!r}: expected digits such as 00 (files are named normal_id_00_...)")
    return None


def _layout(args: argparse.Namespace, monitor: str, bundle: Bundle | None) -> tuple[str, str]:
    kind = args.machine or (bundle.machine_type if bundle is not None else monitor)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", kind):
        raise UserError(f"record: machine type {kind!r}: use letters, digits, '.', '_' or '-'")
    if args.machine_id is not None:
        ident = _digits(args.machine_id, True)
    else:
        ident = (_digits(bundle.machine_id, False) if bundle is not None else None) or "00"
    assert ident is not None
    return kind, ident


def next_number(folder: Path, ident: str) -> int:
    """The number after the highest ``normal_id_<ident>_<n>.wav`` in ``folder`` (0 in a new folder)."""
    numbers = [int(m["n"]) for p in folder.iterdir() if (m := _NAME.match(p.name)) and m["id"] == ident]
    return max(numbers, default=-1) + 1


def judge(clip: np.ndarray, bundle: Bundle | None, params: FeatureParams, health: HealthSettings) -> str | None:
    """Why ``clip`` is refused (the daemon's health judgement), or None when it is fit to train on."""
    clipped, zeros, sumsq = sample_counts(clip)
    n = max(len(clip), 1)
    level = 10 * math.log10(sumsq / n) if sumsq > 0 else -math.inf
    below = math.nan
    if bundle is not None:
        frames = log_mel(clip, params)
        if len(frames):
            below = float(np.mean(bundle.mean)) - float(frames.mean())
    raised = flags(health, clipped / n, zeros / n, below)
    if raised["dead_input"]:
        return f"dead input ({100 * zeros / n:.1f} % digital zeros)"
    if raised["clipping"]:
        return f"clipping ({100 * clipped / n:.2f} % of samples at full scale: lower the gain)"
    if raised["silence"]:
        return f"silence (level {below:.0f} dB below the model's training level: machine off?)"
    if raised["level_high"]:
        return f"level too high ({-below:.0f} dB above the model's training level)"
    if bundle is None and level < MIN_DBFS:
        return f"level too low ({level:.0f} dBFS < {MIN_DBFS:g} dBFS)"
    return None


def run(args: argparse.Namespace) -> int:
    settings = load(args.config)
    m = pick_monitor(settings, args.monitor)
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UserError(f"record: --seconds must be > 0, got {args.seconds:g}")
    if not (math.isfinite(args.clip_seconds) and 1 <= args.clip_seconds <= MAX_CLIP_SECONDS):
        raise UserError(f"record: --clip-seconds must be in [1, {MAX_CLIP_SECONDS:g}], got {args.clip_seconds:g}")
    bundle = _bundle(m.model)
    params = bundle.params if bundle is not None else FeatureParams()
    rate = params.sample_rate
    kind, ident = _layout(args, m.name, bundle)
    folder = args.out / kind / "train"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".record-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"record: --out {args.out}: cannot write clips there ({exc.strerror or exc})") from None
    number = next_number(folder, ident)
    mic = MonitorMic(settings, m, rate)
    source = mic.start()
    resampler = StreamResampler(source.rate, rate) if source.rate != rate else None
    total = round(args.seconds * rate)
    per_clip = round(args.clip_seconds * rate)
    clip = np.empty(per_clip, dtype=np.float32)
    filled, heard, kept, refused, lost = 0, 0, 0, 0, False
    started = time.monotonic()
    print(f"record {m.name}: {args.seconds:g} s from {source.label} at {source.rate} Hz → {rate} Hz clips of "
          f"{args.clip_seconds:g} s in {folder} (from number {number})", file=sys.stderr, flush=True)
    try:
        while heard < total:
            mic.check()  # DeviceLost: the clips so far stay
            chunk = source.read()
            if chunk.dropped or chunk.overflows:
                lost = True
                if resampler is not None:
                    resampler.reset()
            block = resampler.process(chunk.samples) if resampler is not None else chunk.samples
            offset = 0
            while offset < len(block) and heard < total:
                want = min(per_clip, total - (heard - filled)) - filled
                take = min(want, len(block) - offset)
                clip[filled : filled + take] = block[offset : offset + take]
                filled += take
                heard += take
                offset += take
                if filled == min(per_clip, total - (heard - filled)):
                    audio = clip[:filled]
                    why = "samples were lost (the node fell behind)" if lost else judge(audio, bundle, params, m.health)
                    level = sample_counts(audio)[2] / max(filled, 1)
                    dbfs = f"{10 * math.log10(level):.1f} dBFS" if level > 0 else "-inf dBFS"
                    if why is None:
                        name = folder / f"normal_id_{ident}_{number:08d}.wav"
                        write_wav(name, audio, rate, "pcm16")
                        number += 1
                        kept += 1
                        what = f"kept {name.name}"
                    else:
                        refused += 1
                        what = f"refused: {why}"
                    left = (total - heard) / rate
                    print(f"record {m.name}: clip {what}; {kept} kept, {refused} refused, level {dbfs}, "
                          f"{left:.0f} s left", file=sys.stderr, flush=True)
                    filled, lost = 0, False
    except DeviceLost as exc:
        raise UserError(f"record stopped: {exc}; {kept} clip(s) kept in {folder}") from None
    finally:
        mic.stop()
    print(f"recorded {kept} clip(s) into {folder} ({refused} refused) in {time.monotonic() - started:.0f} s; "
          f"train with: edge-monitor train {args.out} --out MODELS")
    return 0
