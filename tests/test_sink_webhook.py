"""The webhook sink against a real HTTP receiver: formats, headers, signing, outcomes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from pydantic import ValidationError
from support.ports import free_port

from serfbridge import __version__
from serfbridge.capture import jsonenc
from serfbridge.capture.event import parse_event
from serfbridge.errors import SinkRejected, SinkUnavailable
from serfbridge.sinks import chat
from serfbridge.sinks.answers import retry_after
from serfbridge.sinks.webhook import WebhookSink, WebhookSinkConfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from support.servers import BlackholeServer, HttpReceiver, RecordedRequest

DOCS = Path(__file__).resolve().parent.parent / "docs" / "sink-webhook.md"
NODE = {"SERF_SELF_NAME": "n1", "SERF_SELF_ROLE": "web"}
SIGNING_KEY = "topsecret"
BEARER = "s3cr3t"
DEPLOY = "[serf] n1: user event deploy (ltime 7)"

# -- events, built by the real parser ------------------------------------------------------


def _event(environ: dict[str, str], stdin: bytes) -> tuple[dict[str, Any], bytes]:
    """(event as the deliverer reads it from the spool, its canonical JSON body)."""
    doc = parse_event({**NODE, **environ}, stdin, time.time())
    body = jsonenc.dumps(doc).encode("utf-8")
    event: dict[str, Any] = json.loads(body)
    return event, body


def user_event(name: str = "deploy", payload: bytes = b"v2\n", ltime: int = 7) -> Any:
    env = {"SERF_EVENT": "user", "SERF_USER_EVENT": name, "SERF_USER_LTIME": str(ltime)}
    return _event(env, payload)


def query_event(name: str = "load", payload: bytes = b"") -> Any:
    env = {"SERF_EVENT": "query", "SERF_QUERY_NAME": name, "SERF_QUERY_LTIME": "3"}
    return _event(env, payload)


def join_event() -> Any:
    stdin = b"n2\t127.0.0.1\tweb\tdc=east\nn3\t127.0.0.2\t\t\n"
    return _event({"SERF_EVENT": "member-join"}, stdin)


def config(url: str, **fields: Any) -> WebhookSinkConfig:
    return WebhookSinkConfig(type="webhook", name="hook", url=url, **fields)


def deliver(receiver: HttpReceiver, event: Any = None, **fields: Any) -> RecordedRequest:
    """Send one event through a fresh sink and return the request the receiver recorded."""
    doc, body = event or user_event()
    with WebhookSink(config(receiver.url_for("/hook"), **fields)) as sink:
        sink.send(doc, body)
    return receiver.wait_for_count(1)[-1]


def failure(receiver: HttpReceiver, **fields: Any) -> Callable[[], None]:
    """A callable that sends one user event (for pytest.raises)."""

    def send() -> None:
        deliver(receiver, **fields)

    return send


def cloudevent(request: RecordedRequest) -> Any:
    return from_http_event(HTTPMessage(request.headers, request.body))


# -- json ----------------------------------------------------------------------------------


def test_json_posts_the_document_as_given(http_receiver: HttpReceiver) -> None:
    """format json POSTs the body bytes unchanged with JSON, id and User-Agent headers."""
    doc, body = user_event()
    request = deliver(http_receiver, (doc, body))
    assert (request.method, request.path, request.body) == ("POST", "/hook", body)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"serfbridge/{__version__}"
    assert request.headers["idempotency-key"] == doc["id"]
    assert request.headers["x-serfbridge-event-id"] == doc["id"]
    assert "authorization" not in request.headers


def test_one_client_serves_many_sends(http_receiver: HttpReceiver) -> None:
    """Several sends through one opened sink all arrive, in order."""
    events = [user_event(payload=f"v{i}".encode()) for i in range(3)]
    with WebhookSink(config(http_receiver.url)) as sink:
        for doc, body in events:
            sink.send(doc, body)
    requests = http_receiver.wait_for_count(3)
    assert [r.body for r in requests] == [body for _, body in events]


def test_static_headers_and_bearer_token(http_receiver: HttpReceiver) -> None:
    """Static headers are sent, bearer_token becomes an Authorization header."""
    request = deliver(
        http_receiver, headers={"X-Team": "ops", "User-Agent": "mine/1"}, bearer_token=BEARER
    )
    assert request.headers["x-team"] == "ops"
    assert request.headers["user-agent"] == "mine/1"
    assert request.headers["authorization"] == f"Bearer {BEARER}"


# -- CloudEvents ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["cloudevents", "cloudevents-binary"])
@pytest.mark.parametrize(
    ("make", "ce_type", "subject"),
    [
        (user_event, "io.serf.user", "deploy"),
        (query_event, "io.serf.query", "load"),
        (join_event, "io.serf.member-join", "n2,n3"),
    ],
)
def test_cloudevents_parse_with_the_sdk(
    http_receiver: HttpReceiver, fmt: str, make: Any, ce_type: str, subject: str
) -> None:
    """Both CloudEvents modes parse with the reference SDK into the expected attributes."""
    doc, body = make()
    request = deliver(http_receiver, (doc, body), format=fmt)
    event = cloudevent(request)
    assert event.get_specversion() == "1.0"
    assert event.get_id() == doc["id"]
    assert event.get_type() == ce_type
    assert event.get_source() == "serf://n1"
    assert event.get_subject() == subject
    assert event.get_datacontenttype() == "application/json"
    assert event.get_time() == datetime.fromisoformat(doc["received_at"])
    assert event.get_data() == doc


def test_cloudevents_structured_envelope(http_receiver: HttpReceiver) -> None:
    """Structured mode is application/cloudevents+json whose data is the document's bytes."""
    doc, body = user_event()
    request = deliver(http_receiver, (doc, body), format="cloudevents", source="urn:serf:prod")
    assert request.headers["content-type"].startswith("application/cloudevents+json")
    assert request.body.endswith(b',"data":' + body + b"}")
    assert request.json()["source"] == "urn:serf:prod"
    assert not any(name.startswith("ce-") for name in request.headers)


