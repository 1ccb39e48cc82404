"""The one loop around a :class:`~edge_monitor.core.monitor.Monitor`: replay and the daemon both run it.

A :class:`Source` hands :class:`Chunk` s — samples at the source's rate, a count of samples lost before
them, driver overflows, device notices — and says what time it is. :class:`Loop` owns what sits
between a source and the sinks: the one streaming resampler (when the source's rate is not the
model's), the Monitor, the state seen by the sinks and the telemetry period. Only the source and its
pacing differ between a file (``WavSource`` below: as fast as the disk, or paced like a microphone)
and a microphone (``edge_monitor.node.mic.MicSource``); nothing here knows which it is.

Positions: the resampler emits output sample ``k`` only once the input it needs has arrived, and
output ``k`` is always the signal at ``k / model_rate`` (``StreamResampler``), so event positions
count model-rate samples with no correction for its group delay. A gap (samples dropped by the ring)
resets the resampler; the outputs it still owed are counted as lost with the gap, so positions stay
on the source's time line. At the end of a stream the resampler is flushed (``resample_poly``
zero-pads the end the same way), so a replayed file gives exactly the samples ``load_audio`` gives.

Telemetry is due every ``telemetry_seconds`` of the source's clock (``Source.clock``: audio position for
a file, monotonic time for a microphone, so a lost device still reports).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge_monitor.core.events import Event
from edge_monitor.core.monitor import Monitor
from edge_monitor.core.resample import StreamResampler
from edge_monitor.core.wav import WavFile


@dataclass
class Chunk:
    """What a source has for the loop now; any field may be empty."""

    samples: np.ndarray                          # mono float32 at the source's rate
    dropped: int = 0                             # samples lost before ``samples`` (source rate)
    overflows: int = 0                           # driver input-overflow flags since the last chunk
    notices: tuple[tuple[bool, str], ...] = ()   # the device was lost (False) or is back (True), why


class Source(Protocol):
    rate: int     # samples per second of ``Chunk.samples``
    label: str    # for events' ``source``: a file path, ``mic:<device>:<channel>``

    def read(self) -> Chunk | None:
        """The next chunk, waiting (paced) as the source needs; None when the stream has ended."""

    def clock(self) -> float:
        """Seconds on the source's time line, for the telemetry period."""


class Sink(Protocol):
    def event(self, event: Event) -> None: ...

    def state(self, monitor: str, state: str, score: float | None, threshold: float) -> None: ...

    def telemetry(self, monitor: str, values: dict) -> None: ...


class Tap(Protocol):
    def samples(self, block: np.ndarray, dropped: int, position: int) -> None:
        """The model-rate samples the Monitor was just given (before its events reach the sinks): ``dropped``
        samples were lost before them and ``position`` is the stream position of ``block[0]``. ``block`` is
        only valid during the call (copy what you keep)."""


