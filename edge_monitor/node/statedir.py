"""The node's state folder and the files in it, created private to the service: folders 0750, files 0640.

Under systemd ``StateDirectory=`` creates ``/var/lib/edge-monitor`` with the unit's mode; outside systemd
(a terminal, a container, ``replay --mqtt``) the default umask would make everything 0644 and readable by
every user. Every node module that keeps state (the MQTT outbox and its ``seq`` file, Sparkplug's bdSeq,
evidence clips) creates its folders and files through these helpers. The modes are an upper bound: a
stricter umask still applies, and existing folders and files are left as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o750
FILE_MODE = 0o640


def ensure_dir(path: str | Path) -> Path:
    """Create ``path`` and any missing parents with mode 0750; existing folders are left alone."""
    path = Path(path)
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise
    return path


def create_file(path: str | Path, *, exclusive: bool = False) -> int:
    """Open ``path`` for reading and writing, creating it with mode 0640 if missing; returns the descriptor.

    ``exclusive``: fail with FileExistsError if it exists. Symbolic links are not followed (a link planted
    in the state folder must not make the service write through it).
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_EXCL if exclusive else 0)
    return os.open(path, flags, FILE_MODE)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0640) so that a crash leaves the old or the new content, synced."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_dir(path.parent)


def sync_dir(path: str | Path) -> None:
    """fsync a folder, so that a file created or renamed in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
