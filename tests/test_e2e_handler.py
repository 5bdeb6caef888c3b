"""serfbridge as the handler of a real 3-node Serf cluster: every event type arrives as JSON."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import pytest
from support.bridge import BridgeNode, bridge_nodes
from support.ports import wait_for

from serfbridge.serf.rpc import SerfRPC

if TYPE_CHECKING:
    from pathlib import Path

    from support.serf import SerfCluster, SerfClusterFactory

pytestmark = pytest.mark.e2e

NAMES = ["n1", "n2", "n3"]
RESPONDER = '[[responders]]\nquery = "load"\ntext = "load from {node} payload={payload}"\n'
# Short reconnect/tombstone timeouts so member-reap arrives within serf's 15 s reap interval.
FAST_REAP = {"reconnect_timeout": "1s", "tombstone_timeout": "1s", "reconnect_interval": "1s"}


def _start(
    factory: SerfClusterFactory, root: Path, handler: str, **kwargs: Any
) -> tuple[SerfCluster, dict[str, BridgeNode]]:
    nodes = bridge_nodes(root, NAMES, lambda _: RESPONDER)
    cluster = factory(
        3,
        "*=" + handler,
        env_for=lambda name: nodes[name].env(),
        tags_for=lambda name: {"role": "db" if name == "n2" else "web", "dc": "east"},
        **kwargs,
    )
    return cluster, nodes


def _names(doc: dict[str, Any]) -> set[str]:
    return {m["name"] for m in doc["members"]}


def test_member_join_reaches_every_node(
    serf_cluster: SerfClusterFactory, serfbridge_handler: str, tmp_path: Path
) -> None:
    """Start-up member-join events list all three members, with addr, role and tags."""
    _, nodes = _start(serf_cluster, tmp_path, serfbridge_handler)
    for node in nodes.values():

        def joined(node: BridgeNode = node) -> set[str]:
            seen: set[str] = set()
            for doc in node.events():
                if doc["event"] == "member-join":
                    seen |= _names(doc)
            return seen if seen == set(NAMES) else set()

        wait_for(joined, timeout=20, what=f"{node.name} to record joins of n1..n3")
        doc = next(d for d in node.events() if d["event"] == "member-join")
        member = doc["members"][0]
        assert member["addr"] == "127.0.0.1"
        assert member["tags"]["dc"] == "east"
        assert member["role"] == member["tags"]["role"]
        assert doc["node"] == {
            "name": node.name,
            "role": "db" if node.name == "n2" else "web",
            "tags": {"dc": "east", "role": "db" if node.name == "n2" else "web"},
        }


def test_user_event_has_the_same_id_on_every_node(
    serf_cluster: SerfClusterFactory, serfbridge_handler: str, tmp_path: Path
) -> None:
    """One `serf event` is recorded by all nodes with the same id, name, ltime and payload."""
    cluster, nodes = _start(serf_cluster, tmp_path, serfbridge_handler)
    cluster["n1"].event("deploy", "v2 ünïcode", coalesce=False)
    docs = [
        n.wait_event(lambda e: e["event"] == "user" and e["name"] == "deploy", "user event")
        for n in nodes.values()
    ]
    assert {d["id"] for d in docs} == {docs[0]["id"]}
    assert {d["ltime"] for d in docs} == {docs[0]["ltime"]}
    for doc in docs:
        assert doc["payload"] == "v2 ünïcode"
        assert doc["payload_encoding"] == "utf-8"
        assert doc["members"] == []


def test_binary_payload_arrives_base64(
    serf_cluster: SerfClusterFactory, serfbridge_handler: str, tmp_path: Path
) -> None:
    """A payload with NUL and 0xff bytes (only RPC can send one) arrives exactly, as base64."""
    cluster, nodes = _start(serf_cluster, tmp_path, serfbridge_handler)
    payload = b"a\x00b\xffc"
    with SerfRPC(cluster["n1"].rpc_addr) as rpc:
        rpc.event("bin", payload, coalesce=False)
    for node in nodes.values():
        doc = node.wait_event(lambda e: e["name"] == "bin", "binary user event")
        assert doc["payload_encoding"] == "base64"
        assert base64.b64decode(doc["payload"]) == payload


def test_query_is_answered_by_every_node_and_recorded(
    serf_cluster: SerfClusterFactory, serfbridge_handler: str, tmp_path: Path
) -> None:
    """`serf query load` gets each node's responder text; each node records the query."""
    cluster, nodes = _start(serf_cluster, tmp_path, serfbridge_handler)
    result = cluster["n1"].query("load", "hi")
    assert result["Responses"] == {n: f"load from {n} payload=hi" for n in NAMES}
    ids = {n.wait_event(lambda e: e["event"] == "query", "query")["id"] for n in nodes.values()}
    assert len(ids) == 1


def test_member_update_with_exact_tags_from_the_agent(
    serf_cluster: SerfClusterFactory, serfbridge_handler: str, tmp_path: Path
) -> None:
    """A tag value with ',' and '=' arrives exactly when exact_tags asks the agent over RPC."""
    cluster, nodes = _start(serf_cluster, tmp_path, serfbridge_handler)
    for name, node in nodes.items():
        node.write_config(
            RESPONDER + f'[serf]\nrpc_addr = "{cluster[name].rpc_addr}"\nexact_tags = true\n'
        )
    cluster["n2"].tags(set={"list": "a,b=c", "tv": "x\ty"})
    for node in nodes.values():
        doc = node.wait_event(
            lambda e: e["event"] == "member-update" and "list" in e["members"][0]["tags"],
            "member-update of n2",
        )
        assert doc["members"][0]["name"] == "n2"
        assert doc["members"][0]["tags"] == {
            "dc": "east",
            "list": "a,b=c",
            "role": "db",
            "tv": "x\ty",
        }


def test_leave_failed_and_reap(
    serf_cluster: SerfClusterFactory, serfbridge_handler: str, tmp_path: Path
) -> None:
    """Graceful leave, kill -9 and the later reap each reach the surviving nodes' handlers."""
    cluster, nodes = _start(serf_cluster, tmp_path, serfbridge_handler, config=FAST_REAP)
    cluster["n3"].leave()
    # The leaving agent may exit before its own coalesced member-leave runs; the others see it.
    for name in ("n1", "n2"):
        nodes[name].wait_event(
            lambda e: e["event"] == "member-leave" and _names(e) == {"n3"}, "member-leave n3"
        )
    cluster["n2"].kill9()
    nodes["n1"].wait_event(
        lambda e: e["event"] == "member-failed" and _names(e) == {"n2"}, "member-failed n2"
    )
    reaped: set[str] = set()

    def both_reaped() -> bool:
        for doc in nodes["n1"].events():
            if doc["event"] == "member-reap":
                reaped.update(_names(doc))
        return reaped >= {"n2", "n3"}

    wait_for(both_reaped, timeout=45, what="n1 to record member-reap of n2 and n3")
