"""Relay event ids this node has already recorded: ``<state_dir>/seen-ids``.

A fixed-size table so it never needs pruning: 32,768 buckets of 8 slots, each slot an 8-byte
id and the 8-byte time (ms) it was recorded, behind a 64-byte header (4 MiB; sparse where
the file system allows). A new id takes the oldest slot of its bucket, so an id is forgotten
only after 8 newer ones landed in the same bucket: with 20,000 newer ids the chance is about
3 in 10 million, with 50,000 about 2 in 10,000. A forgotten id lets a late repeat through
(recorded twice), it never drops an event.

Serf runs a node's handlers one at a time, but a ``stream = true`` relay may share the state
directory, so each lookup holds the file's lock. Any failure (unwritable directory, lock
busy past ``LOCK_WAIT``) answers "first time" for the same reason. No fsync: after a crash
a repeat may pass, which is the safe side. Capture path: builtins only.
"""

import os

from serfbridge import log
from serfbridge.capture import files

FILE = "seen-ids"
MAGIC = b"serfbridge seen-ids v1\n"
HEADER = 64  # the lock byte (offset 0 on Windows) and the magic live here, never a slot
MAGIC_AT = 8
BUCKETS = 32768
WAYS = 8
SLOT = 16
LOCK_WAIT = 2.0
_O_BINARY = getattr(os, "O_BINARY", 0)


def _bucket_offset(key: bytes) -> int:
    return HEADER + int.from_bytes(key, "big") % BUCKETS * WAYS * SLOT


def _read_bucket(fd: int, offset: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, WAYS * SLOT).ljust(WAYS * SLOT, b"\0")


def _write_at(fd: int, offset: int, data: bytes) -> None:
    os.lseek(fd, offset, os.SEEK_SET)
    os.write(fd, data)


def _find(block: bytes, key: bytes) -> int | None:
    for way in range(WAYS):
        slot = block[way * SLOT : (way + 1) * SLOT]
        if slot[:8] == key and slot[8:] != b"\0" * 8:
            return way
    return None


def _oldest(block: bytes) -> int:
    stamps = [int.from_bytes(block[w * SLOT + 8 : (w + 1) * SLOT], "big") for w in range(WAYS)]
    return stamps.index(min(stamps))


def _locked(state_dir: str, event_id: str, action: str, now: float) -> bool | None:
    """Run ``action`` ("add" or "forget") under the lock; None when the table is unusable."""
    key = bytes.fromhex(event_id)
    path = os.path.join(state_dir, FILE)
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_BINARY, 0o600)
        except FileNotFoundError:  # a node's first event: nothing made the state dir yet
            os.makedirs(state_dir, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_BINARY, 0o600)
    except OSError as exc:
        log.warning("seen-ids not usable; repeats of relayed events pass", error=str(exc))
        return None
    try:
        if not files.lock(fd, LOCK_WAIT):
            log.warning("seen-ids stayed locked; a repeat may pass", path=path)
            return None
        try:
            if os.fstat(fd).st_size == 0:
                _write_at(fd, MAGIC_AT, MAGIC)
            offset = _bucket_offset(key)
            block = _read_bucket(fd, offset)
            way = _find(block, key)
            if action == "forget":
                if way is not None:
                    _write_at(fd, offset + way * SLOT, b"\0" * SLOT)
                return True
            if way is not None:
                return False
            stamp = max(1, int(now * 1000)).to_bytes(8, "big")
            _write_at(fd, offset + _oldest(block) * SLOT, key + stamp)
            return True
        finally:
            files.unlock(fd)
    except OSError as exc:
        log.warning("seen-ids not usable; repeats of relayed events pass", error=str(exc))
        return None
    finally:
        os.close(fd)


def first_time(state_dir: str, event_id: str, now: float) -> bool:
    """Record ``event_id``; False if it was already recorded (the event is a repeat)."""
    return _locked(state_dir, event_id, "add", now) is not False


def forget(state_dir: str, event_id: str) -> None:
    """Undo ``first_time`` for an event that could not be recorded after all, so its repeat
    gets through."""
    _locked(state_dir, event_id, "forget", 0.0)
