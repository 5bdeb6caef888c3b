"""What every sink shares: the config fields and the delivery interface.

A sink is opened once by the deliverer, sends one event at a time, and is closed at the end.
``send`` returns nothing on success and raises ``SinkUnavailable`` (worth retrying) or
``SinkRejected`` (the receiver refused this event; it goes to the dead-letter store).
"""

from __future__ import annotations

from types import TracebackType
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from serfbridge.capture import filters, when

WhenSpec = dict[str, str | list[str]]


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


class Sink:
    """Base class; subclasses override ``open``, ``send`` and ``close``."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.name: str = config.name

    def open(self) -> None:
        """Connect. Raise SinkUnavailable when the far end cannot be reached."""

    def send(self, event: dict[str, Any], body: bytes) -> None:
        """Deliver one event; ``body`` is the canonical JSON document of ``event``."""
        raise NotImplementedError

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
        """Prove the sink is reachable (``serfbridge check --connect``)."""
        self.open()
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
