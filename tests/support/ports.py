"""Free ports on loopback and polling for readiness instead of sleeping."""

from __future__ import annotations

import random
import socket
import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


_HANDED_OUT: set[int] = set()
_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def _ephemeral_low() -> int:
    try:
        with open(_RANGE_FILE, encoding="ascii") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int, udp: bool) -> bool:
    kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp else [socket.SOCK_STREAM]
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


def free_port(*, udp: bool = False) -> int:
    """Return a port on 127.0.0.1 that is free right now (TCP, and UDP too if `udp`).

    Serf's memberlist binds the same number for TCP and UDP, so agents ask for both.
    Ports come from just below the kernel's ephemeral range and are never handed out twice
    in one run: a port from inside that range can be given to any outgoing connection (the
    test's own RPC watcher, the process under test's Redis client) between this call and the
    bind that wants it, and stays taken as long as that connection lives. The port is still
    released before returning: another program on the machine may take it, rarely.
    """
    high = _ephemeral_low()
    low = max(1024, high - 12000)
    for _ in range(500):
        port = random.randrange(low, high) if high - low >= 1000 else _kernel_port()
        if port not in _HANDED_OUT and _bindable(port, udp):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free port on {LOOPBACK} in {low}..{high - 1} after 500 tries")


def _kernel_port() -> int:
    """A port the kernel picks (for machines whose ephemeral range starts very low)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind((LOOPBACK, 0))
        port: int = tcp.getsockname()[1]
        return port


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
