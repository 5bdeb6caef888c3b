"""``format = "cloudevents"`` on the Redis sink: structured CloudEvents JSON in ``data``.

Redis has no CloudEvents protocol binding, so the entries are checked twice: by the SDK's JSON
event format (which parses them into an event), and against the core spec's own rules for
the attributes (required ones present and non-empty, names, ``source`` a URI reference,
``time`` RFC 3339, ``specversion`` 1.0).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from cloudevents.core.formats.json import JSONFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from redis import Redis
from test_sink_redis import entries, make_config, make_event, member_event, user_event

from serfbridge.sinks.cloudevents import structured
from serfbridge.sinks.redis import RedisSink

if TYPE_CHECKING:
    from collections.abc import Iterator

    from support.servers import RedisServer

# CloudEvents 1.0 §"Attribute Naming Convention": lower-case a-z and 0-9, at most 20 chars.
ATTRIBUTE_NAME = re.compile(r"^[a-z0-9]{1,20}$")
REQUIRED = ("id", "source", "specversion", "type")


def spec_problems(envelope: dict[str, Any]) -> list[str]:
    """What in ``envelope`` breaks the CloudEvents 1.0 core spec's rules (empty: none)."""
    problems = []
    for key in REQUIRED:
        if not isinstance(envelope.get(key), str) or not envelope[key]:
            problems.append(f"{key} must be a non-empty string")
    if envelope.get("specversion") != "1.0":
        problems.append("specversion must be 1.0")
    for key in envelope:
        if key != "data" and not ATTRIBUTE_NAME.match(key):
            problems.append(f"attribute name {key!r} is not [a-z0-9]{{1,20}}")
    try:
        urlsplit(envelope.get("source", ""))
    except ValueError:
        problems.append("source is not a URI reference")
    if "time" in envelope:
        try:
            datetime.fromisoformat(envelope["time"].replace("Z", "+00:00"))
        except (ValueError, AttributeError):
            problems.append("time is not RFC 3339")
    if "subject" in envelope and not envelope["subject"]:
        problems.append("subject, when present, must be non-empty")
    return problems


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[Redis]:
    client = Redis.from_url(redis_server.url, protocol=2)
    try:
        yield client
    finally:
        client.close()


def test_entries_are_structured_cloudevents(redis_server: RedisServer, admin: Redis) -> None:
    """Each entry's data parses with the SDK's JSON format and follows the spec's rules; the
    event's data is the whole document, and the id / event / name fields stay as in json."""
    sent = [user_event(), member_event()]
    config = make_config(redis_server.url, format="cloudevents", source="urn:serf:prod")
    with RedisSink(config) as sink:
        for event, body in sent:
            sink.send(event, body)
    got = entries(admin, "serf:events")
    assert len(got) == 2
    for (event, _body), (_, fields) in zip(sent, got, strict=True):
        assert list(fields) == [b"id", b"event", b"name", b"data", b"content_type"]
        assert fields[b"content_type"].startswith(b"application/cloudevents+json")
        assert fields[b"id"] == event["id"].encode()
        envelope = json.loads(fields[b"data"])
        assert spec_problems(envelope) == []
        ce = JSONFormat().read(None, fields[b"data"])
        assert ce.get_id() == event["id"]
        assert ce.get_type() == f"io.serf.{event['event']}"
        assert ce.get_source() == "urn:serf:prod"
        assert ce.get_datacontenttype() == "application/json"
        assert ce.get_data() == event


def test_json_format_is_unchanged(redis_server: RedisServer, admin: Redis) -> None:
    """The default stays the plain document, with no content_type field."""
    event, body = user_event()
    with RedisSink(make_config(redis_server.url)) as sink:
        sink.send(event, body)
    ((_, fields),) = entries(admin, "serf:events")
    assert fields[b"data"] == body
    assert b"content_type" not in fields


def test_spec_rules_catch_a_broken_envelope() -> None:
    """The rule check itself: it flags what the spec forbids."""
    assert spec_problems({"id": "", "source": "s", "specversion": "0.3", "type": "t", "Bad": 1})
    assert spec_problems({"id": "1", "source": "s", "specversion": "1.0", "type": "t",
                          "time": "yesterday"})  # fmt: skip


@settings(database=None, max_examples=60, deadline=None)
@given(
    name=st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s),
    payload=st.binary(max_size=200),
    node=st.text(min_size=1, max_size=30).filter(lambda s: "\t" not in s and "\n" not in s),
)
def test_any_event_makes_a_valid_envelope(name: str, payload: bytes, node: str) -> None:
    """Whatever the event name, payload and node name, the envelope parses and keeps the
    spec's rules (the mapping shared by every CloudEvents transport)."""
    environ = {"SERF_EVENT": "user", "SERF_USER_EVENT": name, "SERF_USER_LTIME": "3",
               "SERF_SELF_NAME": node}  # fmt: skip
    event, body = make_event(environ, payload)
    envelope_bytes = structured(event, body)
    envelope = json.loads(envelope_bytes)
    assert spec_problems(envelope) == []
    assert JSONFormat().read(None, envelope_bytes).get_data() == event
