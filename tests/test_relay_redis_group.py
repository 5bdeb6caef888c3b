"""Several relays in one Redis consumer group: shared load; a kill -9 loses nothing, and with
``event_ids = true`` nothing is recorded twice either."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
import redis
from support.ports import free_port, wait_for
from support.relay import RelayProcess, Watcher, get_text, metric

from serfbridge.capture import relay_ids

if TYPE_CHECKING:
    from pathlib import Path

    from support.serf import SerfAgent
    from support.servers import RedisServer

pytestmark = pytest.mark.e2e

STREAM = "relay:bulk"
BATCH, WORKERS = 20, 16  # the redis source's defaults


def _relay(
    tmp_path: Path, cmd: list[str], agent: SerfAgent, url: str, name: str, extra: str = ""
) -> tuple[RelayProcess, int]:
    metrics = free_port()
    body = (
        f'[relay]\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        "[[sources]]\n"
        'type = "redis"\n'
        f'url = "{url}"\n'
        f'stream = "{STREAM}"\n'
        'group = "relays"\n'
        f'consumer = "{name}"\n'
        "claim_idle = 1.0\n"
        "rate = 100000\n"
        "burst = 100000\n"
        'allow_events = ["bulk"]\n'
        f"{extra}"
    )
    relay = RelayProcess(tmp_path / name, cmd, body, rpc_addr=agent.rpc_addr, name=name)
    relay.log_level = "info"
    return relay, metrics


def _recorder(tmp_path: Path, cmd: list[str], agent: SerfAgent) -> tuple[RelayProcess, int]:
    """A ``stream = true`` relay: serfbridge's outbound path without a process per event,
    fast enough to record 2,000 events into its file sink as they come."""
    metrics = free_port()
    body = (
        f'[relay]\nstream = true\nstream_filter = "user"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
    )
    relay = RelayProcess(tmp_path / "rx", cmd, body, rpc_addr=agent.rpc_addr, name="rx")
    relay.log_level = "info"
    return relay, metrics


def _recorded(recorder: RelayProcess) -> list[bytes]:
    path = recorder.state / "events.jsonl"
    if not path.exists():
        return []
    # The recorder is still appending: a last line without its newline is not written yet.
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    return [json.loads(line)["payload"].encode() for line in lines]


def _relayed(port: int) -> float:
    text = get_text(port, "/metrics")[1]
    return metric(text, "serfbridge_relay_messages_out_total", source="redis", type="event")


def _fill(client: redis.Redis, start: int, n: int) -> list[bytes]:
    pipe = client.pipeline(transaction=False)
    payloads = []
    for i in range(start, start + n):
        payload = f"m{i:05d}"
        payloads.append(payload.encode())
        data = json.dumps({"type": "event", "name": "bulk", "payload": payload})
        fields: dict[Any, Any] = {"data": data}
        pipe.xadd(STREAM, fields)
    pipe.execute()
    return payloads


def test_two_relays_share_the_load(
    agent: SerfAgent,
    watcher: Watcher,
    redis_server: RedisServer,
    serfbridge_cmd: list[str],
    tmp_path: Path,
) -> None:
    """Entries arriving over time are split between both relays, each relayed once."""
    a, a_metrics = _relay(tmp_path, serfbridge_cmd, agent, redis_server.url, "a")
    b, b_metrics = _relay(tmp_path, serfbridge_cmd, agent, redis_server.url, "b")
    client = redis.Redis.from_url(redis_server.url)
    with a, b:
        a.start()
        b.start()
        sent: list[bytes] = []
        for k in range(20):
            sent += _fill(client, k * 20, 20)
            time.sleep(0.02)
        wait_for(lambda: len(watcher.payloads()) >= len(sent), 30, what="every event")
        time.sleep(0.5)
        assert Counter(watcher.payloads()) == Counter(sent)
        share_a, share_b = _relayed(a_metrics), _relayed(b_metrics)
    assert share_a + share_b == len(sent)
    assert share_a > 0
    assert share_b > 0


def test_kill_9_halfway_loses_nothing_and_records_nothing_twice(
    agent: SerfAgent,
    watcher: Watcher,
    redis_server: RedisServer,
    serfbridge_cmd: list[str],
    tmp_path: Path,
) -> None:
    """2,000 entries, two relays with ``event_ids = true``, one killed with SIGKILL halfway:
    the survivor claims what the dead one left pending. Serf itself may carry a few events
    twice (entries between Serf's answers and the XACK at the kill, at most one read's events
    and the running queries, resent by the claimer);
    serfbridge records every entry exactly once."""
    ids = "event_ids = true\n"
    a, a_metrics = _relay(tmp_path, serfbridge_cmd, agent, redis_server.url, "a", ids)
    b, b_metrics = _relay(tmp_path, serfbridge_cmd, agent, redis_server.url, "b", ids)
    rx, rx_metrics = _recorder(tmp_path, serfbridge_cmd, agent)
    client = redis.Redis.from_url(redis_server.url)
    with rx, a, b:
        rx.start()
        a.start()
        b.start()
        # Filled once both read: one relay alone drains 2,000 entries in about a second.
        sent = _fill(client, 0, 2000)
        # Counted by the relays themselves: the watcher's stream lags behind Serf.
        wait_for(lambda: _relayed(a_metrics) + _relayed(b_metrics) >= 1000, 60,
                 interval=0.005, what="half of the events")  # fmt: skip
        a.kill9()
        left = client.xpending_range(STREAM, "relays", "-", "+", 1000, consumername="a")
        wait_for(lambda: len(set(_recorded(rx))) >= len(sent), 60, what="every event recorded",
                 detail=b.log_tail)  # fmt: skip
        time.sleep(1.5)  # anything relayed twice would show up by now
        on_serf = Counter(p[: -relay_ids.SIZE] for p in watcher.payloads())
        recorded = Counter(_recorded(rx))
        repeats = metric(get_text(rx_metrics, "/metrics")[1],
                         "serfbridge_relay_stream_repeats_total")  # fmt: skip
        pending: dict[str, Any] = client.xpending(STREAM, "relays")
        b_share = _relayed(b_metrics)
    assert set(on_serf) == set(sent)
    doubled = {p: c for p, c in on_serf.items() if c > 1}
    # At most the entries the dead relay had between Serf's answers and its XACK: one read's
    # events (acknowledged together) and the queries on its workers.
    assert len(doubled) <= BATCH + WORKERS, doubled
    assert recorded == Counter(sent), "lost or recorded twice"
    assert repeats == sum(c - 1 for c in doubled.values())
    # Usually the dead relay held a batch; rarely it died between two reads.
    assert ("claimed pending entries" in b.log_text()) == bool(left)
    assert b_share > 0
    assert pending["pending"] == 0
