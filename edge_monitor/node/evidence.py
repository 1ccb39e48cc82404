"""The audio behind every alert: a WAV (and a log-mel PNG) per anomaly in ``<root>/evidence/<monitor>/``.

Two halves, so the processing thread never waits for a disk:

- :class:`EvidenceStage`, one per monitor, runs on the processing thread. It is a
  :class:`~edge_monitor.core.loop.Tap` (it sees the model-rate samples the Monitor was given, after the
  one resampler) and the monitor's sink. It keeps a preallocated int16 pre-roll ring; from
  ``anomaly_start`` it copies the ring's last ``pre_roll_seconds`` (counted back from the anomaly's start)
  and then every block into one of two preallocated clip buffers, until ``anomaly_end`` or
  ``max_seconds`` of anomaly, and hands the full buffer to the writer. No free buffer (the writer is
  behind by two clips): the clip is dropped, counted (``clips_dropped``) and logged — the daemon never
  waits; replay (``blocking=True``) waits instead, so a file gives every clip.
- :class:`EvidenceWriter`, one per node, a thread. Events, states and telemetry of every stage pass
  through its queue in order (unbounded: an event is never dropped here; audio memory is bounded by the
  buffers). It writes a clip's WAV (16-bit PCM at the model rate), its PNG and a JSON sidecar
  ``<id>.json`` (the index: event, sha256, the operator's label later), all through ``statedir``
  (0640), then forwards the events after it: ``anomaly_update`` and ``anomaly_end`` of that anomaly
  carry ``evidence: {file, sha256, start_position_s, duration_s}``. A write that fails (disk full,
  read-only, less free space than the clip plus a reserve) stops that clip, never monitoring: the events
  go out without evidence and each monitor raises a ``storage`` health event (``Loop.storage_notice``),
  cleared by the next clip that is written.

Retention, after each write and at start: clips older than ``max_age_days`` go, then the oldest until
``evidence/`` fits ``quota_mb``; the newest clip of each monitor always stays.

Rolling normal sample: every ``normal_sample_seconds`` a stage keeps the last ``NORMAL_CLIP_SECONDS`` of
audio its detector judged normal throughout (health ok) as
``<root>/normal/<monitor>/<type>/train/normal_id_<NN>_sample_<id>.wav``, at most ``normal_sample_max`` of them
(oldest dropped). ``normal/<monitor>/`` is the monitor's normal set: 16-bit mono WAVs at the model rate in the
DCASE layout ``record --out`` writes and ``train`` and ``calibrate --from`` read; ``label`` adds clips to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import structlog

from edge_monitor.core.detector import NORMAL
from edge_monitor.core.events import ANOMALY_TYPES, Event, EvidenceInfo, iso_ms, new_id
from edge_monitor.core.features import FeatureParams
from edge_monitor.core.loop import Sink
from edge_monitor.core.monitor import Monitor
from edge_monitor.core.picture import log_mel_png
from edge_monitor.core.wav import wav_bytes
from edge_monitor.node.settings import EvidenceSettings
from edge_monitor.node.statedir import ensure_dir, write_atomic

log = structlog.get_logger()

HEADROOM_SECONDS = 30.0     # the ring also holds the time from an anomaly's start to its alert (k of n, min duration)
NORMAL_CLIP_SECONDS = 10.0  # length of a rolling normal sample
BUFFERS = 2                 # clip buffers per monitor: one being filled, one being written
RESERVE_BYTES = 64 << 20    # free space evidence leaves on its file system (at most 2 % of it)
SIDE = ".json"


def evidence_dir(root: str | Path, monitor: str) -> Path:
    return Path(root) / "evidence" / monitor


def normal_dir(root: str | Path, monitor: str) -> Path:
    """A monitor's normal set: a DCASE root, ``<type>/train/normal_id_<NN>_*.wav`` below it, as ``record --out``
    writes it, so ``train`` (no flags) and ``calibrate --from`` read it as it is."""
    return Path(root) / "normal" / monitor


def normal_clip(root: str | Path, monitor: str, machine_type: str, machine_id: str, kind: str, clip_id: str) -> Path:
    """Where a normal clip of ``kind`` (``label``, ``sample``) goes in the monitor's normal set:
    ``normal/<monitor>/<type>/train/normal_<id_NN>_<kind>_<clip id>.wav`` (the DCASE 2020 name ``train``
    parses for the machine id; ids that are not ``id_NN`` become ``id_00``)."""
    ident = machine_id if re.fullmatch(r"id_\d+", machine_id) else "id_00"
    return normal_dir(root, monitor) / machine_type / "train" / f"normal_{ident}_{kind}_{clip_id}.wav"


def faults_dir(root: str | Path, monitor: str) -> Path:
    return Path(root) / "faults" / monitor


def to_int16(block: np.ndarray) -> np.ndarray:
    """float32 samples in [-1, 1] as int16 (rounded, clipped), the WAV's PCM."""
    return np.clip(np.rint(block * 32768.0), -32768, 32767).astype(np.int16)


