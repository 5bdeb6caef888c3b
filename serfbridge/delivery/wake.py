"""The deliverer's end of the wake-up: a Unix datagram socket the handler sends entry names to.

``serfbridge.capture.spool.wake`` sends one datagram per captured event, so a running
deliverer starts on an event the moment it is durable, with no polling delay. The socket is
a hint, never the record: the deliverer still lists ``incoming/`` every ``RESCAN`` seconds
(or every ``poll_interval`` where there is no socket, i.e. on Windows), so a lost datagram
only delays an event, it never loses it. The kernel queues ``max_dgram_qlen`` datagrams (10)
and drops what senders add past that; a drain of that many therefore lists ``incoming/``
before taking the named entries, so an entry whose wake-up was dropped is still sent before
the later ones (tests/test_relay_stream_batch.py).
"""

from __future__ import annotations

import os
import socket

from serfbridge.capture.spool import wake_address

RESCAN = 1.0
# Datagrams the kernel queues for a Unix socket before a sender gets EAGAIN (Linux's default).
DEFAULT_QUEUE = 10


def queue_capacity() -> int:
    """How many wake-ups can wait unread; any sent past that are dropped by the sender."""
    try:
        with open("/proc/sys/net/unix/max_dgram_qlen", encoding="ascii") as fh:
            return max(1, int(fh.read().strip()))
    except (OSError, ValueError):
        return DEFAULT_QUEUE


class WakeSocket:
    def __init__(self, state_dir: str) -> None:
        self.addr = wake_address(state_dir)
        self.capacity = queue_capacity()
        self.sock: socket.socket | None = None
        if self.addr is None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if isinstance(self.addr, str):
                try:
                    os.unlink(self.addr)  # a socket file left by a killed deliverer
                except FileNotFoundError:
                    pass
            sock.bind(self.addr)
        except OSError:
            # Another process holds the name (a deliverer of this state dir that is exiting):
            # this one polls until it can bind.
            sock.close()
            return
        self.sock = sock

    @property
    def active(self) -> bool:
        return self.sock is not None

    def wait(self, timeout: float) -> list[str] | None:
        """Entry names received within ``timeout`` seconds; None when the wait timed out."""
        if self.sock is None:
            return None
        self.sock.settimeout(max(timeout, 0.0))
        try:
            first = self.sock.recv(512)
        except TimeoutError:
            return None
        except OSError:
            return []
        names = [first.decode("ascii", "replace")]
        self.sock.setblocking(False)
        while True:
            try:
                names.append(self.sock.recv(512).decode("ascii", "replace"))
            except (BlockingIOError, OSError):
                return names

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            if isinstance(self.addr, str):
                try:
                    os.unlink(self.addr)
                except OSError:
                    pass
