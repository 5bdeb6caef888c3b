"""The AMQP sink against a real (private) rabbitmq-server: confirms, routing, faults, config."""

from __future__ import annotations

import json
import re
import socket
import sys
import time
import uuid
from contextlib import closing
from typing import TYPE_CHECKING, Any

import pytest
from cloudevents.core.bindings import amqp as ce_amqp
from cloudevents.core.formats.json import JSONFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from support.ports import LOOPBACK, free_port
from support.proc import clean_environ, run_cli
from support.rabbitmq import ADMIN, LIMITED, WRITER
from test_sink_redis import member_event, user_event

from serfbridge.errors import SinkRejected, SinkUnavailable
from serfbridge.sinks.amqp import AmqpSink, AmqpSinkConfig
from serfbridge.sinks.base import url_for_logs

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from pika.adapters.blocking_connection import BlockingChannel
    from support.rabbitmq import RabbitMQServer

TIMEOUT = 1.0  # the sink's timeout in fault tests


def make_config(url: str, **overrides: Any) -> AmqpSinkConfig:
    return AmqpSinkConfig.model_validate({"type": "amqp", "name": "bus", "url": url, **overrides})


@pytest.fixture
def admin(rabbitmq: RabbitMQServer) -> Iterator[BlockingChannel]:
    conn = rabbitmq.connect()
    try:
        yield conn.channel()
    finally:
        conn.close()


@pytest.fixture
def queue(rabbitmq: RabbitMQServer, admin: BlockingChannel) -> str:
    """A fresh durable queue bound to amq.topic for serf.#."""
    name = f"q-{uuid.uuid4().hex[:8]}"
    rabbitmq.declare_events_queue(admin, name)
    return name


def sent(rabbitmq: RabbitMQServer, queue: str) -> list[tuple[Any, bytes]]:
    return rabbitmq.drain(queue)


def send_timed(sink: AmqpSink, event: dict[str, Any], body: bytes) -> tuple[Exception, float]:
    start = time.monotonic()
    with pytest.raises((SinkUnavailable, SinkRejected)) as info:
        sink.send(event, body)
    return info.value, time.monotonic() - start


# -- delivery ---------------------------------------------------------------------------------


def test_event_is_published_persistent_with_its_id(rabbitmq: RabbitMQServer, queue: str) -> None:
    """One confirmed, persistent message per event: the body is the document, message_id its
    id, type the event type, content type JSON, routed by serf.{event}."""
    event, body = user_event(payload="héllo ✓\n".encode())
    member, member_body = member_event()
    with AmqpSink(make_config(rabbitmq.url())) as sink:
        sink.send(event, body)
        sink.send(member, member_body)
    (p1, b1), (p2, b2) = sent(rabbitmq, queue)
    assert b1 == body
    assert json.loads(b1) == event
    assert p1.delivery_mode == 2
    assert p1.message_id == event["id"]
    assert p1.content_type == "application/json"
    assert p1.type == "user"
    assert (p2.message_id, b2) == (member["id"], member_body)


def test_routing_key_template_and_named_exchange(
    rabbitmq: RabbitMQServer, admin: BlockingChannel
) -> None:
    """routing_key = "{node}.{event}.{name}" on a direct exchange reaches the bound queue only."""
    admin.exchange_declare("serf-direct", "direct", durable=True)
    admin.queue_declare("direct-deploy", durable=True)
    admin.queue_purge("direct-deploy")
    admin.queue_bind("direct-deploy", "serf-direct", "node-a.user.deploy")
    config = make_config(
        rabbitmq.url(), exchange="serf-direct", routing_key="{node}.{event}.{name}"
    )
    with AmqpSink(config) as sink:
        sink.send(*user_event("deploy"))
        with pytest.raises(SinkUnavailable, match="unroutable"):
            sink.send(*user_event("other"))
    assert [json.loads(b)["name"] for _, b in rabbitmq.drain("direct-deploy")] == ["deploy"]


