"""`serfbridge relay` on a real 3-node cluster whose nodes run serfbridge as their handler.

Every source (HTTP, MQTT, Redis stream, local socket) raises a user event that every node's
handler records, and runs a query whose reply carries every node's response.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from support.mqttclient import MqttPeer
from support.ports import free_port, wait_for
from support.relay import get_text, http_source, metric, post
from support.relaycluster import ALLOW, RelayCluster, assert_full_reply, relay_cluster, toml_table

if TYPE_CHECKING:
    from collections.abc import Iterator

    from support.serf import SerfClusterFactory
    from support.servers import Mosquitto, RedisServer

pytestmark = pytest.mark.e2e

TOKEN = "e2e-t0ken"  # noqa: S105 - test value


class Env(RelayCluster):
    def __init__(self, *cluster: Any, http: int, sock: str) -> None:
        super().__init__(*cluster)
        self.http, self.sock = http, sock


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Unix socket paths are limited to 108 bytes; pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="sbr", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def env(
    serf_cluster: SerfClusterFactory,
    serfbridge_cmd: list[str],
    serfbridge_handler: str,
    tmp_path: Path,
    redis_server: RedisServer,
    mosquitto: Mosquitto,
    short_dir: Path,
) -> Iterator[Env]:
    http, sock = free_port(), str(short_dir / "relay.sock")
    sources = (
        http_source(http, token=TOKEN, **ALLOW)
        + toml_table("sources", type="redis", url=redis_server.url, stream="relay:in",
                     group="relays", claim_idle=1.0, **ALLOW)
        + toml_table("sources", type="mqtt", url=mosquitto.url, topic="relay/in", **ALLOW)
        + toml_table("sources", type="local", path=sock, **ALLOW)
    )  # fmt: skip
    make = partial(Env, http=http, sock=sock)
    with relay_cluster(
        serf_cluster, serfbridge_cmd, serfbridge_handler, tmp_path, sources, make
    ) as env:
        yield env


def _redis(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, decode_responses=True)


def _xrange(client: redis.Redis, key: str) -> list[tuple[str, dict[str, str]]]:
    entries: list[tuple[str, dict[str, str]]] = client.xrange(key)  # type: ignore[assignment]
    return entries


def _pending(client: redis.Redis, key: str = "relay:in") -> int:
    info: dict[str, Any] = client.xpending(key, "relays")
    return int(info["pending"])


def _event(payload: str, name: str = "deploy") -> dict[Any, Any]:
    return {"data": json.dumps({"type": "event", "name": name, "payload": payload})}


def test_http_event_and_query(env: Env) -> None:
    """POST /v1/event reaches every node's handler; POST /v1/query returns every response."""
    status, _ = post(env.http, "/v1/event", {"name": "deploy", "payload": "via-http"},
                     token=TOKEN)  # fmt: skip
    assert status == 202
    env.seen_everywhere("via-http")
    query = {"name": "load", "payload": "p1", "timeout": 1.5}
    status, reply = post(env.http, "/v1/query", query, token=TOKEN)
    assert status == 200
    assert_full_reply(reply, "p1")


def test_mqtt_event_and_query(env: Env, mosquitto: Mosquitto) -> None:
    """An MQTT message raises the event; a query's reply goes to the MQTT 5 response topic
    with the request's correlation data, or to reply_to."""
    peer = MqttPeer(mosquitto.port, subscribe="replies/#")
    try:
        time.sleep(0.5)  # the relay's SUBSCRIBE: it logged "subscribed" before ready
        peer.publish("relay/in", {"type": "event", "name": "deploy", "payload": "via-mqtt"})
        env.seen_everywhere("via-mqtt")
        query = {"type": "query", "name": "load", "payload": "m1", "timeout": 1.5}
        peer.publish("relay/in", query, response_topic="replies/a", correlation=b"corr-42")
        peer.publish("relay/in", {**query, "payload": "m2", "reply_to": "replies/b"})
        wait_for(lambda: len(peer.received()) >= 2, 20, what="two MQTT replies")
        got = peer.received()
        by_topic = {topic: (json.loads(data), props) for topic, data, props in got}
        assert_full_reply(by_topic["replies/a"][0], "m1")
        assert by_topic["replies/a"][1].CorrelationData == b"corr-42"
        assert_full_reply(by_topic["replies/b"][0], "m2")
    finally:
        peer.close()


def test_redis_event_and_query(env: Env, redis_server: RedisServer) -> None:
    """A stream entry raises the event and is acknowledged; a query's reply is added to the
    reply_to stream."""
    client = _redis(redis_server)
    client.xadd("relay:in", _event("via-redis"))
    env.seen_everywhere("via-redis")
    query = {"type": "query", "name": "load", "payload": "r1", "timeout": 1.5,
             "reply_to": "relay:replies"}  # fmt: skip
    client.xadd("relay:in", {"data": json.dumps(query)})
    replies = wait_for(lambda: _xrange(client, "relay:replies"), 20, what="a reply entry")
    assert_full_reply(json.loads(replies[0][1]["data"]), "r1")
    wait_for(lambda: _pending(client) == 0, 10, what="every entry acknowledged")


