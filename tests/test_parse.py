"""capture.event against the exact handler inputs measured on real Serf (docs/serf.md)."""

from __future__ import annotations

import base64
import json
import os
import re
from typing import TYPE_CHECKING, Any

import pytest
from jsonschema import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from serfbridge.capture import jsonenc
from serfbridge.capture.event import parse_event, parse_tags, rfc3339
from serfbridge.errors import InputError
from serfbridge.schema import EVENT_SCHEMA

if TYPE_CHECKING:
    from collections.abc import Callable

    from serfbridge._types import EventDoc

# 2025-11-23T18:38:46.125Z; .125 is exact in binary floating point.
RECEIVED = 1763923126.125
RECEIVED_TEXT = "2025-11-23T18:38:46.125Z"
RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

# docs/serf.md section 1: the complete SERF_* set n3 saw for a member-update (TAB and LF real).
N3_UPDATE_ENV = {
    "SERF_EVENT": "member-update",
    "SERF_SELF_NAME": "n3",
    "SERF_SELF_ROLE": "web",
    "SERF_TAG_DC": "east",
    "SERF_TAG_MY_TAG_V": "a,b=c",
    "SERF_TAG_ROLE": "web",
    "SERF_TAG_TV": "x\ty\nz",
}
N3_BASE = {k: v for k, v in N3_UPDATE_ENV.items() if k != "SERF_EVENT"}
# The user event seen on n2.
N2_BASE = {
    "SERF_SELF_NAME": "n2",
    "SERF_SELF_ROLE": "cache",
    "SERF_TAG_DC": "east",
    "SERF_TAG_ROLE": "cache",
}
N1_BASE = {
    "SERF_SELF_NAME": "n1",
    "SERF_SELF_ROLE": "web",
    "SERF_TAG_DC": "east",
    "SERF_TAG_ROLE": "web",
}

# n1 receiving n2's join, byte for byte as docs/serf.md's hex dump.
N2_JOIN = bytes.fromhex(
    "6e 32 09 31 32 37 2e 30 2e 30 2e 31 09 64 62 0964 63 3d 65 61 73 74 2c 72 6f 6c 65 3d 64 62 0a"
)
# A member with no role tag: empty ROLE and TAGS fields.
E1_LINE = bytes.fromhex("45 31 09 31 32 37 2e 30 2e 30 2e 31 09 09 0a")
# n3's startup member-join: 3 lines, 100 bytes.
N3_STARTUP = (
    b"n3\t127.0.0.1\tweb\trole=web,dc=east\n"
    b"n2\t127.0.0.1\tdb\tdc=east,role=db\n"
    b"n1\t127.0.0.1\tweb\tdc=east,role=web\n"
)
# n3's own line in its member-update: eventClean escapes TAB/LF as backslash-t / backslash-n.
N3_UPDATE_LINE = b"n3\t127.0.0.1\tweb\tmy-tag.v=a,b=c,role=web,dc=east,tv=x\\ty\\nz\n"


def member_env(event: str = "member-join", base: dict[str, str] | None = None) -> dict[str, str]:
    """SERF_* for a member event on ``base``'s node (n1 by default)."""
    return {"SERF_EVENT": event, **(N1_BASE if base is None else base)}


def user_env(
    name: str = "deploy", ltime: str = "1", base: dict[str, str] | None = None
) -> dict[str, str]:
    """SERF_* for a user event, as n2 saw ``deploy``."""
    env = {"SERF_EVENT": "user", **(N2_BASE if base is None else base)}
    env.update({"SERF_USER_EVENT": name, "SERF_USER_LTIME": ltime})
    return env


def query_env(
    name: str = "load", ltime: str = "1", base: dict[str, str] | None = None
) -> dict[str, str]:
    """SERF_* for a query, as n2 saw ``load``."""
    env = {"SERF_EVENT": "query", **(N2_BASE if base is None else base)}
    env.update({"SERF_QUERY_NAME": name, "SERF_QUERY_LTIME": ltime})
    return env


def member(name: str, role: str, tags: dict[str, str], addr: str = "127.0.0.1") -> dict[str, Any]:
    return {"name": name, "addr": addr, "role": role, "tags": tags}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- member lines

