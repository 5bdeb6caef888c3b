"""A real 3-node cluster with serfbridge forwarding to webhook, CloudEvents, MQTT and Redis."""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from support.ports import wait_for
from support.sinkcluster import TYPES, by, every_event_type, run_once

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.serf import SerfClusterFactory
    from support.servers import HttpReceiver, Mosquitto, RedisServer

pytestmark = pytest.mark.e2e


class Subscriber:
    """A real MQTT subscriber collecting every message under serf/#."""

    def __init__(self, port: int) -> None:
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("serf/#", qos=1)
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append(json.loads(msg.payload))

    def docs(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(mosquitto.port)
    time.sleep(0.3)  # let SUBACK arrive before events flow
    yield sub
    sub.close()


def _sinks(receiver: HttpReceiver, redis_url: str, mqtt_port: int, once: bool) -> str:
    flag = "once = true\n" if once else ""
    return (
        f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{receiver.url_for("json")}"\n{flag}'
        f'[[sinks]]\ntype = "webhook"\nname = "ce"\nformat = "cloudevents"\n'
        f'url = "{receiver.url_for("ce")}"\n{flag}'
        f'[[sinks]]\ntype = "redis"\nname = "stream"\nurl = "{redis_url}"\n'
        f'stream = "serf:events"\n{flag}'
        f'[[sinks]]\ntype = "mqtt"\nname = "bus"\nurl = "mqtt://127.0.0.1:{mqtt_port}"\n'
        f'topic = "serf/{{event}}"\n{flag}'
    )


def test_every_event_type_reaches_every_sink(
    serf_cluster: SerfClusterFactory,
    serfbridge_handler: str,
    tmp_path: Path,
    http_receiver: HttpReceiver,
    redis_server: RedisServer,
    subscriber: Subscriber,
    mosquitto: Mosquitto,
) -> None:
    """join, user, query, update, leave, failed and reap arrive over HTTP, MQTT and Redis."""
    sinks = _sinks(http_receiver, redis_server.url, mosquitto.port, once=False)
    with every_event_type(serf_cluster, serfbridge_handler, tmp_path, sinks):

        def complete() -> bool:
            http = {r.json()["event"] for r in http_receiver.requests if r.path == "/json"}
            return (
                http >= TYPES
                and {d["event"] for d in redis_server.event_docs()} >= TYPES
                and ({d["event"] for d in subscriber.docs()} >= TYPES)
            )

        wait_for(complete, timeout=60, what="all seven event types at every sink")
    user_ids = {
        "http": {r.json()["id"] for r in http_receiver.requests if r.path == "/json"
                 and r.json()["event"] == "user"},
        "redis": {d["id"] for d in by(redis_server.event_docs(), "user")},
        "mqtt": {d["id"] for d in by(subscriber.docs(), "user")},
    }  # fmt: skip
    assert user_ids["http"] == user_ids["redis"] == user_ids["mqtt"]
    assert len(user_ids["http"]) == 1
    for req in (r for r in http_receiver.requests if r.path == "/ce"):
        ce = from_http_event(HTTPMessage(dict(req.headers), req.body))
        assert ce.get_type() == "io.serf." + req.json()["data"]["event"]
        assert ce.get_id() == req.json()["data"]["id"]


def test_once_forwards_each_event_from_exactly_one_node(
    serf_cluster: SerfClusterFactory,
    serfbridge_handler: str,
    tmp_path: Path,
    http_receiver: HttpReceiver,
    redis_server: RedisServer,
    mosquitto: Mosquitto,
) -> None:
    """With once = true a user event gives one POST and one stream entry; kill -9 gives one
    member-failed POST, sent by a surviving node."""
    sinks = _sinks(http_receiver, redis_server.url, mosquitto.port, once=True)

    def posts(event: str) -> list[dict[str, Any]]:
        return by([r.json() for r in http_receiver.requests if r.path == "/json"], event)

    def seen(event: str) -> bool:
        # The user event: its POST and its stream entry.
        in_redis = event != "user" or bool(by(redis_server.event_docs(), event))
        return bool(posts(event)) and in_redis

    run_once(serf_cluster, serfbridge_handler, tmp_path, sinks, seen)
    assert len(posts("user")) == 1
    assert len(by(redis_server.event_docs(), "user")) == 1
    failed = posts("member-failed")
    assert len(failed) == 1
    assert failed[0]["members"][0]["name"] == "n3"
    assert failed[0]["node"]["name"] in {"n1", "n2"}
