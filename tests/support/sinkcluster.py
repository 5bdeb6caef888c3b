"""A real 3-node cluster whose serfbridge handlers forward to sinks, and the two runs the
end-to-end sink tests share: every event type, and ``once = true``."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .bridge import NAMES, BridgeNode, bridge_nodes
from .handler import spool_files
from .ports import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from .serf import SerfCluster, SerfClusterFactory

FAST_REAP = {"reconnect_timeout": "1s", "tombstone_timeout": "1s", "reconnect_interval": "1s"}
FAST = "[delivery]\nlinger = 2\nbackoff_initial = 0.05\nbackoff_max = 0.5\n"
#: What ``every_event_type`` makes happen.
TYPES = frozenset({"member-join", "user", "query", "member-update", "member-leave",
                   "member-failed", "member-reap"})  # fmt: skip
Nodes = dict[str, BridgeNode]


def by(docs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["event"] == event]


@contextmanager
def every_event_type(
    serf_cluster: SerfClusterFactory, serfbridge_handler: str, tmp_path: Path, sinks: str
) -> Iterator[tuple[SerfCluster, Nodes]]:
    """Three nodes forwarding every event to ``sinks``, failed members reaped within
    seconds, and every event type made to happen: join (at start), user, query, update,
    leave, failed and (soon after) reap. Every deliverer is stopped when the block ends."""
    nodes = bridge_nodes(tmp_path, NAMES, lambda _: sinks + FAST)
    cluster = serf_cluster(
        3, "*=" + serfbridge_handler, env_for=lambda n: nodes[n].env(), config=FAST_REAP
    )
    with _stopping_deliverers(nodes):
        cluster["n1"].event("deploy", "v9", coalesce=False)
        cluster["n1"].query("ping", None, "-timeout=1s")
        cluster["n2"].tags(set={"version": "2"})
        cluster["n3"].leave()
        wait_for(lambda: cluster["n1"].member_status("n3") == "left", 20, what="n3 left")
        cluster["n2"].kill9()
        yield cluster, nodes


def run_once(
    serf_cluster: SerfClusterFactory,
    serfbridge_handler: str,
    tmp_path: Path,
    sinks: str,
    seen: Callable[[str], object],
) -> None:
    """Three nodes forwarding to ``sinks`` (with ``once = true``), each asking its own agent
    who forwards: a user event from n1, then n3 killed. ``seen(event)`` is true once the
    sinks got that event; afterwards a few seconds for duplicates from other nodes."""
    nodes = bridge_nodes(tmp_path, NAMES)
    cluster = serf_cluster(3, "*=" + serfbridge_handler, env_for=lambda n: nodes[n].env())
    for name, node in nodes.items():
        node.write_config(f'[serf]\nrpc_addr = "{cluster[name].rpc_addr}"\n' + sinks + FAST)
    with _stopping_deliverers(nodes):
        cluster["n1"].event("deploy", "once", coalesce=False)
        # 40 s: the user event may have to reach several sinks (webhook and Redis).
        wait_for(lambda: seen("user"), timeout=40, what="the user event at the sinks")
        # Every node must have made its once decision before the crash: a deliverer whose
        # own agent is gone cannot ask who is alive and forwards anyway (documented
        # fail-open).
        wait_for(
            lambda: all(not spool_files(n, "incoming") for n in nodes.values()),
            timeout=20,
            what="every node to decide on the user event",
        )
        cluster["n3"].kill9()
        wait_for(lambda: seen("member-failed"), timeout=30, what="member-failed at the sinks")
        time.sleep(3.0)  # duplicates from other nodes would arrive well within this


@contextmanager
def _stopping_deliverers(nodes: Nodes) -> Iterator[None]:
    try:
        yield
    finally:
        for node in nodes.values():
            node.kill_deliverer()
