"""Property-based tests of everything the relay reads from outside: the message parser, the
authentication checks, and the HTTP source as a whole (arbitrary bodies and headers against
a running relay): never an exception other than a refusal, never a 500, never a traceback."""

from __future__ import annotations

import json
import socket
import time
from typing import TYPE_CHECKING, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.ports import LOOPBACK, free_port
from support.relay import RelayProcess, http_source

from serfbridge.errors import Rejected
from serfbridge.relay import messages
from serfbridge.relay.auth import Authenticator, Credentials
from serfbridge.signing import sign

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from support.serf import SerfAgent

T = TypeVar("T")
KEY = "pr0p-k3y"
TOKEN = "pr0p-t0ken"  # noqa: S105 - test value
FIELDS = sorted(messages.QUERY_FIELDS | messages.EVENT_FIELDS | {"color", "version", "event"})
# Text with what breaks naive code: NUL, lone surrogates, other controls, non-BMP.
nasty_text = st.text(
    alphabet=st.characters(codec=None, categories=None, exclude_categories=()), max_size=40
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | nasty_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(nasty_text, inner, max_size=4),
    max_leaves=12,
)
message_like = st.dictionaries(
    st.sampled_from(FIELDS) | nasty_text,
    st.sampled_from(["event", "query"]) | json_values,
    max_size=8,
)


def _outcome(run: Callable[[], T]) -> tuple[T | None, Rejected | None]:
    """What ``run`` returned, or the refusal it raised (any other exception propagates)."""
    try:
        return run(), None
    except Rejected as exc:
        return None, exc


def _encode(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=True).encode()


bodies = (
    message_like.map(_encode)
    | st.binary(max_size=300)
    | st.integers(1, 3000).map(lambda n: b"[" * n)
    | st.integers(1, 3000).map(lambda n: b'{"a":' * n)
)


@settings(max_examples=600, deadline=None)
@given(body=bodies, default=st.sampled_from([None, "event", "query"]))
def test_parse_only_ever_refuses(body: bytes, default: str | None) -> None:
    """Any body: a valid Message whose text Serf can carry, or Rejected; nothing else."""
    msg, refusal = _outcome(lambda: messages.parse(body, default_type=default))
    if refusal is not None:
        assert refusal.reason in {"malformed", "loop", "too_large"}
        str(refusal).encode("utf-8")  # the reason is loggable text
        return
    assert msg is not None
    assert "\0" not in msg.name
    msg.name.encode("utf-8")
    for text in [*msg.nodes, *msg.tags, *msg.tags.values()]:
        assert "\0" not in text
        text.encode("utf-8")
    assert messages.event_size(msg.name, msg.payload) <= 512 or msg.type == "query"


@settings(max_examples=600, deadline=None)
@given(
    token=st.none() | nasty_text,
    timestamp=st.none() | nasty_text | st.integers(1, 6000).map(lambda n: "9" * n),
    signature=st.none() | nasty_text,
    body=st.binary(max_size=64),
    require=st.booleans(),
    signed=st.booleans(),
)
def test_auth_only_ever_refuses(
    token: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    require: bool,
    signed: bool,
) -> None:
    """Any credentials, also a correct signature over an absurd timestamp: a refusal."""
    auth = Authenticator(TOKEN, KEY, max_skew=60, require_signature=require)
    if signed and timestamp is not None and timestamp.isascii():
        signature = sign(KEY.encode(), timestamp, body)
    creds = Credentials(token, timestamp, signature)
    _, refusal = _outcome(lambda: auth.check(creds, body, now=1_800_000_000))
    if refusal is not None:
        assert refusal.reason in {"unauthorized", "bad_signature", "stale", "replayed"}
        return
    assert (token == TOKEN and not require and signature is None) or signature is not None


def test_auth_accepts_what_a_sender_signs() -> None:
    auth = Authenticator(None, KEY, max_skew=60)
    stamp = str(int(time.time()))
    auth.check(Credentials(None, stamp, sign(KEY.encode(), stamp, b"{}")), b"{}")


header_names = st.sampled_from(
    ["Authorization", "X-Serfbridge-Timestamp", "X-Serfbridge-Signature", "Content-Type",
     "Expect", "Connection", "X-Other"]
)  # fmt: skip
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
) | st.sampled_from([f"Bearer {TOKEN}", "Bearer ", "9" * 5000, "sha256=00"])


@pytest.mark.e2e
def test_http_never_answers_500(
    agent: SerfAgent, serfbridge_cmd: list[str], tmp_path: Path
) -> None:
    """400 random requests (bodies, headers, paths) at a running relay: every answer is a
    well-formed HTTP response below 500 (or 502/503 from the agent), and no traceback."""
    port = free_port()
    body = http_source(port, token=TOKEN, hmac_key=KEY, allow_events=["*"], rate=100000,
                       burst=100000)  # fmt: skip
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    relay.log_level = "info"
    seen: set[int] = set()

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        path=st.sampled_from(["/v1/event", "/v1/query", "/healthz", "/x"]),
        method=st.sampled_from(["POST", "GET", "PUT"]),
        headers=st.lists(st.tuples(header_names, header_values), max_size=4),
        payload=bodies,
        authorized=st.booleans(),
    )
    def one(
        path: str, method: str, headers: list[tuple[str, str]], payload: bytes, authorized: bool
    ) -> None:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        if authorized:  # past authentication, into the parser
            head += f"Authorization: Bearer {TOKEN}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers)
        head += f"Content-Length: {len(payload)}\r\n\r\n"
        with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
            sock.sendall(head.encode("latin-1") + payload)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status = int(answer.split(b" ", 2)[1])
        seen.add(status)
        assert status < 500 or status in (502, 503), answer[:300]
        json.loads(answer.partition(b"\r\n\r\n")[2])

    with relay:
        relay.start()
        one()
        log = relay.log_text()
    assert "Traceback" not in log
    assert "internal error" not in log
    assert {400, 401} <= seen
