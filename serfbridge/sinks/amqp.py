"""``type = "amqp"``: publish to a RabbitMQ (AMQP 0-9-1) exchange with pika, confirmed.

Each event is one ``basic.publish`` to ``exchange`` with the rendered ``routing_key``:
persistent (delivery mode 2), ``message_id`` = the document's ``id``, ``type`` = the Serf event
type, content type ``application/json`` and ``mandatory`` set. The channel is in confirm mode,
so ``send`` returns only once the broker confirmed the message (``basic.ack``): it is then in
every queue it was routed to (written to disk for durable queues).

Formats: ``json`` (the body is the document), ``cloudevents`` (structured: the body is the
CloudEvents JSON envelope, content type ``application/cloudevents+json``) and
``cloudevents-binary`` (the body is the document; the attributes travel as message headers
``cloudEvents:<attribute>``, the AMQP binding's application properties).

pika is imported inside the sink: this module is loaded with every configuration, and only
the deliverer should pay for the client.

Failures (docs/sink-amqp.md)::

    broker unreachable, silent past ``timeout``, connection lost, login or vhost
    refused, exchange missing, no write permission, nack, unroutable     SinkUnavailable
    rendered routing key over 255 bytes, message refused as too large    SinkRejected

Unroutable (no queue bound for the key: ``basic.return``) is retried like an outage, since a
consumer's queue may be bound later; ``max_attempts`` / ``max_age`` then dead-letter it.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from serfbridge.capture import render
from serfbridge.errors import SinkRejected, SinkUnavailable
from serfbridge.sinks.base import Sink, SinkConfigBase, url_for_logs

TYPE_CHECKING = False
if TYPE_CHECKING:
    import pika
    from pika.adapters.blocking_connection import BlockingChannel

MAX_ROUTING_KEY = 255  # bytes: an AMQP short string
_REFUSED_MESSAGE = 406  # PRECONDITION_FAILED on basic.publish: e.g. larger than max_message_size
_CLOSE_GRACE = 1.0  # seconds close() waits for the broker's Close-Ok before dropping the socket
AmqpFormat = Literal["json", "cloudevents", "cloudevents-binary"]
CE_HEADER_PREFIX = "cloudEvents:"


def check_url(value: str) -> str:
    """Validate an ``amqp[s]://`` URL (the sink's and the relay source's ``url``)."""
    from urllib.parse import parse_qs, urlsplit

    if not value.startswith(("amqp://", "amqps://")):
        raise ValueError("url must start with amqp:// or amqps://")
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise ValueError(f"url has an invalid port: {exc}") from None
    if not parts.hostname:
        raise ValueError("url has no host: amqp://user:pass@host:5672/vhost")
    unknown = set(parse_qs(parts.query)) - {"heartbeat", "channel_max", "frame_max"}
    if unknown:
        raise ValueError(f"url query may set heartbeat, channel_max, frame_max: not {unknown}")
    return value


