"""``type = "file"``: one JSON line per event appended to a local file.

The handler appends inline (``serfbridge.capture.files``, no heavy imports); the deliverer uses
this class only for events whose inline append failed (disk full, permissions) and were
spooled.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from serfbridge.capture.files import append_record
from serfbridge.errors import SinkUnavailable
from serfbridge.sinks.base import Sink, SinkConfigBase


class FileSinkConfig(SinkConfigBase):
    type: Literal["file"]
    path: str = Field(description="File to append JSON lines to; created with its directory.")
    fsync: bool = Field(default=False, description="fsync after every event (slower, durable).")


class FileSink(Sink):
    config: FileSinkConfig

    def send(self, event: dict[str, Any], body: bytes) -> None:
        try:
            append_record(self.config.path, body + b"\n", fsync=self.config.fsync)
        except OSError as exc:
            raise SinkUnavailable(f"cannot append to {self.config.path}: {exc}") from exc
