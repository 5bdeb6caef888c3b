"""One send of a sink worker: the queued entries it reads and how they reach the sink.

A batch goes to ``Sink.send_batch`` (one outcome per event; Redis pipelines it, MQTT keeps
a window of PUBLISHes in flight); a digest (a paced chat sink's ``digest_size`` above one)
goes to ``Sink.send_digest`` as one message, delivered or failed as a whole.
"""

from __future__ import annotations

import json
from typing import Any

from serfbridge.capture import jsonenc
from serfbridge.errors import SinkError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from serfbridge.sinks.base import Sink


def canonical(event: dict[str, Any]) -> bytes:
    """The same bytes the handler's file sink writes (one encoder): compact, UTF-8, key
    order kept."""
    return jsonenc.dumps(event).encode("utf-8")


def send(sink: Sink, paths: list[str], digest: bool) -> list[SinkError | None]:
    """The outcomes for the entries at ``paths`` (head first). An unreadable entry after
    the head ends the batch there (it fails alone once it is the head); an unreadable head
    raises (OSError, ValueError, KeyError), as does a failed digest."""
    events: list[dict[str, Any]] = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                events.append(json.loads(fh.read())["event"])
        except (OSError, ValueError, KeyError):
            if not events:
                raise
            break
    if digest and len(events) > 1:
        return [None] * max(1, min(len(events), int(sink.send_digest(events))))
    return sink.send_batch([(event, canonical(event)) for event in events])
