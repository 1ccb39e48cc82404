"""One monitor's microphone outside the daemon (``record``, ``calibrate``): the daemon's own chain.

The same :class:`~edge_monitor.node.mic.Capture` (device, channel, rate as ``run`` would choose them) and
:class:`~edge_monitor.node.mic.MicSource`; ``supervise()`` is called about every 0.5 s as the daemon's main
loop does, and a lost device ends the command with one line (what was captured so far is kept).
"""

from __future__ import annotations

import threading
import time

from edge_monitor.core.errors import UserError
from edge_monitor.node.mic import Capture, MicSource
from edge_monitor.node.ring import RingBuffer
from edge_monitor.node.settings import MonitorSettings, Settings

MAX_RING_RATE = 48_000
SUPERVISE_SECONDS = 0.5


class DeviceLost(UserError):
    """The device vanished while a command listened to it: one line, exit 2."""


class MonitorMic:
    """The microphone of one monitor: ``start()``, then ``source`` (a Loop Source), ``check()`` often, ``stop()``."""

    def __init__(self, settings: Settings, monitor: MonitorSettings, rate: int):
        if not isinstance(monitor.channel, int):
            raise UserError(f"monitor {monitor.name}: channel 'mix' is for replaying files; a microphone needs a "
                            "channel index (0, 1, ...)")
        audio = settings.audio
        device = monitor.device if monitor.device is not None else audio.device
        self.monitor = monitor
        self.ring = RingBuffer(int(audio.ring_seconds * max(rate, MAX_RING_RATE)))
        self.capture = Capture(device, audio.sample_rate or rate, monitor.channel + 1, audio.block_seconds,
                               [(monitor.channel, self.ring)], name=monitor.name)
        self._wake = threading.Event()
        self.source: MicSource | None = None
        self._next_check = 0.0

    def start(self) -> MicSource:
        self.capture.start()  # UserError when the device is busy, missing or refuses the rate
        self.source = MicSource(self.capture, self.ring, int(self.monitor.channel), read_seconds=0.5,
                                poll_seconds=0.1, wake=self._wake)
        self._next_check = time.monotonic() + SUPERVISE_SECONDS
        return self.source

    def check(self) -> None:
        """Supervise the stream (at most every 0.5 s); DeviceLost when the device stopped delivering."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + SUPERVISE_SECONDS
        for ok, message in self.capture.supervise():
            if not ok:
                raise DeviceLost(message)

    def stop(self) -> None:
        self.capture.stop()


def pick_monitor(settings: Settings, name: str) -> MonitorSettings:
    """The monitor ``name`` of ``settings``; one line naming the ones it has otherwise."""
    try:
        return settings.monitor(name)
    except KeyError:
        names = ", ".join(m.name for m in settings.monitors)
        raise UserError(f"no monitor {name!r} in {settings.source or 'the config'} (it has: {names})") from None
