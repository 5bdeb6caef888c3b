"""The storm digest: several queued events folded into one chat message.

A chat service takes about one message per second per webhook; a partition can fail 40
members in seconds. Past its ``rate``, a chat sink sends what waits as one message::

    [serf] n1: 15 events: 12 members failed: a, b, c, …, l; 3 user events deploy

Member events name every member (once per kind, in order of arrival); user events and
queries are counted per name. A digest that would not fit the service's limit takes fewer
events, and the rest go in the next one, so no member is cut from view.
"""

from __future__ import annotations

import hashlib

from serfbridge.sinks import chat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

MEMBER_VERBS = {
    "member-join": "joined",
    "member-leave": "left",
    "member-failed": "failed",
    "member-update": "updated",
    "member-reap": "reaped",
}


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def text(docs: Sequence[Mapping[str, Any]], escape: Callable[[str], str] = str) -> str:
    """The digest line for ``docs`` (values escaped with ``escape``)."""
    members: dict[str, dict[str, None]] = {}  # event -> member names, ordered, unique
    counts: dict[tuple[str, str], int] = {}  # (user|query, name) -> how many
    nodes: dict[str, None] = {}
    for doc in docs:
        nodes[doc["node"]["name"] or "?"] = None
        event = doc["event"]
        if event in MEMBER_VERBS:
            names = members.setdefault(event, {})
            for member in doc.get("members") or []:
                names[member["name"]] = None
        else:
            key = (event, doc.get("name") or "?")
            counts[key] = counts.get(key, 0) + 1
    parts = []
    for event, names in members.items():
        listed = ", ".join(escape(n) for n in names) or "(no members)"
        parts.append(f"{_plural(len(names), 'member', 'members')} {MEMBER_VERBS[event]}: {listed}")
    for (event, name), n in counts.items():
        what = _plural(n, "user event", "user events") if event == "user" else (
            _plural(n, "query", "queries")
        )  # fmt: skip
        parts.append(f"{what} {escape(name)}")
    where = ", ".join(escape(n) for n in nodes)
    return f"[serf] {where}: {_plural(len(docs), 'event', 'events')}: " + "; ".join(parts)


def message(fmt: str, docs: Sequence[Mapping[str, Any]]) -> tuple[bytes, int]:
    """(request body, how many of ``docs`` from the first it covers) for chat format ``fmt``.

    Takes as many events as fit the service's limit, at least one.
    """
    escape = chat.escaper(fmt)
    limit = chat.LIMITS[fmt]
    count = len(docs)
    line = text(docs, escape)
    while count > 1 and chat.fit(line, limit) != line:
        count -= max(1, count // 10)
        line = text(docs[:count], escape)
    return chat.text_message(fmt, line), count


def message_id(docs: Sequence[Mapping[str, Any]]) -> str:
    """A deterministic id for a digest: the same events give the same id (receivers dedupe)."""
    joined = "\n".join(doc["id"] for doc in docs)
    return "digest-" + hashlib.blake2b(joined.encode(), digest_size=16).hexdigest()
