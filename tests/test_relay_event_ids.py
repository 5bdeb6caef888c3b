"""``event_ids = true``: a relayed event that Serf carries twice is recorded once by every
node's serfbridge handler, with the payload as it was sent."""

from __future__ import annotations

import json
import time
from functools import partial
from typing import TYPE_CHECKING

import pytest
import redis
from support.bridge import BridgeNode, bridge_nodes
from support.ports import LOOPBACK, free_port, wait_for
from support.relay import RelayProcess, Watcher, http_source, post

from serfbridge.capture import relay_ids
from serfbridge.relay import messages

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.serf import SerfCluster, SerfClusterFactory
    from support.servers import RedisServer

pytestmark = pytest.mark.e2e

NAMES = ["n1", "n2"]
STREAM = "relay:ids"
TOKEN = "ids-t0ken"  # noqa: S105 - test value


class Cluster:
    def __init__(self, cluster: SerfCluster, nodes: dict[str, BridgeNode]) -> None:
        self.cluster, self.nodes = cluster, nodes
        self.watcher = Watcher(cluster[0])

    def on_serf(self, payload: bytes) -> int:
        """Copies of the event Serf carried (the trailer still on)."""
        return sum(relay_ids.split(p)[0] == payload for p in self.watcher.payloads())

    def recorded(self, payload: str) -> dict[str, int]:
        return {
            name: sum(e["event"] == "user" and e["payload"] == payload for e in node.events())
            for name, node in self.nodes.items()
        }

    def handler_logs(self) -> str:
        return "".join(
            (n.state / "serfbridge.log").read_text(encoding="utf-8")
            for n in self.nodes.values()
            if (n.state / "serfbridge.log").exists()
        )


@pytest.fixture
def cluster(
    serf_cluster: SerfClusterFactory, serfbridge_handler: str, tmp_path: Path
) -> Iterator[Cluster]:
    nodes = bridge_nodes(tmp_path / "nodes", NAMES)
    serf = serf_cluster(len(NAMES), "*=" + serfbridge_handler, env_for=lambda n: nodes[n].env())
    c = Cluster(serf, nodes)
    yield c
    c.watcher.close()


def _redis_relay(
    tmp_path: Path, cmd: list[str], rpc_addr: str, url: str, name: str
) -> RelayProcess:
    body = (
        "[[sources]]\n"
        'type = "redis"\n'
        f"url = {json.dumps(url)}\n"
        f'stream = "{STREAM}"\n'
        'group = "relays"\n'
        f'consumer = "{name}"\n'
        "claim_idle = 1.0\n"
        "event_ids = true\n"
        'allow_events = ["deploy"]\n'
    )
    return RelayProcess(tmp_path / name, cmd, body, rpc_addr=rpc_addr, name=name)


def _recorded_everywhere(cluster: Cluster, payload: str, times: int) -> bool:
    return cluster.recorded(payload) == dict.fromkeys(NAMES, times)


def _settle(cluster: Cluster, payload: str) -> dict[str, int]:
    for node in cluster.nodes.values():
        node.wait_event(lambda e: e.get("payload") == payload, f"event {payload!r}")
    time.sleep(1.0)  # Serf runs handlers one at a time: a second copy would be in by now
    return cluster.recorded(payload)


