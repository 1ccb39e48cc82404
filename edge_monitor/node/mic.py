"""The microphone: a sounddevice input stream whose callback only copies into ring buffers.

sounddevice (and with it PortAudio) is imported lazily, on the first use of a microphone, so replay
and training run where PortAudio is missing; then a microphone ends in one line saying to install
``libportaudio2``.

Public pieces:

- :class:`Capture` — one input stream of one device feeding one or more ``(channel, RingBuffer)`` taps
  (one monitor per channel). ``start()`` opens it or raises :class:`~edge_monitor.core.errors.UserError`;
  ``supervise()``, called about every 0.5 s from a non-audio thread, notices a lost device and
  reopens it with backoff (see there).
- :func:`resolve_device`, :func:`input_devices`, :func:`rescan_devices` (the ``edge-monitor devices``
  command is ``edge_monitor.commands.devices``). When the device does not offer the model's rate the
  consumer resamples with ``edge_monitor.core.resample.StreamResampler``.

The audio callback (:meth:`Capture._callback`) stores into preallocated ring buffers, plain int
counters and one float; no lock, no logging, no new sample buffer (sounddevice itself wraps each block
in a fresh ndarray view, and ``indata[:, ch]`` is another view: small objects, no sample copies).

PortAudio lists devices once, at initialisation. To find a re-plugged USB microphone again, a
reconnect re-initialises PortAudio (``Pa_Terminate`` + ``Pa_Initialize``), but only while no other
``Capture`` of this process has a stream open, since ``Pa_Terminate`` closes every stream. With
another capture running, the lost device is reopened from the existing list, which works when it
comes back under the same name (same ALSA card index, or a sound server device such as ``pulse``).
PortAudio's ALSA host API prints diagnostics (``Expression '...' failed``) on stderr when a device
fails; they come from C and are not ours to silence.
"""

from __future__ import annotations

import collections
import enum
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from edge_monitor.core.errors import UserError
from edge_monitor.core.loop import Chunk
from edge_monitor.node.ring import RingBuffer

log = structlog.get_logger("edge_monitor.node.mic")

_monotonic = time.monotonic
_DEVICES_HINT = "`edge-monitor devices` lists the input devices"

class PortAudio:
    """The process's PortAudio: the sounddevice module (imported on first use), the one lock for every
    call that opens, closes or re-enumerates (never taken by the audio callback), and the captures that
    have a stream open (PortAudio may be re-initialised only while there are none)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._open: set[int] = set()  # id() of the Captures with a stream open
        self._module: Any = None

    def sd(self) -> Any:
        """sounddevice; a missing PortAudio is a one-line user error."""
        if self._module is None:
            try:
                import sounddevice
            except OSError as exc:  # sounddevice raises OSError("PortAudio library not found")
                raise UserError(f"cannot use a microphone: the PortAudio library is missing ({exc}); "
                                "install it: sudo apt-get install libportaudio2") from None
            except ImportError:
                raise UserError("cannot use a microphone: the Python package sounddevice is missing; "
                                "install it: pip install sounddevice") from None
            self._module = sounddevice
        return self._module

    def opened(self, capture: object) -> None:
        self._open.add(id(capture))

    def closed(self, capture: object) -> None:
        self._open.discard(id(capture))

    def rescan(self) -> bool:
        """Re-initialise PortAudio so that it lists devices again (a re-plugged USB microphone, a sound
        server that started after the import). Refused (False) while a Capture has a stream open."""
        sd = self.sd()
        with self.lock:
            if self._open:
                return False
            if sd._initialized > 0:
                try:
                    sd._terminate()
                except Exception as exc:  # noqa: BLE001 - PortAudio refuses: keep the old list
                    log.debug("portaudio terminate failed", error=str(exc))
                    return False
            try:
                sd._initialize()
            except Exception as exc:  # noqa: BLE001 - PortAudioError: the next rescan tries again
                raise UserError(f"cannot initialise PortAudio: {exc}") from None
            return True


PORTAUDIO = PortAudio()


def _sd() -> Any:
    return PORTAUDIO.sd()


class CaptureState(enum.Enum):
    """A Capture's life: STOPPED (not started, or stopped) → RUNNING ⇄ LOST (being reopened) → STOPPED."""

    STOPPED = "stopped"
    RUNNING = "running"
    LOST = "lost"


# -- devices ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    hostapi: str
    channels: int  # max input channels
    default_rate: float
    is_default: bool

    def label(self) -> str:
        return f"[{self.index}] {self.name} ({self.hostapi})"


