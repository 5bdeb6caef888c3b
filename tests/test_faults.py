"""Outages of the real servers while 500 events flow: every event arrives after the restart."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import redis
from support.bridge import BridgeNode
from support.handler import fire_user
from support.ports import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from support.servers import HttpReceiver, RedisServer

pytestmark = pytest.mark.e2e

EVENTS = 500
STOP_AT, START_AT = 100, 300
# max_attempts: the outage lasts 200 handler runs, seconds longer on a loaded machine; the
# test is about losing nothing across it, not about giving up (25 attempts = ~11 s here).
FAST = "[delivery]\nlinger = 2\nbackoff_initial = 0.05\nbackoff_max = 0.5\nmax_attempts = 1000\n"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[BridgeNode]:
    bridge = BridgeNode(tmp_path, "n1")
    yield bridge
    bridge.kill_deliverer()


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

    wait_for(lambda: len(got()) == EVENTS, timeout=90, what="500 events at the receiver")
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

    wait_for(complete, timeout=90, what="500 entries in the stream")
    assert set(entries) == set(range(1, EVENTS + 1))


def _count(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.xlen("serf:flow"))
    except redis.exceptions.ConnectionError:
        return 0
    finally:
        client.close()
