"""``type = "redis"``: ``XADD`` to a Redis stream with redis-py.

Each event becomes one stream entry::

    XADD <stream> MAXLEN ~ <maxlen> * id <event id> event <type> name <name or ""> data <json>

A batch from the deliverer (``send_batch``) goes out as one pipeline of XADDs without MULTI:
one round trip, and each entry's reply is mapped on its own, so one entry refused with
WRONGTYPE is dead-lettered alone while the others in the batch are delivered.

With ``format = "cloudevents"`` (Redis has no CloudEvents binding, so this follows the spec's
JSON event format for structured mode) ``data`` is the CloudEvents JSON envelope around the
document (serfbridge.sinks.cloudevents) and a last field ``content_type`` says
``application/cloudevents+json``.

redis-py is imported inside the class: this module is imported whenever the configuration is
loaded, and ``import redis`` costs about 0.1 to 0.3 s (its package ``__init__`` always loads
``redis.asyncio`` too, whatever name is imported from it), so only the deliverer pays it.

Errors, mapped at the boundary (``RedisSink._mapped``)::

    ConnectionError, TimeoutError, AuthenticationError      SinkUnavailable (retried)
    any error reply to the PING sent on connecting          SinkUnavailable (retried)
    error replies OOM, LOADING, BUSY, READONLY,
        MASTERDOWN, CLUSTERDOWN, TRYAGAIN                   SinkUnavailable (retried)
    ERR Protocol error (the server hangs up; Redis sends
        it to clients that have not authenticated)          SinkUnavailable (retried)
    any other error reply (WRONGTYPE, NOPERM, ...)          SinkRejected (dead letter)

A wrong password (or an ACL that refuses ``PING`` or ``SELECT``) is retried rather than
rejected: the operator can fix it, and every event would fail the same way, so none of them
should be dead-lettered at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from serfbridge.capture import render
from serfbridge.errors import SinkError, SinkRejected, SinkUnavailable
from serfbridge.sinks.base import Item, Sink, SinkConfigBase, until_unavailable, url_for_logs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from redis import Redis
    from redis.typing import EncodableT, FieldT

#: Error replies that describe the server's state, not the event: worth retrying.
TRANSIENT_REPLIES = frozenset(
    {"OOM", "LOADING", "BUSY", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN"}
)


class RedisSinkConfig(SinkConfigBase):
    type: Literal["redis"]
    url: str = Field(description="redis://[user:pass@]host:port/db or rediss://...")
    stream: str = Field(
        default="serf:events", description="Stream key template: {event}, {name}, {node}."
    )
    maxlen: int | None = Field(
        default=100_000, ge=1, description="Approximate MAXLEN trimming; none keeps everything."
    )
    username: str | None = None
    password: SecretStr | None = None
    ssl_ca_certs: str | None = None
    timeout: float = Field(default=5.0, gt=0, le=300)
    format: Literal["json", "cloudevents"] = Field(
        default="json", description="data: the document, or a structured CloudEvent."
    )
    source: str | None = Field(default=None, description="CloudEvents source; serf://<node>.")

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        try:
            urlsplit(value).port  # noqa: B018 - parsing the port is the check
        except ValueError as exc:
            raise ValueError(f"url has an invalid port: {exc}") from None
        return value

    @field_validator("stream")
    @classmethod
    def _stream_template(cls, value: str) -> str:
        if not value:
            raise ValueError("stream must not be empty")
        return render.validate(value)

    @model_validator(mode="after")
    def _consistent(self) -> RedisSinkConfig:
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(self.url)
        query = parse_qs(parts.query)
        # redis-py lets credentials in the URL override the keyword arguments: refuse the
        # ambiguity instead of silently ignoring the separate field.
        if self.username is not None and (parts.username or "username" in query):
            raise ValueError("username is set both in url and in username: keep one")
        if self.password is not None and (parts.password or "password" in query):
            raise ValueError("password is set both in url and in password: keep one")
        if self.ssl_ca_certs is not None and not self.url.startswith("rediss://"):
            raise ValueError("ssl_ca_certs needs a rediss:// url (TLS)")
        return self


def _reply_code(exc: Exception) -> str:
    """The error reply's code (``WRONGTYPE``, ``OOM``...), or "" when there is none."""
    from redis import exceptions as rx

    # redis-py cuts known codes off the text; recent versions keep them in ``status_code``,
    # older ones only in the exception class.
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code
    for cls, name in (
        (rx.OutOfMemoryError, "OOM"),
        (rx.ReadOnlyError, "READONLY"),
        (rx.NoPermissionError, "NOPERM"),
        (rx.ClusterDownError, "CLUSTERDOWN"),
        (rx.TryAgainError, "TRYAGAIN"),
    ):
        if isinstance(exc, cls):
            return name
    first = str(exc).split(" ", 1)[0]
    return first if first.isupper() and first.isalpha() else ""


