"""A real 3-node cluster whose serfbridge handlers forward to NATS JetStream (and Redis, to
compare with), and a nats-server outage while 500 events flow."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from support.bridge import BridgeNode
from support.handler import fire_user, spool_files
from support.nats import Collector
from support.ports import wait_for
from support.sinkcluster import TYPES, by, every_event_type, run_once

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.nats import NatsServer
    from support.serf import SerfClusterFactory
    from support.servers import RedisServer

pytestmark = pytest.mark.e2e

STREAM = "SERF"


def _sinks(nats_url: str, redis_url: str, *, once: bool) -> str:
    flag = "once = true\n" if once else ""
    return (
        f'[[sinks]]\ntype = "redis"\nname = "stream"\nurl = "{redis_url}"\n'
        f'stream = "serf:events"\n{flag}'
        f'[[sinks]]\ntype = "nats"\nname = "js"\nurl = "{nats_url}"\n'
        f'subject = "serf.{{event}}.{{node}}"\nstream = "{STREAM}"\n{flag}'
    )


@pytest.fixture
def stream(nats_server: NatsServer) -> Iterator[Collector]:
    """The stream the sinks publish to, and a subscriber that sees every copy sent to it."""
    nats_server.add_stream(STREAM, ["serf.>"], duplicate_window=120.0)
    collector = Collector(nats_server.url, "serf.>")
    yield collector
    collector.close()


def test_every_event_type_reaches_jetstream_once(
    serf_cluster: SerfClusterFactory,
    serfbridge_handler: str,
    tmp_path: Path,
    nats_server: NatsServer,
    redis_server: RedisServer,
    stream: Collector,
) -> None:
    """join, user, query, update, leave, failed and reap reach the stream as they reach
    Redis; every node forwards each member event, and the stream keeps each id once."""
    sinks = _sinks(nats_server.url, redis_server.url, once=False)
    with every_event_type(serf_cluster, serfbridge_handler, tmp_path, sinks):

        def complete() -> bool:
            redis_ids = {d["id"] for d in redis_server.event_docs()}
            nats_ids = {d["id"] for d in nats_server.event_docs(STREAM)}
            return {d["event"] for d in redis_server.event_docs()} >= TYPES and (
                redis_ids == nats_ids
            )

        wait_for(complete, timeout=60, what="all seven event types in Redis and JetStream")
        time.sleep(2.0)  # late copies from other nodes would land within this
        # Reaps come one by one: wait until both sinks have settled on the same events.
        wait_for(complete, timeout=30, what="Redis and JetStream holding the same events")
    stored = nats_server.event_docs(STREAM)
    assert {d["event"] for d in stored} == TYPES
    assert {d["id"] for d in stored} == {d["id"] for d in redis_server.event_docs()}
    ids = Counter(d["id"] for d in stored)
    assert max(ids.values()) == 1, ids
    # The dedupe did work: several nodes sent the same event. The user event is the one
    # that is sure to be copied (every node forwards it under the same id); member events
    # are coalesced per node, so two nodes' leave or failure can list different members and
    # get different ids.
    sent = Counter(d["id"] for d in stream.docs())
    copied = {d["event"] for d in stored if sent[d["id"]] > 1}
    assert "user" in copied, sent
    headers = [h for _, h, _ in stream.messages]
    assert all(h["Nats-Msg-Id"] for h in headers)


def test_once_sends_each_event_from_one_node(
    serf_cluster: SerfClusterFactory,
    serfbridge_handler: str,
    tmp_path: Path,
    nats_server: NatsServer,
    redis_server: RedisServer,
    stream: Collector,
) -> None:
    """once = true: one node publishes the user event and the member-failed of a killed node
    (counted before JetStream's dedupe, by a subscriber)."""
    sinks = _sinks(nats_server.url, redis_server.url, once=True)
    run_once(
        serf_cluster, serfbridge_handler, tmp_path, sinks, lambda event: by(stream.docs(), event)
    )
    assert len(by(stream.docs(), "user")) == 1
    failed = by(stream.docs(), "member-failed")
    assert len(failed) == 1
    assert failed[0]["node"]["name"] in {"n1", "n2"}
    assert len(by(nats_server.event_docs(STREAM), "user")) == 1


# -- outage -------------------------------------------------------------------------------------

EVENTS = 500
STOP_AT, START_AT = 100, 300
OUTAGE = (
    "[delivery]\nlinger = 2\nbackoff_initial = 0.05\nbackoff_max = 0.5\nmax_attempts = 100000\n"
)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[BridgeNode]:
    bridge = BridgeNode(tmp_path, "n1")
    yield bridge
    bridge.kill_deliverer()


def test_nats_outage_loses_nothing(
    node: BridgeNode, nats_server: NatsServer, serfbridge_cmd: list[str]
) -> None:
    """nats-server stopped for 200 of 500 events, then restarted: the stream has all 500,
    each once."""
    nats_server.add_stream("FLOW", ["flow.>"])
    node.write_config(
        f'[[sinks]]\ntype = "nats"\nname = "js"\nurl = "{nats_server.url}"\n'
        'subject = "flow.{name}"\nstream = "FLOW"\ntimeout = 1\n' + OUTAGE
    )

    def count() -> int:
        return len(nats_server.stream_messages("FLOW"))

    for ltime in range(1, EVENTS + 1):
        if ltime == STOP_AT:
            wait_for(lambda: count() >= STOP_AT - 1, 30, what="the first 99 messages")
            nats_server.stop()
        if ltime == START_AT:
            nats_server.start()
        fire_user(serfbridge_cmd, node, "flow", ltime, b"x")

    def ltimes() -> list[int]:
        return [d["ltime"] for d in nats_server.event_docs("FLOW")]

    wait_for(
        lambda: len(ltimes()) >= EVENTS,
        timeout=90,
        what="500 messages in the stream",
        detail=lambda: (
            f"missing: {sorted(set(range(1, EVENTS + 1)) - set(ltimes()))}\n" + node.log_tail()
        ),
    )
    assert sorted(ltimes()) == list(range(1, EVENTS + 1))


def test_refused_event_is_dead_lettered_and_the_rest_flows(
    node: BridgeNode, nats_server: NatsServer, serfbridge_cmd: list[str]
) -> None:
    """A user event whose name makes no valid subject is dead-lettered with its reason; the
    events before and after it are stored."""
    nats_server.add_stream("NAMED", ["named.>"])
    node.write_config(
        f'[[sinks]]\ntype = "nats"\nname = "js"\nurl = "{nats_server.url}"\n'
        'subject = "named.{name}"\nstream = "NAMED"\ntimeout = 1\n' + OUTAGE
    )
    for ltime, name in enumerate(["before", "two words", "after"], start=1):
        fire_user(serfbridge_cmd, node, name, ltime, b"x")
    wait_for(lambda: len(nats_server.stream_messages("NAMED")) >= 2, 30, what="two messages",
             detail=node.log_tail)  # fmt: skip
    dead = wait_for(lambda: spool_files(node, "dead", "js"), 10, what="a dead letter")
    reason = (node.state / "spool" / "dead" / "js" / dead[0]).with_suffix(".reason")
    assert "white space" in reason.read_text()
    assert [d["name"] for d in nats_server.event_docs("NAMED")] == ["before", "after"]
