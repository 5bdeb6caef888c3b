"""``type = "webhook"``: HTTP POST with httpx: JSON, CloudEvents, Slack/Mattermost/Discord/Teams.

httpx is imported inside the methods: this module is imported at config-load time for the
config model, and the handler must not pay for httpx. One ``httpx.Client`` per sink, opened in
``open()`` and reused for every send (keep-alive); redirects are never followed. A batch
from the deliverer is POSTed one event after another, so the receiver sees capture order;
``max_in_flight = N`` (opt-in) sends N at once, faster against a slow receiver, but then
arrival order at the receiver may differ (removal from the queue stays in order).

Outcome of one POST::

    2xx                              delivered
    408, 429, 5xx                    SinkUnavailable, retry_after from Retry-After
    3xx, other 4xx                   SinkRejected (status and a body excerpt in the message)
    timeout, connection error, ...   SinkUnavailable

Error messages name only ``scheme://host:port``: chat webhook URLs carry their secret in
the path.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from serfbridge.errors import SinkError, SinkRejected, SinkUnavailable
from serfbridge.sinks.base import Item, Sink, SinkConfigBase, send_each, until_unavailable

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    import httpx

WebhookFormat = Literal[
    "json", "cloudevents", "cloudevents-binary", "slack", "mattermost", "discord", "teams"
]
CHAT_FORMATS = ("slack", "mattermost", "discord", "teams")
EVENT_ID_HEADERS = ("Idempotency-Key", "X-Serfbridge-Event-Id")
MAX_RESPONSE_BYTES = 64 * 1024  # of a response body read before the connection is dropped
EXCERPT_CHARS = 200
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)


class WebhookSinkConfig(SinkConfigBase):
    type: Literal["webhook"]
    url: str = Field(description="http:// or https:// URL to POST to.")
    format: WebhookFormat = "json"
    template: str | None = Field(
        default=None,
        description="Chat message template; fields such as {event}, {name}, {node}, {payload}.",
    )
    headers: dict[str, str] = Field(default_factory=dict)
    bearer_token: SecretStr | None = None
    hmac_secret: SecretStr | None = Field(
        default=None, description="Sign '<timestamp>.<body>' with HMAC-SHA256."
    )
    signature_header: str = "X-Serfbridge-Signature"
    timestamp_header: str = "X-Serfbridge-Timestamp"
    source: str | None = Field(
        default=None, description="CloudEvents source; default serf://<node>."
    )
    verify: bool | str = Field(default=True, description="TLS verification, or a CA bundle path.")
    timeout: float = Field(default=5.0, gt=0, le=300)
    max_in_flight: int = Field(
        default=1,
        ge=1,
        le=32,
        description="POSTs sent at once while draining a backlog; above 1 the receiver may "
        "see events out of order (they are still removed from the queue in order).",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        parts = urlsplit(value)
        if not parts.hostname:
            raise ValueError("url has no host")
        _ = parts.port  # raises ValueError("Port out of range 0-65535") and the like
        return value

    @field_validator("template")
    @classmethod
    def _known_fields(cls, value: str | None) -> str | None:
        from serfbridge.capture import render

        return None if value is None else render.validate(value)

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            _check_header_name(name)
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"header {name}: value contains a line break or NUL")
        return value

    @field_validator("signature_header", "timestamp_header")
    @classmethod
    def _valid_header_name(cls, value: str) -> str:
        return _check_header_name(value)

    @model_validator(mode="after")
    def _template_needs_chat(self) -> Self:
        if self.template is not None and self.format not in CHAT_FORMATS:
            raise ValueError(
                f"template applies to the chat formats ({', '.join(CHAT_FORMATS)}), "
                f"not to format {self.format!r}"
            )
        return self


def _check_header_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError(f"{name!r} is not a valid HTTP header name")
    return name


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``: safe to log (no user info, path or query)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256 of ``b"<timestamp>." + body``: the signature header."""
    import hashlib
    import hmac

    return "sha256=" + hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


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


