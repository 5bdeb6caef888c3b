"""The Redis source against a running relay, a real agent and redis-server: a long query
does not hold up the entries behind it, refused entries are named and dead-lettered within
bounds, and an event with reply_to is acknowledged there."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis
from support.ports import wait_for
from support.relay import RelayProcess, Watcher

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.serf import SerfAgent
    from support.servers import RedisServer

pytestmark = pytest.mark.e2e
STREAM = "serf:in"


class Setup:
    def __init__(self, relay: RelayProcess, client: redis.Redis, watch: Watcher) -> None:
        self.relay, self.client, self.watch = relay, client, watch

    def add(self, fields: dict[str, Any]) -> Any:
        return self.client.xadd(STREAM, fields)  # type: ignore[arg-type]

    def dead(self) -> list[Any]:
        entries: Any = self.client.xrange(f"{STREAM}:dead")
        return [f for _, f in entries]


@pytest.fixture
def setup(
    agent: SerfAgent, watcher: Watcher, redis_server: RedisServer, serfbridge_cmd: list[str],
    tmp_path: Path,
) -> Iterator[Setup]:  # fmt: skip
    body = (
        f'[[sources]]\ntype = "redis"\nurl = "{redis_server.url}"\nstream = "{STREAM}"\n'
        'allow_events = ["deploy"]\nallow_queries = ["slow"]\nrate = 100000\nburst = 100000\n'
        "dead_maxlen = 100\ndead_max_data = 64\n"
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    relay.log_level = "info"
    client = redis.Redis.from_url(redis_server.url)
    with relay:
        relay.start()
        yield Setup(relay, client, watcher)
    assert "Traceback" not in relay.log_text()


def test_a_long_query_does_not_hold_up_later_entries(setup: Setup) -> None:
    """A 5 s query, then an event: the event reaches Serf while the query still runs (its
    reply is not written yet). One entry at a time, it came 5.35 s later, after the reply."""
    query = {"type": "query", "name": "slow", "timeout": 5, "reply_to": "replies"}
    setup.add({"data": json.dumps(query)})
    time.sleep(0.2)  # the query is in Serf
    setup.add({"data": json.dumps({"type": "event", "name": "deploy", "payload": "behind"})})
    wait_for(lambda: b"behind" in setup.watch.payloads(), 15, what="the event behind the query")
    assert setup.client.xlen("replies") == 0, "the event waited for the query"
    wait_for(lambda: setup.client.xlen("replies") == 1, 15, what="the query's reply")
    replies: Any = setup.client.xrange("replies")
    ((_, fields),) = replies
    assert json.loads(fields[b"data"])["name"] == "slow"
    wait_for(lambda: setup.client.xpending(STREAM, "serfbridge")["pending"] == 0, 10,
             what="both acknowledged")  # fmt: skip


def test_entry_without_data_is_named_as_such(setup: Setup) -> None:
    """No `data` field: the dead letter says so (it said "not valid JSON")."""
    setup.add({"payload": "v2", "name": "deploy"})
    wait_for(setup.dead, 10, what="the dead letter")
    (dead,) = setup.dead()
    assert dead[b"reason"] == b"malformed"
    assert b"no 'data' field" in dead[b"error"]
    assert b"JSON" not in dead[b"error"]


def test_dead_letters_are_bounded(setup: Setup) -> None:
    """dead_maxlen = 100 (MAXLEN ~) and dead_max_data = 64: 400 refused entries of 10 kB
    each leave a trimmed dead stream of cut bodies, each with its original length."""
    pipe = setup.client.pipeline(transaction=False)
    big = json.dumps({"type": "event", "name": "nope", "payload": "x" * 10_000})
    for _ in range(400):
        pipe.xadd(STREAM, {"data": big})
    pipe.execute()
    wait_for(lambda: setup.client.xpending(STREAM, "serfbridge")["pending"] == 0
             and setup.client.xinfo_groups(STREAM)[0]["lag"] == 0, 30,
             what="every entry handled")  # fmt: skip
    dead = setup.dead()
    # "~" trims whole macro nodes (100 entries each here), so a little over the bound stays.
    assert len(dead) <= 200, len(dead)
    assert all(len(d[b"data"]) == 64 for d in dead)
    assert all(int(d[b"data_bytes"]) == len(big) for d in dead)


def test_event_with_reply_to_is_acknowledged(setup: Setup) -> None:
    setup.add({"data": json.dumps({"type": "event", "name": "deploy", "payload": "ack-me",
                                   "reply_to": "acks"})})  # fmt: skip
    wait_for(lambda: setup.client.xlen("acks") == 1, 10, what="the acknowledgement")
    acks: Any = setup.client.xrange("acks")
    ((_, fields),) = acks
    assert json.loads(fields[b"data"]) == {"accepted": True}