class Loop:
    """Runs one Monitor on one Source, telling ``sinks`` about events, state changes and telemetry.

    ``run(stop)`` loops until the source ends or ``stop()`` returns a reason, then finishes. The daemon
    calls it on a processing thread; replay calls it per file. ``last_progress``
    (``time.monotonic()`` of the last chunk with samples) feeds the daemon's watchdog.
    """

    def __init__(self, monitor: Monitor, source: Source, sinks: Sequence[Sink], *,
                 telemetry_seconds: float | None = None, taps: Sequence[Tap] = ()):
        self.monitor = monitor
        self.source = source
        self.sinks = tuple(sinks)
        self.taps = tuple(taps)  # e.g. the evidence recorder (node/evidence.py): sees every block Monitor sees
        self.model_rate = monitor.params.sample_rate
        self.resampler = StreamResampler(source.rate, self.model_rate) if source.rate != self.model_rate else None
        self.telemetry_seconds = telemetry_seconds
        self._next_telemetry = math.inf
        self._state: str | None = None  # the state the sinks were last told
        self.last_progress = time.monotonic()
        self.events: list[Event] = []   # kept only with keep_events (replay's summary)
        self.keep_events = False
        self.ended = False
        self._storage: collections.deque[tuple[bool, str, str]] = collections.deque(maxlen=64)

    def storage_notice(self, ok: bool, message: str, part: str = "outbox") -> None:
        """From any thread: a part of the node's storage (``outbox``, ``evidence``) failed (or is back); the
        loop says so with its next chunk."""
        self._storage.append((ok, message, part))

    def _storage_events(self) -> list[Event]:
        events: list[Event] = []
        while self._storage:
            events += self.monitor.storage(*self._storage.popleft())
        return events

    def late_notices(self) -> None:
        """After ``finish``: tell the sinks storage notices that came in since (replay's evidence writer
        writes the last clip after the file ended). Events only; the state stays ``unknown``."""
        for event in self._storage_events():
            if self.keep_events:
                self.events.append(event)
            for sink in self.sinks:
                sink.event(event)

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Tell the sinks the initial state; start the telemetry period."""
        self._tell_state(force=True)
        if self.telemetry_seconds is not None:
            self._next_telemetry = self.source.clock() + self.telemetry_seconds

    def run(self, stop: Callable[[], str | None] | None = None) -> None:
        """``start``, then chunks until the source ends (then ``finish("end_of_stream")``) or ``stop()``
        returns a reason (then ``finish(reason)``: ``shutdown``, ``reload``)."""
        self.start()
        while True:
            reason = stop() if stop is not None else None
            if reason is not None:
                self.finish(reason)
                return
            if not self.step():
                self.finish("end_of_stream")
                return

    def step(self) -> bool:
        """Process one chunk; False when the source has ended."""
        chunk = self.source.read()
        if chunk is None:
            self.ended = True
            return False
        m = self.monitor
        events = self._storage_events()
        for ok, message in chunk.notices:
            events += m.sensor_fault(not ok, message)
            if self.resampler is not None:
                self.resampler.reset()
        if chunk.overflows:
            events += m.input_overflow(chunk.overflows)
            if self.resampler is not None:
                self.resampler.reset()
        block, dropped = chunk.samples, chunk.dropped
        if len(block) or dropped:
            if self.resampler is not None:
                lost = self.resampler.reset() if dropped else 0
                block = self.resampler.process(block)
                dropped = int(round(dropped * self.model_rate / self.source.rate)) + lost if dropped else 0
            events += m.process(block, dropped)
            self._tap(block, dropped)
            self.last_progress = time.monotonic()
        self._emit(events)
        if self.telemetry_seconds is not None and self.source.clock() >= self._next_telemetry:
            self._next_telemetry = self.source.clock() + self.telemetry_seconds
            self.telemetry()
        return True

    def finish(self, reason: str) -> None:
        """The stream ends (end of file, shutdown, reload): the rest of the resampler (end of file only),
        close an open anomaly, and tell the sinks the monitor no longer listens (state ``unknown``)."""
        events: list[Event] = []
        if reason == "end_of_stream" and self.resampler is not None:
            tail = self.resampler.flush()
            if len(tail):
                events += self.monitor.process(tail)
                self._tap(tail, 0)
        events += self.monitor.finish(reason)
        self._emit(events)
        self._state = None
        for sink in self.sinks:
            sink.state(self.monitor.name, "unknown", None, self.monitor.threshold.value)

    def _tap(self, block: np.ndarray, dropped: int) -> None:
        position = self.monitor.position - len(block)
        for tap in self.taps:
            tap.samples(block, dropped, position)

    # --- what the sinks hear ------------------------------------------------------------------
    def telemetry(self) -> None:
        values = self.monitor.telemetry()
        for sink in self.sinks:
            sink.telemetry(self.monitor.name, values)

    def _emit(self, events: list[Event]) -> None:
        for event in events:
            if self.keep_events:
                self.events.append(event)
            for sink in self.sinks:
                sink.event(event)
        self._tell_state()

    def _tell_state(self, force: bool = False) -> None:
        state = self.monitor.state
        if force or state != self._state:
            self._state = state
            score = self.monitor.detector.last_score
            for sink in self.sinks:
                sink.state(self.monitor.name, state, score if math.isfinite(score) else None,
                           self.monitor.threshold.value)


class WavSource:
    """A WAV file as a source: one channel (or the mix) in blocks of ``block_seconds``, read from disk
    block by block (flat memory for any length). ``realtime`` paces it like a microphone."""

    def __init__(self, path, channel: int | str, block_seconds: float, *, realtime: bool = False):  # noqa: ANN001
        self.path = path
        self.label = str(path)
        self._wav = WavFile(path)
        self.info = self._wav.info
        self.rate = self.info.sample_rate
        self.channel = channel
        self._wav.channel(np.zeros((1, self.info.channels), np.float32), channel)  # a bad channel fails now
        self._block = max(1, int(round(block_seconds * self.rate)))
        self._pos = 0
        self._realtime = realtime
        self._started = time.monotonic()

    @property
    def duration_s(self) -> float:
        return self.info.frames / self.rate

    def read(self) -> Chunk | None:
        if self._pos >= self.info.frames:
            self.close()
            return None
        if self._realtime:
            time.sleep(max(0.0, self._pos / self.rate - (time.monotonic() - self._started)))
        samples = self._wav.channel(self._wav.read(self._pos, self._block), self.channel)
        self._pos += len(samples)
        return Chunk(samples)

    def clock(self) -> float:
        return self._pos / self.rate

    def close(self) -> None:
        self._wav.close()
