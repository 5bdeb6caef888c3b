"""The local source's framed protocol (Windows named pipes), run here over AF_UNIX.

On Windows the local source listens on a named pipe through ``multiprocessing.connection``
with family ``AF_PIPE``; everything after the listener (accept loop, frames in and out, the
gate, Serf) is the same code, exercised here with family ``AF_UNIX`` against a real agent.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from multiprocessing.connection import Client
from pathlib import Path
from typing import TYPE_CHECKING

from support.ports import wait_for
from support.relay import Watcher

from serfbridge.config import load_settings
from serfbridge.relay import Relay
from serfbridge.sources.local import LocalSource

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
