"""structlog setup: human-readable lines on a terminal, JSON lines under systemd (journald) or on request."""

from __future__ import annotations

import logging
import os
import sys
import threading

import structlog

from edge_monitor.core.quiet import show_native_log


def configure(fmt: str = "auto", level: str = "info") -> None:
    """``fmt``: ``console``, ``json``, or ``auto`` (JSON when run by systemd, i.e. ``JOURNAL_STREAM`` is set)."""
    show_native_log(True if level.lower() == "debug" else None)  # debug: the interpreter's own lines too
    if fmt == "auto":
        fmt = "json" if os.environ.get("JOURNAL_STREAM") else "console"
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


class _StderrLogger:
    """structlog's PrintLogger, but to whatever ``sys.stderr`` is when a line is written (not the stream of
    the moment ``configure`` ran, which a caller such as a test harness may have closed since). A line is one
    write under one lock: the daemon logs from several threads, and ``print`` writes the text and the newline
    separately, so two threads could join their lines into one that no JSON reader can split."""

    _lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            stream = sys.stderr
            stream.write(message + "\n")
            stream.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def _stderr_logger(*_args: object) -> _StderrLogger:
    return _StderrLogger()