def test_cloudevents_binary_headers_are_percent_encoded(http_receiver: HttpReceiver) -> None:
    """Binary mode percent-encodes non-ASCII and spaces in ce-* headers; the SDK decodes them."""
    doc, body = user_event(name="déploy now")
    request = deliver(http_receiver, (doc, body), format="cloudevents-binary")
    assert request.body == body
    assert request.headers["content-type"] == "application/json"
    assert request.headers["ce-subject"] == "d%C3%A9ploy%20now"
    assert cloudevent(request).get_subject() == "déploy now"


def test_legacy_sdk_from_http_reads_both_modes(http_receiver: HttpReceiver) -> None:
    """The SDK's older `from_http(headers, body)` API reads both modes too."""
    from cloudevents.v1.http import from_http

    doc, body = join_event()
    deliver(http_receiver, (doc, body), format="cloudevents")
    deliver(http_receiver, (doc, body), format="cloudevents-binary")
    for request in http_receiver.requests:
        event = from_http(request.headers, request.body)
        assert (event["id"], event["type"], event["source"]) == (
            doc["id"],
            "io.serf.member-join",
            "serf://n1",
        )
        assert event.data == doc


# -- chat formats --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["slack", "mattermost"])
def test_slack_and_mattermost_post_text(http_receiver: HttpReceiver, fmt: str) -> None:
    """slack and mattermost POST {"text": summary} (plus their rich form, tests/test_chat.py)."""
    request = deliver(http_receiver, format=fmt)
    assert request.headers["content-type"].startswith("application/json")
    assert request.json()["text"] == "[serf] n1: user event deploy (ltime 7): v2"


def test_slack_escapes_event_data(http_receiver: HttpReceiver) -> None:
    """Event data cannot form Slack markup such as <!channel>; the template's own text can."""
    event = user_event(payload=b"<!channel> & co")
    request = deliver(http_receiver, event, format="slack")
    assert request.json()["text"].endswith(": &lt;!channel&gt; &amp; co")
    request = deliver(http_receiver, event, format="slack", template="<https://x.test|{payload}>")
    assert request.json()["text"] == "<https://x.test|&lt;!channel&gt; &amp; co>"


def test_discord_content_without_mentions(http_receiver: HttpReceiver) -> None:
    """discord POSTs {"content": summary} and turns off @everyone/@here pings."""
    request = deliver(http_receiver, user_event(payload=b"@everyone"), format="discord")
    body = request.json()
    assert body["content"] == "[serf] n1: user event deploy (ltime 7): @everyone"
    assert body["allowed_mentions"] == {"parse": []}


def test_discord_long_message_is_cut_visibly(http_receiver: HttpReceiver) -> None:
    """A message over Discord's 2000 characters is cut to 2000 with a visible marker."""
    payload = "x" * 1000 + "é" * 1000 + "🙂" * 1000
    event = user_event(payload=payload.encode())
    content = deliver(http_receiver, event, format="discord", template="{payload}").json()[
        "content"
    ]
    assert content.startswith("x" * 1000)
    assert content.endswith("… [truncated, 3000 chars]")
    assert len(content.encode("utf-16-le")) // 2 <= 2000


