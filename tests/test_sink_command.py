"""``type = "command"``: real programs run per event, by the sink and by the real deliverer."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from support.bridge import BridgeNode
from support.handler import fire_user, run_handler, serfbridge, spool_files
from support.ports import wait_for

from serfbridge.config.models import load_settings
from serfbridge.errors import ConfigError, SinkRejected, SinkUnavailable
from serfbridge.sinks.command import ENVIRONMENT, CommandSink, CommandSinkConfig

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

FAST = "[delivery]\nlinger = 1\nbackoff_initial = 0.05\nbackoff_max = 0.3\npoll_interval = 0.02\n"

# The program under test: records what it got, then behaves as argv[2] says.
PROGRAM = r"""
import json, os, subprocess, sys, time
out, mode = sys.argv[1], sys.argv[2]
body = sys.stdin.buffer.read().decode()
env = {k: v for k, v in os.environ.items() if k.startswith(("SERFBRIDGE_", "SERF_", "EXTRA"))}
count_file = out + ".count"
count = int(open(count_file).read()) + 1 if os.path.exists(count_file) else 1
open(count_file, "w").write(str(count))
with open(out, "a") as fh:
    fh.write(json.dumps({"attempt": count, "stdin": body, "env": env, "cwd": os.getcwd()}) + "\n")
if mode == "ok":
    sys.exit(0)
if mode.startswith("fail-"):
    if count <= int(mode[5:]):
        sys.stderr.write(f"not yet, attempt {count}\n")
        sys.exit(3)
    sys.exit(0)
if mode == "reject":
    sys.stderr.write("bad event data\n")
    sys.exit(65)
if mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    open(out + ".pids", "w").write(f"{os.getpid()} {child.pid}")
    time.sleep(120)
"""

EVENT: dict[str, Any] = {
    "version": 1,
    "id": "0123456789abcdef0123456789abcdef",
    "event": "member-join",
    "name": None,
    "ltime": None,
    "payload": None,
    "payload_encoding": None,
    "members": [
        {"name": "n2", "addr": "127.0.0.1", "role": "db", "tags": {"role": "db"}},
        {"name": "n3", "addr": "127.0.0.1", "role": "web", "tags": {"role": "web"}},
    ],
    "node": {"name": "n1", "role": "web", "tags": {"role": "web"}},
    "received_at": "2026-11-23T19:00:00.000Z",
    "truncated": False,
}


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "program.py"
    path.write_text(PROGRAM, encoding="utf-8")
    return path


def config(program: Path, out: Path, mode: str, **extra: Any) -> CommandSinkConfig:
    argv = [sys.executable, str(program), str(out), mode]
    return CommandSinkConfig(type="command", name="cmd", command=argv, **extra)


def records(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def body(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- the sink


def test_event_json_on_stdin_and_variables_in_the_environment(
    program: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stdin is the canonical JSON; SERFBRIDGE_EVENT_* describe it; stale SERF_* are removed."""
    monkeypatch.setenv("SERF_EVENT", "user")  # as a deliverer started by a handler has it
    out = tmp_path / "out.jsonl"
    cwd = tmp_path / "work"
    cwd.mkdir()
    sink = CommandSink(config(program, out, "ok", env={"EXTRA_ONE": "1"}, cwd=str(cwd)))
    with sink:
        sink.send(EVENT, body(EVENT))
    (rec,) = records(out)
    assert rec["stdin"].encode() == body(EVENT)
    # procrun's mark of this run (kills what the program started, docs/sinks.md)
    assert re.fullmatch("[0-9a-f]{32}", rec["env"].pop("SERFBRIDGE_RUN"))
    assert rec["env"] == {
        "EXTRA_ONE": "1",
        "SERFBRIDGE_EVENT_ID": EVENT["id"],
        "SERFBRIDGE_EVENT_EVENT": "member-join",
        "SERFBRIDGE_EVENT_NAME": "",
        "SERFBRIDGE_EVENT_LTIME": "",
        "SERFBRIDGE_EVENT_NODE": "n1",
        "SERFBRIDGE_EVENT_ROLE": "web",
        "SERFBRIDGE_EVENT_MEMBERS": "n2 n3",
        "SERFBRIDGE_EVENT_PAYLOAD_ENCODING": "",
        "SERFBRIDGE_EVENT_RECEIVED_AT": EVENT["received_at"],
        "SERFBRIDGE_SINK": "cmd",
    }
    assert set(rec["env"]) - {"EXTRA_ONE"} == set(ENVIRONMENT)
    assert os.path.samefile(rec["cwd"], cwd)


def test_non_zero_exit_is_retryable(program: Path, tmp_path: Path) -> None:
    """Exit 3 is SinkUnavailable, quoting the program's stderr."""
    sink = CommandSink(config(program, tmp_path / "out", "fail-9"))
    with pytest.raises(SinkUnavailable, match=r"exited 3: not yet, attempt 1"):
        sink.send(EVENT, body(EVENT))


def test_exit_65_rejects_the_event(program: Path, tmp_path: Path) -> None:
    """Exit 65 (EX_DATAERR) is SinkRejected: the event is dead-lettered, not retried."""
    sink = CommandSink(config(program, tmp_path / "out", "reject"))
    with pytest.raises(SinkRejected, match=r"rejected the event \(exit 65\): bad event data"):
        sink.send(EVENT, body(EVENT))


