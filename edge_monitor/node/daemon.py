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

import collections
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from edge_monitor import __version__
from edge_monitor.core.errors import UserError
from edge_monitor.core.events import Event
from edge_monitor.core.model import Bundle
from edge_monitor.core.monitor import Monitor
from edge_monitor.node.bundles import open_bundles
from edge_monitor.node.config import load
from edge_monitor.node.jsonl import JsonlWriter
from edge_monitor.node.log import configure
from edge_monitor.node.ring import RingBuffer
from edge_monitor.node.settings import MonitorSettings, Settings
from edge_monitor.node.systemd import Notifier

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


class Sink:
    """Where a monitor's output goes: the log, the JSON-lines file, MQTT. Thread-safe."""

    def __init__(self, settings: Settings, publisher, scada: list | None = None):
        self._lock = threading.Lock()
        self.publisher = publisher
        self.scada = scada or []  # Sparkplug, Home Assistant (node/scada.py): each never blocks
        self.jsonl = JsonlWriter(settings.events_jsonl) if settings.events_jsonl else None

    def event(self, event: Event) -> None:
        data = event.to_dict()
        fields = {"monitor": event.monitor, "id": event.id, "position_s": data["audio_position_s"]}
        if event.health is not None:
            fields.update(condition=event.health.condition, status=event.health.status,
                          message=event.health.message, decisions_suspended=event.decisions_suspended)
            level = "warning" if event.health.status == "bad" else "info"
        else:
            fields.update(score=data["score"], threshold=data["threshold"],
                          bands=[b.label() for b in event.bands])
            if event.anomaly is not None:
                fields.update(duration_s=data["anomaly"]["duration_s"], peak=data["anomaly"]["peak_score"],
                              reason=event.anomaly.reason)
            level = "warning" if event.type == "anomaly_start" else "info"
        getattr(log, level)(event.type, **fields)
        with self._lock:
            if self.jsonl is not None:
                self.jsonl.write(event)
            if self.publisher is not None:
                self.publisher.publish_event(event)
        for sink in self.scada:
            sink.event(event)

    def state(self, monitor: str, state: str, score: float | None, threshold: float) -> None:
        log.info("state", monitor=monitor, state=state)
        if self.publisher is not None:
            with self._lock:
                self.publisher.publish_state(monitor, state, score, threshold)
        for sink in self.scada:
            sink.state(monitor, state, score, threshold)

    def telemetry(self, monitor: str, values: dict) -> None:
        if self.publisher is not None:
            with self._lock:
                self.publisher.publish_telemetry(monitor, values)
        for sink in self.scada:
            sink.telemetry(monitor, values)

    def device(self, monitor: str, ok: bool) -> None:
        for sink in self.scada:
            sink.device(monitor, ok)

    def close(self) -> None:
        for sink in self.scada:
            sink.stop()
        if self.jsonl is not None:
            self.jsonl.close()


class Runner:
    """One monitor's processing thread: ring → (resampler) → Monitor → sink."""

    def __init__(self, settings: MonitorSettings, bundle: Bundle, node: str, ring: RingBuffer, capture,
                 sink: Sink, telemetry_seconds: float, block_seconds: float):
        from edge_monitor.core.resample import StreamResampler

        self.settings = settings
        self.name = settings.name
        self.bundle = bundle
        self.ring = ring
        self.capture = capture
        self.sink = sink
        self.telemetry_seconds = telemetry_seconds
        self.model_rate = bundle.params.sample_rate
        self.resampler = StreamResampler(capture.rate, self.model_rate) if capture.rate != self.model_rate else None
        self.monitor = Monitor(settings, bundle, node=node, source=f"mic:{capture.device_name}:{settings.channel}",
                               live=True)
        self._buf = np.empty(max(1, int(round(max(READ_SECONDS, block_seconds) * capture.rate))), dtype=np.float32)
        self._notices: collections.deque = collections.deque(maxlen=64)  # device lost/back notes, bounded
        self._stop = threading.Event()
        self._finish_reason = "shutdown"
        self.last_progress = time.monotonic()
        self.device_lost = False
        self._overflows = capture.overflows
        self._thread = threading.Thread(target=self._loop, name=f"monitor-{self.name}", daemon=True)

    def start(self) -> None:
        self.sink.state(self.name, self.monitor.state, None, self.monitor.threshold.value)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def device(self, ok: bool, message: str) -> None:
        """From the supervisor (main thread): the device was lost or is back."""
        self.device_lost = not ok
        self._notices.append((ok, message))

    def stop(self, reason: str, timeout: float = 1.0) -> None:
        self._finish_reason = reason
        self._stop.set()
        self._thread.join(timeout)

    def _emit(self, events: list[Event], state_before: str) -> None:
        for event in events:
            self.sink.event(event)
        state = self.monitor.state
        if state != state_before:
            self.sink.state(self.name, state, self.monitor.detector.last_score, self.monitor.threshold.value)

    def _loop(self) -> None:
        _name_thread(f"em:{self.name}")
        bound = log.bind(monitor=self.name)
        next_telemetry = time.monotonic() + self.telemetry_seconds
        try:
            while not self._stop.is_set():
                state = self.monitor.state
                events: list[Event] = []
                while self._notices:
                    ok, message = self._notices.popleft()
                    events += self.monitor.sensor_fault(not ok, message)
                    if self.resampler is not None:
                        self.resampler.reset()
                overflows = self.capture.overflows
                if overflows != self._overflows:
                    events += self.monitor.input_overflow(overflows - self._overflows)
                    self._overflows = overflows
                n, dropped = self.ring.read(self._buf)
                if n or dropped:
                    block = self._buf[:n]
                    if self.resampler is not None:
                        if dropped:
                            self.resampler.reset()
                        block = self.resampler.process(block)
                        dropped = int(round(dropped * self.model_rate / self.capture.rate))
                    events += self.monitor.process(block, dropped)
                    self.last_progress = time.monotonic()
                if events or self.monitor.state != state:
                    self._emit(events, state)
                now = time.monotonic()
                if now >= next_telemetry:
                    next_telemetry = now + self.telemetry_seconds
                    self.sink.telemetry(self.name, self.monitor.telemetry())
                if n < len(self._buf):  # the ring is empty now: sleep until more has arrived
                    self._stop.wait(POLL_SECONDS)
            for event in self.monitor.finish(self._finish_reason):
                self.sink.event(event)
            # no longer listening: the machine's state is unknown until this monitor runs again
            self.sink.state(self.name, "unknown", None, self.monitor.threshold.value)
        except Exception:  # a bug: log it; the watchdog sees a dead thread and systemd restarts us
            bound.exception("processing thread died")
            raise