def test_default_exchange_routes_by_queue_name(rabbitmq: RabbitMQServer, queue: str) -> None:
    """exchange = "" publishes straight to the queue named by the routing key."""
    with AmqpSink(make_config(rabbitmq.url(), exchange="", routing_key=queue)) as sink:
        sink.send(*user_event())
    assert len(sent(rabbitmq, queue)) == 1


def test_vhost_in_url(rabbitmq: RabbitMQServer) -> None:
    """The URL's path names the vhost (here "serf"); messages land there, not in "/"."""
    conn = rabbitmq.connect("serf")
    try:
        rabbitmq.declare_events_queue(conn.channel(), "in-serf")
    finally:
        conn.close()
    with AmqpSink(make_config(rabbitmq.url("serf"))) as sink:
        sink.send(*user_event())
    assert len(rabbitmq.drain("in-serf", vhost="serf")) == 1


def test_unroutable_is_unavailable_until_a_queue_is_bound(
    rabbitmq: RabbitMQServer, admin: BlockingChannel
) -> None:
    """mandatory: with no queue bound the send fails (retryable); once bound it is delivered."""
    key = f"nobody.{uuid.uuid4().hex[:6]}"
    config = make_config(rabbitmq.url(), routing_key=key + ".{event}")
    event, body = user_event()
    with closing(AmqpSink(config)) as sink:
        error, _ = send_timed(sink, event, body)
        assert isinstance(error, SinkUnavailable)
        assert error.retryable
        assert "unroutable" in str(error)
        admin.queue_declare("late", durable=True)
        admin.queue_purge("late")
        admin.queue_bind("late", "amq.topic", key + ".#")
        sink.send(event, body)
    assert [props.message_id for props, _ in rabbitmq.drain("late")] == [event["id"]]


def test_cloudevents_binary_parses_with_the_sdk(rabbitmq: RabbitMQServer, queue: str) -> None:
    """cloudevents-binary: cloudEvents:* headers and a JSON body, read by the SDK's AMQP binding."""
    event, body = user_event()
    config = make_config(rabbitmq.url(), format="cloudevents-binary", source="urn:serf:test")
    with AmqpSink(config) as sink:
        sink.send(event, body)
    ((props, payload),) = sent(rabbitmq, queue)
    assert body == payload
    assert all(key.startswith("cloudEvents:") for key in props.headers)
    message = ce_amqp.AMQPMessage(
        properties={"content-type": props.content_type},
        application_properties=dict(props.headers),
        application_data=payload,
    )
    ce = ce_amqp.from_binary(message, JSONFormat())
    assert ce.get_specversion() == "1.0"
    assert ce.get_id() == event["id"]
    assert ce.get_type() == "io.serf.user"
    assert ce.get_source() == "urn:serf:test"
    assert ce.get_subject() == "deploy"
    assert ce.get_data() == event


def test_cloudevents_structured_parses_with_the_sdk(rabbitmq: RabbitMQServer, queue: str) -> None:
    """cloudevents: the body is the JSON envelope, content type application/cloudevents+json."""
    event, body = member_event()
    with AmqpSink(make_config(rabbitmq.url(), format="cloudevents")) as sink:
        sink.send(event, body)
    ((props, payload),) = sent(rabbitmq, queue)
    assert props.content_type.startswith("application/cloudevents+json")
    message = ce_amqp.AMQPMessage(
        properties={"content-type": props.content_type},
        application_properties={},
        application_data=payload,
    )
    ce = ce_amqp.from_structured(message, JSONFormat())
    assert ce.get_type() == "io.serf.member-join"
    assert ce.get_source() == "serf://node-a"
    assert ce.get_subject() == "node-b"
    assert ce.get_data() == event
    assert props.message_id == event["id"]


def test_check_connects(rabbitmq: RabbitMQServer) -> None:
    """check() passes against the broker; a missing exchange fails it."""
    AmqpSink(make_config(rabbitmq.url())).check()
    with pytest.raises(SinkUnavailable, match="NOT_FOUND"):
        AmqpSink(make_config(rabbitmq.url(), exchange="no-such-exchange")).check()


# -- refusals -----------------------------------------------------------------------------------