class _Ring:
    """The pre-roll: the last ``capacity`` int16 samples by stream position (single thread, no locks;
    node/ring.py is the float32 producer/consumer ring between threads, a different job)."""

    def __init__(self, capacity: int):
        self.buf = np.zeros(capacity, np.int16)
        self.capacity = capacity
        self.end = 0  # stream position after the newest sample

    @property
    def start(self) -> int:
        return max(0, self.end - self.capacity)

    def write(self, samples: np.ndarray, position: int) -> None:
        """``samples`` (int16) start at stream ``position``; a gap before them is filled with zeros."""
        if position > self.end:  # samples were lost: zeros keep positions on the stream's time line
            self._put(np.zeros(min(position - self.end, self.capacity), np.int16), position - min(
                position - self.end, self.capacity))
        self._put(samples, position)

    def _put(self, samples: np.ndarray, position: int) -> None:
        if len(samples) > self.capacity:
            position += len(samples) - self.capacity
            samples = samples[-self.capacity:]
        i = position % self.capacity
        first = min(len(samples), self.capacity - i)
        self.buf[i:i + first] = samples[:first]
        self.buf[:len(samples) - first] = samples[first:]
        self.end = position + len(samples)

    def copy(self, start: int, out: np.ndarray) -> int:
        """Copy positions ``start`` .. ``end`` (clipped to the ring and to ``out``) into ``out``; returns the count."""
        start = max(start, self.start)
        n = min(self.end - start, len(out))
        if n <= 0:
            return 0
        i = start % self.capacity
        first = min(n, self.capacity - i)
        out[:first] = self.buf[i:i + first]
        out[first:n] = self.buf[:n - first]
        return n


@dataclass
class _Recording:
    id: str
    buffer: np.ndarray
    start: int             # stream position of buffer[0]
    n: int                 # samples in the buffer
    anomaly_start: int     # stream position where the anomaly began
    stop_at: int           # the cap: stream position where the clip is cut


@dataclass(frozen=True)
class _Clip:
    """A finished recording, for the writer."""

    stage: EvidenceStage
    id: str
    buffer: np.ndarray
    n: int
    start: int
    capped: bool
    kind: str = "anomaly"  # or "normal" (a rolling normal sample)


