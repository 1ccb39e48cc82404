"""``edge-monitor calibrate``: fit a monitor's decision threshold on the node's own normal audio.

The deployed int8 bundle runs over live audio (``--seconds``: the daemon's microphone chain) or over the
WAVs of a folder (``--from``) through the one loop (``core.loop.Loop``), keeping every window error. Every
decision score the monitor's decision window gives (``core.detector.sliding_means``, never across a file
boundary; windows with a frame far below the training level, which the detector skips, are left out as it
leaves them out) is fitted with the gamma of training (``core.thresholds.gamma_fit``, quantile
``DECISION_QUANTILE``).

The tail, with only minutes of audio: decision scores overlap, so what the fit rests on is the number of
*independent* decision windows (audio seconds / window seconds), printed and recorded. The threshold is
never below the highest decision score seen × ``MARGIN`` (an extrapolated quantile below what the
calibration audio itself reached would alarm on it), and less than ``MIN_SECONDS`` of audio is refused.

The decisions the configured policy (k of n, minimum duration, cooldown) takes on the calibration audio with
the new threshold are simulated with ``core.detector.Detector``: alarms seen. The expected false alarms per
day are extrapolated from the fit: P(score > threshold) under the gamma × independent decision windows per
day (86400 / window_seconds). That counts every independent window above the threshold as an alarm, so it
is an upper bound: k-of-n and the minimum duration need the excess to last, and the cooldown merges alarms.

The result goes to ``<state_dir>/calibration/<monitor>.json`` (``node/calibration.py``); ``run`` (after a
SIGHUP, without restarting the stream), ``check`` and ``replay --config`` apply it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np

from edge_monitor.core.detector import (
    DECISION_QUANTILE,
    Detector,
    decision_length,
    sliding_means,
)
from edge_monitor.core.errors import UserError
from edge_monitor.core.events import Event
from edge_monitor.core.loop import Loop, WavSource
from edge_monitor.core.model import Bundle
from edge_monitor.core.monitor import REPLAY_BLOCK_SECONDS, Monitor
from edge_monitor.core.thresholds import gamma_fit
from edge_monitor.node.bundles import open_bundles, replay_scorer
from edge_monitor.node.calibration import (
    Calibration,
    Fit,
    Simulation,
    write_calibration,
)
from edge_monitor.node.config import load
from edge_monitor.node.listen import MonitorMic, pick_monitor
from edge_monitor.node.settings import MonitorSettings, Settings

MIN_SECONDS = 60.0   # less normal audio than this is refused
MARGIN = 1.05        # the threshold is never below the highest decision score seen × this


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="the node config")
    parser.add_argument("--monitor", required=True, help="the monitor to calibrate")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--seconds", type=float, help=f"listen live this long (at least {MIN_SECONDS:g} s of normal sound)")
    what.add_argument("--from", dest="folder", type=Path, help="a folder of normal WAVs (searched recursively)")


class _Collect:
    """A sink that keeps the health events (calibration audio must be fit to judge by)."""

    def __init__(self) -> None:
        self.bad: list[Event] = []

    def event(self, event: Event) -> None:
        if event.type == "health" and event.health is not None and event.health.status == "bad":
            self.bad.append(event)

    def state(self, monitor: str, state: str, score: float | None, threshold: float) -> None:
        pass

    def telemetry(self, monitor: str, values: dict) -> None:
        pass


def _refuse_bad_health(sink: _Collect, where: str) -> None:
    if sink.bad:
        h = sink.bad[0].health
        assert h is not None
        raise UserError(f"calibrate: {where}: the input was not fit to judge by ({h.condition} at "
                        f"{sink.bad[0].audio_position_s:.1f} s: {h.message}); calibrate on normal running sound")


def _from_files(folder: Path, m: MonitorSettings, bundle: Bundle, node: str) -> tuple[list[np.ndarray], float, Monitor]:
    if not folder.is_dir():
        raise UserError(f"calibrate: --from {folder}: no such folder; give a folder of normal WAVs")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".wav")
    if not files:
        raise UserError(f"calibrate: --from {folder}: no WAV files in it")
    scorer = replay_scorer(bundle, m.name)
    segments, seconds, monitor = [], 0.0, None
    for path in files:
        source = WavSource(path, m.channel, REPLAY_BLOCK_SECONDS)
        monitor = Monitor(m, bundle, node=node, source=source.label, live=False, keep_errors=True, scorer=scorer)
        sink = _Collect()
        Loop(monitor, source, [sink]).run()
        _refuse_bad_health(sink, str(path))
        segments += monitor.judged_errors()
        seconds += monitor.position / bundle.params.sample_rate
    assert monitor is not None
    return segments, seconds, monitor


def _live(seconds: float, settings: Settings, m: MonitorSettings, bundle: Bundle) -> tuple[list[np.ndarray], float, Monitor]:
    mic = MonitorMic(settings, m, bundle.params.sample_rate)
    source = mic.start()
    try:
        monitor = Monitor(m, bundle, node=settings.node, source=source.label, live=True, keep_errors=True)
        sink = _Collect()
        loop = Loop(monitor, source, [sink])
        need = int(seconds * bundle.params.sample_rate)
        next_line = 0.0

        def stop() -> str | None:
            nonlocal next_line
            mic.check()  # DeviceLost: one line, exit 2
            heard = monitor.position / bundle.params.sample_rate
            if heard >= next_line:
                print(f"calibrate {m.name}: {heard:.0f} of {seconds:g} s", file=sys.stderr, flush=True)
                next_line += 10.0
            if sink.bad:
                return "health"  # refused below, without waiting for the rest
            return "end_of_stream" if monitor.position >= need else None

        loop.run(stop)
        _refuse_bad_health(sink, f"live audio of monitor {m.name}")
    finally:
        mic.stop()
    return monitor.judged_errors(), monitor.position / bundle.params.sample_rate, monitor


def calibrate(segments: list[np.ndarray], audio_seconds: float, source: str, m: MonitorSettings, bundle: Bundle,
              monitor: Monitor) -> Calibration:
    """The calibration of monitor ``m`` from window errors of normal audio (one array per gap-free segment)."""
    d = m.decision
    params = bundle.params
    length = decision_length(d.window_seconds, params)
    scores = np.concatenate([sliding_means(e, length) for e in segments] + [np.empty(0)])
    independent = int(audio_seconds // d.window_seconds)
    if audio_seconds < MIN_SECONDS or len(scores) < 10:
        raise UserError(f"calibrate: {audio_seconds:.0f} s of audio is too little to fit a threshold; give at least "
                        f"{MIN_SECONDS:g} s of normal sound")
    fit = gamma_fit(scores, DECISION_QUANTILE)
    threshold = max(fit.value, float(scores.max()) * MARGIN)
    alarms = 0
    for errors in segments:  # the configured policy on the calibration audio, with the new threshold
        detector = Detector(d, threshold, params, monitor.origin, lambda _after: ())
        events = detector.push(errors.astype(np.float64), params.n_fft / params.sample_rate)
        alarms += sum(e.type == "anomaly_start" for e in events)
    per_day = fit.exceed_probability(threshold) * 86400.0 / d.window_seconds
    return Calibration(
        monitor=m.name, model=bundle.name, model_sha256=bundle.sha256, window_seconds=d.window_seconds,
        threshold=threshold, median_score=float(np.median(scores)),
        fit=Fit(shape=fit.shape, scale=fit.scale, quantile=fit.quantile, gamma_value=fit.value,
                max_score=float(scores.max()), margin=MARGIN, decision_scores=len(scores),
                independent_windows=independent, audio_seconds=round(audio_seconds, 3), source=source),
        simulation=Simulation(k_of_n=tuple(d.k_of_n), min_duration_seconds=d.min_duration_seconds,
                              cooldown_seconds=d.cooldown_seconds, alarms=int(alarms),
                              decisions_above=int(np.count_nonzero(scores > threshold)),
                              expected_false_alarms_per_day=float(per_day)),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def run(args: argparse.Namespace) -> int:
    settings = load(args.config)
    m = pick_monitor(settings, args.monitor)
    if args.seconds is not None and not 0 < args.seconds <= 86400:
        raise UserError(f"calibrate: --seconds must be in (0, 86400], got {args.seconds:g}")
    one = Settings(node=settings.node, monitors=(m,), audio=settings.audio, state_dir=settings.state_dir)
    bundle = open_bundles(one)[m.name]
    if args.seconds is not None and args.seconds < MIN_SECONDS:
        raise UserError(f"calibrate: --seconds {args.seconds:g} is too little to fit a threshold; give at least "
                        f"{MIN_SECONDS:g} s of normal sound")
    if args.folder is not None:
        segments, seconds, monitor = _from_files(args.folder, m, bundle, settings.node)
        source = "files"
    else:
        segments, seconds, monitor = _live(args.seconds, settings, m, bundle)
        source = "live"
    calibration = calibrate(segments, seconds, source, m, bundle, monitor)
    path = write_calibration(settings.state_dir, calibration)
    f, s = calibration.fit, calibration.simulation
    before = monitor.threshold
    print(f"calibrated {m.name} ({bundle.name}, sha256 {bundle.sha256[:12]}…) on {f.audio_seconds:.0f} s of "
          f"{'live audio' if source == 'live' else 'files in ' + str(args.folder)}")
    print(f"  {f.decision_scores} decision scores of {m.decision.window_seconds:g} s ({f.independent_windows} "
          f"independent windows), median {calibration.median_score:.4f}, max {f.max_score:.4f}")
    print(f"  gamma fit shape {f.shape:.3g} scale {f.scale:.3g}: quantile {f.quantile} = {f.gamma_value:.4f}; "
          f"tail guard max x {f.margin:g} = {f.max_score * f.margin:.4f}")
    print(f"  threshold {calibration.threshold:.4f} (was {before.value:.4f}, {before.origin})")
    print(f"  simulated with {s.k_of_n[0]} of {s.k_of_n[1]}, min {s.min_duration_seconds:g} s, cooldown "
          f"{s.cooldown_seconds:g} s: {s.alarms} alarm(s) on the calibration audio; expected false alarms "
          f"{s.expected_false_alarms_per_day:.3g} per day (upper bound from the fit)")
    if m.threshold is not None:
        print(f"  note: monitors[{m.name}].threshold is set in the config and wins over this calibration")
    print(f"  written to {path}; `edge-monitor check` shows it, a running daemon applies it on SIGHUP")
    return 0
