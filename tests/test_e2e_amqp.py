"""RabbitMQ both ways on a real 3-node cluster whose nodes run serfbridge as their handler.

Outbound: every event type reaches a RabbitMQ queue exactly as it reaches a Redis stream, and
``once = true`` lands each event once. Inbound: ``serfbridge relay`` consumes a queue; an
event raises on every node, and an RPC client (reply_to + correlation_id) gets every node's
answer to a query.
"""

from __future__ import annotations

import json
import time
import uuid
from functools import partial
from typing import TYPE_CHECKING, Any

import pika
import pytest
from support.bridge import NAMES
from support.handler import spool_files
from support.ports import wait_for
from support.relaycluster import RelayCluster, relay_cluster
from support.sinkcluster import TYPES, by, every_event_type, run_once

from serfbridge.relay.auth import SIGNATURE_HEADER, TIMESTAMP_HEADER
from serfbridge.signing import sign

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from pika.adapters.blocking_connection import BlockingChannel
    from support.rabbitmq import RabbitMQServer
    from support.serf import SerfClusterFactory
    from support.servers import RedisServer

pytestmark = pytest.mark.e2e

PREFETCH = 3
HMAC_KEY = "amqp-signing-key"
TOKEN = "amqp-t0ken"  # noqa: S105 - test value


@pytest.fixture
def channel(rabbitmq: RabbitMQServer) -> Iterator[BlockingChannel]:
    conn = rabbitmq.connect()
    try:
        yield conn.channel()
    finally:
        conn.close()


@pytest.fixture
def queue(rabbitmq: RabbitMQServer) -> str:
    """A fresh durable queue bound to amq.topic for serf.#: what the sinks publish to."""
    return rabbitmq.new_events_queue("e2e")


def _sinks(redis_url: str, amqp_url: str, *, once: bool) -> str:
    flag = "once = true\n" if once else ""
    return (
        f'[[sinks]]\ntype = "redis"\nname = "stream"\nurl = "{redis_url}"\n{flag}'
        f'[[sinks]]\ntype = "amqp"\nname = "rabbit"\nurl = "{amqp_url}"\n'
        f'routing_key = "serf.{{event}}.{{node}}"\n{flag}'
    )


class Collected:
    """Messages drained from a queue so far (draining removes them from the broker)."""

    def __init__(self, rabbitmq: RabbitMQServer, queue: str) -> None:
        self.rabbitmq, self.queue = rabbitmq, queue
        self.messages: list[tuple[Any, bytes]] = []

    def docs(self) -> list[dict[str, Any]]:
        self.messages += self.rabbitmq.drain(self.queue)
        return [json.loads(body) for _, body in self.messages]


def test_every_event_type_reaches_rabbitmq_as_redis(
    serf_cluster: SerfClusterFactory,
    serfbridge_handler: str,
    tmp_path: Path,
    redis_server: RedisServer,
    rabbitmq: RabbitMQServer,
    queue: str,
) -> None:
    """join, user, query, update, leave, failed and reap: the queue holds the same documents
    as the Redis stream, each a persistent JSON message whose message_id is the document id."""
    sinks = _sinks(redis_server.url, rabbitmq.url(), once=False)
    got = Collected(rabbitmq, queue)
    with every_event_type(serf_cluster, serfbridge_handler, tmp_path, sinks) as (_, nodes):

        def complete() -> bool:
            in_redis = {d["event"] for d in redis_server.event_docs()}
            in_rabbit = {d["event"] for d in got.docs()}
            return in_redis >= TYPES and in_rabbit >= TYPES

        wait_for(complete, timeout=60, what="all seven event types in Redis and RabbitMQ")
        # Let every deliverer finish what it still holds before comparing the two sinks.
        wait_for(
            lambda: all(not spool_files(n, "queue") for n in nodes.values()),
            timeout=30,
            what="every spool to drain",
        )
        time.sleep(1.0)
    rabbit_docs = got.docs()

    def canonical(docs: list[dict[str, Any]]) -> list[str]:
        return sorted(json.dumps(d, sort_keys=True) for d in docs)

    # The same documents, each as many times (every node forwards its own copy).
    assert canonical(rabbit_docs) == canonical(redis_server.event_docs())
    for props, body in got.messages:
        doc = json.loads(body)
        assert props.message_id == doc["id"]
        assert props.delivery_mode == 2
        assert props.content_type == "application/json"
    assert {d["node"]["name"] for d in by(rabbit_docs, "user")} == set(NAMES)  # once is off