def test_redis_rejects_to_dead_letter(env: Env, redis_server: RedisServer) -> None:
    """Refused entries are acknowledged and kept in <stream>:dead with their reason."""
    client = _redis(redis_server)
    client.xadd("relay:in", {"data": "{broken"})
    client.xadd("relay:in", _event("x", name="rm-rf"))
    wait_for(lambda: len(_xrange(client, "relay:in:dead")) >= 2, 10, what="two dead letters")
    dead = _xrange(client, "relay:in:dead")
    assert [d["reason"] for _, d in dead] == ["malformed", "not_allowed"]
    assert dead[0][1]["data"] == "{broken"
    wait_for(lambda: _pending(client) == 0, 10, what="dead letters acknowledged")


def test_redis_claims_entries_of_a_dead_consumer(env: Env, redis_server: RedisServer) -> None:
    """Entries another consumer read and never acknowledged (it died) are claimed after
    claim_idle and relayed."""
    client = _redis(redis_server)
    # The relay created its group at start; pause it so that another consumer reads first.
    wait_for(lambda: client.exists("relay:in"), 10, what="the relay's consumer group")
    env.relay.pause()
    try:
        payloads = [f"orphan-{i}" for i in range(3)]
        for p in payloads:
            client.xadd("relay:in", _event(p))
        # A consumer that reads and dies: the entries stay pending under its name.
        read = client.xreadgroup("relays", "dead-relay", {"relay:in": ">"}, count=10)
        assert read
        assert _pending(client) == 3
    finally:
        env.relay.resume()
    for p in payloads:
        env.seen_everywhere(p)
    wait_for(lambda: _pending(client) == 0, 10, what="claimed entries acknowledged")
    assert sum(env.count(p)["n1"] for p in payloads) == 3


def test_local_socket_event_and_query(env: Env) -> None:
    """A local process raises an event and runs a query through the Unix socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(env.sock)
        stream = sock.makefile("rwb")

        def ask(line: bytes) -> dict[str, Any]:
            stream.write(line + b"\n")
            stream.flush()
            answer: dict[str, Any] = json.loads(stream.readline())
            return answer

        assert ask(b'{"type": "event", "name": "deploy", "payload": "via-socket"}') == {
            "accepted": True
        }
        # Handlers run one at a time: let the event's finish before the query's deadline runs.
        env.seen_everywhere("via-socket")
        reply = ask(b'{"type": "query", "name": "load", "payload": "s1", "timeout": 1.5}')
        assert_full_reply(reply, "s1")
        assert ask(b'{"type": "event", "name": "nope"}')["reason"] == "not_allowed"
    mode = Path(env.sock).stat().st_mode & 0o777
    assert mode == 0o600


def test_metrics_count_each_source(env: Env) -> None:
    """in/out/rejected counters per source, and serf call latency, in Prometheus text."""
    post(env.http, "/v1/event", {"name": "deploy", "payload": "m"}, token=TOKEN)
    post(env.http, "/v1/event", {"name": "deploy"}, token=TOKEN[::-1])
    text = get_text(env.metrics, "/metrics")[1]
    assert metric(text, "serfbridge_relay_messages_in_total", source="http") == 2
    assert metric(text, "serfbridge_relay_messages_out_total", source="http", type="event") == 1
    assert metric(text, "serfbridge_relay_messages_rejected_total", source="http",
                  reason="unauthorized") == 1  # fmt: skip
    assert metric(text, "serfbridge_relay_serf_call_seconds_count", call="event") == 1
    assert "serfbridge_relay_spool_depth " in text


def test_relay_reconnects_after_agent_restart(env: Env) -> None:
    """n1 (the relay's agent) restarts: calls fail with 503 meanwhile, then succeed again."""
    agent = env.cluster[0]
    agent.kill9()
    status, doc = post(env.http, "/v1/event", {"name": "deploy", "payload": "down"},
                       token=TOKEN)  # fmt: skip
    assert (status, doc["reason"]) == (503, "serf_unavailable")
    agent.start()
    agent.serf("join", env.cluster[1].bind_addr, check=True)
    env.cluster.wait_converged()

    def accepted() -> bool:
        status, _ = post(env.http, "/v1/event", {"name": "deploy", "payload": "back"},
                         token=TOKEN)  # fmt: skip
        return status == 202

    wait_for(accepted, 30, interval=0.3, what="the relay to reach the restarted agent")
    env.seen_everywhere("back")
    assert env.relay.is_running
