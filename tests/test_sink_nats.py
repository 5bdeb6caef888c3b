"""The NATS sink against a real nats-server with JetStream: acks, dedupe, logins, faults."""

from __future__ import annotations

import asyncio
import json
import os
import time
from contextlib import closing
from typing import TYPE_CHECKING, Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from cloudevents.core.formats.json import JSONFormat
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from support.nats import NatsServer

from serfbridge.capture.event import parse_event
from serfbridge.errors import SinkRejected, SinkUnavailable
from serfbridge.sinks.nats import NatsSink, NatsSinkConfig, subject_problem

if TYPE_CHECKING:
    from pathlib import Path

    from nats.aio.client import Client

TIMEOUT = 1.0
STREAM = "SERF"


def make_event(environ: dict[str, str], stdin: bytes) -> tuple[dict[str, Any], bytes]:
    doc = parse_event({"SERF_SELF_NAME": "node-a", "SERF_SELF_ROLE": "web", **environ}, stdin, 0)
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    event: dict[str, Any] = json.loads(body)
    return event, body


def user_event(name: str = "deploy", ltime: int = 7) -> tuple[dict[str, Any], bytes]:
    environ = {"SERF_EVENT": "user", "SERF_USER_EVENT": name, "SERF_USER_LTIME": str(ltime)}
    return make_event(environ, "héllo ✓\n".encode())


def member_event() -> tuple[dict[str, Any], bytes]:
    return make_event({"SERF_EVENT": "member-join"}, b"node-b\t127.0.0.1\tdb\tdc=east\n")


def make_config(url: str, **overrides: Any) -> NatsSinkConfig:
    return NatsSinkConfig.model_validate(
        {"type": "nats", "name": "ns", "url": url, "timeout": TIMEOUT, **overrides}
    )


@pytest.fixture
def stream(nats_server: NatsServer) -> str:
    nats_server.add_stream(STREAM, ["serf.>"], duplicate_window=120.0)
    return STREAM


# -- JetStream ----------------------------------------------------------------------------------


def test_jetstream_publish_lands_with_msg_id(nats_server: NatsServer, stream: str) -> None:
    """Each event is one stream message: the body as is, Nats-Msg-Id = id, JSON content type."""
    event, body = user_event()
    member, member_body = member_event()
    with NatsSink(make_config(nats_server.url, stream=stream)) as sink:
        sink.send(event, body)
        sink.send(member, member_body)
    (h1, d1), (h2, d2) = nats_server.stream_messages(stream)
    assert d1 == body
    assert d2 == member_body
    assert h1["Nats-Msg-Id"] == event["id"]
    assert h2["Nats-Msg-Id"] == member["id"]
    assert h1["Content-Type"] == "application/json"


def test_subject_template_routes(nats_server: NatsServer, stream: str) -> None:
    """subject = "serf.{event}.{node}" puts the event type and node into the subject."""

    async def collect(client: Client) -> list[str]:
        js = client.jetstream()
        sub = await js.pull_subscribe("serf.>", stream=stream)
        return [m.subject for m in await sub.fetch(2, timeout=5)]

    with NatsSink(make_config(nats_server.url, stream=stream, subject="serf.{event}.{node}")) as s:
        s.send(*user_event())
        s.send(*member_event())
    assert nats_server.call(collect) == ["serf.user.node-a", "serf.member-join.node-a"]


def test_duplicate_window_drops_copies(nats_server: NatsServer, stream: str) -> None:
    """The same event from three senders (three nodes, or retries) is stored once."""
    event, body = user_event()
    for _ in range(3):
        with NatsSink(make_config(nats_server.url, stream=stream)) as sink:
            sink.send(event, body)
    assert len(nats_server.stream_messages(stream)) == 1


def test_no_stream_for_subject_is_unavailable(nats_server: NatsServer) -> None:
    """JetStream on, no stream takes the subject: retried (the stream may be created later)."""
    sink = NatsSink(make_config(nats_server.url, jetstream=True))
    with sink, pytest.raises(SinkUnavailable, match="no JetStream stream"):
        sink.send(*user_event())


def test_wrong_expected_stream_is_rejected(nats_server: NatsServer, stream: str) -> None:
    """The subject lands in another stream than the one named: refused, dead-lettered."""
    nats_server.add_stream("OTHER", ["other.>"])
    sink = NatsSink(make_config(nats_server.url, stream="OTHER"))
    with sink, pytest.raises(SinkRejected, match="refused"):
        sink.send(*user_event())
    assert nats_server.stream_messages(stream) == []


def test_invalid_rendered_subject_is_rejected(nats_server: NatsServer, stream: str) -> None:
    """A user event name with a space makes no valid subject: that event is rejected."""
    with NatsSink(make_config(nats_server.url, stream=stream, subject="serf.{name}")) as sink:
        with pytest.raises(SinkRejected, match="white space"):
            sink.send(*user_event("two words"))
        sink.send(*user_event("fine"))
    assert len(nats_server.stream_messages(stream)) == 1


