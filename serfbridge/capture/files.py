"""Files shared by many processes: an exclusive lock, whole-record appends, atomic replaces.

The lock is released by the OS when the process dies.

``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows: both are dropped by the kernel on
``kill -9``, so a crashed handler or deliverer never leaves a stale lock behind.
"""

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


# Read as well as write: a torn tail is found by reading the last byte.
_APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)


def append_record(path: str, data: bytes, *, fsync: bool = False, timeout: float = 2.0) -> None:
    """Append ``data`` (one or more whole lines) to ``path``; raises OSError on failure,
    leaving the file as it was: never a partial record.

    ``O_APPEND`` alone keeps concurrent writers from overwriting each other on POSIX, but Windows
    emulates it with seek-then-write; an exclusive lock around a single ``write`` keeps every
    line whole on both.
    """
    try:
        fd = os.open(path, _APPEND_FLAGS, 0o640)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, _APPEND_FLAGS, 0o640)
    try:
        if not lock(fd, timeout):
            raise TimeoutError(f"{path} stayed locked for {timeout} s")
        try:
            start = _repair_tail(fd)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if fsync:
                    os.fsync(fd)
            except OSError:
                # Whole record or nothing: a full disk must not leave half a line that the
                # next record would be glued onto. Shrinking needs no space.
                os.ftruncate(fd, start)
                raise
        finally:
            unlock(fd)
    finally:
        os.close(fd)


def _repair_tail(fd: int) -> int:
    """Cut a torn last record (no final newline: a writer died mid-line) back to the last
    whole line; returns the end offset. One 1-byte read in the common case."""
    end = os.lseek(fd, 0, os.SEEK_END)
    if end == 0 or _pread(fd, 1, end - 1) == b"\n":
        return end
    pos = end
    while pos > 0:
        size = min(65536, pos)
        chunk = _pread(fd, size, pos - size)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            pos = pos - size + cut + 1
            break
        pos -= size
    os.ftruncate(fd, pos)
    return pos


def _pread(fd: int, size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # Windows: O_APPEND writes seek to the end anyway
    return os.read(fd, size)


WINDOWS = sys.platform == "win32"
# Windows: a reader holding the target open makes os.replace fail for a moment.
REPLACE_ATTEMPTS = 20


def fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable. Windows cannot open a directory for fsync; NTFS
    journals the rename itself."""
    if WINDOWS:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, *, durable: bool = True, mode: int = 0o600) -> None:
    """Replace ``path`` by ``data`` so that readers see the old file or the whole new one.

    The temp file is named per process (two writers never share one) and removed on any
    failure, so a full disk leaves nothing behind. ``durable``: fsync the file and the
    directory, so the new content survives a power cut. Raises OSError.
    """
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, mode)
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(tmp, flags, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        _replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(directory)


def _replace(tmp: str, path: str) -> None:
    for attempt in range(REPLACE_ATTEMPTS if WINDOWS else 1):
        try:
            os.replace(tmp, path)
            return
        except PermissionError:
            if attempt == REPLACE_ATTEMPTS - 1 or not WINDOWS:
                raise
            time.sleep(0.05)