MEMBER_CASES = [
    pytest.param(
        N2_JOIN,
        [member("n2", "db", {"dc": "east", "role": "db"})],
        id="n1-receives-n2-join",
    ),
    pytest.param(E1_LINE, [member("E1", "", {})], id="empty-role-and-tags"),
    pytest.param(
        N3_STARTUP,
        [
            member("n3", "web", {"dc": "east", "role": "web"}),
            member("n2", "db", {"dc": "east", "role": "db"}),
            member("n1", "web", {"dc": "east", "role": "web"}),
        ],
        id="n3-startup-join-3-lines",
    ),
    pytest.param(
        N3_UPDATE_LINE,
        # The documented rule: a segment containing '=' starts a new tag, so my-tag.v=a,b=c splits.
        [
            member(
                "n3",
                "web",
                {"b": "c", "dc": "east", "my-tag.v": "a", "role": "web", "tv": "x\ty\nz"},
            )
        ],
        id="escaped-tab-lf-and-ambiguous-comma-equals",
    ),
    pytest.param(
        b"n1\t127.0.0.1\tweb\tlist=a,b,role=web\n",
        [member("n1", "web", {"list": "a,b", "role": "web"})],
        id="comma-in-tag-value-kept",
    ),
    pytest.param(
        b"n\\tx\\ny\t10.0.0.7\tr\\to\tk=v\n",
        [member("n\tx\ny", "r\to", {"k": "v"}, addr="10.0.0.7")],
        id="escapes-in-name-and-role",
    ),
    pytest.param(
        b"v6\t::1\t\t\n",
        [member("v6", "", {}, addr="::1")],
        id="ipv6-address",
    ),
    pytest.param(b"", [], id="no-members"),
]


@pytest.mark.parametrize(("stdin", "expected"), MEMBER_CASES)
def test_member_lines(stdin: bytes, expected: list[dict[str, Any]]) -> None:
    """Member stdin lines become members with unescaped names, roles and split tags."""
    doc = parse_event(member_env(), stdin, RECEIVED)
    assert doc["members"] == expected
    assert doc["event"] == "member-join"
    assert doc["name"] is None
    assert doc["ltime"] is None
    assert doc["payload"] is None
    assert doc["payload_encoding"] is None
    assert doc["truncated"] is False


def test_member_tags_are_sorted() -> None:
    """Tags come out sorted by key, whatever Go's random map order was."""
    doc = parse_event(member_env(), b"n1\t127.0.0.1\tweb\trole=web,dc=east,az=1\n", RECEIVED)
    assert list(doc["members"][0]["tags"]) == ["az", "dc", "role"]


TAG_CASES = [
    pytest.param("", {}, id="empty"),
    pytest.param("dc=east,role=db", {"dc": "east", "role": "db"}, id="two-tags"),
    pytest.param("list=a,b", {"list": "a,b"}, id="comma-kept-in-value"),
    pytest.param("dc=east,list=a,b,c", {"dc": "east", "list": "a,b,c"}, id="several-commas"),
    pytest.param("my-tag.v=a,b=c", {"my-tag.v": "a", "b": "c"}, id="documented-ambiguity-splits"),
    pytest.param("eq=a=b", {"eq": "a=b"}, id="equals-in-value"),
    pytest.param("empty=", {"empty": ""}, id="empty-value"),
    pytest.param("tv=x\\ty\\nz", {"tv": "x\ty\nz"}, id="escapes"),
    pytest.param("k\\tx=v", {"k\tx": "v"}, id="escape-in-key"),
]


@pytest.mark.parametrize(("text", "expected"), TAG_CASES)
def test_parse_tags(text: str, expected: dict[str, str]) -> None:
    """parse_tags follows its documented comma/equals rule."""
    assert parse_tags(text) == expected


# --------------------------------------------------------------------------- node (env)


def test_n3_member_update_env() -> None:
    """The measured n3 member-update SERF_* set gives the node with lower-cased raw tags."""
    doc = parse_event(N3_UPDATE_ENV, N3_UPDATE_LINE, RECEIVED)
    assert doc["node"] == {
        "name": "n3",
        "role": "web",
        "tags": {"dc": "east", "my_tag_v": "a,b=c", "role": "web", "tv": "x\ty\nz"},
    }
    assert doc["event"] == "member-update"
    assert [m["name"] for m in doc["members"]] == ["n3"]


