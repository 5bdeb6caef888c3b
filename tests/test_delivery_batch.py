"""Issue 15 target 3: batch files in ``incoming/`` (the stream relay's group commit) through
the real deliverer: each line is its own entry (progress, rejection, status, spool list),
a bad line is rejected alone, and a deliverer killed halfway through a batch finishes it
after a restart without losing a line."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest
from support.bridge import BridgeNode
from support.handler import serfbridge
from support.ports import free_port, wait_for
from support.proc import clean_environ

if TYPE_CHECKING:
    from pathlib import Path

    from support.servers import HttpReceiver

pytestmark = pytest.mark.e2e

FAST = "[delivery]\nbackoff_initial = 0.05\nbackoff_max = 0.2\nlinger = 60\nmax_attempts = 1000\n"
# Entry names carry their capture time; max_age counts from it.
STEM = f"{time.time_ns():020d}-0000001-0001"


def event(n: int) -> dict[str, Any]:
    return {"v": 1, "id": f"id-{n}", "event": "user", "name": "burst", "payload": f"p{n}",
            "node": {"name": "n1"}, "members": []}  # fmt: skip


def line(sinks: list[str], n: int) -> bytes:
    return json.dumps({"sinks": sinks, "event": event(n)}).encode() + b"\n"


def write_batch(node: BridgeNode, lines: list[bytes], stem: str = STEM) -> Path:
    incoming = node.state / "spool" / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    path = incoming / f"{stem}.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def file_sink(node: BridgeNode) -> str:
    path = json.dumps(str(node.state / "events.jsonl"))
    return f'[[sinks]]\ntype = "file"\nname = "file"\npath = {path}\n'


def hook_sink(url: str) -> str:
    return f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{url}"\ntimeout = 2\n'


def payloads(node: BridgeNode) -> list[str]:
    return [e["payload"] for e in node.events()]


def test_bad_lines_are_rejected_alone_and_the_rest_delivered_in_order(
    tmp_path: Path, serfbridge_cmd: list[str]
) -> None:
    node = BridgeNode(tmp_path, "n1")
    node.write_config(file_sink(node))
    bad_sink = json.dumps({"sinks": ["../x"], "event": event(9)}).encode() + b"\n"
    batch = write_batch(node, [line(["file"], 0), b"\xff not json\n", line(["file"], 1),
                               bad_sink, line(["file"], 2), b"\n\n"])  # fmt: skip
    assert serfbridge(serfbridge_cmd, node, "flush", "--timeout", "20").returncode == 0
    assert payloads(node) == ["p0", "p1", "p2"]
    assert not batch.exists()
    rejected = node.state / "spool" / "rejected"
    assert sorted(p.name for p in rejected.iterdir()) == [
        f"{STEM}.00001.json", f"{STEM}.00001.reason", f"{STEM}.00003.json", f"{STEM}.00003.reason"
    ]  # fmt: skip
    assert (rejected / f"{STEM}.00001.json").read_bytes() == b"\xff not json"
    assert (
        "invalid sink name" in json.loads((rejected / f"{STEM}.00003.reason").read_text())["reason"]
    )
    listed = serfbridge(serfbridge_cmd, node, "spool", "list", "--rejected").stdout
    assert f"rejected {STEM}.00001: not JSON" in listed
    assert f"rejected {STEM}.00003: invalid sink name" in listed


def test_status_and_spool_list_count_the_lines_of_a_batch(
    tmp_path: Path, serfbridge_cmd: list[str]
) -> None:
    node = BridgeNode(tmp_path, "n1")
    node.write_config(hook_sink(f"http://127.0.0.1:{free_port()}/") + FAST)
    write_batch(node, [line(["hook"], n) for n in range(3)])
    progress = node.state / "spool" / "progress"
    progress.mkdir(parents=True)
    (progress / "hook.done").write_text(f"{STEM}.00001.json\n")  # finished before a restart
    status = json.loads(serfbridge(serfbridge_cmd, node, "status", "--json").stdout)
    assert status["sinks"]["hook"]["queued"] == 2
    listed = serfbridge(serfbridge_cmd, node, "spool", "list", "--queue").stdout.splitlines()
    assert listed[0] == "queue hook: 2 event(s)"
    assert [row.split()[0] for row in listed[1:]] == [f"{STEM}.00000", f"{STEM}.00002"]
    purged = serfbridge(serfbridge_cmd, node, "spool", "purge", f"{STEM}.00000", "--queue")
    assert "1 queue event(s) removed" in purged.stdout
    status = json.loads(serfbridge(serfbridge_cmd, node, "status", "--json").stdout)
    assert status["sinks"]["hook"]["queued"] == 1


def test_a_deliverer_killed_halfway_through_a_batch_finishes_it_after_a_restart(
    tmp_path: Path, serfbridge_cmd: list[str], http_receiver: HttpReceiver
) -> None:
    """The webhook takes the first 150 of 300 lines, then answers 503; the file sink has them
    all. SIGKILL, receiver healthy again, restart: every line reaches the webhook, the file
    sink gets none twice (its progress survived the kill), and the batch file goes."""
    n = 300
    node = BridgeNode(tmp_path, "n1")
    node.write_config(file_sink(node) + hook_sink(http_receiver.url_for("/h")) + FAST)
    batch = write_batch(node, [line(["file", "hook"], k) for k in range(n)])
    http_receiver.set_default(503)
    http_receiver.respond_with(200, times=150)
    argv = [*serfbridge_cmd, "--config", str(node.config), "deliver"]
    env = clean_environ(node.env())
    deliverer = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: len(node.events()) == n and len(http_receiver.requests) > 160, 90,
                 what="the file sink done, the webhook half", detail=node.log_tail)  # fmt: skip
    finally:
        deliverer.send_signal(signal.SIGKILL)
        deliverer.wait(10)
    assert batch.exists()
    done = (node.state / "spool" / "progress" / "hook.done").read_text().split()
    assert 100 <= len(done) <= 150
    http_receiver.set_default(200)
    assert serfbridge(serfbridge_cmd, node, "flush", "--timeout", "30").returncode == 0
    expected = [f"p{k}" for k in range(n)]
    assert payloads(node) == expected  # nothing twice: the kill kept the file sink's progress
    ok = [r.json()["payload"] for r in http_receiver.requests if r.status == 200]
    assert list(dict.fromkeys(ok)) == expected  # at least once, in order
    assert not batch.exists()
    assert not list((node.state / "spool" / "incoming").iterdir())
