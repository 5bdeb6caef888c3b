"""A backlog draining: batches, the progress files and the unlinks, against real receivers.

Events are captured with ``spool.capture`` (the handler's own function) while the receivers
are down or refusing, then ``serfbridge flush`` drains them: every sink gets every event once,
in capture order; what a sink did not acknowledge stays queued, and a ``kill -9`` in the middle
costs at most the batch in flight a second delivery.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

from support.bridge import BridgeNode
from support.handler import serfbridge, spool_files
from support.mqttclient import MqttPeer
from support.ports import wait_for
from support.proc import clean_environ

from serfbridge.capture import jsonenc, spool
from serfbridge.capture.event import parse_event
from serfbridge.delivery import stats
from serfbridge.delivery.ledger import Ledger

if TYPE_CHECKING:
    from pathlib import Path

    import pytest
    from support.servers import HttpReceiver, Mosquitto, RedisServer

WEBHOOK_BATCH = 100  # WebhookSink.max_batch: what one kill -9 may send twice


def seq_doc(ltime: int) -> str:
    """User event ``seq`` with this ltime, as the handler would capture it."""
    environ = {
        "SERF_EVENT": "user",
        "SERF_USER_EVENT": "seq",
        "SERF_USER_LTIME": str(ltime),
        "SERF_SELF_NAME": "node-a",
    }
    return jsonenc.dumps(parse_event(environ, b"", 0))


def capture(node: BridgeNode, sinks: list[str], count: int) -> list[str]:
    """``count`` user events (ltime 1..count) for ``sinks``; their entry names, in order."""
    for ltime in range(1, count + 1):
        spool.capture(str(node.state), sinks, seq_doc(ltime))
    return spool_files(node, "incoming")


def hook(url: str) -> str:
    return f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{url}"\ntimeout = 2\n'


def stream(url: str) -> str:
    return f'[[sinks]]\ntype = "redis"\nname = "rs"\nurl = "{url}"\nstream = "drain"\n'


def progress(node: BridgeNode, sink: str) -> list[str]:
    path = node.state / "spool" / "progress" / f"{sink}.done"
    return path.read_text().split() if path.exists() else []


def ok_ltimes(receiver: HttpReceiver) -> list[int]:
    return [r.json()["ltime"] for r in receiver.requests if r.status == 200]


def stream_ltimes(redis_server: RedisServer) -> list[int]:
    return [d["ltime"] for d in redis_server.event_docs("drain")]


def test_backlog_for_three_sinks_drains_to_each_in_order_none_lost(
    tmp_path: Path,
    http_receiver: HttpReceiver,
    redis_server: RedisServer,
    mosquitto: Mosquitto,
    serfbridge_cmd: list[str],
) -> None:
    """More entries than one batch of any sink: each sink sees 1..N once, in order; the
    spool is empty afterwards."""
    node = BridgeNode(tmp_path, "n1")
    mqtt = f'[[sinks]]\ntype = "mqtt"\nname = "mq"\nurl = "{mosquitto.url}"\ntopic = "d/x"\n'
    node.write_config(hook(http_receiver.url) + stream(redis_server.url) + mqtt + "qos = 1\n")
    n = 1100
    capture(node, ["hook", "rs", "mq"], n)
    peer = MqttPeer(mosquitto.port, subscribe="d/#")
    try:
        done = serfbridge(serfbridge_cmd, node, "flush", timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr + node.log_tail()
        wait_for(lambda: len(peer.received()) >= n, 30, what=f"{n} MQTT messages")
        time.sleep(0.2)  # a duplicate, if any, arrives too
        mqtt_ltimes = [json.loads(payload)["ltime"] for _, payload, _ in peer.received()]
    finally:
        peer.close()
    assert ok_ltimes(http_receiver) == list(range(1, n + 1))
    assert stream_ltimes(redis_server) == list(range(1, n + 1))
    assert mqtt_ltimes == list(range(1, n + 1))
    assert spool_files(node, "incoming") == []
    # The progress files are cut back to the live entries by the next start.
    assert serfbridge(serfbridge_cmd, node, "flush").returncode == 0
    assert [progress(node, s) for s in ("hook", "rs", "mq")] == [[], [], []]


def test_503_in_the_middle_of_a_batch_records_only_the_acknowledged_prefix(
    tmp_path: Path,
    http_receiver: HttpReceiver,
    redis_server: RedisServer,
    serfbridge_cmd: list[str],
) -> None:
    """The 151st POST (the second batch) gets a 503: the webhook's progress names exactly the
    150 entries it acknowledged, the rest stays queued for it (and only for it: Redis has all
    of them), and the next flush delivers the rest in order, none twice."""
    node = BridgeNode(tmp_path, "n1")
    node.write_config(hook(http_receiver.url) + stream(redis_server.url))
    names = capture(node, ["hook", "rs"], 400)
    http_receiver.respond_with(200, times=150)
    http_receiver.respond_with(503)
    first = serfbridge(serfbridge_cmd, node, "flush", timeout=120)
    assert first.returncode != 0  # the webhook still has entries
    assert progress(node, "hook") == names[:150]
    assert spool_files(node, "incoming") == names[150:]
    assert stream_ltimes(redis_server) == list(range(1, 401))
    second = serfbridge(serfbridge_cmd, node, "flush", timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr + node.log_tail()
    assert ok_ltimes(http_receiver) == list(range(1, 401))
    assert stream_ltimes(redis_server) == list(range(1, 401))  # nothing sent twice
    assert spool_files(node, "incoming") == []


def test_kill_9_mid_drain_repeats_at_most_the_unacknowledged_batch(
    tmp_path: Path,
    http_receiver: HttpReceiver,
    redis_server: RedisServer,
    serfbridge_cmd: list[str],
) -> None:
    """The receiver stops answering half-way and the flush is killed: the progress file
    names only acknowledged entries, and after the next flush every event arrived, in order
    of first arrival, with duplicates only from the batch that was in flight."""
    node = BridgeNode(tmp_path, "n1")
    node.write_config(hook(http_receiver.url) + stream(redis_server.url))
    n = 600
    names = capture(node, ["hook", "rs"], n)
    proc = subprocess.Popen(
        [*serfbridge_cmd, "flush"],
        env=clean_environ(node.env()),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: len(http_receiver.requests) >= 250, 120, what="250 POSTs")
        http_receiver.hang()
        # Until the one POST in flight is recorded, unanswered.
        wait_for(lambda: http_receiver.requests[-1].status != 200, 30, what="a hung POST")
        acknowledged = len(ok_ltimes(http_receiver))
        recorded = progress(node, "hook")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert recorded == names[: len(recorded)]
    assert acknowledged - WEBHOOK_BATCH <= len(recorded) <= acknowledged
    after = progress(node, "hook")
    assert after == names[: len(after)]
    assert len(after) <= acknowledged
    http_receiver.unhang()
    done = serfbridge(serfbridge_cmd, node, "flush", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr + node.log_tail()
    got = ok_ltimes(http_receiver)
    assert list(dict.fromkeys(got)) == list(range(1, n + 1))
    assert len(got) - n <= WEBHOOK_BATCH
    assert stream_ltimes(redis_server)[:1] == [1]
    assert set(stream_ltimes(redis_server)) == set(range(1, n + 1))
    assert spool_files(node, "incoming") == []


def test_spool_status_reads_each_progress_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The metrics and ``spool list`` read a sink's progress once per look, not once per
    waiting entry (which made a 10,000-entry backlog cost 10,000 reads of a growing file)."""
    node = BridgeNode(tmp_path, "n1")
    names = capture(node, ["a", "b"], 50)
    progress_dir = node.state / "spool" / "progress"
    progress_dir.mkdir(parents=True, exist_ok=True)
    (progress_dir / "a.done").write_text("".join(n + "\n" for n in names[:10]))
    reads: list[str] = []
    read_done = stats.read_done

    def counted(state_dir: str, sink: str) -> set[str]:
        reads.append(sink)
        return read_done(state_dir, sink)

    monkeypatch.setattr(stats, "read_done", counted)
    snap = stats.snapshot(str(node.state), ["a", "b"])
    assert sorted(reads) == ["a", "b"]
    assert (snap["sinks"]["a"]["queued"], snap["sinks"]["b"]["queued"]) == (40, 50)


