"""The JSON-lines event sink: one event per line, for humans, scripts and tests."""

from __future__ import annotations

import sys

from edge_monitor.core.errors import UserError
from edge_monitor.core.events import Event


class JsonlWriter:
    """Appends events as JSON lines to a file (``-``: standard output), flushed after each event."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._file = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise UserError(f"events file {path}: cannot open it for appending ({exc.strerror or exc}); "
                            "give a file in a writable folder") from None

    def write(self, event: Event) -> None:
        self._file.write(event.to_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None and self.path != "-":
            self._file.close()
        self._file = None
