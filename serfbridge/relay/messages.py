"""One inbound relay message: JSON bytes in, a validated ``Message`` out, or ``Rejected``.

The body is the same on every source (HTTP, MQTT, Redis, local socket)::

    {"type": "event", "name": "deploy", "payload": "v2", "coalesce": false}
    {"type": "query", "name": "load", "payload": "", "nodes": ["n1"], "tags": {"role": "web"},
     "timeout": 2.5, "reply_to": "..."}

``"payload_encoding": "base64"`` carries binary payloads. Unknown fields, wrong types and bad
base64 are rejected (``malformed``); serfbridge's own event documents are rejected as
``loop`` (see docs/relay.md). Size limits are checked here with Serf's own arithmetic
(docs/serf.md: user events 512 B, queries 1024 B by default), before Serf is ever called.
"""

from __future__ import annotations

import binascii
import json
import math
from dataclasses import dataclass, field

from serfbridge.capture import serf_sizes
from serfbridge.errors import Rejected

EVENT_FIELDS = frozenset(
    {"type", "name", "payload", "payload_encoding", "coalesce", "reply_to", "id"}
)
QUERY_FIELDS = frozenset(
    {"type", "name", "payload", "payload_encoding", "nodes", "tags", "timeout", "reply_to", "id"}
)
# Keys that only serfbridge's outbound documents carry (the event document, CloudEvents).
_DOCUMENT_MARKERS = (("version", "event"), ("specversion",))
MAX_QUERY_TIMEOUT = 300.0
# Serf answers queries with this prefix itself (keyring changes, conflict resolution, ping)
# and never passes them to a handler: a relay must not reach them.
INTERNAL_QUERY_PREFIX = "_serf_"


@dataclass(frozen=True, slots=True)
class Message:
    type: str  # "event" or "query"
    name: str
    payload: bytes
    coalesce: bool = False
    nodes: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    reply_to: str | None = None
    id: str | None = None


def event_size(name: str, payload: bytes, extra: int = 0) -> int:
    """Encoded size of Serf's user event (serfbridge.capture.serf_sizes), the Lamport time
    at its worst case. ``extra``: bytes the relay appends to the payload (``event_ids``)."""
    return serf_sizes.event_size(name, len(payload) + extra)


def query_size(name: str, payload: bytes, nodes: list[str], tags: dict[str, str]) -> int:
    return serf_sizes.query_size(name, len(payload), nodes, tags)


def check_text(what: str, value: str) -> None:
    """What Serf and its handlers can carry as a name, node name or tag (docs/relay.md,
    Names): Serf hands a user event's name to the handler as ``SERF_USER_EVENT`` and a
    query's as ``SERF_QUERY_NAME``, environment variables. An environment entry ends at the
    first NUL (Go's exec refuses it: the handler never runs), and a Windows environment is
    UTF-16, so text that is not valid Unicode (a lone surrogate) arrives altered."""
    if "\0" in value:
        raise Rejected("malformed", f"{what} contains a NUL character, which Serf cannot pass "
                       "to a handler (environment variables end at NUL)")  # fmt: skip
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected(
            "malformed", f"{what} is not valid Unicode text (a lone surrogate)"
        ) from None


def _name(obj: dict[str, object], kind: str) -> str:
    name = _str(obj, "name", required=True) or ""
    if not name:
        raise Rejected("malformed", "'name' must not be empty")
    check_text("'name'", name)
    if kind == "query" and name.startswith(INTERNAL_QUERY_PREFIX):
        raise Rejected(
            "malformed",
            f"query names starting with {INTERNAL_QUERY_PREFIX!r} are Serf's own: it answers "
            "them itself and never passes them to a handler",
        )
    return name


def _reject_loop(obj: dict[str, object]) -> None:
    for markers in _DOCUMENT_MARKERS:
        if all(k in obj for k in markers):
            raise Rejected(
                "loop",
                "this is a serfbridge event document (forwarded out by a sink), not a message",
            )


