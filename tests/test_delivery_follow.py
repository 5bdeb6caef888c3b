"""Issue 12 items 1-3: the deliverer follows config edits, survives poison spool entries, and
a `once` sink's agent lookup never stops delivery. Real handler, deliverer and receiver."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import pytest
from support.bridge import BridgeNode
from support.handler import fire_user, serfbridge, spool_files
from support.ports import wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.servers import HttpReceiver

FAST = "[delivery]\nbackoff_initial = 0.05\nbackoff_max = 0.5\n"


def hook(name: str, url: str, extra: str = "") -> str:
    return f'[[sinks]]\ntype = "webhook"\nname = "{name}"\nurl = "{url}"\ntimeout = 2\n{extra}\n'


@pytest.fixture
def node(tmp_path: Path) -> Iterator[BridgeNode]:
    bridge = BridgeNode(tmp_path, "n1")
    yield bridge
    bridge.kill_deliverer()


def paths_of(receiver: HttpReceiver, name: str) -> list[str]:
    return [r.path for r in receiver.requests if r.status == 200 and r.json().get("name") == name]


def test_sink_added_while_the_deliverer_runs_receives_the_next_event(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """Item 1: add a sink and change a URL while the deliverer lingers; the next event goes
    to the new sink and the new URL, and nothing is dead-lettered."""
    url = http_receiver.url_for
    node.write_config(hook("a", url("/a")) + FAST + "linger = 60\n")
    fire_user(serfbridge_cmd, node, "first", 1)
    wait_for(lambda: paths_of(http_receiver, "first"), timeout=15, what="first at /a")
    pid = (node.state / "spool" / "deliver.pid").read_text()
    node.write_config(hook("a", url("/a2")) + hook("b", url("/b")) + FAST + "linger = 60\n")
    fire_user(serfbridge_cmd, node, "second", 2)
    wait_for(
        lambda: sorted(paths_of(http_receiver, "second")) == ["/a2", "/b"],
        timeout=15,
        what="second at /a2 and /b",
        detail=lambda: f"{[r.path for r in http_receiver.requests]}\n{node.log_tail()}",
    )
    assert (node.state / "spool" / "deliver.pid").read_text() == pid, "same deliverer"
    assert spool_files(node, "dead", "b") == []


def test_removed_sink_is_dead_lettered_with_its_reason_and_retry_brings_it_back(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """Item 1: a sink really removed: `sink removed from config`; re-added: `spool retry`."""
    body = "spawn_deliverer = false\n" + FAST
    node.write_config(body + hook("gone", http_receiver.url))
    fire_user(serfbridge_cmd, node, "x", 1)
    node.write_config(body + hook("other", http_receiver.url_for("/other")))
    assert serfbridge(serfbridge_cmd, node, "flush").returncode == 0
    dead = spool_files(node, "dead", "gone")
    reason = json.loads((node.state / "spool" / "dead" / "gone" / (dead[0][:-5] + ".reason"))
                        .read_text())  # fmt: skip
    assert reason["reason"] == "sink removed from config"
    node.write_config(body + hook("gone", http_receiver.url))
    assert serfbridge(serfbridge_cmd, node, "spool", "retry").returncode == 0
    flushed = serfbridge(serfbridge_cmd, node, "flush")
    assert flushed.returncode == 0, flushed.stdout + node.log_tail()
    assert paths_of(http_receiver, "x") == ["/"]


def _entry(sinks: Any, event: Any) -> bytes:
    return json.dumps({"sinks": sinks, "event": event}).encode()


def test_a_poison_entry_among_500_good_ones_leaves_500_delivered(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """Item 2: malformed entries (bad sink list, null event, a `../x` sink, not JSON) go to
    rejected/ with a reason; every good entry is delivered; nothing is written outside."""
    node.write_config("spawn_deliverer = false\n" + FAST + hook("hook", http_receiver.url))
    fire_user(serfbridge_cmd, node, "good", 1)
    incoming = node.state / "spool" / "incoming"
    template = json.loads(next(incoming.iterdir()).read_bytes())
    poison = {
        "00000000000000000250-0000001-0001.json": _entry([1], template["event"]),
        "00000000000000000251-0000001-0001.json": _entry(["hook"], None),
        "00000000000000000252-0000001-0001.json": _entry(["../x"], template["event"]),
        "00000000000000000253-0000001-0001.json": b"\xff\xfe not json",
    }
    for ltime in range(2, 501):
        event = {**template["event"], "ltime": ltime, "id": f"id-{ltime}"}
        name = f"{ltime:020d}-0000001-0000.json"  # sorted among the poison entries
        (incoming / name).write_bytes(_entry(["hook"], event))
    for name, data in poison.items():
        (incoming / name).write_bytes(data)
    flushed = serfbridge(serfbridge_cmd, node, "flush", "--timeout", "120", timeout=180)
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr + node.log_tail()
    ltimes = sorted(r.json()["ltime"] for r in http_receiver.requests if r.status == 200)
    assert ltimes == list(range(1, 501))
    assert sorted(spool_files(node, "rejected")) == sorted(poison)
    assert not (node.state / "spool" / "x").exists()
    assert not (node.state / "x").exists()
    listing = serfbridge(serfbridge_cmd, node, "spool", "list", "--rejected")
    assert listing.returncode == 0
    assert "invalid sink name" in listing.stdout


def test_once_sink_with_an_unreachable_agent_still_delivers_and_others_too(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """Item 3: `once` with no agent at rpc_addr forwards anyway; the plain sink delivers."""
    node.write_config(
        "spawn_deliverer = false\n[serf]\nrpc_addr = \"127.0.0.1:1\"\n" + FAST
        + hook("once", http_receiver.url_for("/once"), "once = true")
        + hook("plain", http_receiver.url_for("/plain"))
    )  # fmt: skip
    fire_user(serfbridge_cmd, node, "o", 1)
    flushed = serfbridge(serfbridge_cmd, node, "flush")
    assert flushed.returncode == 0, flushed.stdout + node.log_tail()
    assert sorted(paths_of(http_receiver, "o")) == ["/once", "/plain"]


@pytest.mark.parametrize("addr", ["localhost", "127.0.0.1:99999", "::1:7373"])
def test_invalid_rpc_addr_is_refused_by_check_naming_the_key(
    node: BridgeNode, serfbridge_cmd: list[str], addr: str
) -> None:
    """Item 3: a bad rpc_addr no longer passes `check` (and so cannot kill a deliverer)."""
    node.write_config(f'[serf]\nrpc_addr = "{addr}"\n')
    checked = serfbridge(serfbridge_cmd, node, "check")
    assert checked.returncode == 3, checked.stdout + checked.stderr
    assert "serf.rpc_addr" in checked.stderr
    assert "Traceback" not in checked.stderr


def test_invalid_rpc_addr_from_the_environment_is_refused_too(
    node: BridgeNode, serfbridge_cmd: list[str]
) -> None:
    node.write_config(hook("h", "http://127.0.0.1:9/"))
    env_cmd = ["env", "SERFBRIDGE_SERF__RPC_ADDR=nonsense", *serfbridge_cmd]
    checked = serfbridge(env_cmd, node, "check")
    assert checked.returncode == 3
    assert "serf.rpc_addr" in checked.stderr
    assert os.environ.get("SERFBRIDGE_SERF__RPC_ADDR") is None


def test_a_sink_bug_is_logged_with_its_traceback_and_not_retried_forever(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """An entry that passes the spool checks but trips a sink's own code (a chat message
    rendered from an event without `received_at`): traceback in the log, dead letter after a
    few attempts with reason `bug: ...`, and the other sink delivers its entry."""
    node.write_config(
        "spawn_deliverer = false\n" + FAST + "max_attempts = 1000\n"
        + hook("chat", http_receiver.url_for("/chat"), 'format = "slack"')
        + hook("plain", http_receiver.url_for("/plain"))
    )  # fmt: skip
    fire_user(serfbridge_cmd, node, "ok", 1)
    queue = node.state / "spool" / "queue" / "chat"
    queue.mkdir(parents=True)
    odd = {"id": "odd", "event": "user", "name": "odd", "node": {"name": "n1", "role": ""}}
    name = f"{time.time_ns():020d}-0000001-0001.json"  # young: max_age is not what ends it
    (queue / name).write_text(json.dumps({"event": odd}))
    for _ in range(5):
        serfbridge(serfbridge_cmd, node, "flush", "--timeout", "10")
        if spool_files(node, "dead", "chat"):
            break
    dead = spool_files(node, "dead", "chat")
    assert dead == [name], node.log_tail()
    reason = json.loads((node.state / "spool" / "dead" / "chat" / (dead[0][:-5] + ".reason"))
                        .read_text())  # fmt: skip
    assert reason["reason"].startswith("bug: KeyError")
    assert reason["attempts"] == 3
    assert "Traceback" in (node.state / "serfbridge.log").read_text()
    assert "/plain" in paths_of(http_receiver, "ok")