class EvidenceStage:
    """One monitor's recorder (processing-thread side) and its sink in front of ``sink`` (see the module
    docstring). Build it with :meth:`EvidenceWriter.stage`, pass it to the Loop as sink and tap, ``bind`` it."""

    def __init__(self, writer: EvidenceWriter, monitor: Monitor, sinks: Sequence[Sink], settings: EvidenceSettings):
        self.writer = writer
        self.monitor = monitor
        self.name = monitor.name
        self.sinks = tuple(sinks)
        self.settings = settings
        self.rate = rate = monitor.params.sample_rate
        self.params: FeatureParams = monitor.params
        self.ring = _Ring(int((settings.pre_roll_seconds + HEADROOM_SECONDS) * rate))
        size = int(max(settings.pre_roll_seconds + settings.max_seconds, NORMAL_CLIP_SECONDS) * rate) + 1
        self._free: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        for _ in range(BUFFERS):
            self._free.put(np.zeros(size, np.int16))
        self._rec: _Recording | None = None
        self._loop = None
        self.clips_dropped = 0
        self._normal_from = 0            # stream position since which the detector said normal throughout
        self._next_normal = 0            # no rolling sample before this position
        self._log = log.bind(monitor=self.name)

    def bind(self, loop) -> None:  # noqa: ANN001 - core.loop.Loop
        """The Loop this stage serves: a storage failure is told to it (``storage_notice``)."""
        self._loop = loop

    def storage(self, ok: bool, message: str) -> None:
        if self._loop is not None:
            self._loop.storage_notice(ok, message, "evidence")

    def release(self, buffer: np.ndarray) -> None:
        """From the writer: a clip buffer is free again."""
        self._free.put(buffer)

    def _take_buffer(self) -> np.ndarray | None:
        try:
            return self._free.get(block=self.writer.blocking, timeout=None if self.writer.blocking else 0)
        except queue.Empty:
            return None

    # --- Tap: the samples ---------------------------------------------------------------------
    def samples(self, block: np.ndarray, dropped: int, position: int) -> None:
        pcm = to_int16(block)
        self.ring.write(pcm, position)
        end = position + len(pcm)
        rec = self._rec
        if rec is not None:
            at = position - rec.start        # where this block goes in the buffer (a gap stays zeros)
            stop = min(len(rec.buffer), rec.stop_at - rec.start)
            if at > rec.n:
                rec.buffer[rec.n:min(at, stop)] = 0
            take = max(0, min(len(pcm), stop - at))
            if take:
                rec.buffer[at:at + take] = pcm[:take]
            rec.n = max(rec.n, min(at + take, stop))
            if rec.n >= stop:  # the cap: the file is written now; later events of this anomaly carry it
                self._hand_over(capped=True)
        if self.settings.normal_sample_seconds > 0:
            self._normal_sample(end, dropped)

    def _normal_sample(self, end: int, dropped: int) -> None:
        m = self.monitor
        if dropped or m.health.bad or m.detector.state != NORMAL or not m.detector.decisions:
            self._normal_from = end
            return
        length = int(NORMAL_CLIP_SECONDS * self.rate)
        if end - self._normal_from < length or end < self._next_normal or self.ring.end - self.ring.start < length:
            return
        buffer = self._take_buffer() if self._rec is None else None
        if buffer is None:
            return
        n = self.ring.copy(end - length, buffer)
        self._next_normal = end + int(self.settings.normal_sample_seconds * self.rate)
        self.writer.put(("clip", _Clip(self, new_id(), buffer, n, end - length, False, "normal")))

    # --- Sink: the events ---------------------------------------------------------------------
    def event(self, event: Event) -> None:
        if event.type == "anomaly_start":
            self._start(event)
        elif event.type == "anomaly_end" and self._rec is not None and self._rec.id == event.id:
            stop = round(event.audio_position_s * self.rate)
            self._rec.n = max(0, min(self._rec.n, stop - self._rec.start))
            self._hand_over(capped=False)
        self.writer.put(("event", self.sinks, event))

    def state(self, monitor: str, state: str, score: float | None, threshold: float) -> None:
        self.writer.put(("state", self.sinks, (monitor, state, score, threshold)))

    def telemetry(self, monitor: str, values: dict) -> None:
        self.writer.put(("telemetry", self.sinks, (monitor, values)))

    def _start(self, event: Event) -> None:
        if self._rec is not None:  # cannot happen (one anomaly at a time); be safe
            self._hand_over(capped=False)
        buffer = self._take_buffer()
        if buffer is None:
            self.clips_dropped += 1
            self._log.error("evidence clip dropped: the writer is behind", id=event.id, dropped=self.clips_dropped)
            return
        assert event.anomaly is not None
        began = round(event.anomaly.started_position_s * self.rate)
        start = max(self.ring.start, began - int(self.settings.pre_roll_seconds * self.rate))
        stop_at = min(start + len(buffer), began + int(self.settings.max_seconds * self.rate))
        n = self.ring.copy(start, buffer[:stop_at - start])
        self._rec = _Recording(event.id, buffer, start, n, began, stop_at)
        if start + n >= stop_at:  # long blocks (replay): the cap is already reached; anomaly_start carries it
            self._hand_over(capped=True)

    def _hand_over(self, *, capped: bool) -> None:
        rec, self._rec = self._rec, None
        assert rec is not None
        if rec.n <= 0:
            self.release(rec.buffer)
            return
        self.writer.put(("clip", _Clip(self, rec.id, rec.buffer, rec.n, rec.start, capped)))

    def finish(self) -> None:
        """The loop ended without an ``anomaly_end`` for an open recording (cannot happen: finish closes it)."""
        if self._rec is not None:
            self._hand_over(capped=False)