def test_oversized_message_is_rejected(tmp_path: Path) -> None:
    """A document above the server's max_payload is rejected, not retried forever."""
    with NatsServer(tmp_path / "small", extra_config=["max_payload: 256"]) as server:
        server.start()
        sink = NatsSink(make_config(server.url, jetstream=False))
        with sink, pytest.raises(SinkRejected, match="MaxPayload"):
            sink.send(*user_event())


# -- core NATS ----------------------------------------------------------------------------------


def test_core_publish_reaches_a_subscriber(nats_server: NatsServer) -> None:
    """jetstream = false: a plain publish, flushed; a subscriber present gets it."""
    event, body = user_event()

    async def listen(client: Client) -> list[Any]:
        sub = await client.subscribe("serf.>")
        await client.flush()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, send)
        msg = await sub.next_msg(timeout=5)
        return [msg.subject, msg.data, msg.headers]

    def send() -> None:
        with NatsSink(make_config(nats_server.url)) as sink:
            sink.send(event, body)

    subject, data, headers = nats_server.call(listen)
    assert (subject, data) == ("serf.user", body)
    assert headers["Nats-Msg-Id"] == event["id"]


# -- logins -------------------------------------------------------------------------------------


def _nkey_user() -> tuple[bytes, str]:
    import nkeys  # type: ignore[import-untyped]

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    return seed, public


@pytest.mark.parametrize("kind", ["password", "token", "nkey"])
def test_logins(tmp_path: Path, kind: str) -> None:
    """user/password, token and NKey seed each log in; a wrong secret is retried, not lost."""
    seed, public = _nkey_user()
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed)
    auth = {
        "password": ('authorization { user: "serf", password: "s3cret" }',
                     {"user": "serf", "password": "s3cret"}, {"user": "serf", "password": "no"}),
        "token": ('authorization { token: "t0ken" }', {"token": "t0ken"}, {"token": "wrong"}),
        "nkey": (f'authorization {{ users: [ {{ nkey: "{public}" }} ] }}',
                 {"nkey_seed": str(seed_file)}, {}),
    }[kind]  # fmt: skip
    block, good, bad = auth
    with NatsServer(tmp_path / kind, extra_config=[block]) as server:
        server.start()
        with NatsSink(make_config(server.url, **good)) as sink:
            sink.send(*user_event())
        with pytest.raises(SinkUnavailable, match="cannot connect"):
            NatsSink(make_config(server.url, **bad)).check()


def test_one_login_at_a_time() -> None:
    with pytest.raises(ValidationError, match="one way to log in"):
        make_config("nats://127.0.0.1:4222", user="a", token="b")  # noqa: S106 - not a secret
    with pytest.raises(ValidationError, match="password needs user"):
        make_config("nats://127.0.0.1:4222", password="b")  # noqa: S106 - not a secret


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:4222", "nats:// or tls://"),
        ("nats://u:p@127.0.0.1:4222", "credentials"),
        ("nats://127.0.0.1:99999", "invalid port"),
        ("nats://127.0.0.1:4222/x", "no path"),
    ],
)
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_config(url)


def test_bad_subject_templates_are_config_errors() -> None:
    for subject, message in (("serf.>", "wildcard"), ("serf..x", "empty token"),
                             ("serf.{nope}", "unknown template field")):  # fmt: skip
        with pytest.raises(ValidationError, match=message):
            make_config("nats://127.0.0.1:4222", subject=subject)
    with pytest.raises(ValidationError, match="stream needs jetstream"):
        make_config("nats://127.0.0.1:4222", stream="S", jetstream=False)


@given(st.text(max_size=40))
def test_subject_problem_matches_the_rules(subject: str) -> None:
    """A subject is valid iff it is non-empty, has no white space, empty token or wildcard."""
    tokens = subject.split(".")
    valid = (
        bool(subject)
        and not any(c.isspace() for c in subject)
        and all(tokens)
        and not any(t in ("*", ">") for t in tokens)
    )
    assert (subject_problem(subject) is None) == valid


# -- faults -------------------------------------------------------------------------------------


def test_check_connects(nats_server: NatsServer) -> None:
    sink = NatsSink(make_config(nats_server.url))
    sink.check()
    nats_server.stop()
    with pytest.raises(SinkUnavailable, match="cannot connect"):
        sink.check()


def test_stopped_server_is_unavailable_then_recovers(nats_server: NatsServer, stream: str) -> None:
    """A restart: the send during the outage is retryable; the next one reconnects by itself."""
    with NatsSink(make_config(nats_server.url, stream=stream)) as sink:
        sink.send(*user_event(ltime=1))
        nats_server.stop()
        with pytest.raises(SinkUnavailable):
            sink.send(*user_event(ltime=2))
        nats_server.start()
        sink.send(*user_event(ltime=2))
    ltimes = [d["ltime"] for d in nats_server.event_docs(stream)]
    assert ltimes == [1, 2]  # the store survived the restart


