"""Responders and the command sink kill everything they started when their deadline
passes, also children that left the process group with ``setsid`` (capture.procrun)."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

import pytest

from serfbridge.capture import procrun, respond
from serfbridge.capture.event import parse_event

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="setsid and /proc are Linux")


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent (a container's init may never reap)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] != b"Z"


def _script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "escape.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


def _escaped(tmp_path: Path) -> int:
    pidfile = tmp_path / "escaped.pid"
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text())
        time.sleep(0.02)
    raise AssertionError("the escaped child never wrote its pid")


ESCAPES = {
    # The child leaves the session; its parent (the script) is still there.
    "setsid": "setsid sh -c 'echo $$ > {pid}; exec sleep 30' &\nsleep 30\n",
    # The same, and the subshell that started it exits at once: the child is orphaned to
    # init, outside the group and the parent chain.
    "orphaned": "(setsid sh -c 'echo $$ > {pid}; exec sleep 30' &)\nsleep 30\n",
    # In the foreground: `setsid sleep 30` itself, as a script would run it.
    "foreground": "sh -c 'echo $$ > {pid}; exec setsid sleep 30'\n",
}


@pytest.mark.parametrize("how", sorted(ESCAPES))
def test_responder_kills_a_child_that_escaped_with_setsid(tmp_path: Path, how: str) -> None:
    """The responder times out after 1 s; the child that escaped is dead when it returns."""
    script = _script(tmp_path, ESCAPES[how].format(pid=tmp_path / "escaped.pid"))
    env = {"SERF_EVENT": "query", "SERF_SELF_NAME": "n1", "SERF_QUERY_NAME": "slow",
           "SERF_QUERY_LTIME": "3"}  # fmt: skip
    doc = parse_event(env, b"", time.time())
    responder = {"query": "slow", "text": None, "command": [str(script)], "timeout": 1.0}
    answer = respond.answer(responder, doc, "{}", 1024)  # type: ignore[arg-type]
    assert b"timed out" in answer
    pid = _escaped(tmp_path)
    assert not _alive(pid), f"escaped child {pid} still running"


def test_command_sink_run_kills_a_child_that_escaped_with_setsid(tmp_path: Path) -> None:
    """procrun.run as the command sink calls it (its own environment): the same."""
    script = _script(tmp_path, ESCAPES["orphaned"].format(pid=tmp_path / "escaped.pid"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SERFBRIDGE_EVENT_NAME": "x"}
    done = procrun.run([str(script)], b"{}", 1.0, env)
    assert done.timed_out
    pid = _escaped(tmp_path)
    assert not _alive(pid), f"escaped child {pid} still running"


def test_a_finished_program_leaves_other_processes_alone(tmp_path: Path) -> None:
    """Only this run's processes are marked: a sleeping process of ours outside it stays."""
    import subprocess

    bystander = subprocess.Popen(["sleep", "30"])
    try:
        script = _script(tmp_path, "sleep 30\n")
        assert procrun.run([str(script)], b"", 0.5).timed_out
        assert _alive(bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()
