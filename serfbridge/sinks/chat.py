"""Chat messages for the webhook sink: Slack, Mattermost, Discord and Microsoft Teams.

The default text is a one-line summary of the event (``summary``)::

    [serf] n1: user event deploy (ltime 7): v2
    [serf] n1: query load: 15m
    [serf] n1: member-join n2 (10.0.0.2, role web), n3 (10.0.0.3)

A ``template`` replaces it (``serfbridge.capture.render``); a template that renders to
nothing falls back to the summary, since Slack and Discord refuse an empty message. Each
service also gets the event as fields (``fields``: node, event, name, members, payload) in
its own rich form: Slack Block Kit ``blocks`` (``text`` stays as the notification fallback),
Discord ``embeds``, Mattermost ``attachments``, a Teams ``FactSet``. Each service's length
limits are enforced with a visible ``… [truncated, N chars]`` marker rather than a rejected
request.
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
SLACK_SECTION = 3000  # a Block Kit section's text
SLACK_FIELD = 2000  # one section field
DISCORD_FIELD = 1024  # one embed field value
SHORT_FIELDS = ("Node", "Event", "Name")  # laid out side by side where the service can
# Mentions that notify a whole channel on Slack or Mattermost when typed as plain text.
_MENTIONS = ("@channel", "@here", "@all", "@everyone")


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
    """Mentions in event data cannot notify anyone on Slack or Mattermost.

    Slack's three control characters are escaped (no ``<!channel>``; Mattermost's webhooks
    translate that form too), and a zero-width space after the ``@`` of ``@channel``,
    ``@here``, ``@all`` and ``@everyone`` keeps them from being read as a mention.
    """
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if "@" in text:
        for mention in _MENTIONS:
            text = _replace_folded(text, mention)
    return text


def _replace_folded(text: str, mention: str) -> str:
    """``mention`` (in any case) with a zero-width space after its ``@``."""
    lower, out, i = text.lower(), [], 0
    while (j := lower.find(mention, i)) >= 0:
        out += [text[i:j], "@\u200b", text[j + 1 : j + len(mention)]]
        i = j + len(mention)
    return "".join(out) + text[i:]


def escaper(fmt: str) -> Callable[[str], str]:
    return slack_escape if fmt in ("slack", "mattermost") else str


def text_for(fmt: str, doc: Mapping[str, Any], template: str | None) -> str:
    """The message text: the summary or the rendered template, escaped and fitted for ``fmt``.

    For Slack and Mattermost the event's values are escaped, not the template's own text, so a
    template may use markup such as ``<https://example.com|runbook>``. Never empty.
    """
    escape = escaper(fmt)
    if template is None:
        text = ""
    elif fmt in ("slack", "mattermost"):
        text = template.format_map({k: escape(v) for k, v in render.fields(doc).items()})
    else:
        text = render.render(template, doc)
    if not text.strip():
        text = escape(summary(doc))
    return fit(text, LIMITS[fmt])


def fields(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The event as (title, value) pairs, unescaped; empty values are left out."""
    out = [("Node", doc["node"]["name"] or "?"), ("Event", doc["event"])]
    if doc.get("name"):
        out.append(("Name", doc["name"]))
    members = doc.get("members") or []
    if members:
        names = ", ".join(m["name"] for m in members)
        out.append(("Members", shorten(names, FACT_CHARS)))
    payload = payload_text(doc)
    if payload:
        out.append(("Payload", payload))
    return out


def slack_body(text: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """Block Kit: the text as a section, then the fields; ``text`` is the fallback."""
    cells = [
        {"type": "mrkdwn", "text": fit(f"*{title}*\n{slack_escape(value)}", SLACK_FIELD)}
        for title, value in fields(doc)
    ]
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": fit(text, SLACK_SECTION)}},
        {"type": "section", "fields": cells},
    ]
    return {"text": text, "blocks": blocks}


def mattermost_body(text: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    attachment = {
        "fallback": text,
        "fields": [
            {"title": title, "value": slack_escape(value), "short": title in SHORT_FIELDS}
            for title, value in fields(doc)
        ],
    }
    return {"text": text, "attachments": [attachment]}


def discord_body(text: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    embed = {
        "fields": [
            {"name": title, "value": fit(value, DISCORD_FIELD), "inline": title in SHORT_FIELDS}
            for title, value in fields(doc)
        ]
    }
    # No @everyone / @here / role or user pings from event data.
    return {"content": text, "embeds": [embed], "allowed_mentions": {"parse": []}}


def teams_card(text: str, doc: Mapping[str, Any] | None) -> dict[str, Any]:
    """A Teams Workflows ("Post to a channel when a webhook request is received") message."""
    body: list[dict[str, Any]] = [{"type": "TextBlock", "text": text, "wrap": True}]
    if doc is not None:
        facts = [{"title": title, "value": value} for title, value in fields(doc)]
        body.append({"type": "FactSet", "facts": facts})
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    attachment = {
        "contentType": "application/vnd.microsoft.card.adaptive",
        "contentUrl": None,
        "content": card,
    }
    return {"type": "message", "attachments": [attachment]}


BODIES: dict[str, Callable[[str, Mapping[str, Any]], dict[str, Any]]] = {
    "slack": slack_body,
    "mattermost": mattermost_body,
    "discord": discord_body,
    "teams": teams_card,
}


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def message(fmt: str, doc: Mapping[str, Any], template: str | None = None) -> bytes:
    """The JSON request body for chat format ``fmt``."""
    return encode(BODIES[fmt](text_for(fmt, doc, template), doc))


def text_message(fmt: str, text: str) -> bytes:
    """A body with only ``text`` (already escaped; fitted here): the storm digest."""
    text = fit(text, LIMITS[fmt])
    if fmt == "teams":
        return encode(teams_card(text, None))
    if fmt == "discord":
        return encode({"content": text, "allowed_mentions": {"parse": []}})
    return encode({"text": text})