def test_claimed_resend_is_recorded_once(
    cluster: Cluster, redis_server: RedisServer, serfbridge_cmd: list[str], tmp_path: Path
) -> None:
    """The kill window made certain: relay a's Redis user may not XACK, so a holds an entry
    Serf already took. Retrying, a does not call Serf again; after its kill -9, b claims the
    entry and sends it again. Serf carries two copies, each node records one."""
    admin = redis.Redis.from_url(redis_server.url)
    admin.acl_setuser(
        "relay", enabled=True, passwords=["+relay-pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-xack"],
    )  # fmt: skip
    no_ack = f"redis://relay:relay-pw@{LOOPBACK}:{redis_server.port}/0"
    rpc = cluster.cluster[0].rpc_addr
    a = _redis_relay(tmp_path, serfbridge_cmd, rpc, no_ack, "a")
    b = _redis_relay(tmp_path, serfbridge_cmd, rpc, redis_server.url, "b")
    message = {"type": "event", "name": "deploy", "payload": "v2"}
    with a, b:
        a.start()
        admin.xadd(STREAM, {"data": json.dumps(message)})
        wait_for(lambda: "permissions to run the 'xack'" in a.log_text(), 20,
                 what="a's XACK refused", detail=a.log_tail)  # fmt: skip
        wait_for(lambda: a.log_text().count("'xack' command") >= 3, 20, what="a retrying its XACK")
        assert cluster.on_serf(b"v2") == 1, "a sent the entry to Serf again"
        a.kill9()
        b.start()
        wait_for(lambda: cluster.on_serf(b"v2") == 2, 20, what="b's resend", detail=b.log_tail)
        wait_for(lambda: admin.xpending(STREAM, "relays")["pending"] == 0, 10, what="b's XACK")
        assert _settle(cluster, "v2") == dict.fromkeys(NAMES, 1)
    assert cluster.handler_logs().count("repeat of a relayed event dropped") == len(NAMES)
    docs = [n.events()[-1] for n in cluster.nodes.values()]
    assert {d["id"] for d in docs} == {docs[0]["id"]}  # one event, one id, on every node


def test_same_message_id_through_two_relays_is_recorded_once(
    cluster: Cluster, serfbridge_cmd: list[str], tmp_path: Path
) -> None:
    """A client that retries through another relay (two behind one address) with the same
    ``id``: both relays raise the event, each node records it once. Without ``id`` the
    relays cannot tell, and both copies are recorded."""
    ports = [free_port(), free_port()]
    relays = [
        RelayProcess(
            tmp_path / f"h{i}", serfbridge_cmd,
            http_source(port, token=TOKEN, allow_events=["deploy"]) + "event_ids = true\n",
            rpc_addr=cluster.cluster[i].rpc_addr, name=f"h{i}",
        )
        for i, port in enumerate(ports)
    ]  # fmt: skip
    with relays[0], relays[1]:
        for relay in relays:
            relay.start()
        for copy, port in enumerate(ports, 1):
            status, _ = post(port, "/v1/event", {"name": "deploy", "payload": "p", "id": "c-1"},
                             token=TOKEN)  # fmt: skip
            assert status == 202
            status, _ = post(port, "/v1/event", {"name": "deploy", "payload": "q"}, token=TOKEN)
            assert status == 202
            # Serf itself drops a second event with the same Lamport time, name and payload;
            # once every node has run its handler for this copy, both agents' clocks are
            # past it, and the next copy gets a later one.
            wait_for(partial(_recorded_everywhere, cluster, "q", copy), 20,
                     what=f"copy {copy} without id on every node")  # fmt: skip
        wait_for(lambda: cluster.on_serf(b"p") == 2, 20, what="both copies with id on Serf")
        assert _settle(cluster, "p") == dict.fromkeys(NAMES, 1)


def test_trailer_counts_against_serf_size_limit(
    cluster: Cluster, serfbridge_cmd: list[str], tmp_path: Path
) -> None:
    """The largest payload the relay passes without the trailer is refused (413) with it,
    naming the trailer, before Serf is called."""
    port = free_port()
    body = http_source(port, token=TOKEN, allow_events=["deploy"]) + "event_ids = true\n"
    relay = RelayProcess(tmp_path / "big", serfbridge_cmd, body,
                         rpc_addr=cluster.cluster[0].rpc_addr, name="big")  # fmt: skip
    with relay:
        relay.start()
        size = max(n for n in range(600) if messages.event_size("deploy", b"x" * n) <= 512)
        largest = "x" * size
        status, reply = post(port, "/v1/event", {"name": "deploy", "payload": largest},
                             token=TOKEN)  # fmt: skip
        assert status == 413
        assert "22-byte event id trailer" in json.dumps(reply)
        fits = largest[: -relay_ids.SIZE]
        status, _ = post(port, "/v1/event", {"name": "deploy", "payload": fits}, token=TOKEN)
        assert status == 202
        assert _settle(cluster, fits) == dict.fromkeys(NAMES, 1)