class AmqpSinkConfig(SinkConfigBase):
    type: Literal["amqp"]
    url: str = Field(description="amqp://user:pass@host:5672/vhost or amqps://...")
    exchange: str = Field(
        default="amq.topic", max_length=255, description='Exchange; "" is the default exchange.'
    )
    routing_key: str = Field(
        default="serf.{event}", description="Routing key template: {event}, {name}, {node}."
    )
    format: AmqpFormat = "json"
    source: str | None = Field(default=None, description="CloudEvents source; serf://<node>.")
    ca_certs: str | None = Field(default=None, description="CA bundle for amqps://.")
    timeout: float = Field(default=5.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("routing_key")
    @classmethod
    def _key_template(cls, value: str) -> str:
        return render.validate(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.ca_certs is not None and not self.url.startswith("amqps://"):
            raise ValueError("ca_certs needs an amqps:// url (TLS)")
        return self


def parameters(url: str, timeout: float, ca_certs: str | None = None) -> pika.URLParameters:
    """pika's connection parameters: one attempt, every wait bounded by ``timeout``.

    Shared with the relay source, so both read URLs alike."""
    import pika

    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.blocked_connection_timeout = timeout
    if url.startswith("amqps://"):
        import ssl

        context = ssl.create_default_context(cafile=ca_certs)
        params.ssl_options = pika.SSLOptions(context, params.host)
    return params


class _Expired(Exception):
    """A bounded wait on the broker ran out of time."""


class _Deadline:
    """Abort pika's blocking wait after ``seconds``.

    A paused or wedged broker keeps the TCP connection open and answers nothing, and a
    BlockingConnection waits for a confirm (or Close-Ok) without limit. A timer on the
    connection's own I/O loop raises out of that wait; the connection is abandoned after."""

    def __init__(self, conn: pika.BlockingConnection, seconds: float) -> None:
        self.conn = conn
        self.impl: Any = conn._impl  # the I/O loop's timers are not public API
        self.seconds = seconds

    def __enter__(self) -> None:
        def expire() -> None:
            raise _Expired

        self.timer = self.impl._adapter_call_later(self.seconds, expire)

    def __exit__(self, *_exc: object) -> None:
        self.impl._adapter_remove_timeout(self.timer)


def abandon(conn: pika.BlockingConnection) -> None:
    """Drop the socket without the closing handshake; never raises.

    The abort completes on the connection's I/O loop: run it until pika reports the lost
    connection, which it does after closing the loop's own sockets."""
    try:
        from pika.exceptions import StreamLostError

        conn._impl._terminate_stream(StreamLostError("abandoned: the broker did not answer"))
        for _ in range(10):
            try:
                conn.process_data_events(time_limit=0)
            except Exception:  # noqa: BLE001 - "connection lost", raised after pika's clean-up
                return
    except Exception:  # noqa: BLE001, S110 - already gone: nothing to do
        pass


def close_bounded(conn: pika.BlockingConnection, grace: float = _CLOSE_GRACE) -> None:
    """Close politely within ``grace``, else drop the socket; never raises."""
    try:
        if conn.is_open:
            with _Deadline(conn, grace):
                conn.close()
            return
    except Exception:  # noqa: BLE001, S110 - closing a broken connection may fail
        pass
    abandon(conn)


class AmqpSink(Sink):
    """One connection and one confirm-mode channel per open sink."""

    config: AmqpSinkConfig

    def __init__(self, config: AmqpSinkConfig) -> None:
        super().__init__(config)
        self.where = f"AMQP broker {url_for_logs(config.url, empty_path='/')}"
        self._conn: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def open(self) -> None:
        """Connect, open a confirm-mode channel and check that the exchange exists."""
        import pika
        from pika import exceptions as px
        from pika.adapters.utils.connection_workflow import AMQPConnectorException

        self.close()
        cfg = self.config
        try:
            conn = pika.BlockingConnection(parameters(cfg.url, cfg.timeout, cfg.ca_certs))
        except px.ProbableAuthenticationError as exc:
            raise SinkUnavailable(
                f"{self.where} refused the login ({exc}): check user and password; "
                "events stay queued and are retried"
            ) from exc
        except px.ProbableAccessDeniedError as exc:
            raise SinkUnavailable(f"{self.where}: access to the vhost refused: {exc}") from exc
        except (px.AMQPError, AMQPConnectorException, OSError, ValueError) as exc:
            raise SinkUnavailable(f"cannot connect to {self.where}: {describe(exc)}") from exc
        self._conn = conn
        with self._mapped("opening a channel"):
            channel = conn.channel()
            channel.confirm_delivery()
            if cfg.exchange:  # the default exchange always exists and cannot be declared
                channel.exchange_declare(cfg.exchange, passive=True)
        self._channel = channel

    def send(self, event: dict[str, Any], body: bytes) -> None:
        """Publish one message and wait for the broker's confirm."""
        from pika import exceptions as px

        key = render.render(self.config.routing_key, event)
        if len(key.encode("utf-8", "surrogatepass")) > MAX_ROUTING_KEY:
            raise SinkRejected(f"rendered routing key is longer than {MAX_ROUTING_KEY} bytes")
        if self._channel is None or self._conn is None:
            self.open()
        channel, conn = self._channel, self._conn
        assert channel is not None  # noqa: S101 - open() set it
        assert conn is not None  # noqa: S101
        payload, props = self._message(event, body)
        target = f"exchange {self.config.exchange!r} key {key!r}"
        with self._mapped(f"publish to {target}"):
            try:
                channel.basic_publish(self.config.exchange, key, payload, props, mandatory=True)
            except px.UnroutableError as exc:
                raise SinkUnavailable(
                    f"{self.where}: no queue is bound for {target} (unroutable); retrying"
                ) from exc
            except px.NackError as exc:
                raise SinkUnavailable(f"{self.where} refused to store the message: nack") from exc

    def _message(self, event: dict[str, Any], body: bytes) -> tuple[bytes, pika.BasicProperties]:
        import pika

        cfg = self.config
        headers: dict[str, Any] | None = None
        content_type = "application/json"
        if cfg.format == "cloudevents":
            from serfbridge.sinks import cloudevents

            body = cloudevents.structured(event, body, cfg.source)
            content_type = cloudevents.STRUCTURED_CONTENT_TYPE
        elif cfg.format == "cloudevents-binary":
            from serfbridge.sinks import cloudevents

            attrs = cloudevents.attributes(event, cfg.source)
            content_type = attrs.pop("datacontenttype")
            headers = {CE_HEADER_PREFIX + key: value for key, value in attrs.items()}
        props = pika.BasicProperties(
            content_type=content_type,
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=event["id"],
            type=event["event"],
            app_id="serfbridge",
            headers=headers,
        )
        return body, props

    def _mapped(self, what: str) -> _Mapped:
        return _Mapped(self, what)

    def close(self) -> None:
        """Disconnect; never raises, never waits more than a second."""
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            close_bounded(conn)


class _Mapped:
    """Bounds the wait by the sink's timeout and maps pika's errors to sink errors; after a
    failure the connection is dropped, and the next send opens a fresh one."""

    def __init__(self, sink: AmqpSink, what: str) -> None:
        self.sink, self.what = sink, what
        assert sink._conn is not None  # noqa: S101 - entered only while connected
        self.deadline = _Deadline(sink._conn, sink.config.timeout)

    def __enter__(self) -> None:
        self.deadline.__enter__()

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        from pika import exceptions as px

        self.deadline.__exit__()
        if exc is None:
            return
        sink = self.sink
        where = f"{sink.where}: {self.what}"
        conn, sink._conn, sink._channel = self.deadline.conn, None, None
        if isinstance(exc, _Expired):
            abandon(conn)  # mid-wait: the connection's state is unknown
        else:
            close_bounded(conn)
        if isinstance(exc, SinkUnavailable | SinkRejected):
            return  # raised by the block itself, already mapped
        if isinstance(exc, _Expired):
            raise SinkUnavailable(f"{where}: no answer within {sink.config.timeout:g}s") from None
        if isinstance(exc, px.ChannelClosedByBroker):
            error = SinkRejected if exc.reply_code == _REFUSED_MESSAGE else SinkUnavailable
            raise error(f"{where}: {exc.reply_code} {exc.reply_text}") from exc
        if isinstance(exc, px.AMQPError | OSError):
            raise SinkUnavailable(f"{where}: {describe(exc)}") from exc


def describe(exc: BaseException) -> str:
    """pika's exceptions often have an empty str(): name the class then."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