def test_node_without_tags_or_role() -> None:
    """SERF_SELF_ROLE= (empty) and no SERF_TAG_* give an empty role and no tags."""
    doc = parse_event(
        {"SERF_EVENT": "member-join", "SERF_SELF_NAME": "E1", "SERF_SELF_ROLE": ""},
        E1_LINE,
        RECEIVED,
    )
    assert doc["node"] == {"name": "E1", "role": "", "tags": {}}


def test_unrelated_environment_is_ignored() -> None:
    """Inherited variables (PATH, SERF_RPC_ADDR...) never reach the node's tags."""
    env = {**user_env(), "PATH": "/usr/bin", "SERF_RPC_ADDR": "127.0.0.1:7373", "TAG_X": "1"}
    assert parse_event(env, b"", RECEIVED)["node"]["tags"] == {"dc": "east", "role": "cache"}


# --------------------------------------------------------------------------- payloads

PAYLOAD_CASES = [
    pytest.param(b"payload\n", "payload", "utf-8", id="newline-appended-by-serf"),
    pytest.param(b"ends-with-newline\n", "ends-with-newline", "utf-8", id="ends-with-newline"),
    pytest.param(b"two-newlines\n\n", "two-newlines\n", "utf-8", id="two-newlines"),
    pytest.param(b"", "", "utf-8", id="empty"),
    pytest.param(b"\n", "", "utf-8", id="only-newline"),
    pytest.param(
        b"\xff\xfe\x01\x02hello\x80\n",
        b64(b"\xff\xfe\x01\x02hello\x80"),
        "base64",
        id="binary-base64",
    ),
    pytest.param(b"a\x00b\xffc\n", b64(b"a\x00b\xffc"), "base64", id="nul-and-ff-base64"),
    pytest.param(b"a\x00b\n", "a\x00b", "utf-8", id="nul-is-valid-utf8"),
    pytest.param("héllo 🚀\n".encode(), "héllo 🚀", "utf-8", id="non-ascii-utf8"),
    pytest.param(b"no-newline", "no-newline", "utf-8", id="no-trailing-newline"),
    pytest.param(b"\r\n", "\r", "utf-8", id="crlf-keeps-cr"),
]


@pytest.mark.parametrize(("stdin", "payload", "encoding"), PAYLOAD_CASES)
@pytest.mark.parametrize("make_env", [user_env, query_env], ids=["user", "query"])
def test_payload(
    make_env: Callable[[], dict[str, str]], stdin: bytes, payload: str, encoding: str
) -> None:
    """One trailing LF is dropped; invalid UTF-8 becomes base64 of the bytes without it."""
    doc = parse_event(make_env(), stdin, RECEIVED)
    assert doc["payload"] == payload
    assert doc["payload_encoding"] == encoding
    assert doc["members"] == []


def test_user_event_fields() -> None:
    """A user event carries its name and ltime from SERF_USER_EVENT / SERF_USER_LTIME."""
    doc = parse_event(user_env("deploy", "1"), b"payload\n", RECEIVED)
    assert (doc["event"], doc["name"], doc["ltime"]) == ("user", "deploy", 1)
    assert doc["node"] == {"name": "n2", "role": "cache", "tags": {"dc": "east", "role": "cache"}}
    assert doc["version"] == 1


def test_query_fields() -> None:
    """A query carries its name and ltime from SERF_QUERY_NAME / SERF_QUERY_LTIME."""
    doc = parse_event(query_env("load", "42"), b"?\n", RECEIVED)
    assert (doc["event"], doc["name"], doc["ltime"], doc["payload"]) == ("query", "load", 42, "?")


# --------------------------------------------------------------------------- ids


def test_user_event_id_same_on_every_node() -> None:
    """The same user event seen by n1 and n2 at different times has the same id."""
    on_n2 = parse_event(user_env(base=N2_BASE), b"payload\n", RECEIVED)
    on_n1 = parse_event(user_env(base=N1_BASE), b"payload\n", RECEIVED + 0.063)
    assert on_n1["received_at"] != on_n2["received_at"]
    assert on_n1["id"] == on_n2["id"]
    assert re.fullmatch(r"[0-9a-f]{32}", on_n1["id"])


