"""What an HTTP answer means for delivery: delivered, retry (and when), or dead letter.

Outcome of one POST::

    2xx                              delivered
    408, 429, 5xx                    SinkUnavailable, retry_after from Retry-After
    3xx, other 4xx                   SinkRejected (status and a body excerpt in the message)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serfbridge.errors import SinkRejected, SinkUnavailable

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

MAX_RESPONSE_BYTES = 64 * 1024  # of a response body read before the connection is dropped
EXCERPT_CHARS = 200


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``: safe to log (no user info, path or query)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date), else None."""
    import time

    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    # A naive result means the date said "-0000": UTC.
    if when.tzinfo is None:
        from datetime import UTC

        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _excerpt(data: bytes) -> str:
    text = " ".join(data.decode("utf-8", "replace").split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def outcome(where: str, status: int, reason: str, headers: Mapping[str, str], body: bytes) -> None:
    """Map an HTTP answer to success (return) or SinkUnavailable / SinkRejected."""
    if 200 <= status < 300:
        return
    message = f"{where} answered {status} {reason}".rstrip()
    if 300 <= status < 400:
        location = headers.get("location")
        message += " (redirects are not followed"
        if location:
            target = origin(location) if "://" in location else "a path on the same host"
            message += f"; Location: {target}"
        message += ")"
    excerpt = _excerpt(body)
    if excerpt:
        message += f": {excerpt}"
    if status in (408, 429) or status >= 500:
        raise SinkUnavailable(message, retry_after=retry_after(headers.get("retry-after")))
    raise SinkRejected(message)


def head(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """The first ``limit``-ish bytes; a bigger body is left unread (the connection is dropped)."""
    seen = 0
    for chunk in chunks:
        yield chunk
        seen += len(chunk)
        if seen >= limit:
            return