class EvidenceWriter:
    """The node's evidence thread: writes clips, forwards every stage's output in order (module docstring).

    ``root`` is the state folder (``evidence/``, ``normal/`` below it). ``blocking``: stages wait for a free
    clip buffer instead of dropping the clip (replay). ``start()`` runs retention once and starts the thread;
    ``close(timeout)`` writes and forwards everything queued, then stops it.
    """

    def __init__(self, root: str | Path, settings: EvidenceSettings, *, blocking: bool = False):
        self.root = Path(root).absolute()  # events name the file by its full path
        self.settings = settings
        self.blocking = blocking
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._evidence: dict[tuple[str, str], EvidenceInfo] = {}  # (monitor, anomaly id) → its clip
        self._failing: str | None = None          # why clips cannot be written now (logged once per change)
        self._told: set[EvidenceStage] = set()    # stages that raised a storage health event
        self.clips_written = 0
        self.clips_failed = 0
        self._thread = threading.Thread(target=self._run, name="evidence", daemon=True)

    def stage(self, monitor: Monitor, sinks: Sequence[Sink]) -> EvidenceStage:
        """A recorder for ``monitor`` in front of ``sinks``: give it to the Loop as its sink and tap, then ``bind``."""
        return EvidenceStage(self, monitor, sinks, self.settings)

    def start(self) -> None:
        try:
            self.retention()
        except OSError as exc:
            log.error("evidence retention failed", folder=str(self.root / "evidence"), error=exc.strerror)
        self._thread.start()

    def put(self, item: tuple) -> None:
        self._queue.put(item)

    def flush(self) -> None:
        """Wait until everything queued so far is written and forwarded (replay, between files)."""
        if self._thread.is_alive():
            done = threading.Event()
            self._queue.put(("flush", done))
            done.wait()

    def close(self, timeout: float = 10.0) -> bool:
        """Drain the queue (write every clip, forward every event) and stop; False if not done in ``timeout``."""
        if not self._thread.is_alive():
            return True
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._handle(item)
            except Exception:  # a bug must cost one item, never the events behind it
                log.exception("evidence writer: item failed", kind=item[0])

    def _handle(self, item: tuple) -> None:
        kind, target, payload = item[0], item[1], item[2] if len(item) > 2 else None
        if kind == "event":
            self._forward(target, payload)
        elif kind == "flush":
            target.set()
        elif kind == "state":
            for sink in target:
                sink.state(*payload)
        elif kind == "telemetry":
            for sink in target:
                sink.telemetry(*payload)
        elif kind == "clip":
            try:
                if target.kind == "normal":
                    self._write_normal(target)
                else:
                    self._write_clip(target)
            finally:
                target.stage.release(target.buffer)

    def _forward(self, sinks: tuple[Sink, ...], event: Event) -> None:
        key = (event.monitor, event.id)
        if event.type in ANOMALY_TYPES and key in self._evidence:
            event = replace(event, evidence=self._evidence[key])
            if event.type == "anomaly_end":
                del self._evidence[key]
                self._record_event(event)
        for sink in sinks:
            sink.event(event)

    # --- writing ------------------------------------------------------------------------------
    def _write_clip(self, clip: _Clip) -> None:
        stage = clip.stage
        folder = evidence_dir(self.root, stage.name)
        wav_path, png_path, side_path = (folder / f"{clip.id}{ext}" for ext in (".wav", ".png", SIDE))
        samples = clip.buffer[:clip.n]
        data = wav_bytes(samples, stage.rate)
        try:
            png = log_mel_png(samples.astype(np.float32) / 32768.0, stage.params)
            ensure_dir(folder)
            self._check_space(folder, len(data) + len(png))
            write_atomic(wav_path, data)
            write_atomic(png_path, png)
            sha = hashlib.sha256(data).hexdigest()
            info = EvidenceInfo(str(wav_path), sha, clip.start / stage.rate, clip.n / stage.rate)
            origin = stage.monitor.origin
            side = {"id": clip.id, "monitor": stage.name, "node": origin.node, "source": origin.source,
                    "machine": {"type": origin.machine_type, "id": origin.machine_id},
                    "model": {"name": origin.model_name, "sha256": origin.model_sha256},
                    "evidence": info.to_dict(), "png": str(png_path), "sample_rate": stage.rate,
                    "capped": clip.capped, "written": iso_ms(time.time_ns() // 1_000_000), "event": None,
                    "label": None}
            write_atomic(side_path, (json.dumps(side, indent=1) + "\n").encode())
        except OSError as exc:
            for path in (wav_path, png_path, side_path):  # and write_atomic's temp file, if a write failed
                for leftover in (path, path.with_name(f".{path.name}.tmp")):
                    with contextlib.suppress(OSError):
                        leftover.unlink(missing_ok=True)
            self._failed(stage, clip.id, exc)
            return
        self._evidence[(stage.name, clip.id)] = info
        self.clips_written += 1
        log.info("evidence written", monitor=stage.name, id=clip.id, file=str(wav_path),
                 duration_s=round(info.duration_s, 2), capped=clip.capped)
        self._recovered()
        try:
            self.retention()
        except OSError as exc:
            log.error("evidence retention failed", folder=str(self.root / "evidence"), error=exc.strerror)

    def _write_normal(self, clip: _Clip) -> None:
        stage = clip.stage
        origin = stage.monitor.origin
        target = normal_clip(self.root, stage.name, origin.machine_type, origin.machine_id, "sample", clip.id)
        folder = target.parent
        data = wav_bytes(clip.buffer[:clip.n], stage.rate)
        try:
            ensure_dir(folder)
            self._check_space(folder, len(data))
            write_atomic(target, data)
            samples = sorted(folder.glob("normal_*_sample_*.wav"))  # ids sort by time
            for old in samples[:max(0, len(samples) - self.settings.normal_sample_max)]:
                old.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("normal sample not kept", monitor=stage.name, error=exc.strerror or str(exc))
            return
        log.info("normal sample kept", monitor=stage.name, file=str(target))

    def _check_space(self, folder: Path, size: int) -> None:
        st = os.statvfs(folder)
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        reserve = min(RESERVE_BYTES, total // 50)
        if free < size + reserve:
            raise OSError(28, f"No space left for evidence: {free} bytes free, a clip needs {size} + a reserve "
                              f"of {reserve}")

    def _failed(self, stage: EvidenceStage, clip_id: str, exc: OSError) -> None:
        self.clips_failed += 1
        reason = exc.strerror or str(exc)
        if self._failing != reason:
            self._failing = reason
            log.error("evidence cannot be written; monitoring goes on, events go out without evidence",
                      monitor=stage.name, folder=str(self.root / "evidence"), error=reason)
        else:
            log.warning("evidence clip not written", monitor=stage.name, id=clip_id, error=reason)
        if stage not in self._told:
            self._told.add(stage)
            stage.storage(False, f"evidence clips cannot be written in {self.root / 'evidence'}: {reason}")

    def _recovered(self) -> None:
        if self._failing is None:
            return
        log.info("evidence clips are written again", folder=str(self.root / "evidence"))
        self._failing = None
        for stage in self._told:
            stage.storage(True, "evidence clips are written again")
        self._told.clear()

    def _record_event(self, event: Event) -> None:
        """The sidecar keeps the ``anomaly_end`` event (with its evidence) as the index entry."""
        side = evidence_dir(self.root, event.monitor) / f"{event.id}{SIDE}"
        try:
            data = json.loads(side.read_text())
            data["event"] = event.to_dict()
            write_atomic(side, (json.dumps(data, indent=1) + "\n").encode())
        except (OSError, ValueError) as exc:
            log.warning("evidence sidecar not updated", monitor=event.monitor, id=event.id, error=str(exc))

    # --- retention ----------------------------------------------------------------------------
    def retention(self) -> list[Path]:
        """Drop clips older than ``max_age_days``, then the oldest until ``evidence/`` fits ``quota_mb``;
        never the newest clip of a monitor. Returns the WAVs removed."""
        return enforce_retention(self.root / "evidence", int(self.settings.quota_mb * 1_000_000),
                                 self.settings.max_age_days * 86400.0)


def enforce_retention(folder: Path, quota_bytes: int, max_age_s: float, now: float | None = None) -> list[Path]:
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    clips = []  # (mtime, bytes of the clip's files, wav path)
    newest: dict[Path, tuple[float, Path]] = {}
    for monitor in sorted(p for p in folder.iterdir() if p.is_dir()):
        for wav in monitor.glob("*.wav"):
            parts = [wav.with_suffix(ext) for ext in (".wav", ".png", SIDE)]
            try:
                mtime = wav.stat().st_mtime
                size = sum(p.stat().st_size for p in parts if p.exists())
            except FileNotFoundError:
                continue
            clips.append((mtime, size, wav))
            if monitor not in newest or (mtime, wav.name) > newest[monitor]:
                newest[monitor] = (mtime, wav.name)
    keep = {monitor / name for monitor, (_, name) in newest.items()}
    clips.sort()
    total = sum(size for _, size, _ in clips)
    removed = []
    for mtime, size, wav in clips:
        if wav in keep:
            continue
        if now - mtime > max_age_s or total > quota_bytes:
            for ext in (".wav", ".png", SIDE):
                wav.with_suffix(ext).unlink(missing_ok=True)
            total -= size
            removed.append(wav)
            log.info("evidence removed (retention)", file=str(wav), age_days=round((now - mtime) / 86400, 1))
    return removed
