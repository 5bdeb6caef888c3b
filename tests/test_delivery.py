"""The spool and the deliverer, driven through the real handler against real receivers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest
from support.bridge import BridgeNode
from support.handler import fire_user, run_handler, serfbridge, spool_files
from support.ports import wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.servers import BlackholeServer, HttpReceiver

FAST = "[delivery]\nlinger = 1\nbackoff_initial = 0.05\nbackoff_max = 0.5\npoll_interval = 0.02\n"


def webhook(url: str, extra: str = "") -> str:
    return f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{url}"\ntimeout = 1\n{extra}\n'


@pytest.fixture
def node(tmp_path: Path) -> Iterator[BridgeNode]:
    bridge = BridgeNode(tmp_path, "n1")
    yield bridge
    bridge.kill_deliverer()


def posted(receiver: HttpReceiver) -> list[dict[str, Any]]:
    return [r.json() for r in receiver.requests if r.status == 200]


def test_event_is_spooled_and_delivered_in_the_background(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """The handler returns at once; the deliverer it started POSTs the document; spool drains."""
    node.write_config(webhook(http_receiver.url) + FAST)
    fire_user(serfbridge_cmd, node, "deploy", 1, b"v1")
    http_receiver.wait_for_count(1, timeout=15)
    doc = http_receiver.requests[0].json()
    assert (doc["event"], doc["name"], doc["payload"]) == ("user", "deploy", "v1")
    # One sink: the entry leaves incoming/ once the webhook has it.
    wait_for(lambda: not spool_files(node, "incoming"), timeout=10, what="the spool to drain")


def test_handler_returns_within_deadline_when_the_sink_never_answers(
    node: BridgeNode, blackhole: BlackholeServer, serfbridge_cmd: list[str]
) -> None:
    """A receiver that accepts TCP and never answers does not hold the handler."""
    node.write_config(webhook(blackhole.url) + FAST)
    fire_user(serfbridge_cmd, node, "warm", 1)  # compiles and caches the config
    start = time.monotonic()
    fire_user(serfbridge_cmd, node, "deploy", 2)
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, f"handler took {elapsed:.2f}s with a hung sink"
    blackhole.wait_for_connections(1, timeout=10)
    assert len(spool_files(node, "incoming")) >= 1  # the one durable copy, until delivered


def test_rejected_event_goes_to_dead_letters_and_can_be_retried(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """A 404 dead-letters the event with its reason; `spool retry` + `flush` delivers it."""
    node.write_config(webhook(http_receiver.url) + FAST)
    http_receiver.respond_with(404, body=b"no such hook")
    fire_user(serfbridge_cmd, node, "deploy", 1)
    wait_for(lambda: spool_files(node, "dead", "hook"), timeout=15, what="a dead letter")
    listing = serfbridge(serfbridge_cmd, node, "spool", "list", "--dead")
    assert listing.returncode == 0
    assert "404" in listing.stdout
    assert serfbridge(serfbridge_cmd, node, "spool", "retry").returncode == 0
    flushed = serfbridge(serfbridge_cmd, node, "flush", "--timeout", "20")
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    assert [d["name"] for d in posted(http_receiver)] == ["deploy"]
    assert spool_files(node, "dead", "hook") == []


def test_events_keep_their_order_through_retries(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """503s with Retry-After hold the head back; every event arrives, in capture order."""
    node.write_config(webhook(http_receiver.url) + FAST)
    http_receiver.respond_with(503, headers={"Retry-After": "0"}, times=5)
    for ltime in range(1, 31):
        fire_user(serfbridge_cmd, node, "seq", ltime)
    wait_for(lambda: len(posted(http_receiver)) >= 30, timeout=30, what="30 deliveries")
    assert [d["ltime"] for d in posted(http_receiver)] == list(range(1, 31))


def test_kill_9_of_the_deliverer_mid_delivery_loses_nothing(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """kill -9 of the deliverer while it works; `flush` then delivers every remaining event."""
    node.write_config(webhook(http_receiver.url) + FAST)
    http_receiver.hang()
    for ltime in range(1, 41):
        fire_user(serfbridge_cmd, node, "k", ltime)
    wait_for(lambda: http_receiver.requests, timeout=10, what="the deliverer to start sending")
    pid = int((node.state / "spool" / "deliver.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    http_receiver.unhang()
    flushed = serfbridge(serfbridge_cmd, node, "flush", "--timeout", "30")
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr + node.log_tail()
    # At least once: the event in flight at the kill may arrive twice, none may be missing.
    assert {d["ltime"] for d in posted(http_receiver)} == set(range(1, 41))


def test_concurrent_handlers_and_flush_deliver_each_event_once(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """Handlers of two "agents" and a flush running at once: every event exactly once."""
    node.write_config(webhook(http_receiver.url) + FAST)
    procs = []
    for ltime in range(1, 61):
        env_extra = {"SERF_USER_EVENT": "c", "SERF_USER_LTIME": str(ltime)}
        procs.append(
            subprocess.Popen(
                serfbridge_cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**node_env(node), **env_extra},
            )
        )
        if ltime == 30:
            procs.append(subprocess.Popen([*serfbridge_cmd, "flush"], env=node_env(node, False)))
    for proc in procs:
        proc.wait(timeout=60)
    wait_for(lambda: len(posted(http_receiver)) >= 60, timeout=30, what="60 deliveries")
    time.sleep(1.5)  # anything delivered twice would arrive within the deliverer's linger
    ltimes = sorted(d["ltime"] for d in posted(http_receiver))
    assert ltimes == list(range(1, 61))


def node_env(node: BridgeNode, serf: bool = True) -> dict[str, str]:
    from support.handler import serf_env
    from support.proc import clean_environ

    return serf_env(node) if serf else clean_environ(node.env())


def test_unconfigured_sink_is_dead_lettered_not_lost(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """An entry spooled for a sink that was removed from the config is kept as a dead letter."""
    node.write_config("spawn_deliverer = false\n" + webhook(http_receiver.url) + FAST)
    fire_user(serfbridge_cmd, node, "x", 1)
    node.write_config("sinks = []\n" + FAST)
    flushed = serfbridge(serfbridge_cmd, node, "flush", "--timeout", "10")
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    dead = spool_files(node, "dead", "hook")
    assert len(dead) == 1
    reason = json.loads(
        (node.state / "spool" / "dead" / "hook" / (dead[0][:-5] + ".reason")).read_text()
    )
    assert reason["reason"] == "sink removed from config"


def test_bad_input_never_reaches_sinks_and_is_kept(
    node: BridgeNode, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    """Garbage member lines: exit 4, nothing delivered, raw input kept in spool/rejected."""
    node.write_config(webhook(http_receiver.url) + FAST)
    proc = run_handler(serfbridge_cmd, node, "member-join", stdin=b"not a member line\n")
    assert proc.returncode == 4
    assert b"Traceback" not in proc.stderr + proc.stdout
    rejected = spool_files(node, "rejected")
    assert len(rejected) == 1
    assert http_receiver.requests == []
