"""``edge-monitor replay FILE …``: WAV files through the daemon's own pipeline.

Each file is read from disk block by block (any WAV the training loader reads, any length in flat
memory), its channel picked, and run through the one loop the daemon runs (``core.loop.Loop``): the
same streaming resampler when the file's rate is not the model's, the same
:class:`~edge_monitor.core.monitor.Monitor`, the same sinks. Events go to ``--jsonl``; with
``--mqtt`` the events, the monitor's state and its telemetry are published exactly as the daemon
publishes them. A short summary per file goes to standard output. Exit code: 0 no anomaly, 1 an
anomaly, 2 an error.
"""

from __future__ import annotations

import argparse
import csv
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from edge_monitor import DEMO_DIR
from edge_monitor.core.detector import Threshold
from edge_monitor.core.errors import UserError
from edge_monitor.core.events import Event
from edge_monitor.core.loop import Loop, WavSource
from edge_monitor.core.model import Bundle, WindowScorer
from edge_monitor.core.monitor import REPLAY_BLOCK_SECONDS, Monitor
from edge_monitor.core.wav import parse_channel
from edge_monitor.node.bundles import open_bundles, replay_scorer, scoring_line
from edge_monitor.node.settings import AudioSettings, MonitorSettings, Settings
from edge_monitor.node.sinks import NodeSink

DEMO_BUNDLE = DEMO_DIR / "fan-id_00"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="WAV files to replay")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="a model bundle folder (default: the bundled demo model)")
    source.add_argument("--config", type=Path, help="a node config: replay through its monitors")
    parser.add_argument("--monitor", help="with --config: only this monitor")
    parser.add_argument("--channel", default=None,
                        help="with --model: channel of multi-channel files, index or 'mix' (default 0)")
    parser.add_argument("--threshold", type=float, help="with --model: decision threshold (default: the bundle's)")
    parser.add_argument("--jsonl", help="write every event as a JSON line to this file ('-': standard output)")
    parser.add_argument("--scores", type=Path, help="write per-file clip scores (DCASE mean window error) to this CSV")
    parser.add_argument("--realtime", action="store_true", help="pace the replay like a microphone")
    parser.add_argument("--block-seconds", type=float, default=None,
                        help=f"block size pushed into the pipeline (default {REPLAY_BLOCK_SECONDS:g} s, or the "
                             "config's audio block with --realtime); results do not depend on it")
    parser.add_argument("--mqtt", nargs="?", const="", metavar="URL",
                        help="also publish the events over MQTT: mqtt[s]://[user@]host[:port] (no URL: the config's "
                             "mqtt section); undelivered events stay in the outbox for the next run")
    parser.add_argument("--evidence", type=Path, metavar="DIR",
                        help="write each anomaly's audio (with its pre-roll) and a log-mel PNG into DIR/evidence/<monitor>/ "
                             "as the daemon does in its state folder; events carry evidence: {file, sha256, ...}")
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="write a picture of each file into DIR: <file stem>.html (self-contained: log-mel, "
                             "decision score against the threshold, anomaly and health spans, alerts, bands) and "
                             "<file stem>.png (the same figure; only where matplotlib is installed)")
    parser.add_argument("--node", help="node name in events (default: the config's, else this host's name)")
    parser.add_argument("--quiet", action="store_true", help="no per-file summary")


@dataclass
class FileResult:
    file: Path
    monitor: str
    duration_s: float = 0.0
    clip_score: float = float("nan")
    threshold: float = float("nan")  # the decision threshold the monitor used
    events: list[Event] = field(default_factory=list)
    error: str | None = None
    trace: object | None = None  # with --report: its core.report.Trace

    @property
    def anomalies(self) -> list[Event]:
        return [e for e in self.events if e.type == "anomaly_start"]


def _settings(args: argparse.Namespace) -> Settings:
    if args.config is not None:
        from edge_monitor.node.config import load

        settings = load(args.config)
        if args.channel is not None or args.threshold is not None:
            raise UserError("replay: --channel and --threshold go with --model; with --config they come from the "
                            "config's monitors")
        monitors = settings.monitors
        if args.monitor is not None:
            monitors = tuple(m for m in monitors if m.name == args.monitor)
            if not monitors:
                names = ", ".join(m.name for m in settings.monitors)
                raise UserError(f"replay: no monitor {args.monitor!r} in {args.config} (it has: {names})")
        node = args.node or settings.node
        return Settings(node=node, monitors=monitors, audio=settings.audio, mqtt=settings.mqtt, source=settings.source,
                        evidence=settings.evidence, state_dir=settings.state_dir)
    if args.monitor is not None:
        raise UserError("replay: --monitor goes with --config")
    model = args.model if args.model is not None else DEMO_BUNDLE
    channel = parse_channel(args.channel if args.channel is not None else 0)
    if args.threshold is not None and not args.threshold > 0:
        raise UserError(f"replay: --threshold must be > 0, got {args.threshold}")
    name = Bundle.load(model).name
    monitor = MonitorSettings(name=name, model=str(model), channel=channel, threshold=args.threshold)  # type: ignore[arg-type]
    return Settings(node=args.node or socket.gethostname(), monitors=(monitor,), audio=AudioSettings())


def replay_file(path: Path, settings: Settings, bundles: dict[str, Bundle], *, block_seconds: float,
                realtime: bool, sinks: list, scorers: dict[str, WindowScorer] | None = None,
                telemetry_seconds: float | None = None, evidence=None,  # noqa: ANN001
                calibrations: dict[str, Threshold] | None = None, report: bool = False) -> list[FileResult]:
    """Replay one file through every monitor with the one loop (``core.loop.Loop``) the daemon runs,
    the file read from disk block by block; returns one result per monitor. ``evidence``: an
    ``node.evidence.EvidenceWriter`` (``--evidence``) that records each anomaly's audio in front of ``sinks``;
    ``report``: keep each result's ``core.report.Trace`` (``--report``)."""
    results = []
    scorers = scorers if scorers is not None else {}
    calibrations = calibrations if calibrations is not None else {}
    for m in settings.monitors:
        bundle = bundles[m.name]
        result = FileResult(path, m.name)
        results.append(result)
        try:
            source = WavSource(path, m.channel, block_seconds, realtime=realtime)
        except UserError as exc:
            result.error = str(exc)
            continue
        result.duration_s = source.duration_s
        if source.duration_s < m.decision.window_seconds:
            source.close()
            result.error = (f"{path}: {result.duration_s:.2f} s of audio is shorter than the "
                            f"{m.decision.window_seconds:g}-s decision window of monitor {m.name}; replay at least "
                            f"{m.decision.window_seconds:g} s")
            continue
        if m.name not in scorers:
            scorers[m.name] = replay_scorer(bundle, m.name)
        monitor = Monitor(m, bundle, node=settings.node, source=source.label, live=False, keep_errors=True,
                          scorer=scorers[m.name], calibration=calibrations.get(m.name))
        result.threshold = monitor.threshold.value
        stage = evidence.stage(monitor, sinks) if evidence is not None else None
        loop = Loop(monitor, source, [stage] if stage else sinks, telemetry_seconds=telemetry_seconds,
                    taps=[stage] if stage else ())
        if stage is not None:
            stage.bind(loop)
        loop.keep_events = True
        try:
            loop.run()
        except UserError as exc:  # e.g. a NaN sample in the middle of a float file
            source.close()
            result.error = str(exc)
            continue
        if stage is not None:  # the clips of this file written: a storage problem is told before the next file
            evidence.flush()
            loop.late_notices()
        result.events = loop.events
        result.clip_score = monitor.clip_score()
        if report:
            from edge_monitor.core.report import trace_of

            result.trace = trace_of(monitor, loop.events, path.name, source.duration_s)
    return results


