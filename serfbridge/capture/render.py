"""Templates with the event's fields: ``{event}``, ``{name}``, ``{node}``, ``{payload}`` ...

Used for chat messages, MQTT topics, Redis stream keys and fixed query answers. Plain
``str.format_map`` with a fixed set of names; ``{{`` and ``}}`` are literal braces.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

FIELDS = (
    "event",
    "name",
    "node",
    "role",
    "payload",
    "ltime",
    "id",
    "members",
    "received_at",
)


def fields(doc: Mapping[str, Any]) -> dict[str, str]:
    """Every template field as text; absent values are empty strings."""
    members = doc.get("members") or []
    return {
        "event": doc["event"],
        "name": doc.get("name") or "",
        "node": doc["node"]["name"],
        "role": doc["node"]["role"],
        "payload": doc.get("payload") or "",
        "ltime": "" if doc.get("ltime") is None else str(doc["ltime"]),
        "id": doc["id"],
        "members": ", ".join(m["name"] for m in members),
        "received_at": doc["received_at"],
    }


def render(template: str, doc: Mapping[str, Any]) -> str:
    return template.format_map(fields(doc))


def validate(template: str) -> str:
    """Config-time check: every placeholder must be a known field (pydantic validator helper)."""
    import string

    for _, field, spec, conv in string.Formatter().parse(template):
        if field is None:
            continue
        if field not in FIELDS or spec or conv:
            known = ", ".join("{" + f + "}" for f in FIELDS)
            raise ValueError(f"unknown template field {{{field}}}: use {known}")
    return template
