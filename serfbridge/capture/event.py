"""Serf handler input (environment + stdin bytes) -> the version 1 event document.

Pure: no I/O, no clock (the caller passes ``received_at``). The byte formats are the ones
measured in docs/serf.md §1:

* member events: one ``NAME\\tADDR\\tROLE\\tTAGS\\n`` line per member. Serf escapes TAB and
  LF inside NAME, ROLE and TAGS as the two characters ``\\t`` and ``\\n``; nothing else.
* user events and queries: the raw payload, plus one ``\\n`` that Serf appends when the
  payload is non-empty and does not already end in one. One trailing ``\\n`` is removed, so
  the payloads ``x`` and ``x\\n`` both read as ``x`` (Serf gives no way to tell them apart).
"""

import time

try:
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - CPython builds always ship _blake2
    from hashlib import blake2b

from serfbridge.errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from serfbridge._types import EventDoc, Member, Node

VERSION = 1
# Every SERF_EVENT value Serf sets.
EVENT_TYPES = (
    "member-join",
    "member-leave",
    "member-failed",
    "member-update",
    "member-reap",
    "user",
    "query",
)
MEMBER_EVENTS = frozenset(t for t in EVENT_TYPES if t.startswith("member-"))
_TAG_PREFIX = "SERF_TAG_"
#: How a relay's event id trailer starts (serfbridge.capture.relay_ids reads and writes it):
#: here, so that a handler run looks for it without importing that module.
RELAY_ID_PREFIX = b"\x1esbid:"


