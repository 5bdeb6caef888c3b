"""``type = "webhook"``: HTTP POST with httpx: JSON, CloudEvents, Slack/Mattermost/Discord/Teams.

httpx is imported inside the methods: this module is imported at config-load time for the
config model, and the handler must not pay for httpx. One ``httpx.Client`` per sink, opened in
``open()`` and reused for every send (keep-alive); redirects are never followed.

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

from serfbridge import signing
from serfbridge.errors import SinkUnavailable
from serfbridge.sinks.answers import MAX_RESPONSE_BYTES, head, origin, outcome
from serfbridge.sinks.base import Sink, SinkConfigBase

if TYPE_CHECKING:
    import httpx

WebhookFormat = Literal[
    "json", "cloudevents", "cloudevents-binary", "slack", "mattermost", "discord", "teams"
]
SignatureScheme = Literal["serfbridge", "standard-webhooks", "github"]
CHAT_FORMATS = ("slack", "mattermost", "discord", "teams")
EVENT_ID_HEADERS = ("Idempotency-Key", "X-Serfbridge-Event-Id")
DIGEST_MAX = 100  # queued events read for one digest message
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
    hmac_secret: SecretStr | list[SecretStr] | None = Field(
        default=None,
        description="HMAC-SHA256 signing secret; a list signs with each (key rotation).",
    )
    signature: SignatureScheme = Field(
        default="serfbridge",
        description="Signature headers: serfbridge (X-Serfbridge-*), standard-webhooks "
        "(webhook-id/-timestamp/-signature, whsec_ secrets) or github (X-Hub-Signature-256).",
    )
    signature_header: str = "X-Serfbridge-Signature"
    timestamp_header: str = "X-Serfbridge-Timestamp"
    source: str | None = Field(
        default=None, description="CloudEvents source; default serf://<node>."
    )
    verify: bool | str = Field(default=True, description="TLS verification, or a CA bundle path.")
    timeout: float = Field(default=5.0, gt=0, le=300)
    rate: float = Field(
        default=1.0, ge=0, description="Chat formats: messages per second at most (0: no limit)."
    )
    digest_after: int = Field(
        default=3,
        ge=0,
        description="Chat formats: when a send comes due with this many events waiting, they "
        "go as one digest message (0: never).",
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
    def _signature_fits(self) -> Self:
        secrets = self.secrets()
        scheme = self.signature
        if scheme != "serfbridge":
            if not secrets:
                raise ValueError(f"signature = {scheme!r} needs hmac_secret")
            renamed = {"signature_header", "timestamp_header"} & self.model_fields_set
            if renamed:
                raise ValueError(
                    f"{', '.join(sorted(renamed))} apply to signature = 'serfbridge'; "
                    f"{scheme} fixes its header names"
                )
        if isinstance(self.hmac_secret, list) and not secrets:
            raise ValueError("hmac_secret is an empty list")
        if scheme == "github" and len(secrets) > 1:
            raise ValueError(
                "signature = 'github' takes one hmac_secret: X-Hub-Signature-256 carries "
                "one signature"
            )
        if scheme == "standard-webhooks":
            for secret in secrets:
                signing.standard_key(secret)
        return self

    def secrets(self) -> list[str]:
        """The signing secrets in clear, in the configured order (none: no signing)."""
        value = self.hmac_secret
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        return [item.get_secret_value() for item in items]

    @model_validator(mode="after")
    def _template_needs_chat(self) -> Self:
        if self.format in CHAT_FORMATS:
            return self
        chat_only = {"rate", "digest_after"} & self.model_fields_set
        if self.template is not None:
            chat_only.add("template")
        for key in sorted(chat_only):
            raise ValueError(
                f"{key} applies to the chat formats ({', '.join(CHAT_FORMATS)}), "
                f"not to format {self.format!r}"
            )
        return self


def _check_header_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError(f"{name!r} is not a valid HTTP header name")
    return name


class WebhookSink(Sink):
    """POSTs each event to ``config.url`` in ``config.format``."""

    config: WebhookSinkConfig

    def __init__(self, config: WebhookSinkConfig) -> None:
        super().__init__(config)
        self.where = origin(config.url)
        self._client: httpx.Client | None = None
        self._chat = config.format in CHAT_FORMATS
        self._last_post = -1e9  # time.monotonic() of the last attempt

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
        headers.update(self._auth_headers(event["id"], content))
        return content, headers

    def _auth_headers(self, msg_id: str, content: bytes) -> dict[str, str]:
        """The id headers, bearer token and signature of one request."""
        headers = dict.fromkeys(EVENT_ID_HEADERS, msg_id)
        if self.config.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.config.bearer_token.get_secret_value()}"
        headers.update(self.signature_headers(msg_id, content))
        return headers

    def signature_headers(self, msg_id: str, content: bytes) -> dict[str, str]:
        """The signing headers for one attempt: each attempt is signed anew, at its time."""
        secrets = self.config.secrets()
        if not secrets:
            return {}
        import time

        timestamp = str(int(time.time()))
        scheme = self.config.signature
        if scheme == "github":
            return {signing.GITHUB_HEADER: signing.sign_github(secrets[0].encode(), content)}
        if scheme == "standard-webhooks":
            id_header, stamp_header, sig_header = signing.STANDARD_HEADERS
            keys = [signing.standard_key(s) for s in secrets]
            sigs = (signing.sign_standard(key, msg_id, timestamp, content) for key in keys)
            return {id_header: msg_id, stamp_header: timestamp, sig_header: " ".join(sigs)}
        sigs = (signing.sign(s.encode(), timestamp, content) for s in secrets)
        return {
            self.config.timestamp_header: timestamp,
            self.config.signature_header: " ".join(sigs),
        }

    def pace(self) -> float:
        if not self._chat or not self.config.rate:
            return 0.0
        import time

        return max(0.0, self._last_post + 1.0 / self.config.rate - time.monotonic())

    def digest_size(self, waiting: int) -> int:
        after = self.config.digest_after
        if not self._chat or not after or waiting < after:
            return 1
        return min(waiting, DIGEST_MAX)

    def send_digest(self, events: list[dict[str, Any]]) -> int:
        from serfbridge.sinks import digest

        content, count = digest.message(self.config.format, events)
        msg_id = digest.message_id(events[:count])
        headers = {"Content-Type": "application/json; charset=utf-8"}
        headers.update(self._auth_headers(msg_id, content))
        self._post(content, headers)
        return count

    def send(self, event: dict[str, Any], body: bytes) -> None:
        self._post(*self.request(event, body))

    def _post(self, content: bytes, headers: dict[str, str]) -> None:
        import time

        import httpx

        client = self._open()
        self._last_post = time.monotonic()
        try:
            with client.stream("POST", self.config.url, content=content, headers=headers) as resp:
                data = b"".join(head(resp.iter_bytes(), MAX_RESPONSE_BYTES))
        except httpx.TimeoutException as exc:
            raise SinkUnavailable(
                f"{self.where}: no answer within {self.config.timeout:g}s ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise SinkUnavailable(f"{self.where}: {type(exc).__name__}: {exc}") from exc
        outcome(self.where, resp.status_code, resp.reason_phrase, resp.headers, data)