def test_missing_program_is_retryable(tmp_path: Path) -> None:
    """A program that is not there (yet) is retried: the operator can install it."""
    cfg = CommandSinkConfig(type="command", name="cmd", command=[str(tmp_path / "nope")])
    with pytest.raises(SinkUnavailable, match="cannot start"):
        CommandSink(cfg).send(EVENT, body(EVENT))
    with pytest.raises(SinkUnavailable, match="not found or not executable"):
        CommandSink(cfg).check()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of ours stays a zombie until reaped; /proc says which.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_timeout_kills_the_whole_process_tree(program: Path, tmp_path: Path) -> None:
    """On timeout the program and the child it started are killed; the send is retryable."""
    out = tmp_path / "out"
    sink = CommandSink(config(program, out, "hang", timeout=1.5))
    started = time.monotonic()
    with pytest.raises(SinkUnavailable, match=r"killed after 1.5s timeout"):
        sink.send(EVENT, body(EVENT))
    assert time.monotonic() - started < 1.5 + 3.0  # kill + pipe drain, never the 120 s sleep
    pids = [int(p) for p in (tmp_path / "out.pids").read_text().split()]
    assert len(pids) == 2
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=5, what="program tree to die")


@pytest.mark.parametrize(
    ("body_toml", "message"),
    [
        ("command = []", "sinks[0] (command).command: List should have at least 1 item"),
        ("command = ['']", "command[0] (the program) must not be empty"),
        ("command = 'echo hi'", "sinks[0] (command).command: Input should be a valid list"),
        ("command = ['x']\nenv = { 'A=B' = 'c' }", "env: 'A=B' is not a valid variable name"),
        ("command = ['x']\ntimeout = 0", "sinks[0] (command).timeout: Input should be greater"),
        ("command = ['x']\nshell = true", "sinks[0] (command).shell: unknown key"),
    ],
)
def test_config_errors(tmp_path: Path, body_toml: str, message: str) -> None:
    """A bad command sink is a configuration error naming the key."""
    path = tmp_path / "c.toml"
    path.write_text(f"[[sinks]]\ntype = 'command'\nname = 'c'\n{body_toml}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(str(path))
    assert message in str(info.value)


# --------------------------------------------------------------------------- through delivery


@pytest.fixture
def node(tmp_path: Path) -> Iterator[BridgeNode]:
    bridge = BridgeNode(tmp_path, "n1")
    yield bridge
    bridge.kill_deliverer()


def command_config(program: Path, out: Path, mode: str, extra: str = "") -> str:
    argv = json.dumps([sys.executable, str(program), str(out), mode])
    return f'[[sinks]]\ntype = "command"\nname = "cmd"\ncommand = {argv}\n{extra}\n' + FAST


def test_failures_are_retried_until_success_in_order(
    node: BridgeNode, program: Path, tmp_path: Path, serfbridge_cmd: list[str]
) -> None:
    """The program fails twice; the deliverer retries; every event arrives once, in order."""
    out = tmp_path / "out.jsonl"
    node.write_config(command_config(program, out, "fail-2"))
    for ltime in range(1, 4):
        fire_user(serfbridge_cmd, node, "deploy", ltime, b"v%d" % ltime)
    wait_for(lambda: len(records(out)) >= 5, timeout=30, what="5 runs", detail=node.log_tail)
    wait_for(lambda: not spool_files(node, "incoming"), timeout=10, what="the spool to drain")
    runs = records(out)
    assert [r["attempt"] for r in runs] == [1, 2, 3, 4, 5]
    assert [json.loads(r["stdin"])["ltime"] for r in runs] == [1, 1, 1, 2, 3]
    assert runs[2]["env"]["SERFBRIDGE_EVENT_NAME"] == "deploy"
    assert "delivery failed, will retry" in node.log_tail()
    assert spool_files(node, "dead", "cmd") == []


def test_exit_65_dead_letters_and_the_next_event_goes_on(
    node: BridgeNode, program: Path, tmp_path: Path, serfbridge_cmd: list[str]
) -> None:
    """A rejected event is dead-lettered at once with the program's reason."""
    out = tmp_path / "out.jsonl"
    node.write_config(command_config(program, out, "reject"))
    fire_user(serfbridge_cmd, node, "deploy", 1)
    wait_for(lambda: spool_files(node, "dead", "cmd"), timeout=20, what="a dead letter")
    assert len(records(out)) == 1
    listing = serfbridge(serfbridge_cmd, node, "spool", "list", "--dead")
    assert "exit 65" in listing.stdout
    assert "bad event data" in listing.stdout


def test_handler_never_runs_the_program(
    node: BridgeNode, program: Path, tmp_path: Path, serfbridge_cmd: list[str]
) -> None:
    """With spawn_deliverer = false the event waits in the spool: the handler ran nothing."""
    out = tmp_path / "out.jsonl"
    node.write_config("spawn_deliverer = false\n" + command_config(program, out, "ok"))
    proc = run_handler(
        serfbridge_cmd,
        node,
        "user",
        stdin=b"x\n",
        extra={"SERF_USER_EVENT": "e", "SERF_USER_LTIME": "1"},
    )
    assert proc.returncode == 0
    assert records(out) == []
    assert len(spool_files(node, "incoming")) == 1
    flushed = serfbridge(serfbridge_cmd, node, "flush", "--timeout", "20")
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    assert len(records(out)) == 1
