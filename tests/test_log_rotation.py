"""logrotate under a running relay and deliverer: both keep logging into the new file.

The relay, the deliverer and each handler run append to one ``serfbridge.log``, as on an
installed system. The file is rotated by the real ``logrotate`` with the config the .deb
ships (installers/linux/debian/logrotate: rename, then ``create``), then renamed away and
followed by SIGHUP, which the old code did not handle (SIGHUP ended both processes).
"""

from __future__ import annotations

import getpass
import grp
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.bridge import BridgeNode
from support.handler import fire_user
from support.ports import free_port, wait_for
from support.proc import clean_environ, require_binary
from support.relay import RelayProcess, http_source, post

if TYPE_CHECKING:
    from collections.abc import Iterator

    from support.servers import HttpReceiver

pytestmark = pytest.mark.e2e

SHIPPED = Path(__file__).resolve().parent.parent / "installers/linux/debian/logrotate"
TOKEN = "rotate-t0ken"  # noqa: S105 - test value
WRONG = "not-the-t0ken"
# A deliverer that stays up for the whole test (linger), polling often.
DELIVERY = "[delivery]\nlinger = 120\npoll_interval = 0.02\nbackoff_initial = 0.05\n"


class Setup:
    def __init__(self, node: BridgeNode, relay: RelayProcess, port: int, deliverer: int) -> None:
        self.node, self.relay, self.port, self.deliverer = node, relay, port, deliverer
        self.log = node.state / "serfbridge.log"
        self.ltime = 100

    def activity(self) -> None:
        """One record from each: a refused POST (relay), an event the deliverer delivers."""
        status, _ = post(self.port, "/v1/event", {"name": "x"}, token=WRONG)
        assert status == 401
        self.ltime += 1
        fire_user(self.relay.cmd, self.node, "deploy", self.ltime)

    def pids_in(self, path: Path) -> set[int]:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        return {int(p) for p in re.findall(r"\bpid=(\d+)", text)}

    def both_log_into(self, path: Path) -> None:
        want = {self.relay.pid, self.deliverer}
        for _ in range(40):  # bounded: a few seconds of activity at most
            self.activity()
            if want <= self.pids_in(path):
                return
            time.sleep(0.25)
        missing = want - self.pids_in(path)
        raise AssertionError(f"pids {missing} never wrote to {path}:\n{path.read_text()[-2000:]}")


@pytest.fixture
def setup(
    tmp_path: Path, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> Iterator[Setup]:
    node = BridgeNode(tmp_path, "n1")
    node.write_config(
        f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{http_receiver.url}"\n' + DELIVERY
    )
    fire_user(serfbridge_cmd, node, "deploy", 1)
    http_receiver.wait_for_count(1, timeout=20)
    pid_file = node.state / "spool" / "deliver.pid"
    deliverer = wait_for(lambda: pid_file.exists() and int(pid_file.read_text()), 10, what="pid")
    port = free_port()
    relay = RelayProcess(
        tmp_path / "relay",
        serfbridge_cmd,
        http_source(port, token=TOKEN, allow_events=["x"]),
        # The relay connects to Serf only for a message that passed the gate: none here.
        rpc_addr=f"127.0.0.1:{free_port()}",
    )
    relay.log_file = node.state / "serfbridge.log"
    try:
        relay.start()
        yield Setup(node, relay, port, deliverer)
    finally:
        relay.stop()
        node.kill_deliverer()


def _logrotate_config(log: Path) -> str:
    """The shipped config for this log file, rotating as the user running the tests (the
    system user serfbridge does not exist here)."""
    user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
    text = SHIPPED.read_text(encoding="utf-8")
    text = text.replace("/var/lib/serfbridge/serfbridge.log", str(log))
    text = text.replace("su serfbridge serfbridge", f"su {user} {group}")
    return text.replace("create 0660 serfbridge serfbridge", f"create 0660 {user} {group}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_logrotate_with_the_shipped_config(setup: Setup, tmp_path: Path) -> None:
    """After logrotate renames the log and creates a new one, the relay and the deliverer
    write into the new file (within about a second), and nothing more into the old one."""
    logrotate = require_binary("logrotate", "logrotate")
    setup.both_log_into(setup.log)
    conf = tmp_path / "logrotate.conf"
    conf.write_text(_logrotate_config(setup.log), encoding="utf-8")
    done = subprocess.run(
        [logrotate, "--force", "--state", str(tmp_path / "logrotate.state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environ(),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rotated = setup.log.with_name("serfbridge.log.1")
    assert rotated.exists()  # delaycompress: the first rotation stays uncompressed
    assert setup.pids_in(setup.log) == set()  # created empty by logrotate
    setup.both_log_into(setup.log)
    # Once they have moved, the old file gets nothing new.
    size = rotated.stat().st_size
    setup.activity()
    time.sleep(0.3)
    setup.activity()
    assert rotated.stat().st_size == size


def test_sighup_reopens_at_once(setup: Setup) -> None:
    """SIGHUP: both processes live on and reopen the path at once (the new file exists
    before either writes a record), then log into it."""
    setup.both_log_into(setup.log)
    setup.log.rename(setup.log.with_name("serfbridge.log.old"))
    for pid in (setup.relay.pid, setup.deliverer):
        os.kill(pid, signal.SIGHUP)
    wait_for(setup.log.exists, timeout=5, what="the log reopened on SIGHUP")
    time.sleep(0.5)
    assert _alive(setup.relay.pid), setup.relay.log_tail()
    assert _alive(setup.deliverer)
    setup.both_log_into(setup.log)