def _str(obj: dict[str, object], key: str, *, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        kind = "missing" if value is None else f"a {type(value).__name__}"
        raise Rejected("malformed", f"{key!r} must be a string, got {kind}")
    return value


def _payload(obj: dict[str, object]) -> bytes:
    text = _str(obj, "payload") or ""
    encoding = _str(obj, "payload_encoding") or "utf-8"
    if encoding == "utf-8":
        return text.encode("utf-8", "surrogatepass")
    if encoding == "base64":
        try:
            return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise Rejected("malformed", f"payload is not valid base64: {exc}") from None
    raise Rejected("malformed", f"payload_encoding must be 'utf-8' or 'base64', not {encoding!r}")


def _query_fields(obj: dict[str, object]) -> tuple[list[str], dict[str, str], float | None]:
    nodes = obj.get("nodes", [])
    if not isinstance(nodes, list) or not all(isinstance(n, str) and n for n in nodes):
        raise Rejected("malformed", "'nodes' must be a list of node names")
    tags = obj.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise Rejected("malformed", "'tags' must be an object of tag name to regexp strings")
    timeout = obj.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise Rejected("malformed", "'timeout' must be a number of seconds")
        if not (math.isfinite(timeout) and 0 < timeout <= MAX_QUERY_TIMEOUT):
            raise Rejected("malformed", f"'timeout' must be in (0, {MAX_QUERY_TIMEOUT:g}] s")
    for node in nodes:
        check_text("a node name in 'nodes'", node)
    for key, expr in tags.items():
        check_text("a tag name in 'tags'", key)
        check_text(f"the regexp for tag {key!r}", expr)
    return list(nodes), dict(tags), None if timeout is None else float(timeout)


def _load(body: bytes) -> dict[str, object]:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected("malformed", f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise Rejected("malformed", "body is nested too deeply") from None
    if not isinstance(obj, dict):
        raise Rejected("malformed", f"body must be a JSON object, got {type(obj).__name__}")
    return obj


def parse(
    body: bytes,
    *,
    event_limit: int = 512,
    query_limit: int = 1024,
    default_type: str | None = None,
    event_extra: int = 0,
) -> Message:
    """Validate one message; raises ``Rejected`` with reason malformed, loop or too_large.

    ``default_type`` is what the HTTP path says (``/v1/event``): ``type`` may then be left
    out, and must agree when given. ``event_extra``: bytes the relay will append to an
    event's payload, counted against the limit.
    """
    obj = _load(body)
    _reject_loop(obj)
    if default_type is not None:
        obj.setdefault("type", default_type)
        if obj["type"] != default_type:
            raise Rejected("malformed", f"'type' is {obj['type']!r} on the {default_type} path")
    kind = _str(obj, "type", required=True)
    if kind not in ("event", "query"):
        raise Rejected("malformed", f"'type' must be 'event' or 'query', not {kind!r}")
    allowed = EVENT_FIELDS if kind == "event" else QUERY_FIELDS
    unknown = sorted(set(obj) - allowed)
    if unknown:
        listed = ", ".join(map(repr, unknown))
        raise Rejected("malformed", f"unknown field(s) for a {kind}: {listed}")
    name = _name(obj, kind)
    payload = _payload(obj)
    msg_id = _str(obj, "id")
    reply_to = _str(obj, "reply_to")
    for what, text in (("'id'", msg_id), ("'reply_to'", reply_to)):
        if text is not None:
            check_text(what, text)
    if kind == "event":
        coalesce = obj.get("coalesce", False)
        if not isinstance(coalesce, bool):
            raise Rejected("malformed", "'coalesce' must be true or false")
        size = event_size(name, payload, event_extra)
        if size > event_limit:
            trailer = f", with the {event_extra}-byte event id trailer" if event_extra else ""
            raise Rejected(
                "too_large",
                f"user event {name!r} encodes to {size} bytes{trailer}, over Serf's limit of "
                f"{event_limit} (name + payload {len(name.encode()) + len(payload)} bytes)",
            )
        return Message("event", name, payload, coalesce=coalesce, reply_to=reply_to, id=msg_id)
    nodes, tags, timeout = _query_fields(obj)
    size = query_size(name, payload, nodes, tags)
    if size > query_limit:
        raise Rejected(
            "too_large",
            f"query {name!r} encodes to {size} bytes, over Serf's limit of {query_limit}",
        )
    return Message(
        "query", name, payload, nodes=nodes, tags=tags, timeout=timeout, reply_to=reply_to,
        id=msg_id,
    )  # fmt: skip


def allowed(patterns: list[str], name: str) -> bool:
    """Allowlist match: exact names, or a trailing ``*`` for a prefix; ``*`` alone is all."""
    for pattern in patterns:
        if pattern == name or (pattern.endswith("*") and name.startswith(pattern[:-1])):
            return True
    return False