@pytest.mark.parametrize(
    ("env", "stdin"),
    [
        pytest.param(user_env(ltime="2"), b"payload\n", id="other-ltime"),
        pytest.param(user_env(), b"payload2\n", id="other-payload"),
        pytest.param(user_env(name="deploy2"), b"payload\n", id="other-name"),
        pytest.param(query_env(name="deploy"), b"payload\n", id="query-not-user"),
        pytest.param(user_env(), b"", id="empty-payload"),
    ],
)
def test_user_event_id_differs(env: dict[str, str], stdin: bytes) -> None:
    """A different ltime, payload, name or type gives a different id."""
    reference = parse_event(user_env(), b"payload\n", RECEIVED)
    assert parse_event(env, stdin, RECEIVED)["id"] != reference["id"]


def test_payload_with_and_without_newline_share_an_id() -> None:
    """Serf delivers ``x`` and ``x\\n`` identically, so they are the same event."""
    a = parse_event(user_env(), b"x\n", RECEIVED)
    b = parse_event(user_env(), b"x", RECEIVED)
    assert a["id"] == b["id"]


def test_member_event_id_ignores_member_and_tag_order() -> None:
    """Member order (coalescing) and tag order (Go map order) do not change the id."""
    reordered = (
        b"n1\t127.0.0.1\tweb\trole=web,dc=east\n"
        b"n3\t127.0.0.1\tweb\tdc=east,role=web\n"
        b"n2\t127.0.0.1\tdb\trole=db,dc=east\n"
    )
    on_n3 = parse_event(member_env(base=N3_BASE), N3_STARTUP, RECEIVED)
    on_n1 = parse_event(member_env(), reordered, RECEIVED + 1.5)
    assert on_n3["id"] == on_n1["id"]


@pytest.mark.parametrize(
    ("event", "stdin"),
    [
        pytest.param("member-leave", N3_STARTUP, id="other-type"),
        pytest.param("member-join", N3_STARTUP.replace(b"role=db", b"role=cache"), id="other-tag"),
        pytest.param("member-join", N3_STARTUP.replace(b"\tdb\t", b"\tcache\t"), id="other-role"),
        pytest.param(
            "member-join", N3_STARTUP.replace(b"127.0.0.1", b"127.0.0.2", 1), id="other-addr"
        ),
        pytest.param("member-join", N3_STARTUP[:-34], id="fewer-members"),
    ],
)
def test_member_event_id_differs(event: str, stdin: bytes) -> None:
    """A different type, tag, role, address or member set gives a different id."""
    reference = parse_event(member_env("member-join"), N3_STARTUP, RECEIVED)
    assert parse_event(member_env(event), stdin, RECEIVED)["id"] != reference["id"]


# --------------------------------------------------------------------------- errors

ERROR_CASES = [
    pytest.param({**N1_BASE}, b"", "SERF_EVENT is not set", id="missing-SERF_EVENT"),
    pytest.param(
        {**N1_BASE, "SERF_EVENT": ""}, b"", "SERF_EVENT is not set", id="empty-SERF_EVENT"
    ),
    pytest.param(
        member_env("member-bogus"), b"", "unknown SERF_EVENT 'member-bogus'", id="unknown-type"
    ),
    pytest.param(member_env("*"), b"", "unknown SERF_EVENT", id="star-is-not-a-type"),
    pytest.param(
        {k: v for k, v in user_env().items() if k != "SERF_USER_EVENT"},
        b"",
        "SERF_USER_EVENT is not set",
        id="missing-SERF_USER_EVENT",
    ),
    pytest.param(
        {k: v for k, v in query_env().items() if k != "SERF_QUERY_NAME"},
        b"",
        "SERF_QUERY_NAME is not set",
        id="missing-SERF_QUERY_NAME",
    ),
    pytest.param(
        {k: v for k, v in user_env().items() if k != "SERF_USER_LTIME"},
        b"",
        "SERF_USER_LTIME is not set",
        id="missing-SERF_USER_LTIME",
    ),
    pytest.param(
        user_env(ltime="abc"), b"", "SERF_USER_LTIME='abc' is not an integer", id="ltime-abc"
    ),
    pytest.param(user_env(ltime="1.5"), b"", "not an integer", id="ltime-float"),
    pytest.param(user_env(ltime=""), b"", "not an integer", id="ltime-empty"),
    pytest.param(
        user_env(ltime="-1"), b"", "SERF_USER_LTIME='-1' is negative", id="ltime-negative"
    ),
    pytest.param(
        query_env(ltime="-5"), b"", "SERF_QUERY_LTIME='-5' is negative", id="query-ltime-negative"
    ),
    pytest.param(
        member_env(),
        b"n2\t127.0.0.1\tdb\n",
        "member line 1 has 3 tab-separated fields",
        id="member-line-3-fields",
    ),
    pytest.param(
        member_env(),
        N2_JOIN + b"n3\t127.0.0.1\tweb\tdc=east\textra\n",
        "member line 2 has 5 tab-separated fields",
        id="member-line-5-fields",
    ),
    pytest.param(member_env(), b"garbage\n", "member line 1 has 1", id="garbage"),
    pytest.param(member_env(), N2_JOIN + b"\n", "member line 2 has 1", id="blank-line"),
    pytest.param(
        member_env(),
        b"\t127.0.0.1\tweb\trole=web\n",
        "member line 1 has an empty node name",
        id="empty-name",
    ),
]


