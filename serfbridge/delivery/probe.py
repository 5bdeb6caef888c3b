"""A cheap reachability probe for a failing sink: one TCP connect to the host of its ``url``.

While the head entry of a sink waits out its backoff, the worker probes every
``delivery.probe_interval`` seconds. A probe that fails shows the far end is down; the first
probe that succeeds after that ends the wait, so delivery resumes within one probe interval of
the receiver coming back, however long the backoff had grown. A probe costs one TCP handshake
and sends nothing, so a dead sink is not hammered. Sinks without a network address (file,
command) are simply retried at least every probe interval.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

DEFAULT_PORTS = {
    "http": 80,
    "https": 443,
    "redis": 6379,
    "rediss": 6379,
    "mqtt": 1883,
    "mqtts": 8883,
    "nats": 4222,
    "tls": 4222,
    "amqp": 5672,
    "amqps": 5671,
}


def address(config: Any) -> tuple[str, int] | None:
    """Host and port of the sink's ``url``, or None when it has none."""
    url = getattr(config, "url", None)
    return url_address(url) if isinstance(url, str) else None


def url_address(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname, port


def reachable(addr: tuple[str, int], timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(addr, timeout=timeout):
            return True
    except OSError:
        return False
