"""The systemd notify protocol (``sd_notify``), without a library: one datagram per message.

``$NOTIFY_SOCKET`` names an ``AF_UNIX`` datagram socket (a leading ``@`` means the abstract
namespace); each message is newline-separated ``KEY=VALUE`` lines: ``READY=1``, ``RELOADING=1``,
``STOPPING=1``, ``WATCHDOG=1``, ``STATUS=…``. ``$WATCHDOG_USEC`` (for ``$WATCHDOG_PID`` if set) is
the watchdog timeout. Outside systemd every call is a no-op. See sd_notify(3).
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)  # a receiver that does not read must never stall the daemon
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_seconds = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *lines: str) -> bool:
        if self._socket is None:
            return False
        try:
            self._socket.sendto("\n".join(lines).encode(), self._address)
            return True
        except OSError:  # systemd gone or its queue full (EAGAIN): never take the daemon down for it
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")


def name_thread(name: str) -> None:
    """Name the calling OS thread (``top -H``, ``/proc/<pid>/task/*/comm``, the journal's ``_COMM``; 15 bytes):
    how a service's threads tell apart on the node. Linux only, best effort."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15] + b"\0", 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass
