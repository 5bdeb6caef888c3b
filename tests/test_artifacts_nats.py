"""The frozen Linux builds publish to NATS JetStream (nats-py and nkeys frozen with them).

Run after `installers/linux/build.sh`: `pytest --artifacts -m artifact` (docs/building.md).
"""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING

import pytest
from support.artifacts import LINUX_BUILDS as BUILDS
from support.bridge import BridgeNode
from support.handler import fire_user
from support.ports import wait_for
from support.proc import clean_environ

if TYPE_CHECKING:
    from pathlib import Path

    from support.nats import NatsServer

pytestmark = pytest.mark.artifact


def _nkey_user(tmp_path: Path) -> tuple[Path, str]:
    import nkeys  # type: ignore[import-untyped]

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path = tmp_path / "user.nk"
    path.write_bytes(seed)
    return path, nkeys.from_seed(bytearray(seed)).public_key.decode()


@pytest.mark.parametrize("rel", BUILDS)
def test_frozen_build_publishes_to_jetstream(
    linux_dist: Path, tmp_path: Path, nats_server: NatsServer, rel: str
) -> None:
    """The frozen handler's deliverer publishes each event with its JetStream ack, and
    `check --connect` reaches the server."""
    nats_server.add_stream("FROZEN", ["frozen.>"])
    binary = str(linux_dist / rel)
    node = BridgeNode(tmp_path, "n1")
    node.write_config(
        f'[[sinks]]\ntype = "nats"\nname = "js"\nurl = "{nats_server.url}"\n'
        'subject = "frozen.{event}"\nstream = "FROZEN"\nformat = "cloudevents"\n'
        "[delivery]\nlinger = 1\n"
    )
    try:
        fire_user([binary], node, "deploy", 7, b"frozen")
        docs = wait_for(
            lambda: nats_server.stream_messages("FROZEN"),
            30,
            what="the event in the stream",
            detail=node.log_tail,
        )
    finally:
        node.kill_deliverer()
    [(headers, data)] = docs
    assert headers["Content-Type"].startswith("application/cloudevents+json")
    assert b'"type":"io.serf.user"' in data
    check = subprocess.run(
        [binary, "--config", str(node.config), "check", "--connect"],
        capture_output=True, text=True, timeout=60, check=False, env=clean_environ(node.env()),
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "sink js: type=nats" in check.stdout
    assert "reachable" in check.stdout


def test_frozen_build_logs_in_with_an_nkey(
    linux_dist: Path, tmp_path: Path, nats_server: NatsServer
) -> None:
    """An NKey login needs nkeys and PyNaCl (libsodium) inside the frozen build."""
    from support.nats import NatsServer as Server

    seed, public = _nkey_user(tmp_path)
    block = f'authorization {{ users: [ {{ nkey: "{public}" }} ] }}'
    with Server(tmp_path / "nkey", extra_config=[block]) as server:
        server.start()
        node = BridgeNode(tmp_path, "n2")
        node.write_config(
            f'[[sinks]]\ntype = "nats"\nname = "core"\nurl = "{server.url}"\nnkey_seed = "{seed}"\n'
        )
        check = subprocess.run(
            [str(linux_dist / BUILDS[0]), "--config", str(node.config), "check", "--connect"],
            capture_output=True, text=True, timeout=60, check=False,
            env=clean_environ(node.env()),
        )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "reachable" in check.stdout