def test_wrong_password_is_unavailable(rabbitmq: RabbitMQServer) -> None:
    """A wrong password is retried (the operator fixes it) and never printed."""
    url = rabbitmq.url(user=(ADMIN[0], "not-it-7f3a"))
    with closing(AmqpSink(make_config(url, timeout=5))) as sink:
        error, _ = send_timed(sink, *user_event())
    assert isinstance(error, SinkUnavailable)
    assert "login" in str(error)
    assert "not-it-7f3a" not in str(error)


def test_vhost_refused_is_unavailable(rabbitmq: RabbitMQServer) -> None:
    """A user without access to the vhost: retryable, named as such."""
    with closing(AmqpSink(make_config(rabbitmq.url("serf", user=LIMITED)))) as sink:
        error, _ = send_timed(sink, *user_event())
    assert isinstance(error, SinkUnavailable)
    assert "vhost" in str(error)


def test_no_write_permission_is_unavailable(rabbitmq: RabbitMQServer) -> None:
    """A user who may not write to the exchange: ACCESS_REFUSED, retried (every event would
    fail the same way, so none is dead-lettered at once)."""
    with closing(AmqpSink(make_config(rabbitmq.url(user=LIMITED)))) as sink:
        error, _ = send_timed(sink, *user_event())
    assert isinstance(error, SinkUnavailable)
    assert "ACCESS_REFUSED" in str(error)


def test_least_privilege_user_publishes(rabbitmq: RabbitMQServer, queue: str) -> None:
    """Write permission on amq.topic alone is enough (docs/sink-amqp.md): check and send."""
    AmqpSink(make_config(rabbitmq.url(user=WRITER))).check()
    with AmqpSink(make_config(rabbitmq.url(user=WRITER))) as sink:
        sink.send(*user_event())
    assert len(sent(rabbitmq, queue)) == 1


def test_too_long_routing_key_is_rejected(rabbitmq: RabbitMQServer) -> None:
    """A rendered routing key over 255 bytes is this event's fault: SinkRejected."""
    with closing(AmqpSink(make_config(rabbitmq.url(), routing_key="serf.{name}"))) as sink:
        error, _ = send_timed(sink, *user_event("x" * 300))
    assert isinstance(error, SinkRejected)
    assert "255" in str(error)


# -- faults -------------------------------------------------------------------------------------


def test_nothing_listening_is_unavailable() -> None:
    """A closed port: SinkUnavailable at once."""
    url = f"amqp://u:p@{LOOPBACK}:{free_port()}/"
    with closing(AmqpSink(make_config(url, timeout=TIMEOUT))) as sink:
        error, elapsed = send_timed(sink, *user_event())
    assert isinstance(error, SinkUnavailable)
    assert elapsed < TIMEOUT + 1.0


def test_silent_server_times_out() -> None:
    """A listener that accepts and never answers: SinkUnavailable after about timeout."""
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(8)
        url = f"amqp://u:p@{LOOPBACK}:{listener.getsockname()[1]}/"
        with closing(AmqpSink(make_config(url, timeout=TIMEOUT))) as sink:
            error, elapsed = send_timed(sink, *user_event())
    assert isinstance(error, SinkUnavailable)
    assert elapsed < TIMEOUT * 3 + 1.0


def test_paused_broker_times_out_and_close_is_bounded(rabbitmq: RabbitMQServer, queue: str) -> None:
    """A SIGSTOPped broker (connection open, nothing answers): the publish gives up after
    about timeout instead of waiting for the confirm forever, and close() returns at once."""
    event, body = user_event()
    sink = AmqpSink(make_config(rabbitmq.url(), timeout=TIMEOUT))
    sink.open()
    sink.send(event, body)
    rabbitmq.pause()
    try:
        error, elapsed = send_timed(sink, event, body)
        start = time.monotonic()
        sink.close()
        closed_in = time.monotonic() - start
    finally:
        rabbitmq.resume()
    assert isinstance(error, SinkUnavailable)
    assert "no answer within" in str(error)
    assert TIMEOUT * 0.8 <= elapsed < TIMEOUT + 1.5
    assert closed_in < 1.5
    with AmqpSink(make_config(rabbitmq.url())) as again:
        again.send(event, body)
    # The unconfirmed copy may or may not have landed: at least once, never lost.
    assert 2 <= len(sent(rabbitmq, queue)) <= 3


