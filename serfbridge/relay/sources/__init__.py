"""Inbound relay sources, one module each, found by literal import (see ``sinks``)."""

from __future__ import annotations

from serfbridge.config.relay import SOURCE_TYPES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from serfbridge.relay.sources.base import Source


def source_class(source_type: str) -> type[Source]:
    if source_type == "http":
        from serfbridge.relay.sources.http import HttpSource

        return HttpSource
    if source_type == "redis":
        from serfbridge.relay.sources.redis import RedisSource

        return RedisSource
    if source_type == "mqtt":
        from serfbridge.relay.sources.mqtt import MqttSource

        return MqttSource
    if source_type == "local":
        from serfbridge.relay.sources.local import LocalSource

        return LocalSource
    if source_type == "nats":
        from serfbridge.relay.sources.nats import NatsSource

        return NatsSource
    if source_type == "amqp":
        from serfbridge.relay.sources.amqp import AmqpSource

        return AmqpSource
    raise ValueError(
        f"unknown source type {source_type!r}: expected one of {', '.join(SOURCE_TYPES)}"
    )