def input_devices(include_outputs: bool = False) -> list[InputDevice]:
    """Every device PortAudio lists that has input channels (all devices with ``include_outputs``)."""
    sd = _sd()
    with PORTAUDIO.lock:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        try:
            default_in = sd.default.device[0]
            if default_in is None or default_in < 0:
                default_in = _default_input_index(sd)
        except Exception:  # noqa: BLE001 - no default device is not an error here
            default_in = -1
    out = []
    for d in devices:
        if d["max_input_channels"] <= 0 and not include_outputs:
            continue
        out.append(InputDevice(int(d["index"]), str(d["name"]), str(hostapis[d["hostapi"]]["name"]),
                               int(d["max_input_channels"]), float(d["default_samplerate"]),
                               int(d["index"]) == default_in))
    return out


def _default_input_index(sd: Any) -> int:
    try:
        return int(sd.query_devices(kind="input")["index"])
    except Exception:  # noqa: BLE001 - PortAudioError / ValueError: there is no default input
        return -1


def rescan_devices() -> bool:
    """Re-initialise PortAudio to list devices again; False while a Capture has a stream open."""
    return PORTAUDIO.rescan()


def resolve_device(device: str | int | None, channels: int = 1) -> InputDevice:
    """The input device meant by ``device``: ``None`` = the default input, an int (or a string of
    digits) = an index, any other string = a case-insensitive substring of the device name (or of
    ``"name, host API"``); an exact name wins over a substring. Checks it has ``channels`` inputs.

    Raises UserError (one line) when it is unknown, ambiguous, output-only or has too few channels.
    """
    all_devices = input_devices(include_outputs=True)
    inputs = [d for d in all_devices if d.channels > 0]
    if isinstance(device, str) and device.strip().isdigit():
        device = int(device.strip())
    if device is None:
        found = [d for d in inputs if d.is_default]
        if not found:
            names = ", ".join(d.label() for d in inputs) or "none"
            raise UserError(f"no default input device; set audio.device to one of: {names} ({_DEVICES_HINT})")
        dev = found[0]
    elif isinstance(device, (int, np.integer)) and not isinstance(device, bool):
        match = [d for d in all_devices if d.index == int(device)]
        if not match:
            raise UserError(f"audio device {int(device)} does not exist; {_DEVICES_HINT}")
        dev = match[0]
        if dev.channels <= 0:
            raise UserError(f"audio device {dev.label()} has no input channels; pick a microphone ({_DEVICES_HINT})")
    elif isinstance(device, str) and device.strip():
        query = device.strip().lower()

        def matches(devs: list[InputDevice]) -> list[InputDevice]:
            return [d for d in devs if query in d.name.lower() or query in f"{d.name}, {d.hostapi}".lower()]

        found = matches(inputs)
        exact = [d for d in found if d.name.lower() == query]
        if len(exact) == 1:
            found = exact
        if not found:
            outputs = matches(all_devices)
            if outputs:
                raise UserError(f"audio device {device!r} ({outputs[0].label()}) has no input channels; "
                                f"pick a microphone ({_DEVICES_HINT})")
            raise UserError(f"no input device matches {device!r}; {_DEVICES_HINT}")
        if len(found) > 1:
            raise UserError(f"audio device {device!r} is ambiguous: it matches "
                            f"{', '.join(d.label() for d in found)}; use more of the name or the index")
        dev = found[0]
    else:
        raise UserError(f"audio device must be a name, an index or empty (the default), got {device!r}")
    if dev.channels < channels:
        raise UserError(f"audio device {dev.label()} has {dev.channels} input channel(s) but {channels} are needed "
                        f"(channel {channels - 1} is used); use channel 0..{dev.channels - 1} or another device "
                        f"({_DEVICES_HINT})")
    return dev


# -- capture ---------------------------------------------------------------------------------------