@pytest.mark.parametrize(("env", "stdin", "message"), ERROR_CASES)
def test_bad_input_raises_input_error(env: dict[str, str], stdin: bytes, message: str) -> None:
    """Bad env or stdin raises InputError with a message naming the problem."""
    with pytest.raises(InputError, match=re.escape(message)):
        parse_event(env, stdin, RECEIVED)


# --------------------------------------------------------------------------- truncation


def test_truncated_member_stdin_drops_partial_line() -> None:
    """With truncated=True, the cut last member line is dropped and the rest is kept."""
    cut = N3_STARTUP[:-10]  # still 4 fields: "n1\t127.0.0.1\tweb\tdc=east,"
    doc = parse_event(member_env(), cut, RECEIVED, truncated=True)
    assert [m["name"] for m in doc["members"]] == ["n3", "n2"]
    assert doc["truncated"] is True


def test_truncated_member_stdin_without_any_whole_line() -> None:
    """A cut inside the first line leaves no members rather than an error."""
    doc = parse_event(member_env(), N2_JOIN[:10], RECEIVED, truncated=True)
    assert doc["members"] == []
    assert doc["truncated"] is True


def test_untruncated_partial_line_is_an_error() -> None:
    """Without the truncated flag a partial last line is bad input."""
    with pytest.raises(InputError, match="member line 3 has 2 tab-separated fields"):
        parse_event(member_env(), N3_STARTUP[:-25], RECEIVED)


def test_truncated_payload_is_kept_and_flagged() -> None:
    """A cut user payload is kept as received and flagged truncated."""
    doc = parse_event(user_env(), b"x" * 1024, RECEIVED, truncated=True)
    assert doc["payload"] == "x" * 1024
    assert doc["truncated"] is True


# --------------------------------------------------------------------------- received_at


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        pytest.param(RECEIVED, RECEIVED_TEXT, id="millis"),
        pytest.param(0.0, "1970-01-01T00:00:00.000Z", id="epoch"),
        pytest.param(1700000000.5, "2023-11-14T22:13:20.500Z", id="half-second"),
        pytest.param(1700000000.0009765625, "2023-11-14T22:13:20.000Z", id="sub-millisecond"),
    ],
)
def test_rfc3339(ts: float, text: str) -> None:
    """received_at is UTC with exactly three fractional digits and a Z."""
    assert rfc3339(ts) == text
    assert RFC3339_MS.fullmatch(text)


def test_received_at_in_document() -> None:
    """The document's received_at is the caller's timestamp in YYYY-MM-DDTHH:MM:SS.mmmZ."""
    doc = parse_event(user_env(), b"", RECEIVED)
    assert doc["received_at"] == RECEIVED_TEXT


# --------------------------------------------------------------------------- schema and JSON

NASTY = 'nœud-ü \x00\x01\x1f\x7f\u2028\u2029 "q" \\ / 🚀 \t\n'

