"""RabbitMQ stopped while 500 events flow through the AMQP sink: all 500 arrive."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from support.bridge import BridgeNode
from support.ports import wait_for
from test_faults import EVENTS, FAST, STOP_AT, _flow, _missing

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.rabbitmq import RabbitMQServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def node(tmp_path: Path) -> Iterator[BridgeNode]:
    bridge = BridgeNode(tmp_path, "n1")
    yield bridge
    bridge.kill_deliverer()


def _ltimes(rabbitmq: RabbitMQServer, queue: str) -> list[int]:
    return [json.loads(body)["ltime"] for _, body in rabbitmq.drain(queue)]


def test_rabbitmq_outage_loses_nothing(
    node: BridgeNode, rabbitmq: RabbitMQServer, serfbridge_cmd: list[str]
) -> None:
    """rabbitmq-server stopped (SIGTERM, a clean shutdown) for 200 of 500 events, then started
    again with the same data directory: the durable queue holds all 500."""
    queue = f"flow-{uuid.uuid4().hex[:6]}"
    conn = rabbitmq.connect()
    try:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, "amq.topic", "flow.#")
    finally:
        conn.close()
    node.write_config(
        f'[[sinks]]\ntype = "amqp"\nname = "rabbit"\nurl = "{rabbitmq.url()}"\n'
        'routing_key = "flow.{event}.{name}"\ntimeout = 1\n' + FAST
    )
    seen: Counter[int] = Counter()

    def count() -> int:
        conn = rabbitmq.connect()
        try:
            return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
        finally:
            conn.close()

    def stop() -> None:
        wait_for(lambda: count() >= STOP_AT - 1, 30, what="first 99 messages")
        rabbitmq.stop()

    _flow(serfbridge_cmd, node, stop, rabbitmq.start)

    def complete() -> bool:
        seen.update(_ltimes(rabbitmq, queue))
        return len(seen) == EVENTS

    wait_for(
        complete,
        timeout=120,
        what="500 messages in the queue",
        detail=lambda: _missing(node, set(seen)),
    )
    assert set(seen) == set(range(1, EVENTS + 1))
    # At least once: a publish cut by the shutdown before its confirm is sent again.
    print(f"duplicates: {sum(seen.values()) - EVENTS}")