def rfc3339(ts: float) -> str:
    """UTC, millisecond precision, ``Z`` suffix: ``2026-11-23T18:38:46.123Z``."""
    ms = int(ts * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _text(value: str) -> str:
    """Environment values are bytes to the OS; Python decodes undecodable ones to lone
    surrogates, which cannot be written as UTF-8. They become U+FFFD instead."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _unescape(text: str) -> str:
    # Reverses Serf's eventClean; a literal backslash-t in a tag cannot be told apart.
    return text.replace("\\t", "\t").replace("\\n", "\n")


def parse_tags(text: str) -> dict[str, str]:
    """Serf prints tags as ``k=v`` pairs joined by ``,`` with nothing escaped.

    Rule: a comma-separated segment that contains ``=`` starts a new tag (key = text before the
    first ``=``); a segment without ``=`` belongs to the previous value, comma included. So
    ``dc=east,list=a,b`` gives ``{"dc": "east", "list": "a,b"}``, but a value whose text after a
    comma contains ``=`` (``v=a,b=c``) is split into two tags. Set ``[serf] rpc_addr`` with
    ``exact_tags = true`` to take exact tags from the agent instead.
    """
    tags: dict[str, str] = {}
    last: str | None = None
    if not text:
        return tags
    for segment in text.split(","):
        key, sep, value = segment.partition("=")
        if sep:
            last = _unescape(key)
            tags[last] = _unescape(value)
        elif last is not None:
            tags[last] += "," + _unescape(segment)
        else:
            last = _unescape(segment)
            tags[last] = ""
    # Serf prints tags in Go map order, random per invocation; sorted output is stable.
    return dict(sorted(tags.items()))


def parse_members(data: bytes) -> "list[Member]":
    members: list[Member] = []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, 1):
        fields = raw.decode("utf-8", "replace").split("\t")
        if len(fields) != 4:
            raise InputError(
                f"member line {number} has {len(fields)} tab-separated fields, expected 4 "
                "(NAME, ADDR, ROLE, TAGS)"
            )
        name, addr, role, tags = fields
        if not name:
            raise InputError(f"member line {number} has an empty node name")
        members.append(
            {
                "name": _unescape(name),
                "addr": addr,
                "role": _unescape(role),
                "tags": parse_tags(tags),
            }
        )
    return members


def node_from_env(environ: "Mapping[str, str]") -> "Node":
    """The node running the handler. Serf upper-cases tag names and turns every character
    outside ``[A-Z0-9_]`` into ``_``; names are lower-cased back, the rest cannot be undone."""
    tags = {
        _text(key[len(_TAG_PREFIX) :].lower()): _text(value)
        for key, value in environ.items()
        if key.startswith(_TAG_PREFIX)
    }
    return {
        "name": _text(environ.get("SERF_SELF_NAME", "")),
        "role": _text(environ.get("SERF_SELF_ROLE", "")),
        "tags": dict(sorted(tags.items())),
    }


def _digest(*parts: bytes) -> str:
    return blake2b(b"\x00".join(parts), digest_size=16).hexdigest()


def member_event_id(event: str, members: "list[Member]") -> str:
    """Same membership change, same id on every node (member order and tag order do not
    matter). A later identical change (say, a rejoin with the same tags) repeats the id, so
    receivers should dedupe over a window of minutes, not forever."""
    parts = [event.encode()]
    for m in sorted(members, key=lambda m: m["name"]):
        parts.append(m["name"].encode("utf-8", "surrogatepass"))
        parts.append(m["addr"].encode())
        parts.append(m["role"].encode("utf-8", "surrogatepass"))
        parts.extend(
            f"{k}={v}".encode("utf-8", "surrogatepass") for k, v in sorted(m["tags"].items())
        )
    return _digest(*parts)


def _ltime(environ: "Mapping[str, str]", var: str) -> int:
    raw = environ.get(var)
    if raw is None:
        raise InputError(f"{var} is not set")
    # Serf writes plain decimal digits; int() alone would also take "+5", "1_000" or "٣".
    if raw.isascii() and raw.isdigit():
        return int(raw)
    if raw.startswith("-") and raw[1:].isascii() and raw[1:].isdigit():
        raise InputError(f"{var}={raw!r} is negative")
    raise InputError(f"{var}={raw!r} is not an integer")


def user_event_id(
    event: str, name: str, ltime: int, data: bytes, relay_id: str | None = None
) -> str:
    """A user event's or query's id. A relayed event with an id trailer
    (serfbridge.capture.relay_ids) leaves the Lamport time out: a relay's resend gets a new
    one, and must get the same id."""
    raw_name = name.encode("utf-8", "surrogateescape")
    if relay_id is not None:
        return _digest(event.encode(), raw_name, b"sbid:" + relay_id.encode(), data)
    return _digest(event.encode(), raw_name, b"%d" % ltime, data)


def parse_event(
    environ: "Mapping[str, str]",
    stdin: bytes,
    received_at: float,
    *,
    truncated: bool = False,
    relay_id: str | None = None,
) -> "EventDoc":
    """Build the event document; raises InputError naming what is wrong with the input.

    ``relay_id``: the id trailer already split off ``stdin`` (``eventid.split_stdin``)."""
    event = environ.get("SERF_EVENT")
    if not event:
        raise InputError("SERF_EVENT is not set: serfbridge must be run by a Serf agent")
    if event not in EVENT_TYPES:
        raise InputError(f"unknown SERF_EVENT {event!r}: expected one of {', '.join(EVENT_TYPES)}")

    node = node_from_env(environ)
    if event in MEMBER_EVENTS:
        if truncated:
            # The last line is probably cut in half; keep only whole lines.
            stdin = stdin[: stdin.rfind(b"\n") + 1]
        return member_doc(event, parse_members(stdin), node, received_at, truncated=truncated)
    name_var, ltime_var = (
        ("SERF_USER_EVENT", "SERF_USER_LTIME")
        if event == "user"
        else ("SERF_QUERY_NAME", "SERF_QUERY_LTIME")
    )
    name = environ.get(name_var)
    if name is None:
        raise InputError(f"{name_var} is not set for a {event} event")
    ltime = _ltime(environ, ltime_var)
    return user_doc(
        event, name, ltime, stdin, node,
        received_at=received_at, relay_id=relay_id, truncated=truncated,
    )  # fmt: skip


def _document(
    event: str, event_id: str, node: "Node", received_at: float, truncated: bool
) -> "EventDoc":
    return {
        "version": VERSION,
        "id": event_id,
        "event": event,
        "name": None,
        "ltime": None,
        "payload": None,
        "payload_encoding": None,
        "members": [],
        "node": node,
        "received_at": rfc3339(received_at),
        "truncated": truncated,
    }


def member_doc(
    event: str,
    members: "list[Member]",
    node: "Node",
    received_at: float,
    *,
    truncated: bool = False,
) -> "EventDoc":
    """The document of a member-* event: the one builder for stdin and for stream records."""
    doc = _document(event, member_event_id(event, members), node, received_at, truncated)
    doc["members"] = members
    return doc


def user_doc(
    event: str,
    name: str,
    ltime: int,
    data: bytes,
    node: "Node",
    *,
    received_at: float,
    relay_id: str | None = None,
    truncated: bool = False,
) -> "EventDoc":
    """The document of a user event or query from its payload as Serf delivers it: the one
    builder for stdin and for stream records. One trailing ``\n`` is dropped: the handler
    cannot tell ``x`` from ``x\n`` (docs/serf.md), and both paths must agree on payload and id.
    ``relay_id``: the id trailer already split off ``data`` (``relay_ids``)."""
    data = data[:-1] if data.endswith(b"\n") else data
    doc = _document(
        event, user_event_id(event, name, ltime, data, relay_id), node, received_at, truncated
    )
    try:
        doc["payload"], doc["payload_encoding"] = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        import binascii

        doc["payload"] = binascii.b2a_base64(data, newline=False).decode("ascii")
        doc["payload_encoding"] = "base64"
    doc["name"], doc["ltime"] = _text(name), ltime
    return doc