def test_teams_posts_an_adaptive_card(http_receiver: HttpReceiver) -> None:
    """teams POSTs a Workflows message with an AdaptiveCard 1.4: summary + facts."""
    body = deliver(http_receiver, join_event(), format="teams").json()
    assert body["type"] == "message"
    [attachment] = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    text, facts = card["body"]
    assert text["type"] == "TextBlock"
    assert text["text"] == "[serf] n1: member-join n2 (127.0.0.1, role web), n3 (127.0.0.2)"
    assert facts["type"] == "FactSet"
    assert facts["facts"] == [
        {"title": "Node", "value": "n1"},
        {"title": "Event", "value": "member-join"},
        {"title": "Members", "value": "n2, n3"},
    ]


def test_template_replaces_the_summary(http_receiver: HttpReceiver) -> None:
    """A template is rendered with the event's fields instead of the summary."""
    template = "{node}/{role}: {name}={payload}"
    request = deliver(http_receiver, format="mattermost", template=template)
    assert request.json()["text"] == "n1/web: deploy=v2"


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (user_event(), f"{DEPLOY}: v2"),
        (user_event(payload=b""), DEPLOY),
        (user_event(payload=b"a\n  b\n"), f"{DEPLOY}: a b"),
        (user_event(payload=b"\xff\x00\x01"), f"{DEPLOY}: <binary, 3 bytes>"),
        (query_event(), "[serf] n1: query load"),
        (query_event(payload=b"15m"), "[serf] n1: query load: 15m"),
        (join_event(), "[serf] n1: member-join n2 (127.0.0.1, role web), n3 (127.0.0.2)"),
    ],
)
def test_summary_lines(event: Any, line: str) -> None:
    """The default summary is one readable line per event kind."""
    assert chat.summary(event[0]) == line


def test_summary_shortens_long_payloads_and_member_lists() -> None:
    """Long payloads and long member lists are shortened with a visible count."""
    doc, _ = user_event(payload=b"y" * 500)
    assert chat.summary(doc).endswith(": " + "y" * 200 + "… (500 chars)")
    stdin = b"".join(b"m%d\t10.0.0.%d\t\t\n" % (i, i) for i in range(12))
    doc, _ = _event({"SERF_EVENT": "member-failed"}, stdin)
    assert chat.summary(doc).endswith("m9 (10.0.0.9) and 2 more")


# -- config validation ---------------------------------------------------------------------


def test_unknown_template_field_fails_validation() -> None:
    """An unknown template placeholder is a config error naming the field."""
    with pytest.raises(ValidationError, match=r"unknown template field \{nodes\}") as info:
        config("http://127.0.0.1/", format="slack", template="{nodes} joined")
    assert info.value.errors()[0]["loc"] == ("template",)


def test_template_needs_a_chat_format() -> None:
    """A template on format json is refused: it would be silently ignored."""
    with pytest.raises(ValidationError, match="template applies to the chat formats"):
        config("http://127.0.0.1/", template="{event}")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "ftp://x/"}, "must start with http"),
        ({"url": "http:///path"}, "no host"),
        ({"headers": {"Bad Name": "x"}}, "not a valid HTTP header name"),
        ({"headers": {"X-A": "a\r\nX-B: b"}}, "line break"),
        ({"signature_header": "X Sig"}, "not a valid HTTP header name"),
    ],
)
def test_invalid_config_is_refused(fields: dict[str, Any], message: str) -> None:
    """Bad URLs and header names or values fail at config time."""
    with pytest.raises(ValidationError, match=message):
        WebhookSinkConfig(**{"type": "webhook", "name": "hook", "url": "http://h/", **fields})


# -- signing -------------------------------------------------------------------------------


def _docs_verify() -> Callable[..., bool]:
    """The verification example from docs/sink-webhook.md, executed as written."""
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    code = [b for b in blocks if "x-serfbridge-timestamp" in b]
    assert code, "docs/sink-webhook.md lost its verification example"
    namespace: dict[str, Any] = {}
    exec(code[0], namespace)  # noqa: S102 - our own documentation
    verify: Callable[..., bool] = namespace["verify"]
    return verify


@pytest.mark.parametrize("fmt", ["json", "slack", "cloudevents"])
def test_hmac_signature_verifies_with_the_documented_code(
    http_receiver: HttpReceiver, fmt: str
) -> None:
    """The signature covers '<timestamp>.' + the exact body sent; the docs' verifier agrees."""
    verify = _docs_verify()
    request = deliver(http_receiver, format=fmt, hmac_secret=SIGNING_KEY)
    timestamp = int(request.headers["x-serfbridge-timestamp"])
    assert abs(timestamp - time.time()) < 60
    assert request.headers["x-serfbridge-signature"].startswith("sha256=")
    assert verify(SIGNING_KEY.encode(), request.headers, request.body)
    assert not verify(b"wrong", request.headers, request.body)
    assert not verify(SIGNING_KEY.encode(), request.headers, request.body + b" ")
    old = {**request.headers, "x-serfbridge-timestamp": str(timestamp - 3600)}
    assert not verify(SIGNING_KEY.encode(), old, request.body)


