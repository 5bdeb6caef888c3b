"""The frozen Linux builds speak AMQP: pika is frozen in, for the sink and the relay source.

Run after `installers/linux/build.sh`: `pytest --artifacts -m artifact` (docs/building.md).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

import pika
import pytest
from support.artifacts import LINUX_BUILDS as BUILDS
from support.bridge import BridgeNode
from support.handler import fire_user, serfbridge
from support.ports import wait_for
from support.relay import RelayProcess

if TYPE_CHECKING:
    from pathlib import Path

    from support.rabbitmq import RabbitMQServer
    from support.relay import Watcher
    from support.serf import SerfAgent

pytestmark = pytest.mark.artifact


@pytest.mark.parametrize("rel", BUILDS)
def test_frozen_build_publishes_to_rabbitmq(
    linux_dist: Path, tmp_path: Path, rabbitmq: RabbitMQServer, rel: str
) -> None:
    """Each build, run as Serf's handler, spools the event; its deliverer publishes it, and
    `check --connect` reaches the broker."""
    binary = [str(linux_dist / rel)]
    queue = rabbitmq.new_events_queue("art")
    node = BridgeNode(tmp_path, "n1")
    node.write_config(
        f'[[sinks]]\ntype = "amqp"\nname = "rabbit"\nurl = "{rabbitmq.url()}"\n'
        "[delivery]\nlinger = 1\n"
    )
    try:
        fire_user(binary, node, "deploy", 7, b"frozen")
        got: list[dict[str, object]] = []

        def arrived() -> bool:
            got.extend(rabbitmq.docs(queue))
            return bool(got)

        wait_for(
            arrived, timeout=60, what="the message from the frozen deliverer", detail=node.log_tail
        )
    finally:
        node.kill_deliverer()
    (doc,) = got
    assert (doc["event"], doc["name"], doc["payload"]) == ("user", "deploy", "frozen")
    check = serfbridge(binary, node, "check", "--connect")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "sink rabbit: type=amqp" in check.stdout
    assert ": reachable" in check.stdout


def test_frozen_relay_consumes_a_queue(
    linux_dist: Path,
    tmp_path: Path,
    rabbitmq: RabbitMQServer,
    agent: SerfAgent,
    watcher: Watcher,
) -> None:
    """The frozen relay's amqp source raises a message from the queue as a user event."""
    queue = f"art-in-{uuid.uuid4().hex[:6]}"
    body = (
        f'[[sources]]\ntype = "amqp"\nurl = "{rabbitmq.url()}"\nqueue = "{queue}"\n'
        'allow_events = ["deploy"]\n'
    )
    relay = RelayProcess(
        tmp_path / "relay", [str(linux_dist / BUILDS[0])], body, rpc_addr=agent.rpc_addr
    )
    with relay:
        relay.start()
        wait_for(
            lambda: "amqp source consuming" in relay.log_text(),
            timeout=30,
            what="the frozen relay to consume",
            detail=relay.log_tail,
        )
        conn = rabbitmq.connect()
        try:
            msg = {"type": "event", "name": "deploy", "payload": "from-frozen-relay"}
            conn.channel().basic_publish("", queue, json.dumps(msg), pika.BasicProperties())
        finally:
            conn.close()
        wait_for(
            lambda: b"from-frozen-relay" in watcher.payloads(),
            timeout=30,
            what="the event in Serf",
        )
    assert "Traceback" not in relay.log_text()
