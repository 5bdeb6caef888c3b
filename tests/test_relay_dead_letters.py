"""Every broker source dead-letters a message it cannot turn into a Serf call the same way:
``reason``, ``error``, ``data`` cut to ``dead_max_data`` bytes, ``data_bytes`` (its full
length) and where it came from, checked against mosquitto, nats-server, RabbitMQ and
redis-server with one running relay."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis
from support.mqttclient import MqttPeer
from support.ports import wait_for
from support.relay import RelayProcess

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from nats.aio.client import Client
    from support.nats import NatsServer
    from support.rabbitmq import RabbitMQServer
    from support.serf import SerfAgent
    from support.servers import Mosquitto, RedisServer

pytestmark = pytest.mark.e2e
CAP = 64
#: Undecodable (not JSON) and far over the cap: 1000 bytes.
BODY = b"{" + b"x" * 999
ALLOW = 'allow_events = ["deploy"]\n'


class Setup:
    def __init__(
        self,
        mosquitto: Mosquitto,
        nats: NatsServer,
        rabbitmq: RabbitMQServer,
        redis_server: RedisServer,
        queue: str,
    ) -> None:
        self.mosquitto, self.nats, self.rabbitmq = mosquitto, nats, rabbitmq
        self.redis, self.queue = redis_server, queue


@pytest.fixture
def setup(
    agent: SerfAgent,
    mosquitto: Mosquitto,
    nats_server: NatsServer,
    rabbitmq: RabbitMQServer,
    redis_server: RedisServer,
    serfbridge_cmd: list[str],
    tmp_path: Path,
) -> Iterator[Setup]:
    queue = f"dead-in-{uuid.uuid4().hex[:6]}"
    conn = rabbitmq.connect()
    try:  # the relay publishes to the default exchange: the queue must be there first
        conn.channel().queue_declare(queue + ".dead", durable=True)
    finally:
        conn.close()
    cap = f"dead_max_data = {CAP}\n"
    body = (
        f'[[sources]]\ntype = "mqtt"\nurl = "{mosquitto.url}"\ntopic = "in"\n'
        f'dead_letter = "dead"\n{cap}{ALLOW}'
        f'[[sources]]\ntype = "nats"\nurl = "{nats_server.url}"\nsubject = "serf.in"\n'
        f'dead_letter = "serf.dead"\n{cap}{ALLOW}'
        f'[[sources]]\ntype = "amqp"\nurl = "{rabbitmq.url()}"\nqueue = "{queue}"\n'
        f'dead_letter = "{queue}.dead"\n{cap}{ALLOW}'
        f'[[sources]]\ntype = "redis"\nurl = "{redis_server.url}"\nstream = "serf:in"\n'
        f"{cap}{ALLOW}"
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    with relay:
        relay.start()
        wait_for(
            lambda: all(
                line in relay.log_text(current_run=True)
                for line in ("mqtt source subscribed", "nats source reading",
                             "amqp source consuming")
            ),
            30,
            what="the broker sources to read",
            detail=relay.log_tail,
        )  # fmt: skip
        yield Setup(mosquitto, nats_server, rabbitmq, redis_server, queue)
    assert "Traceback" not in relay.log_text()


def _assert_cut(letter: dict[str, Any], **where: str) -> None:
    """The one shape of a dead letter; ``where``: the source's own key, if it has one."""
    assert set(letter) == {*where, "reason", "error", "data", "data_bytes"}
    assert {k: letter[k] for k in where} == where
    assert letter["reason"] == "malformed"
    assert letter["error"]
    assert letter["data"] == BODY[:CAP].decode()
    assert int(letter["data_bytes"]) == len(BODY)


def test_mqtt_dead_letter_is_cut(setup: Setup) -> None:
    peer = MqttPeer(setup.mosquitto.port, subscribe="dead")
    try:
        peer.publish("in", BODY)
        got = wait_for(peer.received, 20, what="the MQTT dead letter")
    finally:
        peer.close()
    ((topic, data, _props),) = got
    assert topic == "dead"
    _assert_cut(json.loads(data), topic="in")


def test_nats_dead_letter_is_cut(setup: Setup) -> None:
    async def work(client: Client) -> Any:
        dead = await client.subscribe("serf.dead")
        await client.flush()
        await client.publish("serf.in", BODY)
        letter = await dead.next_msg(timeout=20)
        return json.loads(letter.data)

    _assert_cut(setup.nats.call(work), subject="serf.in")


def test_amqp_dead_letter_is_cut(setup: Setup) -> None:
    conn = setup.rabbitmq.connect()
    try:
        conn.channel().basic_publish("", setup.queue, BODY)
    finally:
        conn.close()
    dead: list[dict[str, Any]] = []

    def one() -> bool:
        dead.extend(setup.rabbitmq.docs(setup.queue + ".dead"))
        return bool(dead)

    wait_for(one, 20, what="the AMQP dead letter")
    (letter,) = dead
    _assert_cut(letter)  # where from: the source's queue, so no key of its own


def test_redis_dead_letter_is_cut(setup: Setup) -> None:
    client = redis.Redis.from_url(setup.redis.url, decode_responses=True)
    entry = client.xadd("serf:in", {"data": BODY})
    got: Any = wait_for(lambda: client.xrange("serf:in:dead"), 20, what="the Redis dead letter")
    ((_, letter),) = got
    _assert_cut(letter, entry=str(entry))


def test_amqp_source_waits_for_a_missing_dead_letter_queue(
    agent: SerfAgent, rabbitmq: RabbitMQServer, serfbridge_cmd: list[str], tmp_path: Path
) -> None:
    """The broker drops a message published to the default exchange for a queue that does
    not exist, without a word: a refused message acked after such a publish is lost. The
    source consumes only while its dead-letter queue is there."""
    queue = f"dl-missing-{uuid.uuid4().hex[:6]}"
    conn = rabbitmq.connect()
    try:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True)
        channel.basic_publish("", queue, BODY)
    finally:
        conn.close()
    body = (
        f'[[sources]]\ntype = "amqp"\nurl = "{rabbitmq.url()}"\nqueue = "{queue}"\n'
        f'declare = false\ndead_letter = "{queue}.dead"\n{ALLOW}'
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    with relay:
        relay.start()
        wait_for(
            lambda: f"{queue}.dead" in relay.log_text(current_run=True),
            30,
            what="the relay to name the missing dead-letter queue",
            detail=relay.log_tail,
        )
        conn = rabbitmq.connect()
        try:
            channel = conn.channel()
            waiting = channel.queue_declare(queue, passive=True).method.message_count
            assert waiting == 1, "the refused message left its queue with nowhere to go"
            channel.queue_declare(queue + ".dead", durable=True)
        finally:
            conn.close()
        dead: list[dict[str, Any]] = []

        def one() -> bool:
            dead.extend(rabbitmq.docs(queue + ".dead"))
            return bool(dead)

        wait_for(one, 40, what="the dead letter once its queue exists", detail=relay.log_tail)
        (letter,) = dead
        assert letter["reason"] == "malformed"
        assert letter["data"] == BODY.decode()
    assert "Traceback" not in relay.log_text()