def test_once_lands_each_event_once(
    serf_cluster: SerfClusterFactory,
    serfbridge_handler: str,
    tmp_path: Path,
    redis_server: RedisServer,
    rabbitmq: RabbitMQServer,
    queue: str,
) -> None:
    """once = true: one user event and one member-failed (from a survivor) in the queue."""
    sinks = _sinks(redis_server.url, rabbitmq.url(), once=True)
    got = Collected(rabbitmq, queue)
    run_once(serf_cluster, serfbridge_handler, tmp_path, sinks, lambda event: by(got.docs(), event))
    docs = got.docs()
    assert len(by(docs, "user")) == 1
    assert len(by(redis_server.event_docs(), "user")) == 1
    failed = by(docs, "member-failed")
    assert len(failed) == 1
    assert failed[0]["members"][0]["name"] == "n3"
    assert failed[0]["node"]["name"] in {"n1", "n2"}


# -- relay source -----------------------------------------------------------------------------


class RelayEnv(RelayCluster):
    def __init__(self, *cluster: Any, queue: str) -> None:
        super().__init__(*cluster)
        self.queue = queue


@pytest.fixture
def relay_env(
    serf_cluster: SerfClusterFactory,
    serfbridge_cmd: list[str],
    serfbridge_handler: str,
    tmp_path: Path,
    rabbitmq: RabbitMQServer,
) -> Iterator[RelayEnv]:
    queue = f"relay-in-{uuid.uuid4().hex[:6]}"
    sources = (
        f'[[sources]]\ntype = "amqp"\nurl = "{rabbitmq.url()}"\nqueue = "{queue}"\n'
        f'dead_letter = "{queue}.dead"\nallow_events = ["deploy"]\nallow_queries = ["load"]\n'
        f"prefetch = {PREFETCH}\n"
        f'[[sources]]\ntype = "amqp"\nname = "signed"\nurl = "{rabbitmq.url()}"\n'
        f'queue = "{queue}.signed"\ndead_letter = "{queue}.dead"\nallow_events = ["deploy"]\n'
        f'hmac_key = "{HMAC_KEY}"\nrequire_signature = true\n'
        f'[[sources]]\ntype = "amqp"\nname = "token"\nurl = "{rabbitmq.url()}"\n'
        f'queue = "{queue}.token"\ndead_letter = "{queue}.dead"\nallow_events = ["deploy"]\n'
        f'token = "{TOKEN}"\n'
    )
    make = partial(RelayEnv, queue=queue)
    with relay_cluster(
        serf_cluster, serfbridge_cmd, serfbridge_handler, tmp_path, sources, make,
        ready=("amqp source consuming", 3),
    ) as env:  # fmt: skip
        yield env


def _publish(channel: BlockingChannel, queue: str, msg: dict[str, Any], **props: Any) -> None:
    channel.basic_publish("", queue, json.dumps(msg).encode(), pika.BasicProperties(**props))


def test_amqp_event_raises_on_every_node(relay_env: RelayEnv, channel: BlockingChannel) -> None:
    """A message on the queue raises the user event on every node; it is acked (queue empty)."""
    _publish(channel, relay_env.queue, {"type": "event", "name": "deploy", "payload": "via-amqp"})
    relay_env.seen_everywhere("via-amqp")
    wait_for(
        lambda: channel.queue_declare(relay_env.queue, passive=True).method.message_count == 0,
        timeout=10,
        what="the message to be acknowledged",
    )
    assert relay_env.metric("serfbridge_relay_messages_out_total", source="amqp", type="event")
    assert relay_env.metric("serfbridge_relay_source_up", source="amqp") == 1


def test_amqp_rpc_query_gets_every_answer(relay_env: RelayEnv, rabbitmq: RabbitMQServer) -> None:
    """The RabbitMQ RPC pattern: an exclusive reply queue as reply_to and a correlation_id;
    the reply carries every node's response and the request's correlation_id."""
    conn = rabbitmq.connect()
    # A first event warms every node's handler (config cache), so answers come in time.
    _publish(conn.channel(), relay_env.queue, {"type": "event", "name": "deploy", "payload": "w"})
    relay_env.seen_everywhere("w")
    try:
        ch = conn.channel()
        reply_queue = ch.queue_declare("", exclusive=True).method.queue
        replies: list[tuple[Any, bytes]] = []
        ch.basic_consume(reply_queue, lambda _c, _m, p, b: replies.append((p, b)), auto_ack=True)
        query = {"type": "query", "name": "load", "payload": "r1", "timeout": 3}
        _publish(ch, relay_env.queue, query, reply_to=reply_queue, correlation_id="corr-7")
        deadline = time.monotonic() + 20
        while not replies and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.2)
    finally:
        conn.close()
    assert replies, "no RPC reply within 20 s"
    ((props, body),) = replies
    assert props.correlation_id == "corr-7"
    assert props.content_type == "application/json"
    reply = json.loads(body)
    assert reply["complete"] is True
    assert sorted(reply["acks"]) == NAMES
    assert reply["responses"] == {n: f"load from {n} payload=r1" for n in NAMES}


