"""Alert decisions: per-window errors → decision score → state machine → anomaly events.

- **Decision score**: the mean window error over the last ``window_seconds`` of audio
  (``decision_length`` windows), taken every ``step_seconds``. Training calibrates a threshold for
  exactly this score (``sliding_means`` below is shared with it), because the bundle's clip threshold
  (mean over a whole 10-s clip) is far too tight for 1-s means.
- **States**: ``normal`` → (k of the last n decisions above the threshold) → ``pending`` →
  (k of n still above after ``min_duration_seconds``) → ``anomaly`` [``anomaly_start``],
  ``anomaly_update`` every ``update_seconds`` → (k of the last n decisions below
  ``hysteresis × threshold``) → ``anomaly_end`` → ``cooldown`` for ``cooldown_seconds`` (no new start)
  → ``normal``. ``suspend()`` (bad sensor health, or the machine stopped) ends an open anomaly with
  reason ``health`` (or ``machine_stopped``) and holds decisions until ``resume()``.
- All times are positions in the audio stream (seconds), so a replay decides exactly as the
  microphone would, however fast it runs.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_monitor.core.events import AnomalyInfo, Band, Event, Origin, new_id, now_ms
from edge_monitor.core.features import FeatureParams
from edge_monitor.core.manifest import Manifest
from edge_monitor.core.settings import DecisionSettings

NORMAL, PENDING, ANOMALY, COOLDOWN, SUSPENDED = "normal", "pending", "anomaly", "cooldown", "suspended"
DECISION_QUANTILE = 0.999
DECISION_SECONDS = (0.5, 1.0, 2.0, 5.0)  # lengths training calibrates a threshold for


def decision_length(seconds: float, params: FeatureParams) -> int:
    """Windows in ``seconds`` of audio (one window per hop), at least 1."""
    return max(1, int(round(seconds * params.sample_rate / params.hop_length)))


def sliding_means(errors: np.ndarray, length: int) -> np.ndarray:
    """Every decision score a stream of window errors can give: means of ``length`` consecutive errors."""
    errors = np.asarray(errors, dtype=np.float64)
    if len(errors) < length:
        return np.empty(0)
    c = np.concatenate(([0.0], np.cumsum(errors)))
    return (c[length:] - c[:-length]) / length


@dataclass(frozen=True)
class Threshold:
    value: float
    origin: str  # where the value came from, for `check` and logs
    median_score: float | None = None  # a node calibration's median decision score (the drift reference)


def decision_threshold(manifest: Manifest, window_seconds: float, override: float | None = None,
                       calibration: Threshold | None = None) -> Threshold:
    """The threshold for decision scores over ``window_seconds``: the config's override, else the node's
    calibration (``edge-monitor calibrate``, checked by the node against this bundle and window), else the
    bundle's calibrated one for that length (log-interpolated between calibrated lengths, the nearest
    outside them), else — for bundles trained before decision calibration — the clip threshold.

    The manifest type guarantees positive, finite values at strictly ascending lengths."""
    if override is not None:
        return Threshold(float(override), "config override")
    if calibration is not None:
        return calibration
    table = [(t.window_seconds, t.value) for t in (manifest.decision.thresholds if manifest.decision else ())]
    if not table:
        return Threshold(manifest.threshold.value,
                         "bundle clip threshold (bundle has no decision calibration: retrain it)")
    for seconds, value in table:
        if math.isclose(seconds, window_seconds):
            return Threshold(value, f"bundle, calibrated for {seconds:g}-s decisions")
    if window_seconds <= table[0][0] or window_seconds >= table[-1][0]:
        seconds, value = table[0] if window_seconds <= table[0][0] else table[-1]
        return Threshold(value, f"bundle, nearest calibrated length {seconds:g} s")
    for (s0, v0), (s1, v1) in zip(table, table[1:]):
        if s0 < window_seconds < s1:
            t = (math.log(window_seconds) - math.log(s0)) / (math.log(s1) - math.log(s0))
            return Threshold(v0 + t * (v1 - v0), f"bundle, interpolated between {s0:g} s and {s1:g} s")
    raise AssertionError("unreachable")


class ScoreHistory:
    """Decision scores of the last ``hours`` hours of audio in bounded memory, for their median (drift).

    One histogram per hour of stream position (``BINS`` log-spaced bins from 1e-3 to 1e3, 1.4 % wide):
    24 × 1000 int32 counts per monitor, whatever the rate of decisions. The median is the centre of the
    bin holding it (exact to the bin width)."""

    BINS = 1000
    LO, HI = -3.0, 3.0  # log10 of the score range

    def __init__(self, hours: int = 24):
        self.hours = hours
        self._counts = np.zeros((hours, self.BINS), dtype=np.int32)
        self._hour = np.full(hours, -1, dtype=np.int64)  # which hour each row holds
        self._newest = -1

    def add(self, score: float, position_s: float) -> None:
        if not score > 0 or not math.isfinite(score):
            return
        hour = int(position_s // 3600)
        row = hour % self.hours
        if self._hour[row] != hour:
            self._counts[row] = 0
            self._hour[row] = hour
        self._newest = max(self._newest, hour)
        b = int((math.log10(score) - self.LO) / (self.HI - self.LO) * self.BINS)
        self._counts[row, min(max(b, 0), self.BINS - 1)] += 1

    def median(self) -> float | None:
        live = self._hour > self._newest - self.hours
        total = self._counts[live].sum(axis=0)
        n = int(total.sum())
        if n == 0:
            return None
        b = int(np.searchsorted(np.cumsum(total), (n + 1) / 2))
        return float(10 ** (self.LO + (b + 0.5) * (self.HI - self.LO) / self.BINS))


class Detector:
    """The alert state machine of one monitor. ``push`` takes window errors, returns events."""

    def __init__(self, settings: DecisionSettings, threshold: float, params: FeatureParams, origin: Origin,
                 explain: Callable[[int], tuple[Band, ...]]):
        self.settings = settings
        self.threshold = float(threshold)
        self.low = settings.hysteresis * self.threshold
        self.origin = origin
        self._explain = explain
        self.length = decision_length(settings.window_seconds, params)
        self.step = decision_length(settings.step_seconds, params)
        self._seconds_per_window = params.hop_length / params.sample_rate
        self._tail = np.zeros(0)   # the last length-1 errors (fewer right after a reset)
        self._seen = 0             # windows since the last reset
        k, n = settings.k_of_n
        self._k = k
        self._above: deque[bool] = deque(maxlen=n)
        self._below: deque[bool] = deque(maxlen=n)
        self.state = NORMAL
        self.last_score = math.nan
        self.decisions = 0
        self._cycle = _Cycle()
        self._cooldown_until = -math.inf
        self._windows_after = 0
        self._period_sum, self._period_n, self._period_max = 0.0, 0, -math.inf
        self.history = ScoreHistory()  # the last 24 h of decision scores (telemetry's drift)

    def set_threshold(self, threshold: float) -> None:
        """A new threshold from the next decision on (a new node calibration): the stream goes on."""
        self.threshold = float(threshold)
        self.low = self.settings.hysteresis * self.threshold

    def take_period(self) -> dict:
        """Decision scores since the last call (for telemetry): count, mean, max."""
        n = self._period_n
        summary = {"decisions": n, "score_mean": self._period_sum / n if n else None,
                   "score_max": self._period_max if n else None}
        self._period_sum, self._period_n, self._period_max = 0.0, 0, -math.inf
        return summary

    # --- stream control -----------------------------------------------------------------------
    def reset_windows(self) -> None:
        """A gap in the audio: decision scores must not span it (the state machine carries on)."""
        self._tail = np.zeros(0)
        self._seen = 0

    def suspend(self, position_s: float, reason: str = "health") -> list[Event]:
        events = self._end(position_s, reason) if self.state == ANOMALY else []
        self.state = SUSPENDED
        self._clear()
        return events

    def resume(self) -> None:
        if self.state == SUSPENDED:
            self.state = NORMAL
            self._clear()

    def finish(self, position_s: float, reason: str) -> list[Event]:
        """End of the stream (end of file, shutdown, reload): close an open anomaly."""
        return self._end(position_s, reason) if self.state == ANOMALY else []

    def _clear(self) -> None:
        self.reset_windows()
        self._above.clear()
        self._below.clear()
        self._cycle = _Cycle()

    # --- decisions ----------------------------------------------------------------------------
    def push(self, errors: np.ndarray, first_end_s: float) -> list[Event]:
        """Window errors in stream order; ``first_end_s`` is the audio position where the first ends."""
        if self.state == SUSPENDED or len(errors) == 0:
            return []
        joined = np.concatenate((self._tail, errors.astype(np.float64)))
        start_seen = self._seen - len(self._tail)  # windows before joined[0] since the reset
        self._seen += len(errors)
        cumulative = np.concatenate(([0.0], np.cumsum(joined)))
        # a decision after window number i (1-based since reset) when i ≥ length and (i - length) % step == 0
        first = max(self.length, self._seen - len(errors) + 1)
        offset = (first - self.length) % self.step
        if offset:
            first += self.step - offset
        events: list[Event] = []
        for i in range(first, self._seen + 1, self.step):
            j = i - start_seen  # windows of joined up to and including this one
            score = (cumulative[j] - cumulative[j - self.length]) / self.length
            position = first_end_s + (i - (self._seen - len(errors)) - 1) * self._seconds_per_window
            self._windows_after = self._seen - i  # for explain(): windows pushed after this decision's last
            events.extend(self._decide(float(score), position))
            if self.state == SUSPENDED:
                break
        self._tail = joined[-(self.length - 1):] if self.length > 1 else np.zeros(0)
        return events

    def _decide(self, score: float, position: float) -> list[Event]:
        self.last_score = score
        self.decisions += 1
        self._period_sum += score
        self._period_n += 1
        self._period_max = max(self._period_max, score)
        self.history.add(score, position)
        self._above.append(score > self.threshold)
        self._below.append(score < self.low)
        s = self.settings
        cycle = self._cycle
        if self.state == COOLDOWN and position >= self._cooldown_until:
            self.state = NORMAL
        if self.state == NORMAL and sum(self._above) >= self._k:
            self.state = PENDING
            # dated from the start of the audio behind the first decision above threshold: the anomaly
            # began at most one decision window before that decision
            first_above = position - (len(self._above) - 1 - self._above.index(True)) * s.step_seconds
            self._cycle = cycle = _Cycle(start_position=max(first_above - s.window_seconds, 0.0),
                                         pending_since=position)
        if self.state in (PENDING, ANOMALY):
            cycle.add(score)
        if self.state == PENDING:
            if sum(self._above) < self._k:
                self.state = NORMAL  # confirmation lapsed before min_duration: no event
            elif position - cycle.pending_since >= s.min_duration_seconds:
                self.state = ANOMALY
                cycle.id = new_id()
                cycle.last_event_position = position
                return [self._event("anomaly_start", score, position)]
        elif self.state == ANOMALY:
            if sum(self._below) >= self._k:
                return self._end(position, "recovered")
            if position - cycle.last_event_position >= s.update_seconds:
                cycle.last_event_position = position
                return [self._event("anomaly_update", score, position)]
        return []

    def _end(self, position: float, reason: str) -> list[Event]:
        event = self._event("anomaly_end", self.last_score, position, reason=reason, explain=False)
        self.state = COOLDOWN
        self._cooldown_until = position + self.settings.cooldown_seconds
        self._above.clear()
        self._below.clear()
        return [event]

    def _event(self, kind: str, score: float, position: float, *, reason: str | None = None,
               explain: bool = True) -> Event:
        cycle = self._cycle
        if explain:
            bands = self._explain(self._windows_after)[: self.settings.explain_bands]
            if score >= cycle.explained_score:
                cycle.bands, cycle.explained_score = bands, score
        else:
            bands = cycle.bands  # the explanation of the highest-scoring moment the cycle reported
        duration = position - cycle.start_position
        now = now_ms()
        event = self.origin.event(
            kind, cycle.id, cycle.events, position, time_ms=now, score=score, threshold=self.threshold,
            bands=bands, anomaly=AnomalyInfo(
                # wall-clock time of the start position, counted back from now in audio time
                started_ms=now - int(round(duration * 1000)), started_position_s=cycle.start_position,
                duration_s=duration, peak_score=cycle.peak, mean_score=cycle.total / max(cycle.count, 1),
                reason=reason),
        )
        cycle.events += 1
        return event


class _Cycle:
    """Book-keeping of one anomaly candidate / anomaly."""

    def __init__(self, start_position: float = 0.0, pending_since: float = 0.0):
        self.id = ""
        self.start_position = start_position
        self.pending_since = pending_since
        self.peak = -math.inf
        self.total = 0.0
        self.count = 0
        self.events = 0
        self.last_event_position = start_position
        self.bands: tuple[Band, ...] = ()
        self.explained_score = -math.inf

    def add(self, score: float) -> None:
        self.peak = max(self.peak, score)
        self.total += score
        self.count += 1


def explain_bands(band_errors: np.ndarray, edges_hz: np.ndarray, groups: int = 32) -> tuple[Band, ...]:
    """Mel band ranges ordered by their share of the reconstruction error.

    ``band_errors``: ``(n_windows, n_mels)`` per-band errors (``WindowScorer.errors(band_errors=…)``).
    The mel bands are taken in ``groups`` contiguous groups; adjacent groups among the top ones
    are merged, so a broad fault reads as one range. ``edges_hz``: ``n_mels + 2`` mel band edges.
    """
    per_band = np.asarray(band_errors, dtype=np.float64).sum(axis=0)
    total = per_band.sum()
    n_mels = len(per_band)
    size = max(1, n_mels // groups)
    starts = np.arange(0, n_mels, size)
    shares = np.add.reduceat(per_band, starts) / total if total > 0 else np.zeros(len(starts))
    order = np.argsort(shares)[::-1]
    chosen = sorted(int(g) for g in order[:8])  # the 8 largest groups, merged where adjacent
    ranges: list[list[int]] = []
    for g in chosen:
        if ranges and ranges[-1][1] == g - 1:
            ranges[-1][1] = g
        else:
            ranges.append([g, g])
    bands = []
    for g0, g1 in ranges:
        first, last = int(starts[g0]), min(int(starts[g1]) + size, n_mels) - 1
        bands.append(Band(first, last, float(edges_hz[first]), float(edges_hz[last + 2]),
                          float(shares[g0 : g1 + 1].sum())))
    return tuple(sorted(bands, key=lambda b: -b.share))
