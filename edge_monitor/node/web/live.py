"""What the node's page and ``/metrics`` see: snapshots the processing threads publish, and the event feed.

The processing thread's only cost is :meth:`SpectrumRing.observe` (``Monitor.observer``): copy a block's
new log-mel rows into a preallocated ring under a lock held for that copy. Everything else (score, state,
level, threshold) is read by the server thread from the Monitor's attributes, which are plain floats and
strings replaced whole (reading them needs no lock), and the 10-minute score history is sampled by the
server thread once a second. Events reach :class:`EventFeed` as one more sink of the daemon's
``NodeSink``: a bounded deque under a lock; the server is woken through its event loop, never waited for.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_monitor.core.events import Event

SPECTRUM_ROWS = 1024     # log-mel rows kept per monitor (33 s at a 32-ms hop): the page shows the newest
HISTORY_SECONDS = 600    # the score chart's span: one point a second
FEED_ROWS = 500          # events kept for /api/events


class SpectrumRing:
    """The newest log-mel rows of one monitor, numbered from 0 since the daemon started."""

    def __init__(self, n_mels: int, capacity: int = SPECTRUM_ROWS):
        self._rows = np.zeros((capacity, n_mels), dtype=np.float32)
        self._lock = threading.Lock()
        self.count = 0  # rows written so far

    def observe(self, frames: np.ndarray) -> None:
        """From the processing thread (``Monitor.observer``): the block's new frames, copied."""
        cap = len(self._rows)
        n = len(frames)
        if n > cap:
            frames = frames[-cap:]
        with self._lock:
            at = self.count % cap
            first = min(len(frames), cap - at)
            self._rows[at : at + first] = frames[:first]
            if first < len(frames):
                self._rows[: len(frames) - first] = frames[first:]
            self.count += n

    def since(self, frame: int, limit: int = 256) -> tuple[int, np.ndarray]:
        """(the number of the row after the last one, the rows from ``frame`` on — at most ``limit``, the newest)."""
        cap = len(self._rows)
        with self._lock:
            count = self.count
            start = max(frame, count - min(cap, limit), 0)
            idx = np.arange(start, count) % cap
            rows = self._rows[idx].copy()
        return count, rows


class MonitorView:
    """One monitor as the page sees it; survives a reload that replaces the Monitor (same name)."""

    def __init__(self, name: str):
        self.name = name
        self.monitor = None  # core.monitor.Monitor, replaced by attach()
        self.spectrum: SpectrumRing | None = None
        self.history: collections.deque = collections.deque(maxlen=HISTORY_SECONDS)
        self.anomalies_total = 0  # anomaly_start events seen by this process
        self._invokes = 0         # of monitors replaced by a reload (the counters go on)
        self._invoke_seconds = 0.0

    def attach(self, monitor) -> None:
        if self.monitor is not None and self.monitor is not monitor:
            self._invokes += self.monitor.scorer.invokes
            self._invoke_seconds += self.monitor.scorer.invoke_seconds
        n_mels = monitor.params.n_mels
        if self.spectrum is None or self.spectrum._rows.shape[1] != n_mels:
            self.spectrum = SpectrumRing(n_mels)
        self.monitor = monitor
        monitor.observer = self.spectrum.observe

    def inference(self) -> tuple[int, float]:
        """Interpreter calls and seconds spent in them, this process."""
        scorer = self.monitor.scorer
        return self._invokes + scorer.invokes, self._invoke_seconds + scorer.invoke_seconds

    def sample(self, now: float) -> None:
        """Server thread, once a second: a point of the score history."""
        point = self.point(now)
        if point[1] is not None:
            self.history.append(point)

    def point(self, now: float) -> list:
        m = self.monitor
        return [round(now, 3), _finite(m.detector.last_score), _finite(m.threshold.value)]

    def snapshot(self) -> dict:
        m = self.monitor
        health = m.health
        try:
            bad = health.bad_conditions
        except RuntimeError:  # the processing thread changed the conditions while we read them: ask again
            bad = health.bad_conditions
        invokes, seconds = self.inference()
        return {
            "name": self.name,
            "machine_type": m.bundle.machine_type,
            "machine_id": m.bundle.machine_id,
            "state": m.state if m.state != "unknown" else "starting",
            "score": _finite(m.detector.last_score),
            "threshold": _finite(m.threshold.value),
            "level_dbfs": _finite(health.level_dbfs),
            "clip_fraction": _finite(health.clip_fraction),
            "drops": int(health.drops_total),
            "health": bad,
            "anomalies_total": self.anomalies_total,
            "inference_ms": round(seconds / invokes * 1000, 4) if invokes else None,
            "n_mels": m.params.n_mels,
            "frame_seconds": m.params.hop_length / m.params.sample_rate,
        }


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


