"""Webhook signatures that receivers' own libraries verify: Standard Webhooks and GitHub style.

Outbound, the webhook sink posts to a real HTTP receiver and the request is verified with the
``standardwebhooks`` reference package and with a GitHub-style verifier written here from
GitHub's documentation. Inbound, a real relay accepts requests signed by the package.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from support.ports import free_port, wait_for
from support.relay import RelayProcess, Watcher, http_source, post

from serfbridge import signing
from serfbridge.capture import jsonenc
from serfbridge.capture.event import parse_event
from serfbridge.config.relay import HttpSourceConfig
from serfbridge.errors import Rejected
from serfbridge.relay.auth import Authenticator, Credentials
from serfbridge.sinks.webhook import WebhookSink, WebhookSinkConfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from support.servers import HttpReceiver, RecordedRequest

DOCS = Path(__file__).resolve().parent.parent / "docs" / "sink-webhook.md"
OLD = "whsec_" + base64.b64encode(b"old key, being retired").decode()
NEW = "whsec_" + base64.b64encode(b"new key").decode()
GITHUB_SECRET = "It's a Secret to Everybody"  # noqa: S105 - GitHub's documented example


def _event(payload: bytes = b"v2\n") -> tuple[dict[str, Any], bytes]:
    env = {
        "SERF_EVENT": "user",
        "SERF_USER_EVENT": "deploy",
        "SERF_USER_LTIME": "7",
        "SERF_SELF_NAME": "n1",
    }
    body = jsonenc.dumps(parse_event(env, payload, time.time())).encode("utf-8")
    doc: dict[str, Any] = json.loads(body)
    return doc, body


def deliver(receiver: HttpReceiver, **fields: Any) -> tuple[dict[str, Any], RecordedRequest]:
    doc, body = _event()
    config = WebhookSinkConfig(type="webhook", name="hook", url=receiver.url, **fields)
    with WebhookSink(config) as sink:
        sink.send(doc, body)
    return doc, receiver.wait_for_count(1)[-1]


def github_verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """GitHub's documented check, written independently of serfbridge's code."""
    received = headers.get("x-hub-signature-256", "")
    mac = hmac.new(secret.encode("utf-8"), msg=body, digestmod=hashlib.sha256)
    return hmac.compare_digest("sha256=" + mac.hexdigest(), received)


def _docs_snippet(marker: str) -> dict[str, Any]:
    """Run the docs' Python receiver snippet that contains ``marker``; its namespace."""
    text = DOCS.read_text(encoding="utf-8")
    for code in re.findall(r"```python\n(.*?)```", text, re.DOTALL):
        if marker in code:
            namespace: dict[str, Any] = {}
            exec(code, namespace)  # noqa: S102 - our own documentation
            return namespace
    raise AssertionError(f"docs/sink-webhook.md has no python snippet with {marker!r}")


# -- outbound: the webhook sink ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "slack", "cloudevents"])
def test_standard_webhooks_package_verifies_the_sink(http_receiver: HttpReceiver, fmt: str) -> None:
    """The reference package verifies the request; webhook-id is the event document's id."""
    doc, request = deliver(
        http_receiver, format=fmt, signature="standard-webhooks", hmac_secret=NEW
    )
    assert request.headers["webhook-id"] == doc["id"]
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]+=*", request.headers["webhook-signature"])
    Webhook(NEW).verify(request.body, request.headers, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD).verify(request.body, request.headers, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook(NEW).verify(request.body + b" ", request.headers, json_parse=False)
    assert "x-serfbridge-signature" not in request.headers


def test_standard_webhooks_rotation_signs_with_every_secret(http_receiver: HttpReceiver) -> None:
    """With two secrets, one header carries two signatures: receivers on either key verify."""
    _, request = deliver(http_receiver, signature="standard-webhooks", hmac_secret=[OLD, NEW])
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (OLD, NEW):
        assert Webhook(secret).verify(request.body, request.headers)["event"] == "user"
    other = "whsec_" + base64.b64encode(b"neither").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(request.body, request.headers)


def test_standard_webhooks_docs_receiver(http_receiver: HttpReceiver) -> None:
    """The receiver snippet in the docs, run as written, accepts the request."""
    _, request = deliver(http_receiver, signature="standard-webhooks", hmac_secret=NEW)
    receive = _docs_snippet("standardwebhooks")["receive"]
    assert receive(NEW, request.headers, request.body)["event"] == "user"


def test_github_signature_verifies(http_receiver: HttpReceiver) -> None:
    """X-Hub-Signature-256 is sha256=hex(HMAC(secret, body)), checked by GitHub's recipe."""
    _, request = deliver(
        http_receiver, format="discord", signature="github", hmac_secret=GITHUB_SECRET
    )
    assert github_verify(GITHUB_SECRET, request.headers, request.body)
    assert not github_verify("wrong", request.headers, request.body)
    assert not github_verify(GITHUB_SECRET, request.headers, request.body + b"x")
    assert _docs_snippet("x-hub-signature-256")["verify"](
        GITHUB_SECRET.encode(), request.headers, request.body
    )
    assert "webhook-signature" not in request.headers


def test_static_headers_cannot_replace_the_signature(http_receiver: HttpReceiver) -> None:
    forged = {"webhook-signature": "v1,Zm9yZ2Vk", "webhook-id": "other"}
    doc, request = deliver(
        http_receiver, signature="standard-webhooks", hmac_secret=NEW, headers=forged
    )
    assert request.headers["webhook-id"] == doc["id"]
    Webhook(NEW).verify(request.body, request.headers, json_parse=False)


def test_github_signature_matches_githubs_published_example() -> None:
    """GitHub documents this exact secret, body and signature."""
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signing.sign_github(GITHUB_SECRET.encode(), b"Hello, World!") == expected


def test_serfbridge_scheme_with_two_secrets(http_receiver: HttpReceiver) -> None:
    """The default scheme with a list sends one sha256= per secret; the docs' verifier
    accepts either key."""
    _, request = deliver(http_receiver, hmac_secret=["k-old", "k-new"])
    assert len(request.headers["x-serfbridge-signature"].split(" ")) == 2
    verify: Callable[..., bool] = _docs_snippet("x-serfbridge-timestamp")["verify"]
    assert verify(b"k-old", request.headers, request.body)
    assert verify(b"k-new", request.headers, request.body)
    assert not verify(b"k-other", request.headers, request.body)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"signature": "github"}, "needs hmac_secret"),
        ({"signature": "github", "hmac_secret": ["a", "b"]}, "takes one hmac_secret"),
        ({"signature": "standard-webhooks", "hmac_secret": "not base64!"}, "whsec_"),
        ({"signature": "standard-webhooks", "hmac_secret": "whsec_"}, "may not be empty"),
        (
            {"signature": "github", "hmac_secret": "k", "signature_header": "X-Sig"},
            "signature_header apply to signature = 'serfbridge'",
        ),
        ({"hmac_secret": []}, "empty list"),
        ({"signature": "md5", "hmac_secret": "k"}, "serfbridge"),
    ],
)
def test_bad_signature_config_is_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WebhookSinkConfig(type="webhook", name="h", url="http://127.0.0.1/", **fields)


