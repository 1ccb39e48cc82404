"""Is the machine running or stopped? Its level against the level distribution of its training audio.

One definition, shared by training and the node: the **level** of a piece of audio is the mean of its
log-mel frames over every band and frame (dB, the units of the frames), and pieces are consecutive,
non-overlapping runs of ``pieces_frames(window_seconds)`` frames. Training records the percentiles of
the piece levels of the machine's normal audio in the manifest (``level_distribution`` →
``Manifest.level``); the node cuts its stream of frames into pieces the same way and judges each:

- **quiet**: level below ``limit = max(p1 − margin_db, training level − health.low_db)`` (the second
  term keeps today's silence limit when the training audio itself held very quiet pieces);
- **loud**: level above ``resume = limit + margin_db / 2`` (hysteresis);
- **dead**: the piece holds a frame of digital silence (below ``DIGITAL_SILENCE_DB``): a dead or muted
  input is a sensor fault (``health.dead_input``), never a stopped machine, and says nothing here.

``machine_stopped`` once the pieces were quiet for ``hold_seconds`` (from the start of the first quiet
piece to the end of the last), ``machine_running`` once they were loud as long; the two events share an
``id``. Why its own module rather than a health condition: a stopped machine is a state of the machine,
not of the sensor; it is judged on frames (the same pieces as training, for any block size), reported
with its own events, and suspends decisions without making the input "bad".

Why not keep ``silence`` as a health fault beside it: from the level alone, a machine switched off in a
quiet room and an analogue microphone that lost its capsule cannot be told apart; what *can* be told is
digital silence (``dead_input``) and a lost device (``sensor_fault``), and those stay sensor faults.
So with a level distribution in the bundle a level drop that is not digital silence is ``machine_stopped``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edge_monitor.core.events import Event, MachineInfo, Origin, new_id
from edge_monitor.core.features import FeatureParams
from edge_monitor.core.manifest import LEVEL_PERCENTILES, LevelDistribution
from edge_monitor.core.settings import MachineSettings

LEVEL_WINDOW_SECONDS = 1.0   # training records pieces this long (the default health window)
# A log-mel frame below this is digital silence: exact zeros give LOG_MIN ≈ -156.6 dB, while the
# quietest real input (int16 quantisation noise of a dithered zero signal) gives about -75 dB.
DIGITAL_SILENCE_DB = -120.0
STOPPED, RUNNING = "stopped", "running"


def pieces_frames(window_seconds: float, params: FeatureParams) -> int:
    """Frames per level piece: ``window_seconds`` of hops, at least one."""
    return max(1, round(window_seconds * params.sample_rate / params.hop_length))


def piece_levels(frames: np.ndarray, count: int) -> np.ndarray:
    """Mean level (float64) of each complete run of ``count`` frames of ``frames`` (n_frames × n_mels)."""
    k = len(frames) // count
    if k == 0:
        return np.empty(0)
    return frames[: k * count].mean(axis=1, dtype=np.float64).reshape(k, count).mean(axis=1)


def level_distribution(frame_list: Sequence[np.ndarray], params: FeatureParams,
                       window_seconds: float = LEVEL_WINDOW_SECONDS) -> LevelDistribution | None:
    """The level distribution of normal audio (frames of each clip), for the manifest; None without a piece."""
    count = pieces_frames(window_seconds, params)
    levels = np.concatenate([piece_levels(f, count) for f in frame_list] or [np.empty(0)])
    levels = levels[np.isfinite(levels)]
    if len(levels) == 0:
        return None
    values = [float(v) for v in np.percentile(levels, LEVEL_PERCENTILES)]
    return LevelDistribution(count * params.hop_length / params.sample_rate, len(levels), *values, info={
        "definition": "mean log-mel level (every band and frame, dB) of consecutive pieces of window_seconds of "
                      "the normal training clips (training and held-out); percentiles over the pieces",
        "min": float(levels.min()), "max": float(levels.max())})


def limits(level: LevelDistribution, settings: MachineSettings, training_level_db: float,
           low_db: float) -> tuple[float, float]:
    """(stop limit, resume limit) in dB: quiet below the first, loud above the second (module docstring)."""
    limit = max(level.p1 - settings.margin_db, training_level_db - low_db)
    return limit, limit + settings.margin_db / 2


class MachineWatch:
    """Judges a monitor's stream of log-mel frames piece by piece; see the module docstring."""

    def __init__(self, settings: MachineSettings, params: FeatureParams, level: LevelDistribution,
                 training_level_db: float, low_db: float, origin: Origin):
        self.settings = settings
        self.origin = origin
        self.level = level
        self._hop = params.hop_length
        self._n_fft = params.n_fft
        self._rate = params.sample_rate
        self._count = pieces_frames(level.window_seconds, params)
        self.limit_db, self.resume_db = limits(level, settings, training_level_db, low_db)
        self.stopped = False
        self.level_db = math.nan        # of the last complete piece
        self._id = ""
        self._since: float | None = None  # start of the run of pieces pointing to the other state
        self._sum = 0.0
        self._n = 0
        self._dead = False
        self._first = 0.0               # start position of the current piece

    def gap(self) -> None:
        """A gap in the audio: the partial piece is dropped (pieces never span a gap)."""
        self._sum, self._n, self._dead = 0.0, 0, False

    def push(self, frames: np.ndarray, first_start: float) -> list[tuple[int, Event]]:
        """Frames in stream order; ``first_start``: position (s) where ``frames[0]`` begins (frame k of a gap-free
        segment begins k hops after it). Returns (frames of this call consumed, event) per state change."""
        out: list[tuple[int, Event]] = []
        if not len(frames):
            return out
        levels = frames.mean(axis=1, dtype=np.float64)
        step = self._hop / self._rate
        i = 0
        while i < len(levels):
            if self._n == 0:
                self._first = first_start + i * step
            take = min(len(levels) - i, self._count - self._n)
            part = levels[i : i + take]
            self._sum += float(part.sum())
            self._dead = self._dead or bool(np.any(part < DIGITAL_SILENCE_DB))
            self._n += take
            i += take
            if self._n == self._count:
                end = first_start + (i - 1) * step + self._n_fft / self._rate
                event = self._judge(self._sum / self._n, self._dead, self._first, end)
                self._sum, self._n, self._dead = 0.0, 0, False
                if event is not None:
                    out.append((i, event))
        return out

    def _judge(self, level: float, dead: bool, start: float, end: float) -> Event | None:
        if dead:  # digital silence: health's dead_input says so; nothing about the machine
            self._since = None
            return None
        self.level_db = level
        towards = level >= self.resume_db if self.stopped else level < self.limit_db
        if not towards:
            self._since = None
            return None
        if self._since is None:
            self._since = start
        if end - self._since < self.settings.hold_seconds:
            return None
        since, self._since = self._since, None
        self.stopped = not self.stopped
        if self.stopped:
            self._id = new_id()
            return self._event("machine_stopped", 0, end, MachineInfo(
                STOPPED, level, self.limit_db, since,
                f"level {level:.1f} dB, below {self.limit_db:.1f} dB (the running machine's p1 "
                f"{self.level.p1:.1f} dB − {self.settings.margin_db:g} dB) since {since:.1f} s: machine stopped; "
                "anomaly decisions paused"))
        return self._event("machine_running", 1, end, MachineInfo(
            RUNNING, level, self.resume_db, since,
            f"level {level:.1f} dB, back above {self.resume_db:.1f} dB since {since:.1f} s: machine running; "
            "anomaly decisions resume"))

    def _event(self, kind: str, seq: int, position: float, info: MachineInfo) -> Event:
        return self.origin.event(kind, self._id, seq, position, decisions_suspended=self.stopped,
                                 machine_state=info)
