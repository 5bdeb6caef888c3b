"""``type = "nats"``: publish each event to a NATS subject, through JetStream or core NATS.

With JetStream (``jetstream = true``, the default when a ``stream`` is named) an event counts
as delivered only when the stream acknowledged it, and it carries the header ``Nats-Msg-Id``
= the document ``id``: the stream's duplicate window drops the copies that several nodes, or a
retry after a lost acknowledgement, send. Core NATS (``jetstream = false``) is at most once:
``send`` returns when the server answered a PING sent after the message, which proves the
server read it, not that any subscriber got it.

nats-py is asyncio-only; the sink runs it on its own loop thread (``natsconn.LoopThread``)
and imports it only when opened, so loading the configuration stays cheap.

Failures (docs/sink-nats.md):

* server unreachable or silent, login refused, connection lost, no acknowledgement within
  ``timeout``, no stream listening on the subject, JetStream unavailable -> ``SinkUnavailable``;
* a rendered subject that is not a valid subject, a message over the server's max_payload,
  or any other JetStream refusal (wrong expected stream, ...) -> ``SinkRejected``.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from serfbridge.capture import render
from serfbridge.errors import SinkError, SinkRejected, SinkUnavailable
from serfbridge.sinks.base import Sink, SinkConfigBase
from serfbridge.sinks.natsconn import LoopThread, NatsConnection, connect

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

MSG_ID_HEADER = "Nats-Msg-Id"
_SUBJECT_MAX = 65_535  # bytes; the server's own limit is max_control_line (4 KiB by default)


def subject_problem(subject: str) -> str | None:
    """Why ``subject`` cannot be published to (NATS subject rules), or None."""
    if not subject:
        return "is empty"
    if any(c.isspace() for c in subject):
        return "contains white space"
    tokens = subject.split(".")
    if any(not t for t in tokens):
        return "has an empty token (leading, trailing or double dot)"
    if any(t in ("*", ">") for t in tokens):
        return "contains a * or > wildcard"
    if len(subject.encode("utf-8", "surrogatepass")) > _SUBJECT_MAX:
        return f"is longer than {_SUBJECT_MAX} bytes"
    return None


class NatsSinkConfig(SinkConfigBase, NatsConnection):
    type: Literal["nats"]
    subject: str = Field(
        default="serf.{event}", description="Subject template: {event}, {name}, {node}, ..."
    )
    stream: str | None = Field(
        default=None, description="JetStream stream expected to take the subject."
    )
    jetstream: bool | None = Field(
        default=None, description="Wait for the JetStream ack; default: true when stream is set."
    )
    format: Literal["json", "cloudevents", "cloudevents-binary"] = "json"
    source: str | None = Field(
        default=None, description="CloudEvents source; default serf://<node>."
    )

    @field_validator("subject")
    @classmethod
    def _subject_template(cls, value: str) -> str:
        render.validate(value)
        problem = subject_problem(value)
        if problem:
            raise ValueError(f"subject {problem}: it must be a subject, not a filter")
        return value

    @model_validator(mode="after")
    def _stream_needs_jetstream(self) -> Self:
        if self.stream is not None and self.jetstream is False:
            raise ValueError("stream needs jetstream (drop jetstream = false, or the stream)")
        return self

    @property
    def uses_jetstream(self) -> bool:
        return self.jetstream if self.jetstream is not None else self.stream is not None


async def _quiet(_exc: Exception) -> None:
    """nats-py's default error callback logs a traceback; the sink reports errors itself."""