def test_paused_server_times_out(nats_server: NatsServer, stream: str) -> None:
    """A SIGSTOPped server (port open, no answers): SinkUnavailable after about timeout."""
    with closing(NatsSink(make_config(nats_server.url, stream=stream))) as sink:
        sink.send(*user_event())
        nats_server.pause()
        try:
            start = time.monotonic()
            with pytest.raises(SinkUnavailable):
                sink.send(*user_event(ltime=8))
            elapsed = time.monotonic() - start
        finally:
            nats_server.resume()
    assert elapsed < TIMEOUT + 3.0


def test_close_never_raises(nats_server: NatsServer) -> None:
    sink = NatsSink(make_config(nats_server.url))
    sink.close()
    sink.open()
    nats_server.stop()
    sink.close()
    sink.close()


# -- CloudEvents --------------------------------------------------------------------------------


def test_cloudevents_structured(nats_server: NatsServer, stream: str) -> None:
    """format = "cloudevents": the JSON event format as payload, Content-Type says so."""
    event, body = user_event()
    with NatsSink(make_config(nats_server.url, stream=stream, format="cloudevents")) as sink:
        sink.send(event, body)
    [(headers, data)] = nats_server.stream_messages(stream)
    assert headers["Content-Type"].startswith("application/cloudevents+json")
    ce = JSONFormat().read(None, data)
    assert ce.get_id() == event["id"]
    assert ce.get_type() == "io.serf.user"
    assert ce.get_source() == "serf://node-a"
    assert ce.get_data() == event
    assert headers["Nats-Msg-Id"] == event["id"]


def test_cloudevents_binary(nats_server: NatsServer, stream: str) -> None:
    """format = "cloudevents-binary": every attribute a ce-* header, datacontenttype too,
    percent-encoded; the payload is the document."""
    event, body = user_event("dé ploy")
    cfg = make_config(nats_server.url, stream=stream, format="cloudevents-binary",
                      subject="serf.{event}")  # fmt: skip
    with NatsSink(cfg) as sink:
        sink.send(event, body)
    [(headers, data)] = nats_server.stream_messages(stream)
    assert data == body
    assert headers["ce-datacontenttype"] == "application/json"
    assert headers["ce-subject"] == "d%C3%A9%20ploy"
    assert all(0x21 <= ord(c) <= 0x7E for k, v in headers.items() for c in k + v)
    # The NATS binding's ce-* headers are the HTTP binding's with datacontenttype moved into
    # a header of its own: the SDK's HTTP decoder checks everything else.
    http = {k: v for k, v in headers.items() if k.startswith("ce-") and k != "ce-datacontenttype"}
    http["content-type"] = headers["ce-datacontenttype"]
    ce = from_http_event(HTTPMessage(http, data))
    assert ce.get_subject() == "dé ploy"
    assert ce.get_id() == event["id"]
    assert ce.get_specversion() == "1.0"


def test_creds_file_login(tmp_path: Path) -> None:
    """A .creds file (user JWT + seed) logs in to a server in operator mode; a user of an
    account the server does not trust is refused, and retried."""
    from support.nats import operator_mode

    config, good, bad = operator_mode(tmp_path / "creds")
    with NatsServer(tmp_path / "operator", extra_config=config) as server:
        server.start()
        with NatsSink(make_config(server.url, creds=str(good))) as sink:
            sink.send(*user_event())
        with pytest.raises(SinkUnavailable, match="cannot connect"):
            NatsSink(make_config(server.url, creds=str(bad))).check()


@given(st.text(max_size=60))
def test_any_url_is_accepted_or_a_clear_config_error(url: str) -> None:
    """Whatever the url, validation ends in a config or a ValidationError, never a crash;
    an accepted one names servers with a host."""
    from serfbridge.config.relay import NatsSourceConfig

    try:
        cfg = make_config(url)
    except ValidationError:
        return
    assert all(u.strip().startswith(("nats://", "tls://")) for u in cfg.url.split(","))
    NatsSourceConfig.model_validate({"type": "nats", "url": url, "subject": "serf.in"})


def test_loading_the_config_does_not_import_nats_py() -> None:
    """The handler loads the config models; nats-py (and asyncio's weight) stays off it."""
    import subprocess
    import sys

    code = (
        "import sys, serfbridge.config.models, serfbridge.sinks.nats, "
        "serfbridge.relay.sources.nats; print('nats' in sys.modules, 'nkeys' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False False"


def test_check_connect_cli(nats_server: NatsServer, tmp_path: Path) -> None:
    """`serfbridge check --connect` reports the sink reachable, then UNREACHABLE (exit 6)."""
    import subprocess
    import sys

    from support.proc import clean_environ

    config = tmp_path / "serfbridge.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        f'[[sinks]]\ntype = "nats"\nname = "bus"\nurl = "{nats_server.url}"\ntimeout = 1\n'
    )
    argv = [sys.executable, "-m", "serfbridge", "--config", str(config), "check", "--connect"]

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, env=clean_environ()
        )

    ok = check()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "sink bus: type=nats events=*: reachable" in ok.stdout
    nats_server.stop()
    down = check()
    assert down.returncode == 6, down.stdout + down.stderr
    assert "sink bus: type=nats events=*: UNREACHABLE: cannot connect" in down.stdout
    assert "Traceback" not in down.stdout + down.stderr