def test_close_never_raises(rabbitmq: RabbitMQServer) -> None:
    sink = AmqpSink(make_config(rabbitmq.url()))
    sink.close()
    sink.open()
    sink.close()
    sink.close()


# -- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "overrides", "message"),
    [
        ("http://localhost", {}, "must start with"),
        ("amqp://localhost:notaport/", {}, "invalid port"),
        ("amqp:///vhost", {}, "no host"),
        ("amqp://localhost/?ssl_options=x", {}, "url query may set"),
        ("amqp://localhost/", {"routing_key": "serf.{nope}"}, "unknown template field"),
        ("amqp://localhost/", {"ca_certs": "/ca.pem"}, "amqps://"),
        ("amqp://localhost/", {"format": "xml"}, "Input should be"),
        ("amqp://localhost/", {"exchange": "x" * 256}, "at most 255"),
    ],
)
def test_config_errors(url: str, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_config(url, **overrides)


def test_display_hides_credentials() -> None:
    """Errors and logs name the broker without user, password or query."""
    shown = url_for_logs("amqps://u:secret@mq.example:5671/prod?heartbeat=5", empty_path="/")
    assert shown == "amqps://mq.example:5671/prod"
    assert url_for_logs("amqp://mq", empty_path="/") == "amqp://mq/"
    assert url_for_logs("redis://:pw@cache:6380") == "redis://cache:6380"


@settings(database=None)  # no .hypothesis directory in the checkout
@given(st.text(max_size=60))
def test_any_url_is_accepted_or_refused_cleanly(url: str) -> None:
    """Whatever the url, validation either passes or raises ValidationError, nothing else."""
    try:
        config = make_config("amqp://" + url)
    except ValidationError:
        return
    assert config.url.startswith("amqp://")
    url_for_logs(config.url)


def test_module_import_does_not_load_pika() -> None:
    """Loading the config model keeps pika off the handler's import path."""
    code = "import sys, serfbridge.config.models; print('pika' in sys.modules)"
    result = run_cli([sys.executable, "-c", code], env=clean_environ(), timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_check_connect_command(
    rabbitmq: RabbitMQServer, serfbridge_cmd: list[str], tmp_path: Path
) -> None:
    """`serfbridge check --connect`: reachable with the right exchange (exit 0); a missing
    exchange and a wrong password are each named UNREACHABLE (exit 6), the password unshown."""
    config = tmp_path / "serfbridge.toml"

    def check(body: str) -> tuple[int, str]:
        config.write_text(f'state_dir = "{tmp_path / "state"}"\n' + body)
        argv = [*serfbridge_cmd, "--config", str(config), "check", "--connect"]
        result = run_cli(argv, env=clean_environ(), timeout=60)
        return result.returncode, result.stdout + result.stderr

    good = f'[[sinks]]\ntype = "amqp"\nname = "rabbit"\nurl = "{rabbitmq.url()}"\n'
    code, out = check(good)
    assert code == 0, out
    assert re.search(r"^sink rabbit: type=amqp .*: reachable$", out, re.M), out
    bad = (
        f'[[sinks]]\ntype = "amqp"\nname = "gone"\nurl = "{rabbitmq.url()}"\nexchange = "nope"\n'
        f'[[sinks]]\ntype = "amqp"\nname = "badpw"\n'
        f'url = "{rabbitmq.url(user=(ADMIN[0], "wr0ng-pw"))}"\n'
    )
    code, out = check(bad)
    assert code == 6, out
    assert re.search(r"^sink gone: .*: UNREACHABLE: .*NOT_FOUND", out, re.M), out
    assert re.search(r"^sink badpw: .*: UNREACHABLE: .*login", out, re.M), out
    assert "wr0ng-pw" not in out
