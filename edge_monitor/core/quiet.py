"""The TFLite interpreter's own (C++) log lines: kept off stderr unless asked for.

LiteRT writes ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` straight to the C-level
stderr (file descriptor 2) when an interpreter first allocates its tensors. Its Python API has no
option for that, and its minimal logger reads no environment variable (``TF_CPP_MIN_LOG_LEVEL`` does
not reach it, tensorflow/tensorflow#58050; the C++ ``LoggerOptions::SetMinimumLogSeverity`` is not
exposed to Python). So :func:`quiet_native_log` points fd 2 at a temporary file around interpreter
creation only, and afterwards writes back everything except the interpreter's ``INFO:`` lines: a
warning or error of the interpreter, or a line another thread wrote meanwhile, is delayed, never lost.
:func:`held_back` is the one such redirection (training holds TensorFlow's chatter back with it too).

:func:`show_native_log` (the command line's ``--log-level debug``, through ``node.log.configure``)
or ``EDGE_MONITOR_NATIVE_LOG=1`` leaves stderr untouched, so those lines show as the library prints them.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

NATIVE_LOG_ENV = "EDGE_MONITOR_NATIVE_LOG"
DROPPED_PREFIX = b"INFO: "  # TFLite's minimal logger: "<SEVERITY>: message"; only INFO is dropped

_lock = threading.RLock()  # fd 2 is the process's: one redirection at a time
_show: bool | None = None  # None: the environment variable decides


def show_native_log(show: bool | None) -> None:
    """Let the interpreter's own lines through (True), drop its INFO lines (False), or follow the env (None)."""
    global _show
    _show = show


def native_log_shown() -> bool:
    if _show is not None:
        return _show
    return os.environ.get(NATIVE_LOG_ENV, "") not in ("", "0")


@contextmanager
def quiet_native_log() -> Iterator[None]:
    """Around interpreter creation: the interpreter's ``INFO:`` lines on fd 2 are dropped, nothing else."""
    if native_log_shown():
        yield
        return
    with held_back((2,), drop=lambda line: line.startswith(DROPPED_PREFIX)):
        yield


@contextmanager
def held_back(fds: tuple[int, ...] = (2,), *, drop: Callable[[bytes], bool] | None = None,
              only_on_error: bool = False, limit: int | None = None) -> Iterator[None]:
    """Point the file descriptors ``fds`` (C-level stdout 1, stderr 2) at one temporary file for the block.

    Afterwards what was captured goes to fd 2: every line but those ``drop`` matches, or with
    ``only_on_error`` nothing unless the block raised (then all of it, the last ``limit`` bytes).
    One redirection at a time in the process (a lock); Python's own buffers are flushed around it.
    """
    with _lock:
        saved, capture = _redirect(fds)
        if capture is None:  # a descriptor to redirect is closed, or no room for the capture: leave them
            yield
            return
        failed = True
        try:
            yield
            failed = False
        finally:
            _flush_python_streams()
            for fd, original in zip(fds, saved):
                os.dup2(original, fd)
                os.close(original)
            capture.seek(0)
            data = capture.read()
            capture.close()
            if only_on_error:
                data = data if failed else b""
            elif drop is not None:
                data = b"".join(line for line in data.splitlines(keepends=True) if not drop(line))
            _write_all(2, data[-limit:] if limit else data)


def _redirect(fds: tuple[int, ...]) -> tuple[list[int], IO[bytes] | None]:
    try:
        capture = tempfile.TemporaryFile()
    except OSError:
        return [], None
    _flush_python_streams()
    saved: list[int] = []
    try:
        for fd in fds:
            saved.append(os.dup(fd))
    except OSError:
        for original in saved:
            os.close(original)
        capture.close()
        return [], None
    for fd in fds:
        os.dup2(capture.fileno(), fd)
    return saved, capture


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # no such stream, or closed
            pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError:
            return  # stderr itself is gone: nothing to write to
        view = view[written:]