def _summary(result: FileResult, bundle: Bundle, out) -> None:
    name, threshold = result.file.name, result.threshold
    clip = "above" if result.clip_score > bundle.threshold else "below"
    print(f"{name}  {result.duration_s:.1f} s  monitor {result.monitor} ({bundle.name})", file=out)
    print(f"  clip score {result.clip_score:.4f} ({clip} the clip threshold {bundle.threshold:.4f}); "
          f"decision threshold {threshold:.4f}", file=out)
    ends = {e.id: e for e in result.events if e.type == "anomaly_end"}
    for start in result.anomalies:
        end = ends.get(start.id)
        info = (end or start).anomaly
        assert info is not None
        until = f"{end.audio_position_s:.1f} s" if end else "?"
        if end is not None and end.anomaly and end.anomaly.reason == "end_of_stream":
            until += " (end of file)"
        bands = ", ".join(b.label() for b in start.bands)
        print(f"  ANOMALY from {info.started_position_s:.1f} s (alert at {start.audio_position_s:.1f} s) to {until}: "
              f"peak {info.peak_score:.4f} = {info.peak_score / threshold:.2f}x threshold; bands {bands}", file=out)
    for e in result.events:
        if e.type == "health" and e.health is not None:
            print(f"  health at {e.audio_position_s:.1f} s: {e.health.condition} {e.health.status}: {e.health.message}",
                  file=out)
        elif e.machine_state is not None:
            print(f"  machine {e.machine_state.state} at {e.audio_position_s:.1f} s: {e.machine_state.message}",
                  file=out)
    if not result.anomalies:
        print("  no anomaly", file=out)


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    bundles = open_bundles(settings)
    if args.block_seconds is not None and not 0 < args.block_seconds <= 60:
        raise UserError(f"replay: --block-seconds must be in (0, 60], got {args.block_seconds}")
    block_seconds = args.block_seconds or (settings.audio.block_seconds if args.realtime else REPLAY_BLOCK_SECONDS)
    calibrations = _calibrations(settings, bundles) if args.config is not None else {}
    for path in args.files:
        if not path.is_file():
            raise UserError(f"{path}: no such file; give WAV files to replay")
    if args.jsonl and args.jsonl != "-" and Path(args.jsonl).is_dir():
        raise UserError(f"--jsonl {args.jsonl}: is a folder; give a file to append events to")
    publisher = _publisher(args, settings, bundles) if args.mqtt is not None else None
    try:
        sink = NodeSink(jsonl=args.jsonl, publisher=publisher, log_events=False)
    except OSError as exc:
        raise UserError(f"--jsonl {args.jsonl}: cannot open: {exc.strerror}") from None
    sinks: list = [sink]
    evidence = _evidence(args.evidence, settings) if args.evidence is not None else None
    report = _report_dir(args.report) if args.report is not None else None
    out = sys.stderr if args.jsonl == "-" else sys.stdout
    results: list[FileResult] = []
    scorers = {m.name: replay_scorer(bundles[m.name], m.name) for m in settings.monitors}
    if not args.quiet:
        for m in settings.monitors:
            print(f"{m.name} {scoring_line(scorers[m.name])}", file=out)
    try:
        for path in args.files:
            file_results = replay_file(path, settings, bundles, block_seconds=block_seconds,
                                       realtime=args.realtime, sinks=sinks, scorers=scorers,
                                       telemetry_seconds=settings.mqtt.telemetry_seconds if publisher else None,
                                       evidence=evidence, calibrations=calibrations, report=report is not None)
            for r in file_results:
                if r.error:
                    print(f"edge-monitor: error: {r.error}", file=sys.stderr)
                elif not args.quiet:
                    _summary(r, bundles[r.monitor], out)
                if report is not None and r.trace is not None:
                    _write_report(report, r, settings, bundles[r.monitor], None if args.quiet else out)
            results.extend(file_results)
    finally:
        if evidence is not None:
            evidence.close(timeout=600)  # every clip written and every event forwarded before the sinks close
        for sink in sinks:
            sink.close()
    undelivered = _drain(publisher) if publisher is not None else 0
    if args.scores:
        _write_scores(args.scores, results, bundles)
    if undelivered:
        print(f"edge-monitor: error: MQTT: {undelivered} message(s) not acknowledged by the broker "
              f"{publisher.settings.host}:{publisher.settings.port}; kept in {publisher.settings.outbox.path} for "
              "the next run",
              file=sys.stderr)
    if any(r.error for r in results) or undelivered:
        return 2
    return 1 if any(r.anomalies for r in results) else 0