class EventFeed:
    """A sink of the daemon's ``NodeSink``: every event, numbered, the newest ``FEED_ROWS`` kept.

    ``on_row`` (set by the server) is called with each new row from the thread that emitted the event; it
    must not block (the server hands it to its event loop)."""

    def __init__(self, views: dict[str, MonitorView]):
        self._lock = threading.Lock()
        self._rows: collections.deque = collections.deque(maxlen=FEED_ROWS)
        self._seq = 0
        self._views = views
        self.on_row: Callable[[dict], None] | None = None

    def event(self, event: Event) -> None:
        row = event.to_dict()
        if event.evidence is not None:
            row["evidence"] = dict(row["evidence"], wav=f"/evidence/{event.id}.wav", png=f"/evidence/{event.id}.png")
        with self._lock:
            self._seq += 1
            row["seq"] = self._seq
            self._rows.append(row)
            view = self._views.get(event.monitor)
            if view is not None and event.type == "anomaly_start":
                view.anomalies_total += 1
        if self.on_row is not None:
            self.on_row(row)

    def since(self, seq: int | None, limit: int = 200) -> tuple[list[dict], int]:
        with self._lock:
            rows = list(self._rows)
            last = self._seq
        if seq is None:
            return rows[-100:], last
        return [r for r in rows if r["seq"] > seq][:limit], last

    # the rest of the sink protocol: states and telemetry are read from the monitors themselves
    def state(self, monitor: str, state: str, score: float | None, threshold: float) -> None:
        pass

    def telemetry(self, monitor: str, values: dict) -> None:
        pass

    def device(self, monitor: str, ok: bool) -> None:
        pass


class LiveView:
    """Everything the server shows, built from the daemon (``node/daemon.py``) it is given."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.views: dict[str, MonitorView] = {}
        self.feed = EventFeed(self.views)
        self.started = time.time()
        self._disk = (0.0, 0)  # (when measured, evidence bytes)

    def attach(self, monitor) -> None:
        view = self.views.get(monitor.name)
        if view is None:
            view = self.views[monitor.name] = MonitorView(monitor.name)
        view.attach(monitor)

    def current(self) -> list[MonitorView]:
        """The views of the monitors running now (a reload may have removed some)."""
        names = list(self.daemon.runners)
        return [self.views[n] for n in names if n in self.views and self.views[n].monitor is not None]

    def sample(self) -> None:
        now = time.time()
        for view in self.current():
            view.sample(now)

    def mqtt(self) -> dict:
        publisher = self.daemon.publisher
        if publisher is None:
            return {"enabled": False, "connected": False, "outbox_depth": 0, "published": 0, "dropped": 0}
        stats = publisher.stats()
        return {"enabled": True, "connected": bool(stats["connected"]), "outbox_depth": int(stats["queued"]),
                "published": int(sum(stats["published"].values())), "dropped": int(sum(stats["dropped"].values()))}

    def evidence_bytes(self) -> int:
        """Bytes under ``<state_dir>/evidence`` (measured at most every 10 s)."""
        when, size = self._disk
        if time.monotonic() - when < 10.0 and when:
            return size
        total = 0
        root = Path(self.daemon.settings.state_dir) / "evidence"
        try:
            for monitor in root.iterdir():
                if monitor.is_dir():
                    total += sum(entry.stat().st_size for entry in _files(monitor))
        except OSError:
            pass
        self._disk = (time.monotonic(), total)
        return total

    def state(self, *, history: bool) -> dict:
        monitors = []
        now = time.time()
        for view in self.current():
            snap = view.snapshot()
            if history:
                snap["history"] = list(view.history)
            else:
                snap["point"] = view.point(now)
            monitors.append(snap)
        storage_bad = any("storage" in m["health"] for m in monitors)
        from edge_monitor import __version__

        return {"node": self.daemon.settings.node, "version": __version__, "time": round(now, 3),
                "mqtt": self.mqtt(), "storage": {"ok": not storage_bad, "evidence_bytes": self.evidence_bytes()},
                "monitors": monitors}


def _files(folder: Path):
    import os

    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                yield entry
