"""Sensor health: is the input fit to judge the machine by?

Judged every ``window_seconds`` of audio from the samples (clipping: full-scale samples; dead input:
digital zeros), from the log-mel frames (level far below or above the level the model was trained
on: a machine switched off, a disconnected or muted microphone, a gain change; with a bundle that records
its level distribution a level drop is judged by ``machine.py`` instead), from ring-buffer
drops, and from what the audio layer reports (``sensor_fault``: a device that disappeared).

A condition turns ``bad`` after it held for ``hold_seconds`` and ``ok`` after it was gone as long
(drops turn bad at once; a
sensor fault turns bad and ok when the audio layer says so). Each change is a ``health`` event; the bad and the ok
event of one episode share an ``id``. While any condition is bad, the monitor suspends anomaly
decisions and says so in the events (``decisions_suspended``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_monitor.core.events import Event, HealthInfo, Origin, new_id
from edge_monitor.core.features import FeatureParams
from edge_monitor.core.settings import HealthSettings

FULL_SCALE = 0.999  # |sample| at or above this counts as clipped (int16 full scale is 32767/32768)
IMMEDIATE = ("drops", "sensor_fault", "storage")
NOT_SUSPENDING = ("storage",)  # reported, but decisions go on: a full disk costs only what cannot be stored


@dataclass
class _Condition:
    name: str
    bad: bool = False
    flag_since: float | None = None   # position where the raw flag started (None: not flagged)
    clear_since: float | None = None  # position where it stopped
    id: str = ""
    value: float = math.nan
    limit: float = math.nan
    message: str = ""


def flags(settings: HealthSettings, clip_fraction: float, zero_fraction: float, below_db: float) -> dict[str, bool]:
    """The input conditions a stretch of audio raises: the one judgement of ``Health`` and ``edge-monitor record``.

    ``below_db``: how far the log-mel level is below the model's training level (NaN: no model yet)."""
    dead = zero_fraction >= settings.dead_fraction
    return {"clipping": clip_fraction > settings.clip_fraction, "dead_input": dead,
            "silence": not dead and below_db > settings.low_db, "level_high": -below_db > settings.high_db}


def sample_counts(block: np.ndarray) -> tuple[int, int, float]:
    """(full-scale samples, digital zeros, sum of squares) of ``block``."""
    return (int(np.count_nonzero(np.abs(block) >= FULL_SCALE)), len(block) - int(np.count_nonzero(block)),
            float(np.dot(block, block)))


