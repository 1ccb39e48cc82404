"""Where a monitor's output goes on a node: the log, the JSON-lines file, MQTT. Replay and the daemon share it."""

from __future__ import annotations

import threading

import structlog

from edge_monitor.core.events import Event
from edge_monitor.node.jsonl import JsonlWriter

log = structlog.get_logger()


class NodeSink:
    """Fans a monitor's events, states and telemetry out to the log (``log_events``), a JSON-lines file,
    an MQTT publisher and the SCADA sinks (Sparkplug B, Home Assistant: ``node/scada.py``; each never
    blocks), all optional. Thread-safe: every processing thread writes to the same one."""

    def __init__(self, *, jsonl: str | None = None, publisher=None, log_events: bool = True,  # noqa: ANN001
                 scada: list | None = None):
        self._lock = threading.Lock()
        self.publisher = publisher
        self.log_events = log_events
        self.scada = list(scada or [])
        self.listeners: list = []  # sinks a reload does not replace (the page's event feed): events only
        self.jsonl = JsonlWriter(jsonl) if jsonl else None
        self.jsonl_lost = 0                    # events the JSON-lines file could not take (disk full, …)
        self.jsonl_failing: str | None = None  # the current reason, logged once per change

    def event(self, event: Event) -> None:
        if self.log_events:
            _log_event(event)
        with self._lock:
            if self.jsonl is not None:
                try:
                    self.jsonl.write(event)
                    if self.jsonl_failing:
                        self.jsonl_failing = None
                        log.info("events file writable again", file=self.jsonl.path, lost=self.jsonl_lost)
                except OSError as exc:  # a full or read-only disk costs the line, never the processing thread
                    self.jsonl_lost += 1
                    if self.jsonl_failing != exc.strerror:
                        self.jsonl_failing = exc.strerror
                        log.error("events file cannot be written; events still go to MQTT and the log",
                                  file=self.jsonl.path, error=exc.strerror)
            if self.publisher is not None:
                self.publisher.publish_event(event)
            scada = self.scada
        for sink in scada:
            sink.event(event)
        for listener in self.listeners:
            listener.event(event)

    def state(self, monitor: str, state: str, score: float | None, threshold: float) -> None:
        if self.log_events:
            log.info("state", monitor=monitor, state=state)
        with self._lock:
            if self.publisher is not None:
                self.publisher.publish_state(monitor, state, score, threshold)
            scada = self.scada
        for sink in scada:
            sink.state(monitor, state, score, threshold)

    def telemetry(self, monitor: str, values: dict) -> None:
        with self._lock:
            if self.publisher is not None:
                self.publisher.publish_telemetry(monitor, values)
            scada = self.scada
        for sink in scada:
            sink.telemetry(monitor, values)

    def device(self, monitor: str, ok: bool) -> None:
        """A monitor's device was lost (False) or is back (True): Sparkplug's DDEATH / DBIRTH."""
        for sink in self.scada:
            sink.device(monitor, ok)

    def rewire(self, *, jsonl: str | None, make_outputs) -> object:  # noqa: ANN001
        """A reload changed where output goes: under the lock (processing threads wait, their audio waits in
        the rings), stop the old publisher and SCADA sinks, start what ``make_outputs()`` returns
        (publisher or None, SCADA sinks), reopen the JSON-lines file. Nothing is written to a closed sink in
        between. Returns the new publisher."""
        with self._lock:
            for sink in self.scada:
                sink.stop()
            if self.publisher is not None:
                self.publisher.stop(timeout=1.0)
            self.publisher, self.scada = None, []
            self.publisher, self.scada = make_outputs()  # if it raises, the sink writes nowhere until the next rewire
            if self.jsonl is not None:
                self.jsonl.close()
            self.jsonl = JsonlWriter(jsonl) if jsonl else None
            return self.publisher

    def close(self) -> None:
        with self._lock:
            for sink in self.scada:
                sink.stop()
            self.scada = []
            if self.jsonl is not None:
                self.jsonl.close()
                self.jsonl = None


def _log_event(event: Event) -> None:
    data = event.to_dict()
    fields = {"monitor": event.monitor, "id": event.id, "position_s": data["audio_position_s"]}
    if event.health is not None:
        fields.update(condition=event.health.condition, status=event.health.status,
                      message=event.health.message, decisions_suspended=event.decisions_suspended)
        level = "warning" if event.health.status == "bad" else "info"
    elif event.machine_state is not None:  # machine_stopped / machine_running: the plant's business, not a fault
        fields.update(level_db=data["machine_state"]["level_db"], limit_db=data["machine_state"]["limit_db"],
                      since_s=data["machine_state"]["since_position_s"], message=event.machine_state.message)
        level = "info"
    else:
        fields.update(score=data["score"], threshold=data["threshold"], bands=[b.label() for b in event.bands])
        if event.anomaly is not None:
            fields.update(duration_s=data["anomaly"]["duration_s"], peak=data["anomaly"]["peak_score"],
                          reason=event.anomaly.reason)
        level = "warning" if event.type == "anomaly_start" else "info"
    getattr(log, level)(event.type, **fields)
