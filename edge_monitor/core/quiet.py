"""The TFLite interpreter's own (C++) log lines: kept off stderr unless asked for.

LiteRT writes ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` straight to the C-level
stderr (file descriptor 2) when an interpreter first allocates its tensors. Its Python API has no
option for that, and its minimal logger reads no environment variable (``TF_CPP_MIN_LOG_LEVEL`` does
not reach it, tensorflow/tensorflow#58050; the C++ ``LoggerOptions::SetMinimumLogSeverity`` is not
exposed to Python). So :func:`quiet_native_log` points fd 2 at a temporary file around interpreter
creation only, and afterwards writes back everything except the interpreter's ``INFO:`` lines: a
warning or error of the interpreter, or a line another thread wrote meanwhile, is delayed, never lost.

:func:`show_native_log` (the command line's ``--log-level debug``, through ``node.log.configure``)
or ``EDGE_MONITOR_NATIVE_LOG=1`` leaves stderr untouched, so those lines show as the library prints them.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
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
    with _lock:
        saved, capture = _redirect()
        if saved is None:  # no stderr to redirect, or no room for the capture: leave it alone
            yield
            return
        try:
            yield
        finally:
            _flush_python_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = b"".join(line for line in capture.read().splitlines(keepends=True)
                            if not line.startswith(DROPPED_PREFIX))
            capture.close()
            _write_all(2, kept)


def _redirect() -> tuple[int, IO[bytes]] | tuple[None, None]:
    try:
        capture = tempfile.TemporaryFile()
    except OSError:
        return None, None
    _flush_python_stderr()
    try:
        saved = os.dup(2)
    except OSError:
        capture.close()
        return None, None
    os.dup2(capture.fileno(), 2)
    return saved, capture


def _flush_python_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no sys.stderr, or closed
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError:
            return  # stderr itself is gone: nothing to write to
        view = view[written:]