DOC_INPUTS = [
    pytest.param(N3_UPDATE_ENV, N3_UPDATE_LINE, False, id="n3-member-update"),
    pytest.param(member_env(), N2_JOIN, False, id="n2-join"),
    pytest.param(member_env(), E1_LINE, False, id="e1-empty-role"),
    pytest.param(member_env(), N3_STARTUP, False, id="startup-join"),
    pytest.param(member_env("member-leave"), N3_STARTUP, False, id="member-leave"),
    pytest.param(member_env("member-failed"), N2_JOIN, False, id="member-failed"),
    pytest.param(member_env("member-reap"), N2_JOIN, False, id="member-reap"),
    pytest.param(member_env(), b"", False, id="no-members"),
    pytest.param(member_env(), N3_STARTUP[:-10], True, id="member-truncated"),
    pytest.param(user_env(), b"payload\n", False, id="user"),
    pytest.param(user_env(), b"", False, id="user-empty"),
    pytest.param(user_env(), b"two-newlines\n\n", False, id="user-two-newlines"),
    pytest.param(user_env(), b"\xff\xfe\x01\x02hello\x80\n", False, id="user-binary"),
    pytest.param(user_env(), b"a\x00b\xffc\n", False, id="user-nul-ff"),
    pytest.param(user_env(), b"x" * 2048, True, id="user-truncated"),
    pytest.param(query_env(), b"?\n", False, id="query"),
    pytest.param(
        user_env(name="dépl\x01oy", base={"SERF_SELF_NAME": NASTY, "SERF_SELF_ROLE": NASTY}),
        NASTY.encode() + b"\n",
        False,
        id="non-ascii-and-control-characters",
    ),
    pytest.param(
        {**member_env(), "SERF_TAG_NASTY": NASTY, "SERF_TAG_EMOJI": "🚀"},
        "nœud\\t1\t127.0.0.1\trôle\\n\tk=\x01\x7f\u2028,é=🚀\n".encode(),
        False,
        id="non-ascii-members",
    ),
]


@pytest.fixture(scope="module")
def validator() -> Validator:
    cls = validator_for(EVENT_SCHEMA)
    cls.check_schema(EVENT_SCHEMA)
    return cls(EVENT_SCHEMA, format_checker=cls.FORMAT_CHECKER)


@pytest.mark.parametrize(("env", "stdin", "truncated"), DOC_INPUTS)
def test_document_matches_schema(
    validator: Validator, env: dict[str, str], stdin: bytes, truncated: bool
) -> None:
    """Every document produced, as serialised, validates against EVENT_SCHEMA."""
    doc = parse_event(env, stdin, RECEIVED, truncated=truncated)
    validator.validate(json.loads(jsonenc.dumps(doc)))
    assert RFC3339_MS.fullmatch(doc["received_at"])


@pytest.mark.parametrize(("env", "stdin", "truncated"), DOC_INPUTS)
def test_jsonenc_equals_json_dumps(env: dict[str, str], stdin: bytes, truncated: bool) -> None:
    """jsonenc.dumps is byte-identical to compact json.dumps(ensure_ascii=False)."""
    doc = parse_event(env, stdin, RECEIVED, truncated=truncated)
    expected = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    assert jsonenc.dumps(doc) == expected
    assert json.loads(jsonenc.dumps(doc)) == doc
    assert "\n" not in jsonenc.dumps(doc)


def test_schema_rejects_a_broken_document(validator: Validator) -> None:
    """The schema is not vacuous: a user event without a payload string fails it."""
    doc: EventDoc = parse_event(user_env(), b"x\n", RECEIVED)
    broken: dict[str, Any] = {**doc, "payload": None}
    with pytest.raises(ValidationError):
        validator.validate(broken)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({**user_env(), "SERF_TAG_X": os.fsdecode(b"a\xffb")}, id="tag-value"),
        pytest.param(user_env(name=os.fsdecode(b"d\xff")), id="user-event-name"),
        pytest.param({**user_env(), "SERF_SELF_NAME": os.fsdecode(b"n\xff")}, id="node-name"),
    ],
)
def test_undecodable_env_gives_a_utf8_document(env: dict[str, str]) -> None:
    """Non-UTF-8 bytes in SERF_* values give an encodable document or an InputError."""
    try:
        doc = parse_event(env, b"x\n", RECEIVED)
    except InputError:
        return
    jsonenc.dumps(doc).encode("utf-8")
