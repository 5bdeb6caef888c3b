"""Inbound message validation and authentication (pure functions, no network)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from support.inbound import signature

from serfbridge.config.models import load_settings
from serfbridge.errors import ConfigError, Rejected
from serfbridge.relay.auth import Authenticator, Credentials
from serfbridge.relay.messages import allowed, event_size, parse


def _reason(body: bytes | Mapping[str, object], **kw: object) -> str:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(Rejected) as info:
        parse(data, **kw)  # type: ignore[arg-type]
    return info.value.reason


def test_event_with_defaults() -> None:
    """A minimal event parses with an empty payload and coalesce off."""
    msg = parse(b'{"type": "event", "name": "deploy"}')
    assert (msg.type, msg.name, msg.payload, msg.coalesce) == ("event", "deploy", b"", False)


def test_query_fields() -> None:
    """Every query field of the issue's example is carried through."""
    body = {
        "type": "query", "name": "load", "payload": "", "nodes": ["n1"],
        "tags": {"role": "web"}, "timeout": 2.5, "reply_to": "r/1",
    }  # fmt: skip
    msg = parse(json.dumps(body).encode())
    assert msg.nodes == ["n1"]
    assert msg.tags == {"role": "web"}
    assert msg.timeout == 2.5
    assert msg.reply_to == "r/1"


def test_base64_payload_is_binary() -> None:
    """payload_encoding base64 carries bytes that are not UTF-8, NUL included."""
    raw = b"\x00\xff\xfebin"
    body = {"type": "event", "name": "b", "payload": base64.b64encode(raw).decode(),
            "payload_encoding": "base64"}  # fmt: skip
    assert parse(json.dumps(body).encode()).payload == raw


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'"text"',
        {"type": "event"},
        {"type": "event", "name": ""},
        {"type": "event", "name": 5},
        {"type": "event", "name": "x", "payload": 1},
        {"type": "event", "name": "x", "coalesce": "yes"},
        {"type": "event", "name": "x", "nodes": ["n1"]},
        {"type": "event", "name": "x", "extra": 1},
        {"type": "shout", "name": "x"},
        {"type": "event", "name": "x", "payload": "%%%", "payload_encoding": "base64"},
        {"type": "event", "name": "x", "payload_encoding": "latin-1"},
        {"type": "query", "name": "x", "nodes": "n1"},
        {"type": "query", "name": "x", "tags": {"role": 1}},
        {"type": "query", "name": "x", "timeout": "2s"},
        {"type": "query", "name": "x", "timeout": True},
        {"type": "query", "name": "x", "timeout": -1},
        {"type": "query", "name": "x", "timeout": 1e9},
    ],
)
def test_malformed(body: bytes | Mapping[str, object]) -> None:
    """Bad JSON, wrong types, unknown fields and bad encodings are all 'malformed'."""
    assert _reason(body) == "malformed"


def test_path_type_must_agree() -> None:
    """On /v1/event the type may be left out but must not say query."""
    assert parse(b'{"name": "x"}', default_type="event").type == "event"
    assert _reason({"type": "query", "name": "x"}, default_type="event") == "malformed"


def test_event_documents_are_loops() -> None:
    """serfbridge's own event document or CloudEvent coming back in is rejected as a loop."""
    doc = {"version": 1, "id": "ab", "event": "user", "name": "deploy", "payload": "v"}
    assert _reason(doc) == "loop"
    assert _reason({"specversion": "1.0", "type": "io.serf.user", "data": doc}) == "loop"


def test_event_size_matches_serf() -> None:
    """Name 'deploy': Serf accepts payload 476 at LTime < 128 (docs/serf.md); with LTime counted at
    5 bytes the check is 4 bytes stricter and never looser."""
    assert event_size("deploy", b"x" * 476) == 512 + 4
    assert event_size("deploy", b"x" * 472) == 512
    parse(json.dumps({"type": "event", "name": "deploy", "payload": "x" * 472}).encode())
    body = {"type": "event", "name": "deploy", "payload": "x" * 473}
    assert _reason(body) == "too_large"


def test_query_size_limit() -> None:
    """A query over query_size_limit is too_large; filters count towards it."""
    ok = {"type": "query", "name": "dup", "payload": "x" * 850}
    parse(json.dumps(ok).encode())
    assert _reason({**ok, "payload": "x" * 1000}) == "too_large"
    many = {**ok, "nodes": [f"node-{i:03d}" for i in range(20)]}
    assert _reason(many) == "too_large"


def test_limits_follow_the_agent_settings() -> None:
    """A larger configured user_event_size_limit lets larger events through."""
    body = {"type": "event", "name": "deploy", "payload": "x" * 2000}
    assert _reason(body) == "too_large"
    parse(json.dumps(body).encode(), event_limit=9216)


