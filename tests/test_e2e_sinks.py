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
from support.bridge import bridge_nodes
from support.handler import spool_files
from support.ports import wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.serf import SerfClusterFactory
    from support.servers import HttpReceiver, Mosquitto, RedisServer

pytestmark = pytest.mark.e2e

NAMES = ["n1", "n2", "n3"]
FAST_REAP = {"reconnect_timeout": "1s", "tombstone_timeout": "1s", "reconnect_interval": "1s"}
FAST = "[delivery]\nlinger = 2\nbackoff_initial = 0.05\nbackoff_max = 0.5\n"


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


def _by(docs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["event"] == event]


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
    nodes = bridge_nodes(tmp_path, NAMES, lambda _: sinks + FAST)
    cluster = serf_cluster(
        3, "*=" + serfbridge_handler, env_for=lambda n: nodes[n].env(), config=FAST_REAP
    )
    try:
        cluster["n1"].event("deploy", "v9", coalesce=False)
        cluster["n1"].query("ping", None, "-timeout=1s")
        cluster["n2"].tags(set={"version": "2"})
        cluster["n3"].leave()
        wait_for(lambda: cluster["n1"].member_status("n3") == "left", 20, what="n3 left")
        cluster["n2"].kill9()
        types = {"member-join", "user", "query", "member-update", "member-leave",
                 "member-failed", "member-reap"}  # fmt: skip

        def complete() -> bool:
            http = {r.json()["event"] for r in http_receiver.requests if r.path == "/json"}
            return (
                types <= http
                and types <= {d["event"] for d in redis_server.event_docs()}
                and (types <= {d["event"] for d in subscriber.docs()})
            )

        wait_for(complete, timeout=60, what="all seven event types at every sink")
    finally:
        for node in nodes.values():
            node.kill_deliverer()
    user_ids = {
        "http": {r.json()["id"] for r in http_receiver.requests if r.path == "/json"
                 and r.json()["event"] == "user"},
        "redis": {d["id"] for d in _by(redis_server.event_docs(), "user")},
        "mqtt": {d["id"] for d in _by(subscriber.docs(), "user")},
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
    nodes = bridge_nodes(tmp_path, NAMES)
    cluster = serf_cluster(3, "*=" + serfbridge_handler, env_for=lambda n: nodes[n].env())
    sinks = _sinks(http_receiver, redis_server.url, mosquitto.port, once=True)
    for name, node in nodes.items():
        node.write_config(f'[serf]\nrpc_addr = "{cluster[name].rpc_addr}"\n' + sinks + FAST)
    try:
        cluster["n1"].event("deploy", "once", coalesce=False)

        def posts(event: str) -> list[dict[str, Any]]:
            return _by([r.json() for r in http_receiver.requests if r.path == "/json"], event)

        wait_for(lambda: posts("user"), timeout=20, what="the user event POST")
        wait_for(lambda: _by(redis_server.event_docs(), "user"), timeout=20, what="stream entry")
        # Every node must have made its once decision before the crash: a deliverer whose own
        # agent is gone cannot ask who is alive and forwards anyway (documented fail-open).
        wait_for(
            lambda: all(not spool_files(n, "incoming") for n in nodes.values()),
            timeout=20,
            what="every node to decide on the user event",
        )
        cluster["n3"].kill9()
        wait_for(lambda: posts("member-failed"), timeout=30, what="the member-failed POST")
        time.sleep(3.0)  # duplicates from other nodes would arrive well within this
    finally:
        for node in nodes.values():
            node.kill_deliverer()
    assert len(posts("user")) == 1
    assert len(_by(redis_server.event_docs(), "user")) == 1
    failed = posts("member-failed")
    assert len(failed) == 1
    assert failed[0]["members"][0]["name"] == "n3"
    assert failed[0]["node"]["name"] in {"n1", "n2"}
