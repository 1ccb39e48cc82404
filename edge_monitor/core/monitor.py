"""One monitored machine: blocks of samples in, events out.

``Monitor.process(block)`` runs the whole chain of the design guide — streaming log-mel, window
stacking, int8 scoring, sensor health, the alert state machine — for any block size. Replay feeds
it blocks of a file and scores windows in batches; the daemon feeds it what the ring buffer holds
and scores one window at a time. Nothing here knows which of the two it serves, and both give the
same window errors (``WindowScorer`` is bit-identical for any batch size).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from edge_monitor.core.detector import (
    ANOMALY,
    SUSPENDED,
    Detector,
    Threshold,
    decision_threshold,
    explain_bands,
)
from edge_monitor.core.events import Band, Event, Origin
from edge_monitor.core.features import StreamingLogMel, mel_band_edges, windows
from edge_monitor.core.health import Health
from edge_monitor.core.machine import MachineWatch
from edge_monitor.core.model import Bundle, WindowScorer
from edge_monitor.core.settings import MonitorSettings

LIVE_BATCH = 1     # the daemon scores each window as it completes
REPLAY_BATCH = 64          # windows per interpreter call in replay (measured best of 1..256 on 10-s clips)
REPLAY_BLOCK_SECONDS = 8.0  # replay pushes files in blocks this long: fewer calls, same results


class Monitor:
    def __init__(self, settings: MonitorSettings, bundle: Bundle, *, node: str, source: str, live: bool,
                 keep_errors: bool = False, scorer: WindowScorer | None = None,
                 calibration: Threshold | None = None):
        self.settings = settings
        self.name = settings.name
        self.bundle = bundle
        self.params = params = bundle.params
        # an interpreter per monitor; replay passes the same one for every file
        self.scorer = scorer or WindowScorer(bundle, batch_size=LIVE_BATCH if live else REPLAY_BATCH)
        # calibration: the node's (edge-monitor calibrate), already checked against this bundle
        self.threshold: Threshold = decision_threshold(bundle.manifest, settings.decision.window_seconds,
                                                       settings.threshold, calibration)
        self.origin = Origin(node=node, monitor=settings.name, machine_type=bundle.machine_type,
                             machine_id=bundle.machine_id, model_name=bundle.name, model_sha256=bundle.sha256,
                             source=source)
        self.features = StreamingLogMel(params)
        self.detector = Detector(settings.decision, self.threshold.value, params, self.origin, self._explain)
        # The level the model knows: the mean log-mel of its training windows (every band and frame).
        training_level = float(np.mean(bundle.mean))
        level = bundle.manifest.level
        # running or stopped: only with a bundle that records its level distribution (older ones: silence)
        self.machine = (MachineWatch(settings.machine, params, level, training_level, settings.health.low_db,
                                     self.origin) if level is not None and settings.machine.enabled else None)
        self.health = Health(settings.health, params, training_level, self.origin, silence=self.machine is None)
        # frames below this are not judged (see _decide): the machine's stop limit, else today's silence limit
        self._quiet_db = self.machine.limit_db if self.machine else training_level - settings.health.low_db
        self._edges = mel_band_edges(params)
        self._keep = self.detector.length + params.frames - 1  # frames behind the newest decision
        self._hist = np.empty((self._keep + 64, params.n_mels), dtype=np.float32)
        self._hist_n = 0
        self._segment_start = 0     # sample position where the current gap-free segment began
        self._segment_frames = 0    # frames emitted in it
        self.position = 0           # samples of the stream so far, dropped ones included
        self._errors: list[np.ndarray] | None = [] if keep_errors else None
        self._judged: list[np.ndarray] = []  # with keep_errors: which of those windows reached the detector
        # called with each block's new log-mel frames (the node's page: node/web/live.py); must only copy them
        self.observer: Callable[[np.ndarray], None] | None = None

    # --- the stream ---------------------------------------------------------------------------
    def process(self, block: np.ndarray, dropped: int = 0) -> list[Event]:
        """Samples in stream order (mono float32 at the model's rate); ``dropped`` samples were lost before them."""
        sr = self.params.sample_rate
        events: list[Event] = []
        if dropped:
            self.position += dropped
            events += self.health.drops(dropped, self.position / sr)
            self._gap()
        end = self.position + len(block)
        events += self.health.samples(block, end / sr)
        frames = self.features.push_view(block)  # consumed below (copied into the history) before the next push
        self.position = end
        self.health.frames(frames)
        if self.observer is not None and len(frames):
            self.observer(frames)
        events += self._suspension(end / sr)
        if not len(frames):
            return events
        if self.machine is None:
            return events + self._score(frames)
        # the machine changes state at a piece boundary: frames before it are scored before the change
        first_start = (self._segment_start + self._segment_frames * self.params.hop_length) / sr
        done = 0
        for index, event in self.machine.push(frames, first_start):
            if index > done:
                events += self._score(frames[done:index])
                done = index
            if self.health.bad:  # running again, but decisions stay suspended for the sensor's sake
                event = dataclasses.replace(event, decisions_suspended=True)
            events.append(event)
            events += self._suspension(event.audio_position_s)
        if done < len(frames):
            events += self._score(frames[done:])
        return events

    def _suspension(self, position: float) -> list[Event]:
        """Suspend the detector while health is bad or the machine is stopped; resume when neither."""
        stopped = self.machine is not None and self.machine.stopped
        if (self.health.bad or stopped) and self.detector.state != SUSPENDED:
            return self.detector.suspend(position, "health" if self.health.bad else "machine_stopped")
        if not (self.health.bad or stopped) and self.detector.state == SUSPENDED:
            self.detector.resume()
        return []

    def finish(self, reason: str = "end_of_stream") -> list[Event]:
        """The stream ends (end of file, shutdown, reload): close an open anomaly."""
        return self.detector.finish(self.position / self.params.sample_rate, reason)

    def input_overflow(self, count: int) -> list[Event]:
        """The driver lost samples (PortAudio input overflow): a gap of unknown length."""
        events = self.health.input_overflow(count, self.position / self.params.sample_rate)
        self._gap()
        return events

    def sensor_fault(self, bad: bool, message: str) -> list[Event]:
        """The audio layer lost (or got back) the device. Decisions are suspended while it is lost."""
        events = self.health.sensor_fault(bad, self.position / self.params.sample_rate, message)
        if bad:
            events += self.detector.suspend(self.position / self.params.sample_rate)
            self._gap()
        return events

    def storage(self, ok: bool, message: str, part: str = "outbox") -> list[Event]:
        """A part of the node's storage (MQTT outbox, evidence clips) failed or is back: a ``storage`` health
        event; decisions go on."""
        return self.health.storage(not ok, self.position / self.params.sample_rate, message, part)

    def set_threshold(self, threshold: Threshold) -> None:
        """Apply a new decision threshold (a reload with a new node calibration) without a gap in the stream."""
        self.threshold = threshold
        self.detector.set_threshold(threshold.value)

    def _gap(self) -> None:
        self.features.reset()
        self.detector.reset_windows()
        self._hist_n = 0
        if self.machine is not None:
            self.machine.gap()
        self._segment_start = self.position
        self._segment_frames = 0

    def _score(self, frames: np.ndarray) -> list[Event]:
        p = self.params
        new = len(frames)
        need = self._hist_n + new
        if need > len(self._hist):
            grown = np.empty((need + self._keep, p.n_mels), dtype=np.float32)
            grown[: self._hist_n] = self._hist[: self._hist_n]
            self._hist = grown
        self._hist[self._hist_n : need] = frames
        first_frame = self._segment_frames  # segment index of frames[0]
        self._segment_frames += new
        self._hist_n = need
        lo = max(0, need - new - (p.frames - 1))
        count = need - lo - p.frames + 1
        events: list[Event] = []
        if count > 0:
            errors = self.scorer.errors(windows(self._hist[lo:need], p))
            if self._errors is not None:
                self._errors.append(errors)
            # the window whose last frame is segment frame k ends at segment_start + k·hop + n_fft
            last_frame_of_first = first_frame + new - count
            first_end = (self._segment_start + last_frame_of_first * p.hop_length + p.n_fft) / p.sample_rate
            events = self._decide(errors, first_end, self._hist[lo:need])
        if self._hist_n > self._keep:  # keep only what the next windows and explain() need
            drop = self._hist_n - self._keep
            self._hist[: self._keep] = self._hist[drop : self._hist_n]
            self._hist_n = self._keep
        return events

    def _decide(self, errors: np.ndarray, first_end: float, frames: np.ndarray) -> list[Event]:
        """Window errors to the detector, except windows with a frame far below the training level.

        Silence (a machine switched off, a dropout of digital zeros) is a health or machine-state
        matter: its reconstruction error is huge but says nothing about the machine's sound, and
        health and the machine state need ``hold_seconds`` to call it. Such windows are treated like
        a gap in the audio instead: the fast path for short dropouts. The limit is the machine's stop
        limit when the bundle records its level (``machine.py``), else ``health.low_db`` below the
        training level.
        """
        quiet = frames.mean(axis=1) < self._quiet_db
        if not quiet.any():
            if self._errors is not None:
                self._judged.append(np.ones(len(errors), dtype=bool))
            return self.detector.push(errors, first_end)
        counts = np.concatenate(([0], np.cumsum(quiet)))
        f = self.params.frames
        bad = counts[f:] - counts[:-f] > 0  # window i holds frames i .. i+f-1
        if self._errors is not None:
            self._judged.append(~bad)
        events: list[Event] = []
        step = self.params.hop_length / self.params.sample_rate
        start = 0
        while start < len(errors):
            if bad[start]:
                self.detector.reset_windows()
                while start < len(errors) and bad[start]:
                    start += 1
                continue
            stop = start
            while stop < len(errors) and not bad[stop]:
                stop += 1
            events += self.detector.push(errors[start:stop], first_end + start * step)
            start = stop
        return events

    def _explain(self, windows_after: int) -> tuple[Band, ...]:
        """Which mel bands carry the error of the decision window that ended ``windows_after`` windows ago."""
        p = self.params
        total = self._hist_n - p.frames + 1
        stop = total - windows_after
        start = max(0, stop - self.detector.length)
        if stop <= start:
            return ()
        chosen = windows(self._hist[: self._hist_n], p)[start:stop]
        band_errors = np.empty((stop - start, p.n_mels), dtype=np.float32)
        self.scorer.errors(chosen, band_errors=band_errors)
        return explain_bands(band_errors, self._edges)

    # --- what the outside sees ----------------------------------------------------------------
    @property
    def state(self) -> str:
        """For the MQTT state topic: ``sensor_fault``, ``stopped`` (the machine), ``anomaly``, ``normal`` or
        ``unknown`` (no decision yet). A sensor fault comes first: a dead input says nothing about the machine."""
        if self.health.bad:
            return "sensor_fault"
        if self.machine is not None and self.machine.stopped:
            return "stopped"
        if self.detector.state == ANOMALY:
            return "anomaly"
        return "normal" if self.detector.decisions else "unknown"

    def window_errors(self) -> np.ndarray:
        """Every window error scored so far, in stream order (needs keep_errors; calibrate fits on them)."""
        if self._errors is None:
            raise RuntimeError("Monitor was created without keep_errors")
        return np.concatenate(self._errors) if self._errors else np.empty(0, np.float32)

    def judged_windows(self) -> np.ndarray:
        """Which kept window errors reached the detector (bool, aligned with :meth:`window_errors`; needs
        keep_errors): windows with a frame far below the training level are not judged (``_decide``)."""
        if self._errors is None:
            raise RuntimeError("Monitor was created without keep_errors")
        return np.concatenate(self._judged) if self._judged else np.zeros(0, dtype=bool)

    def judged_errors(self) -> list[np.ndarray]:
        """The kept window errors the detector judged, in runs without a quiet window between them (needs
        keep_errors): what calibration fits, so that a short dropout's huge errors do not raise the threshold."""
        errors = self.window_errors()
        judged = np.concatenate(self._judged) if self._judged else np.zeros(0, dtype=bool)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], judged.astype(np.int8), [0]))))
        return [errors[a:b] for a, b in zip(edges[::2], edges[1::2])]

    def clip_score(self) -> float:
        """The DCASE clip score of everything scored so far (replay keeps the errors for it)."""
        if self._errors is None:
            raise RuntimeError("Monitor was created without keep_errors")
        errors = np.concatenate(self._errors) if self._errors else np.empty(0, np.float32)
        return float(errors.mean()) if errors.size else math.nan

    def drift(self) -> float | None:
        """Median decision score of the last 24 h over the node calibration's median (None without one)."""
        reference = self.threshold.median_score
        median = self.detector.history.median()
        return median / reference if reference and median is not None else None

    def telemetry(self) -> dict:
        period = self.detector.take_period()
        return {
            "state": self.state,
            "score_mean": period["score_mean"],
            "score_max": period["score_max"],
            "decisions": period["decisions"],
            "threshold": self.threshold.value,
            "drift": self.drift(),
            "level_dbfs": self.health.level_dbfs if math.isfinite(self.health.level_dbfs) else None,
            "clip_fraction": self.health.clip_fraction,
            "drops": self.health.drops_total,
            "health": self.health.bad_conditions,
        }

