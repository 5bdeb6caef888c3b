"""Append whole records to a file shared by many processes.

``O_APPEND`` alone keeps concurrent writers from overwriting each other on POSIX, but Windows
emulates it with seek-then-write; an exclusive lock around a single ``write`` keeps every
line whole on both.
"""

from __future__ import annotations

import os

from . import filelock


def append_record(path: str, data: bytes, *, fsync: bool = False, timeout: float = 2.0) -> None:
    """Append ``data`` (one or more whole lines) to ``path``; raises OSError on failure."""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o640
        )
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o640
        )
    try:
        if not filelock.lock(fd, timeout):
            raise TimeoutError(f"{path} stayed locked for {timeout} s")
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if fsync:
                os.fsync(fd)
        finally:
            filelock.unlock(fd)
    finally:
        os.close(fd)
