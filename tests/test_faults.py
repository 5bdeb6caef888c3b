"""Outages of the real servers while 500 events flow: every event arrives after the restart."""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

import pytest
import redis
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from support.bridge import BridgeNode
from support.handler import fire_user
from support.ports import LOOPBACK, wait_for
from support.servers import Mosquitto

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from support.servers import HttpReceiver, RedisServer

pytestmark = pytest.mark.e2e

EVENTS = 500
STOP_AT, START_AT = 100, 300
# Fast retries, and enough of them that an outage can't exhaust max_attempts (which would
# dead-letter the head event: kept, but not delivered, so the count would come up short).
FAST = "[delivery]\nlinger = 2\nbackoff_initial = 0.05\nbackoff_max = 0.5\nmax_attempts = 100000\n"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[BridgeNode]:
    bridge = BridgeNode(tmp_path, "n1")
    yield bridge
    bridge.kill_deliverer()


def _missing(node: BridgeNode, seen: set[int]) -> str:
    """What a failure report needs: the ltimes not seen, what is left in the spool, the log."""
    missing = sorted(set(range(1, EVENTS + 1)) - seen)
    spooled = sorted(str(p.relative_to(node.state)) for p in node.state.rglob("*.json"))
    return f"missing: {missing}\nspool: {spooled[:20]}\n{node.log_tail()}"


def _flow(
    cmd: list[str], node: BridgeNode, stop: Callable[[], None], start: Callable[[], None]
) -> None:
    """Fire EVENTS user events one at a time, as Serf does, with an outage in the middle."""
    for ltime in range(1, EVENTS + 1):
        if ltime == STOP_AT:
            stop()
        if ltime == START_AT:
            start()
        fire_user(cmd, node, "flow", ltime, b"x")


def test_webhook_receiver_outage_loses_nothing(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """HTTP receiver stopped for 200 of 500 events, then restarted on the same port."""
    node.write_config(
        f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{http_receiver.url}"\ntimeout = 1\n'
        + FAST
    )

    def restart() -> None:
        http_receiver.start()

    _flow(serfbridge_cmd, node, http_receiver.stop, restart)

    def got() -> set[int]:
        return {r.json()["ltime"] for r in http_receiver.requests if r.status == 200}

    wait_for(
        lambda: len(got()) == EVENTS,
        timeout=90,
        what="500 events at the receiver",
        detail=lambda: _missing(node, got()),
    )
    assert got() == set(range(1, EVENTS + 1))


def test_redis_outage_loses_nothing(
    node: BridgeNode, redis_server: RedisServer, serfbridge_cmd: list[str]
) -> None:
    """redis-server stopped for 200 of 500 events, then restarted: the stream has all 500."""
    node.write_config(
        f'[[sinks]]\ntype = "redis"\nname = "stream"\nurl = "{redis_server.url}"\n'
        'stream = "serf:flow"\ntimeout = 1\n' + FAST
    )
    entries: dict[int, str] = {}

    def drain() -> None:
        # The test server keeps nothing on disk: read what landed before stopping it.
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        flow: list[tuple[str, dict[str, str]]] = client.xrange("serf:flow")  # type: ignore[assignment]
        for _, fields in flow:
            entries[json.loads(fields["data"])["ltime"]] = fields["id"]
        client.close()

    def stop() -> None:
        wait_for(lambda: _count(redis_server.url) >= STOP_AT - 1, 30, what="first 99 entries")
        drain()
        redis_server.stop()

    _flow(serfbridge_cmd, node, stop, redis_server.start)

    def complete() -> bool:
        drain()
        return len(entries) == EVENTS

    wait_for(
        complete,
        timeout=90,
        what="500 entries in the stream",
        detail=lambda: _missing(node, set(entries)),
    )
    assert set(entries) == set(range(1, EVENTS + 1))


class DurableSubscriber:
    """An MQTT 3.1.1 subscriber with a persistent session (clean_session=False, fixed id).

    While it is away (broker stopped), a persistent broker keeps its subscription and queues
    QoS 1 messages for it; it reconnects on its own and receives them, so what it records is
    what the broker accepted, across the outage.
    """

    def __init__(self, port: int, topic: str) -> None:
        self.ltimes: set[int] = set()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = Client(
            CallbackAPIVersion.VERSION2,
            client_id="outage-subscriber",
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        self.client.on_message = lambda _c, _u, msg: self._add(msg)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.reconnect_delay_set(1, 1)
        self.client.connect(LOOPBACK, port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "no SUBACK from the broker"

    def _add(self, msg: MQTTMessage) -> None:
        with self._lock:
            self.ltimes.add(json.loads(msg.payload)["ltime"])

    def count(self) -> int:
        with self._lock:
            return len(self.ltimes)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_broker_outage_loses_nothing(
    node: BridgeNode, tmp_path: Path, serfbridge_cmd: list[str]
) -> None:
    """mosquitto stopped for 200 of 500 events, then restarted: the subscriber gets all 500."""
    broker = Mosquitto(tmp_path / "broker", persistent=True)
    broker.start()
    subscriber = DurableSubscriber(broker.port, "serf/#")
    try:
        node.write_config(
            f'[[sinks]]\ntype = "mqtt"\nname = "bus"\nurl = "{broker.url}"\n'
            'topic = "serf/{event}/{name}"\nqos = 1\ntimeout = 1\n' + FAST
        )

        def stop() -> None:
            wait_for(lambda: subscriber.count() >= STOP_AT - 1, 30, what="first 99 messages")
            broker.stop()

        _flow(serfbridge_cmd, node, stop, broker.start)
        wait_for(
            lambda: subscriber.count() == EVENTS,
            timeout=90,
            what="500 MQTT messages",
            detail=lambda: _missing(node, subscriber.ltimes),
        )
        assert subscriber.ltimes == set(range(1, EVENTS + 1))
    finally:
        subscriber.close()
        broker.stop()


def _count(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.xlen("serf:flow"))
    except redis.exceptions.ConnectionError:
        return 0
    finally:
        client.close()
