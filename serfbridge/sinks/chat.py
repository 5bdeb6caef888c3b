"""Chat messages for the webhook sink: Slack, Mattermost, Discord and Microsoft Teams.

The default text is a one-line summary of the event (``summary``)::

    [serf] n1: user event deploy (ltime 7): v2
    [serf] n1: query load: 15m
    [serf] n1: member-join n2 (10.0.0.2, role web), n3 (10.0.0.3)

A ``template`` replaces it (``serfbridge.capture.render``). Each service's length limit is enforced
with a visible ``… [truncated, N chars]`` marker rather than a rejected request.
"""

from __future__ import annotations

import binascii
import json

from serfbridge.capture import render

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

PAYLOAD_CHARS = 200  # payload text kept in the default summary
MEMBERS_SHOWN = 10  # members listed before "and N more"
FACT_CHARS = 1000
# Longest text each service takes, in UTF-16 code units (how JavaScript counts). Slack
# cuts text at 40,000; Mattermost's default post limit is 16,383; Discord rejects over
# 2,000; a Teams Workflows request must stay under 28 KB, card and all.
LIMITS = {"slack": 40000, "mattermost": 16383, "discord": 2000, "teams": 8000}


def _oneline(text: str) -> str:
    return " ".join(text.split())


def shorten(text: str, limit: int) -> str:
    """At most ``limit`` characters plus a visible note of the original length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} chars)"


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def fit(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` UTF-16 code units, ending with ``… [truncated, N chars]``."""
    if _utf16_units(text) <= limit:
        return text
    marker = f"… [truncated, {len(text)} chars]"
    keep = limit - len(marker)
    cut = text[:keep]
    # Every character dropped frees at least one unit, so this lands at or under `keep`.
    excess = _utf16_units(cut) - keep
    if excess > 0:
        cut = cut[: len(cut) - excess]
    return cut + marker


def payload_text(doc: Mapping[str, Any]) -> str:
    """The payload as one shortened line; binary payloads as ``<binary, N bytes>``."""
    payload = doc.get("payload")
    if not payload:
        return ""
    if doc.get("payload_encoding") == "base64":
        return f"<binary, {len(binascii.a2b_base64(payload))} bytes>"
    return shorten(_oneline(payload), PAYLOAD_CHARS)


def _member(member: Mapping[str, Any]) -> str:
    details = [member["addr"]] if member.get("addr") else []
    if member.get("role"):
        details.append(f"role {member['role']}")
    return f"{member['name']} ({', '.join(details)})" if details else member["name"]


def members_text(members: list[Mapping[str, Any]]) -> str:
    if not members:
        return "(no members)"
    text = ", ".join(_member(m) for m in members[:MEMBERS_SHOWN])
    if len(members) > MEMBERS_SHOWN:
        text += f" and {len(members) - MEMBERS_SHOWN} more"
    return text


def summary(doc: Mapping[str, Any]) -> str:
    """The default one-line message for ``doc``."""
    event = doc["event"]
    if event == "user":
        what = f"user event {doc['name']} (ltime {doc['ltime']})"
    elif event == "query":
        what = f"query {doc['name']}"
    else:
        what = f"{event} {members_text(doc.get('members') or [])}"
    payload = payload_text(doc)
    if payload:
        what += f": {payload}"
    if doc.get("truncated"):
        what += " [input truncated]"
    return _oneline(f"[serf] {doc['node']['name'] or '?'}: {what}")


def slack_escape(text: str) -> str:
    """Slack's three control characters; stops event data from forming ``<!channel>``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def text_for(fmt: str, doc: Mapping[str, Any], template: str | None) -> str:
    """The message text: the summary or the rendered template, escaped and fitted for ``fmt``.

    For Slack the event's values are escaped, not the template's own text, so a template may
    use Slack markup such as ``<https://example.com|runbook>``.
    """
    escape: Callable[[str], str] = slack_escape if fmt == "slack" else str
    if template is None:
        text = escape(summary(doc))
    elif fmt == "slack":
        text = template.format_map({k: escape(v) for k, v in render.fields(doc).items()})
    else:
        text = render.render(template, doc)
    return fit(text, LIMITS[fmt])


def teams_card(text: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """A Teams Workflows ("Post to a channel when a webhook request is received") message."""
    facts = [
        {"title": "Node", "value": doc["node"]["name"]},
        {"title": "Event", "value": doc["event"]},
    ]
    if doc.get("name"):
        facts.append({"title": "Name", "value": doc["name"]})
    members = doc.get("members") or []
    if members:
        names = ", ".join(m["name"] for m in members)
        facts.append({"title": "Members", "value": shorten(names, FACT_CHARS)})
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": text, "wrap": True},
            {"type": "FactSet", "facts": facts},
        ],
    }
    attachment = {
        "contentType": "application/vnd.microsoft.card.adaptive",
        "contentUrl": None,
        "content": card,
    }
    return {"type": "message", "attachments": [attachment]}


def message(fmt: str, doc: Mapping[str, Any], template: str | None = None) -> bytes:
    """The JSON request body for chat format ``fmt``."""
    text = text_for(fmt, doc, template)
    obj: dict[str, Any]
    if fmt == "teams":
        obj = teams_card(text, doc)
    elif fmt == "discord":
        # No @everyone / @here / role or user pings from event data.
        obj = {"content": text, "allowed_mentions": {"parse": []}}
    else:
        obj = {"text": text}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
