"""Free ports on loopback and polling for readiness instead of sleeping."""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


def free_port(*, udp: bool = False) -> int:
    """Return a port on 127.0.0.1 that is free right now (TCP, and UDP too if `udp`).

    Serf's memberlist binds the same number for TCP and UDP, so agents ask for both.
    The port is released before returning: callers must tolerate the small race.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port: int = tcp.getsockname()[1]
            if not udp:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
                try:
                    dgram.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1 after 50 tries")


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to host:port completes."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns a truthy value, and return that value.

    On timeout raise AssertionError naming `what`, with the last value and, if given, the
    output of `detail()` (e.g. the tail of a process log) so a failure explains itself.
    Exceptions from `predicate` propagate: a predicate that expects errors catches them.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            message = (
                f"timed out after {timeout:g}s waiting for {what} (last value: {value!r:.300})"
            )
            if detail is not None:
                message += "\n" + detail()
            raise AssertionError(message)
        time.sleep(min(interval, remaining))