class Capture:
    """One input stream of one device feeding ``taps``: ``[(channel, RingBuffer), ...]``.

    ``device``: name substring, index or None (default input); ``sample_rate``: the wanted capture rate
    (None = the device's default). ``channels``: channels to open (None = highest tapped channel + 1).
    ``block_seconds``: callback block. ``name``: for logs and messages (e.g. the monitors it feeds).

    After ``start()``: ``rate`` (actual capture rate: ``sample_rate`` when the device accepts it,
    otherwise its default rate — then ``resampling`` is True and the consumer runs a
    :class:`StreamResampler` from ``rate`` to the wanted rate), ``device_name``, ``device_index``.
    Counters (read from any thread): ``frames`` delivered by callbacks, ``overflows`` (PortAudio
    input-overflow flags), ``other_flags`` (any other status flag), ``generation`` (streams opened so
    far: a change means a gap in time the ring does not show), ``last_callback`` (``time.monotonic()``).
    The rate stays fixed for the life of the Capture: a reconnect opens at the same rate.
    """

    def __init__(self, device: str | int | None, sample_rate: int | None, channels: int | None,
                 block_seconds: float, taps: Sequence[tuple[int, RingBuffer]], name: str = "", *,
                 latency: str | float = "high", startup_timeout: float = 5.0,
                 backoff: tuple[float, float] = (1.0, 30.0)) -> None:
        if not taps:
            raise ValueError("Capture needs at least one (channel, RingBuffer) tap")
        for ch, ring in taps:
            if isinstance(ch, bool) or not isinstance(ch, (int, np.integer)) or ch < 0:
                raise ValueError(f"Capture: tap channel must be an index >= 0, got {ch!r}")
            if not isinstance(ring, RingBuffer):
                raise TypeError(f"Capture: tap ring must be a RingBuffer, got {type(ring).__name__}")
        need = max(int(ch) for ch, _ in taps) + 1
        if channels is None:
            channels = need
        if channels < need:
            raise ValueError(f"Capture: channel {need - 1} is tapped but only {channels} channel(s) are opened")
        if block_seconds <= 0:
            raise ValueError(f"Capture: block_seconds must be > 0, got {block_seconds}")
        self.device_spec = device
        self.requested_rate = int(sample_rate) if sample_rate else None
        self.channels = int(channels)
        self.block_seconds = float(block_seconds)
        self.name = name
        self.latency = latency
        self.startup_timeout = float(startup_timeout)
        self.backoff_min, self.backoff_max = backoff
        self._taps = tuple((int(ch), ring) for ch, ring in taps)
        self.rate: int | None = None
        self.blocksize = 0
        self.device_name = str(device) if device is not None else "default input"
        self.device_index: int | None = None
        # written by the callback (single writer), read by anyone
        self.frames = 0
        self.overflows = 0
        self.other_flags = 0
        self.last_callback = 0.0
        self._callback_error: BaseException | None = None
        self._finished = False
        self._abort: type[BaseException] = RuntimeError  # sounddevice.CallbackAbort once started
        # owned by the supervising side
        self.generation = 0
        self._stream: Any = None
        self._opened_at = 0.0
        self._frames_at_open = 0
        self.state = CaptureState.STOPPED
        self._backoff = 0.0
        self._next_retry = 0.0
        self._lock = threading.Lock()
        self._log = log.bind(capture=name or self.device_name)

    # -- properties -------------------------------------------------------------------------------

    @property
    def resampling(self) -> bool:
        """True when the capture rate differs from the requested one (the consumer resamples)."""
        return self.requested_rate is not None and self.rate is not None and self.rate != self.requested_rate

    @property
    def lost(self) -> bool:
        """True between a (False, ...) and the next (True, ...) from ``supervise``."""
        return self.state is CaptureState.LOST

    @property
    def running(self) -> bool:
        return self._stream is not None

    def replace_tap(self, old: RingBuffer, new: RingBuffer) -> None:
        """Feed ``new`` instead of ``old`` from the next callback on (a monitor restarted by a reload gets a
        ring of its own: the old processing thread, if it has not ended yet, must not share a ring with the
        new one, since a ring has one consumer). One tuple assignment: the callback sees old or new taps."""
        if not any(ring is old for _, ring in self._taps):
            raise ValueError("replace_tap: that ring is not a tap of this capture")
        self._taps = tuple((ch, new if ring is old else ring) for ch, ring in self._taps)

    # -- the audio callback (PortAudio thread) ----------------------------------------------------

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        try:
            if status:
                if status.input_overflow:
                    self.overflows += 1
                else:
                    self.other_flags += 1
            for channel, ring in self._taps:
                ring.write(indata[:, channel])
            self.frames += frames
            self.last_callback = _monotonic()
        except BaseException as exc:  # noqa: BLE001 - a bug: stop the stream, supervise() reports and reopens
            self._callback_error = exc
            raise self._abort from None

    def _finished_callback(self) -> None:
        self._finished = True

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Resolve the device, choose the rate, open and start the stream; UserError when impossible."""
        with self._lock:
            if self.state is not CaptureState.STOPPED:
                return
            sd = _sd()
            self._abort = sd.CallbackAbort
            dev = resolve_device(self.device_spec, self.channels)
            self.device_name, self.device_index = dev.name, dev.index
            self.rate = self._choose_rate(sd, dev)
            if self.resampling:
                self._log.info("capture rate not offered by the device; resampling", device=dev.name,
                               wanted=self.requested_rate, rate=self.rate)
            self._open(dev)
            self.state = CaptureState.RUNNING
            self._log.info("audio capture started", device=dev.label(), rate=self.rate, channels=self.channels,
                           blocksize=self.blocksize)

    def _choose_rate(self, sd: Any, dev: InputDevice) -> int:
        default = round(dev.default_rate)
        tried = []
        for rate in ([self.requested_rate] if self.requested_rate else []) + [default]:
            try:
                with PORTAUDIO.lock:
                    sd.check_input_settings(device=dev.index, channels=self.channels, dtype="float32",
                                            samplerate=rate)
                return rate
            except Exception as exc:  # noqa: BLE001 - PortAudioError / ValueError
                tried.append(f"{rate} Hz: {exc}")
        raise UserError(f"audio device {dev.label()} cannot record {self.channels} channel(s) of float32 at "
                        f"{' or '.join(tried)}; check the device with `arecord -D ... --dump-hw-params` "
                        f"or pick another ({_DEVICES_HINT})")

    def _open(self, dev: InputDevice) -> None:
        """Open and start a stream on ``dev`` at ``self.rate`` (raises UserError)."""
        sd = _sd()
        self.blocksize = max(1, round(self.block_seconds * self.rate))
        self._callback_error = None
        self._finished = False
        self._frames_at_open = self.frames
        with PORTAUDIO.lock:
            try:
                stream = sd.InputStream(device=dev.index, samplerate=self.rate, channels=self.channels,
                                        dtype="float32", blocksize=self.blocksize, latency=self.latency,
                                        callback=self._callback, finished_callback=self._finished_callback)
            except Exception as exc:  # noqa: BLE001 - PortAudioError, ValueError
                raise UserError(f"cannot open audio device {dev.label()} at {self.rate} Hz with {self.channels} "
                                f"channel(s): {exc}; {_DEVICES_HINT}") from None
            try:
                stream.start()
            except Exception as exc:  # noqa: BLE001
                _close_quietly(stream)
                raise UserError(f"cannot start audio device {dev.label()}: {exc}") from None
            self._stream = stream
            self._opened_at = _monotonic()
            self.generation += 1
            PORTAUDIO.opened(self)

    def _close(self) -> None:
        with PORTAUDIO.lock:
            if self._stream is not None:
                _close_quietly(self._stream)
                self._stream = None
            PORTAUDIO.closed(self)

    def stop(self) -> None:
        """Close the stream (never raises). ``start()`` may be called again afterwards."""
        with self._lock:
            self._close()
            if self.state is not CaptureState.STOPPED:
                self._log.info("audio capture stopped", frames=self.frames, overflows=self.overflows)
            self.state = CaptureState.STOPPED

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        PORTAUDIO.closed(self)

    # -- supervision (a non-audio thread, ~every 0.5 s) -------------------------------------------

    def stall_seconds(self) -> float:
        """Silence from a running stream longer than this means the device is lost: max(1 s, 8 blocks)."""
        return max(1.0, 8 * self.block_seconds)

    def _problem(self, now: float) -> str | None:
        """Why the open stream is not delivering, or None when it is fine (or still starting)."""
        err = self._callback_error
        if err is not None:
            return f"the audio callback failed: {type(err).__name__}: {err}"
        try:
            active = self._stream.active
        except Exception:  # noqa: BLE001 - PortAudioError: PortAudio no longer knows the stream
            active = False
        if self._finished or not active:
            return "the audio stream stopped (device unplugged, or the audio server went away)"
        if self.frames == self._frames_at_open:
            if now - self._opened_at > self.startup_timeout:
                return f"no audio within {self.startup_timeout:.0f} s of opening the stream"
            return None
        silent = now - self.last_callback
        if silent > self.stall_seconds():
            return f"no audio for {silent:.1f} s"
        return None

    def supervise(self) -> list[tuple[bool, str]]:
        """Check the stream; reopen a lost device with backoff. Returns the state changes, oldest first:
        ``(False, "device 'X' stopped delivering audio: <why>")`` when it is lost, ``(True, "device 'X'
        is back")`` once a reopened stream delivers audio again. Never raises for a device problem.

        Lost = the stream is no longer active (PortAudio ended it: the device vanished), the callback
        raised, no callback for more than :meth:`stall_seconds` (or none within ``startup_timeout`` of
        opening). Then the stream is closed and reopened after 1 s, 2 s, 4 s … up to 30 s between
        attempts; each attempt re-initialises PortAudio when no other Capture has a stream open (so a
        re-plugged USB device is listed again), resolves ``device`` again by name, and opens at ``rate``.
        A reopened stream counts as back only when its first block arrives.
        """
        changes: list[tuple[bool, str]] = []
        with self._lock:
            if self.state is CaptureState.STOPPED:
                return changes
            now = _monotonic()
            if self._stream is not None:
                problem = self._problem(now)
                if problem is None:
                    if self.state is CaptureState.LOST and self.frames > self._frames_at_open:
                        self.state = CaptureState.RUNNING
                        self._backoff = 0.0
                        msg = f"device '{self.device_name}' is back"
                        self._log.info("audio device back", device=self.device_name, generation=self.generation)
                        changes.append((True, msg))
                    return changes
                self._close()
                if self.state is not CaptureState.LOST:
                    self.state = CaptureState.LOST
                    self._backoff = self.backoff_min
                    msg = f"device '{self.device_name}' stopped delivering audio: {problem}"
                    self._log.warning("audio device lost", device=self.device_name, reason=problem,
                                      retry_seconds=self._backoff)
                    changes.append((False, msg))
                else:
                    self._backoff = min(self._backoff * 2, self.backoff_max)
                    self._log.info("audio device reopened but silent; retrying", device=self.device_name,
                                   reason=problem, retry_seconds=self._backoff)
                self._next_retry = now + self._backoff
                return changes
            if now < self._next_retry:
                return changes
            try:
                self._reopen()
            except (UserError, OSError, _sd().PortAudioError) as exc:
                self._backoff = min(max(self._backoff, self.backoff_min) * 2, self.backoff_max)
                self._next_retry = _monotonic() + self._backoff
                self._log.info("audio device still missing", device=self.device_name, error=str(exc),
                               retry_seconds=self._backoff)
            return changes

    def _reopen(self) -> None:
        rescanned = rescan_devices()
        if not rescanned:
            self._log.debug("portaudio not re-initialised: another capture has a stream open")
        dev = resolve_device(self.device_spec, self.channels)
        sd = _sd()
        try:
            with PORTAUDIO.lock:
                sd.check_input_settings(device=dev.index, channels=self.channels, dtype="float32",
                                        samplerate=self.rate)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"audio device {dev.label()} cannot be opened at {self.rate} Hz: {exc}") from None
        self.device_name, self.device_index = dev.name, dev.index
        self._open(dev)
        self._log.info("audio device reopened", device=dev.label(), generation=self.generation)


def _close_quietly(stream: Any) -> None:
    for step in (stream.abort, stream.close):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - a vanished device may refuse; the stream is gone anyway
            log.debug("closing audio stream", step=step.__name__, error=str(exc))


# -- the microphone as a source of the loop ------------------------------------------------------------


class MicSource:
    """One channel of a :class:`Capture` as a :class:`~edge_monitor.core.loop.Source`: the ring it feeds,
    the driver's overflow count and the supervisor's device notices.

    ``read`` takes all the ring holds; when the ring held less than the read buffer (it is empty now), the
    next ``read`` first sleeps ``poll_seconds`` (or until ``wake`` is set): each wake-up of a processing
    thread costs CPU, so it wakes ~10 times a second rather than once per audio block. ``device(ok, message)``
    is called by the supervisor (main thread); ``device_lost`` survives into the next MicSource of a reload.
    """

    def __init__(self, capture: Capture, ring: RingBuffer, channel: int, *, read_seconds: float,
                 poll_seconds: float, wake: threading.Event, device_lost: bool = False,
                 lost_message: str = "") -> None:
        self.capture = capture
        self.ring = ring
        self.rate = int(capture.rate or 0)
        self.label = f"mic:{capture.device_name}:{channel}"
        self._buf = np.empty(max(1, int(round(read_seconds * self.rate))), dtype=np.float32)
        self._poll = poll_seconds
        self._wake = wake
        self._overflows = capture.overflows
        self._notices: collections.deque[tuple[bool, str]] = collections.deque(maxlen=64)
        self._idle = False
        self.device_lost = device_lost
        if device_lost:  # a reload while the device is lost: the new monitor must know at once
            self._notices.append((False, lost_message or "device lost before this monitor started"))

    def device(self, ok: bool, message: str) -> None:
        self.device_lost = not ok
        self._notices.append((ok, message))

    def read(self) -> Chunk:
        if self._idle:
            self._wake.wait(self._poll)
        notices = []
        while self._notices:
            notices.append(self._notices.popleft())
        overflows = self.capture.overflows
        new_overflows, self._overflows = overflows - self._overflows, overflows
        n, dropped = self.ring.read(self._buf)
        self._idle = n < len(self._buf)
        return Chunk(self._buf[:n], dropped, new_overflows, tuple(notices))

    def clock(self) -> float:
        return time.monotonic()