# -- one signing function ------------------------------------------------------------------


def test_sink_and_relay_share_one_signing_module() -> None:
    """Neither the sink nor the relay's auth carries its own HMAC code (issue 11)."""
    root = Path(__file__).resolve().parent.parent / "serfbridge"
    for module in ("sinks/webhook.py", "relay/auth.py"):
        text = (root / module).read_text(encoding="utf-8")
        assert "from serfbridge import signing" in text, module
        assert "hashlib" not in text, module
        assert "hmac.new" not in text, module


@given(key=st.binary(min_size=1, max_size=64), unpadded=st.booleans())
def test_standard_key_round_trips(key: bytes, unpadded: bool) -> None:
    """Any key, written as whsec_ + base64 (padded or not), decodes to itself."""
    text = base64.b64encode(key).decode()
    secret = "whsec_" + (text.rstrip("=") if unpadded else text)
    assert signing.standard_key(secret) == key


@given(st.text(max_size=40))
def test_standard_key_accepts_or_refuses_cleanly(text: str) -> None:
    """Whatever the secret text, the parser returns bytes or raises ValueError, nothing else."""
    try:
        key = signing.standard_key(text)
    except ValueError as exc:
        message = str(exc)
    else:
        message = "standard-webhooks secret" if key else "empty key returned"
    assert "standard-webhooks secret" in message


def test_authenticator_standard_webhooks() -> None:
    """The inbound check verifies the package's signature, refuses forgeries and replays."""
    body = b'{"type": "event", "name": "deploy"}'
    now = int(time.time())
    header = Webhook(NEW).sign("msg_1", _utc(now), body.decode())
    auth = Authenticator(None, NEW, scheme="standard-webhooks")
    creds = Credentials(timestamp=str(now), signature=header, msg_id="msg_1")
    auth.check(creds, body, now=now)
    for bad, reason in [
        (creds, "replayed"),
        (Credentials(timestamp=str(now), signature=header, msg_id="msg_2"), "bad_signature"),
        (Credentials(timestamp=str(now), signature=header), "bad_signature"),
    ]:
        with pytest.raises(Rejected) as info:
            auth.check(bad, body, now=now)
        assert info.value.reason == reason


def test_standard_webhooks_source_needs_a_whsec_key() -> None:
    with pytest.raises(ValidationError, match="needs hmac_key"):
        HttpSourceConfig(type="http", signature="standard-webhooks")
    with pytest.raises(ValidationError, match="whsec_"):
        HttpSourceConfig(type="http", signature="standard-webhooks", hmac_key="plain words")


def _utc(ts: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC)


# -- inbound: a relay HTTP source ----------------------------------------------------------


def test_relay_accepts_requests_signed_by_the_package(
    serf_cluster: Any, serfbridge_cmd: list[str], tmp_path: Path
) -> None:
    """A sender using the standardwebhooks package calls a source with signature =
    "standard-webhooks": signed requests are relayed, unsigned, forged and stale ones are 401."""
    agent = serf_cluster(1)[0]
    port = free_port()
    body = http_source(
        port, name="sw", signature="standard-webhooks", hmac_key=NEW, allow_events=["deploy"]
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    watch = Watcher(agent)
    sender = Webhook(NEW)

    def send(
        payload: str, ts: int | None = None, msg_id: str = "msg_1", key: Webhook = sender
    ) -> Any:
        data = json.dumps(
            {"type": "event", "name": "deploy", "payload": payload, "coalesce": False}
        )
        stamp = int(time.time()) if ts is None else ts
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": key.sign(msg_id, _utc(stamp), data),
        }
        return post(port, "/v1/event", data.encode(), headers=headers)

    try:
        relay.start()
        assert send("signed")[0] == 202
        assert send("other-key", key=Webhook(OLD))[1]["reason"] == "bad_signature"
        assert send("stale", ts=int(time.time()) - 3600)[1]["reason"] == "stale"
        status, doc = post(port, "/v1/event", {"type": "event", "name": "deploy"})
        assert (status, doc["reason"]) == (401, "unauthorized")
        wait_for(lambda: b"signed" in watch.payloads(), 10, what="the signed event")
        time.sleep(0.3)
        assert watch.payloads() == [b"signed"]
    finally:
        relay.stop()
        watch.close()