def _name_thread(name: str) -> None:
    """Name the OS thread (``top -H``, ``/proc/<pid>/task/*/comm``; 15 bytes) — Linux only, best effort."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15] + b"\0", 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


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
    for m in settings.monitors:
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
        self.sink: Sink | None = None
        self.bundles: dict[str, Bundle] = {}
        self.groups: dict[str, DeviceGroup] = {}
        self.captures: dict[str, object] = {}
        self.rings: dict[str, RingBuffer] = {}
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
        self._start_publisher()
        try:
            for key, group in self.groups.items():
                self._start_group(key, group)
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

    def _start_publisher(self) -> None:
        mq = self.settings.mqtt
        self.publisher = None
        if mq.enabled:
            from edge_monitor.node.mqtt.publisher import Publisher

            monitors = [{"name": m.name, "model": self.bundles[m.name].name, "sha256": self.bundles[m.name].sha256}
                        for m in self.settings.monitors]
            self.publisher = Publisher(mq, self.settings.node, monitors=monitors)
            self.publisher.start()
        from edge_monitor.node.scada import start_scada

        self.sink = Sink(self.settings, self.publisher, start_scada(self.settings, self.bundles, self.publisher))

    def _start_group(self, key: str, group: DeviceGroup) -> None:
        from edge_monitor.node.mic import Capture

        capacity = int(group.ring_seconds * max(group.rate, MAX_RING_RATE))
        taps = []
        for name, channel in group.channels:
            self.rings[name] = RingBuffer(capacity)
            taps.append((channel, self.rings[name]))
        capture = Capture(group.device, group.rate, group.width, group.block_seconds, taps, name=key)
        capture.start()
        self.captures[key] = capture
        for name, _channel in group.channels:
            self._start_runner(name, capture)

    def _start_runner(self, name: str, capture) -> None:
        assert self.sink is not None
        m = self.settings.monitor(name)
        runner = Runner(m, self.bundles[name], self.settings.node, self.rings[name], capture, self.sink,
                        self.settings.mqtt.telemetry_seconds, self.settings.audio.block_seconds)
        self.runners[name] = runner
        runner.start()
        log.info("monitor started", monitor=name, model=runner.bundle.name, device=capture.device_name,
                 channel=m.channel, capture_rate=capture.rate, model_rate=runner.model_rate,
                 threshold=round(runner.monitor.threshold.value, 4), threshold_from=runner.monitor.threshold.origin)

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
        self.notifier.reloading()
        try:
            settings = load(self.config_path)
            bundles = open_bundles(settings)
            groups = plan(settings, bundles)
            _check_devices(g for key, g in groups.items() if self.groups.get(key) != g)
        except UserError as exc:
            log.error("reload rejected: keeping the running config", error=str(exc))
            self.notifier.ready(self._status())
            return
        old = self.settings
        self.settings, self.bundles = settings, bundles
        self._configure_logging()
        kept, restarted = [], []
        if settings.mqtt != old.mqtt or settings.node != old.node or settings.events_jsonl != old.events_jsonl or \
                (settings.sparkplug, settings.homeassistant) != (old.sparkplug, old.homeassistant) or \
                [m.name for m in settings.monitors] != [m.name for m in old.monitors]:
            # the publisher's identity changed: runners must write to the new sink
            for key in list(self.captures):
                self._stop_group(key, "reload")
            self._close_sink()
            self._start_publisher()
            self.groups = {}
        for key in list(self.groups):
            if key not in groups or groups[key] != self.groups[key]:
                self._stop_group(key, "reload")
        for key, group in groups.items():
            if key in self.captures:  # same device, same layout: swap only the monitors that changed
                for name, _ch in group.channels:
                    runner = self.runners[name]
                    if runner.settings == settings.monitor(name) and runner.bundle.sha256 == bundles[name].sha256:
                        kept.append(name)
                        continue
                    runner.stop("reload")
                    self._start_runner(name, self.captures[key])
                    restarted.append(name)
            else:
                self._start_group(key, group)
                restarted += [name for name, _ch in group.channels]
        self.groups = groups
        log.info("reload accepted", kept=kept, restarted=restarted)
        self.notifier.ready(self._status())

    def _stop_group(self, key: str, reason: str) -> None:
        capture = self.captures.pop(key, None)
        if capture is not None:
            capture.stop()
        for name, _ch in self.groups.get(key, DeviceGroup(None, 0, 0, 0, ())).channels:
            runner = self.runners.pop(name, None)
            if runner is not None:
                runner.stop(reason)
            self.rings.pop(name, None)

    def _close_sink(self) -> None:
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
        log.info("stopped", reason=reason)
