"""Issue 12 item 4: a full disk (a small real tmpfs) never tears the file sink, never loses an
event that exited 0, and does not kill the deliverer. Needs root for `mount -t tmpfs`."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from typing import TYPE_CHECKING

import pytest
from support.bridge import BridgeNode
from support.handler import run_handler, serfbridge
from support.ports import wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support.servers import HttpReceiver

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, leave: int) -> Path:
    """Fill the filesystem, then free ``leave`` bytes."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def test_full_disk_then_freed_keeps_every_line_whole_and_every_exit_0_event(
    tmp_path: Path, small_disk: Path, http_receiver: HttpReceiver, serfbridge_cmd: list[str]
) -> None:
    node = BridgeNode(tmp_path, "n1")
    node.state = small_disk
    events_file = small_disk / "events.jsonl"
    node.write_config(
        f'[[sinks]]\ntype = "file"\nname = "file"\npath = "{events_file}"\n'
        f'[[sinks]]\ntype = "webhook"\nname = "hook"\nurl = "{http_receiver.url}"\ntimeout = 2\n'
        "[delivery]\nlinger = 120\nbackoff_initial = 0.05\nbackoff_max = 0.5\n"
        "max_attempts = 100000\n"
    )
    try:
        statuses: dict[int, int] = {}

        def fire(ltime: int) -> subprocess.CompletedProcess[bytes]:
            extra = {"SERF_USER_EVENT": "disk", "SERF_USER_LTIME": str(ltime)}
            proc = run_handler(serfbridge_cmd, node, "user", stdin=b"p" * 700 + b"\n", extra=extra)
            assert b"Traceback" not in proc.stderr
            statuses[ltime] = proc.returncode
            return proc

        fire(1)
        wait_for(lambda: http_receiver.requests, timeout=15, what="the first POST")
        pid = int((small_disk / "spool" / "deliver.pid").read_text())
        filler = fill(small_disk, leave=6000)
        full = [fire(ltime) for ltime in range(2, 31)]
        assert set(statuses.values()) <= {0, 6}, statuses
        refused = [p for p in full if p.returncode == 6]
        assert refused, "the disk never filled up"
        assert all(b"cannot spool event" in p.stderr for p in refused)
        filler.unlink()
        for ltime in range(31, 36):
            assert fire(ltime).returncode == 0
        ok = {lt for lt, status in statuses.items() if status == 0}

        def posted() -> set[int]:
            return {r.json()["ltime"] for r in http_receiver.requests if r.status == 200}

        wait_for(lambda: ok <= posted(), timeout=60, what="every exit-0 event POSTed",
                 detail=lambda: f"missing {sorted(ok - posted())}\n{node.log_tail()}")  # fmt: skip
        os.kill(pid, 0)  # the deliverer waited for space instead of dying
        flushed = serfbridge(serfbridge_cmd, node, "flush", "--timeout", "30")
        assert flushed.returncode == 0, flushed.stdout + node.log_tail()
        lines = events_file.read_bytes().split(b"\n")
        assert lines[-1] == b""
        docs = [json.loads(line) for line in lines[:-1]]  # every line parses: none torn or glued
        assert ok <= {d["ltime"] for d in docs}
        leftovers = list(small_disk.rglob("*.tmp"))
        assert leftovers == []
    finally:
        node.kill_deliverer()
