"""Reading small files a user points at (config, manifest, password) with a size cap: never ``/dev/zero`` into memory."""

from __future__ import annotations

import os


class TooLarge(Exception):
    """The file holds more than the cap; ``str()`` is empty: each caller says what the file should be."""


def read_capped(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of ``path``, or :class:`TooLarge` when it holds more than ``limit``; OSError as ``open`` raises it."""
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise TooLarge()
    return data
