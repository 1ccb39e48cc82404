"""``edge-monitor run``: the daemon on the sensor node.

Threads: PortAudio's callbacks copy samples into one ring buffer per monitor (``mic.Capture``); one
processing thread per monitor reads its ring, resamples if the device could not capture at the
model's rate, and runs the same :class:`~edge_monitor.core.monitor.Monitor` replay uses; the MQTT
publisher has its own threads; the main thread supervises devices, pings the systemd watchdog,
updates ``STATUS=`` and handles signals. Every queue is bounded: the rings drop (and count) the
oldest samples, the MQTT outbox has ``max_messages``.

- Start: config and every bundle are validated and every device resolved before any stream opens;
  ``READY=1`` once audio flows (or after ``READY_TIMEOUT`` with the silent devices reported as
  sensor faults) and the broker connection has been attempted.
- Watchdog: ``WATCHDOG=1`` only while every monitor's thread is alive and processing audio, or is
  waiting for a device the supervisor already reported lost. A stream that stalls without the
  supervisor noticing stops the pings, and systemd restarts the service.
- SIGTERM / SIGINT: stop streams, close open anomalies (``anomaly_end``, reason ``shutdown``),
  flush to the outbox, publish ``offline``, exit 0.
- SIGHUP: reload config and bundles. A bad new config is rejected (logged as ``reload rejected``)
  and the old one keeps running. Monitors whose settings, bundle and device did not change keep
  running without a gap; changed ones restart (open anomalies end with reason ``reload``); a device
  whose channel layout or audio settings changed restarts its stream.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from edge_monitor import __version__
from edge_monitor.core.detector import Threshold, decision_threshold
from edge_monitor.core.errors import UserError
from edge_monitor.core.loop import Loop
from edge_monitor.core.model import Bundle
from edge_monitor.core.monitor import Monitor
from edge_monitor.node.bundles import open_bundles
from edge_monitor.node.calibration import node_calibration
from edge_monitor.node.config import load
from edge_monitor.node.evidence import EvidenceWriter
from edge_monitor.node.log import configure
from edge_monitor.node.ring import RingBuffer
from edge_monitor.node.settings import MonitorSettings, Settings
from edge_monitor.node.sinks import NodeSink
from edge_monitor.node.systemd import Notifier, name_thread

log = structlog.get_logger()

# A processing thread wakes this often and takes all the ring holds: each wake-up costs (70-90 µs of
# CPU measured on the CI VM), so 10 per second rather than one per 64-ms block; it adds at most
# 0.1 s to a 1-s decision window.
POLL_SECONDS = 0.1
READ_SECONDS = 0.5         # read buffer: more than one poll interval of audio
SUPERVISE_SECONDS = 0.5    # main loop period: device supervision, watchdog, signals
STATUS_SECONDS = 10.0
READY_TIMEOUT = 10.0       # seconds to wait for the first audio before READY=1 anyway
STALL_SECONDS = 5.0        # a monitor that processed nothing this long (device not known lost) is stalled
MAX_RING_RATE = 48_000     # rings are sized for this rate in case a device must capture above the model's


class Runner:
    """One monitor's processing thread: the one loop (``core.loop.Loop``) on a ``MicSource``."""

    def __init__(self, monitor: Monitor, ring: RingBuffer, capture, sink: NodeSink, telemetry_seconds: float,
                 block_seconds: float, *, device_lost: bool = False, lost_message: str = "",
                 evidence: EvidenceWriter | None = None):
        from edge_monitor.node.mic import MicSource

        settings = monitor.settings
        self.settings = settings
        self.name = settings.name
        self.bundle = monitor.bundle
        self.ring = ring
        self.capture = capture
        self._stop = threading.Event()
        self._finish_reason = "shutdown"
        self.source = MicSource(capture, ring, settings.channel, read_seconds=max(READ_SECONDS, block_seconds),
                                poll_seconds=POLL_SECONDS, wake=self._stop, device_lost=device_lost,
                                lost_message=lost_message)
        self.monitor = monitor
        # evidence (node/evidence.py): a stage in front of the sink that records each anomaly's audio
        stage = evidence.stage(monitor, [sink]) if evidence is not None else None
        self.loop = Loop(monitor, self.source, [stage or sink], telemetry_seconds=telemetry_seconds,
                         taps=[stage] if stage else ())
        if stage is not None:
            stage.bind(self.loop)
        self.model_rate = monitor.params.sample_rate
        self._thread = threading.Thread(target=self._run, name=f"monitor-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def device_lost(self) -> bool:
        return self.source.device_lost

    @property
    def last_progress(self) -> float:
        return self.loop.last_progress

    def device(self, ok: bool, message: str) -> None:
        """From the supervisor (main thread): the device was lost or is back."""
        self.source.device(ok, message)

    def stop(self, reason: str, timeout: float = 1.0) -> bool:
        """Stop the thread (its open anomaly ends with ``reason``); False if it did not end within ``timeout``."""
        self._finish_reason = reason
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _stopping(self) -> str | None:
        return self._finish_reason if self._stop.is_set() else None

    def _run(self) -> None:
        name_thread(f"em:{self.name}")
        try:
            self.loop.run(self._stopping)
        except Exception:  # a bug: log it; the watchdog sees a dead thread and systemd restarts us
            log.bind(monitor=self.name).exception("processing thread died")
            raise


@dataclass
class _Reload:
    """A reload, prepared: the new set built, the old one remembered."""

    settings: Settings
    bundles: dict[str, Bundle]
    groups: dict[str, DeviceGroup]
    kept: list[str]                  # monitors that keep running untouched
    retuned: dict[str, Threshold]    # kept monitors whose threshold changed (a new node calibration)
    monitors: dict[str, Monitor]     # the new monitors, built
    old_settings: Settings
    old_bundles: dict[str, Bundle]
    old_groups: dict[str, DeviceGroup]


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


@dataclass(frozen=True)
class DeviceGroup:
    """Monitors that share one device (one input stream)."""

    device: str | int | None
    rate: int
    block_seconds: float
    ring_seconds: float
    channels: tuple[tuple[str, int], ...]  # (monitor name, channel)

    @property
    def width(self) -> int:
        return max(ch for _, ch in self.channels) + 1


def _check_devices(groups) -> None:
    """Every device exists and has the channels its monitors use (one line naming it otherwise)."""
    from edge_monitor.node.mic import resolve_device

    for group in groups:
        resolve_device(group.device, group.width)


def plan(settings: Settings, bundles: dict[str, Bundle]) -> dict[str, DeviceGroup]:
    groups: dict[str, list[MonitorSettings]] = {}
    for i, m in enumerate(settings.monitors):
        if not isinstance(m.channel, int):
            raise UserError(f"monitors[{i}].channel: 'mix' is for replaying files; a microphone monitor needs a "
                            "channel index (0, 1, ...)")
        device = m.device if m.device is not None else settings.audio.device
        groups.setdefault(repr(device), []).append(m)
    result = {}
    for key, monitors in groups.items():
        device = monitors[0].device if monitors[0].device is not None else settings.audio.device
        rate = settings.audio.sample_rate or max(bundles[m.name].params.sample_rate for m in monitors)
        result[key] = DeviceGroup(device, rate, settings.audio.block_seconds, settings.audio.ring_seconds,
                                  tuple((m.name, m.channel) for m in monitors))
    return result


class Daemon:
    def __init__(self, config_path: Path, settings: Settings, *, log_format: str | None = None,
                 log_level: str | None = None):
        self.config_path = config_path
        self.settings = settings
        self._log_overrides = (log_format, log_level)  # command-line flags win over the config's logging
        self._configure_logging()
        self.notifier = Notifier()
        self.publisher = None
        self.sink: NodeSink | None = None
        self.evidence: EvidenceWriter | None = None  # one writer thread for the node's life (a reload keeps it)
        self.live = None    # node.web.live.LiveView when http.enabled: what the page and /metrics show
        self.web = None     # node.web.server.WebServer
        self.bundles: dict[str, Bundle] = {}
        self.groups: dict[str, DeviceGroup] = {}
        self.captures: dict[str, object] = {}
        self.runners: dict[str, Runner] = {}
        self._wake = threading.Event()
        self._stop = False
        self._reload = False
        self._stalled: list[str] = []  # monitors last reported stalled (logged once per change)

    def _configure_logging(self) -> None:
        fmt, level = self._log_overrides
        configure(fmt or self.settings.logging.format, level or self.settings.logging.level)

    # --- signals ------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True
        self._wake.set()

    # --- life cycle ---------------------------------------------------------------------------
    def run(self) -> int:
        started = time.monotonic()
        self.bundles = open_bundles(self.settings)
        self.groups = plan(self.settings, self.bundles)
        _check_devices(self.groups.values())  # before anything opens
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        monitors = self._build_monitors(self.settings, self.bundles, self.groups,
                                        {m.name for m in self.settings.monitors})
        self._start_publisher()
        try:
            self._start_web()
            for key, group in self.groups.items():
                self._start_group(key, group, monitors)
        except UserError:
            self._shutdown("startup failed")
            raise
        self._wait_for_audio()
        log.info("running", monitors=len(self.runners), devices=len(self.captures), version=__version__,
                 startup_s=round(time.monotonic() - started, 2), config=str(self.config_path))
        self.notifier.ready(self._status())
        next_status = time.monotonic() + STATUS_SECONDS
        while not self._stop:
            self._wake.wait(SUPERVISE_SECONDS)
            self._wake.clear()
            if self._reload:
                self._reload = False
                self._do_reload()
            self._supervise()
            self._watchdog()
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_SECONDS
                self.notifier.status(self._status())
        self._shutdown("shutdown")
        return 0

    def _new_outputs(self) -> tuple[object, list]:
        """The MQTT publisher (or None) and the SCADA sinks (Sparkplug B, Home Assistant) the settings enable."""
        from edge_monitor.node.scada import start_scada

        mq = self.settings.mqtt
        publisher = None
        if mq.enabled:
            from edge_monitor.node.mqtt.publisher import Publisher

            publisher = Publisher(mq, self.settings.node, monitors=self._monitor_list(), on_storage=self._on_storage)
            publisher.start()
        try:
            scada = start_scada(self.settings, self.bundles, publisher)
        except BaseException:
            if publisher is not None:
                publisher.stop(timeout=1.0)
            raise
        return publisher, scada

    @staticmethod
    def _calibration(settings: Settings, name: str, bundle: Bundle) -> Threshold | None:
        """The node calibration of monitor ``name`` (a refused file: one warning, the bundle threshold)."""
        found = node_calibration(settings.state_dir, settings.monitor(name), bundle.sha256)
        if found.refused:
            log.warning("calibration refused", monitor=name, reason=found.refused)
        return found.threshold

    def _on_storage(self, state) -> None:  # noqa: ANN001 - node.mqtt.outbox.StorageState
        """The outbox cannot store (or can again): every monitor says so with a ``storage`` health event."""
        for runner in list(self.runners.values()):
            runner.loop.storage_notice(state.ok, state.reason or "the MQTT outbox stores messages again")

    def _start_publisher(self) -> None:
        self.publisher, scada = self._new_outputs()
        self.sink = NodeSink(jsonl=self.settings.events_jsonl, publisher=self.publisher, scada=scada)
        if self.settings.evidence.enabled:
            self.evidence = EvidenceWriter(self.settings.state_dir, self.settings.evidence)
            self.evidence.start()

    def _start_web(self) -> None:
        """The node's page (``http.enabled``): its own thread; the token is read now, a bad one stops the start."""
        http = self.settings.http
        if not http.enabled:
            return
        from edge_monitor.node.web.live import LiveView
        from edge_monitor.node.web.server import WebServer, read_token

        token = read_token(http.token_file) if http.token_file else None
        self.live = LiveView(self)
        assert self.sink is not None
        self.sink.listeners.append(self.live.feed)
        self.web = WebServer(self.live, bind=http.bind, port=http.port, token=token, healthy=self.healthy,
                             state_dir=self.settings.state_dir)
        self.web.start()

    def _build_monitors(self, settings: Settings, bundles: dict[str, Bundle], groups: dict[str, DeviceGroup],
                        names: set[str]) -> dict[str, Monitor]:
        """Every Monitor in ``names``, complete (interpreter, threshold, state machine), before anything
        is stopped or opened; raises what building one raises."""
        from edge_monitor.node.mic import resolve_device

        built = {}
        for key, group in groups.items():
            device = self.captures[key].device_name if key in self.captures and self.groups.get(key) == group \
                else resolve_device(group.device, group.width).name
            for name, channel in group.channels:
                if name in names:
                    built[name] = Monitor(settings.monitor(name), bundles[name], node=settings.node,
                                          source=f"mic:{device}:{channel}", live=True,
                                          calibration=self._calibration(settings, name, bundles[name]))
        return built

    def _start_group(self, key: str, group: DeviceGroup, monitors: dict[str, Monitor]) -> None:
        from edge_monitor.node.mic import Capture

        capacity = int(group.ring_seconds * max(group.rate, MAX_RING_RATE))
        rings = {name: RingBuffer(capacity) for name, _channel in group.channels}
        capture = Capture(group.device, group.rate, group.width, group.block_seconds,
                          [(channel, rings[name]) for name, channel in group.channels], name=key)
        capture.start()
        self.captures[key] = capture
        for name, _channel in group.channels:
            self._start_runner(monitors[name], rings[name], capture)

    def _start_runner(self, monitor: Monitor, ring: RingBuffer, capture, *, device_lost: bool = False,
                      lost_message: str = "") -> None:
        assert self.sink is not None
        name, m = monitor.name, monitor.settings
        runner = Runner(monitor, ring, capture, self.sink, self.settings.mqtt.telemetry_seconds,
                        self.settings.audio.block_seconds, device_lost=device_lost, lost_message=lost_message,
                        evidence=self.evidence)
        self.runners[name] = runner
        if self.live is not None:
            self.live.attach(monitor)
        runner.start()
        log.info("monitor started", monitor=name, model=runner.bundle.name, device=capture.device_name,
                 channel=m.channel, capture_rate=capture.rate, model_rate=runner.model_rate,
                 threshold=round(monitor.threshold.value, 4), threshold_from=monitor.threshold.origin,
                 device_lost=device_lost)

    def _wait_for_audio(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and not self._stop:
            if all(c.frames > 0 for c in self.captures.values()):
                return
            time.sleep(0.05)
        for key, c in self.captures.items():
            if c.frames == 0:
                log.error("no audio from device yet", device=c.device_name, waited_s=READY_TIMEOUT)

    def _supervise(self) -> None:
        for key, capture in self.captures.items():
            for ok, message in capture.supervise():
                (log.info if ok else log.error)("device " + ("back" if ok else "lost"), device=capture.device_name,
                                                message=message)
                for name, _ch in self.groups[key].channels:
                    if name in self.runners:
                        self.runners[name].device(ok, message)
                        if self.sink is not None:
                            self.sink.device(name, ok)

    def healthy(self) -> bool:
        now = time.monotonic()
        return all(r.alive and (r.device_lost or now - r.last_progress < STALL_SECONDS) for r in self.runners.values())

    def _watchdog(self) -> None:
        if self.healthy():
            self.notifier.watchdog()
            if self._stalled:
                log.info("monitors processing again: watchdog pings resumed", monitors=self._stalled)
                self._stalled = []
            return
        now = time.monotonic()
        stalled = [n for n, r in self.runners.items() if not r.alive or now - r.last_progress >= STALL_SECONDS]
        if stalled != self._stalled:
            log.error("monitors stalled: not pinging the watchdog (systemd will restart the service)",
                      monitors=stalled)
            self._stalled = stalled

    def _status(self) -> str:
        parts = []
        for name, r in self.runners.items():
            score = r.monitor.detector.last_score
            shown = f"{score:.3f}" if math.isfinite(score) else "-"
            parts.append(f"{name} {r.monitor.state} {shown}/{r.monitor.threshold.value:.3f}")
        text = "; ".join(parts)
        if self.publisher is not None:
            stats = self.publisher.stats()
            text += f"; mqtt {'connected' if stats['connected'] else 'disconnected'}, {stats['queued']} queued"
        return text

    # --- reload -------------------------------------------------------------------------------
    def _do_reload(self) -> None:
        """SIGHUP: everything new is built and checked before anything old is stopped; any failure leaves
        the running set as it is and logs ``reload rejected: <one line>``."""
        self.notifier.reloading()
        try:
            change = self._prepare_reload()
        except Exception as exc:  # noqa: BLE001 - whatever fails, the running set stays
            log.error("reload rejected: keeping the running config", error=_one_line(exc))
            if not isinstance(exc, UserError):
                log.debug("reload rejected", exc_info=True)
            self.notifier.ready(self._status())
            return
        try:
            self._apply_reload(change)
        except UserError as exc:  # a stream that would not open: back to the old set
            log.error("reload rejected: keeping the running config", error=_one_line(exc))
            self._restore(change)
        self.notifier.ready(self._status())

    def _prepare_reload(self) -> _Reload:
        settings = load(self.config_path)
        bundles = open_bundles(settings)
        groups = plan(settings, bundles)
        _check_devices(g for key, g in groups.items() if self.groups.get(key) != g)
        if settings.mqtt.enabled and (settings.mqtt != self.settings.mqtt or settings.node != self.settings.node):
            from edge_monitor.node.mqtt.connection import read_password, ssl_context

            read_password(settings.mqtt)  # what the new publisher will need, checked now
            if settings.mqtt.tls is not None:
                ssl_context(settings.mqtt.tls)
        if settings.events_jsonl and settings.events_jsonl != self.settings.events_jsonl:
            NodeSink(jsonl=settings.events_jsonl).close()  # can it be opened?
        if settings.sparkplug.enabled:  # where bdSeq and the store-and-forward outbox will live
            state_dir = Path(settings.sparkplug.state_dir)
            try:
                state_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"sparkplug.state_dir {state_dir}: cannot create it ({exc.strerror})") from None
            if not os.access(state_dir, os.W_OK):
                raise UserError(f"sparkplug.state_dir {state_dir}: not writable by this user")
        kept, fresh = [], set()
        for key, group in groups.items():
            for name, _ch in group.channels:
                runner = self.runners.get(name)
                same = (runner is not None and self.groups.get(key) == group and key in self.captures
                        and runner.settings == settings.monitor(name) and runner.bundle.sha256 == bundles[name].sha256
                        and settings.node == self.settings.node)
                (kept.append if same else fresh.add)(name)
        retuned = {}
        for name in kept:  # a new calibration alone: applied to the running monitor, no restart, no gap
            m = settings.monitor(name)
            threshold = decision_threshold(bundles[name].manifest, m.decision.window_seconds, m.threshold,
                                           self._calibration(settings, name, bundles[name]))
            if threshold != self.runners[name].monitor.threshold:
                retuned[name] = threshold
        monitors = self._build_monitors(settings, bundles, groups, fresh)
        return _Reload(settings, bundles, groups, kept, retuned, monitors, self.settings, self.bundles, self.groups)

    def _apply_reload(self, change: _Reload) -> None:
        old, settings = self.settings, change.settings
        self.settings, self.bundles = settings, change.bundles
        self._configure_logging()
        if self.evidence is not None:  # the same writer: monitors started from now on, and retention, use these
            self.evidence.settings = settings.evidence
        names_changed = [m.name for m in settings.monitors] != [m.name for m in old.monitors]
        if (settings.mqtt != old.mqtt or settings.node != old.node or settings.events_jsonl != old.events_jsonl
                or (settings.sparkplug, settings.homeassistant) != (old.sparkplug, old.homeassistant)
                or (names_changed and (settings.sparkplug.enabled or settings.homeassistant.enabled))):
            assert self.sink is not None  # runners keep writing to the same NodeSink: rewire what it feeds
            self.publisher = self.sink.rewire(jsonl=settings.events_jsonl, make_outputs=self._new_outputs)
        elif self.publisher is not None and names_changed:
            self.publisher.announce(self._monitor_list())
        for name, threshold in change.retuned.items():
            self.runners[name].monitor.set_threshold(threshold)
            log.info("threshold applied", monitor=name, threshold=round(threshold.value, 4),
                     threshold_from=threshold.origin)
        for key in list(self.groups):
            if key not in change.groups or change.groups[key] != self.groups[key]:
                self._stop_group(key, "reload")
        restarted = []
        for key, group in change.groups.items():
            if key in self.captures:  # same device, same layout: swap only the monitors that changed
                capture = self.captures[key]
                for name, _ch in group.channels:
                    if name in change.kept:
                        continue
                    runner = self.runners.pop(name)
                    runner.stop("reload")
                    ring = RingBuffer(runner.ring.capacity)  # the old thread may still read the old one
                    capture.replace_tap(runner.ring, ring)
                    self._start_runner(change.monitors[name], ring, capture, device_lost=capture.lost,
                                       lost_message="device lost before the reload")
                    restarted.append(name)
            else:
                self.groups[key] = group
                self._start_group(key, group, change.monitors)
                restarted += [name for name, _ch in group.channels]
        self.groups = change.groups
        log.info("reload accepted", kept=change.kept, restarted=restarted)

    def _restore(self, change: _Reload) -> None:
        """A new stream failed to open after old ones were stopped: start the old set again."""
        for key in list(self.captures):
            if key not in change.old_groups or change.old_groups[key] != change.groups.get(key):
                self._stop_group(key, "reload")
        rewired = self.settings.mqtt != change.old_settings.mqtt or self.settings.node != change.old_settings.node \
            or self.settings.events_jsonl != change.old_settings.events_jsonl or self.publisher is None
        self.settings, self.bundles, self.groups = change.old_settings, change.old_bundles, change.old_groups
        self._configure_logging()
        if rewired and self.sink is not None:
            self.publisher = self.sink.rewire(jsonl=self.settings.events_jsonl, make_outputs=self._new_outputs)
        missing = {name for key, g in self.groups.items() if key not in self.captures for name, _ch in g.channels}
        monitors = self._build_monitors(self.settings, self.bundles, self.groups, missing)
        for key, group in self.groups.items():
            if key not in self.captures:
                self._start_group(key, group, monitors)

    def _monitor_list(self) -> list[dict]:
        return [{"name": m.name, "model": self.bundles[m.name].name, "sha256": self.bundles[m.name].sha256}
                for m in self.settings.monitors]

    def _stop_group(self, key: str, reason: str) -> None:
        capture = self.captures.pop(key, None)
        if capture is not None:
            capture.stop()
        group = self.groups.get(key)
        for name, _ch in (group.channels if group is not None else ()):
            runner = self.runners.pop(name, None)
            if runner is not None:
                runner.stop(reason)

    def _close_sink(self) -> None:
        if self.evidence is not None and not self.evidence.close(timeout=5.0):  # its queue goes into the sink
            log.error("evidence writer did not finish in 5 s: clips still queued are lost")
        if self.sink is not None:
            self.sink.close()
        if self.publisher is not None:
            self.publisher.stop(timeout=1.0)
            self.publisher = None

    def _shutdown(self, reason: str) -> None:
        self.notifier.stopping()
        for capture in self.captures.values():
            capture.stop()
        for runner in self.runners.values():
            runner.stop(reason, timeout=0.5)
        self._close_sink()
        if self.web is not None:
            self.web.stop()
        log.info("stopped", reason=reason)
