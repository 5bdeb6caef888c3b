"""Issue 12: `serfbridge status`, the node_exporter textfile and the relay's delivery metrics,
read from a real spool filled by the real handler."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from support.bridge import BridgeNode
from support.handler import fire_user, serfbridge
from support.ports import free_port, wait_for
from support.relay import RelayProcess, get_text, http_source, metric

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.serf import SerfAgent
    from support.servers import HttpReceiver

FAST = "[delivery]\nbackoff_initial = 0.05\nbackoff_max = 0.5\nmax_attempts = 2\n"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[BridgeNode]:
    bridge = BridgeNode(tmp_path, "n1")
    yield bridge
    bridge.kill_deliverer()


def hook(url: str) -> str:
    return f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{url}"\ntimeout = 1\n'


def status(cmd: list[str], node: BridgeNode, *args: str) -> tuple[int, dict[str, Any]]:
    proc = serfbridge(cmd, node, "status", "--json", *args)
    assert "Traceback" not in proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_status_shows_queue_attempts_errors_dead_letters_and_exits_8_when_stuck(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    down = f"http://127.0.0.1:{free_port()}/"
    node.write_config("spawn_deliverer = false\n" + hook(down) + FAST)
    fire_user(serfbridge_cmd, node, "s", 1)
    fire_user(serfbridge_cmd, node, "s", 2)
    code, report = status(serfbridge_cmd, node)
    assert code == 0
    assert set(report) == {"sinks", "deliverer", "rejected"}
    assert report["deliverer"]["running"] is False
    assert report["deliverer"]["pid"] is None
    hook_row = report["sinks"]["hook"]
    assert set(hook_row) >= {"queued", "oldest_age", "attempts", "last_error", "dead"}
    assert (hook_row["queued"], hook_row["attempts"], hook_row["dead"]) == (2, 0, 0)
    assert serfbridge(serfbridge_cmd, node, "flush", "--timeout", "5").returncode == 8
    code, report = status(serfbridge_cmd, node)
    assert report["sinks"]["hook"]["attempts"] == 1
    assert report["sinks"]["hook"]["last_error"].startswith("SinkUnavailable")
    assert status(serfbridge_cmd, node, "--stuck-after", "0")[0] == 8
    table = serfbridge(serfbridge_cmd, node, "status")
    assert table.returncode == 0
    assert "hook" in table.stdout
    assert "deliverer: not running" in table.stdout
    # The textfile the flush's deliverer left behind, for node_exporter.
    prom = (node.state / "serfbridge.prom").read_text()
    assert metric(prom, "serfbridge_delivery_failed_attempts_total", sink="hook") == 1
    assert metric(prom, "serfbridge_delivery_queue_depth", sink="hook") == 2
    # Second failure of the head: max_attempts = 2 dead-letters it; status exits 8.
    assert serfbridge(serfbridge_cmd, node, "flush", "--timeout", "5").returncode == 8
    code, report = status(serfbridge_cmd, node)
    assert code == 8
    assert (report["sinks"]["hook"]["dead"], report["sinks"]["hook"]["queued"]) == (1, 1)
    prom = (node.state / "serfbridge.prom").read_text()
    assert metric(prom, "serfbridge_delivery_dead_lettered_total", sink="hook") == 1
    # Once the receiver is there, the rest is delivered and counted.
    node.write_config("spawn_deliverer = false\n" + hook(http_receiver.url) + FAST)
    assert serfbridge(serfbridge_cmd, node, "flush").returncode == 0
    prom = (node.state / "serfbridge.prom").read_text()
    assert metric(prom, "serfbridge_delivery_delivered_total", sink="hook") == 1
    assert metric(prom, "serfbridge_delivery_queue_depth", sink="hook") == 0


def test_running_deliverer_is_reported_with_its_pid(
    node: BridgeNode, serfbridge_cmd: list[str]
) -> None:
    down = f"http://127.0.0.1:{free_port()}/"
    node.write_config(hook(down) + FAST.replace("max_attempts = 2", "linger = 60"))
    fire_user(serfbridge_cmd, node, "r", 1)
    pid_file = node.state / "spool" / "deliver.pid"
    wait_for(pid_file.exists, timeout=10, what="deliver.pid")
    _, report = wait_for(
        lambda: (r := status(serfbridge_cmd, node))[1]["deliverer"]["running"] and r,
        timeout=10,
        what="status to see the deliverer",
    )
    assert report["deliverer"]["pid"] == int(pid_file.read_text())


def test_relay_metrics_carry_the_delivery_numbers_of_its_state_dir(
    tmp_path: Path, agent: SerfAgent, serfbridge_cmd: list[str]
) -> None:
    port, metrics_port = free_port(), free_port()
    down = f"http://127.0.0.1:{free_port()}/"
    body = (
        f'[relay]\nmetrics_listen = "127.0.0.1:{metrics_port}"\n'
        + http_source(port, token="t" * 32, allow_events=["x"])
        + hook(down)
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=agent.rpc_addr)
    # A handler on the same node, sharing the relay's state dir, spools one event.
    node = BridgeNode(tmp_path, "n1")
    node.state = relay.state
    node.write_config("spawn_deliverer = false\n" + hook(down))
    fire_user(serfbridge_cmd, node, "m", 1)
    with relay:
        relay.start()
        code, text = get_text(metrics_port, "/metrics")
        assert code == 200
        assert metric(text, "serfbridge_delivery_queue_depth", sink="hook") == 1
        assert "# TYPE serfbridge_delivery_delivered_total counter" in text