def test_allowlist() -> None:
    """Exact names and trailing-* prefixes; an empty list allows nothing."""
    assert allowed(["deploy"], "deploy")
    assert not allowed(["deploy"], "deploy2")
    assert allowed(["ci-*"], "ci-build")
    assert allowed(["*"], "anything")
    assert not allowed([], "deploy")


# -- authentication ------------------------------------------------------------------------

BODY = b'{"type": "event", "name": "deploy"}'


def _auth_reason(auth: Authenticator, creds: Credentials, now: float = 1_000_000.0) -> str:
    with pytest.raises(Rejected) as info:
        auth.check(creds, BODY, now=now)
    return info.value.reason


def test_token() -> None:
    """The right bearer token passes; a wrong or missing one is unauthorized."""
    auth = Authenticator("s3cret", None)
    auth.check(Credentials(token="s3cret"), BODY)  # noqa: S106 - test value
    assert _auth_reason(auth, Credentials(token="s3cre")) == "unauthorized"  # noqa: S106 - test value
    assert _auth_reason(auth, Credentials()) == "unauthorized"


def test_signature_accepted_once() -> None:
    """A valid signature passes once; the same one again is a replay."""
    auth = Authenticator(None, "k")
    now = 1_000_000
    creds = Credentials(timestamp=str(now), signature=signature("k", now, BODY))
    auth.check(creds, BODY, now=now + 5)
    assert _auth_reason(auth, creds, now + 6) == "replayed"


def test_bad_and_stale_signatures() -> None:
    """Wrong key, altered body or bad timestamp are bad_signature; an old one is stale."""
    auth = Authenticator(None, "k", max_skew=60)
    now = 1_000_000
    wrong = Credentials(timestamp=str(now), signature=signature("other", now, BODY))
    assert _auth_reason(auth, wrong, now) == "bad_signature"
    altered = Credentials(timestamp=str(now), signature=signature("k", now, BODY + b" "))
    assert _auth_reason(auth, altered, now) == "bad_signature"
    no_ts = Credentials(timestamp="soon", signature=signature("k", now, BODY))
    assert _auth_reason(auth, no_ts, now) == "bad_signature"
    old = Credentials(timestamp=str(now - 61), signature=signature("k", now - 61, BODY))
    assert _auth_reason(auth, old, now) == "stale"
    future = Credentials(timestamp=str(now + 61), signature=signature("k", now + 61, BODY))
    assert _auth_reason(auth, future, now) == "stale"


def test_require_signature_refuses_token() -> None:
    """With require_signature a correct token alone is not enough."""
    auth = Authenticator("t", "k", require_signature=True)
    assert _auth_reason(auth, Credentials(token="t")) == "unauthorized"  # noqa: S106 - test value


def test_no_credentials_configured_passes() -> None:
    """A source without token or key (loopback, or insecure = true) checks nothing."""
    Authenticator(None, None).check(Credentials(), BODY)


# -- configuration -------------------------------------------------------------------------


def _settings_error(tmp_path: Path, body: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_settings(str(path))
    return str(info.value)


def test_source_config_errors_name_the_source(tmp_path: Path) -> None:
    """Bad source keys are reported as sources[i] (type).key."""
    error = _settings_error(
        tmp_path, '[[sources]]\ntype = "local"\npath = "/tmp/x.sock"\nhmac_key = "k"\n'
    )
    assert "sources[0] (local)" in error
    assert "file permissions" in error
    error = _settings_error(tmp_path, '[[sources]]\ntype = "http"\ntls_cert = "c.pem"\n')
    assert "sources[0] (http): give both tls_cert and tls_key" in error
    error = _settings_error(tmp_path, '[[sources]]\ntype = "http"\n[[sources]]\ntype = "http"\n')
    assert "two sources are named 'http'" in error
    error = _settings_error(
        tmp_path,
        '[[sources]]\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:1"\ntopic = "t"\ntoken = "x"\n',
    )
    assert "sources[0] (mqtt): MQTT messages carry no bearer token" in error
    error = _settings_error(tmp_path, '[[sources]]\ntype = "ftp"\n')
    assert "sources[0]" in error


def test_sources_get_their_type_as_default_name(tmp_path: Path) -> None:
    """name defaults to the type; secrets stay SecretStr."""
    path = tmp_path / "c.toml"
    path.write_text('[[sources]]\ntype = "http"\ntoken = "abc"\n')
    source = load_settings(str(path)).sources[0]
    assert source.name == "http"
    assert "abc" not in repr(source)
