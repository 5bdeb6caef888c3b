"""Issue 15 target 3, stream mode with group commit: a burst raised as fast as the agent takes
it reaches the webhook, Redis and MQTT sinks whole and in order; a spool that cannot be
written holds the records (retried) instead of losing them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
from redis import Redis
from support.bridge import BridgeNode
from support.mqttclient import MqttPeer
from support.ports import wait_for
from support.relay import RelayProcess

from serfbridge.serf.rpc import SerfRPC

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from support.serf import SerfAgent
    from support.servers import HttpReceiver, Mosquitto, RedisServer

pytestmark = pytest.mark.e2e

FAST = "[delivery]\nlinger = 60\nbackoff_initial = 0.05\nbackoff_max = 0.5\n"


@pytest.fixture
def relay_node(tmp_path: Path) -> Iterator[BridgeNode]:
    """The relay's state dir as a node, so the detached deliverer it starts is killed."""
    node = BridgeNode(tmp_path, "relay-node")
    yield node
    node.kill_deliverer()


def raise_burst(agent: SerfAgent, payloads: list[str]) -> None:
    """One RPC connection, no coalescing: as fast as the agent takes them."""
    with SerfRPC(agent.rpc_addr, timeout=30) as rpc:
        for payload in payloads:
            rpc.event("burst", payload.encode(), coalesce=False)


def hook_payloads(http_receiver: HttpReceiver) -> list[str]:
    return [r.json()["payload"] for r in http_receiver.requests if r.status == 200]


@pytest.fixture
def webhook_relay(
    tmp_path: Path,
    agent: SerfAgent,
    http_receiver: HttpReceiver,
    serfbridge_cmd: list[str],
    relay_node: BridgeNode,
) -> RelayProcess:
    """A stream relay (not started) for user events "burst" with one webhook sink."""
    body = (
        '[relay]\nstream = true\nstream_filter = "user:burst"\n'
        f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{http_receiver.url_for("/h")}"\n'
        + FAST
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    relay_node.state = relay.state
    return relay


def test_a_burst_reaches_webhook_redis_and_mqtt_whole_and_in_order(
    tmp_path: Path,
    agent: SerfAgent,
    http_receiver: HttpReceiver,
    redis_server: RedisServer,
    mosquitto: Mosquitto,
    serfbridge_cmd: list[str],
    relay_node: BridgeNode,
) -> None:
    n = 600
    body = (
        '[relay]\nstream = true\nstream_filter = "user:burst"\n'
        f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{http_receiver.url_for("/h")}"\n'
        f'[[sinks]]\ntype = "redis"\nname = "redis"\nurl = "{redis_server.url}"\n'
        'stream = "burst"\nmaxlen = 100000\n'
        f'[[sinks]]\ntype = "mqtt"\nname = "mqtt"\nurl = "{mosquitto.url}"\n'
        'topic = "burst/{event}"\nqos = 1\n' + FAST
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    relay_node.state = relay.state
    peer = MqttPeer(mosquitto.port, subscribe="burst/#")
    admin = Redis.from_url(redis_server.url, protocol=2, socket_timeout=10)
    expected = [f"p{k}" for k in range(n)]

    def redis_payloads() -> list[str]:
        entries: Any = admin.xrange("burst")
        return [json.loads(fields[b"data"])["payload"] for _, fields in entries]

    def mqtt_payloads() -> list[str]:
        return [json.loads(payload)["payload"] for _, payload, _ in peer.received()]

    try:
        with relay:
            relay.start()
            wait_for(lambda: "event stream subscribed" in relay.log_text(), 10, what="stream")
            raise_burst(agent, expected)
            readers: list[tuple[str, Callable[[], list[str]]]] = [
                ("webhook", lambda: hook_payloads(http_receiver)),
                ("redis", redis_payloads),
                ("mqtt", mqtt_payloads),
            ]
            for what, got in readers:

                def complete(got: Callable[[], list[str]] = got) -> bool:
                    return len(set(got())) >= n

                wait_for(complete, 60, what=f"{n} events at {what}", detail=relay.log_tail)
                # At least once, in order: a resend may repeat, never reorder.
                assert list(dict.fromkeys(got())) == expected, what
    finally:
        peer.close()
        admin.close()


def test_a_spool_that_cannot_be_written_holds_the_records_until_it_can(
    agent: SerfAgent, http_receiver: HttpReceiver, webhook_relay: RelayProcess
) -> None:
    relay = webhook_relay
    incoming = relay.state / "spool" / "incoming"
    with relay:
        relay.start()
        wait_for(lambda: "event stream subscribed" in relay.log_text(), 10, what="stream")
        raise_burst(agent, ["warm"])
        wait_for(lambda: hook_payloads(http_receiver) == ["warm"], 30, what="the first event",
                 detail=relay.log_tail)  # fmt: skip
        wait_for(lambda: not list(incoming.iterdir()), 10, what="the spool to drain")
        shutil.rmtree(incoming)
        incoming.write_bytes(b"")  # a file where the directory was: every write fails
        expected = [f"p{k}" for k in range(20)]
        raise_burst(agent, expected)
        wait_for(lambda: "cannot spool stream events; retrying" in relay.log_text(), 20,
                 what="the spool error", detail=relay.log_tail)  # fmt: skip
        incoming.unlink()
        incoming.mkdir()
        wait_for(lambda: len(hook_payloads(http_receiver)) >= 21, 30, what="the held events",
                 detail=relay.log_tail)  # fmt: skip
        assert list(dict.fromkeys(hook_payloads(http_receiver))) == ["warm", *expected]


def test_order_holds_when_wake_ups_are_dropped(
    agent: SerfAgent, http_receiver: HttpReceiver, webhook_relay: RelayProcess
) -> None:
    """A deliverer that stalls (here: SIGSTOP for 0.3 s at a time) lets its wake-up queue
    fill: the kernel keeps 10 datagrams (net.unix.max_dgram_qlen) and drops the rest. The
    files whose wake-up was dropped are older than the next one that gets through, and must
    still be sent before it."""
    n = 1500
    relay = webhook_relay
    expected = [f"p{k}" for k in range(n)]
    pid_file = relay.state / "spool" / "deliver.pid"
    with relay:
        relay.start()
        wait_for(lambda: "event stream subscribed" in relay.log_text(), 10, what="stream")
        raise_burst(agent, expected[:1])
        wait_for(lambda: hook_payloads(http_receiver), 30, what="the first event")
        pid = int(pid_file.read_text())
        burst = threading.Thread(target=raise_burst, args=(agent, expected[1:]))
        burst.start()
        try:
            for _ in range(40):  # bounded: 40 stalls of 0.3 s
                if not burst.is_alive() and len(hook_payloads(http_receiver)) >= n:
                    break
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.3)
                os.kill(pid, signal.SIGCONT)
                time.sleep(0.2)
        finally:
            os.kill(pid, signal.SIGCONT)
            burst.join(60)
        wait_for(lambda: len(set(hook_payloads(http_receiver))) >= n, 90,
                 what=f"{n} events at the webhook", detail=relay.log_tail)  # fmt: skip
        assert list(dict.fromkeys(hook_payloads(http_receiver))) == expected
