"""Batches: ``send_batch`` of the Redis and MQTT sinks, and the deliverer applying outcomes.

Against real servers: a redis-server with a key of the wrong type, a mosquitto that is
stopped, an HTTP receiver that answers 503. One event refused inside a batch must be
dead-lettered alone; an unavailable one must hold itself and everything after it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from redis import Redis
from support.bridge import BridgeNode
from support.handler import serfbridge, spool_files
from support.mqttclient import MqttPeer
from support.ports import wait_for

from serfbridge.capture import jsonenc, spool
from serfbridge.capture.event import parse_event
from serfbridge.errors import SinkRejected, SinkUnavailable
from serfbridge.sinks.mqtt import MqttSink, MqttSinkConfig
from serfbridge.sinks.redis import RedisSink, RedisSinkConfig

if TYPE_CHECKING:
    from pathlib import Path

    from support.servers import HttpReceiver, Mosquitto, RedisServer


def user(name: str, ltime: int) -> tuple[dict[str, Any], bytes]:
    environ = {
        "SERF_EVENT": "user",
        "SERF_USER_EVENT": name,
        "SERF_USER_LTIME": str(ltime),
        "SERF_SELF_NAME": "node-a",
    }
    text = jsonenc.dumps(parse_event(environ, f"p{ltime}".encode(), 0))
    event: dict[str, Any] = json.loads(text)
    return event, text.encode()


def redis_sink(url: str) -> RedisSink:
    config = RedisSinkConfig.model_validate(
        {"type": "redis", "name": "rs", "url": url, "stream": "s:{name}", "timeout": 2}
    )
    return RedisSink(config)


def test_redis_batch_maps_each_reply_on_its_own(redis_server: RedisServer) -> None:
    """A WRONGTYPE entry in the middle is rejected alone; the others land, in order."""
    admin = Redis.from_url(redis_server.url, protocol=2, decode_responses=True)
    admin.set("s:bad", "a string, not a stream")
    batch = [user("good", 1), user("bad", 2), user("good", 3), user("good", 4)]
    with redis_sink(redis_server.url) as sink:
        outcomes = sink.send_batch(batch)
    assert [o is None for o in outcomes] == [True, False, True, True]
    assert isinstance(outcomes[1], SinkRejected)
    assert "WRONGTYPE" in str(outcomes[1])
    entries: Any = admin.xrange("s:good")
    assert [json.loads(f["data"])["ltime"] for _, f in entries] == [1, 3, 4]


def test_redis_batch_to_a_stopped_server_is_one_unavailable(redis_server: RedisServer) -> None:
    """Losing the server: no reply is known, so the outcome is one SinkUnavailable."""
    sink = redis_sink(redis_server.url)
    sink.open()
    redis_server.stop()
    try:
        outcomes = sink.send_batch([user("good", k) for k in range(1, 6)])
    finally:
        sink.close()
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], SinkUnavailable)


def mqtt_sink(url: str, topic: str = "serf/{name}") -> MqttSink:
    config = MqttSinkConfig.model_validate(
        {"type": "mqtt", "name": "ms", "url": url, "topic": topic, "qos": 1, "timeout": 2}
    )
    return MqttSink(config)


def test_mqtt_batch_keeps_order_and_rejects_a_bad_topic_alone(mosquitto: Mosquitto) -> None:
    """200 PUBLISHes in flight arrive in batch order; the wildcard topic is rejected alone."""
    peer = MqttPeer(mosquitto.port, subscribe="serf/#")
    try:
        batch = [user("seq", k) for k in range(1, 201)]
        batch[50] = user("a+b", 51)  # renders serf/a+b: a wildcard, not a topic name
        with mqtt_sink(mosquitto.url) as sink:
            outcomes = sink.send_batch(batch)
        assert len(outcomes) == 200
        assert isinstance(outcomes[50], SinkRejected)
        assert [k for k, o in enumerate(outcomes) if o is not None] == [50]
        wait_for(lambda: len(peer.received()) >= 199, 10, what="199 messages")
        got = [json.loads(payload)["ltime"] for _, payload, _ in peer.received()]
        assert got == [k for k in range(1, 201) if k != 51]
    finally:
        peer.close()


def test_mqtt_batch_to_a_stopped_broker_ends_at_the_first_unavailable(
    mosquitto: Mosquitto,
) -> None:
    sink = mqtt_sink(mosquitto.url)
    sink.open()
    mosquitto.stop()
    wait_for(sink._conn.closed.is_set, 10, what="the sink to see the broker go")
    try:
        outcomes = sink.send_batch([user("seq", k) for k in range(1, 11)])
    finally:
        sink.close()
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], SinkUnavailable)


def capture(node: BridgeNode, sinks: list[str], events: list[tuple[dict[str, Any], bytes]]) -> None:
    for _, body in events:
        spool.capture(str(node.state), sinks, body.decode())


def test_deliverer_dead_letters_one_refused_entry_of_a_batch(
    tmp_path: Path, redis_server: RedisServer, serfbridge_cmd: list[str]
) -> None:
    """flush: the WRONGTYPE entry is dead-lettered, every other one delivered in order."""
    node = BridgeNode(tmp_path, "n1")
    node.write_config(
        f'[[sinks]]\ntype = "redis"\nname = "rs"\nurl = "{redis_server.url}"\n'
        'stream = "s:{name}"\ntimeout = 2\n'
    )
    admin = Redis.from_url(redis_server.url, protocol=2, decode_responses=True)
    admin.set("s:bad", "x")
    events = [user("bad" if k == 7 else "good", k) for k in range(1, 31)]
    capture(node, ["rs"], events)
    done = serfbridge(serfbridge_cmd, node, "flush")
    assert done.returncode == 0, done.stdout + done.stderr
    entries: Any = admin.xrange("s:good")
    ltimes = [json.loads(f["data"])["ltime"] for _, f in entries]
    assert ltimes == [k for k in range(1, 31) if k != 7]
    dead = [n for n in spool_files(node, "dead", "rs") if n.endswith(".json")]
    assert len(dead) == 1
    assert spool_files(node, "incoming") == []


def test_deliverer_removes_only_the_delivered_prefix(
    tmp_path: Path, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """A 503 on the 4th POST of a batch: 3 entries are removed, the 4th and every later one
    stay queued; the next flush delivers them, so the receiver sees each event in order."""
    node = BridgeNode(tmp_path, "n1")
    node.write_config(
        f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{http_receiver.url}"\ntimeout = 2\n'
    )
    http_receiver.respond_with(200, times=3)
    http_receiver.respond_with(503)
    capture(node, ["hook"], [user("seq", k) for k in range(1, 21)])
    first = serfbridge(serfbridge_cmd, node, "flush")
    assert first.returncode != 0  # entries still pending
    assert len(spool_files(node, "incoming")) == 17  # one sink: an entry goes once it is sent
    second = serfbridge(serfbridge_cmd, node, "flush")
    assert second.returncode == 0, second.stdout + second.stderr
    ok = [r.json()["ltime"] for r in http_receiver.requests if r.status == 200]
    assert ok == list(range(1, 21))


@pytest.mark.parametrize("size", [1, 3])
def test_batches_of_any_size_keep_order(
    tmp_path: Path, redis_server: RedisServer, serfbridge_cmd: list[str], size: int
) -> None:
    """Smaller batches than the queue (the tail of a drain) deliver everything in order."""
    node = BridgeNode(tmp_path, "n1")
    node.write_config(f'[[sinks]]\ntype = "redis"\nname = "rs"\nurl = "{redis_server.url}"\n')
    capture(node, ["rs"], [user("seq", k) for k in range(1, size + 1)])
    assert serfbridge(serfbridge_cmd, node, "flush").returncode == 0
    docs = redis_server.event_docs()
    assert [d["ltime"] for d in docs] == list(range(1, size + 1))


def test_webhook_in_flight_delivers_each_once_and_reports_in_batch_order(
    http_receiver: HttpReceiver,
) -> None:
    """max_in_flight = 4: every event arrives once; a 503 is reported at its own place."""
    from serfbridge.sinks.webhook import WebhookSink, WebhookSinkConfig

    config = WebhookSinkConfig.model_validate(
        {"type": "webhook", "name": "h", "url": http_receiver.url, "max_in_flight": 4}
    )
    batch = [user("seq", k) for k in range(1, 41)]
    with WebhookSink(config) as sink:
        outcomes = sink.send_batch(batch)
    assert outcomes == [None] * 40
    assert sorted(r.json()["ltime"] for r in http_receiver.requests) == list(range(1, 41))
    http_receiver.clear()
    http_receiver.respond_with(503)  # whichever POST comes first
    with WebhookSink(config) as sink:
        outcomes = sink.send_batch(batch)
    failed = [k for k, o in enumerate(outcomes) if o is not None]
    assert len(failed) == 1
    assert isinstance(outcomes[failed[0]], SinkUnavailable)
    assert len(outcomes) == failed[0] + 1  # the list ends at the unavailable one