def _evidence(folder: Path, settings: Settings):
    """The daemon's evidence recorder with ``folder`` as its state folder; stages wait for buffers (no clip lost)."""
    from edge_monitor.node.evidence import EvidenceWriter
    from edge_monitor.node.statedir import ensure_dir

    try:
        ensure_dir(folder)
    except OSError as exc:
        raise UserError(f"--evidence {folder}: cannot create it ({exc.strerror})") from None
    if not folder.is_dir():
        raise UserError(f"--evidence {folder}: is not a folder")
    writer = EvidenceWriter(folder, settings.evidence, blocking=True)
    writer.start()
    return writer


def _report_dir(folder: Path) -> Path:
    from edge_monitor.node.report import prepare

    try:
        return prepare(folder)
    except OSError as exc:
        raise UserError(f"--report {folder}: cannot create it ({exc.strerror})") from None


def _write_report(folder: Path, result: FileResult, settings: Settings, bundle: Bundle, out) -> None:  # noqa: ANN001
    """``--report``: the file's page (and PNG) in ``folder``; several monitors: one pair each."""
    from edge_monitor.node.report import write_report

    monitor = next(m for m in settings.monitors if m.name == result.monitor)
    stem = result.file.stem + (f".{result.monitor}" if len(settings.monitors) > 1 else "")
    try:
        files = write_report(folder, result.trace, result.file, monitor.channel, bundle.params, stem)
    except OSError as exc:
        raise UserError(f"--report {folder}: cannot write the report of {result.file.name} ({exc.strerror})") from None
    if out is not None:
        print(f"  report {files.html}" + (f" and {files.png.name}" if files.png else ""), file=out)


def _calibrations(settings: Settings, bundles: dict[str, Bundle]) -> dict[str, Threshold]:
    """The node calibrations of the config's monitors (``edge-monitor calibrate``); a refused one: one line."""
    from edge_monitor.node.calibration import node_calibration

    found = {}
    for m in settings.monitors:
        calibration = node_calibration(settings.state_dir, m, bundles[m.name].sha256)
        if calibration.refused:
            print(f"edge-monitor: warning: {calibration.refused}", file=sys.stderr)
        elif calibration.threshold is not None:
            found[m.name] = calibration.threshold
    return found


MQTT_DRAIN_SECONDS = 10.0
REPLAY_OUTBOX = Path.home() / ".cache" / "edge-monitor" / "replay-outbox.sqlite"


def _publisher(args: argparse.Namespace, settings: Settings, bundles: dict[str, Bundle]):
    """A publisher for ``--mqtt``: the config's mqtt section (or defaults) with the URL's broker on top."""
    from dataclasses import replace

    from edge_monitor.node.mqtt.connection import parse_url
    from edge_monitor.node.mqtt.publisher import Publisher

    mq = settings.mqtt
    if args.mqtt:
        mq = parse_url(args.mqtt, mq)
    elif args.config is None:
        raise UserError("replay: --mqtt without a URL takes the broker from --config; give a URL, e.g. "
                        "--mqtt mqtt://localhost")
    if args.config is None:  # no config: keep the outbox in the user's cache, not in /var/lib (the Outbox makes it 0750)
        mq = replace(mq, outbox=replace(mq.outbox, path=str(REPLAY_OUTBOX)))
    mq = replace(mq, enabled=True)
    monitors = [{"name": m.name, "model": bundles[m.name].name, "sha256": bundles[m.name].sha256}
                for m in settings.monitors]
    publisher = Publisher(mq, settings.node, monitors=monitors)  # the daemon's publisher: status, state, telemetry
    publisher.start()
    return publisher


def _drain(publisher) -> int:
    """Wait for the broker to acknowledge everything; returns how many messages are still queued."""
    publisher.wait_drained(MQTT_DRAIN_SECONDS)
    queued = publisher.stats()["queued"]
    publisher.stop(timeout=1.0)
    return queued


def _write_scores(path: Path, results: list[FileResult], bundles: dict[str, Bundle]) -> None:
    try:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "monitor", "model", "model_sha256", "duration_s", "clip_score", "clip_threshold",
                             "anomalies"])
            for r in results:
                if r.error:
                    continue
                b = bundles[r.monitor]
                writer.writerow([str(r.file), r.monitor, b.name, b.sha256, f"{r.duration_s:.3f}", repr(r.clip_score),
                                 repr(b.threshold), len(r.anomalies)])
    except OSError as exc:
        raise UserError(f"--scores {path}: cannot write: {exc.strerror}") from None
