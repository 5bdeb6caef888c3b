"""Sinks, one module each, found by literal import.

PyInstaller follows literal ``from .x import Y`` statements; it cannot see directory scans or
import strings. Importing inside the loader also keeps every sink off the handler's start-up.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from serfbridge.sinks.base import Sink

SINK_TYPES = ("file", "webhook", "mqtt", "redis", "command", "members", "nats", "amqp")


def sink_class(sink_type: str) -> type[Sink]:  # noqa: PLR0911 - one literal import each
    if sink_type == "file":
        from serfbridge.sinks.file import FileSink

        return FileSink
    if sink_type == "webhook":
        from serfbridge.sinks.webhook import WebhookSink

        return WebhookSink
    if sink_type == "mqtt":
        from serfbridge.sinks.mqtt import MqttSink

        return MqttSink
    if sink_type == "redis":
        from serfbridge.sinks.redis import RedisSink

        return RedisSink
    if sink_type == "command":
        from serfbridge.sinks.command import CommandSink

        return CommandSink
    if sink_type == "members":
        from serfbridge.sinks.members import MembersSink

        return MembersSink
    if sink_type == "nats":
        from serfbridge.sinks.nats import NatsSink

        return NatsSink
    if sink_type == "amqp":
        from serfbridge.sinks.amqp import AmqpSink

        return AmqpSink
    raise ValueError(f"unknown sink type {sink_type!r}: expected one of {', '.join(SINK_TYPES)}")
