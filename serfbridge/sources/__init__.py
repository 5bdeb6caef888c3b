"""Inbound relay sources, one module each, found by literal import (see ``sinks``)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .base import Source

SOURCE_TYPES = ("http", "redis", "mqtt", "local")


def source_class(source_type: str) -> type[Source]:
    if source_type == "http":
        from .http import HttpSource

        return HttpSource
    if source_type == "redis":
        from .redis import RedisSource

        return RedisSource
    if source_type == "mqtt":
        from .mqtt import MqttSource

        return MqttSource
    if source_type == "local":
        from .local import LocalSource

        return LocalSource
    raise ValueError(
        f"unknown source type {source_type!r}: expected one of {', '.join(SOURCE_TYPES)}"
    )