class Health:
    def __init__(self, settings: HealthSettings, params: FeatureParams, training_level_db: float, origin: Origin,
                 *, silence: bool = True):
        self.settings = settings
        # silence: False when the machine's level is judged instead (``machine.py``): a level drop that is
        # not digital silence is then a stopped machine, not a sensor fault
        self.silence = silence
        self.origin = origin
        self.training_level_db = float(training_level_db)
        self._window = max(1, int(round(settings.window_seconds * params.sample_rate)))
        self._sample_rate = params.sample_rate
        self._conditions = {name: _Condition(name) for name in
                            ("clipping", "dead_input", "silence", "level_high", "drops", "sensor_fault", "storage")}
        self._reset_window()
        self._storage_failing: dict[str, str] = {}  # part → why it fails
        self.drops_total = 0
        self.level_dbfs = math.nan      # of the last full window
        self.clip_fraction = 0.0        # of the last full window
        self.mel_level_db = math.nan    # of the last full window

    def _reset_window(self) -> None:
        self._n = 0
        self._clipped = 0
        self._zeros = 0
        self._sumsq = 0.0
        self._mel_sum = 0.0
        self._mel_frames = 0
        self._drops = 0

    @property
    def bad(self) -> bool:
        """A condition that suspends decisions is bad (``storage`` is reported but never suspends)."""
        return any(c.bad for c in self._conditions.values() if c.name not in NOT_SUSPENDING)

    @property
    def bad_conditions(self) -> list[str]:
        return [c.name for c in self._conditions.values() if c.bad]

    def frames(self, frames: np.ndarray) -> None:
        """Log-mel frames of the current window (their mean level is compared with training)."""
        if len(frames):
            self._mel_sum += float(frames.mean(dtype=np.float64)) * len(frames)
            self._mel_frames += len(frames)

    def drops(self, count: int, position: float) -> list[Event]:
        self.drops_total += count
        self._drops += count
        return self._update("drops", True, position, count, 0, f"{count} samples lost: the processing fell behind")

    def input_overflow(self, count: int, position: float) -> list[Event]:
        """The audio driver reported ``count`` overflows: samples were lost before they reached us."""
        self._drops += count
        return self._update("drops", True, position, count, 0,
                            f"the audio driver reported {count} input overflow(s): samples were lost")

    def sensor_fault(self, bad: bool, position: float, message: str) -> list[Event]:
        return self._update("sensor_fault", bad, position, 1.0 if bad else 0.0, 0.0, message)

    def storage(self, bad: bool, position: float, message: str, part: str = "outbox") -> list[Event]:
        """A part of the node's storage (the MQTT outbox, the evidence clips) cannot store what it should (a
        full or read-only disk): said, not suspending. One ``storage`` condition for every part: it turns ok
        only when the last failing part is back (the evidence writer recovering must not clear the outbox)."""
        if bad:
            self._storage_failing[part] = message
        else:
            self._storage_failing.pop(part, None)
        if self._storage_failing:
            message = "; ".join(self._storage_failing.values())
        return self._update("storage", bool(self._storage_failing), position, float(len(self._storage_failing)),
                            0.0, message)

    def samples(self, block: np.ndarray, end_position: float) -> list[Event]:
        """Samples of the stream, in order; judges each complete window. ``end_position``: after the block."""
        events: list[Event] = []
        offset = 0
        while offset < len(block):
            take = min(len(block) - offset, self._window - self._n)
            part = block[offset : offset + take]
            clipped, zeros, sumsq = sample_counts(part)
            self._clipped += clipped
            self._zeros += zeros
            self._sumsq += sumsq
            self._n += take
            offset += take
            if self._n == self._window:
                events.extend(self._judge(end_position - (len(block) - offset) / self._sample_rate))
        return events

    def _judge(self, position: float) -> list[Event]:
        s = self.settings
        n = self._n
        self.clip_fraction = self._clipped / n
        zero_fraction = self._zeros / n
        self.level_dbfs = 10 * math.log10(self._sumsq / n) if self._sumsq > 0 else -math.inf
        self.mel_level_db = self._mel_sum / self._mel_frames if self._mel_frames else math.nan
        below = self.training_level_db - self.mel_level_db if self._mel_frames else 0.0
        flagged = flags(s, self.clip_fraction, zero_fraction, below)
        events = []
        events += self._update("clipping", flagged["clipping"], position, self.clip_fraction,
                               s.clip_fraction, f"{100 * self.clip_fraction:.2f} % of samples at full scale: "
                               "lower the input gain")
        events += self._update("dead_input", flagged["dead_input"], position, zero_fraction, s.dead_fraction,
                               f"{100 * zero_fraction:.1f} % digital zeros: the input is dead or muted, "
                               "check the microphone and its cable")
        events += self._update("silence", self.silence and flagged["silence"], position, -below, -s.low_db,
                               f"level {below:.0f} dB below the model's training level: machine off or "
                               "microphone disconnected")
        events += self._update("level_high", flagged["level_high"], position, -below, s.high_db,
                               f"level {-below:.0f} dB above the model's training level: check gain and placement")
        if self._drops == 0:
            events += self._update("drops", False, position, 0, 0, "no samples lost")
        self._reset_window()
        return events

    def _update(self, name: str, flagged: bool, position: float, value: float, limit: float,
                message: str) -> list[Event]:
        c = self._conditions[name]
        # drops turn bad at once and ok after a quiet hold; the audio layer's word on a device is final
        hold = 0.0 if name in ("sensor_fault", "storage") or (name in IMMEDIATE and flagged) else self.settings.hold_seconds
        window = self.settings.window_seconds
        if flagged:
            c.clear_since = None
            if c.flag_since is None:
                c.flag_since = position if name in IMMEDIATE else position - window
            c.value, c.limit, c.message = value, limit, message
            if not c.bad and position - c.flag_since >= hold:
                c.bad = True
                c.id = new_id()
                return [self._event(c, "bad", position, 0)]
        else:
            c.flag_since = None
            if c.bad:
                if c.clear_since is None:
                    c.clear_since = position - (0.0 if name in IMMEDIATE else window)
                if position - c.clear_since >= hold:
                    c.bad = False
                    c.value, c.limit, c.message = value, limit, message
                    return [self._event(c, "ok", position, 1)]
        return []

    def _event(self, c: _Condition, status: str, position: float, seq: int) -> Event:
        text = c.message if status == "bad" else f"{c.name} cleared: {c.message}"
        return self.origin.event("health", c.id, seq, position, decisions_suspended=self.bad,
                                 health=HealthInfo(c.name, status, c.value, c.limit, text))