def test_amqp_refused_messages_are_dead_lettered(
    relay_env: RelayEnv, rabbitmq: RabbitMQServer, channel: BlockingChannel
) -> None:
    """Not allowed and malformed messages go to dead_letter with their reason, are acked,
    counted, and raise nothing."""
    channel.queue_declare(relay_env.queue + ".dead", durable=True)
    _publish(channel, relay_env.queue, {"type": "event", "name": "rm-rf", "payload": "x"})
    channel.basic_publish("", relay_env.queue, b"{not json")
    _publish(channel, relay_env.queue, {"type": "event", "name": "deploy", "payload": "after"})
    relay_env.seen_everywhere("after")
    dead: list[dict[str, Any]] = []

    def two_dead() -> bool:
        dead.extend(rabbitmq.docs(relay_env.queue + ".dead"))
        return len(dead) >= 2

    wait_for(two_dead, timeout=10, what="two dead letters")
    assert sorted(d["reason"] for d in dead) == ["malformed", "not_allowed"]
    assert relay_env.metric(
        "serfbridge_relay_messages_rejected_total", source="amqp", reason="not_allowed"
    )
    for node in relay_env.nodes.values():
        assert not [e for e in node.events() if e.get("name") == "rm-rf"]


def test_amqp_holds_messages_unacked_while_serf_is_down(
    relay_env: RelayEnv, channel: BlockingChannel
) -> None:
    """The relay's agent is killed: the relay takes only `prefetch` messages off the queue and
    acknowledges none of them; the agent comes back: every message is raised on every node."""
    agent = relay_env.cluster[0]
    agent.kill9()
    payloads = [f"held-{i}" for i in range(8)]
    for payload in payloads:
        _publish(channel, relay_env.queue, {"type": "event", "name": "deploy", "payload": payload})

    def ready() -> int:
        return int(channel.queue_declare(relay_env.queue, passive=True).method.message_count)

    wait_for(
        lambda: relay_env.metric(
            "serfbridge_relay_messages_rejected_total", source="amqp", reason="serf_unavailable"
        ),
        timeout=20,
        what="the relay to find Serf unavailable",
    )
    time.sleep(2.0)  # a relay that acked or over-fetched would have taken more by now
    assert ready() == len(payloads) - PREFETCH
    agent.start()
    agent.serf("join", relay_env.cluster[1].bind_addr, check=True)
    relay_env.cluster.wait_converged()
    for payload in payloads:
        relay_env.seen_everywhere(payload, timeout=60)
    wait_for(lambda: ready() == 0, timeout=20, what="the queue to drain")


def test_amqp_authentication_by_headers(
    relay_env: RelayEnv, rabbitmq: RabbitMQServer, channel: BlockingChannel
) -> None:
    """Signature headers (X-Serfbridge-Timestamp/-Signature) and a token header go through the
    same checks as on HTTP: valid ones raise the event, the rest are dead-lettered by reason."""
    signed, tokened = relay_env.queue + ".signed", relay_env.queue + ".token"
    dead_queue = relay_env.queue + ".dead"
    channel.queue_declare(dead_queue, durable=True)

    def event(payload: str) -> bytes:
        return json.dumps({"type": "event", "name": "deploy", "payload": payload}).encode()

    def send(queue: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        channel.basic_publish("", queue, body, pika.BasicProperties(headers=headers))

    stamp = str(int(time.time()))
    good = event("signed-ok")
    send(
        signed,
        good,
        {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(HMAC_KEY.encode(), stamp, good)},
    )
    send(signed, event("unsigned"))
    forged = event("forged")
    send(signed, forged, {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(b"other", stamp, forged)})
    send(tokened, event("token-ok"), {"token": TOKEN})
    send(tokened, event("token-bad"), {"token": "nope"})
    relay_env.seen_everywhere("signed-ok")
    relay_env.seen_everywhere("token-ok")
    dead: list[dict[str, Any]] = []

    def three_dead() -> bool:
        dead.extend(rabbitmq.docs(dead_queue))
        return len(dead) >= 3

    wait_for(three_dead, timeout=15, what="three dead letters")
    reasons = sorted((json.loads(d["data"])["payload"], d["reason"]) for d in dead)
    assert reasons == [
        ("forged", "bad_signature"),
        ("token-bad", "unauthorized"),
        ("unsigned", "unauthorized"),
    ]
    for node in relay_env.nodes.values():
        payloads = {e["payload"] for e in node.events()}
        assert not payloads & {"unsigned", "forged", "token-bad"}