class RedisSink(Sink):
    """One redis-py client (RESP2, no client-side retries) per open sink.

    ``open`` connects and sends ``PING``, so that every problem with the connection itself
    (refused, timeout, credentials, an ACL that forbids ``SELECT``) is ``SinkUnavailable``
    before any event is involved. ``send`` then reconnects transparently if the server closed
    the connection while idle.
    """

    config: RedisSinkConfig
    # One pipeline per batch: past a few hundred entries the round trip no longer dominates.
    max_batch = 500

    def __init__(self, config: RedisSinkConfig) -> None:
        super().__init__(config)
        self.where = url_for_logs(config.url)
        self._client: Redis | None = None

    def open(self) -> None:
        """Connect and PING; any failure is SinkUnavailable."""
        self._open()

    def connection(self) -> Redis:
        """The connected client (opened on first use), for other sinks that store in Redis."""
        return self._open()

    def error(self, exc: Exception, command: str) -> SinkError:
        """A redis-py error raised by ``command`` as SinkUnavailable or SinkRejected."""
        return self._mapped(exc, command)

    def _open(self) -> Redis:
        if self._client is not None:
            return self._client
        from redis.exceptions import RedisError

        client = self._new_client()
        try:
            client.ping()
        except RedisError as exc:
            _close_quietly(client)
            raise self._mapped(exc, "PING", connecting=True) from exc
        self._client = client
        return client

    def _new_client(self) -> Redis:
        from redis import Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        config = self.config
        options: dict[str, Any] = {
            "socket_timeout": config.timeout,
            "socket_connect_timeout": config.timeout,
            # The deliverer retries with backoff; retries here would multiply the timeout.
            "retry": Retry(NoBackoff(), 0),
            # redis-py 8 defaults to RESP3, whose HELLO handshake Redis < 6 and some proxies
            # refuse; XADD and PING need nothing from RESP3.
            "protocol": 2,
        }
        if config.username is not None:
            options["username"] = config.username
        if config.password is not None:
            options["password"] = config.password.get_secret_value()
        if config.ssl_ca_certs is not None:
            options["ssl_ca_certs"] = config.ssl_ca_certs
        try:
            return Redis.from_url(config.url, **options)
        except ValueError as exc:
            raise SinkUnavailable(f"redis {self.where}: invalid url: {exc}") from exc

    def send(self, event: dict[str, Any], body: bytes) -> None:
        """XADD one entry: id, event, name and data (the canonical JSON ``body``)."""
        from redis.exceptions import RedisError

        client = self._open()
        key, fields = self._entry(event, body)
        try:
            client.xadd(key, fields, maxlen=self.config.maxlen, approximate=True)
        except RedisError as exc:
            raise self._mapped(exc, f"XADD {key}") from exc

    def _entry(self, event: dict[str, Any], body: bytes) -> tuple[str, dict[FieldT, EncodableT]]:
        """The stream key and the fields of ``event``'s entry."""
        fields: dict[FieldT, EncodableT] = {
            "id": event["id"],
            "event": event["event"],
            "name": event.get("name") or "",
            "data": body,
        }
        if self.config.format == "cloudevents":
            from serfbridge.sinks import cloudevents

            fields["data"] = cloudevents.structured(event, body, self.config.source)
            fields["content_type"] = cloudevents.STRUCTURED_CONTENT_TYPE
        return render.render(self.config.stream, event), fields

    def send_batch(self, batch: Sequence[Item]) -> list[SinkError | None]:
        """XADD every event in one pipeline (no MULTI); each reply is mapped on its own."""
        from redis.exceptions import RedisError

        try:
            client = self._open()
        except SinkUnavailable as exc:
            return [exc]
        keys: list[str] = []
        pipe = client.pipeline(transaction=False)
        for event, body in batch:
            key, fields = self._entry(event, body)
            keys.append(key)
            pipe.xadd(key, fields, maxlen=self.config.maxlen, approximate=True)
        try:
            # Error replies come back in the list; losing the connection raises: then no
            # reply is known, and the whole batch is retried.
            replies = pipe.execute(raise_on_error=False)
        except RedisError as exc:
            return [self._mapped(exc, f"XADD {keys[0]} (pipeline of {len(keys)})")]
        finally:
            pipe.reset()
        return until_unavailable(
            [
                self._mapped(reply, f"XADD {key}") if isinstance(reply, Exception) else None
                for key, reply in zip(keys, replies, strict=True)
            ]
        )

    def close(self) -> None:
        """Disconnect; never raises."""
        client, self._client = self._client, None
        if client is not None:
            _close_quietly(client)

    def _mapped(self, exc: Exception, command: str, *, connecting: bool = False) -> SinkError:
        """A redis-py error as SinkUnavailable (worth retrying) or SinkRejected."""
        from redis import exceptions as rx

        where = f"redis {self.where}: {command}"
        if isinstance(exc, rx.AuthenticationError | rx.AuthenticationWrongNumberOfArgsError):
            return SinkUnavailable(
                f"{where}: authentication failed ({exc}); retrying: fix username/password"
            )
        if isinstance(exc, rx.ResponseError):
            return _reply_error(exc, where, connecting=connecting)
        # ConnectionError, TimeoutError, protocol or client-side errors: redis-py dropped the
        # connection, and a retry starts afresh.
        return SinkUnavailable(f"{where}: {type(exc).__name__}: {exc}")


def _reply_error(exc: Exception, where: str, *, connecting: bool) -> SinkError:
    """An error reply from the server: only a few are worth retrying."""
    code = _reply_code(exc)
    text = str(exc)
    reply = text if not code or text.startswith(code) else f"{code} {text}"
    if connecting:
        # No event involved yet: a refusal here is about the connection (ACL, SELECT).
        return SinkUnavailable(f"{where}: cannot use the connection: {reply}")
    if code in TRANSIENT_REPLIES:
        return SinkUnavailable(f"{where}: server busy or read-only: {reply}")
    if "Protocol error" in text:
        # The server hung up. Redis answers a long command from a client that has not
        # authenticated this way, instead of NOAUTH.
        return SinkUnavailable(f"{where}: {reply}; retrying: is a password needed?")
    return SinkRejected(f"{where}: rejected: {reply}")


def _close_quietly(client: Redis) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001, S110 - closing a broken connection may fail; nothing to do
        pass
