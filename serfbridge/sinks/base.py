"""What every sink shares: the config fields and the delivery interface.

A sink is opened once by the deliverer, sends events, and is closed at the end. ``send``
delivers one event: it returns nothing on success and raises ``SinkUnavailable`` (worth
retrying) or ``SinkRejected`` (the receiver refused this event; it goes to the dead-letter
store). ``send_batch`` delivers up to ``max_batch`` events in order and reports one outcome
per event, so a sink that can put many events on the wire at once (a Redis pipeline, an MQTT
in-flight window) pays one round trip per batch instead of one per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from serfbridge.capture import filters, when
from serfbridge.errors import SinkError

WhenSpec = dict[str, str | list[str]]
#: One queued event as the deliverer hands it over: the document and its canonical JSON.
Item = tuple[dict[str, Any], bytes]


def _compiles(value: WhenSpec | None) -> WhenSpec | None:
    when.compile_when(value)
    return value


# Shared by sinks and responders: the shape is checked first (clear messages for TOML
# mistakes), then the patterns are compiled once to prove they are valid.
When = Annotated[
    WhenSpec | None,
    BeforeValidator(when.check_spec),
    AfterValidator(_compiles),
    Field(
        default=None,
        description='Only on nodes whose role/tags match, e.g. { role = ["web", "api"], '
        'dc = "east" }.',
    ),
]


def _events_text(value: object) -> object:
    """``events = ["user", "member-failed"]`` means the same as ``"user,member-failed"``."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return value


class SinkConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Unique sink name; also its spool directory name.",
    )
    events: Annotated[str, BeforeValidator(_events_text)] = Field(
        default="*",
        description='Serf event filter: "member-join,user:deploy" or a list of such names.',
    )
    once: bool = Field(
        default=False, description="Forward each event from exactly one node of the cluster."
    )
    when: When = None

    @field_validator("events")
    @classmethod
    def _valid_filter(cls, value: str) -> str:
        filters.parse(value)
        return value


def url_for_logs(url: str, *, empty_path: str = "") -> str:
    """``url`` without credentials or query, for errors and logs (``empty_path``: what to
    show for no path, e.g. AMQP's default vhost ``/``)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path or empty_path}"


class Sink:
    """Base class; subclasses override ``open``, ``send`` and ``close``, and ``send_batch``
    with ``max_batch`` when the protocol lets them have many events in flight."""

    #: The most events the deliverer passes to one ``send_batch`` call.
    max_batch = 1

    def __init__(self, config: Any) -> None:
        self.config = config
        self.name: str = config.name

    def open(self) -> None:
        """Connect. Raise SinkUnavailable when the far end cannot be reached."""

    def send(self, event: dict[str, Any], body: bytes) -> None:
        """Deliver one event; ``body`` is the canonical JSON document of ``event``."""
        raise NotImplementedError

    def send_batch(self, batch: Sequence[Item]) -> list[SinkError | None]:
        """Deliver ``batch`` in order; one outcome per event, ``None`` meaning delivered.

        The list may be shorter than ``batch``: it ends at the first ``SinkUnavailable``,
        and the events after it count as not delivered (they stay queued and are sent again,
        so a receiver may see one of them twice). A ``SinkRejected`` concerns its own event
        only; the events after it are still tried.
        """
        return send_each(self, batch)

    def close(self) -> None:
        """Release connections; never raises."""

    # Pacing and digests (chat sinks). The deliverer asks ``pace`` before each send and
    # ``digest_size`` how many queued events that send should take; above one it calls
    # ``send_digest``. The defaults: no rate limit, one event per send.

    def pace(self) -> float:
        """Seconds until this sink may send again under its rate limit; 0: now."""
        return 0.0

    def digest_size(self, waiting: int) -> int:
        """How many of the ``waiting`` queued events the next send takes (1: the head)."""
        return 1

    def send_digest(self, events: list[dict[str, Any]]) -> int:
        """Deliver several events as one message; returns how many, from the first, it
        covered (at least one). Raises like ``send``."""
        raise NotImplementedError

    def check(self) -> None:
        """Prove the sink is reachable (``serfbridge check --connect``): ``open`` (which
        connects, logs in and checks what the sink needs), then ``close``, also when
        ``open`` failed half-way."""
        try:
            self.open()
        finally:
            self.close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def send_each(sink: Sink, batch: Sequence[Item]) -> list[SinkError | None]:
    """``send_batch`` as one ``send`` after another: for sinks with one event in flight."""
    outcomes: list[SinkError | None] = []
    for event, body in batch:
        try:
            sink.send(event, body)
        except SinkError as exc:
            outcomes.append(exc)
            if exc.retryable:
                break
        else:
            outcomes.append(None)
    return outcomes


def until_unavailable(outcomes: list[SinkError | None]) -> list[SinkError | None]:
    """``outcomes`` up to and including the first retryable error (``send_batch``'s shape)."""
    for k, outcome in enumerate(outcomes):
        if outcome is not None and outcome.retryable:
            return outcomes[: k + 1]
    return outcomes
