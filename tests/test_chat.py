"""Chat formats that read well: Slack blocks, Discord embeds, Mattermost attachments, Teams
facts, each with node, event, members and payload as fields; never an empty message; no
channel-wide mentions from event data. Sent through the webhook sink to a real receiver."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from serfbridge.capture import jsonenc
from serfbridge.capture.event import parse_event
from serfbridge.sinks import chat
from serfbridge.sinks.webhook import WebhookSink, WebhookSinkConfig

if TYPE_CHECKING:
    from support.servers import HttpReceiver

NODE = {"SERF_SELF_NAME": "n1", "SERF_SELF_ROLE": "web"}
ZWSP = "\u200b"


def _event(environ: dict[str, str], stdin: bytes) -> tuple[dict[str, Any], bytes]:
    body = jsonenc.dumps(parse_event({**NODE, **environ}, stdin, time.time())).encode("utf-8")
    doc: dict[str, Any] = json.loads(body)
    return doc, body


def failed(*names: str) -> tuple[dict[str, Any], bytes]:
    stdin = b"".join(b"%s\t10.0.0.%d\t\t\n" % (n.encode(), i) for i, n in enumerate(names))
    return _event({"SERF_EVENT": "member-failed"}, stdin)


def user(payload: bytes = b"v2\n", name: str = "deploy") -> tuple[dict[str, Any], bytes]:
    env = {"SERF_EVENT": "user", "SERF_USER_EVENT": name, "SERF_USER_LTIME": "7"}
    return _event(env, payload)


def post(receiver: HttpReceiver, fmt: str, event: Any, **fields: Any) -> dict[str, Any]:
    config = WebhookSinkConfig(type="webhook", name="c", url=receiver.url, format=fmt, **fields)
    before = len(receiver.requests)
    with WebhookSink(config) as sink:
        sink.send(*event)
    body: dict[str, Any] = receiver.wait_for_count(before + 1)[before].json()
    return body


def test_slack_block_kit_with_text_fallback(http_receiver: HttpReceiver) -> None:
    body = post(http_receiver, "slack", failed("m1", "m2"))
    assert body["text"] == "[serf] n1: member-failed m1 (10.0.0.0), m2 (10.0.0.1)"
    head, facts = body["blocks"]
    assert head == {"type": "section", "text": {"type": "mrkdwn", "text": body["text"]}}
    assert [f["text"] for f in facts["fields"]] == [
        "*Node*\nn1",
        "*Event*\nmember-failed",
        "*Members*\nm1, m2",
    ]
    body = post(http_receiver, "slack", user(b"v2"))
    assert [f["text"] for f in body["blocks"][1]["fields"]][2:] == [
        "*Name*\ndeploy",
        "*Payload*\nv2",
    ]


def test_discord_embed_fields(http_receiver: HttpReceiver) -> None:
    body = post(http_receiver, "discord", user(b"@everyone v3"))
    assert body["content"] == "[serf] n1: user event deploy (ltime 7): @everyone v3"
    assert body["allowed_mentions"] == {"parse": []}
    [embed] = body["embeds"]
    assert embed["fields"] == [
        {"name": "Node", "value": "n1", "inline": True},
        {"name": "Event", "value": "user", "inline": True},
        {"name": "Name", "value": "deploy", "inline": True},
        {"name": "Payload", "value": "@everyone v3", "inline": False},
    ]


def test_mattermost_attachment_fields(http_receiver: HttpReceiver) -> None:
    body = post(http_receiver, "mattermost", failed("m1"))
    [attachment] = body["attachments"]
    assert attachment["fallback"] == body["text"]
    assert attachment["fields"] == [
        {"title": "Node", "value": "n1", "short": True},
        {"title": "Event", "value": "member-failed", "short": True},
        {"title": "Members", "value": "m1", "short": False},
    ]


def test_teams_facts_include_the_payload(http_receiver: HttpReceiver) -> None:
    body = post(http_receiver, "teams", user(b"v9"))
    facts = body["attachments"][0]["content"]["body"][1]["facts"]
    assert {"title": "Payload", "value": "v9"} in facts


@pytest.mark.parametrize("fmt", ["slack", "mattermost"])
@pytest.mark.parametrize("mention", ["@channel", "@ALL", "@here", "<!channel>", "<!here>"])
def test_mentions_in_event_data_are_defused(
    http_receiver: HttpReceiver, fmt: str, mention: str
) -> None:
    """Slack and Mattermost: no mention from a payload, in the text, the fields or a
    template's values."""
    for fields in ({}, {"template": "deploy says {payload}"}):
        body = post(http_receiver, fmt, user(f"hi {mention} now".encode()), **fields)
        sent = json.dumps(body, ensure_ascii=False)
        assert mention not in sent
        assert "<!" not in sent
        if mention.startswith("@"):
            assert f"@{ZWSP}{mention[1:]}" in body["text"]


def test_template_markup_is_kept_while_values_are_escaped(http_receiver: HttpReceiver) -> None:
    body = post(http_receiver, "mattermost", user(b"@here"), template="<https://x.test|{payload}>")
    assert body["text"] == f"<https://x.test|@{ZWSP}here>"


@pytest.mark.parametrize("fmt", ["slack", "mattermost", "discord", "teams"])
def test_empty_template_falls_back_to_the_summary(http_receiver: HttpReceiver, fmt: str) -> None:
    """A template that renders to nothing (here: an empty payload) sends the summary: Slack
    refuses no_text and Discord an empty body."""
    body = post(http_receiver, fmt, user(b""), template="{payload}")
    text = json.dumps(body, ensure_ascii=False)
    assert "[serf] n1: user event deploy (ltime 7)" in text


def test_long_member_list_is_cut_in_the_field_not_rejected() -> None:
    doc, _ = failed(*(f"member-{i:04d}" for i in range(400)))
    body = json.loads(chat.message("discord", doc))
    members = next(f for f in body["embeds"][0]["fields"] if f["name"] == "Members")
    assert len(members["value"]) <= chat.DISCORD_FIELD
    assert members["value"].startswith("member-0000, member-0001")
