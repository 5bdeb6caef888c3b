"""Files shared by many processes: an exclusive lock, whole-record appends, atomic replaces.

The lock is released by the OS when the process dies.

``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows: both are dropped by the kernel on
``kill -9``, so a crashed handler or deliverer never leaves a stale lock behind.
"""

from __future__ import annotations

import os
import sys
import time

if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def try_lock(fd: int) -> bool:
    """Take the lock if it is free; never waits."""
    return _try_lock(fd)


def lock(fd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the lock; False if it stayed taken.

    Polling rather than a blocking call: Windows has no blocking byte lock without a 10 s
    retry loop of its own, and a bounded wait is what the handler's deadline needs anyway.
    """
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not _try_lock(fd):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return True


def open_lockfile(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def append_record(path: str, data: bytes, *, fsync: bool = False, timeout: float = 2.0) -> None:
    """Append ``data`` (one or more whole lines) to ``path``; raises OSError on failure.

    ``O_APPEND`` alone keeps concurrent writers from overwriting each other on POSIX, but Windows
    emulates it with seek-then-write; an exclusive lock around a single ``write`` keeps every
    line whole on both.
    """
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
        if not lock(fd, timeout):
            raise TimeoutError(f"{path} stayed locked for {timeout} s")
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if fsync:
                os.fsync(fd)
        finally:
            unlock(fd)
    finally:
        os.close(fd)
