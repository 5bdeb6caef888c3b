"""An exclusive lock on an open file, released by the OS when the process dies.

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
