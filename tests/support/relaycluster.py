"""A real 3-node cluster whose serfbridge handlers answer the query ``load``, with a
``serfbridge relay`` in front of it: what the relay end-to-end tests share."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from .bridge import NAMES, BridgeNode, bridge_nodes
from .ports import free_port, wait_for
from .relay import RelayProcess, get_text, metric

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from .serf import SerfCluster, SerfClusterFactory

RESPONDER = '[[responders]]\nquery = "load"\ntext = "load from {node} payload={payload}"\n'
ALLOW = {"allow_events": ["deploy"], "allow_queries": ["load"]}


def toml_table(table: str, **keys: object) -> str:
    """``[[table]]`` with ``keys`` (JSON values are TOML values for these)."""
    return f"[[{table}]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


class RelayCluster:
    def __init__(
        self, cluster: SerfCluster, nodes: dict[str, BridgeNode], relay: RelayProcess, metrics: int
    ) -> None:
        self.cluster, self.nodes, self.relay, self.metrics = cluster, nodes, relay, metrics

    def seen_everywhere(self, payload: str, timeout: float = 20.0) -> None:
        for node in self.nodes.values():
            node.wait_event(
                lambda e: e["event"] == "user" and e["payload"] == payload,
                f"user event {payload!r}",
                timeout=timeout,
            )

    def count(self, payload: str) -> dict[str, int]:
        return {
            n: sum(e["event"] == "user" and e["payload"] == payload for e in node.events())
            for n, node in self.nodes.items()
        }

    def metric(self, name: str, **labels: str) -> float:
        return metric(get_text(self.metrics, "/metrics")[1], name, **labels)


E = TypeVar("E", bound=RelayCluster)


def assert_full_reply(reply: dict[str, Any], payload: str) -> None:
    """The reply to ``load`` with ``payload``: complete, every node's ack and answer."""
    assert reply["name"] == "load"
    assert reply["complete"] is True
    assert sorted(reply["acks"]) == NAMES
    assert reply["responses"] == {n: f"load from {n} payload={payload}" for n in NAMES}


@contextmanager
def relay_cluster(
    serf_cluster: SerfClusterFactory,
    serfbridge_cmd: Sequence[str],
    serfbridge_handler: str,
    tmp_path: Path,
    sources: str,
    make: Callable[[SerfCluster, dict[str, BridgeNode], RelayProcess, int], E],
    *,
    ready: tuple[str, int] | None = None,
) -> Iterator[E]:
    """The cluster and a relay on its first node with ``sources`` and a metrics listener,
    running until the block ends; ``ready``: (log line, count) to wait for (the sources
    reading). The relay must have logged no traceback."""
    nodes = bridge_nodes(tmp_path, NAMES, lambda _: RESPONDER)
    cluster = serf_cluster(3, "*=" + serfbridge_handler, env_for=lambda n: nodes[n].env())
    metrics = free_port()
    body = f'[relay]\nmetrics_listen = "127.0.0.1:{metrics}"\n' + sources
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=cluster[0].rpc_addr)
    try:
        relay.start()
        if ready is not None:
            line, count = ready
            wait_for(
                lambda: relay.log_text(current_run=True).count(line) >= count,
                30,
                what=f"{count} x {line!r} in the relay's log",
                detail=relay.log_tail,
            )
        yield make(cluster, nodes, relay, metrics)
    finally:
        relay.stop()
    assert "Traceback" not in relay.log_text()