class NatsSink(Sink):
    config: NatsSinkConfig

    def __init__(self, config: NatsSinkConfig) -> None:
        super().__init__(config)
        self.where = f"NATS server {config.display()}"
        self._loop: LoopThread | None = None
        self._client: Client | None = None
        self._js: JetStreamContext | None = None

    def open(self) -> None:
        """Connect; any failure is SinkUnavailable."""
        if self._client is not None and self._client.is_connected:
            return
        self.close()
        self._loop = LoopThread(f"nats sink {self.name}")
        cfg = self.config
        try:
            self._client = self._loop.run(
                connect(
                    cfg,
                    f"serfbridge sink {cfg.name}",
                    # A lost connection fails the attempt; the next send reconnects.
                    allow_reconnect=False,
                    error_cb=_quiet,
                ),
                cfg.timeout + 1.0,
            )
        except Exception as exc:  # every connect failure is worth retrying
            self.close()
            raise SinkUnavailable(f"cannot connect to {self.where}: {_describe(exc)}") from exc
        if cfg.uses_jetstream:
            self._js = self._client.jetstream(timeout=cfg.timeout)

    def send(self, event: dict[str, Any], body: bytes) -> None:
        subject = render.render(self.config.subject, event)
        problem = subject_problem(subject)
        if problem:
            raise SinkRejected(f"rendered subject {subject!r} {problem}")
        payload, headers = self._message(event, body)
        self.open()
        loop, client = self._loop, self._client
        if loop is None or client is None:  # open() either connects or raises
            raise SinkUnavailable(f"not connected to {self.where}")
        timeout = self.config.timeout
        try:
            if self._js is not None:
                loop.run(
                    self._js.publish(
                        subject, payload, timeout=timeout, stream=self.config.stream,
                        headers=headers,
                    ),
                    timeout + 1.0,
                )  # fmt: skip
            else:
                loop.run(_publish_flushed(client, subject, payload, headers, timeout), timeout + 1)
        except Exception as exc:  # mapped below; nothing may escape unmapped
            error = self._mapped(exc, subject)
            if isinstance(error, SinkUnavailable):
                self.close()  # start afresh on the retry
            raise error from exc

    def _message(self, event: dict[str, Any], body: bytes) -> tuple[bytes, dict[str, str]]:
        from serfbridge.sinks import cloudevents

        fmt, source = self.config.format, self.config.source
        headers = {MSG_ID_HEADER: event["id"]}
        if fmt == "cloudevents":
            headers["Content-Type"] = cloudevents.STRUCTURED_CONTENT_TYPE
            return cloudevents.structured(event, body, source), headers
        if fmt == "cloudevents-binary":
            headers.update(cloudevents.nats_headers(event, source))
            return body, headers
        headers["Content-Type"] = cloudevents.DATA_CONTENT_TYPE
        return body, headers

    def _mapped(self, exc: Exception, subject: str) -> SinkError:
        from nats import errors as nx
        from nats.js import errors as jx

        where = f"{self.where}: publish to {subject!r}"
        if isinstance(exc, jx.NoStreamResponseError):
            return SinkUnavailable(f"{where}: no JetStream stream takes this subject (yet)")
        if isinstance(exc, jx.ServiceUnavailableError | jx.ServerError):
            return SinkUnavailable(f"{where}: JetStream unavailable: {exc.description}")
        if isinstance(exc, jx.APIError):
            return SinkRejected(f"{where}: refused: {exc.description} (code {exc.err_code})")
        if isinstance(exc, nx.MaxPayloadError | nx.BadSubjectError | nx.BadHeaderError):
            return SinkRejected(f"{where}: {_describe(exc)}")
        if isinstance(exc, TimeoutError):
            return SinkUnavailable(f"{where}: no answer within {self.config.timeout:g}s")
        return SinkUnavailable(f"{where}: {_describe(exc)}")

    def close(self) -> None:
        """Disconnect and stop the loop thread; never raises."""
        loop, client, self._loop, self._client, self._js = (
            self._loop, self._client, None, None, None,
        )  # fmt: skip
        if loop is None:
            return
        if client is not None and not client.is_closed:
            try:
                loop.run(client.close(), 2.0)
            except Exception:  # noqa: BLE001, S110 - closing a broken connection may fail
                pass
        loop.stop()


async def _publish_flushed(
    client: Client, subject: str, payload: bytes, headers: dict[str, str], timeout: float
) -> None:
    """Core NATS: publish, then PING/PONG, so the server has read the message."""
    await client.publish(subject, payload, headers=headers)
    await client.flush(max(1, round(timeout)))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