class WebhookSink(Sink):
    """POSTs each event to ``config.url`` in ``config.format``."""

    config: WebhookSinkConfig
    # Sent one after another on the keep-alive connection; the batch only saves the
    # deliverer a queue listing per event.
    max_batch = 100

    def __init__(self, config: WebhookSinkConfig) -> None:
        super().__init__(config)
        self.where = origin(config.url)
        self._client: httpx.Client | None = None

    def _ssl(self) -> Any:
        verify = self.config.verify
        if not isinstance(verify, str):
            return verify
        import os
        import ssl

        try:
            if os.path.isdir(verify):
                return ssl.create_default_context(capath=verify)
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise SinkUnavailable(f"{self.name}: cannot load CA bundle {verify}: {exc}") from exc

    def open(self) -> None:
        self._open()

    def _open(self) -> httpx.Client:
        if self._client is None:
            import httpx

            from serfbridge import __version__

            self._client = httpx.Client(
                timeout=self.config.timeout,
                verify=self._ssl(),
                follow_redirects=False,
                headers={"User-Agent": f"serfbridge/{__version__}", **self.config.headers},
            )
        return self._client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001, S110 - close never raises (Sink contract)
                pass

    def check(self) -> None:
        """Connect to the URL's host and port, with the TLS handshake for https.

        No request is sent: a POST would reach the chat channel or the receiver's data.
        """
        import socket
        import ssl

        parts = urlsplit(self.config.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=self.config.timeout) as sock:
                if parts.scheme == "https":
                    context = self._ssl()
                    if not isinstance(context, ssl.SSLContext):
                        context = ssl.create_default_context()
                        if self.config.verify is False:
                            context.check_hostname = False
                            context.verify_mode = ssl.CERT_NONE
                    with context.wrap_socket(sock, server_hostname=host):
                        pass
        except OSError as exc:  # ssl.SSLError is an OSError
            raise SinkUnavailable(f"{self.where}: cannot connect: {exc}") from exc

    def request(self, event: dict[str, Any], body: bytes) -> tuple[bytes, dict[str, str]]:
        """The request body and headers for ``event`` (``body``: its canonical JSON)."""
        fmt = self.config.format
        headers: dict[str, str] = {}
        if fmt == "cloudevents":
            from serfbridge.sinks import cloudevents

            content = cloudevents.structured(event, body, self.config.source)
            headers["Content-Type"] = cloudevents.STRUCTURED_CONTENT_TYPE
        elif fmt == "cloudevents-binary":
            from serfbridge.sinks import cloudevents

            content = body
            headers.update(cloudevents.binary_headers(event, self.config.source))
        elif fmt in CHAT_FORMATS:
            from serfbridge.sinks import chat

            content = chat.message(fmt, event, self.config.template)
            headers["Content-Type"] = "application/json; charset=utf-8"
        else:
            content = body
            headers["Content-Type"] = "application/json"
        for name in EVENT_ID_HEADERS:
            headers[name] = event["id"]
        if self.config.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.config.bearer_token.get_secret_value()}"
        if self.config.hmac_secret is not None:
            import time

            timestamp = str(int(time.time()))
            secret = self.config.hmac_secret.get_secret_value().encode("utf-8")
            headers[self.config.timestamp_header] = timestamp
            headers[self.config.signature_header] = sign(secret, timestamp, content)
        return content, headers

    def send_batch(self, batch: Sequence[Item]) -> list[SinkError | None]:
        """One POST after another on the keep-alive connection; with ``max_in_flight`` above
        1, that many at once from a thread pool (httpx.Client is thread-safe), outcomes
        still reported in batch order."""
        if self.config.max_in_flight == 1 or len(batch) == 1:
            return send_each(self, batch)
        from concurrent.futures import ThreadPoolExecutor

        def attempt(item: Item) -> SinkError | None:
            try:
                self.send(*item)
            except SinkError as exc:
                return exc
            return None

        self._open()  # once, before the threads share the client
        with ThreadPoolExecutor(self.config.max_in_flight) as pool:
            return until_unavailable(list(pool.map(attempt, batch)))

    def send(self, event: dict[str, Any], body: bytes) -> None:
        import httpx

        content, headers = self.request(event, body)
        client = self._open()
        try:
            with client.stream("POST", self.config.url, content=content, headers=headers) as resp:
                data = b"".join(_head(resp.iter_bytes(), MAX_RESPONSE_BYTES))
        except httpx.TimeoutException as exc:
            raise SinkUnavailable(
                f"{self.where}: no answer within {self.config.timeout:g}s ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise SinkUnavailable(f"{self.where}: {type(exc).__name__}: {exc}") from exc
        outcome(self.where, resp.status_code, resp.reason_phrase, resp.headers, data)


def _head(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """The first ``limit``-ish bytes; a bigger body is left unread (the connection is dropped)."""
    seen = 0
    for chunk in chunks:
        yield chunk
        seen += len(chunk)
        if seen >= limit:
            return
