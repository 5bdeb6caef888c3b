"""The local source: its framed protocol (Windows named pipes) run here over AF_UNIX, and
`serfbridge send`, its client, against a running relay.

On Windows the local source listens on a named pipe through ``multiprocessing.connection``
with family ``AF_PIPE``; everything after the listener (accept loop, frames in and out, the
gate, Serf) is the same code, exercised here with family ``AF_UNIX`` against a real agent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from multiprocessing.connection import Client
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.ports import wait_for
from support.relay import RelayProcess, Watcher

from serfbridge.config.models import load_settings
from serfbridge.relay.app import Relay
from serfbridge.relay.sources.local import LocalSource

if TYPE_CHECKING:
    from support.serf import SerfClusterFactory


def test_framed_local_source_raises_events_and_answers(
    serf_cluster: SerfClusterFactory, tmp_path: Path
) -> None:
    """One frame in, one JSON frame out: accepted, not allowed, malformed."""
    agent = serf_cluster(1)[0]
    watch = Watcher(agent)
    short = Path(tempfile.mkdtemp(prefix="sbp", dir="/tmp"))
    config = tmp_path / "c.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[serf]\nrpc_addr = "{agent.rpc_addr}"\n'
        f'[[sources]]\ntype = "local"\npath = "{short / "pipe"}"\nallow_events = ["deploy"]\n'
    )
    relay = Relay(load_settings(str(config)), None)
    source = relay.sources[0]
    assert isinstance(source, LocalSource)
    source.start_framed("AF_UNIX")
    try:
        with Client(str(short / "pipe"), family="AF_UNIX") as conn:
            conn.send_bytes(b'{"type": "event", "name": "deploy", "payload": "framed"}')
            assert json.loads(conn.recv_bytes()) == {"accepted": True}
            conn.send_bytes(b'{"type": "event", "name": "other"}')
            assert json.loads(conn.recv_bytes())["reason"] == "not_allowed"
            conn.send_bytes(b"{nope")
            assert json.loads(conn.recv_bytes())["reason"] == "malformed"
        wait_for(lambda: watch.payloads() == [b"framed"], 10, what="the framed event")
    finally:
        source.stop()
        relay.serf.close()
        watch.close()
        shutil.rmtree(short, ignore_errors=True)


def _send(
    cmd: list[str], config: Path, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*cmd, "--config", str(config), "send", *args],
        input=stdin.decode("latin-1"), capture_output=True, text=True, encoding="latin-1",
        timeout=60, check=False,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.e2e
def test_send_command_through_a_running_relay(
    serf_cluster: SerfClusterFactory, serfbridge_cmd: list[str], tmp_path: Path
) -> None:
    """`serfbridge send` finds the config's local source, prints the relay's answer and
    exits 0 / 9 (refused) / 6 (nothing listening) / 2 (bad arguments)."""
    cluster = serf_cluster(2)
    watch = Watcher(cluster[0])
    short = Path(tempfile.mkdtemp(prefix="sbs", dir="/tmp"))
    body = (
        f'[[sources]]\ntype = "local"\npath = "{short / "relay.sock"}"\n'
        'allow_events = ["deploy"]\nallow_queries = ["load"]\n'
    )
    relay = RelayProcess(tmp_path / "relay", serfbridge_cmd, body, rpc_addr=cluster[0].rpc_addr)
    try:
        with relay:
            relay.start()
            ok = _send(serfbridge_cmd, relay.config, "event", "deploy", "v2")
            assert (ok.returncode, json.loads(ok.stdout)) == (0, {"accepted": True})
            raw = _send(serfbridge_cmd, relay.config, "event", "deploy", "-", stdin=b"\xff\x00b")
            assert raw.returncode == 0, raw.stderr
            wait_for(lambda: watch.payloads() == [b"v2", b"\xff\x00b"], 10, what="both events")
            query = _send(serfbridge_cmd, relay.config, "query", "load", "p", "--timeout", "1")
            assert query.returncode == 0, query.stderr
            reply = json.loads(query.stdout)
            # Both nodes acked; neither has a responder, so neither answered.
            assert sorted(reply["acks"]) == ["n1", "n2"]
            assert (sorted(reply["unanswered"]), reply["complete"]) == (["n1", "n2"], False)
            refused = _send(serfbridge_cmd, relay.config, "event", "rm-rf")
            assert refused.returncode == 9
            assert json.loads(refused.stdout)["reason"] == "not_allowed"
            assert "refused" in refused.stderr
            usage = _send(serfbridge_cmd, relay.config, "event", "deploy", "--node", "n1")
            assert usage.returncode == 2
        gone = _send(serfbridge_cmd, relay.config, "event", "deploy")
        assert gone.returncode == 6
        assert "no relay listening at" in gone.stderr
        bare = tmp_path / "bare.toml"
        bare.write_text(f'state_dir = "{tmp_path / "s"}"\n')
        missing = _send(serfbridge_cmd, bare, "event", "deploy")
        assert missing.returncode == 3
        assert "give --path" in missing.stderr
    finally:
        watch.close()
        shutil.rmtree(short, ignore_errors=True)
