"""Several relays on one JetStream durable consumer: each message relayed once, by one of
them, and a relay killed with SIGKILL leaves nothing behind."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from support.ports import free_port, wait_for
from support.relay import RelayProcess, Watcher, get_text, metric

if TYPE_CHECKING:
    from pathlib import Path

    from nats.aio.client import Client
    from support.nats import NatsServer
    from support.serf import SerfAgent

pytestmark = pytest.mark.e2e

STREAM = "BULK"


def _relay(
    tmp_path: Path, cmd: list[str], agent: SerfAgent, url: str, name: str
) -> tuple[RelayProcess, int]:
    metrics = free_port()
    body = (
        f'[relay]\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        "[[sources]]\n"
        'type = "nats"\n'
        f'url = "{url}"\n'
        'subject = "bulk.in"\n'
        f'stream = "{STREAM}"\n'
        'durable = "relays"\n'
        "ack_wait = 2\n"
        "batch = 5\n"
        "rate = 100000\n"
        "burst = 100000\n"
        'allow_events = ["bulk"]\n'
    )
    relay = RelayProcess(tmp_path / name, cmd, body, rpc_addr=agent.rpc_addr, name=name)
    relay.log_level = "info"
    return relay, metrics


def _relayed(port: int) -> float:
    text = get_text(port, "/metrics")[1]
    return metric(text, "serfbridge_relay_messages_out_total", source="nats", type="event")


def _publish(server: NatsServer, start: int, n: int) -> list[bytes]:
    payloads = [f"m{i:05d}".encode() for i in range(start, start + n)]

    async def work(client: Client) -> None:
        js = client.jetstream()
        for p in payloads:
            msg = {"type": "event", "name": "bulk", "payload": p.decode()}
            await js.publish("bulk.in", json.dumps(msg).encode())

    server.call(work)
    return payloads


def _reading(relay: RelayProcess) -> bool:
    return "nats source reading" in relay.log_text(current_run=True)


def test_two_relays_share_one_durable_consumer(
    agent: SerfAgent,
    watcher: Watcher,
    nats_server: NatsServer,
    serfbridge_cmd: list[str],
    tmp_path: Path,
) -> None:
    """Messages arriving over time are split between both relays, each relayed once."""
    nats_server.add_stream(STREAM, ["bulk.>"])
    a, a_metrics = _relay(tmp_path, serfbridge_cmd, agent, nats_server.url, "a")
    b, b_metrics = _relay(tmp_path, serfbridge_cmd, agent, nats_server.url, "b")
    with a, b:
        a.start()
        b.start()
        wait_for(lambda: _reading(a) and _reading(b), 20, what="both relays reading")
        sent: list[bytes] = []
        for k in range(20):
            sent += _publish(nats_server, k * 10, 10)
            time.sleep(0.05)
        wait_for(lambda: len(watcher.payloads()) >= len(sent), 60, what="every event")
        time.sleep(1.0)
        assert Counter(watcher.payloads()) == Counter(sent)
        share_a, share_b = _relayed(a_metrics), _relayed(b_metrics)
    assert share_a + share_b == len(sent)
    assert share_a > 0
    assert share_b > 0


def test_kill_9_leaves_nothing_unrelayed(
    agent: SerfAgent,
    watcher: Watcher,
    nats_server: NatsServer,
    serfbridge_cmd: list[str],
    tmp_path: Path,
) -> None:
    """One relay killed with SIGKILL while 400 messages flow: the survivor gets what the
    dead one held after ack_wait; every message reaches Serf (at least once)."""
    nats_server.add_stream(STREAM, ["bulk.>"])
    a, a_metrics = _relay(tmp_path, serfbridge_cmd, agent, nats_server.url, "a")
    b, _ = _relay(tmp_path, serfbridge_cmd, agent, nats_server.url, "b")
    with a, b:
        a.start()
        b.start()
        wait_for(lambda: _reading(a) and _reading(b), 20, what="both relays reading")
        sent = _publish(nats_server, 0, 400)
        wait_for(lambda: _relayed(a_metrics) >= 50, 60, interval=0.005, what="a relaying")
        a.kill9()
        wait_for(lambda: set(watcher.payloads()) >= set(sent), 90, what="every event",
                 detail=b.log_tail)  # fmt: skip
        on_serf = Counter(watcher.payloads())
    assert set(on_serf) == set(sent)
    # At most the batch the dead relay held (plus the one Serf took before the kill) twice.
    assert sum(c - 1 for c in on_serf.values()) <= 6, on_serf.most_common(8)