def test_signature_header_names_are_configurable(http_receiver: HttpReceiver) -> None:
    """signature_header and timestamp_header rename the two signing headers."""
    request = deliver(
        http_receiver, hmac_secret=SIGNING_KEY, signature_header="X-Sig", timestamp_header="X-Ts"
    )
    assert request.headers["x-sig"].startswith("sha256=")
    assert request.headers["x-ts"].isdigit()
    assert "x-serfbridge-signature" not in request.headers


# -- outcomes ------------------------------------------------------------------------------


def test_503_with_retry_after_is_retryable(http_receiver: HttpReceiver) -> None:
    """503 with Retry-After: 7 raises SinkUnavailable with retry_after 7."""
    http_receiver.respond_with(503, {"Retry-After": "7"}, body=b"maintenance")
    with pytest.raises(SinkUnavailable, match="503 Service Unavailable: maintenance") as info:
        deliver(http_receiver)
    assert info.value.retry_after == 7


@pytest.mark.parametrize("status", [408, 429, 500, 502])
def test_retryable_statuses(http_receiver: HttpReceiver, status: int) -> None:
    """408, 429 and 5xx raise SinkUnavailable."""
    http_receiver.respond_with(status)
    with pytest.raises(SinkUnavailable, match=str(status)) as info:
        deliver(http_receiver)
    assert info.value.retry_after is None


def test_404_is_rejected_without_leaking_the_path(http_receiver: HttpReceiver) -> None:
    """404 raises SinkRejected naming the status and a body excerpt, never the URL's path."""
    http_receiver.respond_with(404, body=b"no such\n  hook " + b"z" * 500)
    with (
        WebhookSink(config(http_receiver.url_for("/services/T0/B0/SECRET"))) as sink,
        pytest.raises(SinkRejected, match="404 Not Found: no such hook z") as info,
    ):
        sink.send(*user_event())
    assert "SECRET" not in str(info.value)
    assert str(info.value).endswith("z…")
    assert not info.value.retryable


def test_redirects_are_not_followed(http_receiver: HttpReceiver) -> None:
    """A 3xx is rejected and its Location is not requested."""
    http_receiver.respond_with(301, {"Location": "https://elsewhere.test/new/path"})
    with pytest.raises(SinkRejected, match=r"301 .*Location: https://elsewhere\.test\)"):
        deliver(http_receiver)
    assert len(http_receiver.requests) == 1


def test_hung_receiver_times_out(http_receiver: HttpReceiver) -> None:
    """A receiver that never answers raises SinkUnavailable after the timeout."""
    http_receiver.hang()
    started = time.monotonic()
    with pytest.raises(SinkUnavailable, match=r"no answer within 0\.5s"):
        deliver(http_receiver, timeout=0.5)
    assert time.monotonic() - started < 1.5


def test_connection_refused_is_retryable() -> None:
    """Nobody listening on the port raises SinkUnavailable."""
    with (
        pytest.raises(SinkUnavailable, match="ConnectError"),
        WebhookSink(config(f"http://127.0.0.1:{free_port()}/")) as sink,
    ):
        sink.send(*user_event())


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("7", 7.0), (" 0 ", 0.0), ("soon", None), ("", None), (None, None), ("-3", None)],
)
def test_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    """Retry-After delay-seconds parse; anything unparseable is None."""
    assert retry_after(value) == seconds


def test_retry_after_http_date() -> None:
    """Retry-After as an HTTP-date gives the seconds until then, never negative."""
    now = time.time()
    assert retry_after(formatdate(now + 120, usegmt=True), now=now) == pytest.approx(120, abs=1)
    assert retry_after(formatdate(now - 120, usegmt=True), now=now) == 0.0


# -- check ---------------------------------------------------------------------------------


def test_check_connects_without_a_request(blackhole: BlackholeServer) -> None:
    """check() only opens a TCP connection, so it passes against a silent listener."""
    WebhookSink(config(blackhole.url, timeout=1.0)).check()
    blackhole.wait_for_connections(1)


def test_check_fails_when_nothing_listens() -> None:
    """check() raises SinkUnavailable when the port refuses connections."""
    with pytest.raises(SinkUnavailable, match="cannot connect"):
        WebhookSink(config(f"http://127.0.0.1:{free_port()}/")).check()


def test_importing_the_module_does_not_import_httpx() -> None:
    """The config model can be loaded without paying for httpx."""
    code = "import sys, serfbridge.sinks.webhook; print('httpx' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