def test_an_entry_whose_unlink_was_cut_off_is_not_sent_again(tmp_path: Path) -> None:
    """The reaper had not removed a delivered batch yet when the process died: the next
    start finds every sink's progress naming those entries, removes them and sends none."""
    node = BridgeNode(tmp_path, "n1")
    names = capture(node, ["a", "b"], 5)
    ledger = Ledger(str(node.state))
    ledger.load_progress()
    ledger.scan_incoming()
    for sink in ("a", "b"):
        batch = [item for item, _ in ledger.first(sink, 3)]
        ledger.finish_many(sink, batch, remove=lambda _paths: None)  # killed before unlinking
    assert spool_files(node, "incoming") == names
    restarted = Ledger(str(node.state))
    restarted.load_progress()
    assert restarted.scan_incoming() == ["a", "b"]
    assert [item.name for item, _ in restarted.first("a", 10)] == names[3:]
    assert [item.name for item, _ in restarted.first("b", 10)] == names[3:]
    assert spool_files(node, "incoming") == names[3:]


def test_progress_compaction_keeps_what_a_sink_finishes_meanwhile(tmp_path: Path) -> None:
    """The deliverer compacts the progress files (when the spool looks drained) while sink
    threads may still append to them: no name a sink finished may be lost by the rewrite,
    or a restart sends those lines of a batch file again. Real threads and files: three
    sinks finish the lines of one batch file one by one while the compaction runs in a loop
    (bounded by count), and a fourth sink keeps the file on disk."""
    import sys
    import threading

    node = BridgeNode(tmp_path, "n1")
    lines, finishing = 3000, ["a", "b", "c"]
    docs = [([*finishing, "d"], seq_doc(ltime)) for ltime in range(1, lines + 1)]
    spool.capture_many(str(node.state), docs)
    ledger = Ledger(str(node.state))
    ledger.load_progress()
    ledger.scan_incoming()
    finished = threading.Event()

    def compact() -> None:
        for _ in range(1_000_000):
            if finished.is_set():
                return
            ledger.compact_progress()

    def finish(sink: str) -> None:
        for item, _ in ledger.first(sink, lines):
            ledger.finish_many(sink, [item], remove=lambda _paths: None)

    threads = [threading.Thread(target=finish, args=(sink,)) for sink in finishing]
    compactor = threading.Thread(target=compact)
    # Switch threads as often as the interpreter can, so that they interleave everywhere.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        compactor.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        finished.set()
        compactor.join(60)
        sys.setswitchinterval(switch)
    restarted = Ledger(str(node.state))
    restarted.load_progress()
    restarted.scan_incoming()
    for sink in finishing:
        assert restarted.first(sink, lines) == [], f"{sink}: finished lines would be sent again"
    assert len(restarted.first("d", lines)) == lines
